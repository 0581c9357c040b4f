//! The policy seen by the trainer. Two implementations: [`crate::CategoricalPolicy`] (a logit
//! table, for tests and quick experiments) and the transformer adapter. Everything trainable is
//! a candle [`Var`], so one optimizer, one snapshot mechanism and one checkpoint format serve
//! both.

use anyhow::{Context, Result};
use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use rubric::Example;
use std::collections::HashMap;
use std::path::Path;

/// One sampled response.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// Generated token ids, end-of-text token included when the policy emitted it.
    pub tokens: Vec<u32>,
    /// The decoded response the judge grades.
    pub text: String,
    /// Log-probability of each token under the sampling distribution.
    pub log_probs: Vec<f32>,
}

/// Teacher-forced per-token log-probabilities of a batch of (prompt, completion) pairs.
/// All tensors are `[B, T]`, `T` = the longest completion; padding has mask 0.
pub struct TokenLogProbs {
    /// Differentiable with respect to the policy's vars.
    pub log_probs: Tensor,
    /// 1.0 on real completion tokens, 0.0 on padding (f32).
    pub mask: Tensor,
    /// Entropy of the next-token distribution at each position (detached; diagnostics only).
    pub entropy: Tensor,
}

/// A policy's bound on prompt length: a prompt of `n` tokens fits when `n + max_new_tokens`
/// is at most `positions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptLimit {
    /// The model's positions (context length).
    pub positions: usize,
    /// The longest response, in tokens.
    pub max_new_tokens: usize,
}

/// What the trainer needs from a policy. Sampling randomness comes from the caller's seeded
/// RNG, so a run resumed from a checkpoint draws the same samples.
/// Completions `[prompt][sample]`: what [`Policy::generate`] returns.
pub type Groups = Vec<Vec<Completion>>;

pub trait Policy {
    /// `n` completions for each prompt: result `[prompt][sample]`.
    fn generate(&mut self, prompts: &[&Example], n: usize, rng: &mut ChaCha8Rng) -> Result<Groups>;

    /// Seconds of the last `generate` spent before decoding began (a reduced-precision copy
    /// of the weights, the prompt prefill); 0 for policies that do not split it out.
    fn prefill_secs(&self) -> f64 {
        0.0
    }

    /// Differentiable log-probabilities of `completions[i]` given `prompts[i]`.
    fn log_probs(&self, prompts: &[&Example], completions: &[&[u32]]) -> Result<TokenLogProbs>;

    /// Length in tokens of `prompt` as [`Policy::log_probs`] feeds it (sizes micro-batches);
    /// 0 where [`Policy::train_bytes`] ignores lengths.
    fn prompt_tokens(&self, _prompt: &Example) -> Result<usize> {
        Ok(0)
    }

    /// What bounds a prompt's length: the model's positions and the response's
    /// `max_new_tokens`; `None` where nothing does (the categorical policy).
    fn prompt_limit(&self) -> Option<PromptLimit> {
        None
    }

    /// Estimated bytes of activations that [`Policy::log_probs`] keeps for the backward pass
    /// on `rows` rows padded to `prompt` + `completion` tokens, `prompts` of them distinct
    /// (consecutive rows of one prompt): what sizes the micro-batches of
    /// `grpo.micro_batch = 0`. 0 (the default) = small enough to ignore.
    fn train_bytes(
        &self,
        _rows: usize,
        _prompts: usize,
        _prompt: usize,
        _completion: usize,
    ) -> u64 {
        0
    }

    /// The trainable parameters with stable names, in a fixed order (the optimizer's moments
    /// and the checkpoints are indexed by it).
    fn vars(&self) -> Vec<(String, Var)>;

    fn device(&self) -> Device;

    /// Writes the trainable parameters (safetensors).
    fn save(&self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = self
            .vars()
            .into_iter()
            .map(|(n, v)| (n, v.as_tensor().clone()))
            .collect();
        candle_core::safetensors::save(&tensors, path)
            .with_context(|| format!("writing policy weights {}", path.display()))
    }

    /// Writes into a checkpoint folder, next to `policy.safetensors` (which alone resumes a
    /// run), what makes the folder usable outside arlrr: a LoRA transformer policy writes a
    /// PEFT adapter. Nothing by default.
    fn save_extras(&self, _dir: &Path) -> Result<()> {
        Ok(())
    }

    /// Reads parameters written by [`Policy::save`]; every var must be present with its shape.
    fn load(&mut self, path: &Path) -> Result<()> {
        let tensors = candle_core::safetensors::load(path, &self.device())
            .with_context(|| format!("reading policy weights {}", path.display()))?;
        set_vars(&self.vars(), &tensors, path)
    }
}

/// Sets each var from the tensor of the same name, checking shapes.
pub fn set_vars(
    vars: &[(String, Var)],
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<()> {
    for (name, var) in vars {
        let t = tensors
            .get(name)
            .with_context(|| format!("{}: tensor `{name}` missing", path.display()))?;
        anyhow::ensure!(
            t.dims() == var.dims(),
            "{}: tensor `{name}` has shape {:?}, the policy expects {:?}",
            path.display(),
            t.dims(),
            var.dims()
        );
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// A copy of parameter values, for lookahead probes and the frozen KL reference.
#[derive(Clone)]
pub struct ParamSnapshot(pub Vec<Tensor>);

impl ParamSnapshot {
    pub fn take(vars: &[(String, Var)]) -> Result<Self> {
        Ok(ParamSnapshot(
            vars.iter()
                .map(|(_, v)| v.as_tensor().copy())
                .collect::<candle_core::Result<_>>()?,
        ))
    }

    pub fn restore(&self, vars: &[(String, Var)]) -> Result<()> {
        for ((_, v), t) in vars.iter().zip(&self.0) {
            v.set(t)?;
        }
        Ok(())
    }
}
