//! ARL-RR's trainer: GRPO over rubric rewards, with one objective per run —
//! a fixed scalarization, GDPO's decoupled normalization, or alternating meta-class phases
//! whose order a selector searches from measured validation performance.
//!
//! The trainer sees the policy through [`Policy`] and the judge through [`judge::Judge`], so
//! the tiny [`CategoricalPolicy`] and the rule judge exercise every path in milliseconds.

pub mod categorical;
pub mod checkpoint;
pub mod compare;
pub mod config;
pub mod eval;
pub mod grading;
pub mod grpo;
pub mod metrics;
pub mod optim;
pub mod plots;
pub mod policy;
pub mod report;
#[cfg(feature = "transformer")]
pub mod sft;
pub mod trainer;
#[cfg(feature = "transformer")]
pub mod transformer;

pub use categorical::{CategoricalConfig, CategoricalPolicy};
pub use config::{JudgeConfig, ObjectiveConfig, PolicyConfig, TrainConfig};
pub use eval::{EvalReport, EvalSet, Evaluator};
pub use metrics::StepMetrics;
pub use policy::{Completion, Policy, TokenLogProbs};
pub use schedule::{Decision, ObjectiveKind, PhaseConfig, SelectorKind, Target, TaskData, Weights};
pub use trainer::{Parts, Trainer};

use anyhow::Result;
use std::sync::Arc;

/// The policy a `[policy]` section names, freshly initialized.
pub fn build_policy(cfg: &PolicyConfig) -> Result<Box<dyn Policy>> {
    Ok(match cfg {
        PolicyConfig::Categorical(c) => Box::new(CategoricalPolicy::new(c.clone())?),
        #[cfg(feature = "transformer")]
        PolicyConfig::Transformer(c) => Box::new(transformer::TransformerPolicy::new(c.clone())?),
    })
}

/// The judge a `[judge]` section names.
pub fn build_judge(cfg: &JudgeConfig) -> Result<Arc<dyn judge::Judge>> {
    // the judge crate names `cache` as the file in its errors; here the section is the subject
    let built = judge::from_config(&cfg.judge_config()).map_err(|e| {
        anyhow::anyhow!(
            "[judge] kind = {}: {}",
            format!("{:?}", cfg.kind).to_lowercase(),
            e.message
        )
    })?;
    Ok(Arc::from(built))
}
