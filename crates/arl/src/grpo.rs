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
    /// stays within 1 GiB (`trainer::micro`). The tiny built-in model's batch is one pass
    /// (its figures bit for bit); SmolLM2-135M rows of ~120 tokens go about five at a time,
    /// which bounds a step's peak memory (float sums then run in another order).
    pub micro_batch: usize,
    /// Truncated importance sampling against the sampler: each token's loss is weighted by
    /// `min(p_trainer / p_sampler, cap)`, where `p_trainer` is the f32 teacher-forced pass
    /// before the update (TRL's `vllm_importance_sampling_correction`, verl's TIS). Corrects
    /// for a reduced-precision sampler (`[policy] sample_precision`); absent = off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated_is_cap: Option<f64>,
    /// DAPO's dynamic sampling (verl's `filter_groups`; off when absent): groups whose
    /// objective reward has no spread are set aside and further prompts sampled until
    /// `prompts_per_step` groups spread or `max_rounds` generation rounds were made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample_flat: Option<ResampleFlat>,
}

/// `grpo.resample_flat = { max_rounds = 3 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResampleFlat {
    /// Generation rounds per step at most, the step's own included (at least 1). Each further
    /// round samples as many prompts as groups with spread are still missing.
    pub max_rounds: usize,
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
            truncated_is_cap: None,
            resample_flat: None,
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
/// loss  = Σ_tokens mask * (w * pg + β kl) / token_normalizer
/// ```
///
/// `w` is the truncated importance weight of the sampler (`is_weight`, 1 without it); ε and β
/// are `g.clip_eps` and `g.kl_beta`. `old`,
/// `reference` and `is_weight` are `[B, T]` constants, `advantages` is `[B]`. `token_normalizer` is
/// the number of real tokens of the whole rollout batch, so that accumulating micro-batches
/// gives exactly the full-batch token mean.
pub fn grpo_loss(
    new: &TokenLogProbs,
    old: &Tensor,
    reference: Option<&Tensor>,
    is_weight: Option<&Tensor>,
    advantages: &Tensor,
    g: &GrpoConfig,
    token_normalizer: f64,
) -> Result<GrpoLoss> {
    let (clip_eps, kl_beta) = (g.clip_eps, g.kl_beta);
    let mask = &new.mask;
    let adv = advantages
        .unsqueeze(1)?
        .broadcast_as(new.log_probs.shape())?;
    let ratio = (&new.log_probs - old)?.exp()?;
    let unclipped = (&ratio * &adv)?;
    let clipped = (ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)? * &adv)?;
    let mut per_token = unclipped.minimum(&clipped)?.neg()?;
    if let Some(w) = is_weight {
        per_token = (per_token * w)?;
    }
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
    use candle_core::{Device, Var};

    fn loss_and_grad(weight: Option<&Tensor>) -> (f64, Vec<Vec<f32>>) {
        let dev = Device::Cpu;
        let lp = Var::new(&[[-1.0f32, -2.0, -0.5], [-0.3, -1.2, -4.0]], &dev).unwrap();
        let new = TokenLogProbs {
            log_probs: lp.as_tensor().clone(),
            mask: Tensor::new(&[[1.0f32, 1.0, 1.0], [1.0, 1.0, 0.0]], &dev).unwrap(),
            entropy: Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap(),
        };
        // ratios 1.05 and 0.7: one token inside the clip range, one clipped
        let old = (lp.as_tensor().detach() - 0.05).unwrap();
        let old = old
            .slice_assign(&[1..2, 0..1], &Tensor::new(&[[0.057f32]], &dev).unwrap())
            .unwrap();
        let adv = Tensor::new(&[1.0f32, -2.0], &dev).unwrap();
        let g = GrpoConfig::default(); // clip 0.2, no KL
        let l = grpo_loss(&new, &old, None, weight, &adv, &g, 5.0).unwrap();
        let g = l.loss.backward().unwrap();
        let g = g.get(lp.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        (scalar(&l.loss).unwrap(), g)
    }

    #[test]
    fn truncated_is_weight_scales_each_tokens_policy_term() {
        let dev = Device::Cpu;
        let (plain, g_plain) = loss_and_grad(None);
        let ones = Tensor::ones((2, 3), candle_core::DType::F32, &dev).unwrap();
        let (same, g_same) = loss_and_grad(Some(&ones));
        assert_eq!((plain, &g_plain), (same, &g_same));
        let w = Tensor::new(&[[2.0f32, 0.5, 1.0], [0.0, 1.0, 1.0]], &dev).unwrap();
        let (weighted, g_w) = loss_and_grad(Some(&w));
        let wv = w.to_vec2::<f32>().unwrap();
        for i in 0..2 {
            for j in 0..3 {
                let want = g_plain[i][j] * wv[i][j];
                assert!(
                    (g_w[i][j] - want).abs() < 1e-6,
                    "({i},{j}) {} vs {want}",
                    g_w[i][j]
                );
            }
        }
        assert!((weighted - plain).abs() > 1e-3);
    }
}
