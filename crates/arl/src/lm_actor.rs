//! The transformer of the `policy` crate behind the trainer's [`Policy`] trait: prompts in the
//! model's chat template,
//! batched sampling, teacher-forced log-probs with gradients, full or LoRA fine-tuning.

use crate::actor::{Completion, Groups, Policy, TokenLogProbs};
use anyhow::{Context, Result};
use candle_core::{Device, Var};
use rand_chacha::ChaCha8Rng;
use rubric::Example;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[policy] model` value naming the tiny model the run's `[warm_start]` section builds (see
/// [`crate::sft`]); `setup::prepare` replaces it with the cached folder.
pub const WARM_START_MODEL: &str = "warm-start";

/// `[policy]` with `kind = "transformer"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    /// A `.gguf` file or an HF folder (config.json, *.safetensors, tokenizer.json);
    /// `"smollm2"` names the fetched SmolLM2-135M-Instruct asset, `"warm-start"` the tiny model
    /// built from the `[warm_start]` section.
    pub model: PathBuf,
    /// Longest response, in tokens.
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
    /// Sampling temperature (the log-probs use the same one).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// LoRA adapters (base frozen); absent = full fine-tuning.
    #[serde(default)]
    pub lora: Option<LoraSection>,
    /// Seeds the LoRA `A` matrices.
    #[serde(default)]
    pub init_seed: u64,
    /// Teacher-forced log-probs run each prompt's forward once for the completions of it that
    /// sit together in a micro-batch (they attend to its keys and values). Faster with long
    /// prompts; the same values and gradients up to float rounding, so off by default, which
    /// keeps the default runs' figures bit for bit (and their saved configs: written only
    /// when on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub share_prompt: bool,
    /// Matmul precision of sampling: `"f32"` (exact: the sampler's log-probs are the
    /// trainer's) or `"bf16"` (weights rounded once per rollout, f32 accumulation; faster).
    /// The log-probs GRPO differentiates always come from the f32 teacher-forced pass; the
    /// gap between the two is `update.sampler_gap` in `metrics.jsonl`.
    #[serde(
        default,
        skip_serializing_if = "is_f32",
        deserialize_with = "sample_precision"
    )]
    pub sample_precision: policy::Precision,
    /// Matmul precision of the teacher-forced forward and backward: `"f32"` or `"bf16"`
    /// (operands rounded to bf16, f32 accumulation, f32 master weights and optimizer; on a
    /// fixed SmolLM2 batch loss and gradient norm within 0.2% of f32). Off by default: the
    /// default runs' figures are f32's, bit for bit.
    #[serde(
        default,
        skip_serializing_if = "is_f32",
        deserialize_with = "train_precision"
    )]
    pub train_precision: policy::Precision,
}

pub(crate) fn is_f32(p: &policy::Precision) -> bool {
    *p == policy::Precision::F32
}

/// Names the field in the error: inside the tagged `[policy]` enum serde only knows `policy`.
fn sample_precision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<policy::Precision, D::Error> {
    precision_field(d, "sample_precision")
}

fn train_precision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<policy::Precision, D::Error> {
    training_precision_field(d, "train_precision")
}

fn precision_field<'de, D: serde::Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<policy::Precision, D::Error> {
    let name = String::deserialize(d)?;
    policy::Precision::parse(&name).map_err(|e| serde::de::Error::custom(format!("`{field}`: {e}")))
}

/// `precision_field` for training matmuls (no int8 or int4).
pub(crate) fn training_precision_field<'de, D: serde::Deserializer<'de>>(
    d: D,
    field: &str,
) -> Result<policy::Precision, D::Error> {
    let name = String::deserialize(d)?;
    policy::Precision::parse_training(&name)
        .map_err(|e| serde::de::Error::custom(format!("`{field}`: {e}")))
}

fn default_max_new_tokens() -> usize {
    64
}
fn default_temperature() -> f64 {
    1.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSection {
    pub rank: usize,
    pub alpha: f64,
    /// Projections to adapt: any of q, k, v, o, gate, up, down.
    pub targets: Vec<String>,
}

pub struct TransformerPolicy {
    pub config: TransformerConfig,
    pub model: policy::Model,
    /// The model file or folder the weights were loaded from (absolute; `smollm2` resolved).
    base_path: PathBuf,
    /// The adapters' config of a LoRA policy.
    lora: Option<policy::LoraConfig>,
    /// What a PEFT adapter of this policy names as its base ([`TransformerPolicy::peft_base`]),
    /// once known.
    peft_base: std::sync::OnceLock<PathBuf>,
    /// `Policy::prefill_secs` of the last `generate`.
    prefill_secs: f64,
}

/// Loads a model file or folder; the error names `field` and the path, once (the policy
/// crate's errors about a file name it).
pub(crate) fn load_model(path: &std::path::Path, field: &str) -> Result<policy::Model> {
    policy::Model::load(path).map_err(|e| {
        let (e, shown) = (e.to_string(), path.display().to_string());
        if e.contains(&shown) {
            anyhow::anyhow!("{field}: {e}")
        } else {
            anyhow::anyhow!("{field}: loading {shown}: {e}")
        }
    })
}

impl TransformerPolicy {
    pub fn new(config: TransformerConfig) -> Result<Self> {
        let path = if config.model.as_os_str() == "smollm2" {
            rubric::assets::smollm2_gguf().map_err(anyhow::Error::msg)?
        } else {
            config.model.clone()
        };
        let mut model = load_model(&path, "[policy] model")?;
        let base_path = std::path::absolute(&path)
            .with_context(|| format!("[policy] model: {}", path.display()))?;
        let mut lora = None;
        if let Some(l) = &config.lora {
            let targets = l
                .targets
                .iter()
                .map(|t| policy::LoraTarget::parse(t))
                .collect::<policy::Result<Vec<_>>>()
                .context("[policy] lora.targets")?;
            let lcfg = policy::LoraConfig {
                rank: l.rank,
                alpha: l.alpha,
                targets,
            };
            lcfg.validate().context("[policy] lora")?;
            model.transformer.add_lora(&lcfg, config.init_seed)?;
            lora = Some(lcfg);
        }
        Ok(TransformerPolicy {
            config,
            model,
            base_path,
            lora,
            peft_base: std::sync::OnceLock::new(),
            prefill_secs: 0.0,
        })
    }

    /// The model file or folder the policy was loaded from (absolute).
    pub fn base_path(&self) -> &std::path::Path {
        &self.base_path
    }

    /// The adapters' config of a LoRA policy; `None` for full fine-tuning.
    pub fn lora_config(&self) -> Option<&policy::LoraConfig> {
        self.lora.as_ref()
    }

    /// The HF folder a PEFT adapter of this policy names as `base_model_name_or_path`: the
    /// model folder itself, or for a `.gguf` file its weights as dequantized at load (what
    /// the adapters were trained on; the GGUF names no hub model, and the hub's weights are
    /// not these) written once as an f32 HF folder under the cache
    /// ([`crate::cache::gguf_base_dir`]).
    pub fn peft_base(&self) -> Result<PathBuf> {
        if let Some(p) = self.peft_base.get() {
            return Ok(p.clone());
        }
        let base = if self.base_path.is_dir() {
            self.base_path.clone()
        } else {
            crate::cache::gguf_base_dir(&self.model, &self.base_path)?
        };
        Ok(self.peft_base.get_or_init(|| base).clone())
    }
}

impl TransformerPolicy {
    fn prompt_ids(&self, ex: &Example) -> Result<Vec<u32>> {
        self.model
            .tokenizer
            .chat_prompt(&ex.prompt)
            .with_context(|| format!("tokenizing the prompt of `{}`", ex.id))
    }
}

impl Policy for TransformerPolicy {
    fn generate(&mut self, prompts: &[&Example], n: usize, rng: &mut ChaCha8Rng) -> Result<Groups> {
        let batch = prompts
            .iter()
            .map(|ex| self.prompt_ids(ex))
            .collect::<Result<Vec<_>>>()?;
        let mut cfg = self
            .model
            .generation_config(self.config.max_new_tokens, self.config.temperature);
        cfg.precision = self.config.sample_precision;
        // Each prompt is prefilled once; its n samples share that cache.
        let (gens, prefill) = policy::generate_groups_timed(
            &self.model.transformer,
            &batch,
            n,
            &cfg,
            rng,
            |_, _| {},
        )?;
        self.prefill_secs = prefill;
        let mut out: Vec<Vec<Completion>> = Vec::with_capacity(prompts.len());
        for chunk in gens.chunks(n) {
            let group = chunk
                .iter()
                .map(|g| {
                    Ok(Completion {
                        text: self.model.tokenizer.decode(&g.tokens, true)?,
                        tokens: g.tokens.clone(),
                        log_probs: g.logprobs.clone(),
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(group);
        }
        Ok(out)
    }

    fn prefill_secs(&self) -> f64 {
        self.prefill_secs
    }

    fn log_probs(&self, prompts: &[&Example], completions: &[&[u32]]) -> Result<TokenLogProbs> {
        let pairs = prompts
            .iter()
            .zip(completions)
            .map(|(ex, c)| Ok((self.prompt_ids(ex)?, c.to_vec())))
            .collect::<Result<Vec<_>>>()?;
        let (model, t) = (&self.model.transformer, self.config.temperature);
        let precision = self.config.train_precision;
        let lp = policy::bf16::with_matmul_precision(precision, || {
            if self.config.share_prompt {
                // A group's rows are consecutive: one prompt per run of equal prompts.
                let mut distinct: Vec<Vec<u32>> = Vec::new();
                let mut comps = Vec::with_capacity(pairs.len());
                for (p, c) in pairs {
                    if distinct.last() != Some(&p) {
                        distinct.push(p);
                    }
                    comps.push((distinct.len() - 1, c));
                }
                policy::completion_log_probs_shared(model, &distinct, &comps, t)
            } else {
                policy::completion_log_probs(model, &pairs, t)
            }
        })?;
        Ok(TokenLogProbs {
            log_probs: lp.logp,
            mask: lp.mask,
            entropy: lp.entropy,
        })
    }

    fn prompt_tokens(&self, prompt: &Example) -> Result<usize> {
        Ok(self.prompt_ids(prompt)?.len())
    }

    fn prompt_limit(&self) -> Option<crate::actor::PromptLimit> {
        Some(crate::actor::PromptLimit {
            positions: self.model.transformer.cfg.max_position_embeddings,
            max_new_tokens: self.config.max_new_tokens,
        })
    }

    fn train_bytes(&self, rows: usize, prompts: usize, prompt: usize, completion: usize) -> u64 {
        let t = &self.model.transformer;
        let bytes = t.dtype().size_in_bytes();
        if self.config.share_prompt {
            // each prompt's pass once; each completion's tokens attend to prompt + completion
            let prompt_pass = pass_bytes(&t.cfg, bytes, prompt, prompt, 0);
            let row = pass_bytes(&t.cfg, bytes, completion, prompt + completion, completion);
            return prompt_pass * prompts as u64 + row * rows as u64;
        }
        activation_bytes(&t.cfg, bytes, prompt + completion, completion) * rows as u64
    }

    fn vars(&self) -> Vec<(String, Var)> {
        if self.config.lora.is_some() {
            self.model.transformer.lora_vars()
        } else {
            self.model.transformer.named_vars()
        }
    }

    fn device(&self) -> Device {
        self.model.transformer.device().clone()
    }

    /// A LoRA policy's checkpoint is also a PEFT adapter folder: `adapter_config.json`
    /// (`base_model_name_or_path` = [`TransformerPolicy::peft_base`]) and
    /// `adapter_model.safetensors` (the tensors of `policy.safetensors`).
    fn save_extras(&self, dir: &std::path::Path) -> Result<()> {
        let Some(lcfg) = &self.lora else {
            return Ok(());
        };
        let base = self.peft_base()?;
        policy::save_lora(&self.model.transformer, lcfg, &base.to_string_lossy(), dir)
            .with_context(|| format!("writing the PEFT adapter into {}", dir.display()))
    }
}

/// What a training forward of one row of `len` tokens, `completion` of them scored, keeps for
/// the backward: per layer and token the outputs of the two norms, the q/k/v projections, the
/// rotated q and k, attention, its output projection, the two residual sums, gate, up, their
/// product and the down projection (6 hidden + 3 q + 3 kv + 3 intermediate wide), plus the
/// attention probabilities (heads x len); then the embedding and the final norm, and the
/// logits of the scored tokens. Within a few percent of SmolLM2's measured footprint.
pub(crate) fn activation_bytes(
    cfg: &policy::Config,
    dtype_bytes: usize,
    len: usize,
    completion: usize,
) -> u64 {
    pass_bytes(cfg, dtype_bytes, len, len, completion)
}

/// `activation_bytes` of a pass of `tokens` tokens that attend to `keys` keys each (a shared
/// prompt's completions see the prompt's keys too), `scored` of them through the output.
fn pass_bytes(
    cfg: &policy::Config,
    dtype_bytes: usize,
    tokens: usize,
    keys: usize,
    scored: usize,
) -> u64 {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let q = cfg.num_attention_heads * cfg.head_dim;
    let kv = cfg.num_key_value_heads * cfg.head_dim;
    let layer = 6 * h + 3 * q + 3 * kv + 3 * i + cfg.num_attention_heads * keys;
    let values = tokens * (cfg.num_hidden_layers * layer + 2 * h) + scored * cfg.vocab_size;
    (values * dtype_bytes) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::micro::ACTIVATION_BUDGET;

    #[test]
    fn the_default_tiny_batch_is_one_micro_batch_and_smollm2_rows_are_split() {
        // configs/builtin.toml's warm-start model: 48 rows, prompts under 80 tokens (55 seen),
        // completions <= 96. Half the budget: room for longer prompts.
        let tiny = policy::Config {
            vocab_size: 768,
            hidden_size: 128,
            intermediate_size: 384,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 4,
            head_dim: 32,
            ..policy::Config::smollm2_135m()
        };
        assert!(48 * activation_bytes(&tiny, 4, 80 + 96, 96) < ACTIVATION_BUDGET / 2);
        // A SmolLM2 row of the bench config (58 + 64 tokens): the lower bound is the measured
        // forward activations per row (docs/benchmarks.md, "Memory of a training step"); the
        // estimate must stay a little above it.
        let row = activation_bytes(&policy::Config::smollm2_135m(), 4, 58 + 64, 64);
        assert!((172_000_000..200_000_000).contains(&row), "{row}");
        // at 1 GiB, five rows per pass
        assert!(6 * row > ACTIVATION_BUDGET && 5 * row <= ACTIVATION_BUDGET);
    }
}
