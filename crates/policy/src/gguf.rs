//! Reading GGUF files (llama.cpp format): hyper-parameters → `Config`, tensors dequantized to
//! f32 under HF names, and the tokenizer metadata.
//!
//! llama.cpp's converter permutes the rows of Llama q/k projections so its interleaved RoPE
//! kernel works; our RoPE is HF's rotate-half, so `unpermute_qk` undoes that permutation and a
//! GGUF-loaded model is the same function as the HF checkpoint it came from.

use crate::config::{Arch, Config};
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

/// A parsed GGUF file: metadata plus every tensor dequantized to f32 (HF names, HF layout).
pub struct GgufModel {
    pub config: Config,
    pub metadata: HashMap<String, Value>,
    pub tensors: HashMap<String, Tensor>,
}

pub fn read_gguf(path: impl AsRef<Path>, device: &Device) -> Result<GgufModel> {
    let path = path.as_ref();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = Content::read(&mut f)
        .map_err(|e| Error::Unsupported(format!("{}: not a GGUF file: {e}", path.display())))?;
    read_content(content, &mut f, device)
}

/// Same as `read_gguf` from an already-opened reader (used by tests on in-memory GGUFs).
pub fn read_content<R: std::io::Read + std::io::Seek>(
    content: Content,
    reader: &mut R,
    device: &Device,
) -> Result<GgufModel> {
    let config = config_from_metadata(&content)?;
    let mut tensors = HashMap::new();
    let nh = config.num_attention_heads;
    let nkv = config.num_key_value_heads;
    for gguf_name in content.tensor_infos.keys() {
        let Some(hf) = hf_name(gguf_name) else {
            // rope_freqs and similar precomputed helpers are not weights.
            continue;
        };
        let q = content.tensor(reader, gguf_name, device)?;
        let mut t = q.dequantize(device)?;
        if config.arch == Arch::Llama {
            if hf.ends_with("q_proj.weight") {
                t = unpermute_qk(&t, nh)?;
            } else if hf.ends_with("k_proj.weight") {
                t = unpermute_qk(&t, nkv)?;
            }
        }
        tensors.insert(hf, t);
    }
    Ok(GgufModel {
        config,
        metadata: content.metadata,
        tensors,
    })
}

/// Inverse of llama.cpp's `permute(w, n_head)`: GGUF rows are grouped as
/// [head, dim/2, 2] where HF has [head, 2, dim/2].
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// llama.cpp's permutation (HF → GGUF layout); used to build reference GGUFs in tests.
pub fn permute_qk(w: &Tensor, n_head: usize) -> Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    Ok(w.reshape((n_head, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))?)
}

/// Whole-model tensors as (GGUF name, HF name).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// Per-layer modules as (GGUF module, HF module); tensors are `blk.{i}.{module}.{kind}` and
/// `model.layers.{i}.{module}.{kind}`.
const LAYER_MODULES: [(&str, &str); 11] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("attn_q_norm", "self_attn.q_norm"),
    ("attn_k_norm", "self_attn.k_norm"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
];

/// In `table`, the HF name paired with GGUF `name` (`from_gguf`), or the GGUF name paired with
/// HF `name`.
fn lookup(
    table: &[(&'static str, &'static str)],
    from_gguf: bool,
    name: &str,
) -> Option<&'static str> {
    table.iter().find_map(|&(g, h)| match from_gguf {
        true if g == name => Some(h),
        false if h == name => Some(g),
        _ => None,
    })
}

/// GGUF tensor name → HF tensor name; `None` for tensors that are not model weights.
pub fn hf_name(gguf: &str) -> Option<String> {
    if let Some(hf) = lookup(&MODEL_TENSORS, true, gguf) {
        return Some(hf.into());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, name) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = name.rsplit_once('.')?;
    let hf = lookup(&LAYER_MODULES, true, module)?;
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// HF tensor name → GGUF tensor name (inverse of `hf_name`).
pub fn gguf_name(hf: &str) -> Option<String> {
    if let Some(g) = lookup(&MODEL_TENSORS, false, hf) {
        return Some(g.into());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, name) = rest.split_once('.')?;
    let (module, kind) = name.rsplit_once('.')?;
    let g = lookup(&LAYER_MODULES, false, module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

pub(crate) fn md<'a>(content: &'a HashMap<String, Value>, key: &str) -> Result<&'a Value> {
    content
        .get(key)
        .ok_or_else(|| Error::Unsupported(format!("GGUF metadata lacks `{key}`")))
}

fn md_u32(m: &HashMap<String, Value>, key: &str) -> Result<usize> {
    let v = md(m, key)?;
    // Writers differ on integer widths; accept any.
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I32(x) if *x >= 0 => *x as u64,
        Value::I64(x) if *x >= 0 => *x as u64,
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF metadata `{key}` is {other:?}, expected an unsigned integer"
            )))
        }
    };
    Ok(n as usize)
}

fn md_f64(m: &HashMap<String, Value>, key: &str) -> Option<f64> {
    match m.get(key)? {
        // Through the shortest decimal form, so an f32 1e-5 becomes the f64 1e-5 HF uses.
        Value::F32(x) => format!("{x}").parse().ok(),
        Value::F64(x) => Some(*x),
        _ => None,
    }
}

fn config_from_metadata(content: &Content) -> Result<Config> {
    let m = &content.metadata;
    let arch_name = md(m, "general.architecture")?.to_string()?.clone();
    let arch = match arch_name.as_str() {
        "llama" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        "qwen3" => Arch::Qwen3,
        other => {
            return Err(Error::Unsupported(format!(
                "GGUF architecture `{other}` (supported: llama, qwen2, qwen3)"
            )))
        }
    };
    let a = |k: &str| format!("{arch_name}.{k}");
    let hidden = md_u32(m, &a("embedding_length"))?;
    let heads = md_u32(m, &a("attention.head_count"))?;
    let kv = md_u32(m, &a("attention.head_count_kv")).unwrap_or(heads);
    let head_dim = md_u32(m, &a("attention.key_length")).unwrap_or(hidden / heads);
    let emb = content
        .tensor_infos
        .get("token_embd.weight")
        .ok_or_else(|| Error::MissingWeight("token_embd.weight".into()))?;
    // GGUF stores dims innermost-first: [hidden, vocab].
    let vocab = *emb.shape.dims().first().expect("2-d embedding");
    let vocab = if emb.shape.dims()[0] == hidden {
        emb.shape.dims()[1]
    } else {
        vocab
    };
    let has_q_bias = content.tensor_infos.contains_key("blk.0.attn_q.bias");
    let cfg = Config {
        arch,
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: md_u32(m, &a("feed_forward_length"))?,
        num_hidden_layers: md_u32(m, &a("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        head_dim,
        rms_norm_eps: md_f64(m, &a("attention.layer_norm_rms_epsilon")).unwrap_or(1e-6),
        rope_theta: md_f64(m, &a("rope.freq_base")).unwrap_or(10000.0),
        max_position_embeddings: md_u32(m, &a("context_length")).unwrap_or(4096),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: has_q_bias,
        qk_norm: content
            .tensor_infos
            .contains_key("blk.0.attn_q_norm.weight"),
        bos_token_id: md_u32(m, "tokenizer.ggml.bos_token_id")
            .ok()
            .map(|x| x as u32),
        eos_token_id: md_u32(m, "tokenizer.ggml.eos_token_id")
            .ok()
            .map(|x| x as u32),
    };
    cfg.validate()?;
    Ok(cfg)
}
