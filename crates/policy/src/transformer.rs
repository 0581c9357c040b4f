//! The decoder-only transformer (Llama/SmolLM2, Qwen2, Qwen3), built only from differentiable
//! ops.
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and rotary kernels have no backward pass, so a
//! model built from them trains silently wrong (DESIGN.md §5). Every op here either has a
//! backward in candle (matmul, index select, add/mul/div, exp, sqrt, narrow, cat) or is one of
//! our CPU custom ops with its own backward (`ops.rs`: RMSNorm, rotary embedding, masked
//! softmax, SwiGLU; `linear.rs`: the linear layer and the output projection with the target
//! log-softmax; `attention.rs`: training attention), which keep far fewer intermediates alive
//! than the primitive compositions (used on other devices); the finite-difference test in
//! `tests/grad.rs` guards them all. Generation runs the same ops through `forward_infer`,
//! without an autograd graph.
//!
//! Parameters are `candle_core::Var`s named with HF tensor names, so a trainer can hand
//! `trainable_vars()` to an optimizer and `save` writes HF-compatible safetensors.

use crate::attention::attention;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::linear::Linear;
use crate::lora::{LoraConfig, LoraLinear, LoraTarget};
use crate::ops::{MaskedSoftmax, RmsNormOp, Rope, SoftmaxLast, SwiGlu};
use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::Arc;

/// Added to attention scores of masked keys. Finite (not -inf) so that a query row whose keys
/// are all masked (a padding position) gives a harmless uniform softmax instead of NaN, which
/// would poison gradients even when multiplied by a zero mask.
const MASK_VALUE: f64 = -1e9;

/// Returns the tensor of a parameter: detached when the parameter is frozen, so backward does
/// not spend time on gradients nobody will use.
fn param(v: &Var, frozen: bool) -> Tensor {
    if frozen {
        v.as_tensor().detach()
    } else {
        v.as_tensor().clone()
    }
}

/// `x @ w^T (+ b)` for `x` of any rank: one custom op with a gemm backward on the CPU
/// (`linear.rs`), the flattened matmul elsewhere.
fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = if fused_ok(x) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Linear)?
    } else {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("rank >= 1");
        let rows = x.elem_count() / in_dim;
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
        let mut out = dims;
        *out.last_mut().unwrap() = w.dim(0)?;
        y.reshape(out)?
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `linear` for inference (no autograd graph). With few rows (decoding) the product is
/// computed as `W @ x^T`: gemm then streams the contiguous weight as its left operand instead
/// of packing the whole weight matrix for every step, which measured up to 2x faster at batch
/// 32 on SmolLM2's shapes; the small [out, rows] result is transposed back.
pub(crate) fn linear_infer(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = *dims.last().expect("rank >= 1");
    let rows = x.elem_count() / in_dim;
    let x2 = x.reshape((rows, in_dim))?;
    let y = if rows <= SMALL_ROWS && w.dim(0)? <= SMALL_ROWS_MAX_OUT {
        w.matmul(&x2.t()?)?.t()?.contiguous()?
    } else {
        x2.matmul(&w.t()?)?
    };
    let y = match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    };
    let mut out = dims;
    *out.last_mut().unwrap() = w.dim(0)?;
    Ok(y.reshape(out)?)
}

/// Up to this many rows `linear_infer` uses the `W @ x^T` form...
const SMALL_ROWS: usize = 64;
/// ...unless the output is this wide: for a vocabulary-sized output projection the plain form
/// measured 10-30% faster at batch 32 (and needs no transposed copy of the wide result).
const SMALL_ROWS_MAX_OUT: usize = 16_384;

/// RMSNorm, `x / sqrt(mean(x²) + eps) * w`, with a backward pass: a memory-lean custom op on
/// the CPU (`ops.rs`), the primitive composition elsewhere.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(x
            .contiguous()?
            .apply_op2(&w.contiguous()?, RmsNormOp { eps })?);
    }
    rms_norm_primitive(x, w, eps)
}

/// RMSNorm from primitives (each with a backward in candle).
pub fn rms_norm_primitive(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Softmax over the last dim with a backward pass: a memory-lean custom op on the CPU
/// (`ops.rs`), the primitive composition elsewhere.
pub fn softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(x.contiguous()?.apply_op1(SoftmaxLast { log: false })?);
    }
    softmax_last_primitive(x)
}

/// Log-softmax over the last dim; same dispatch as `softmax_last`.
pub fn log_softmax_last(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        return Ok(x.contiguous()?.apply_op1(SoftmaxLast { log: true })?);
    }
    log_softmax_last_primitive(x)
}

/// Softmax over the last dim from primitives. The max is detached: softmax does not depend on
/// it, so the gradient stays exact while `exp` cannot overflow.
pub fn softmax_last_primitive(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Log-softmax over the last dim from primitives (same detached-max trick).
pub fn log_softmax_last_primitive(x: &Tensor) -> Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// HF-style ("rotate half") rotary embedding: `x*cos + rotate_half(x)*sin`, with `cos`/`sin`
/// gathered per (batch, position) so left-padded rows get their own positions.
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rot.broadcast_mul(sin)?)?)
}

/// True where the custom CPU kernels of `ops.rs` apply (they are written for f32 and f64).
fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Rotary embedding of `x` [B,T,H,D] returned as [B,H,T,D] (the layout attention needs);
/// `cos`/`sin` [B,T,D/2] hold one half of the table.
fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if fused_ok(x) {
        return Ok(x
            .contiguous()?
            .apply_op3(cos, sin, Rope { to_heads: true })?);
    }
    let full =
        |c: &Tensor| -> Result<Tensor> { Ok(Tensor::cat(&[c, c], D::Minus1)?.unsqueeze(1)?) };
    apply_rope(&x.transpose(1, 2)?, &full(cos)?, &full(sin)?)
}

/// Attention probabilities `softmax(scale * scores + bias)` for scores [B,KVH,G,T,S] and bias
/// [B,1,1,T,S].
fn attention_probs(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    if fused_ok(scores) {
        return Ok(scores
            .contiguous()?
            .apply_op2(&bias.contiguous()?, MaskedSoftmax { scale })?);
    }
    softmax_last(&(scores * scale)?.broadcast_add(bias)?)
}

/// `silu(gate) * up`.
fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused_ok(gate) {
        return Ok(gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)?);
    }
    Ok((gate.silu()? * up)?)
}

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Var,
    eps: f64,
    frozen: bool,
}

impl RmsNorm {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &param(&self.weight, self.frozen), self.eps)
    }

    /// Inference: the same kernel on the detached weight (no autograd graph).
    fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        rms_norm(x, &self.weight.as_tensor().detach(), self.eps)
    }
}

/// Which keys each query may see: the key mask itself (for the fused attention op), or an
/// additive [B,1,1,T,S] bias of 0 / `MASK_VALUE` (for the op-by-op path).
enum AttentionMask {
    Keys(Arc<Vec<Vec<u8>>>),
    Bias(Tensor),
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    /// `x`: [B,T,H]; `cos`/`sin`: [B,T,D/2]; `mask` covers all S = cached + T keys.
    /// `infer` drops the autograd graph (generation).
    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: &AttentionMask,
        cache: Option<(&mut KvCache, usize)>,
        infer: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv, self.head_dim);
        let g = h / kvh;
        let proj = |l: &LoraLinear| {
            if infer {
                l.forward_infer(x)
            } else {
                l.forward(x)
            }
        };
        let norm = |n: &RmsNorm, y: &Tensor| {
            if infer {
                n.forward_infer(y)
            } else {
                n.forward(y)
            }
        };
        let q = proj(&self.q_proj)?.reshape((b, t, h, d))?;
        let k = proj(&self.k_proj)?.reshape((b, t, kvh, d))?;
        let v = proj(&self.v_proj)?.reshape((b, t, kvh, d))?;
        let q = match &self.q_norm {
            Some(n) => norm(n, &q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => norm(n, &k)?,
            None => k,
        };
        let scale = 1.0 / (d as f64).sqrt();
        let bias = match mask {
            AttentionMask::Keys(keys) => {
                let (q, k) = (rope_to_heads(&q, cos, sin)?, rope_to_heads(&k, cos, sin)?);
                let y = attention(&q, &k, &v, keys, scale, MASK_VALUE)?;
                return self.o_proj.forward(&y);
            }
            AttentionMask::Bias(bias) => bias,
        };
        let q = rope_to_heads(&q, cos, sin)?;
        let k = rope_to_heads(&k, cos, sin)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        // With a cache, k/v are strided views into its preallocated buffers: matmul reads
        // them in place.
        let (k, v) = match cache {
            Some((c, layer)) => c.append(layer, &k, &v)?,
            None => (k, v),
        };
        let s = k.dim(2)?;
        // Grouped-query attention without repeating k/v: the G query heads sharing one kv head
        // are stacked along the row dim, so one batched matmul per kv head does the work.
        let q = q.contiguous()?.reshape((b, kvh, g * t, d))?;
        let att = q.matmul(&k.t()?)?.reshape((b, kvh, g, t, s))?;
        let att = attention_probs(&att, bias, scale)?.reshape((b, kvh, g * t, s))?;
        let y = att.matmul(&v)?.reshape((b, h, t, d))?;
        let y = y.transpose(1, 2)?.reshape((b, t, h * d))?;
        if infer {
            self.o_proj.forward_infer(&y)
        } else {
            self.o_proj.forward(&y)
        }
    }
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward(x)?;
        let u = self.up_proj.forward(x)?;
        self.down_proj.forward(&swiglu(&g, &u)?)
    }

    fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let g = self.gate_proj.forward_infer(x)?;
        let u = self.up_proj.forward_infer(x)?;
        self.down_proj.forward_infer(&swiglu(&g, &u)?)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

/// Per-layer key/value cache for incremental decoding: one [B, kv_heads, max_len, head_dim]
/// buffer per layer for keys and one for values, allocated on first use and written in place,
/// so a decoding step neither concatenates nor copies what is already cached.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    max_len: usize,
    len: usize,
}

impl KvCache {
    pub fn new(cfg: &Config, max_len: usize) -> Self {
        KvCache {
            layers: (0..cfg.num_hidden_layers).map(|_| None).collect(),
            max_len,
            len: 0,
        }
    }
    /// Number of positions already cached.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes `k`/`v` ([B, kv_heads, T, D]) of `layer` after the cached positions; returns
    /// views of everything cached for that layer, new positions included.
    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, kvh, t, d) = k.dims4()?;
        let end = self.len + t;
        if end > self.max_len {
            return Err(Error::Invalid(format!(
                "KV cache holds {} positions, {end} needed",
                self.max_len
            )));
        }
        let (kc, vc) = match &self.layers[layer] {
            Some(kv) => kv.clone(),
            None => {
                let shape = (b, kvh, self.max_len, d);
                let kc = Tensor::zeros(shape, k.dtype(), k.device())?;
                let vc = Tensor::zeros(shape, v.dtype(), v.device())?;
                self.layers[layer] = Some((kc.clone(), vc.clone()));
                (kc, vc)
            }
        };
        kc.slice_set(&k.contiguous()?, 2, self.len)?;
        vc.slice_set(&v.contiguous()?, 2, self.len)?;
        Ok((kc.narrow(2, 0, end)?, vc.narrow(2, 0, end)?))
    }
}

#[derive(Debug, Clone)]
pub struct Transformer {
    pub cfg: Config,
    pub embed_tokens: Var,
    pub layers: Vec<Block>,
    pub norm: RmsNorm,
    /// `None` when the output projection is tied to `embed_tokens`.
    pub lm_head: Option<Var>,
    cos: Tensor,
    sin: Tensor,
    dtype: DType,
    device: Device,
    base_frozen: bool,
}

impl Transformer {
    /// Builds the model from HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// converting them to `dtype`. Every expected tensor must be present with the right shape.
    pub fn from_tensors(
        cfg: &Config,
        mut tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let mut take = |name: &str, shape: &[usize]| -> Result<Var> {
            let t = tensors
                .remove(name)
                .ok_or_else(|| Error::MissingWeight(name.to_string()))?;
            if t.dims() != shape {
                return Err(Error::Invalid(format!(
                    "weight `{name}` has shape {:?}, expected {shape:?}",
                    t.dims()
                )));
            }
            Ok(Var::from_tensor(&t.to_device(device)?.to_dtype(dtype)?)?)
        };
        let (hs, is, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let eps = cfg.rms_norm_eps;
        let embed_tokens = take("model.embed_tokens.weight", &[cfg.vocab_size, hs])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            let mut lin = |name: &str, out: usize, inp: usize, bias: bool| -> Result<LoraLinear> {
                let w = take(&format!("{p}.{name}.weight"), &[out, inp])?;
                let b = if bias {
                    Some(take(&format!("{p}.{name}.bias"), &[out])?)
                } else {
                    None
                };
                Ok(LoraLinear::new(w, b))
            };
            let ab = cfg.attention_bias;
            let q_proj = lin("self_attn.q_proj", nh * hd, hs, ab)?;
            let k_proj = lin("self_attn.k_proj", nkv * hd, hs, ab)?;
            let v_proj = lin("self_attn.v_proj", nkv * hd, hs, ab)?;
            let o_proj = lin("self_attn.o_proj", hs, nh * hd, cfg.o_proj_bias())?;
            let gate_proj = lin("mlp.gate_proj", is, hs, false)?;
            let up_proj = lin("mlp.up_proj", is, hs, false)?;
            let down_proj = lin("mlp.down_proj", hs, is, false)?;
            let mut norm = |name: &str, n: usize| -> Result<RmsNorm> {
                Ok(RmsNorm {
                    weight: take(&format!("{p}.{name}.weight"), &[n])?,
                    eps,
                    frozen: false,
                })
            };
            let (q_norm, k_norm) = if cfg.qk_norm {
                (
                    Some(norm("self_attn.q_norm", hd)?),
                    Some(norm("self_attn.k_norm", hd)?),
                )
            } else {
                (None, None)
            };
            layers.push(Block {
                input_layernorm: norm("input_layernorm", hs)?,
                post_attention_layernorm: norm("post_attention_layernorm", hs)?,
                self_attn: Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    o_proj,
                    q_norm,
                    k_norm,
                    n_head: nh,
                    n_kv: nkv,
                    head_dim: hd,
                },
                mlp: Mlp {
                    gate_proj,
                    up_proj,
                    down_proj,
                },
            });
        }
        let norm = RmsNorm {
            weight: take("model.norm.weight", &[hs])?,
            eps,
            frozen: false,
        };
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight", &[cfg.vocab_size, hs])?)
        };
        // A weight nobody took means the config and the checkpoint disagree (a bias or norm
        // the config turns off, more layers): an error, not a silently different model.
        // Exporters add a tied `lm_head` copy and rotary tables, which carry nothing new.
        let mut unused: Vec<&String> = tensors
            .keys()
            .filter(|n| !(n.ends_with("rotary_emb.inv_freq") || *n == "lm_head.weight"))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            return Err(Error::Invalid(format!(
                "{} weight(s) the config does not use, e.g. `{}`: check attention_bias, qk_norm, \
                 tie_word_embeddings and num_hidden_layers against the checkpoint",
                unused.len(),
                unused[0]
            )));
        }
        let (cos, sin) = rope_tables(cfg, dtype, device)?;
        Ok(Transformer {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            dtype,
            device: device.clone(),
            base_frozen: false,
        })
    }

    /// A randomly initialised model (normal(0, 0.02) matrices, norms near 1), seeded.
    pub fn random(cfg: &Config, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in expected_shapes(cfg) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = if name.ends_with("norm.weight") {
                (0..n).map(|_| 1.0 + 0.1 * normal(&mut rng)).collect()
            } else {
                (0..n).map(|_| 0.02 * normal(&mut rng)).collect()
            };
            tensors.insert(name, Tensor::from_vec(data, shape, device)?);
        }
        Self::from_tensors(cfg, tensors, dtype, device)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All base parameters with their HF names (LoRA adapters not included).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut out = vec![(
            "model.embed_tokens.weight".to_string(),
            self.embed_tokens.clone(),
        )];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            let a = &l.self_attn;
            for (n, lin) in [
                ("self_attn.q_proj", &a.q_proj),
                ("self_attn.k_proj", &a.k_proj),
                ("self_attn.v_proj", &a.v_proj),
                ("self_attn.o_proj", &a.o_proj),
                ("mlp.gate_proj", &l.mlp.gate_proj),
                ("mlp.up_proj", &l.mlp.up_proj),
                ("mlp.down_proj", &l.mlp.down_proj),
            ] {
                out.push((format!("{p}.{n}.weight"), lin.weight.clone()));
                if let Some(b) = &lin.bias {
                    out.push((format!("{p}.{n}.bias"), b.clone()));
                }
            }
            if let (Some(qn), Some(kn)) = (&a.q_norm, &a.k_norm) {
                out.push((format!("{p}.self_attn.q_norm.weight"), qn.weight.clone()));
                out.push((format!("{p}.self_attn.k_norm.weight"), kn.weight.clone()));
            }
            out.push((
                format!("{p}.input_layernorm.weight"),
                l.input_layernorm.weight.clone(),
            ));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                l.post_attention_layernorm.weight.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.weight.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.clone()));
        }
        out
    }

    /// Every parameter: base weights, then LoRA adapters if any.
    pub fn vars(&self) -> Vec<Var> {
        let mut v: Vec<Var> = self.named_vars().into_iter().map(|(_, v)| v).collect();
        v.extend(self.lora_vars().into_iter().map(|(_, v)| v));
        v
    }

    /// The parameters an optimizer should update: the LoRA adapters when the base is frozen,
    /// otherwise everything.
    pub fn trainable_vars(&self) -> Vec<Var> {
        if self.base_frozen {
            self.lora_vars().into_iter().map(|(_, v)| v).collect()
        } else {
            self.vars()
        }
    }

    /// LoRA adapter parameters with PEFT names (`base_model.model.<module>.lora_A.weight`).
    pub fn lora_vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            for (target, lin) in self.layer_linears(l) {
                if let Some(ad) = &lin.lora {
                    let base =
                        format!("base_model.model.model.layers.{i}.{}", target.module_path());
                    out.push((format!("{base}.lora_A.weight"), ad.a.clone()));
                    out.push((format!("{base}.lora_B.weight"), ad.b.clone()));
                }
            }
        }
        out
    }

    fn layer_linears<'a>(&self, l: &'a Block) -> [(LoraTarget, &'a LoraLinear); 7] {
        [
            (LoraTarget::Q, &l.self_attn.q_proj),
            (LoraTarget::K, &l.self_attn.k_proj),
            (LoraTarget::V, &l.self_attn.v_proj),
            (LoraTarget::O, &l.self_attn.o_proj),
            (LoraTarget::Gate, &l.mlp.gate_proj),
            (LoraTarget::Up, &l.mlp.up_proj),
            (LoraTarget::Down, &l.mlp.down_proj),
        ]
    }

    fn layer_linears_mut(l: &mut Block) -> [(LoraTarget, &mut LoraLinear); 7] {
        let a = &mut l.self_attn;
        let m = &mut l.mlp;
        [
            (LoraTarget::Q, &mut a.q_proj),
            (LoraTarget::K, &mut a.k_proj),
            (LoraTarget::V, &mut a.v_proj),
            (LoraTarget::O, &mut a.o_proj),
            (LoraTarget::Gate, &mut m.gate_proj),
            (LoraTarget::Up, &mut m.up_proj),
            (LoraTarget::Down, &mut m.down_proj),
        ]
    }

    /// Adds fresh LoRA adapters (A random, B zero: the model's output is unchanged) to the
    /// targeted projections of every layer and freezes the base weights.
    pub fn add_lora(&mut self, lcfg: &LoraConfig, seed: u64) -> Result<()> {
        lcfg.validate()?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (dtype, device) = (self.dtype, self.device.clone());
        for l in self.layers.iter_mut() {
            for (target, lin) in Self::layer_linears_mut(l) {
                if lcfg.targets.contains(&target) {
                    lin.add_lora(lcfg, &mut rng, dtype, &device)?;
                }
            }
        }
        self.set_base_frozen(true);
        Ok(())
    }

    /// Removes all adapters and unfreezes the base.
    pub fn remove_lora(&mut self) {
        for l in self.layers.iter_mut() {
            for (_, lin) in Self::layer_linears_mut(l) {
                lin.lora = None;
            }
        }
        self.set_base_frozen(false);
    }

    /// Loads adapter values saved by `Transformer::lora_vars` (PEFT names). The adapters must
    /// already exist (`add_lora` with the same config) so shapes are checked.
    pub fn set_lora_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let vars = self.lora_vars();
        if vars.is_empty() {
            return Err(Error::Invalid(
                "model has no LoRA adapters; call add_lora first".into(),
            ));
        }
        for (name, var) in vars {
            let t = tensors
                .get(&name)
                .ok_or_else(|| Error::MissingWeight(name.clone()))?;
            if t.dims() != var.dims() {
                return Err(Error::Invalid(format!(
                    "adapter `{name}` has shape {:?}, expected {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_device(&self.device)?.to_dtype(self.dtype)?)?;
        }
        Ok(())
    }

    /// Freezing the base detaches its weights in the forward pass, so backward computes
    /// gradients only for LoRA adapters (and costs accordingly less).
    pub fn set_base_frozen(&mut self, frozen: bool) {
        self.base_frozen = frozen;
        self.norm.frozen = frozen;
        for l in self.layers.iter_mut() {
            l.input_layernorm.frozen = frozen;
            l.post_attention_layernorm.frozen = frozen;
            for n in [&mut l.self_attn.q_norm, &mut l.self_attn.k_norm]
                .into_iter()
                .flatten()
            {
                n.frozen = frozen;
            }
            for (_, lin) in Self::layer_linears_mut(l) {
                lin.frozen = frozen;
            }
        }
    }

    pub fn base_frozen(&self) -> bool {
        self.base_frozen
    }

    /// Logits [B,T,V] for token ids [B,T] (u32) with attention mask [B,T] (1 = real token,
    /// 0 = padding; any integer or float dtype). Padding may be on either side: positions are
    /// counted over real tokens only, and padded keys are never attended to.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let h = self.forward_hidden(ids, mask)?;
        self.logits(&h)
    }

    /// Final hidden states [B,T,H] (after the last norm); `logits` maps them to the vocab.
    pub fn forward_hidden(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let key_mask = mask_rows(mask)?;
        let positions = positions_from_mask(&key_mask);
        self.forward_with(ids, &positions, &key_mask, None)
    }

    /// Hidden states → logits via the (possibly tied) output projection.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        linear(hidden, &self.output_weight(), None)
    }

    /// The output projection [vocab, hidden]: `lm_head`, or the embedding when tied
    /// (detached when the base is frozen).
    pub(crate) fn output_weight(&self) -> Tensor {
        param(
            self.lm_head.as_ref().unwrap_or(&self.embed_tokens),
            self.base_frozen,
        )
    }

    /// The general forward: `ids` [B,T] are new tokens at `positions` (B×T); `key_mask` (B×S)
    /// covers every key the new tokens can see (cached ones first, then these T). Causality is
    /// by index: new token t sees keys 0..=S-T+t.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_impl(ids, positions, key_mask, cache, false)
    }

    /// `forward_with` for inference: the same function (equal within float rounding), but no
    /// autograd graph is built (nothing is kept alive for a backward pass) and candle's fused
    /// kernels, which have no backward, replace the differentiable compositions. Generation
    /// uses it.
    pub fn forward_infer(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_impl(ids, positions, key_mask, cache, true)
    }

    /// `logits` for inference (no autograd graph).
    pub fn logits_infer(&self, hidden: &Tensor) -> Result<Tensor> {
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        linear_infer(hidden, &w.as_tensor().detach(), None)
    }

    fn forward_impl(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        key_mask: &[Vec<u8>],
        mut cache: Option<&mut KvCache>,
        infer: bool,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if positions.len() != b || key_mask.len() != b {
            return Err(Error::Invalid(format!(
                "batch of {b} ids but {} position rows and {} mask rows",
                positions.len(),
                key_mask.len()
            )));
        }
        let s = key_mask[0].len();
        let cached = cache.as_ref().map(|c| c.len).unwrap_or(0);
        if s != cached + t || key_mask.iter().any(|r| r.len() != s) {
            return Err(Error::Invalid(format!(
                "key mask length must be cached ({cached}) + new ({t}) for every row"
            )));
        }
        let max_pos = self.cos.dim(0)?;
        let mut pos_flat = Vec::with_capacity(b * t);
        for r in positions {
            if r.len() != t {
                return Err(Error::Invalid("position rows must have T entries".into()));
            }
            for &p in r {
                if p as usize >= max_pos {
                    return Err(Error::Invalid(format!(
                        "position {p} beyond max_position_embeddings {max_pos}"
                    )));
                }
                pos_flat.push(p);
            }
        }
        let pos = Tensor::from_vec(pos_flat, b * t, &self.device)?;
        let hd = self.cfg.head_dim;
        // Rotary tables for these positions, one half (the table repeats it for both halves).
        let half = |tab: &Tensor| -> Result<Tensor> {
            Ok(tab
                .index_select(&pos, 0)?
                .narrow(1, 0, hd / 2)?
                .contiguous()?
                .reshape((b, t, hd / 2))?)
        };
        let (cos, sin) = (half(&self.cos)?, half(&self.sin)?);
        // Training without a cache on the CPU runs the fused attention op, which takes the
        // key mask itself; everything else adds a [B,1,1,T,S] bias to the scores.
        let mask = if !infer && cache.is_none() && fused_ok(&self.cos) {
            AttentionMask::Keys(Arc::new(key_mask.to_vec()))
        } else {
            let mut bias = Vec::with_capacity(b * t * s);
            for row in key_mask {
                for qi in 0..t {
                    let limit = s - t + qi;
                    for (ki, &m) in row.iter().enumerate() {
                        bias.push(if ki <= limit && m != 0 {
                            0.0
                        } else {
                            MASK_VALUE
                        });
                    }
                }
            }
            let bias = Tensor::from_vec(bias, (b, 1, 1, t, s), &self.device)?;
            AttentionMask::Bias(bias.to_dtype(self.dtype)?)
        };

        let emb = param(&self.embed_tokens, self.base_frozen || infer);
        let mut x =
            emb.index_select(&ids.flatten_all()?, 0)?
                .reshape((b, t, self.cfg.hidden_size))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_deref_mut().map(|c| (c, i));
            let h = if infer {
                layer.input_layernorm.forward_infer(&x)?
            } else {
                layer.input_layernorm.forward(&x)?
            };
            let h = layer.self_attn.forward(&h, &cos, &sin, &mask, c, infer)?;
            x = (x + h)?;
            let h = if infer {
                let h = layer.post_attention_layernorm.forward_infer(&x)?;
                layer.mlp.forward_infer(&h)?
            } else {
                let h = layer.post_attention_layernorm.forward(&x)?;
                layer.mlp.forward(&h)?
            };
            x = (x + h)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        if infer {
            self.norm.forward_infer(&x)
        } else {
            self.norm.forward(&x)
        }
    }
}

/// Reads a [B,T] mask tensor of any dtype into rows of 0/1.
pub(crate) fn mask_rows(mask: &Tensor) -> Result<Vec<Vec<u8>>> {
    let m = mask.to_dtype(DType::F32)?.to_vec2::<f32>()?;
    Ok(m.into_iter()
        .map(|r| r.into_iter().map(|v| u8::from(v != 0.0)).collect())
        .collect())
}

/// Position of each token = number of real tokens before it in its row (padding gets the
/// position of the next real token, which never matters since nothing attends to it).
pub(crate) fn positions_from_mask(mask: &[Vec<u8>]) -> Vec<Vec<u32>> {
    mask.iter()
        .map(|r| {
            let mut n = 0u32;
            r.iter()
                .map(|&m| {
                    let p = n;
                    n += u32::from(m != 0);
                    p
                })
                .collect()
        })
        .collect()
}

fn rope_tables(cfg: &Config, dtype: DType, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim;
    let n = cfg.max_position_embeddings;
    let inv: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64))
        .collect();
    let mut cos = Vec::with_capacity(n * hd);
    let mut sin = Vec::with_capacity(n * hd);
    for p in 0..n {
        // HF layout: the frequency vector is repeated for both halves of the head.
        for _half in 0..2 {
            for f in &inv {
                let a = p as f64 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
    }
    let cos = Tensor::from_vec(cos, (n, hd), device)?.to_dtype(dtype)?;
    let sin = Tensor::from_vec(sin, (n, hd), device)?.to_dtype(dtype)?;
    Ok((cos, sin))
}

/// HF names and shapes of every base weight for `cfg`.
pub fn expected_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let (hs, is, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![cfg.vocab_size, hs],
    )];
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut lin = |n: &str, o: usize, inp: usize, bias: bool| {
            out.push((format!("{p}.{n}.weight"), vec![o, inp]));
            if bias {
                out.push((format!("{p}.{n}.bias"), vec![o]));
            }
        };
        let ab = cfg.attention_bias;
        lin("self_attn.q_proj", nh * hd, hs, ab);
        lin("self_attn.k_proj", nkv * hd, hs, ab);
        lin("self_attn.v_proj", nkv * hd, hs, ab);
        lin("self_attn.o_proj", hs, nh * hd, cfg.o_proj_bias());
        lin("mlp.gate_proj", is, hs, false);
        lin("mlp.up_proj", is, hs, false);
        lin("mlp.down_proj", hs, is, false);
        if cfg.qk_norm {
            out.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            out.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        out.push((format!("{p}.input_layernorm.weight"), vec![hs]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![hs]));
    }
    out.push(("model.norm.weight".to_string(), vec![hs]));
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, hs]));
    }
    out
}

/// Standard normal sample (Box–Muller), so seeded init needs no extra crate.
pub(crate) fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

pub(crate) fn lin_param(v: &Var, frozen: bool) -> Tensor {
    param(v, frozen)
}

pub(crate) fn linear_fwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear(x, w, b)
}

pub(crate) fn linear_fwd_infer(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    linear_infer(x, w, b)
}
