//! Qwen2 (q/k/v bias) and Qwen3 (QK-norm, explicit head_dim) parity with candle-transformers'
//! own implementations, on small random checkpoints written the way they are published:
//! an HF `config.json` with the public configs' field names and `model.safetensors` with HF
//! tensor names. Our loader and candle's `qwen2`/`qwen3` models read the same files; then the
//! same weights go through a GGUF written here by llama.cpp's `convert_hf_to_gguf` rules (for
//! Qwen2/Qwen3 it renames tensors and does NOT permute q/k, unlike Llama), read by ours and by
//! candle's `quantized_qwen2`/`quantized_qwen3`. Nothing here reuses the crate's own writer,
//! name map or `permute_qk`, so a wrong rule in the crate cannot cancel itself out.

mod common;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, IndexOp, Tensor};
// candle-nn through candle-transformers' re-export, so this test needs no extra dependency.
use candle_transformers::models::mimi::candle_nn::VarBuilder;
use candle_transformers::models::{quantized_qwen2, quantized_qwen3, qwen2, qwen3};
use common::{max_abs, max_abs_diff};
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use std::path::Path;

/// Logits of ours and of the reference must agree to this (f32, absolute).
const TOL: f64 = 1e-4;

/// Token ids of the test prompt (all below the tiny vocab of 96).
const PROMPT: [u32; 10] = [3, 17, 42, 8, 91, 0, 55, 23, 64, 7];

/// Qwen/Qwen2.5-0.5B-Instruct's config.json shrunk: same fields (no `head_dim`, no
/// `attention_bias`: HF's Qwen2 always has q/k/v biases), tied embeddings, 3 query heads per kv
/// head.
const QWEN2_CONFIG: &str = r#"{
  "architectures": ["Qwen2ForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 93,
  "eos_token_id": 95,
  "hidden_act": "silu",
  "hidden_size": 48,
  "initializer_range": 0.02,
  "intermediate_size": 80,
  "max_position_embeddings": 128,
  "max_window_layers": 2,
  "model_type": "qwen2",
  "num_attention_heads": 6,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_theta": 1000000.0,
  "sliding_window": 128,
  "tie_word_embeddings": true,
  "torch_dtype": "float32",
  "transformers_version": "4.43.1",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 96
}"#;

/// Qwen/Qwen3-8B's config.json shrunk: explicit `head_dim` different from hidden/heads (as in
/// every Qwen3), `attention_bias: false`, untied output, integer `rope_theta`, bf16 weights.
const QWEN3_CONFIG: &str = r#"{
  "architectures": ["Qwen3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "bos_token_id": 93,
  "eos_token_id": 95,
  "head_dim": 16,
  "hidden_act": "silu",
  "hidden_size": 32,
  "initializer_range": 0.02,
  "intermediate_size": 64,
  "max_position_embeddings": 128,
  "max_window_layers": 2,
  "model_type": "qwen3",
  "num_attention_heads": 4,
  "num_hidden_layers": 2,
  "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06,
  "rope_scaling": null,
  "rope_theta": 1000000,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.51.0",
  "use_cache": true,
  "use_sliding_window": false,
  "vocab_size": 96
}"#;

fn field(cfg: &Json, key: &str) -> usize {
    cfg[key]
        .as_u64()
        .unwrap_or_else(|| panic!("config lacks {key}")) as usize
}

/// Standard normal sample (Box–Muller).
fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// Random weights under HF names for the model `config` describes, scaled so activations are
/// O(1) (logits are far from uniform) and every bias and norm weight visibly changes the output.
fn hf_tensors(config: &Json, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (vocab, hidden, inter) = (
        field(config, "vocab_size"),
        field(config, "hidden_size"),
        field(config, "intermediate_size"),
    );
    let (heads, kv) = (
        field(config, "num_attention_heads"),
        field(config, "num_key_value_heads"),
    );
    let head_dim = config["head_dim"]
        .as_u64()
        .map_or(hidden / heads, |d| d as usize);
    let qwen3 = config["model_type"] == "qwen3";
    // HF's Qwen2Attention hard-codes bias=True on q/k/v (o_proj never); Qwen3's q/k/v and
    // o_proj follow `attention_bias`.
    let qkv_bias = !qwen3 || config["attention_bias"] == true;
    let o_bias = qwen3 && config["attention_bias"] == true;
    let mut out = Vec::new();
    let mut put = |name: String, shape: &[usize], mean: f32, std: f32| {
        let n = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| mean + std * normal(&mut rng)).collect();
        out.push((name, Tensor::from_vec(data, shape, &Device::Cpu).unwrap()));
    };
    let w = |inp: usize| 1.0 / (inp as f32).sqrt();
    put(
        "model.embed_tokens.weight".into(),
        &[vocab, hidden],
        0.0,
        1.0,
    );
    for i in 0..field(config, "num_hidden_layers") {
        let p = format!("model.layers.{i}");
        put(format!("{p}.input_layernorm.weight"), &[hidden], 1.0, 0.2);
        for (proj, rows) in [("q_proj", heads), ("k_proj", kv), ("v_proj", kv)] {
            let rows = rows * head_dim;
            put(
                format!("{p}.self_attn.{proj}.weight"),
                &[rows, hidden],
                0.0,
                w(hidden),
            );
            if qkv_bias {
                put(format!("{p}.self_attn.{proj}.bias"), &[rows], 0.0, 0.5);
            }
        }
        put(
            format!("{p}.self_attn.o_proj.weight"),
            &[hidden, heads * head_dim],
            0.0,
            w(heads * head_dim),
        );
        if o_bias {
            put(format!("{p}.self_attn.o_proj.bias"), &[hidden], 0.0, 0.5);
        }
        if qwen3 {
            // Far from 1 so skipping either norm changes the result.
            put(
                format!("{p}.self_attn.q_norm.weight"),
                &[head_dim],
                1.5,
                0.5,
            );
            put(
                format!("{p}.self_attn.k_norm.weight"),
                &[head_dim],
                1.5,
                0.5,
            );
        }
        put(
            format!("{p}.post_attention_layernorm.weight"),
            &[hidden],
            1.0,
            0.2,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            &[inter, hidden],
            0.0,
            w(hidden),
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            &[inter, hidden],
            0.0,
            w(hidden),
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            &[hidden, inter],
            0.0,
            w(inter),
        );
    }
    put("model.norm.weight".into(), &[hidden], 1.0, 0.2);
    if config["tie_word_embeddings"] != true {
        put("lm_head.weight".into(), &[vocab, hidden], 0.0, w(hidden));
    }
    out
}

/// Writes `config.json` and `model.safetensors` (in the config's `torch_dtype`) into `dir`;
/// returns the weights as stored, in f32.
fn write_hf_checkpoint(dir: &Path, config_text: &str, seed: u64) -> Vec<(String, Tensor)> {
    let config: Json = serde_json::from_str(config_text).unwrap();
    let dtype = match config["torch_dtype"].as_str() {
        Some("bfloat16") => DType::BF16,
        _ => DType::F32,
    };
    let stored: Vec<(String, Tensor)> = hf_tensors(&config, seed)
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(dtype).unwrap()))
        .collect();
    let map: std::collections::HashMap<String, Tensor> = stored.iter().cloned().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
    std::fs::write(dir.join("config.json"), config_text).unwrap();
    stored
        .into_iter()
        .map(|(n, t)| (n, t.to_dtype(DType::F32).unwrap()))
        .collect()
}

/// llama.cpp's GGUF name for an HF tensor name (gguf-py `tensor_mapping.py`), written out here
/// rather than taken from `policy::gguf`.
fn llama_cpp_name(hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").expect("a layer tensor");
    let (layer, name) = rest.split_once('.').unwrap();
    let renamed = [
        ("self_attn.q_proj.", "attn_q."),
        ("self_attn.k_proj.", "attn_k."),
        ("self_attn.v_proj.", "attn_v."),
        ("self_attn.o_proj.", "attn_output."),
        ("self_attn.q_norm.", "attn_q_norm."),
        ("self_attn.k_norm.", "attn_k_norm."),
        ("input_layernorm.", "attn_norm."),
        ("post_attention_layernorm.", "ffn_norm."),
        ("mlp.gate_proj.", "ffn_gate."),
        ("mlp.up_proj.", "ffn_up."),
        ("mlp.down_proj.", "ffn_down."),
    ]
    .iter()
    .find_map(|(h, g)| name.strip_prefix(h).map(|kind| format!("{g}{kind}")))
    .unwrap_or_else(|| panic!("no llama.cpp name for {hf}"));
    format!("blk.{layer}.{renamed}")
}

/// An all-F32 GGUF as llama.cpp's `convert_hf_to_gguf.py` writes a Qwen2/Qwen3 checkpoint:
/// `TextModel.set_gguf_parameters` metadata, tensors renamed but not permuted (the Qwen2 and
/// Qwen3 classes have no q/k permutation; llama.cpp runs them with NEOX, i.e. HF, RoPE).
fn write_gguf(path: &Path, config_text: &str, weights: &[(String, Tensor)]) {
    let c: Json = serde_json::from_str(config_text).unwrap();
    let arch = c["model_type"].as_str().unwrap().to_string();
    let a = |k: &str| format!("{arch}.{k}");
    let u = |k: &str| Value::U32(field(&c, k) as u32);
    let f = |k: &str| Value::F32(c[k].as_f64().unwrap() as f32);
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.clone())),
        ("general.file_type".into(), Value::U32(0)), // LlamaFileType.ALL_F32
        (a("block_count"), u("num_hidden_layers")),
        (a("context_length"), u("max_position_embeddings")),
        (a("embedding_length"), u("hidden_size")),
        (a("feed_forward_length"), u("intermediate_size")),
        (a("attention.head_count"), u("num_attention_heads")),
        (a("attention.head_count_kv"), u("num_key_value_heads")),
        (a("rope.freq_base"), f("rope_theta")),
        (a("attention.layer_norm_rms_epsilon"), f("rms_norm_eps")),
        ("tokenizer.ggml.bos_token_id".into(), u("bos_token_id")),
        ("tokenizer.ggml.eos_token_id".into(), u("eos_token_id")),
        // Not a llama.cpp key: candle's quantized_qwen3 builds its RoPE tables in f16 unless
        // told the file is f32 (0) this way.
        ("general.dtype".into(), Value::U32(0)),
    ];
    if c.get("head_dim").is_some() {
        md.push((a("attention.key_length"), u("head_dim")));
        md.push((a("attention.value_length"), u("head_dim")));
    }
    let qs: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(n, t)| {
            (
                llama_cpp_name(n),
                QTensor::quantize(t, GgmlDType::F32).unwrap(),
            )
        })
        .collect();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &md_refs, &q_refs).unwrap();
}

/// A candle-transformers model with a KV cache, fed from position `offset`.
trait Reference {
    /// Logits [V] of the last of `ids` [1, T].
    fn last_logits(&mut self, ids: &Tensor, offset: usize) -> Tensor;
    fn clear(&mut self);
}

impl Reference for qwen2::ModelForCausalLM {
    fn last_logits(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.forward(ids, offset).unwrap().flatten_all().unwrap()
    }
    fn clear(&mut self) {
        self.clear_kv_cache()
    }
}

impl Reference for qwen3::ModelForCausalLM {
    fn last_logits(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.forward(ids, offset).unwrap().flatten_all().unwrap()
    }
    fn clear(&mut self) {
        self.clear_kv_cache()
    }
}

impl Reference for quantized_qwen2::ModelWeights {
    fn last_logits(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.forward(ids, offset).unwrap().flatten_all().unwrap()
    }
    fn clear(&mut self) {
        // It drops its cache by itself when fed from offset 0.
    }
}

impl Reference for quantized_qwen3::ModelWeights {
    fn last_logits(&mut self, ids: &Tensor, offset: usize) -> Tensor {
        self.forward(ids, offset).unwrap().flatten_all().unwrap()
    }
    fn clear(&mut self) {
        self.clear_kv_cache()
    }
}

fn prompt_ids() -> Tensor {
    Tensor::new(&PROMPT[..], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
}

/// Our logits [T, V] for the prompt (one teacher-forced pass).
fn our_logits(model: &policy::Transformer) -> Tensor {
    let ids = prompt_ids();
    model
        .forward(&ids, &ids.ones_like().unwrap())
        .unwrap()
        .squeeze(0)
        .unwrap()
}

/// Compares our logits at every prompt position with the reference fed one token at a time
/// (its KV cache; it returns only the last position of a call), and our last position with
/// the reference's whole-prompt pass.
fn assert_parity(label: &str, ours: &Tensor, reference: &mut dyn Reference) {
    let ids = prompt_ids();
    let n = PROMPT.len();
    let whole = reference.last_logits(&ids, 0);
    reference.clear();
    let steps: Vec<Tensor> = (0..n)
        .map(|t| reference.last_logits(&ids.i((.., t..t + 1)).unwrap(), t))
        .collect();
    let steps = Tensor::stack(&steps, 0).unwrap();
    let d_steps = max_abs_diff(ours, &steps);
    let d_whole = max_abs_diff(&ours.i(n - 1).unwrap(), &whole);
    println!(
        "{label}: max |logit| {:.2}, max diff all positions {d_steps:.2e}, last position \
         (whole prompt) {d_whole:.2e}",
        max_abs(ours)
    );
    assert!(max_abs(ours) > 1.0, "{label}: degenerate logits");
    assert!(
        d_steps < TOL,
        "{label}: logits differ by {d_steps} over positions"
    );
    assert!(d_whole < TOL, "{label}: last logits differ by {d_whole}");
}

/// A checkpoint written to a temporary HF folder and what our loader made of it.
struct Checkpoint {
    dir: tempfile::TempDir,
    config_text: String,
    arch: String,
    /// The weights as stored, in f32.
    weights: Vec<(String, Tensor)>,
    config: policy::Config,
    /// Our logits [T, V] for `PROMPT`.
    logits: Tensor,
}

/// Writes the HF folder, loads it with ours and with candle's model (`reference`, built from
/// the same config.json and a `VarBuilder` on the same safetensors), compares them.
fn check_safetensors(
    config_text: &str,
    seed: u64,
    reference: impl FnOnce(&str, VarBuilder) -> Box<dyn Reference>,
) -> Checkpoint {
    let arch = serde_json::from_str::<Json>(config_text).unwrap()["model_type"]
        .as_str()
        .unwrap()
        .to_string();
    let dir = tempfile::tempdir().unwrap();
    let weights = write_hf_checkpoint(dir.path(), config_text, seed);
    let ours = policy::load_hf(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let logits = our_logits(&ours);
    // SAFETY: the file was just written by this test and is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.path().join("model.safetensors")],
            DType::F32,
            &Device::Cpu,
        )
        .unwrap()
    };
    let mut reference = reference(config_text, vb);
    assert_parity(&format!("{arch} safetensors"), &logits, reference.as_mut());
    Checkpoint {
        dir,
        config_text: config_text.to_string(),
        arch,
        weights,
        config: ours.cfg.clone(),
        logits,
    }
}

/// The same weights as an all-F32 GGUF (so nothing is rounded), loaded by ours and by candle's
/// quantized model (`reference`).
fn check_gguf(
    ck: &Checkpoint,
    reference: impl FnOnce(gguf_file::Content, &mut std::fs::File) -> Box<dyn Reference>,
) {
    let arch = &ck.arch;
    let gguf = ck.dir.path().join("model.gguf");
    write_gguf(&gguf, &ck.config_text, &ck.weights);
    let g = policy::gguf::read_gguf(&gguf, &Device::Cpu).unwrap();
    assert_eq!(
        g.config, ck.config,
        "{arch}: GGUF and config.json give other configs"
    );
    let ours =
        policy::Transformer::from_tensors(&g.config, g.tensors, DType::F32, &Device::Cpu).unwrap();
    let logits = our_logits(&ours);
    let mut f = std::fs::File::open(&gguf).unwrap();
    let content = gguf_file::Content::read(&mut f).unwrap();
    let mut reference = reference(content, &mut f);
    assert_parity(&format!("{arch} gguf"), &logits, reference.as_mut());
    // Same f32 weights either way, so the same function.
    let d = max_abs_diff(&logits, &ck.logits);
    assert!(d < 1e-6, "{arch}: GGUF and safetensors loads differ by {d}");
}

fn candle_qwen2(text: &str, vb: VarBuilder) -> Box<dyn Reference> {
    let cfg: qwen2::Config = serde_json::from_str(text).unwrap();
    Box::new(qwen2::ModelForCausalLM::new(&cfg, vb).unwrap())
}

fn candle_qwen3(text: &str, vb: VarBuilder) -> Box<dyn Reference> {
    let cfg: qwen3::Config = serde_json::from_str(text).unwrap();
    Box::new(qwen3::ModelForCausalLM::new(&cfg, vb).unwrap())
}

#[test]
fn qwen2_matches_candle_transformers_from_safetensors_and_gguf() {
    let ck = check_safetensors(QWEN2_CONFIG, 2, candle_qwen2);
    check_gguf(&ck, |content, f| {
        Box::new(quantized_qwen2::ModelWeights::from_gguf(content, f, &Device::Cpu).unwrap())
    });
}

#[test]
fn qwen3_matches_candle_transformers_from_safetensors_and_gguf() {
    let ck = check_safetensors(QWEN3_CONFIG, 3, candle_qwen3);
    check_gguf(&ck, |content, f| {
        Box::new(quantized_qwen3::ModelWeights::from_gguf(content, f, &Device::Cpu).unwrap())
    });
}

/// No published Qwen3 sets `attention_bias`, but HF's (and candle's) Qwen3 then has biases on
/// q/k/v *and* o_proj. Safetensors only: candle's quantized_qwen3 reads no biases at all.
#[test]
fn qwen3_with_attention_bias_matches_candle_transformers() {
    let text = QWEN3_CONFIG.replace(r#""attention_bias": false"#, r#""attention_bias": true"#);
    assert_ne!(text, QWEN3_CONFIG);
    let ck = check_safetensors(&text, 4, candle_qwen3);
    assert!(ck.weights.iter().any(|(n, _)| n.ends_with("o_proj.bias")));
}

/// HF's Qwen2 (and candle's) has q/k/v biases even when a config.json says
/// `"attention_bias": false`; so must ours.
#[test]
fn qwen2_keeps_qkv_bias_whatever_attention_bias_says() {
    let text = QWEN2_CONFIG.replace(
        r#""attention_dropout": 0.0,"#,
        r#""attention_bias": false, "attention_dropout": 0.0,"#,
    );
    assert_ne!(text, QWEN2_CONFIG);
    let ck = check_safetensors(&text, 5, candle_qwen2);
    assert!(ck.config.attention_bias);
}

/// A checkpoint with weights its config does not use (biases under `"attention_bias": false`)
/// is an error naming one of them, never a silently different model.
#[test]
fn weights_the_config_does_not_use_are_an_error() {
    let with_bias = QWEN3_CONFIG.replace(r#""attention_bias": false"#, r#""attention_bias": true"#);
    let dir = tempfile::tempdir().unwrap();
    write_hf_checkpoint(dir.path(), &with_bias, 6);
    std::fs::write(dir.path().join("config.json"), QWEN3_CONFIG).unwrap();
    let Err(err) = policy::load_hf(dir.path(), DType::F32, &Device::Cpu) else {
        panic!("biases the config turns off must not load silently");
    };
    let err = err.to_string();
    assert!(
        err.contains("the config does not use") && err.contains(".bias`"),
        "{err}"
    );
}
