//! A tiny trainable policy: each response is a short sequence of phrases drawn from a fixed
//! vocabulary, position by position, from a logit table `[buckets, max_tokens, vocab]`.
//! Conditioning on a prompt tag (one table row per bucket) lets it learn prompt-dependent
//! answers. It exercises every trainer path (sampling, teacher-forced log-probs, gradients,
//! checkpoints) in milliseconds, with responses the rule judge grades like real text.

use crate::actor::{Completion, Groups, Policy, TokenLogProbs};
use anyhow::{ensure, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rubric::Example;
use serde::{Deserialize, Serialize};

/// Token 0 ends the response.
pub const END_OF_TEXT: u32 = 0;

/// `[policy]` with `kind = "categorical"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CategoricalConfig {
    /// Phrases the policy can emit (token ids 1..); token 0 is end-of-text. Phrases are
    /// joined with single spaces, so a phrase may carry its own punctuation or "\n- ".
    pub vocab: Vec<String>,
    /// Longest response, in phrases.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: usize,
    /// Example tag prefix (e.g. `"theme"`) whose value picks the logit-table row; `None`
    /// gives one unconditional row.
    #[serde(default)]
    pub condition_on_tag: Option<String>,
    /// Rows of the table when conditioning (tag values are hashed into them).
    #[serde(default = "default_buckets")]
    pub buckets: usize,
    /// Sampling temperature.
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_max_tokens() -> usize {
    8
}
fn default_buckets() -> usize {
    1
}
fn default_temperature() -> f64 {
    1.0
}

pub struct CategoricalPolicy {
    pub config: CategoricalConfig,
    /// `[buckets, max_tokens, vocab+1]`, zero at start (uniform).
    logits: Var,
    device: Device,
}

impl CategoricalPolicy {
    pub fn new(config: CategoricalConfig) -> Result<Self> {
        ensure!(
            !config.vocab.is_empty(),
            "[policy] vocab: needs at least one phrase"
        );
        ensure!(
            config.max_tokens > 0,
            "[policy] max_tokens: must be at least 1"
        );
        ensure!(config.buckets > 0, "[policy] buckets: must be at least 1");
        ensure!(
            config.temperature > 0.0,
            "[policy] temperature: must be positive"
        );
        let device = Device::Cpu;
        let shape = (config.buckets, config.max_tokens, config.vocab.len() + 1);
        let logits = Var::zeros(shape, DType::F32, &device)?;
        Ok(CategoricalPolicy {
            config,
            logits,
            device,
        })
    }

    fn vocab_size(&self) -> usize {
        self.config.vocab.len() + 1
    }

    /// Table row of a prompt: FNV-1a of the conditioning tag's value, modulo `buckets`.
    fn bucket(&self, example: &Example) -> usize {
        let Some(prefix) = &self.config.condition_on_tag else {
            return 0;
        };
        let value = example.tag_value(prefix).unwrap_or("");
        let mut h: u64 = 0xcbf29ce484222325;
        for b in value.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
        (h % self.config.buckets as u64) as usize
    }

    /// The response text of a token sequence.
    pub fn decode(&self, tokens: &[u32]) -> String {
        tokens
            .iter()
            .take_while(|&&t| t != END_OF_TEXT)
            .map(|&t| self.config.vocab[t as usize - 1].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Token id of a phrase (tests and constructed cases).
    pub fn token(&self, phrase: &str) -> Option<u32> {
        self.config
            .vocab
            .iter()
            .position(|p| p == phrase)
            .map(|i| i as u32 + 1)
    }
}

/// `log_softmax` over the last dim from differentiable primitives (the max is a constant
/// shift, so detaching it changes no gradient).
pub fn log_softmax(x: &Tensor) -> candle_core::Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let z = x.broadcast_sub(&max)?;
    let lse = z.exp()?.sum_keepdim(D::Minus1)?.log()?;
    z.broadcast_sub(&lse)
}

impl Policy for CategoricalPolicy {
    fn generate(&mut self, prompts: &[&Example], n: usize, rng: &mut ChaCha8Rng) -> Result<Groups> {
        let scaled = (self.logits.as_tensor() / self.config.temperature)?;
        let logp: Vec<Vec<Vec<f32>>> = log_softmax(&scaled)?.to_vec3()?;
        let mut out = Vec::with_capacity(prompts.len());
        for ex in prompts {
            let table = &logp[self.bucket(ex)];
            let mut group = Vec::with_capacity(n);
            for _ in 0..n {
                let (mut tokens, mut log_probs) = (Vec::new(), Vec::new());
                for row in table {
                    let u: f32 = rng.gen();
                    let mut acc = 0.0;
                    let mut tok = row.len() - 1;
                    for (t, lp) in row.iter().enumerate() {
                        acc += lp.exp();
                        if u < acc {
                            tok = t;
                            break;
                        }
                    }
                    tokens.push(tok as u32);
                    log_probs.push(row[tok]);
                    if tok as u32 == END_OF_TEXT {
                        break;
                    }
                }
                let text = self.decode(&tokens);
                group.push(Completion {
                    tokens,
                    text,
                    log_probs,
                });
            }
            out.push(group);
        }
        Ok(out)
    }

    fn log_probs(&self, prompts: &[&Example], completions: &[&[u32]]) -> Result<TokenLogProbs> {
        ensure!(
            prompts.len() == completions.len(),
            "one completion per prompt"
        );
        let (b, t_max, v) = (
            prompts.len(),
            completions
                .iter()
                .map(|c| c.len())
                .max()
                .unwrap_or(0)
                .max(1),
            self.vocab_size(),
        );
        let positions = self.config.max_tokens;
        let (mut rows, mut toks, mut mask) = (
            vec![0u32; b * t_max],
            vec![0u32; b * t_max],
            vec![0f32; b * t_max],
        );
        for (i, (ex, c)) in prompts.iter().zip(completions).enumerate() {
            ensure!(c.len() <= positions, "completion longer than max_tokens");
            let bucket = self.bucket(ex);
            for (t, &tok) in c.iter().enumerate() {
                ensure!((tok as usize) < v, "token id {tok} outside the vocabulary");
                rows[i * t_max + t] = (bucket * positions + t) as u32;
                toks[i * t_max + t] = tok;
                mask[i * t_max + t] = 1.0;
            }
        }
        let table = self
            .logits
            .as_tensor()
            .reshape((self.config.buckets * positions, v))?;
        let table = (table / self.config.temperature)?;
        let rows = Tensor::from_vec(rows, b * t_max, &self.device)?;
        let logp_all = log_softmax(&table.index_select(&rows, 0)?)?; // [B*T, V]
        let toks = Tensor::from_vec(toks, (b * t_max, 1), &self.device)?;
        let log_probs = logp_all.gather(&toks, 1)?.reshape((b, t_max))?;
        let entropy = (logp_all.exp()? * &logp_all)?
            .sum(1)?
            .neg()?
            .reshape((b, t_max))?
            .detach();
        let mask = Tensor::from_vec(mask, (b, t_max), &self.device)?;
        Ok(TokenLogProbs {
            log_probs,
            mask,
            entropy,
        })
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![("logits".to_string(), self.logits.clone())]
    }

    fn device(&self) -> Device {
        self.device.clone()
    }
}
