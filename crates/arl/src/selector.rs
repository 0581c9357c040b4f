//! Phases and selectors of ARL-RR: every `phases.length` steps the selector picks the class the
//! next phase optimizes, from measured task performance. Each decision is returned with the
//! numbers that made it and goes to `schedule.jsonl`.

use crate::objective::Target;
use crate::policy::ParamSnapshot;
use crate::trainer::{Timing, Trainer};
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// `[phases]` (used by `objective.kind = "alternating"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseConfig {
    /// Steps per phase (`S`).
    pub length: u64,
    /// `"lookahead"` (default), `"gradient"`, `"deficit"`, `"ucb"`, `"round_robin"`, `"fixed"`.
    pub selector: SelectorKind,
    /// `fixed`: the class trained throughout (a class name, e.g. `"accuracy"`).
    pub fixed_class: Option<String>,
    /// `lookahead`: probe steps per candidate (`L`).
    pub probe_steps: u64,
    /// `lookahead`: probe only the `top_m` classes by deficit; 0 = every class.
    pub top_m: usize,
    /// `ucb`: exploration constant `c` in `mean_gain + c * sqrt(2 ln N / n_k)`.
    pub ucb_c: f64,
    /// Validation examples (the first ones) in the selectors' fixed batch.
    pub select_size: usize,
    /// Responses sampled per example of the fixed batch (same seed for every candidate).
    pub select_samples: usize,
}

impl Default for PhaseConfig {
    fn default() -> Self {
        PhaseConfig {
            length: 5,
            selector: SelectorKind::Lookahead,
            fixed_class: None,
            probe_steps: 2,
            top_m: 0,
            ucb_c: 0.5,
            select_size: 16,
            select_samples: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SelectorKind {
    Lookahead,
    Gradient,
    Deficit,
    Ucb,
    RoundRobin,
    Fixed,
}

/// Selector state carried across phases (checkpointed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PhaseState {
    /// Phases begun so far.
    pub index: u64,
    pub active: Option<usize>,
    /// Overall score on the fixed batch when the phase began (`ucb` gains).
    pub start_score: Option<f64>,
    /// `ucb`: per class, phases trained and summed gain of the overall score.
    pub arms: Vec<Arm>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub pulls: u64,
    pub total_gain: f64,
}

impl PhaseState {
    /// At a phase boundary: credits the phase that just ended with the overall gain it made
    /// (`ucb`'s reward), given the overall score measured now.
    pub fn credit_ended_phase(&mut self, classes: usize, now: Option<f64>) {
        self.arms.resize(classes, Arm::default());
        if let (Some(prev), Some(start), Some(now)) = (self.active, self.start_score, now) {
            self.arms[prev].pulls += 1;
            self.arms[prev].total_gain += now - start;
        }
    }

    /// `ucb` candidates: mean overall gain per phase of each class plus
    /// `c * sqrt(2 ln(total phases) / phases of that class)`; untried classes come first.
    pub fn ucb_candidates(&self, trainable: &[usize], names: &[String], c: f64) -> Vec<Candidate> {
        let total: u64 = self.arms.iter().map(|a| a.pulls).sum();
        trainable
            .iter()
            .map(|&k| {
                let a = &self.arms[k];
                let mean = if a.pulls == 0 {
                    0.0
                } else {
                    a.total_gain / a.pulls as f64
                };
                let bound = if a.pulls == 0 {
                    f64::INFINITY
                } else {
                    mean + c * (2.0 * (total.max(1) as f64).ln() / a.pulls as f64).sqrt()
                };
                Candidate {
                    class: names[k].clone(),
                    score: bound,
                    detail: mean,
                }
            })
            .collect()
    }
}

/// One line of `schedule.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    /// The step the phase starts at.
    pub step: u64,
    pub phase: u64,
    pub selector: SelectorKind,
    pub chosen: String,
    /// Overall score on the fixed batch before the decision (when measured).
    pub base_score: Option<f64>,
    /// Per-class scores on the fixed batch (class order; null = no data).
    pub base_class_scores: Vec<Option<f64>>,
    /// Every candidate with the number it was ranked by.
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub class: String,
    /// What the selector maximized: lookahead = overall score after the probe, gradient =
    /// cosine with the overall gradient, deficit = points share × (1 − score), ucb = bound
    /// (null = untried, tried first).
    #[serde(with = "finite_or_null")]
    pub score: f64,
    /// The number next to it: lookahead = gain over `base_score`, gradient = dot product,
    /// deficit = class score, ucb = mean gain.
    #[serde(with = "finite_or_null")]
    pub detail: f64,
}

/// JSON has no NaN or infinity: written as null, read back as NaN.
mod finite_or_null {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(x: &f64, s: S) -> Result<S::Ok, S::Error> {
        if x.is_finite() {
            s.serialize_f64(*x)
        } else {
            s.serialize_none()
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

fn nan_to_none(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

impl Trainer {
    /// Picks the class of the phase starting now and updates the phase state.
    pub(crate) fn select_class(&mut self, time: &mut Timing) -> Result<Decision> {
        let p = self.config.phases.clone();
        let names = self.data.classes.names.clone();
        let trainable = self.data.trainable.clone();
        if trainable.is_empty() {
            bail!("no meta-class has a positive-point criterion in the training data");
        }
        let needs_base = !matches!(p.selector, SelectorKind::Fixed | SelectorKind::RoundRobin);
        let base = if needs_base {
            Some(self.select_eval(time)?)
        } else {
            None
        };
        let base_score = base.as_ref().map(|b| b.overall.score).and_then(nan_to_none);
        let class_scores: Vec<f64> = base
            .as_ref()
            .map(|b| b.class_scores(&names))
            .unwrap_or_else(|| vec![f64::NAN; names.len()]);
        let st = &mut self.state.phase;
        st.credit_ended_phase(names.len(), base_score);
        let deficit = |k: usize| self.data.select_weights[k] * (1.0 - class_scores[k]);
        let candidates: Vec<Candidate> = match p.selector {
            SelectorKind::Fixed => {
                let name = p.fixed_class.as_deref().unwrap_or_default();
                let Some(k) = self.data.classes.index(name) else {
                    bail!(
                        "field `phases.fixed_class`: `{name}` is not a meta-class (classes: {})",
                        names.join(", ")
                    );
                };
                vec![Candidate {
                    class: names[k].clone(),
                    score: 1.0,
                    detail: 0.0,
                }]
            }
            SelectorKind::RoundRobin => {
                let next = match st.active {
                    None => trainable[0],
                    Some(a) => *trainable.iter().find(|&&k| k > a).unwrap_or(&trainable[0]),
                };
                vec![Candidate {
                    class: names[next].clone(),
                    score: 1.0,
                    detail: 0.0,
                }]
            }
            SelectorKind::Deficit => trainable
                .iter()
                .map(|&k| Candidate {
                    class: names[k].clone(),
                    score: deficit(k),
                    detail: class_scores[k],
                })
                .collect(),
            SelectorKind::Ucb => st.ucb_candidates(&trainable, &names, p.ucb_c),
            SelectorKind::Gradient => self.gradient_candidates(&trainable, time)?,
            SelectorKind::Lookahead => {
                let mut probed = trainable.clone();
                if p.top_m > 0 && p.top_m < probed.len() {
                    probed.sort_by(|&a, &b| deficit(b).total_cmp(&deficit(a)).then(a.cmp(&b)));
                    probed.truncate(p.top_m);
                    probed.sort_unstable();
                }
                self.lookahead_candidates(&probed, base_score.unwrap_or(f64::NAN), time)?
            }
        };
        // argmax; NaN ranks last, ties go to the earlier class
        let best = candidates
            .iter()
            .enumerate()
            .max_by(|(i, a), (j, b)| {
                let key = |c: &Candidate| {
                    if c.score.is_nan() {
                        f64::NEG_INFINITY
                    } else {
                        c.score
                    }
                };
                key(a).total_cmp(&key(b)).then(j.cmp(i))
            })
            .map(|(i, _)| i)
            .expect("at least one candidate");
        let chosen = self
            .data
            .classes
            .index(&candidates[best].class)
            .expect("a known class");
        let st = &mut self.state.phase;
        st.index += 1;
        st.active = Some(chosen);
        st.start_score = base_score;
        Ok(Decision {
            step: self.state.step,
            phase: st.index,
            selector: p.selector,
            chosen: names[chosen].clone(),
            base_score,
            base_class_scores: class_scores.into_iter().map(nan_to_none).collect(),
            candidates,
        })
    }

    /// Lookahead: from one snapshot of policy and optimizer, train each candidate class for
    /// `probe_steps` steps (same prompts and sampling noise for all), score the fixed batch,
    /// restore.
    fn lookahead_candidates(
        &mut self,
        classes: &[usize],
        base_score: f64,
        time: &mut Timing,
    ) -> Result<Vec<Candidate>> {
        let params = ParamSnapshot::take(&self.vars)?;
        let optimizer = self.optimizer.clone();
        let optimizer_steps = self.state.optimizer_steps;
        let probe_seed: u64 = self.rng.gen();
        let main_rng = self.rng.clone();
        let mut out = Vec::new();
        for &k in classes {
            self.rng = ChaCha8Rng::seed_from_u64(probe_seed);
            for _ in 0..self.config.phases.probe_steps {
                let only = self.config.objective.grade_active_class_only.then_some(k);
                self.grpo_step(&Target::Class(k), only, time)?;
            }
            let score = self.select_eval(time)?.overall.score;
            params.restore(&self.vars)?;
            self.optimizer = optimizer.clone();
            self.state.optimizer_steps = optimizer_steps;
            out.push(Candidate {
                class: self.data.classes.names[k].clone(),
                score,
                detail: score - base_score,
            });
        }
        self.rng = main_rng;
        Ok(out)
    }

    /// Gradient alignment: on one fresh rollout batch graded on every class, the cosine
    /// between each class's policy gradient and the overall score's.
    fn gradient_candidates(
        &mut self,
        classes: &[usize],
        time: &mut Timing,
    ) -> Result<Vec<Candidate>> {
        let rollout = self.rollout(None, time)?;
        let overall = self.policy_gradient(&rollout, &Target::Overall)?;
        let mut out = Vec::new();
        for &k in classes {
            let g = self.policy_gradient(&rollout, &Target::Class(k))?;
            let (dot, cos) = match (&overall, &g) {
                (Some(o), Some(g)) => {
                    let mut dot = 0.0;
                    let (mut no, mut ng) = (0.0, 0.0);
                    for (a, b) in o.iter().zip(g) {
                        dot += crate::grpo::scalar(&(a * b)?.sum_all()?)?;
                        no += crate::grpo::scalar(&a.sqr()?.sum_all()?)?;
                        ng += crate::grpo::scalar(&b.sqr()?.sum_all()?)?;
                    }
                    (dot, dot / (no.sqrt() * ng.sqrt()).max(1e-12))
                }
                _ => (0.0, f64::NAN),
            };
            out.push(Candidate {
                class: self.data.classes.names[k].clone(),
                score: cos,
                detail: dot,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucb_credits_the_ended_phase_and_tries_every_class_first() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut st = PhaseState {
            active: Some(0),
            start_score: Some(0.4),
            ..PhaseState::default()
        };
        st.credit_ended_phase(3, Some(0.5));
        assert_eq!(st.arms[0].pulls, 1);
        assert!((st.arms[0].total_gain - 0.1).abs() < 1e-12);
        let c = st.ucb_candidates(&[0, 1, 2], &names, 1.0);
        assert!((c[0].detail - 0.1).abs() < 1e-12);
        // one phase in total: ln(1) = 0, so the bound is the mean
        assert!((c[0].score - 0.1).abs() < 1e-12);
        assert_eq!(c[1].score, f64::INFINITY);
        assert_eq!(c[2].score, f64::INFINITY);

        // no score measured now: nothing is credited
        st.credit_ended_phase(3, None);
        assert_eq!(st.arms[0].pulls, 1);
        st.active = Some(1);
        st.start_score = Some(0.5);
        st.credit_ended_phase(3, Some(0.3));
        let c = st.ucb_candidates(&[0, 1], &names, 1.0);
        let bonus = (2.0 * 2f64.ln()).sqrt();
        assert!((c[0].score - (0.1 + bonus)).abs() < 1e-12);
        assert!((c[1].score - (-0.2 + bonus)).abs() < 1e-12);
        assert_eq!(c.len(), 2);
    }
}
