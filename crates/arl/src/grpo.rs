//! GRPO's two pieces of math: group-normalized advantages and the clipped token-level loss.

use crate::policy::TokenLogProbs;
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
    /// Added to the group std in `A = (r - mean) / (std + eps)`.
    pub adv_eps: f64,
    /// Optimizer steps per rollout batch (each over the whole batch).
    pub ppo_epochs: usize,
    /// Completions per forward/backward pass; gradients of micro-batches are accumulated into
    /// one optimizer step. 0 = the whole batch at once.
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
            ppo_epochs: 1,
            micro_batch: 0,
        }
    }
}

/// Mean and population std of the defined values (`None` when fewer than one).
pub fn mean_std(values: impl IntoIterator<Item = f64>) -> Option<(f64, f64)> {
    let v: Vec<f64> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
    Some((mean, var.sqrt()))
}

/// Group-normalized advantages of one prompt's samples.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupAdvantages {
    /// `(r - mean_G) / (std_G + eps)`; `None` for samples without a reward and for every
    /// sample of a zero-spread group (no signal).
    pub advantages: Vec<Option<f64>>,
    /// Within-group std of the defined rewards (0 when fewer than two).
    pub std: f64,
    /// Fewer than two defined rewards, or all equal.
    pub zero_spread: bool,
}

pub fn group_advantages(rewards: &[Option<f64>], eps: f64) -> GroupAdvantages {
    let defined: Vec<f64> = rewards.iter().flatten().copied().collect();
    let (mean, std) = mean_std(defined.iter().copied()).unwrap_or((0.0, 0.0));
    let zero_spread = defined.len() < 2 || std <= 1e-12;
    let advantages = rewards
        .iter()
        .map(|r| match r {
            Some(r) if !zero_spread => Some((r - mean) / (std + eps)),
            _ => None,
        })
        .collect();
    GroupAdvantages {
        advantages,
        std,
        zero_spread,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advantages_normalize_within_group() {
        let g = group_advantages(&[Some(1.0), Some(0.0), None, Some(0.5)], 0.0);
        assert!(!g.zero_spread);
        let a: Vec<f64> = g.advantages.iter().flatten().copied().collect();
        assert_eq!(
            g.advantages[2], None,
            "a missing reward is excluded, not scored"
        );
        assert!((a.iter().sum::<f64>()).abs() < 1e-12);
        let var = a.iter().map(|x| x * x).sum::<f64>() / 3.0;
        assert!((var - 1.0).abs() < 1e-9);
        let z = group_advantages(&[Some(0.3), Some(0.3)], 1e-6);
        assert!(z.zero_spread && z.advantages.iter().all(Option::is_none));
        assert!(group_advantages(&[Some(1.0), None], 1e-6).zero_spread);
    }
}
