//! What drives the advantages: one fixed scalarization, decoupled per-class normalization
//! (GDPO), or one meta-class at a time (ARL-RR), and GRPO's group-normalized advantages.

use crate::stats::mean_std;
use rubric::RewardVector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    Alternating,
    Scalarized,
    Gdpo,
}

/// Weights of `scalarized`: `"points"` (the HealthBench overall score itself), `"equal"`, or
/// a table `{ accuracy = 2.0, completeness = 1.0 }` (missing classes weigh 0).
#[derive(Debug, Clone, PartialEq)]
pub enum Weights {
    Points,
    Equal,
    Custom(BTreeMap<String, f64>),
}

impl Serialize for Weights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Weights::Points => s.serialize_str("points"),
            Weights::Equal => s.serialize_str("equal"),
            Weights::Custom(t) => t.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Weights {
    /// `"points"`, `"equal"` or a table of class weights; any other string is an error that
    /// lists the choices (an untagged enum would only say "did not match any variant").
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Table(BTreeMap<String, f64>),
        }
        match Raw::deserialize(d)? {
            Raw::Name(n) if n == "points" => Ok(Weights::Points),
            Raw::Name(n) if n == "equal" => Ok(Weights::Equal),
            Raw::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown weights `{n}`: use \"points\", \"equal\" or a table such as {{ accuracy = 2.0 }}"
            ))),
            Raw::Table(t) => Ok(Weights::Custom(t)),
        }
    }
}

impl Weights {
    /// The rules a weights table must follow, whatever the classes: every weight finite and
    /// not negative (a negative weight would reward failing its class's criteria, and
    /// `Σ w_k r_k / Σ w_k` divides by the weights' sum), and at least one positive: all zero
    /// is no reward, so no spread and no update, ever.
    pub fn check(&self) -> anyhow::Result<()> {
        let Weights::Custom(map) = self else {
            return Ok(());
        };
        if let Some((name, w)) = map.iter().find(|(_, w)| !(w.is_finite() && **w >= 0.0)) {
            anyhow::bail!(
                "the weight of `{name}` is {w}: weights must be finite and not negative (leave a \
                 class out to weigh it 0)"
            );
        }
        if map.values().all(|w| *w == 0.0) {
            anyhow::bail!(
                "every weight is 0: the scalarized reward would be 0 for every response, so no \
                 group has spread and nothing trains; give at least one class a positive weight \
                 (classes left out weigh 0), or use \"points\" or \"equal\""
            );
        }
        Ok(())
    }

    /// The scalarized target over `classes`; a weight for a name that is not a class is an
    /// error naming it (a typo would otherwise weigh 0 in silence), and so are weights that
    /// break [`Weights::check`]. The one place weights become a target: the trainer and the
    /// reward service both come here.
    pub fn target(&self, classes: &[String]) -> anyhow::Result<Target> {
        self.check()?;
        Ok(match self {
            Weights::Points => Target::Overall,
            Weights::Equal => Target::Weighted(vec![1.0; classes.len()]),
            Weights::Custom(map) => {
                if let Some(name) = map.keys().find(|n| !classes.contains(n)) {
                    anyhow::bail!(
                        "`{name}` is not a meta-class (classes: {})",
                        classes.join(", ")
                    );
                }
                Target::Weighted(
                    classes
                        .iter()
                        .map(|n| map.get(n).copied().unwrap_or(0.0))
                        .collect(),
                )
            }
        })
    }
}

/// The reward signal an update optimizes, resolved against the class list.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The HealthBench overall score (points-weighted).
    Overall,
    /// `Σ_k w_k r_k / Σ_k w_k` over the classes defined for the example.
    Weighted(Vec<f64>),
    /// GDPO: `Σ_k (r_k - mean_G) / (std_G + eps)`, then normalized over the batch (with
    /// `scale_rewards`: each class scaled like a scalar reward, the sums centred over the
    /// batch and divided by their batch std unless `none`).
    Decoupled,
    /// One class (ARL-RR's active class, a lookahead probe, a gradient-selector query).
    Class(usize),
    /// Anchored alternation (our extension): `lambda · r_class + (1 − lambda) · r_rest`,
    /// `rest` being the scalarized target. Built by [`Target::anchored`].
    Anchored {
        class: usize,
        lambda: f64,
        rest: Box<Target>,
    },
}

impl Target {
    /// The reward of a phase on `class` anchored to `rest` with weight `1 − lambda`; at
    /// `lambda >= 1` that is exactly `Class(class)` (pure ARL-RR).
    pub fn anchored(class: usize, lambda: f64, rest: Target) -> Target {
        if lambda >= 1.0 {
            Target::Class(class)
        } else {
            Target::Anchored {
                class,
                lambda,
                rest: Box::new(rest),
            }
        }
    }

    /// The scalar reward of one response (`None` = no signal or excluded).
    pub fn reward(&self, r: &RewardVector) -> Option<f64> {
        match self {
            Target::Overall => r.overall,
            Target::Class(k) => r.classes[*k],
            // no data for the active class: no signal, as in pure ARL-RR; no scalarized
            // reward: the active class's alone
            Target::Anchored {
                class,
                lambda,
                rest,
            } => {
                let active = r.classes[*class]?;
                Some(match rest.reward(r) {
                    Some(x) => lambda * active + (1.0 - lambda) * x,
                    None => active,
                })
            }
            Target::Weighted(w) => {
                let (mut num, mut den) = (0.0, 0.0);
                for (rk, wk) in r.classes.iter().zip(w) {
                    if let (Some(rk), true) = (rk, *wk != 0.0) {
                        num += wk * rk;
                        den += wk;
                    }
                }
                (den > 0.0).then(|| num / den)
            }
            Target::Decoupled => {
                let defined: Vec<f64> = r.classes.iter().flatten().copied().collect();
                (!defined.is_empty()).then(|| defined.iter().sum())
            }
        }
    }

    /// Advantages of every sample of a rollout batch (`groups[prompt][sample]`, `None` =
    /// response excluded), the within-group std of the target reward per group, and which
    /// groups had zero spread. Scaled as `grpo.scale_rewards = "group"`.
    pub fn advantages(
        &self,
        groups: &[Vec<Option<RewardVector>>],
        n_classes: usize,
        eps: f64,
    ) -> BatchAdvantages {
        self.scaled_advantages(groups, n_classes, eps, ScaleRewards::Group)
    }

    /// [`Target::advantages`] with the centred rewards scaled as `scale` says. GDPO centres
    /// and scales each class the same way, sums, then centres the sums over the batch and,
    /// unless `scale` is `None`, divides them by their batch std.
    pub fn scaled_advantages(
        &self,
        groups: &[Vec<Option<RewardVector>>],
        n_classes: usize,
        eps: f64,
        scale: ScaleRewards,
    ) -> BatchAdvantages {
        let target: Vec<Vec<Option<f64>>> = groups
            .iter()
            .map(|g| {
                g.iter()
                    .map(|r| r.as_ref().and_then(|r| self.reward(r)))
                    .collect()
            })
            .collect();
        let mut out = BatchAdvantages::default();
        if let Target::Decoupled = self {
            let per_class: Vec<BatchAdvantages> = (0..n_classes)
                .map(|k| {
                    let rk: Vec<Vec<Option<f64>>> = groups
                        .iter()
                        .map(|g| {
                            g.iter()
                                .map(|r| r.as_ref().and_then(|r| r.classes[k]))
                                .collect()
                        })
                        .collect();
                    batch_advantages(&rk, eps, scale)
                })
                .collect();
            for (i, group) in groups.iter().enumerate() {
                let mut sum = vec![None::<f64>; group.len()];
                for class in &per_class {
                    for (s, a) in sum.iter_mut().zip(&class.advantages[i]) {
                        if let Some(a) = a {
                            *s = Some(s.unwrap_or(0.0) + a);
                        }
                    }
                }
                out.group_std.push(group_advantages(&target[i], eps).std);
                out.zero_spread.push(sum.iter().all(Option::is_none));
                out.advantages.push(sum);
            }
            let all = out.advantages.iter().flatten().flatten().copied();
            if let Some((mean, std)) = mean_std(all) {
                for a in out.advantages.iter_mut().flatten().flatten() {
                    *a = match scale {
                        ScaleRewards::None => *a - mean,
                        _ => (*a - mean) / (std + eps),
                    };
                }
            }
            out
        } else {
            batch_advantages(&target, eps, scale)
        }
    }
}

/// `[grpo] scale_rewards`: what divides a centred reward `r - mean_G` (as TRL's GRPO
/// `scale_rewards`). `Group`: the group's std (GRPO); `Batch`: the std of the reward over the
/// whole rollout batch; `None`: nothing (Dr. GRPO). Every std is a population std, plus
/// `adv_eps`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleRewards {
    #[default]
    Group,
    Batch,
    None,
}

/// Advantages of a batch of groups of one scalar reward, scaled as `scale` says; zero-spread
/// groups get none in every mode.
fn batch_advantages(groups: &[Vec<Option<f64>>], eps: f64, scale: ScaleRewards) -> BatchAdvantages {
    let batch_std = mean_std(groups.iter().flatten().flatten().copied()).map_or(0.0, |a| a.1);
    let mut out = BatchAdvantages::default();
    for rewards in groups {
        let mut g = group_advantages(rewards, eps);
        if scale != ScaleRewards::Group && !g.zero_spread {
            let divisor = match scale {
                ScaleRewards::Batch => batch_std + eps,
                _ => 1.0,
            };
            for (a, r) in g.advantages.iter_mut().zip(rewards) {
                *a = r.map(|r| (r - g.mean) / divisor);
            }
        }
        out.group_std.push(g.std);
        out.zero_spread.push(g.zero_spread);
        out.advantages.push(g.advantages);
    }
    out
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchAdvantages {
    /// `[prompt][sample]`; `None` = not in the update.
    pub advantages: Vec<Vec<Option<f64>>>,
    pub group_std: Vec<f64>,
    pub zero_spread: Vec<bool>,
}

/// Group-normalized advantages of one prompt's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// `(r - mean_G) / (std_G + eps)`; `None` for samples without a reward and for every
    /// sample of a zero-spread group (no signal).
    pub advantages: Vec<Option<f64>>,
    /// Within-group mean of the defined rewards (0 when none).
    pub mean: f64,
    /// Within-group std of the defined rewards (0 when fewer than two).
    pub std: f64,
    /// Fewer than two defined rewards, or all equal.
    pub zero_spread: bool,
}

pub fn group_advantages(rewards: &[Option<f64>], eps: f64) -> GroupAdvantages {
    let defined: Vec<f64> = rewards.iter().flatten().copied().collect();
    let (mean, std) = mean_std(defined.iter().copied()).unwrap_or((0.0, 0.0));
    let zero_spread = defined.len() < 2 || std <= 1e-12;
    let advantages = rewards
        .iter()
        .map(|r| match r {
            Some(r) if !zero_spread => Some((r - mean) / (std + eps)),
            _ => None,
        })
        .collect();
    GroupAdvantages {
        advantages,
        mean,
        std,
        zero_spread,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rv(overall: f64, classes: &[Option<f64>]) -> Option<RewardVector> {
        Some(RewardVector {
            overall: Some(overall),
            classes: classes.to_vec(),
        })
    }

    #[test]
    fn weights_without_signal_or_with_a_sign_are_refused() {
        let classes = ["a".to_string(), "b".to_string()];
        let custom = |pairs: &[(&str, f64)]| {
            Weights::Custom(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
        };
        for zero in [
            custom(&[]),
            custom(&[("a", 0.0)]),
            custom(&[("a", 0.0), ("b", 0.0)]),
        ] {
            let e = zero.target(&classes).unwrap_err().to_string();
            assert!(e.starts_with("every weight is 0"), "{e}");
        }
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = custom(&[("a", 1.0), ("b", bad)]).target(&classes);
            let e = e.unwrap_err().to_string();
            assert!(e.starts_with(&format!("the weight of `b` is {bad}")), "{e}");
        }
        assert_eq!(
            custom(&[("b", 2.0)]).target(&classes).unwrap(),
            Target::Weighted(vec![0.0, 2.0])
        );
        assert!(Weights::Equal.target(&classes).is_ok() && Weights::Points.check().is_ok());
    }

    #[test]
    fn targets_pick_their_reward() {
        let r = rv(0.5, &[Some(1.0), None, Some(0.0)]).unwrap();
        assert_eq!(Target::Overall.reward(&r), Some(0.5));
        assert_eq!(Target::Class(1).reward(&r), None);
        assert_eq!(Target::Weighted(vec![1.0, 1.0, 3.0]).reward(&r), Some(0.25));
        assert_eq!(Target::Decoupled.reward(&r), Some(1.0));
    }

    #[test]
    fn anchored_mixes_the_active_class_with_the_scalarized_reward() {
        let r = rv(0.5, &[Some(1.0), None, Some(0.0)]).unwrap();
        let a = Target::anchored(0, 0.25, Target::Overall);
        assert_eq!(a.reward(&r), Some(0.25 * 1.0 + 0.75 * 0.5));
        let w = Target::anchored(2, 0.5, Target::Weighted(vec![1.0, 0.0, 1.0]));
        assert_eq!(w.reward(&r), Some(0.25));
        // the active class has no data: no signal
        assert_eq!(Target::anchored(1, 0.5, Target::Overall).reward(&r), None);
        // no scalarized reward: the active class's alone
        let no_rest = Target::anchored(0, 0.5, Target::Weighted(vec![0.0, 1.0, 0.0]));
        assert_eq!(no_rest.reward(&r), Some(1.0));
        // lambda = 1 is pure ARL-RR
        assert_eq!(Target::anchored(2, 1.0, Target::Overall), Target::Class(2));
    }

    #[test]
    fn gdpo_normalizes_each_class_before_summing() {
        // class 0 spans 0..1, class 1 spans 0..0.01: after decoupled normalization both
        // contribute equally, so samples 1 and 2 tie.
        let g = vec![vec![
            rv(0.0, &[Some(0.0), Some(0.0)]),
            rv(0.0, &[Some(1.0), Some(0.0)]),
            rv(0.0, &[Some(0.0), Some(0.01)]),
        ]];
        let a = Target::Decoupled.advantages(&g, 2, 1e-9);
        let a = &a.advantages[0];
        assert!((a[1].unwrap() - a[2].unwrap()).abs() < 1e-6, "{a:?}");
        assert!(a[0].unwrap() < a[1].unwrap());
    }

    fn batch(rewards: &[&[f64]]) -> Vec<Vec<Option<RewardVector>>> {
        rewards
            .iter()
            .map(|g| {
                g.iter()
                    .map(|&r| rv(r, &[Some(r), Some(1.0 - r)]))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn scale_rewards_none_centres_and_batch_divides_by_the_batch_std() {
        let rewards: [&[f64]; 3] = [&[1.0, 0.0, 0.5, 0.5], &[0.2, 0.4, 0.2, 0.2], &[0.7; 4]];
        let g = batch(&rewards);
        let eps = 1e-6;
        let run = |t: &Target, s| t.scaled_advantages(&g, 2, eps, s);
        for t in [Target::Overall, Target::Class(0)] {
            let none = run(&t, ScaleRewards::None);
            let batch = run(&t, ScaleRewards::Batch);
            let group = run(&t, ScaleRewards::Group);
            assert_eq!(group, t.advantages(&g, 2, eps), "group is the default");
            let all = rewards.iter().flat_map(|g| g.iter().copied());
            let batch_std = mean_std(all).unwrap().1;
            for (i, rs) in rewards.iter().enumerate() {
                let mean = crate::stats::mean(rs);
                let std = mean_std(rs.iter().copied()).unwrap().1;
                for (j, r) in rs.iter().enumerate() {
                    if i == 2 {
                        // zero spread: excluded in every mode
                        assert_eq!(none.advantages[i][j], None);
                        assert_eq!(batch.advantages[i][j], None);
                        assert_eq!(group.advantages[i][j], None);
                        continue;
                    }
                    let close = |a: Option<f64>, want: f64| {
                        assert!(
                            (a.unwrap() - want).abs() < 1e-12,
                            "{t:?} {i} {j}: {a:?} vs {want}"
                        )
                    };
                    close(none.advantages[i][j], r - mean);
                    close(batch.advantages[i][j], (r - mean) / (batch_std + eps));
                    close(group.advantages[i][j], (r - mean) / (std + eps));
                }
            }
            for a in [&none, &batch] {
                assert_eq!(a.zero_spread, group.zero_spread);
                assert_eq!(a.group_std, group.group_std);
            }
        }
    }

    #[test]
    fn gdpo_scales_each_class_then_centres_the_batch() {
        let rewards: [&[f64]; 2] = [&[1.0, 0.0, 0.5], &[0.2, 0.4, 0.9]];
        let g = batch(&rewards);
        let eps = 1e-6;
        let none = Target::Decoupled.scaled_advantages(&g, 2, eps, ScaleRewards::None);
        // class 1 is 1 - class 0, so the centred classes cancel: every sum is 0
        assert!(none
            .advantages
            .iter()
            .flatten()
            .all(|a| a.unwrap().abs() < 1e-12));
        let one_class: Vec<Vec<Option<RewardVector>>> = rewards
            .iter()
            .map(|g| g.iter().map(|&r| rv(r, &[Some(r)])).collect())
            .collect();
        let none = Target::Decoupled.scaled_advantages(&one_class, 1, eps, ScaleRewards::None);
        let plain = Target::Class(0).scaled_advantages(&one_class, 1, eps, ScaleRewards::None);
        let values = |a: &BatchAdvantages| -> Vec<f64> {
            a.advantages.iter().flatten().map(|x| x.unwrap()).collect()
        };
        let (none, plain) = (values(&none), values(&plain));
        for (n, p) in none.iter().zip(&plain) {
            // one class, no scaling: r - mean_G (already centred over the batch)
            assert!((n - p).abs() < 1e-12, "{none:?} vs {plain:?}");
        }
        let batch = Target::Decoupled.scaled_advantages(&one_class, 1, eps, ScaleRewards::Batch);
        let std = mean_std(plain.iter().copied()).unwrap().1;
        for (b, p) in values(&batch).iter().zip(&plain) {
            assert!((b - p / std).abs() < 1e-5, "{b} vs {}", p / std);
        }
    }

    #[test]
    fn weights_parse_from_toml() {
        #[derive(Deserialize)]
        struct W {
            w: Weights,
        }
        let p: W = toml::from_str("w = \"points\"").unwrap();
        assert_eq!(p.w, Weights::Points);
        let c: W = toml::from_str("w = { accuracy = 2.0 }").unwrap();
        assert_eq!(c.w, Weights::Custom([("accuracy".to_string(), 2.0)].into()));
        let e = toml::from_str::<W>("w = \"pointz\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("pointz") && e.contains("equal"), "{e}");
    }

    #[test]
    fn advantages_normalize_within_group() {
        let g = group_advantages(&[Some(1.0), Some(0.0), None, Some(0.5)], 0.0);
        assert!(!g.zero_spread);
        let a: Vec<f64> = g.advantages.iter().flatten().copied().collect();
        assert_eq!(
            g.advantages[2], None,
            "a missing reward is excluded, not scored"
        );
        assert!((a.iter().sum::<f64>()).abs() < 1e-12);
        let var = a.iter().map(|x| x * x).sum::<f64>() / 3.0;
        assert!((var - 1.0).abs() < 1e-9);
        let z = group_advantages(&[Some(0.3), Some(0.3)], 1e-6);
        assert!(z.zero_spread && z.advantages.iter().all(Option::is_none));
        assert!(group_advantages(&[Some(1.0), None], 1e-6).zero_spread);
    }

    #[test]
    fn weights_write_back_as_they_are_read_and_resolve_against_classes() {
        let names: Vec<String> = ["accuracy", "completeness"].map(String::from).to_vec();
        for text in ["w = \"points\"", "w = \"equal\"", "w = { accuracy = 2.0 }"] {
            #[derive(Debug, PartialEq, Serialize, Deserialize)]
            struct W {
                w: Weights,
            }
            let w: W = toml::from_str(text).unwrap();
            let back: W = toml::from_str(&toml::to_string(&w).unwrap()).unwrap();
            assert_eq!(back, w, "{text}");
        }
        assert_eq!(Weights::Points.target(&names).unwrap(), Target::Overall);
        assert_eq!(
            Weights::Equal.target(&names).unwrap(),
            Target::Weighted(vec![1.0, 1.0])
        );
        let custom = Weights::Custom([("completeness".to_string(), 3.0)].into());
        assert_eq!(
            custom.target(&names).unwrap(),
            Target::Weighted(vec![0.0, 3.0])
        );
        let typo = Weights::Custom([("acuracy".to_string(), 1.0)].into());
        let e = typo.target(&names).unwrap_err().to_string();
        assert!(e.contains("`acuracy`") && e.contains("completeness"), "{e}");
    }
}
