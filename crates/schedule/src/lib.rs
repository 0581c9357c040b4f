//! ARL-RR's schedule, without a model: what drives the advantages ([`Target`]), when a phase
//! ends ([`PhaseState::boundary`]), which meta-class the next phase trains
//! ([`PhaseState::plan`], [`PhaseState::commit`], ranked by [`Rank`]) and the record of each
//! choice ([`Decision`], named for `schedule.jsonl` as a [`DecisionRecord`]).
//!
//! Two owners drive it. `arl`'s trainer holds the policy and measures what a selector asks
//! for at once ([`decide`] through [`Measure`]); the reward service only hears reports from a
//! remote trainer, so it calls `plan` and `commit` itself as the reports arrive. Both run the
//! same rules, and no second copy of the boundary or the ranking lives anywhere else: a
//! service run's `schedule.jsonl` reads like a trainer run's. The crate depends on `rubric`
//! alone (no candle), which keeps the service light.

pub mod objective;
pub mod phase;
/// Means and standard deviations, in the lowest crate so that dataset scores use them too.
pub use rubric::moments as stats;
pub mod task;

pub use objective::{
    group_advantages, BatchAdvantages, ObjectiveKind, ScaleRewards, Target, Weights,
};
pub use phase::{
    best, decide, paired_gain, probe_candidates, shuffled_order, spreads, BatchScores, Candidate,
    Choices, ClassName, Cycle, Decision, DecisionRecord, EndFlat, GuardTrip, Measure, Measured,
    PhaseConfig, PhaseState, Plan, Rank, SelectCost, SelectorKind, Skipped,
};
pub use stats::mean_std;
pub use task::TaskData;
