//! What drives the advantages: one fixed scalarization, decoupled per-class normalization
//! (GDPO), or one meta-class at a time (ARL-RR), and GRPO's group-normalized advantages.

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
    /// The scalarized target over `classes`; a weight for a name that is not a class is an
    /// error naming it (a typo would otherwise weigh 0 in silence).
    pub fn target(&self, classes: &[String]) -> anyhow::Result<Target> {
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
    /// GDPO: `Σ_k (r_k - mean_G) / (std_G + eps)`, then normalized over the batch.
    Decoupled,
    /// One class (ARL-RR's active class, a lookahead probe, a gradient-selector query).
    Class(usize),
}

impl Target {
    /// The scalar reward of one response (`None` = no signal or excluded).
    pub fn reward(&self, r: &RewardVector) -> Option<f64> {
        match self {
            Target::Overall => r.overall,
            Target::Class(k) => r.classes[*k],
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
    /// groups had zero spread.
    pub fn advantages(
        &self,
        groups: &[Vec<Option<RewardVector>>],
        n_classes: usize,
        eps: f64,
    ) -> BatchAdvantages {
        let mut out = BatchAdvantages::default();
        for group in groups {
            let rewards: Vec<Option<f64>> = group
                .iter()
                .map(|r| r.as_ref().and_then(|r| self.reward(r)))
                .collect();
            let plain = group_advantages(&rewards, eps);
            out.group_std.push(plain.std);
            if let Target::Decoupled = self {
                let mut sum = vec![None::<f64>; group.len()];
                for k in 0..n_classes {
                    let rk: Vec<Option<f64>> = group
                        .iter()
                        .map(|r| r.as_ref().and_then(|r| r.classes[k]))
                        .collect();
                    let a = group_advantages(&rk, eps);
                    for (s, a) in sum.iter_mut().zip(a.advantages) {
                        if let Some(a) = a {
                            *s = Some(s.unwrap_or(0.0) + a);
                        }
                    }
                }
                out.zero_spread.push(sum.iter().all(Option::is_none));
                out.advantages.push(sum);
            } else {
                out.zero_spread.push(plain.zero_spread);
                out.advantages.push(plain.advantages);
            }
        }
        if let Target::Decoupled = self {
            let all = out.advantages.iter().flatten().flatten().copied();
            if let Some((mean, std)) = mean_std(all) {
                for a in out.advantages.iter_mut().flatten().flatten() {
                    *a = (*a - mean) / (std + eps);
                }
            }
        }
        out
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchAdvantages {
    /// `[prompt][sample]`; `None` = not in the update.
    pub advantages: Vec<Vec<Option<f64>>>,
    pub group_std: Vec<f64>,
    pub zero_spread: Vec<bool>,
}

/// Mean and population std of the defined values (`None` when fewer than one).
pub fn mean_std(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    Some((mean, var.sqrt()))
}

/// Group-normalized advantages of one prompt's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// `(r - mean_G) / (std_G + eps)`; `None` for samples without a reward and for every
    /// sample of a zero-spread group (no signal).
    pub advantages: Vec<Option<f64>>,
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
    fn targets_pick_their_reward() {
        let r = rv(0.5, &[Some(1.0), None, Some(0.0)]).unwrap();
        assert_eq!(Target::Overall.reward(&r), Some(0.5));
        assert_eq!(Target::Class(1).reward(&r), None);
        assert_eq!(Target::Weighted(vec![1.0, 1.0, 3.0]).reward(&r), Some(0.25));
        assert_eq!(Target::Decoupled.reward(&r), Some(1.0));
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
