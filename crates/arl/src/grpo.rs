//! GRPO's two pieces of math: group-normalized advantages and the clipped token-level loss.

use crate::actor::TokenLogProbs;
use anyhow::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// `[grpo]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpoConfig {
    /// Prompts per rollout batch.
    pub prompts_per_step: usize,
    /// Samples per prompt (`G`).
    pub group_size: usize,
    /// Clipping range of the importance ratio: `[1-ε, 1+ε]`.
    pub clip_eps: f64,
    /// Weight of the KL penalty to the frozen starting policy (k3 estimator); 0 disables it
    /// and skips the reference forward pass.
    pub kl_beta: f64,
    /// Added to the std in `A = (r - mean) / (std + eps)`.
    pub adv_eps: f64,
    /// What divides `r - mean_G`: `"group"` (the group's std, GRPO), `"batch"` (the reward's
    /// std over the rollout batch, TRL's `scale_rewards = "batch"`) or `"none"` (Dr. GRPO).
    /// Every objective alike; see [`schedule::ScaleRewards`].
    pub scale_rewards: schedule::ScaleRewards,
    /// Optimizer steps per rollout batch (each over the whole batch).
    pub ppo_epochs: usize,
    /// Completions per forward/backward pass; gradients of micro-batches are accumulated into
    /// one optimizer step (the same loss: it is normalized by the whole batch's tokens). 0 =
    /// automatic: consecutive rows while the policy's estimate of the activations the pass keeps
    /// stays within 512 MiB (`trainer::micro`). The tiny built-in model's batch is one pass
    /// (its figures bit for bit); SmolLM2-135M rows of ~120 tokens go two or three at a time,
    /// which bounds a step's peak memory (float sums then run in another order).
    pub micro_batch: usize,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            prompts_per_step: 4,
            group_size: 8,
            clip_eps: 0.2,
            kl_beta: 0.0,
            adv_eps: 1e-6,
            scale_rewards: schedule::ScaleRewards::Group,
            ppo_epochs: 1,
            micro_batch: 0,
        }
    }
}

/// The loss of one micro-batch and its diagnostics.
pub struct GrpoLoss {
    /// Sum over real tokens of the per-token loss, divided by `token_normalizer`.
    pub loss: Tensor,
    /// Sums over this micro-batch's real tokens (divide by tokens for means).
    pub kl_sum: f64,
    pub clipped_tokens: f64,
    pub entropy_sum: f64,
    pub tokens: f64,
}

/// Per-token GRPO loss, averaged over tokens (not sequences):
///
/// ```text
/// ratio = exp(logp - logp_old)
/// pg    = -min(ratio * A, clip(ratio, 1-ε, 1+ε) * A)
/// kl    = exp(ref - logp) - (ref - logp) - 1          (k3, ≥ 0)
/// loss  = Σ_tokens mask * (pg + β kl) / token_normalizer
/// ```
///
/// `old` and `reference` are `[B, T]` constants, `advantages` is `[B]`. `token_normalizer` is
/// the number of real tokens of the whole rollout batch, so that accumulating micro-batches
/// gives exactly the full-batch token mean.
pub fn grpo_loss(
    new: &TokenLogProbs,
    old: &Tensor,
    reference: Option<&Tensor>,
    advantages: &Tensor,
    clip_eps: f64,
    kl_beta: f64,
    token_normalizer: f64,
) -> Result<GrpoLoss> {
    let mask = &new.mask;
    let adv = advantages
        .unsqueeze(1)?
        .broadcast_as(new.log_probs.shape())?;
    let ratio = (&new.log_probs - old)?.exp()?;
    let unclipped = (&ratio * &adv)?;
    let clipped = (ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)? * &adv)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    let mut kl_sum = 0.0;
    if let Some(reference) = reference {
        let d = (reference - &new.log_probs)?;
        let kl = ((d.exp()? - &d)? - 1.0)?;
        kl_sum = scalar(&(kl.detach() * mask)?.sum_all()?)?;
        if kl_beta != 0.0 {
            per_token = (per_token + (kl * kl_beta)?)?;
        }
    }
    let loss = ((per_token * mask)?.sum_all()? / token_normalizer)?;
    let ratio = ratio.detach();
    let outside = (ratio.lt(1.0 - clip_eps)?.to_dtype(mask.dtype())?
        + ratio.gt(1.0 + clip_eps)?.to_dtype(mask.dtype())?)?;
    Ok(GrpoLoss {
        loss,
        kl_sum,
        clipped_tokens: scalar(&(outside * mask)?.sum_all()?)?,
        entropy_sum: scalar(&(&new.entropy * mask)?.sum_all()?)?,
        tokens: scalar(&mask.sum_all()?)?,
    })
}

pub fn scalar(t: &Tensor) -> Result<f64> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?)
}
