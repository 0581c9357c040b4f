//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Tensor};
use policy::gguf::{gguf_name, permute_qk};
use policy::{Arch, Transformer};

/// Writes `model`'s weights as an F32 GGUF in llama.cpp's layout (GGUF names, q/k rows
/// permuted for Llama) with the given metadata; returns the file bytes.
pub fn to_gguf_bytes(model: &Transformer, metadata: &[(String, Value)]) -> Vec<u8> {
    let cfg = &model.cfg;
    let mut qtensors: Vec<(String, QTensor)> = Vec::new();
    for (name, var) in model.named_vars() {
        let mut t: Tensor = var.as_tensor().to_dtype(DType::F32).unwrap();
        if cfg.arch == Arch::Llama {
            if name.ends_with("q_proj.weight") {
                t = permute_qk(&t, cfg.num_attention_heads).unwrap();
            } else if name.ends_with("k_proj.weight") {
                t = permute_qk(&t, cfg.num_key_value_heads).unwrap();
            }
        }
        let g = gguf_name(&name).unwrap_or_else(|| panic!("no GGUF name for {name}"));
        qtensors.push((g, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    }
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = qtensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut cur = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut cur, &md, &ts).unwrap();
    cur.into_inner()
}

/// llama.* hyper-parameter metadata for a config (what `quantized_llama` and our reader need).
pub fn llama_metadata(cfg: &policy::Config) -> Vec<(String, Value)> {
    let arch = match cfg.arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
        Arch::Qwen3 => "qwen3",
    };
    let a = |k: &str| format!("{arch}.{k}");
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        (a("embedding_length"), Value::U32(cfg.hidden_size as u32)),
        (
            a("feed_forward_length"),
            Value::U32(cfg.intermediate_size as u32),
        ),
        (a("block_count"), Value::U32(cfg.num_hidden_layers as u32)),
        (
            a("attention.head_count"),
            Value::U32(cfg.num_attention_heads as u32),
        ),
        (
            a("attention.head_count_kv"),
            Value::U32(cfg.num_key_value_heads as u32),
        ),
        (a("attention.key_length"), Value::U32(cfg.head_dim as u32)),
        (a("rope.dimension_count"), Value::U32(cfg.head_dim as u32)),
        (
            a("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (a("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            a("context_length"),
            Value::U32(cfg.max_position_embeddings as u32),
        ),
        (
            "tokenizer.ggml.eos_token_id".into(),
            Value::U32(cfg.eos_token_id.unwrap_or(0)),
        ),
    ]
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn max_abs(a: &Tensor) -> f64 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
