//! ARL-RR's trainer: GRPO over rubric rewards, with one objective per run —
//! a fixed scalarization, GDPO's decoupled normalization, or alternating meta-class phases
//! whose order a selector searches from measured validation performance.
//!
//! The trainer sees the policy through [`Policy`] and the judge through [`judge::Judge`], so
//! the tiny [`CategoricalPolicy`] and the rule judge exercise every path in milliseconds.

pub mod actor;
#[cfg(feature = "transformer")]
pub mod cache;
pub mod categorical;
pub mod checkpoint;
pub mod completions;
pub mod config;
pub mod eval;
#[cfg(feature = "transformer")]
pub mod export;
pub mod grading;
pub mod grpo;
#[cfg(feature = "transformer")]
pub mod lm_actor;
pub mod metrics;
mod micro;
pub mod noise;
pub mod optim;
pub mod records;
pub mod setup;
#[cfg(feature = "transformer")]
pub mod sft;
pub mod tensorboard;
pub mod trainer;

pub use actor::{Completion, Groups, Policy, TokenLogProbs};
pub use categorical::{CategoricalConfig, CategoricalPolicy};
pub use config::{JudgeSection, ObjectiveConfig, PolicyConfig, Subsample, TrainConfig};
pub use eval::{EvalReport, EvalSet, Evaluator};
pub use metrics::StepMetrics;
pub use records::{RunData, RunRecords};
pub use schedule::{
    Decision, DecisionRecord, ObjectiveKind, PhaseConfig, SelectorKind, Target, TaskData, Weights,
};
pub use setup::{build_judge, build_policy, Parts};
pub use trainer::Trainer;
