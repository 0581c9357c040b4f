//! One `metrics.jsonl` line per step: what the step optimized, what it saw (rewards and their
//! spread within groups, the "variance contraction" diagnostics), what the update did, what the
//! judge cost, and where the time went. Wall-clock times sit in `time_s` only, so everything
//! else is reproducible from the seed.

use crate::eval::EvalReport;
use judge::JudgeStats;
use rubric::RewardVector;
use schedule::{mean_std, BatchAdvantages};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Steps completed (1-based).
    pub step: u64,
    /// Phase number (alternating; 0 otherwise).
    pub phase: u64,
    /// The class that drove the advantages (alternating only).
    pub active_class: Option<String>,
    /// Learning rate of the step's first optimizer update.
    pub lr: f64,
    /// HealthBench overall score of the training samples (the points-scalarized reward).
    pub overall: RewardStats,
    /// Within-group std of the reward that drove the advantages, averaged over groups.
    pub objective_group_std: f64,
    /// Per class (only classes with data in this batch).
    pub classes: BTreeMap<String, RewardStats>,
    /// Groups sampled (with `grpo.resample_flat`, every round's).
    pub groups: usize,
    /// Groups whose target reward had zero spread (no signal), as a share of `groups`.
    pub zero_spread_share: f64,
    /// `grpo.resample_flat`: the step's generation rounds and the groups it trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample: Option<Resampled>,
    pub samples: usize,
    /// Samples left out of the update because a judge verdict failed after retries.
    pub excluded_samples: usize,
    pub failed_verdicts: usize,
    pub retried_verdicts: usize,
    pub judge: JudgeDelta,
    /// Judge verdicts the step spent on training and selection (rollout grading, probes,
    /// phase-guard and selector measurements): `judge.verdicts` less the validation's.
    #[serde(default)]
    pub train_verdicts: u64,
    pub update: UpdateStats,
    /// Periodic validation, when due at this step.
    pub val: Option<EvalReport>,
    /// `[judge.noise]` runs: the noisy training verdicts against the clean ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge_noise: Option<crate::noise::NoiseStats>,
    pub time_s: Timing,
    /// Completion tokens the step's rollout generated (during `time_s.generate`); a live
    /// figure for `arlrr bench`, not written, so metrics.jsonl keeps its fields.
    #[serde(skip)]
    pub generated_tokens: usize,
}

/// What a step's dynamic sampling (`grpo.resample_flat`) did. The step's other figures
/// (`groups`, `zero_spread_share`, rewards, samples, times) count every sampled group.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resampled {
    /// Generation rounds made (1: the step's own only).
    pub rounds: usize,
    /// Groups sampled over the rounds (= `groups`).
    pub sampled_groups: usize,
    /// Groups in the update (`grpo.prompts_per_step`: those with spread first).
    pub trained_groups: usize,
    /// Share of the update's groups without spread (filled in when too few spread).
    pub trained_zero_spread_share: f64,
}

/// Mean and std over samples, and the mean within-group std.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RewardStats {
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub group_std: Option<f64>,
    /// Samples with a defined reward.
    pub n: usize,
}

impl RewardStats {
    /// From `groups[prompt][sample]` rewards.
    pub fn of(groups: &[Vec<Option<f64>>]) -> RewardStats {
        let all = mean_std(groups.iter().flatten().flatten().copied());
        let within: Vec<f64> = groups
            .iter()
            .filter_map(|g| {
                let d: Vec<f64> = g.iter().flatten().copied().collect();
                (d.len() >= 2)
                    .then(|| mean_std(d).map(|(_, s)| s))
                    .flatten()
            })
            .collect();
        RewardStats {
            mean: all.map(|a| a.0),
            std: all.map(|a| a.1),
            group_std: mean_std(within).map(|a| a.0),
            n: groups.iter().flatten().flatten().count(),
        }
    }
}

/// Per-class and overall reward statistics of a rollout batch.
pub fn reward_stats(
    groups: &[Vec<Option<RewardVector>>],
    names: &[String],
) -> (RewardStats, BTreeMap<String, RewardStats>) {
    let pick = |f: &dyn Fn(&RewardVector) -> Option<f64>| -> Vec<Vec<Option<f64>>> {
        groups
            .iter()
            .map(|g| g.iter().map(|r| r.as_ref().and_then(f)).collect())
            .collect()
    };
    let overall = RewardStats::of(&pick(&|r| r.overall));
    let classes = names
        .iter()
        .enumerate()
        .map(|(k, n)| (n.clone(), RewardStats::of(&pick(&|r| r.classes[k]))))
        .filter(|(_, s)| s.n > 0)
        .collect();
    (overall, classes)
}

pub fn zero_spread_share(adv: &BatchAdvantages) -> f64 {
    let n = adv.zero_spread.len().max(1);
    adv.zero_spread.iter().filter(|z| **z).count() as f64 / n as f64
}

/// What the optimizer steps of one rollout batch did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UpdateStats {
    /// Completions in the update (defined advantage, not in a zero-spread group).
    pub rows: usize,
    /// Completion tokens in the update.
    pub tokens: usize,
    /// Optimizer steps applied.
    pub applied: usize,
    /// Optimizer steps skipped because the loss or a gradient was NaN/inf.
    pub nonfinite_skips: usize,
    pub loss: Option<f64>,
    /// Mean k3 KL to the reference per token (when `kl_beta > 0`).
    pub kl: Option<f64>,
    /// Mean next-token entropy over update tokens.
    pub entropy: Option<f64>,
    /// Pre-clipping global gradient norm (mean over applied steps).
    pub grad_norm: Option<f64>,
    /// Share of tokens whose ratio fell outside the clip range.
    pub clip_frac: Option<f64>,
    /// Mean |log p_sampler - log p_trainer| per update token: how far the sampler's log-probs
    /// (bf16 sampling, say) are from the f32 teacher-forced pass before the update.
    #[serde(default)]
    pub sampler_gap: Option<f64>,
}

/// Judge counters accrued during the step (selection and validation included).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JudgeDelta {
    pub verdicts: u64,
    pub calls: u64,
    pub cache_hits: u64,
    pub failures: u64,
    pub retries: u64,
}

impl JudgeDelta {
    /// The counters `b` holds more than `a` (`b` read after `a`).
    pub fn between(a: &JudgeStats, b: &JudgeStats) -> JudgeDelta {
        JudgeDelta::total(b).less(JudgeDelta::total(a))
    }

    /// All of the judge's counters so far.
    fn total(s: &JudgeStats) -> JudgeDelta {
        let JudgeStats {
            verdicts,
            calls,
            cache_hits,
            failures,
            retries,
            ..
        } = *s;
        JudgeDelta {
            verdicts,
            calls,
            cache_hits,
            failures,
            retries,
        }
    }

    /// These counters less `o`'s (a part of them).
    pub fn less(self, o: JudgeDelta) -> JudgeDelta {
        JudgeDelta {
            verdicts: self.verdicts - o.verdicts,
            calls: self.calls - o.calls,
            cache_hits: self.cache_hits - o.cache_hits,
            failures: self.failures - o.failures,
            retries: self.retries - o.retries,
        }
    }
}

/// Wall-clock seconds by activity (not reproducible; excluded from resume comparisons).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub generate: f64,
    /// Generation before its first sampled token: the prompt prefill (and the bf16 copy of the
    /// weights with `sample_precision = "bf16"`); `generate` is the rest, the decoding.
    #[serde(default)]
    pub prefix: f64,
    pub judge: f64,
    /// Teacher-forced forward and backward passes (the optimizer's step excluded).
    pub train: f64,
    /// AdamW steps.
    #[serde(default)]
    pub optimizer: f64,
    /// Selector work at a phase boundary (probes included).
    pub select: f64,
    pub eval: f64,
}
