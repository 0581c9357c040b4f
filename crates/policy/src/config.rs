//! The one `Config` for every supported decoder-only architecture, and its HF `config.json` form.
//!
//! Llama/SmolLM2, Qwen2 and Qwen3 differ only in a few switches (QKV bias, QK-norm, tied
//! embeddings, head_dim), so one struct with those switches covers them all.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Which HF family a model belongs to; it decides the `model_type` written to config.json and
/// how GGUF q/k weights are laid out (llama.cpp permutes them only for Llama).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Llama,
    Qwen2,
    Qwen3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Bias on the q/k/v projections (always for Qwen2), and on o_proj too for Llama/Qwen3
    /// (see `o_proj_bias`).
    pub attention_bias: bool,
    /// RMSNorm on q and k per head before RoPE (Qwen3).
    pub qk_norm: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
}

impl Config {
    /// SmolLM2-135M's shape; handy for benchmarks that want the real size without the file.
    pub fn smollm2_135m() -> Self {
        Config {
            arch: Arch::Llama,
            vocab_size: 49152,
            hidden_size: 576,
            intermediate_size: 1536,
            num_hidden_layers: 30,
            num_attention_heads: 9,
            num_key_value_heads: 3,
            head_dim: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 100000.0,
            max_position_embeddings: 8192,
            tie_word_embeddings: true,
            attention_bias: false,
            qk_norm: false,
            bos_token_id: Some(1),
            eos_token_id: Some(2),
        }
    }

    /// A tiny config for tests: every feature on that `arch` has, small enough for f64 checks.
    pub fn tiny(arch: Arch) -> Self {
        Config {
            arch,
            vocab_size: 37,
            hidden_size: 16,
            intermediate_size: 24,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 4,
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 128,
            tie_word_embeddings: arch != Arch::Qwen3,
            attention_bias: arch == Arch::Qwen2,
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: None,
            eos_token_id: Some(2),
        }
    }

    /// Whether o_proj has a bias: HF's Llama and Qwen3 put `attention_bias` on o_proj as well
    /// as q/k/v; HF's Qwen2 biases q/k/v only.
    pub fn o_proj_bias(&self) -> bool {
        self.attention_bias && self.arch != Arch::Qwen2
    }

    pub fn validate(&self) -> Result<()> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::Invalid(format!(
                "num_attention_heads ({}) must be a positive multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::Invalid(format!(
                "head_dim must be even for RoPE, got {}",
                self.head_dim
            )));
        }
        Ok(())
    }

    /// Parses an HF `config.json` (model_type llama, qwen2 or qwen3).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text)?;
        let arch = match raw.model_type.as_str() {
            "llama" | "mistral" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(Error::Unsupported(format!(
                    "model_type `{other}` (supported: llama, qwen2, qwen3)"
                )))
            }
        };
        let heads = raw.num_attention_heads;
        let cfg = Config {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(heads),
            head_dim: raw.head_dim.unwrap_or(raw.hidden_size / heads),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: raw.rope_theta.unwrap_or(10000.0),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(4096),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            // HF's Qwen2 has q/k/v biases whatever `attention_bias` says.
            attention_bias: arch == Arch::Qwen2 || raw.attention_bias.unwrap_or(false),
            qk_norm: arch == Arch::Qwen3,
            bos_token_id: raw.bos_token_id.as_ref().and_then(first_id),
            eos_token_id: raw.eos_token_id.as_ref().and_then(first_id),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The HF `config.json` text for this config, loadable by `transformers`, for f32 weights.
    pub fn to_hf_json(&self) -> String {
        self.to_hf_json_as("float32")
    }

    /// The HF `config.json` text for weights stored as `dtype` (`float32`, `bfloat16`, ...):
    /// written as `dtype` (transformers 5) and `torch_dtype` (earlier versions).
    pub fn to_hf_json_as(&self, dtype: &str) -> String {
        let (model_type, class) = match self.arch {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
        };
        let v = serde_json::json!({
            "architectures": [class],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "dtype": dtype,
            "torch_dtype": dtype,
        });
        serde_json::to_string_pretty(&v).expect("json value serializes")
    }
}

fn first_id(v: &serde_json::Value) -> Option<u32> {
    match v {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first().and_then(first_id),
        _ => None,
    }
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<serde_json::Value>,
    eos_token_id: Option<serde_json::Value>,
}
