//! Supervised warm start: the tiny transformer policy built from scratch, or a real model
//! (`base`, e.g. SmolLM2) fine-tuned on the same corpus.
//!
//! RL needs a starting policy that already writes task-shaped text and samples good and bad
//! behaviour with moderate probability, or GRPO's groups have no spread to learn from. The
//! warm start is built from the built-in task alone: responses of mixed quality
//! ([`rubric::builtin::sample_response`] with a quality drawn per response) to the training
//! prompts, a byte-level BPE trained on that text ([`policy::train_bpe`]), a small randomly
//! initialised transformer, and teacher-forced NLL on (prompt, response) pairs through the
//! same log-prob path GRPO differentiates, with the trainer's AdamW. The result is saved as an
//! HF folder (`model.safetensors`, `config.json`, `tokenizer.json`), so `arlrr generate`,
//! `arlrr eval` and `[policy] kind = "transformer"` load it like any downloaded model.
//!
//! With `base`, the base model's tokenizer and shape replace the tiny ones and the fine-tuned
//! weights (LoRA merged in) are saved the same way: an instruction-tuned model never writes the
//! task's phrases, so without this its GRPO groups have no reward spread to learn from.
//!
//! Building it takes a minute or two on a laptop CPU (SmolLM2: several), so [`cached`] keeps
//! it under the cache folder keyed by a hash of its config: the second `arlrr train` starts RL
//! at once.

use crate::optim::{add_grad, clip_grads, global_norm, AdamW, LrSchedule, OptimConfig};
use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rubric::builtin::{self, BuiltinSpec};
use rubric::runfile::write_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Bumped when the corpus, tokenizer or training procedure changes, so stale cached warm
/// starts are not reused.
const WARM_START_VERSION: &str = "warm-start-v1";

/// `[warm_start]`: the tiny policy and how it is fine-tuned before RL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmStartConfig {
    /// Responses sampled per built-in training prompt for the corpus.
    pub responses_per_prompt: usize,
    /// Each response's quality is drawn uniformly from `[quality_min, quality_max]` (0 = every
    /// helpful sentence left out and harmful ones likely, 1 = the ideal answer's content).
    /// A middle range gives a start with room to improve on every axis.
    pub quality_min: f64,
    pub quality_max: f64,
    /// Tokenizer size: 256 bytes + 3 special tokens + BPE merges.
    pub vocab_size: usize,
    /// Longest merged token in characters (keeps tokens below sentence size).
    pub max_token_chars: usize,
    /// Transformer shape (Llama architecture, tied embeddings).
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    /// Context length: prompt + response tokens.
    pub max_positions: usize,
    /// Optimizer steps of supervised fine-tuning.
    pub steps: u64,
    /// (prompt, response) pairs per step.
    pub batch_size: usize,
    /// Peak learning rate (linear warmup over 5% of the steps, cosine decay to 10%).
    pub lr: f64,
    /// Seeds the corpus, the initial weights and the batch order.
    pub seed: u64,
    /// A model to fine-tune instead of building the tiny one: `"smollm2"` (the fetched
    /// SmolLM2-135M-Instruct), a `.gguf` file or an HF folder. Its tokenizer and shape are
    /// used, so `vocab_size` .. `max_positions` (the tiny model's) are ignored. Part of the
    /// cache key by name: rebuild (`arlrr sft`) after changing the file behind a path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<PathBuf>,
    /// With `base`: LoRA adapters during fine-tuning, merged into the saved weights (absent =
    /// full fine-tuning).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora: Option<crate::lm_actor::LoraSection>,
    /// Matmul precision of the fine-tuning passes, `"f32"` or `"bf16"` (as
    /// `[policy] train_precision`).
    #[serde(
        default,
        skip_serializing_if = "crate::lm_actor::is_f32",
        deserialize_with = "train_precision"
    )]
    pub train_precision: policy::Precision,
    /// Where cached warm starts live; default `$ARLRR_CACHE`, else `~/.cache/arlrr`. Not part
    /// of the cache key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<PathBuf>,
}

impl Default for WarmStartConfig {
    fn default() -> Self {
        WarmStartConfig {
            responses_per_prompt: 8,
            quality_min: 0.2,
            quality_max: 0.8,
            vocab_size: 768,
            max_token_chars: 16,
            hidden_size: 128,
            intermediate_size: 384,
            layers: 2,
            heads: 4,
            max_positions: 256,
            steps: 120,
            batch_size: 32,
            lr: 3e-3,
            seed: 0,
            base: None,
            lora: None,
            train_precision: policy::Precision::F32,
            cache: None,
        }
    }
}

impl WarmStartConfig {
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str, ok: bool, why: &str| {
            if ok {
                Ok(())
            } else {
                Err(anyhow::anyhow!("field `warm_start.{name}`: {why}"))
            }
        };
        f(
            "quality_min",
            (0.0..=1.0).contains(&self.quality_min) && self.quality_min <= self.quality_max,
            "must be in [0, quality_max]",
        )?;
        f("quality_max", self.quality_max <= 1.0, "must be at most 1")?;
        f(
            "responses_per_prompt",
            self.responses_per_prompt > 0,
            "must be at least 1",
        )?;
        f("batch_size", self.batch_size > 0, "must be at least 1")?;
        f(
            "heads",
            self.heads > 0
                && self.hidden_size.is_multiple_of(self.heads)
                && (self.hidden_size / self.heads).is_multiple_of(2),
            "must divide hidden_size into an even head size",
        )?;
        f("lr", self.lr > 0.0, "must be positive")?;
        f("steps", self.steps > 0, "must be at least 1")?;
        if let Some(l) = &self.lora {
            f(
                "lora",
                self.base.is_some(),
                "needs `warm_start.base` (the tiny model is trained in full)",
            )?;
            lora_config(l)?;
        }
        if let Some(b) = &self.base {
            base_path(b)?;
        }
        f(
            "vocab_size",
            self.vocab_size >= 259,
            "must be at least 259 (bytes + specials)",
        )
    }

    /// Hex key of everything that determines the result (not the cache location).
    pub fn cache_key(&self) -> String {
        let mut c = self.clone();
        c.cache = None;
        let text = serde_json::to_string(&c).expect("config serializes");
        let digest = Sha256::digest(format!("{WARM_START_VERSION}\n{text}").as_bytes());
        digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    fn model_config(&self, vocab_size: usize, eos: u32) -> policy::Config {
        policy::Config {
            arch: policy::Arch::Llama,
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.layers,
            num_attention_heads: self.heads,
            num_key_value_heads: self.heads,
            head_dim: self.hidden_size / self.heads,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: self.max_positions,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            bos_token_id: None,
            eos_token_id: Some(eos),
        }
    }
}

fn train_precision<'de, D: serde::Deserializer<'de>>(d: D) -> Result<policy::Precision, D::Error> {
    crate::lm_actor::training_precision_field(d, "train_precision")
}

/// The file or folder `warm_start.base` names, checked to exist.
fn base_path(base: &Path) -> Result<PathBuf> {
    if base.as_os_str() == "smollm2" {
        return rubric::assets::smollm2_gguf()
            .map_err(|e| anyhow::anyhow!("field `warm_start.base`: {e}"));
    }
    anyhow::ensure!(
        base.exists(),
        "field `warm_start.base`: `{}` is neither a named model (smollm2) nor an existing \
         .gguf file or HF folder",
        base.display()
    );
    Ok(base.to_path_buf())
}

/// `warm_start.lora` as the policy crate's adapter config, its targets checked against the
/// projections the transformer has.
fn lora_config(l: &crate::lm_actor::LoraSection) -> Result<policy::LoraConfig> {
    let targets = l
        .targets
        .iter()
        .map(|t| {
            policy::LoraTarget::parse(t).map_err(|_| {
                anyhow::anyhow!(
                    "field `warm_start.lora.targets`: `{t}` is not a projection of the \
                     transformer (choose from q, k, v, o, gate, up, down)"
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cfg = policy::LoraConfig {
        rank: l.rank,
        alpha: l.alpha,
        targets,
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("field `warm_start.lora`: {e}"))?;
    Ok(cfg)
}

pub use crate::cache::default_cache_root;

/// The (prompt, response) texts of the corpus: `responses_per_prompt` mixed-quality responses
/// to each built-in training prompt (never validation or test).
pub fn corpus(cfg: &WarmStartConfig) -> Vec<(rubric::Example, String)> {
    let splits = builtin::generate(BuiltinSpec::default()).expect("the default spec is valid");
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xc0_7905);
    let mut out = Vec::new();
    for ex in &splits.train {
        for _ in 0..cfg.responses_per_prompt {
            let q = rng.gen_range(cfg.quality_min..=cfg.quality_max);
            let r = builtin::sample_response(ex, q, &mut rng);
            out.push((ex.clone(), r));
        }
    }
    out
}

/// Progress of the warm start, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Progress {
    Tokenizer,
    Step { step: u64, total: u64, loss: f64 },
}

/// One line of `sft.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SftLine {
    pub step: u64,
    pub lr: f64,
    /// Mean NLL per response token of the step's batch.
    pub loss: f64,
    pub grad_norm: f64,
}

/// How [`sft`] trains.
#[derive(Debug, Clone)]
pub struct SftOptions {
    pub steps: u64,
    /// (prompt, response) pairs per optimizer step.
    pub batch_size: usize,
    pub optim: OptimConfig,
    /// Seeds the batch order.
    pub seed: u64,
    /// Matmul precision of the forward and backward passes.
    pub precision: policy::Precision,
}

/// Teacher-forced supervised fine-tuning of `vars` (the model's trainable parameters):
/// minimizes the mean NLL per completion token of `pairs` (prompt ids, completion ids ending
/// with the stop token) in random batches. A batch is run in micro-batches that keep about
/// the trainer's activation budget, their gradients summed (one micro-batch for the tiny
/// model). Returns one line per step.
pub fn sft(
    model: &policy::Transformer,
    vars: &[(String, candle_core::Var)],
    pairs: &[(Vec<u32>, Vec<u32>)],
    o: &SftOptions,
    mut on_step: impl FnMut(&SftLine),
) -> Result<Vec<SftLine>> {
    anyhow::ensure!(
        !pairs.is_empty(),
        "no (prompt, response) pairs to fine-tune on"
    );
    let optim = &o.optim;
    let mut opt = AdamW::new(vars, optim.clone())?;
    let mut rng = ChaCha8Rng::seed_from_u64(o.seed);
    let mut lines = Vec::with_capacity(o.steps as usize);
    for step in 0..o.steps {
        let batch: Vec<(Vec<u32>, Vec<u32>)> = (0..o.batch_size)
            .map(|_| pairs[rng.gen_range(0..pairs.len())].clone())
            .collect();
        let lens: Vec<(usize, usize)> = batch.iter().map(|(p, c)| (p.len(), c.len())).collect();
        let ranges =
            crate::micro::budget_ranges(&lens, crate::micro::ACTIVATION_BUDGET, |rows, p, c| {
                crate::lm_actor::activation_bytes(&model.cfg, 4, p + c, c) * rows.len() as u64
            });
        let tokens = lens.iter().map(|l| l.1).sum::<usize>().max(1) as f64;
        let mut grads: Vec<Option<Tensor>> = vec![None; vars.len()];
        let mut loss = 0.0;
        {
            let _packs = policy::bf16::cache_weight_packs();
            // the linear layers sum their weight gradients in place across micro-batches
            let sink = policy::grad_sink::install_grad_sink();
            for r in ranges {
                let lp = policy::bf16::with_matmul_precision(o.precision, || {
                    policy::completion_log_probs(model, &batch[r], 1.0)
                })?;
                let part = (lp.logp.sum_all()?.neg()? / tokens)?;
                loss += part.to_scalar::<f32>()? as f64;
                let store = part.backward()?;
                for (g, (_, v)) in grads.iter_mut().zip(vars) {
                    add_grad(g, store.get(v.as_tensor()).map(Tensor::detach))?;
                }
            }
            for (g, (_, v)) in grads.iter_mut().zip(vars) {
                add_grad(g, sink.take(v.as_tensor()))?;
            }
        }
        let mut grads = grads
            .into_iter()
            .zip(vars)
            .map(|(g, (_, v))| g.map_or_else(|| v.as_tensor().zeros_like(), Ok))
            .collect::<candle_core::Result<Vec<Tensor>>>()?;
        let norm = global_norm(&grads)?;
        let lr = optim.lr_at(step, o.steps);
        if norm.is_finite() {
            clip_grads(&mut grads, norm, optim.grad_clip)?;
            opt.step(vars, &grads, lr)?;
        }
        let line = SftLine {
            step: step + 1,
            lr,
            loss,
            grad_norm: norm,
        };
        on_step(&line);
        lines.push(line);
    }
    Ok(lines)
}

/// Builds the warm start into `out` (an HF model folder plus `warm_start.toml` and
/// `sft.jsonl`): corpus, tokenizer, random model, supervised fine-tuning.
pub fn build(cfg: &WarmStartConfig, out: &Path, mut on: impl FnMut(Progress)) -> Result<()> {
    cfg.validate()?;
    let corpus = corpus(cfg);
    let mut model = match &cfg.base {
        Some(base) => {
            let path = base_path(base)?;
            crate::lm_actor::load_model(&path, "field `warm_start.base`")?
        }
        None => {
            on(Progress::Tokenizer);
            tiny_model(cfg, &corpus)?
        }
    };
    let (tokenizer, max_positions) = (&model.tokenizer, model.config.max_position_embeddings);
    // The stop token generation ends a turn with, so the policy learns to stop.
    let stop = tokenizer.eos_id;
    let pairs = corpus
        .iter()
        .map(|(ex, r)| {
            let prompt = tokenizer.chat_prompt(&ex.prompt)?;
            let mut resp = tokenizer.encode(r)?;
            resp.push(stop);
            let field = if cfg.base.is_some() {
                "the base model's max_position_embeddings"
            } else {
                "warm_start.max_positions"
            };
            anyhow::ensure!(
                prompt.len() + resp.len() <= max_positions,
                "`{}`: prompt + response are {} tokens, over {field} = {max_positions}",
                ex.id,
                prompt.len() + resp.len(),
            );
            Ok((prompt, resp))
        })
        .collect::<Result<Vec<_>>>()?;
    let lora = cfg.lora.as_ref().map(lora_config).transpose()?;
    if let Some(l) = &lora {
        model.transformer.add_lora(l, cfg.seed)?;
    }
    let vars = if lora.is_some() {
        model.transformer.lora_vars()
    } else {
        model.transformer.named_vars()
    };
    let options = SftOptions {
        steps: cfg.steps,
        batch_size: cfg.batch_size,
        optim: OptimConfig {
            lr: cfg.lr,
            warmup_steps: (cfg.steps / 20).max(1),
            schedule: LrSchedule::Cosine,
            ..OptimConfig::default()
        },
        seed: cfg.seed,
        precision: cfg.train_precision,
    };
    let total = cfg.steps;
    let lines = sft(&model.transformer, &vars, &pairs, &options, |l| {
        on(Progress::Step {
            step: l.step,
            total,
            loss: l.loss,
        })
    })?;
    model.transformer.merge_lora()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    model
        .save(out)
        .with_context(|| format!("saving the warm start to {}", out.display()))?;
    let mut log = String::new();
    for l in &lines {
        log.push_str(&serde_json::to_string(l)?);
        log.push('\n');
    }
    write_atomic(&out.join("sft.jsonl"), log.as_bytes())?;
    write_atomic(
        &out.join("warm_start.toml"),
        toml::to_string_pretty(cfg)?.as_bytes(),
    )?;
    Ok(())
}

/// The tiny model before fine-tuning: a BPE tokenizer trained on the corpus and random
/// weights.
fn tiny_model(
    cfg: &WarmStartConfig,
    corpus: &[(rubric::Example, String)],
) -> Result<policy::Model> {
    // The pieces exactly as encoding sees them: a chat prompt splits at its special tokens.
    let texts = corpus
        .iter()
        .step_by(cfg.responses_per_prompt)
        .map(|(ex, _)| format!("user\n{}", ex.prompt[0].content))
        .chain(["assistant\n".to_string(), "\n".to_string()])
        .chain(corpus.iter().map(|(_, r)| r.clone()))
        .collect::<Vec<_>>();
    let tokenizer = policy::train_bpe(texts.iter(), cfg.vocab_size, cfg.max_token_chars)?;
    let config = cfg.model_config(tokenizer.vocab_size(), tokenizer.eos_id);
    let transformer = policy::Transformer::random(&config, DType::F32, &Device::Cpu, cfg.seed)?;
    Ok(policy::Model {
        config,
        tokenizer,
        transformer,
    })
}

/// The cached warm start for `cfg`, built first when missing: `<cache>/warm-start/<key>`.
/// Built in a temporary sibling folder and renamed into place, so an interrupted build is never
/// mistaken for a finished one. Returns the folder and whether it was reused.
pub fn cached(cfg: &WarmStartConfig, on: impl FnMut(Progress)) -> Result<(PathBuf, bool)> {
    let root = cfg.cache.clone().unwrap_or_else(default_cache_root);
    let dir = root.join("warm-start").join(cfg.cache_key());
    if dir.join("model.safetensors").exists() && dir.join("tokenizer.json").exists() {
        return Ok((dir, true));
    }
    let parent = dir.parent().expect("a key folder has a parent");
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".building-")
        .tempdir_in(parent)?;
    build(cfg, tmp.path(), on)?;
    let built = tmp.keep();
    if let Err(e) = std::fs::rename(&built, &dir) {
        // another process finished the same key first: use its copy
        let _ = std::fs::remove_dir_all(&built);
        if !dir.join("model.safetensors").exists() {
            return Err(e).with_context(|| format!("moving the warm start to {}", dir.display()));
        }
    }
    Ok((dir, false))
}
