//! The trainer's side of phase selection. The rules are `schedule`'s; the trainer holds the
//! policy, so it measures at once whatever a selector asks for: the fixed batch's scores, a
//! lookahead probe of each candidate, or per-class gradients.

use super::Trainer;
use crate::actor::ParamSnapshot;
use crate::eval::EvalReport;
use crate::grpo::scalar;
use crate::metrics::{JudgeDelta, StepMetrics, Timing};
use crate::noise::Confusion;
use crate::optim::AdamW;
use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use schedule::{BatchScores, Choices, Decision, Measure, Rank, SelectCost, SelectorKind, Target};
use std::time::Instant;

/// A probe step kept as a step of the run (`phases.keep_probe`).
pub(crate) struct KeptStep {
    /// Its metrics line; step, phase and class are set when it is written.
    pub metrics: StepMetrics,
    /// Validation after it, when due and it is not the last kept step.
    pub val: Option<EvalReport>,
    /// Its judge-noise tally.
    pub noise: Option<Confusion>,
    /// Its `completions.jsonl` lines (step, phase and class set when it is written).
    pub completions: Vec<crate::completions::CompletionLine>,
}

/// The chosen probe's steps, and their wall seconds (part of the selection's).
pub(crate) struct KeptSteps {
    pub steps: Vec<KeptStep>,
    pub secs: f64,
}

/// The state a probe's steps advanced: what becomes the run's when its class is chosen.
struct Probe {
    class: usize,
    /// Where its measurement ranks among the probes ([`Rank::of_probe`]).
    rank: Rank,
    params: ParamSnapshot,
    optimizer: AdamW,
    optimizer_steps: u64,
    rng: ChaCha8Rng,
    kept: KeptSteps,
}

impl Trainer {
    /// Picks the class of the phase starting now and updates the phase state. With
    /// `phases.keep_probe`, the chosen class's probe is now the run's state, and its steps
    /// come back to be written as the phase's first.
    pub(crate) fn select_class(
        &mut self,
        time: &mut Timing,
    ) -> Result<(Decision, Option<KeptSteps>)> {
        let cfg = self.config.phases.clone();
        let (names, trainable) = (self.data.classes.names.clone(), self.data.trainable.clone());
        let weights = self.data.select_weights.clone();
        let at = Choices {
            names: &names,
            trainable: &trainable,
            select_weights: &weights,
            seed: self.config.run.seed,
        };
        let step = self.state.step;
        // the kept steps must fit in the run
        let keep = cfg.keep_probe
            && cfg.selector == SelectorKind::Lookahead
            && cfg.probe_steps > 0
            && step + cfg.probe_steps <= self.config.run.steps;
        let mut phase = std::mem::take(&mut self.state.phase);
        let mut owner = Selection {
            trainer: self,
            time,
            keep,
            best: None,
            probe_steps: 0,
        };
        let decision = schedule::decide(&mut phase, &cfg, at, step, &mut owner);
        let Selection {
            best, probe_steps, ..
        } = owner;
        self.state.phase = phase;
        let mut decision = decision?;
        let kept = match best {
            Some(p) if p.class == decision.chosen => {
                p.params.restore(&self.vars)?;
                self.optimizer = p.optimizer;
                self.state.optimizer_steps = p.optimizer_steps;
                self.rng = p.rng;
                Some(p.kept)
            }
            _ => None,
        };
        let (select_size, select_samples) = self.select_batch();
        decision.cost = Some(SelectCost {
            probe_steps,
            kept_steps: kept.as_ref().map_or(0, |k| k.steps.len() as u64),
            select_size,
            select_samples,
        });
        Ok((decision, kept))
    }

    /// A probe step that may be kept: one GRPO step with its metrics line, the judge-noise
    /// tally of its own verdicts (the selection's measurements are not tallied), and
    /// validation when due after it (not the last probe step, whose state the run continues
    /// from). `j`: the step's index in the probe.
    fn keepable_step(&mut self, target: &Target, only: Option<usize>, j: u64) -> Result<KeptStep> {
        let mut time = Timing::default();
        let judge_before = self.judge.stats();
        if let Some(n) = &self.noise {
            n.take(); // the selection's measurements are not this step's
        }
        let stepped = self.grpo_step(target, only, &mut time)?;
        let verdicts = self.judge.stats().verdicts - judge_before.verdicts;
        let judge = JudgeDelta::default(); // set below, the validation's included
        let completions = self.train_lines(&stepped);
        let mut metrics = self.metrics_line(stepped, judge, verdicts);
        let noise = self.noise.as_ref().map(|n| n.take());
        let (step, every) = (self.state.step + j + 1, self.config.eval.every);
        let due = every > 0 && step.is_multiple_of(every);
        let val = if due && j + 1 < self.config.phases.probe_steps {
            let t = Instant::now();
            let v = self.validate()?;
            time.eval = t.elapsed().as_secs_f64();
            Some(v)
        } else {
            None
        };
        metrics.time_s = time;
        metrics.judge = JudgeDelta::between(&judge_before, &self.judge.stats());
        Ok(KeptStep {
            metrics,
            val,
            noise,
            completions,
        })
    }
}

/// The trainer while it measures for a selection (the phase state is out on loan).
struct Selection<'a> {
    trainer: &'a mut Trainer,
    time: &'a mut Timing,
    /// `keep_probe` applies: the best probe so far is kept in `best` (one snapshot besides
    /// the base, whatever the number of candidates).
    keep: bool,
    best: Option<Probe>,
    /// Probe steps run.
    probe_steps: u64,
}

impl Measure for Selection<'_> {
    fn measure(&mut self) -> Result<BatchScores> {
        self.trainer.select_eval(self.time)
    }

    /// From one snapshot of policy and optimizer, trains each class's phase reward for
    /// `probe_steps` steps (same prompts and sampling noise for all), scores the fixed batch,
    /// restores. With `keep`, the best probe's state so far is kept aside, by the ranking
    /// [`schedule::decide`] chooses by ([`Rank`]).
    fn probe(&mut self, classes: &[usize]) -> Result<Vec<BatchScores>> {
        let t = &mut *self.trainer;
        let params = ParamSnapshot::take(&t.vars)?;
        let optimizer = t.optimizer.snapshot()?;
        let optimizer_steps = t.state.optimizer_steps;
        let probe_seed: u64 = t.rng.gen();
        let main_rng = t.rng.clone();
        let mut scores = Vec::new();
        // the first probe step's rollouts, sampled by the first candidate, replayed to the rest
        let mut shared = t.share_probe_rollouts.then(Vec::new);
        for &k in classes {
            t.rng = ChaCha8Rng::seed_from_u64(probe_seed);
            let target = t.phase_target(k)?;
            let only = t.config.objective.grade_active_class_only.then_some(k);
            let (mut steps, start) = (Vec::new(), Instant::now());
            let mut rows = 0;
            for j in 0..t.config.phases.probe_steps {
                // later steps start from each candidate's own parameters
                t.probe_samples = if j == 0 { shared.take() } else { None };
                let step = if self.keep {
                    t.keepable_step(&target, only, j).map(|step| {
                        rows += step.metrics.update.rows;
                        steps.push(step);
                    })
                } else {
                    let stepped = t.grpo_step(&target, only, self.time);
                    stepped.map(|s| rows += s.update.rows)
                };
                if j == 0 {
                    shared = t.probe_samples.take();
                }
                step?;
                self.probe_steps += 1;
            }
            let secs = start.elapsed().as_secs_f64();
            let mut measured = t.select_eval(self.time)?;
            measured.flat_probe = t.config.phases.probe_steps > 0 && rows == 0;
            let rank = Rank::of_probe(&t.config.phases, &measured);
            scores.push(measured);
            let probe_optimizer = std::mem::replace(&mut t.optimizer, optimizer.snapshot()?);
            if self.keep && self.best.as_ref().is_none_or(|b| rank.beats(b.rank)) {
                self.best = None; // one kept probe at a time
                self.best = Some(Probe {
                    class: k,
                    rank,
                    params: ParamSnapshot::take(&t.vars)?,
                    optimizer: probe_optimizer,
                    optimizer_steps: t.state.optimizer_steps,
                    rng: t.rng.clone(),
                    kept: KeptSteps { steps, secs },
                });
            }
            params.restore(&t.vars)?;
            t.state.optimizer_steps = optimizer_steps;
        }
        t.rng = main_rng;
        Ok(scores)
    }

    fn target(&self, class: usize) -> Result<Target> {
        self.trainer.phase_target(class)
    }

    /// On one fresh rollout batch graded on every class, the cosine (and dot product) of each
    /// class's policy gradient with the overall score's.
    fn align(&mut self, classes: &[usize]) -> Result<Vec<(f64, f64)>> {
        let t = &mut *self.trainer;
        let rollout = t.rollout(t.config.grpo.prompts_per_step, None, self.time)?;
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
