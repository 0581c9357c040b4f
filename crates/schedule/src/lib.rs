//! ARL-RR's schedule, without a model: what drives the advantages ([`Target`]), which
//! meta-class the next phase trains ([`PhaseState::plan`], [`PhaseState::commit`]) and the
//! record of each choice ([`Decision`]).
//!
//! Two owners drive it. `arl`'s trainer holds the policy and measures what a selector asks
//! for at once ([`decide`] through [`Measure`]); the reward service only hears reports from a
//! remote trainer, so it calls `plan` and `commit` itself as the reports arrive. Both run the
//! same rules, so a service run's `schedule.jsonl` reads like a trainer run's. The crate
//! depends on `rubric` alone (no candle), which keeps the service light.

pub mod objective;
pub mod phase;
pub mod task;

pub use objective::{
    group_advantages, mean_std, BatchAdvantages, ObjectiveKind, ScaleRewards, Target, Weights,
};
pub use phase::{
    decide, paired_gain, probe_candidates, rank_key, spreads, BatchScores, Candidate, Choices,
    Decision, EndFlat, GuardTrip, Measure, Measured, PhaseConfig, PhaseState, Plan, SelectCost,
    SelectorKind, Skipped,
};
pub use task::TaskData;
