//! The trainer's side of phase selection. The rules are `schedule`'s; the trainer holds the
//! policy, so it measures at once whatever a selector asks for: the fixed batch's scores, a
//! lookahead probe of each candidate, or per-class gradients.

use super::Trainer;
use crate::actor::ParamSnapshot;
use crate::grpo::scalar;
use crate::metrics::Timing;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schedule::{BatchScores, Choices, Decision, Measure, Target};

impl Trainer {
    /// Picks the class of the phase starting now and updates the phase state.
    pub(crate) fn select_class(&mut self, time: &mut Timing) -> Result<Decision> {
        let cfg = self.config.phases.clone();
        let (names, trainable) = (self.data.classes.names.clone(), self.data.trainable.clone());
        let weights = self.data.select_weights.clone();
        let at = Choices {
            names: &names,
            trainable: &trainable,
            select_weights: &weights,
        };
        let step = self.state.step;
        let mut phase = std::mem::take(&mut self.state.phase);
        let mut owner = Selection {
            trainer: self,
            time,
        };
        let decision = schedule::decide(&mut phase, &cfg, at, step, &mut owner);
        self.state.phase = phase;
        decision
    }
}

/// The trainer while it measures for a selection (the phase state is out on loan).
struct Selection<'a> {
    trainer: &'a mut Trainer,
    time: &'a mut Timing,
}

impl Measure for Selection<'_> {
    fn measure(&mut self) -> Result<BatchScores> {
        self.trainer.select_eval(self.time)
    }

    /// From one snapshot of policy and optimizer, trains each class's phase reward for
    /// `probe_steps` steps (same prompts and sampling noise for all), scores the fixed batch,
    /// restores.
    fn probe(&mut self, classes: &[usize]) -> Result<Vec<BatchScores>> {
        let t = &mut *self.trainer;
        let params = ParamSnapshot::take(&t.vars)?;
        let optimizer = t.optimizer.snapshot()?;
        let optimizer_steps = t.state.optimizer_steps;
        let probe_seed: u64 = t.rng.gen();
        let main_rng = t.rng.clone();
        let mut scores = Vec::new();
        for &k in classes {
            t.rng = ChaCha8Rng::seed_from_u64(probe_seed);
            let target = t.phase_target(k)?;
            for _ in 0..t.config.phases.probe_steps {
                let only = t.config.objective.grade_active_class_only.then_some(k);
                t.grpo_step(&target, only, self.time)?;
            }
            scores.push(t.select_eval(self.time)?);
            params.restore(&t.vars)?;
            t.optimizer = optimizer.snapshot()?;
            t.state.optimizer_steps = optimizer_steps;
        }
        t.rng = main_rng;
        Ok(scores)
    }

    /// On one fresh rollout batch graded on every class, the cosine (and dot product) of each
    /// class's policy gradient with the overall score's.
    fn align(&mut self, classes: &[usize]) -> Result<Vec<(f64, f64)>> {
        let t = &mut *self.trainer;
        let rollout = t.rollout(None, self.time)?;
        let overall = t.policy_gradient(&rollout, &Target::Overall)?;
        let mut out = Vec::new();
        for &k in classes {
            let g = t.policy_gradient(&rollout, &t.phase_target(k)?)?;
            out.push(match (&overall, &g) {
                (Some(o), Some(g)) => {
                    let (mut dot, mut no, mut ng) = (0.0, 0.0, 0.0);
                    for (a, b) in o.iter().zip(g) {
                        dot += scalar(&(a * b)?.sum_all()?)?;
                        no += scalar(&a.sqr()?.sum_all()?)?;
                        ng += scalar(&b.sqr()?.sum_all()?)?;
                    }
                    (dot / (no.sqrt() * ng.sqrt()).max(1e-12), dot)
                }
                _ => (f64::NAN, 0.0),
            });
        }
        Ok(out)
    }
}
