//! Phases and selectors of ARL-RR: every `phases.length` steps a selector picks the class the
//! next phase optimizes, from measured task performance. Each choice is a [`Decision`] that
//! carries the numbers behind it (one line of `schedule.jsonl`).

use crate::objective::Target;
use anyhow::{bail, ensure, Context, Result};
use rubric::RewardVector;
use serde::{Deserialize, Serialize};

/// `[phases]` (used by `objective.kind = "alternating"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhaseConfig {
    /// Steps per phase (`S`).
    pub length: u64,
    /// `"lookahead"` (default), `"gradient"`, `"deficit"`, `"ucb"`, `"round_robin"`,
    /// `"shuffled"`, `"fixed"`.
    pub selector: SelectorKind,
    /// `fixed`: the class trained throughout (a class name, e.g. `"accuracy"`).
    pub fixed_class: Option<String>,
    /// `lookahead`: probe steps per candidate (`L`).
    pub probe_steps: u64,
    /// `lookahead`: probe only the `top_m` classes by deficit; 0 = every class.
    pub top_m: usize,
    /// `ucb`: exploration constant `c` in `mean_gain + c * sqrt(2 ln N / n_k)`.
    pub ucb_c: f64,
    /// Validation examples (the first ones) in the selectors' fixed batch; 0 (the default)
    /// = auto, see [`PhaseConfig::select_batch`].
    pub select_size: usize,
    /// Responses sampled per example of the fixed batch (same seed for every candidate); 0
    /// (the default) = auto, see [`PhaseConfig::select_batch`].
    pub select_samples: usize,
    /// Phase guard (off when absent): end a phase early when the overall score on the fixed
    /// batch, measured after each step, has dropped by more than this since the phase began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard_drop: Option<f64>,
    /// Paired selection: the fixed batch is sampled with one seed per (example, sample), so
    /// every candidate and the base see the same sampling noise (common random numbers), and
    /// each lookahead candidate records its paired gain and standard error.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paired: bool,
    /// `lookahead`: probe only the classes whose reward spreads on the fixed batch's base
    /// measurement (a class without spread gives GRPO no signal); the others are recorded in
    /// the decision's `skipped`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skip_flat: bool,
    /// `lookahead`: the chosen class's probe steps become the first steps of its phase (its
    /// parameters, optimizer and rng are kept, not retrained from the snapshot).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_probe: bool,
    /// ARL-RR schedule variant (alternating runs; off when absent): end a phase early when
    /// its class has stopped giving GRPO signal, i.e. the zero-spread share of the active
    /// class's groups, averaged over the phase's last `window` steps, is at least `share`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_flat: Option<EndFlat>,
}

/// `phases.end_flat = { share = 0.75, window = 2 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndFlat {
    /// Zero-spread share (mean over the window's steps) at which the phase ends, in (0, 1].
    pub share: f64,
    /// Steps of the phase the share is averaged over (at least 1; default 2).
    #[serde(default = "EndFlat::default_window")]
    pub window: u64,
}

impl EndFlat {
    fn default_window() -> u64 {
        2
    }
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
            select_size: 0,
            select_samples: 0,
            guard_drop: None,
            paired: false,
            skip_flat: false,
            keep_probe: false,
            end_flat: None,
        }
    }
}

impl PhaseConfig {
    /// The selectors' fixed batch, `(examples, responses per example)`, for a validation split
    /// of `val_len` examples and training steps of `prompts_per_step` × `group_size`
    /// responses. A value set in the config is kept (the examples capped at the split). 0 =
    /// auto: `group_size` responses per example, at least 2 (a class's spread within an
    /// example shows) and at most 8; as many examples as make up the responses of two
    /// training steps, at least 4, at most the split. One measurement then costs about the
    /// sampling of two steps.
    pub fn select_batch(
        &self,
        val_len: usize,
        prompts_per_step: usize,
        group_size: usize,
    ) -> (usize, usize) {
        let samples = match self.select_samples {
            0 => group_size.clamp(2, 8),
            n => n,
        };
        let size = match self.select_size {
            0 => (2 * prompts_per_step * group_size).div_ceil(samples).max(4),
            n => n,
        };
        (size.clamp(1, val_len.max(1)), samples)
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
    /// Round robin in a random class order: cycles through the trainable classes, each cycle
    /// in a fresh uniformly random order drawn from the run seed and the cycle's index alone
    /// ([`shuffled_order`]); measures nothing.
    Shuffled,
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
    /// The step the active phase began at (`None` in checkpoints from before the phase
    /// guard, whose phases all began at multiples of `length`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    /// The phase guard (or `end_flat`) ended the active phase: the next step is a boundary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tripped: Option<GuardTrip>,
    /// `end_flat`: the zero-spread shares of the active phase's last `window` steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flat_shares: Vec<f64>,
    /// `shuffled`: the cycle in progress (absent before its first phase, and for the other
    /// selectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Cycle>,
}

/// `shuffled`'s cycle in progress: its order and how much of it the phases have visited. The
/// order is kept (not only its index) so that a resumed run goes on with exactly it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cycle {
    /// The cycle's index (0 = the run's first).
    pub index: u64,
    /// The classes in the order the cycle visits them.
    pub order: Vec<usize>,
    /// How many of `order` have been chosen.
    pub next: usize,
}

/// `shuffled`: cycle `cycle`'s visiting order of `classes`, a uniformly random permutation
/// (Fisher–Yates) drawn from a SplitMix64 stream seeded by `(seed, cycle)` alone, so no
/// generator state needs saving and the trainer's own generator is never drawn from.
pub fn shuffled_order(seed: u64, cycle: u64, classes: &[usize]) -> Vec<usize> {
    // a fixed salt keeps this stream apart from any other use of the run seed
    let mut state = splitmix64(&mut (seed ^ 0x7368_7566_666c_6564)).wrapping_add(cycle);
    let mut state = splitmix64(&mut state);
    let mut order = classes.to_vec();
    for i in (1..order.len()).rev() {
        let n = i as u64 + 1;
        // rejection sampling: uniform in 0..n without modulo bias
        let zone = u64::MAX - u64::MAX % n;
        let j = loop {
            let x = splitmix64(&mut state);
            if x < zone {
                break x % n;
            }
        };
        order.swap(i, j as usize);
    }
    order
}

/// The next number of a SplitMix64 stream (Steele, Lea and Flood 2014).
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The record of a phase ended early: by the phase guard (a drop of the score) or by
/// `end_flat` (no signal left).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardTrip {
    /// Steps completed when it was measured (the next phase starts there).
    pub step: u64,
    /// Phase guard: the overall score on the fixed batch then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    /// Phase guard: `start_score - score` (more than `guard_drop`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<f64>,
    /// `end_flat`: the zero-spread shares of the phase's last `window` steps (their mean is
    /// at least `end_flat.share`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flat: Option<Vec<f64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub pulls: u64,
    pub total_gain: f64,
}

impl PhaseState {
    /// Whether a new phase starts at `step`: none is active yet, the active one has run
    /// `length` steps (see [`PhaseState::end_step`]), or the phase guard or `end_flat` ended
    /// it. Without those that is every multiple of `length`. The one phase boundary: the
    /// trainer and the reward service both ask it.
    pub fn boundary(&self, step: u64, cfg: &PhaseConfig) -> bool {
        let ran_out = match self.end_step(cfg) {
            Some(end) => step >= end,
            // a checkpoint from before `started_at`: its phases began at multiples of `length`
            None => step.is_multiple_of(cfg.length),
        };
        self.active.is_none() || ran_out || self.tripped.is_some()
    }

    /// The step the active phase runs out at, `length` steps after it began (unless the
    /// guard ends it first); `None` before the first phase, and in a checkpoint from before
    /// `started_at`.
    pub fn end_step(&self, cfg: &PhaseConfig) -> Option<u64> {
        self.started_at
            .map(|start| start.saturating_add(cfg.length))
    }

    /// The phase guard, after a step inside a phase, given the overall score on the fixed
    /// batch measured after `step` steps: ends the phase (the next step is a boundary) when
    /// the score dropped by more than `guard_drop` below the phase's start score. Returns
    /// whether it did; without the guard, a start score or a score now it never does.
    pub fn check_guard(&mut self, cfg: &PhaseConfig, step: u64, now: Option<f64>) -> bool {
        let (Some(limit), Some(start), Some(score)) = (cfg.guard_drop, self.start_score, now)
        else {
            return false;
        };
        let drop = start - score;
        if drop > limit {
            self.tripped = Some(GuardTrip {
                step,
                score: Some(score),
                drop: Some(drop),
                flat: None,
            });
        }
        self.tripped.is_some()
    }

    /// `end_flat`, after a step of the active phase whose groups had zero spread on its
    /// objective in `share` of the cases: keeps the phase's last `window` shares.
    pub fn note_flat(&mut self, cfg: &PhaseConfig, share: f64) {
        let Some(f) = cfg.end_flat else {
            return;
        };
        self.flat_shares.push(share);
        let extra = self.flat_shares.len().saturating_sub(f.window as usize);
        self.flat_shares.drain(..extra);
    }

    /// `end_flat`, after `step` steps inside a phase: ends the phase (the next step is a
    /// boundary) when its last `window` steps' zero-spread shares average at least
    /// `end_flat.share`. Returns whether the phase is ended (by this or the guard).
    pub fn check_flat(&mut self, cfg: &PhaseConfig, step: u64) -> bool {
        let Some(f) = cfg.end_flat else {
            return self.tripped.is_some();
        };
        let n = self.flat_shares.len();
        let mean = crate::stats::mean(&self.flat_shares);
        if self.tripped.is_none() && n as u64 >= f.window && mean >= f.share {
            self.tripped = Some(GuardTrip {
                step,
                score: None,
                drop: None,
                flat: Some(self.flat_shares.clone()),
            });
        }
        self.tripped.is_some()
    }

    /// `shuffled`: the next class of the cycle in progress, a new cycle's order drawn when it
    /// is done (or none has begun).
    fn next_shuffled(&mut self, trainable: &[usize], seed: u64) -> usize {
        let done = self.cycle.as_ref().is_none_or(|c| c.next >= c.order.len());
        if done {
            let index = self.cycle.as_ref().map_or(0, |c| c.index + 1);
            self.cycle = Some(Cycle {
                index,
                order: shuffled_order(seed, index, trainable),
                next: 0,
            });
        }
        let c = self.cycle.as_mut().expect("set above");
        c.next += 1;
        c.order[c.next - 1]
    }

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
    pub fn ucb_candidates(&self, trainable: &[usize], c: f64) -> Vec<Candidate> {
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
                    class: k,
                    score: bound,
                    detail: mean,
                    gain_se: None,
                }
            })
            .collect()
    }
}

/// The choice of a phase's class, with the numbers behind it. The classes are indices
/// (`C = usize`) from the selector to the phase state; [`Decision::named`] names them for the
/// record, one line of `schedule.jsonl` ([`DecisionRecord`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "C: ClassName", deserialize = "C: ClassName"))]
pub struct Decision<C = usize> {
    /// The step the phase starts at.
    pub step: u64,
    pub phase: u64,
    pub selector: SelectorKind,
    pub chosen: C,
    /// Overall score on the fixed batch before the decision (when measured).
    pub base_score: Option<f64>,
    /// Per-class scores on the fixed batch (class order; null = no data).
    pub base_class_scores: Vec<Option<f64>>,
    /// Every candidate with the number it was ranked by.
    pub candidates: Vec<Candidate<C>>,
    /// The phase guard or `end_flat` ended the previous phase early (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardTrip>,
    /// `phases.skip_flat`: the classes the lookahead did not probe, and why (absent when none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<Skipped<C>>,
    /// What the selection ran (absent in a service run's decisions). Its wall time is the
    /// phase's first metrics line's `time_s.select`, kept out of here so that the file
    /// reproduces byte for byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<SelectCost>,
}

/// One line of `schedule.jsonl`: a [`Decision`] with its classes named.
pub type DecisionRecord = Decision<String>;

/// How a class is named in a decision's record: by its name. Only names reach a file, so a
/// decision whose classes are indices does not serialize.
pub trait ClassName: Serialize + serde::de::DeserializeOwned {}

impl ClassName for String {}

impl Decision {
    /// The record of this decision: the classes named by `names` (class order).
    pub fn named(&self, names: &[String]) -> DecisionRecord {
        let name = |k: usize| names[k].clone();
        Decision {
            step: self.step,
            phase: self.phase,
            selector: self.selector,
            chosen: name(self.chosen),
            base_score: self.base_score,
            base_class_scores: self.base_class_scores.clone(),
            candidates: self
                .candidates
                .iter()
                .map(|c| Candidate {
                    class: name(c.class),
                    score: c.score,
                    detail: c.detail,
                    gain_se: c.gain_se,
                })
                .collect(),
            guard: self.guard.clone(),
            skipped: self
                .skipped
                .iter()
                .map(|s| Skipped {
                    class: name(s.class),
                    reason: s.reason.clone(),
                })
                .collect(),
            cost: self.cost,
        }
    }
}

/// A class the lookahead left out of its probes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "C: ClassName", deserialize = "C: ClassName"))]
pub struct Skipped<C = usize> {
    pub class: C,
    pub reason: String,
}

/// The work of one selection, for the report's cost per phase boundary.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SelectCost {
    /// Training steps run by the lookahead's probes (candidates × `probe_steps`).
    pub probe_steps: u64,
    /// Of those, the steps kept as the phase's first steps (`phases.keep_probe`).
    pub kept_steps: u64,
    /// The fixed batch measured: examples, and responses per example.
    pub select_size: usize,
    pub select_samples: usize,
}

/// A class a selector ranked (`C`: an index, or a name in the record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(serialize = "C: ClassName", deserialize = "C: ClassName"))]
pub struct Candidate<C = usize> {
    pub class: C,
    /// What the selector maximized: lookahead = overall score after the probe (deficit when
    /// `skip_flat` found no class with spread), gradient =
    /// cosine with the overall gradient, deficit = points share × (1 − score), ucb = bound
    /// (null = untried, tried first).
    #[serde(with = "finite_or_null")]
    pub score: f64,
    /// The number next to it: lookahead = gain over `base_score`, gradient = dot product,
    /// deficit = class score, ucb = mean gain. Paired lookahead: the mean over the fixed
    /// batch's examples of (score after the probe − score before).
    #[serde(with = "finite_or_null")]
    pub detail: f64,
    /// Paired lookahead: the standard error of that mean gain (sample std of the per-example
    /// differences / √n); absent otherwise or with fewer than two examples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gain_se: Option<f64>,
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

/// Scores on the selectors' fixed batch (the trainer) or reported on validation (the service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The training step they were measured at.
    pub step: u64,
    pub overall: Option<f64>,
    /// In class order; `None` = no data.
    pub classes: Vec<Option<f64>>,
}

/// The classes a schedule chooses among.
#[derive(Debug, Clone, Copy)]
pub struct Choices<'a> {
    pub names: &'a [String],
    /// Classes with a positive-point criterion in the training data (the others give no
    /// signal and are never chosen).
    pub trainable: &'a [usize],
    /// Each class's share of the positive points (`deficit` weighs by it).
    pub select_weights: &'a [f64],
    /// The run seed (`shuffled` draws its cycles' orders from it).
    pub seed: u64,
}

/// What the next decision needs from whoever holds the policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The candidates are ranked: commit the best.
    Decide(Vec<Candidate>),
    /// Lookahead: train each class `probe_steps` steps from the same start, measure the
    /// overall score after each, then rank them with [`probe_candidates`].
    Probe(Vec<usize>),
    /// Gradient: rank these classes by how their policy gradient aligns with the overall
    /// score's (only an in-process trainer has gradients).
    Gradients(Vec<usize>),
}

impl SelectorKind {
    /// Whether the selector reads scores of the current policy (fixed, round robin and
    /// shuffled do not).
    pub fn measures(self) -> bool {
        !matches!(
            self,
            SelectorKind::Fixed | SelectorKind::RoundRobin | SelectorKind::Shuffled
        )
    }
}

impl PhaseState {
    /// At a phase boundary, given the scores measured now (if any): credits the phase that
    /// ended (`ucb`) and says what the choice of the next class needs. A single candidate is
    /// chosen without probing: there is nothing to compare it with.
    pub fn plan(
        &mut self,
        cfg: &PhaseConfig,
        at: Choices,
        base: Option<&Measured>,
    ) -> Result<Plan> {
        let (names, trainable) = (at.names, at.trainable);
        ensure!(
            !trainable.is_empty(),
            "no meta-class has a positive-point criterion in the training data"
        );
        self.credit_ended_phase(names.len(), base.and_then(|b| b.overall));
        let class_score = |k: usize| base.and_then(|b| b.classes[k]).unwrap_or(f64::NAN);
        let deficit = |k: usize| at.select_weights[k] * (1.0 - class_score(k));
        let one = |k: usize| {
            Plan::Decide(vec![Candidate {
                class: k,
                score: 1.0,
                detail: 0.0,
                gain_se: None,
            }])
        };
        Ok(match cfg.selector {
            SelectorKind::Fixed => {
                let name = cfg.fixed_class.as_deref().unwrap_or_default();
                let Some(k) = names.iter().position(|n| n == name) else {
                    bail!(
                        "field `phases.fixed_class`: `{name}` is not a meta-class (classes: {})",
                        names.join(", ")
                    );
                };
                one(k)
            }
            SelectorKind::RoundRobin => one(match self.active {
                None => trainable[0],
                Some(a) => *trainable.iter().find(|&&k| k > a).unwrap_or(&trainable[0]),
            }),
            SelectorKind::Shuffled => one(self.next_shuffled(trainable, at.seed)),
            SelectorKind::Deficit => Plan::Decide(
                trainable
                    .iter()
                    .map(|&k| Candidate {
                        class: k,
                        score: deficit(k),
                        detail: class_score(k),
                        gain_se: None,
                    })
                    .collect(),
            ),
            SelectorKind::Ucb => Plan::Decide(self.ucb_candidates(trainable, cfg.ucb_c)),
            SelectorKind::Lookahead => {
                let mut probed = trainable.to_vec();
                if cfg.top_m > 0 && cfg.top_m < probed.len() {
                    probed.sort_by(|&a, &b| deficit(b).total_cmp(&deficit(a)).then(a.cmp(&b)));
                    probed.truncate(cfg.top_m);
                    probed.sort_unstable();
                }
                match probed[..] {
                    [k] => one(k),
                    _ => Plan::Probe(probed),
                }
            }
            SelectorKind::Gradient => match trainable {
                [k] => one(*k),
                _ => Plan::Gradients(trainable.to_vec()),
            },
        })
    }

    /// Starts the phase of the best candidate ([`best`]: the highest score, NaN last, ties
    /// to the earlier candidate) at `step` and returns the choice. `classes`: how many
    /// meta-classes there are.
    pub fn commit(
        &mut self,
        step: u64,
        selector: SelectorKind,
        classes: usize,
        candidates: Vec<Candidate>,
        base: Option<&Measured>,
    ) -> Result<Decision> {
        let best = best(candidates.iter().map(|c| Rank::of(c.score)))
            .context("the selector produced no candidate")?;
        let chosen = candidates[best].class;
        ensure!(chosen < classes, "candidate {chosen} is not a class");
        let base_score = base.and_then(|b| b.overall);
        self.index += 1;
        self.active = Some(chosen);
        self.start_score = base_score;
        self.started_at = Some(step);
        self.flat_shares.clear();
        let guard = self.tripped.take();
        Ok(Decision {
            step,
            phase: self.index,
            selector,
            chosen,
            base_score,
            base_class_scores: base.map_or_else(|| vec![None; classes], |b| b.classes.clone()),
            candidates,
            guard,
            skipped: Vec::new(),
            cost: None,
        })
    }
}

/// Where a candidate stands in a selection: the one ranking of every selector. A
/// lookahead probe that made no update ranks after every probe that did, then the higher
/// score ranks first, NaN last; of equal ranks the earlier candidate wins.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rank {
    /// The candidate was measured after an update: `false` only for a lookahead probe that
    /// made none under `skip_flat` (see [`Rank::of_probe`]).
    pub updated: bool,
    /// What the selector maximizes (a [`Candidate`]'s `score`).
    pub score: f64,
}

impl Rank {
    /// A candidate scored `score`.
    pub fn of(score: f64) -> Rank {
        Rank {
            updated: true,
            score,
        }
    }

    /// A lookahead probe's measurement: its overall score, ranked after the probes that made
    /// an update when it made none and `phases.skip_flat` is on.
    pub fn of_probe(cfg: &PhaseConfig, probe: &BatchScores) -> Rank {
        Rank {
            updated: !(cfg.skip_flat && probe.flat_probe),
            score: probe.measured.overall.unwrap_or(f64::NAN),
        }
    }

    /// Whether a candidate of this rank leads `earlier`, a candidate before it: it must rank
    /// strictly higher, as ties go to the earlier candidate.
    pub fn beats(self, earlier: Rank) -> bool {
        let key = |r: Rank| {
            let score = if r.score.is_nan() {
                f64::NEG_INFINITY
            } else {
                r.score
            };
            (r.updated, score)
        };
        let ((a_up, a), (b_up, b)) = (key(self), key(earlier));
        a_up.cmp(&b_up).then(a.total_cmp(&b)).is_gt()
    }
}

/// The index of the best of candidates ranked in order: the first of the highest [`Rank`]
/// (`None` when there is none).
pub fn best(ranks: impl IntoIterator<Item = Rank>) -> Option<usize> {
    let mut lead: Option<(usize, Rank)> = None;
    for (i, r) in ranks.into_iter().enumerate() {
        if lead.is_none_or(|(_, l)| r.beats(l)) {
            lead = Some((i, r));
        }
    }
    lead.map(|(i, _)| i)
}

/// Whether `target`'s reward spreads on a measured batch (`rewards[example][response]`, `None`
/// = excluded): the responses of some example differ, which is what GRPO learns from. With
/// one response per example there is no group: then whether the examples differ.
pub fn spreads(target: &Target, rewards: &[Vec<Option<RewardVector>>], n_classes: usize) -> bool {
    let pooled: Vec<Vec<Option<RewardVector>>>;
    let groups = if rewards.iter().all(|g| g.len() < 2) {
        pooled = vec![rewards.iter().flatten().cloned().collect()];
        &pooled[..]
    } else {
        rewards
    };
    let adv = target.advantages(groups, n_classes, 0.0);
    adv.zero_spread.iter().any(|z| !z)
}

/// Lookahead candidates from the probes' overall scores: ranked by the score, with the gain
/// over the score before probing next to it.
pub fn probe_candidates(
    classes: &[usize],
    scores: &[f64],
    base_overall: Option<f64>,
) -> Vec<Candidate> {
    classes
        .iter()
        .zip(scores)
        .map(|(&k, &score)| Candidate {
            class: k,
            score,
            detail: base_overall.map_or(f64::NAN, |b| score - b),
            gain_se: None,
        })
        .collect()
}

/// Paired selection: the mean and the standard error (sample std / √n; `None` below two
/// examples) of `after - base` over the examples scored in both (`None` when there is none).
pub fn paired_gain(base: &[Option<f64>], after: &[Option<f64>]) -> Option<(f64, Option<f64>)> {
    let diffs: Vec<f64> = base
        .iter()
        .zip(after)
        .filter_map(|(b, a)| Some((*a)? - (*b)?))
        .collect();
    let n = diffs.len() as f64;
    let (mean, std) = crate::mean_std(diffs.iter().copied())?;
    // population std → sample std
    let se = (diffs.len() >= 2).then(|| std * (n / (n - 1.0)).sqrt() / n.sqrt());
    Some((mean, se))
}

/// Scores of one measurement of the selectors' fixed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScores {
    pub measured: Measured,
    /// Per example of the batch, the mean overall score of its scored responses (`None` =
    /// none scored); what paired selection compares.
    pub examples: Vec<Option<f64>>,
    /// `[example][response]`: each response's rewards (`None` = excluded); where
    /// `skip_flat` reads each class's spread.
    pub rewards: Vec<Vec<Option<RewardVector>>>,
    /// A lookahead probe's measurement: no group of the probe's steps had reward spread, so
    /// it made no update and its score is the base's (not a measured gain).
    pub flat_probe: bool,
}

impl BatchScores {
    /// The scores with `examples` (each example's mean overall score) taken from `rewards`.
    pub fn new(measured: Measured, rewards: Vec<Vec<Option<RewardVector>>>) -> BatchScores {
        let examples = rewards
            .iter()
            .map(|g| crate::mean_std(g.iter().flatten().filter_map(|r| r.overall)).map(|m| m.0))
            .collect();
        BatchScores {
            measured,
            examples,
            rewards,
            flat_probe: false,
        }
    }
}

/// What a selector asks of whoever holds the policy and can measure it at once.
pub trait Measure {
    /// Overall and per-class scores of the current policy on the selectors' fixed batch.
    fn measure(&mut self) -> Result<BatchScores>;
    /// Lookahead: per class, the scores on the fixed batch after `probe_steps` steps on that
    /// class, every probe starting from the current policy (restored afterwards).
    fn probe(&mut self, classes: &[usize]) -> Result<Vec<BatchScores>>;
    /// Gradient: per class, the cosine and the dot product of its policy gradient with the
    /// overall score's.
    fn align(&mut self, classes: &[usize]) -> Result<Vec<(f64, f64)>>;
    /// The reward a phase on `class` trains (what `skip_flat` checks for spread).
    fn target(&self, class: usize) -> Result<Target> {
        Ok(Target::Class(class))
    }
}

/// Chooses the class of the phase starting at `step`, measuring through `owner` what the
/// selector needs, and updates `state`.
pub fn decide(
    state: &mut PhaseState,
    cfg: &PhaseConfig,
    at: Choices,
    step: u64,
    owner: &mut impl Measure,
) -> Result<Decision> {
    ensure!(
        !at.trainable.is_empty(),
        "no meta-class has a positive-point criterion in the training data"
    );
    let base = if cfg.selector.measures() {
        Some(owner.measure()?)
    } else {
        None
    };
    let base_scores = base.as_ref().map(|b| &b.measured);
    let (mut at, mut plan_cfg) = (at, cfg.clone());
    let mut skipped = Vec::new();
    let spreading: Vec<usize>;
    if let (SelectorKind::Lookahead, true, Some(b)) = (cfg.selector, cfg.skip_flat, &base) {
        let mut keep = Vec::new();
        for &k in at.trainable {
            if spreads(&owner.target(k)?, &b.rewards, at.names.len()) {
                keep.push(k);
            } else {
                skipped.push(Skipped {
                    class: k,
                    reason: flat_reason(&b.rewards),
                });
            }
        }
        spreading = keep;
        if spreading.is_empty() {
            // nothing to learn from anywhere: the largest deficit, unprobed
            plan_cfg.selector = SelectorKind::Deficit;
        } else {
            at.trainable = &spreading;
        }
    }
    let candidates = match state.plan(&plan_cfg, at, base_scores)? {
        Plan::Decide(c) => c,
        Plan::Probe(classes) => {
            let probes = owner.probe(&classes)?;
            let ranks: Vec<Rank> = probes.iter().map(|p| Rank::of_probe(cfg, p)).collect();
            let scores: Vec<f64> = ranks.iter().map(|r| r.score).collect();
            let base_overall = base_scores.and_then(|b| b.overall);
            let mut c = probe_candidates(&classes, &scores, base_overall);
            if let (true, Some(base)) = (cfg.paired, &base) {
                for (c, p) in c.iter_mut().zip(&probes) {
                    let gain = paired_gain(&base.examples, &p.examples);
                    (c.detail, c.gain_se) = gain.unwrap_or((f64::NAN, None));
                }
            }
            let flat = |r: &Rank| !r.updated;
            if ranks.iter().any(flat) && !ranks.iter().all(flat) {
                // a probe that made no update measured nothing: its class cannot be trained
                // now, and its "gain" of 0 must not beat measured (if negative) gains; so it
                // ranks last (`Rank`), and is left out of the candidates
                let mut kept = Vec::new();
                for (c, r) in c.into_iter().zip(&ranks) {
                    if flat(r) {
                        skipped.push(Skipped {
                            reason: "its probe's groups had no reward spread on the training prompts: no update".into(),
                            class: c.class,
                        });
                    } else {
                        kept.push(c);
                    }
                }
                c = kept;
            }
            c
        }
        Plan::Gradients(classes) => classes
            .iter()
            .zip(owner.align(&classes)?)
            .map(|(&k, (cos, dot))| Candidate {
                class: k,
                score: cos,
                detail: dot,
                gain_se: None,
            })
            .collect(),
    };
    let classes = at.names.len();
    let mut d = state.commit(step, cfg.selector, classes, candidates, base_scores)?;
    d.skipped = skipped;
    Ok(d)
}

fn flat_reason(rewards: &[Vec<Option<RewardVector>>]) -> String {
    let most = rewards.iter().map(Vec::len).max().unwrap_or(0);
    if most < 2 {
        "the same reward on every example of the selection batch (one response each)".into()
    } else {
        format!("no reward spread within any example's {most} responses on the selection batch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ucb_credits_the_ended_phase_and_tries_every_class_first() {
        let mut st = PhaseState {
            active: Some(0),
            start_score: Some(0.4),
            ..PhaseState::default()
        };
        st.credit_ended_phase(3, Some(0.5));
        assert_eq!(st.arms[0].pulls, 1);
        assert!((st.arms[0].total_gain - 0.1).abs() < 1e-12);
        let c = st.ucb_candidates(&[0, 1, 2], 1.0);
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
        let c = st.ucb_candidates(&[0, 1], 1.0);
        let bonus = (2.0 * 2f64.ln()).sqrt();
        assert!((c[0].score - (0.1 + bonus)).abs() < 1e-12);
        assert!((c[1].score - (-0.2 + bonus)).abs() < 1e-12);
        assert_eq!(c.len(), 2);
    }

    fn names() -> Vec<String> {
        ["a", "b", "c"].map(String::from).to_vec()
    }

    fn at<'a>(names: &'a [String], trainable: &'a [usize], weights: &'a [f64]) -> Choices<'a> {
        Choices {
            names,
            trainable,
            select_weights: weights,
            seed: 0,
        }
    }

    fn measured(overall: f64, classes: &[Option<f64>]) -> Measured {
        Measured {
            step: 0,
            overall: Some(overall),
            classes: classes.to_vec(),
        }
    }

    #[test]
    fn round_robin_cycles_the_trainable_classes() {
        let (n, w) = (names(), [0.5, 0.0, 0.5]);
        let cfg = PhaseConfig {
            selector: SelectorKind::RoundRobin,
            ..PhaseConfig::default()
        };
        let mut st = PhaseState::default();
        let mut chosen = Vec::new();
        for step in 0..3 {
            let Plan::Decide(c) = st.plan(&cfg, at(&n, &[0, 2], &w), None).unwrap() else {
                panic!("round robin decides at once");
            };
            chosen.push(st.commit(step, cfg.selector, 3, c, None).unwrap().chosen);
        }
        assert_eq!(chosen, [0, 2, 0]);
        assert_eq!(st.index, 3);
    }

    /// `phases` decisions of `shuffled` over `trainable` (of five classes) at `seed`, from
    /// `st`.
    fn shuffled_run(
        st: &mut PhaseState,
        seed: u64,
        trainable: &[usize],
        phases: u64,
    ) -> Vec<usize> {
        let n: Vec<String> = ["a", "b", "c", "d", "e"].map(String::from).to_vec();
        let w = [0.2; 5];
        let cfg = PhaseConfig {
            selector: SelectorKind::Shuffled,
            ..PhaseConfig::default()
        };
        let choices = Choices {
            seed,
            ..at(&n, trainable, &w)
        };
        (0..phases)
            .map(|step| {
                let Plan::Decide(c) = st.plan(&cfg, choices, None).unwrap() else {
                    panic!("shuffled decides at once");
                };
                assert_eq!(c.len(), 1, "one candidate: nothing is measured");
                st.commit(step, cfg.selector, 5, c, None).unwrap().chosen
            })
            .collect()
    }

    #[test]
    fn shuffled_visits_every_class_once_per_cycle_in_a_seeded_random_order() {
        let trainable = [0, 1, 3, 4]; // class 2 has no positive points
        let run = |seed| shuffled_run(&mut PhaseState::default(), seed, &trainable, 40);
        let a = run(11);
        for cycle in a.chunks(4) {
            let mut sorted = cycle.to_vec();
            sorted.sort_unstable();
            assert_eq!(sorted, trainable, "each cycle a permutation: {a:?}");
        }
        // not round robin's fixed order, and the cycles differ from each other
        let cycles: std::collections::BTreeSet<&[usize]> = a.chunks(4).collect();
        assert!(cycles.len() > 3, "{a:?}");
        assert_eq!(run(11), a, "deterministic");
        assert_ne!(run(12), a, "another seed, another order");
        // the order comes from (seed, cycle) alone
        assert_eq!(&a[8..12], shuffled_order(11, 2, &trainable));
    }

    #[test]
    fn shuffled_orders_are_uniform_permutations() {
        let mut counts = std::collections::BTreeMap::new();
        for cycle in 0..6000 {
            *counts
                .entry(shuffled_order(5, cycle, &[0, 1, 2]))
                .or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 6, "{counts:?}");
        // 1000 expected each, binomial sd ≈ 29
        assert!(
            counts.values().all(|&c| (850..1150).contains(&c)),
            "{counts:?}"
        );
        let firsts: Vec<usize> = (0..3000)
            .map(|s| shuffled_order(s, 0, &[0, 1, 2, 3, 4])[0])
            .collect();
        for k in 0..5 {
            let n = firsts.iter().filter(|&&f| f == k).count();
            assert!((480..720).contains(&n), "class {k} first {n} times of 3000");
        }
    }

    #[test]
    fn shuffled_resumes_mid_cycle_in_the_same_order() {
        let all = [0, 1, 2, 3, 4];
        let full = shuffled_run(&mut PhaseState::default(), 3, &all, 13);
        for stop in [1, 2, 5, 7] {
            let mut st = PhaseState::default();
            let mut got = shuffled_run(&mut st, 3, &all, stop);
            let saved = serde_json::to_string(&st).unwrap();
            let mut back: PhaseState = serde_json::from_str(&saved).unwrap();
            assert_eq!(back, st);
            got.extend(shuffled_run(&mut back, 3, &all, 13 - stop));
            assert_eq!(got, full, "resumed after {stop} phases");
        }
        // a checkpoint from before `cycle` loads, and other selectors write none
        let old: PhaseState =
            serde_json::from_str(r#"{"index":2,"active":1,"start_score":null,"arms":[]}"#).unwrap();
        assert_eq!(old.cycle, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("cycle"));
    }

    #[test]
    fn lookahead_probes_the_top_deficits_and_decides_alone_without_rivals() {
        let (n, w) = (names(), [0.2, 0.3, 0.5]);
        let base = measured(0.5, &[Some(0.0), Some(0.9), Some(0.5)]);
        // deficits: a 0.2, b 0.03, c 0.25
        let cfg = PhaseConfig {
            top_m: 2,
            ..PhaseConfig::default()
        };
        let mut st = PhaseState::default();
        let plan = st.plan(&cfg, at(&n, &[0, 1, 2], &w), Some(&base)).unwrap();
        assert_eq!(plan, Plan::Probe(vec![0, 2]));
        let one = PhaseConfig { top_m: 1, ..cfg };
        let Plan::Decide(c) = st.plan(&one, at(&n, &[0, 1, 2], &w), Some(&base)).unwrap() else {
            panic!("one candidate needs no probe");
        };
        assert_eq!(c[0].class, 2);
    }

    #[test]
    fn commit_takes_the_argmax_with_nan_last_and_ties_to_the_earlier_class() {
        let c = probe_candidates(&[0, 1, 2], &[f64::NAN, 0.7, 0.7], Some(0.5));
        assert!((c[1].detail - 0.2).abs() < 1e-12);
        let base = measured(0.5, &[None, Some(0.1), None]);
        let mut st = PhaseState::default();
        let d = st
            .commit(7, SelectorKind::Lookahead, 3, c, Some(&base))
            .unwrap();
        assert_eq!((d.chosen, d.step, d.phase), (1, 7, 1));
        assert_eq!(d.base_class_scores, vec![None, Some(0.1), None]);
        assert_eq!((st.active, st.start_score), (Some(1), Some(0.5)));
        let nan = vec![Candidate {
            class: 0,
            score: f64::NAN,
            detail: 0.0,
            gain_se: None,
        }];
        assert_eq!(
            st.commit(8, SelectorKind::Deficit, 3, nan, None)
                .unwrap()
                .chosen,
            0,
            "a lone NaN candidate is still chosen"
        );
    }

    #[test]
    fn the_ranking_puts_probes_without_update_and_nan_last_and_ties_to_the_earlier() {
        let of = Rank::of;
        assert_eq!(best([of(0.1), of(0.3), of(0.3), of(0.2)]), Some(1));
        assert_eq!(best([of(f64::NAN), of(-5.0)]), Some(1));
        assert_eq!(best([of(f64::NAN), of(f64::NAN)]), Some(0));
        assert_eq!(best([]), None);
        let flat = Rank {
            updated: false,
            score: 0.9,
        };
        assert_eq!(best([flat, of(0.1)]), Some(1));
        assert_eq!(best([flat, flat]), Some(0));
        assert!(of(f64::NAN).beats(flat) && !flat.beats(of(f64::NAN)));
        // a probe is ranked by its overall score, made-no-update only under skip_flat
        let mut probe = BatchScores::new(measured(0.4, &[]), Vec::new());
        probe.flat_probe = true;
        let on = PhaseConfig {
            skip_flat: true,
            ..PhaseConfig::default()
        };
        assert_eq!(
            Rank::of_probe(&on, &probe),
            Rank {
                updated: false,
                score: 0.4
            }
        );
        assert_eq!(Rank::of_probe(&PhaseConfig::default(), &probe), of(0.4));
    }

    #[test]
    fn a_fixed_class_that_does_not_exist_is_named() {
        let (n, w) = (names(), [1.0, 0.0, 0.0]);
        let cfg = PhaseConfig {
            selector: SelectorKind::Fixed,
            fixed_class: Some("z".into()),
            ..PhaseConfig::default()
        };
        let e = PhaseState::default()
            .plan(&cfg, at(&n, &[0], &w), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("phases.fixed_class") && e.contains("`z`"), "{e}");
    }

    #[test]
    fn without_the_guard_phases_begin_at_multiples_of_the_length() {
        let cfg = PhaseConfig::default();
        let mut st = PhaseState::default();
        let mut starts = Vec::new();
        for step in 0..23 {
            if st.boundary(step, &cfg) {
                starts.push(step);
                let c = probe_candidates(&[0], &[0.5], Some(0.5));
                st.commit(step, cfg.selector, 3, c, None).unwrap();
            }
            // no guard: a drop changes nothing
            assert!(!st.check_guard(&cfg, step + 1, Some(-1.0)));
        }
        assert_eq!(starts, [0, 5, 10, 15, 20]);
        assert_eq!(st.end_step(&cfg), Some(25));
        // a checkpoint from before the guard (no `started_at`) keeps the same boundaries
        let old = PhaseState {
            active: Some(0),
            ..PhaseState::default()
        };
        let old_starts: Vec<u64> = (1..23).filter(|&s| old.boundary(s, &cfg)).collect();
        assert_eq!(old_starts, [5, 10, 15, 20]);
        assert_eq!(old.end_step(&cfg), None);
    }

    #[test]
    fn the_phase_guard_ends_a_phase_early_on_a_constructed_drop() {
        let n = names();
        let cfg = PhaseConfig {
            guard_drop: Some(0.05),
            ..PhaseConfig::default()
        };
        let base = measured(0.5, &[None, None, None]);
        let mut st = PhaseState::default();
        let c = probe_candidates(&[1], &[0.6], Some(0.5));
        st.commit(10, cfg.selector, 3, c.clone(), Some(&base))
            .unwrap();
        assert!(!st.boundary(11, &cfg));
        // a drop of exactly guard_drop, or none measured, keeps the phase
        assert!(!st.check_guard(&cfg, 11, Some(0.45)));
        assert!(!st.check_guard(&cfg, 11, None));
        assert!(!st.boundary(12, &cfg));
        // more than guard_drop: the phase ends after step 12, not at 15
        assert!(st.check_guard(&cfg, 12, Some(0.4)));
        assert!(st.boundary(12, &cfg));
        let d = st.commit(12, cfg.selector, 3, c, Some(&base)).unwrap();
        let trip = d.guard.expect("the decision records the early end");
        assert_eq!(trip.step, 12);
        assert!((trip.drop.unwrap() - 0.1).abs() < 1e-12 && trip.score == Some(0.4));
        assert_eq!((st.started_at, &st.tripped), (Some(12), &None));
        assert!(!st.boundary(16, &cfg) && st.boundary(17, &cfg));
        // the record is left out of schedule.jsonl when there is none
        let line = serde_json::to_string(&Decision { guard: None, ..d }.named(&n)).unwrap();
        assert!(
            !line.contains("guard") && !line.contains("gain_se"),
            "{line}"
        );
    }

    #[test]
    fn end_flat_ends_a_phase_whose_last_steps_had_no_spread() {
        let n = names();
        let cfg = PhaseConfig {
            end_flat: Some(EndFlat {
                share: 0.75,
                window: 2,
            }),
            ..PhaseConfig::default()
        };
        let mut st = PhaseState::default();
        let c = probe_candidates(&[1], &[0.6], None);
        st.commit(10, cfg.selector, 3, c.clone(), None).unwrap();
        // one flat step is not a window; 1.0 then 0.25 averages below 0.75
        for (step, share) in [(11, 1.0), (12, 0.25), (13, 0.75)] {
            st.note_flat(&cfg, share);
            assert!(!st.check_flat(&cfg, step), "step {step}");
            assert!(!st.boundary(step, &cfg));
        }
        // 0.75 and 1.0: the phase ends after step 14, not at 15
        st.note_flat(&cfg, 1.0);
        assert!(st.check_flat(&cfg, 14));
        assert!(st.boundary(14, &cfg));
        // the window's shares survive a checkpoint (serde) and old states still load
        let back: PhaseState = serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
        let old: PhaseState =
            serde_json::from_str(r#"{"index":1,"active":0,"start_score":null,"arms":[]}"#).unwrap();
        assert!(old.flat_shares.is_empty() && old.tripped.is_none());
        let d = st.commit(14, cfg.selector, 3, c, None).unwrap();
        let trip = d.guard.clone().expect("the decision records the early end");
        assert_eq!(
            (trip.step, trip.flat, trip.score),
            (14, Some(vec![0.75, 1.0]), None)
        );
        let line = serde_json::to_string(&d.named(&n)).unwrap();
        assert!(
            line.contains(r#""guard":{"step":14,"flat":[0.75,1.0]}"#),
            "{line}"
        );
        // a new phase starts with an empty window
        assert!(st.flat_shares.is_empty());
        st.note_flat(&cfg, 1.0);
        assert!(!st.check_flat(&cfg, 15));
        // off: nothing is kept and nothing ends
        let mut off = PhaseState::default();
        off.note_flat(&PhaseConfig::default(), 1.0);
        assert!(off.flat_shares.is_empty());
        assert!(!off.check_flat(&PhaseConfig::default(), 1));
    }

    #[test]
    fn skip_flat_does_not_choose_a_probe_that_made_no_update() {
        let cfg = PhaseConfig {
            skip_flat: true,
            ..PhaseConfig::default()
        };
        // every class spreads on the fixed batch
        let g = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]];
        // class 2's probe (the best score, 0.7) made no update: class 1 (0.6) is chosen
        let mut o = owner(&[&g]);
        o.flat = vec![2];
        let d = decide_with(&cfg, &mut o);
        assert_eq!(d.chosen, 1);
        assert_eq!(d.candidates.len(), 2);
        assert_eq!(d.skipped[0].class, 2);
        assert!(d.skipped[0].reason.contains("no update"), "{:?}", d.skipped);
        // every probe flat: nothing to prefer, the ranking stands
        o.flat = vec![0, 1, 2];
        let d = decide_with(&cfg, &mut o);
        assert_eq!((d.chosen, d.skipped.len()), (2, 0));
        // without skip_flat the flat probe is ranked as before
        o.flat = vec![2];
        assert_eq!(decide_with(&PhaseConfig::default(), &mut o).chosen, 2);
    }

    #[test]
    fn paired_gain_is_the_mean_difference_with_its_standard_error() {
        let base = [Some(0.2), Some(0.5), None, Some(0.1)];
        let after = [Some(0.4), Some(0.5), Some(0.9), Some(0.4)];
        let (gain, se) = paired_gain(&base, &after).unwrap();
        // differences 0.2, 0.0, 0.3 (the third example is scored once only)
        assert!((gain - 0.5 / 3.0).abs() < 1e-12);
        let var = [0.2f64, 0.0, 0.3]
            .iter()
            .map(|d| (d - 0.5 / 3.0).powi(2))
            .sum::<f64>()
            / 2.0;
        assert!((se.unwrap() - (var / 3.0).sqrt()).abs() < 1e-12);
        let one = paired_gain(&[Some(0.1)], &[Some(0.3)]).unwrap();
        assert!((one.0 - 0.2).abs() < 1e-12 && one.1.is_none());
        assert_eq!(paired_gain(&[None], &[Some(0.3)]), None);
    }

    #[test]
    fn the_fixed_batch_defaults_from_the_group_and_keeps_set_values() {
        let auto = PhaseConfig::default();
        // 2 prompts × 4 responses per step: 4 responses each, 2 steps' worth = 4 examples
        assert_eq!(auto.select_batch(100, 2, 4), (4, 4));
        assert_eq!(auto.select_batch(100, 8, 8), (16, 8));
        // a group of 1 still gets 2 responses (spread shows), at least 4 examples
        assert_eq!(auto.select_batch(100, 1, 1), (4, 2));
        assert_eq!(auto.select_batch(100, 16, 32), (100, 8));
        // never more examples than the split holds
        assert_eq!(auto.select_batch(3, 8, 8), (3, 8));
        let set = PhaseConfig {
            select_size: 12,
            select_samples: 1,
            ..PhaseConfig::default()
        };
        assert_eq!(set.select_batch(100, 8, 8), (12, 1));
        assert_eq!(set.select_batch(5, 8, 8), (5, 1));
    }

    /// A policy owner whose base measurement is `base` and whose probe of class `k` scores
    /// `0.5 + 0.1 k`; records what it was asked to probe.
    struct Owner {
        base: BatchScores,
        probed: Vec<Vec<usize>>,
        /// Classes whose probe made no update.
        flat: Vec<usize>,
    }

    impl Measure for Owner {
        fn measure(&mut self) -> Result<BatchScores> {
            Ok(self.base.clone())
        }
        fn probe(&mut self, classes: &[usize]) -> Result<Vec<BatchScores>> {
            self.probed.push(classes.to_vec());
            let score = |k: usize| {
                let mut b = self.base.clone();
                b.measured.overall = Some(0.5 + 0.1 * k as f64);
                b.flat_probe = self.flat.contains(&k);
                b
            };
            Ok(classes.iter().map(|&k| score(k)).collect())
        }
        fn align(&mut self, _: &[usize]) -> Result<Vec<(f64, f64)>> {
            unreachable!("lookahead does not ask for gradients")
        }
    }

    /// `rewards[example][response]` = the three classes' rewards.
    fn owner(rewards: &[&[[f64; 3]]]) -> Owner {
        let rewards: Vec<Vec<Option<RewardVector>>> = rewards
            .iter()
            .map(|g| {
                g.iter()
                    .map(|r| {
                        Some(RewardVector {
                            overall: Some(r.iter().sum::<f64>() / 3.0),
                            classes: r.iter().map(|&x| Some(x)).collect(),
                        })
                    })
                    .collect()
            })
            .collect();
        Owner {
            base: BatchScores::new(measured(0.5, &[Some(0.5), Some(0.5), Some(0.2)]), rewards),
            probed: Vec::new(),
            flat: Vec::new(),
        }
    }

    fn decide_with(cfg: &PhaseConfig, o: &mut Owner) -> Decision {
        let (n, w) = (names(), [0.2, 0.3, 0.5]);
        decide(
            &mut PhaseState::default(),
            cfg,
            at(&n, &[0, 1, 2], &w),
            0,
            o,
        )
        .unwrap()
    }

    #[test]
    fn skip_flat_probes_only_the_classes_whose_rewards_spread() {
        let cfg = PhaseConfig {
            skip_flat: true,
            ..PhaseConfig::default()
        };
        // a spreads within example 0; b differs only between the examples; c within example 1
        let two = [[0.0, 0.0, 0.5], [1.0, 0.0, 0.5]];
        let other = [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]];
        let mut o = owner(&[&two, &other]);
        let d = decide_with(&cfg, &mut o);
        assert_eq!(o.probed, [vec![0, 2]]);
        assert_eq!(d.chosen, 2);
        assert_eq!(d.candidates.len(), 2);
        assert_eq!(d.skipped.len(), 1);
        assert_eq!(d.skipped[0].class, 1);
        assert!(
            d.skipped[0].reason.contains("2 responses"),
            "{:?}",
            d.skipped
        );
        // the record says so in schedule.jsonl, and reads back
        let (n, record) = (names(), d.named(&names()));
        let line = serde_json::to_string(&record).unwrap();
        assert!(line.contains(r#""skipped":[{"class":"b","#), "{line}");
        assert!(line.contains(r#""chosen":"c""#), "{line}");
        assert_eq!(
            serde_json::from_str::<DecisionRecord>(&line).unwrap(),
            record
        );

        // off: every class is probed and nothing is recorded as skipped
        let mut o = owner(&[&two, &other]);
        let d = decide_with(&PhaseConfig::default(), &mut o);
        assert_eq!((o.probed, d.skipped.len()), (vec![vec![0, 1, 2]], 0));
        assert!(!serde_json::to_string(&d.named(&n))
            .unwrap()
            .contains("skipped"));

        // one class spreads: chosen without a probe
        let mut o = owner(&[&[[0.0, 1.0, 0.5], [1.0, 1.0, 0.5]]]);
        let d = decide_with(&cfg, &mut o);
        assert!(o.probed.is_empty());
        assert_eq!((d.chosen, d.skipped.len()), (0, 2));

        // none spreads: the largest deficit (c: 0.5 × (1 − 0.2)), unprobed
        let mut o = owner(&[&[[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]]]);
        let d = decide_with(&cfg, &mut o);
        assert!(o.probed.is_empty());
        assert_eq!((d.chosen, d.skipped.len()), (2, 3));
        assert_eq!(d.selector, SelectorKind::Lookahead);

        // one response per example: spread across the examples counts
        let mut o = owner(&[&[[0.0, 0.0, 0.5]], &[[1.0, 0.0, 0.5]], &[[1.0, 1.0, 0.5]]]);
        let d = decide_with(&cfg, &mut o);
        assert_eq!(o.probed, [vec![0, 1]]);
        assert_eq!(d.skipped[0].class, 2);
        assert!(d.skipped[0].reason.contains("one response each"));
    }

    #[test]
    fn spread_is_read_through_the_phase_target() {
        // class 0 is flat, class 1 spreads: anchored to the overall score, class 0 spreads too
        let g = vec![
            Some(RewardVector {
                overall: Some(0.0),
                classes: vec![Some(1.0), Some(0.0)],
            }),
            Some(RewardVector {
                overall: Some(1.0),
                classes: vec![Some(1.0), Some(1.0)],
            }),
            None,
        ];
        let rewards = [g];
        assert!(!spreads(&Target::Class(0), &rewards, 2));
        assert!(spreads(&Target::Class(1), &rewards, 2));
        let anchored = Target::anchored(0, 0.5, Target::Overall);
        assert!(spreads(&anchored, &rewards, 2));
    }
}
