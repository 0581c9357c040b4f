//! The decoder-only transformer (Llama/SmolLM2, Qwen2, Qwen3), built only from differentiable
//! ops, in the manner of candle-transformers' models: each part loads its own weights by HF
//! name from a `WeightSource` source and has a `forward`; the forward pass reads top to bottom.
//!
//! candle's fused `rms_norm`, `softmax_last_dim` and rotary kernels have no backward pass, so a
//! model built from them trains silently wrong (docs/design.md, §5 Known traps). Every op here either has a
//! backward in candle (matmul, index select, add/mul/div, exp, sqrt, narrow, cat) or is one of
//! our CPU custom ops with its own backward (`ops.rs`: RMSNorm, rotary embedding, masked
//! softmax, SwiGLU; `linear.rs`: the linear layer and the output projection with the target
//! log-softmax; `attention.rs`: training attention), which keep far fewer intermediates alive
//! than the primitive compositions (used on other devices); the finite-difference test in
//! `tests/grad.rs` guards them all. Generation runs the same ops through `forward_infer`,
//! without an autograd graph.
//!
//! Parameters are `candle_core::Var`s named with HF tensor names, so a trainer can hand
//! `trainable_vars()` to an optimizer and `save_hf` writes HF-compatible safetensors.

use crate::attention::{attention, cached_attention};
use crate::bf16::Precision;
use crate::config::Config;
use crate::cpu_op::fused_ok;
use crate::error::{Error, Result};
use crate::int8::SamplerWeight;
use crate::lora::{self, FusedSampler, LoraConfig, LoraLinear};
use crate::ops::{attention_probs, rms_norm, rope_to_heads, swiglu, swiglu_approx};
use crate::weights::{Init, Pass, WeightSource};
use candle_core::{DType, Device, Tensor, Var};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

/// Added to attention scores of masked keys. Finite (not -inf) so that a query row whose keys
/// are all masked (a padding position) gives a harmless uniform softmax instead of NaN, which
/// would poison gradients even when multiplied by a zero mask.
const MASK_VALUE: f64 = -1e9;

#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub weight: Var,
    eps: f64,
}

impl RmsNorm {
    fn load(vb: &WeightSource, size: usize, eps: f64) -> Result<Self> {
        let weight = vb.get(&[size], "weight", Init::NearOne)?;
        Ok(RmsNorm { weight, eps })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        rms_norm(x, &pass.base(&self.weight), self.eps)
    }
}

/// Rotary tables [max_position_embeddings, head_dim] (HF layout: the frequencies repeat for
/// both halves of the head).
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &Config, dtype: DType, device: &Device) -> Result<Self> {
        let hd = cfg.head_dim;
        let n = cfg.max_position_embeddings;
        let inv: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / hd as f64))
            .collect();
        let mut cos = Vec::with_capacity(n * hd);
        let mut sin = Vec::with_capacity(n * hd);
        for p in 0..n {
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
        Ok(Rotary { cos, sin })
    }

    /// cos/sin [B,T,D/2] at `positions` (B rows of T): one half of the table, which repeats
    /// it for both.
    fn at(&self, positions: &[Vec<u32>], t: usize) -> Result<(Tensor, Tensor)> {
        let (max_pos, hd) = self.cos.dims2()?;
        let mut flat = Vec::with_capacity(positions.len() * t);
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
                flat.push(p);
            }
        }
        let b = positions.len();
        let pos = Tensor::from_vec(flat, b * t, self.cos.device())?;
        let half = |tab: &Tensor| -> Result<Tensor> {
            Ok(tab
                .index_select(&pos, 0)?
                .narrow(1, 0, hd / 2)?
                .contiguous()?
                .reshape((b, t, hd / 2))?)
        };
        Ok((half(&self.cos)?, half(&self.sin)?))
    }
}

/// Which keys each query may see: the key mask itself (for the fused attention op), or an
/// additive [B,1,1,T,S] bias of 0 / `MASK_VALUE` (for the op-by-op path).
enum AttentionMask {
    Keys(Arc<Vec<Vec<u8>>>),
    Bias(Tensor),
}

/// What a layer's attention sees besides the new tokens' own keys and values.
enum Past<'a> {
    None,
    /// Decoding: the cache (and this layer's index in it), which the new keys are written to.
    Cache(&'a mut KvCache, usize),
    /// A shared prompt's forward: keep this layer's keys [B,KVH,T,D] and values [B,T,KVH,D].
    Record(&'a mut Vec<(Tensor, Tensor)>),
    /// Completions of a shared prompt: its kept keys and values, one row per completion, with
    /// their graph, come before the new ones.
    Prefix(&'a (Tensor, Tensor)),
}

/// How a forward pass uses the layers' `Past`.
enum PastMode<'a> {
    None,
    Cache(&'a mut KvCache),
    Record(&'a mut Vec<(Tensor, Tensor)>),
    Prefix(&'a [(Tensor, Tensor)]),
}

#[derive(Debug, Clone)]
pub struct Attention {
    pub q_proj: LoraLinear,
    pub k_proj: LoraLinear,
    pub v_proj: LoraLinear,
    pub o_proj: LoraLinear,
    pub q_norm: Option<RmsNorm>,
    pub k_norm: Option<RmsNorm>,
    /// q/k/v packed as one weight, in sampling copies only.
    qkv: Option<FusedSampler>,
    n_head: usize,
    n_kv: usize,
    head_dim: usize,
}

impl Attention {
    /// The projections; the QK-norms come from `with_qk_norm`.
    fn load(vb: &WeightSource, cfg: &Config) -> Result<Self> {
        let (hs, hd, ab) = (cfg.hidden_size, cfg.head_dim, cfg.attention_bias);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        Ok(Attention {
            q_proj: LoraLinear::load(&vb.pp("q_proj"), nh * hd, hs, ab)?,
            k_proj: LoraLinear::load(&vb.pp("k_proj"), nkv * hd, hs, ab)?,
            v_proj: LoraLinear::load(&vb.pp("v_proj"), nkv * hd, hs, ab)?,
            o_proj: LoraLinear::load(&vb.pp("o_proj"), hs, nh * hd, cfg.o_proj_bias())?,
            q_norm: None,
            k_norm: None,
            qkv: None,
            n_head: nh,
            n_kv: nkv,
            head_dim: hd,
        })
    }

    /// Adds Qwen3's RMSNorm of q and k per head, when the config has it.
    fn with_qk_norm(mut self, vb: &WeightSource, cfg: &Config) -> Result<Self> {
        if cfg.qk_norm {
            let (hd, eps) = (cfg.head_dim, cfg.rms_norm_eps);
            self.q_norm = Some(RmsNorm::load(&vb.pp("q_norm"), hd, eps)?);
            self.k_norm = Some(RmsNorm::load(&vb.pp("k_norm"), hd, eps)?);
        }
        Ok(self)
    }

    /// `x`: [B,T,H]; `cos`/`sin`: [B,T,D/2]; `mask` covers all S = past + T keys.
    fn forward(
        &self,
        x: &Tensor,
        (cos, sin): (&Tensor, &Tensor),
        mask: &AttentionMask,
        past: Past,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let (h, kvh, d) = (self.n_head, self.n_kv, self.head_dim);
        let (q, k, v) = match (&self.qkv, pass) {
            (Some(fused), Pass::Infer) if lora::packed_rows(x) => {
                let qkv = [&self.q_proj, &self.k_proj, &self.v_proj];
                let [q, k, v]: [Tensor; 3] = fused.forward(x, &qkv)?.try_into().expect("3");
                (q, k, v)
            }
            _ => (
                self.q_proj.forward(x, pass)?,
                self.k_proj.forward(x, pass)?,
                self.v_proj.forward(x, pass)?,
            ),
        };
        let q = q.reshape((b, t, h, d))?;
        let k = k.reshape((b, t, kvh, d))?;
        let v = v.reshape((b, t, kvh, d))?;
        let q = match &self.q_norm {
            Some(n) => n.forward(&q, pass)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(n) => n.forward(&k, pass)?,
            None => k,
        };
        let (q, k) = (rope_to_heads(&q, cos, sin)?, rope_to_heads(&k, cos, sin)?);
        let (k, v, cache) = match past {
            Past::None => (k, v, None),
            Past::Cache(c, layer) => (k, v, Some((c, layer))),
            Past::Record(kept) => {
                kept.push((k.clone(), v.clone()));
                (k, v, None)
            }
            Past::Prefix((pk, pv)) => {
                (Tensor::cat(&[pk, &k], 2)?, Tensor::cat(&[pv, &v], 1)?, None)
            }
        };
        let scale = 1.0 / (d as f64).sqrt();
        let y = match mask {
            AttentionMask::Keys(keys) => match cache {
                // A sampling copy decoding: the keys and values are read from the cache.
                Some((c, layer)) => {
                    let (k, v) = c.append(layer, &k, &v.transpose(1, 2)?)?;
                    cached_attention(&q, &k, &v, keys, scale)?
                }
                None => attention(&q, &k, &v, keys, scale, MASK_VALUE)?,
            },
            AttentionMask::Bias(bias) => {
                let v = v.transpose(1, 2)?.contiguous()?;
                let y = grouped_attention(&q, &k.contiguous()?, &v, bias, scale, cache)?;
                y.transpose(1, 2)?.reshape((b, t, h * d))?
            }
        };
        self.o_proj.forward(&y, pass)
    }
}

/// Attention op by op: q [B,H,T,D], k/v [B,KVH,T,D] and bias [B,1,1,T,S] give [B,H,T,D].
/// Grouped-query attention without repeating k/v: the G query heads sharing one kv head are
/// stacked along the row dim, so one batched matmul per kv head does the work.
fn grouped_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    cache: Option<(&mut KvCache, usize)>,
) -> Result<Tensor> {
    let (b, h, t, d) = q.dims4()?;
    let kvh = k.dim(1)?;
    let g = h / kvh;
    // With a cache, k/v are strided views into its preallocated buffers: matmul reads them in
    // place.
    let (k, v) = match cache {
        Some((c, layer)) => c.append(layer, k, v)?,
        None => (k.clone(), v.clone()),
    };
    let s = k.dim(2)?;
    let q = q.contiguous()?.reshape((b, kvh, g * t, d))?;
    let att = q.matmul(&k.t()?)?.reshape((b, kvh, g, t, s))?;
    let att = attention_probs(&att, bias, scale)?.reshape((b, kvh, g * t, s))?;
    Ok(att.matmul(&v)?.reshape((b, h, t, d))?)
}

#[derive(Debug, Clone)]
pub struct Mlp {
    pub gate_proj: LoraLinear,
    pub up_proj: LoraLinear,
    pub down_proj: LoraLinear,
    /// gate/up packed as one weight, in sampling copies only.
    gate_up: Option<FusedSampler>,
}

impl Mlp {
    fn load(vb: &WeightSource, cfg: &Config) -> Result<Self> {
        let (hs, is) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_proj: LoraLinear::load(&vb.pp("gate_proj"), is, hs, false)?,
            up_proj: LoraLinear::load(&vb.pp("up_proj"), is, hs, false)?,
            down_proj: LoraLinear::load(&vb.pp("down_proj"), hs, is, false)?,
            gate_up: None,
        })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        // A reduced-precision sampling copy may approximate `exp` too.
        let h = match (&self.gate_up, pass) {
            (Some(fused), Pass::Infer) if lora::packed_rows(x) => {
                let gu = fused.forward(x, &[&self.gate_proj, &self.up_proj])?;
                swiglu_approx(&gu[0], &gu[1])?
            }
            _ => swiglu(
                &self.gate_proj.forward(x, pass)?,
                &self.up_proj.forward(x, pass)?,
            )?,
        };
        self.down_proj.forward(&h, pass)
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl Block {
    fn load(vb: &WeightSource, cfg: &Config) -> Result<Self> {
        let (hs, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let self_attn = Attention::load(&vb.pp("self_attn"), cfg)?;
        let mlp = Mlp::load(&vb.pp("mlp"), cfg)?;
        // QK-norms after the MLP: the parameter order (of seeded random init and of
        // `named_vars`) the model has always had.
        let self_attn = self_attn.with_qk_norm(&vb.pp("self_attn"), cfg)?;
        Ok(Block {
            input_layernorm: RmsNorm::load(&vb.pp("input_layernorm"), hs, eps)?,
            self_attn,
            post_attention_layernorm: RmsNorm::load(&vb.pp("post_attention_layernorm"), hs, eps)?,
            mlp,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: &AttentionMask,
        past: Past,
        pass: Pass,
    ) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, pass)?;
        let x = (x + self.self_attn.forward(&h, rope, mask, past, pass)?)?;
        let h = self.post_attention_layernorm.forward(&x, pass)?;
        Ok((&x + self.mlp.forward(&h, pass)?)?)
    }

    /// The projections that can carry a LoRA adapter.
    fn linears_mut(&mut self) -> [&mut LoraLinear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }
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

    /// Replaces the cached rows by `rows` of them (a row may repeat): forks each prompt's
    /// cache for several samples.
    pub fn select_rows(&mut self, rows: &[u32]) -> Result<()> {
        for kv in self.layers.iter_mut().flatten() {
            let idx = Tensor::new(rows, kv.0.device())?;
            *kv = (kv.0.index_select(&idx, 0)?, kv.1.index_select(&idx, 0)?);
        }
        Ok(())
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
    rotary: Rotary,
    /// Every base parameter with its HF name, in load order.
    named: Vec<(String, Var)>,
    /// The LoRA adapters' parameters with their PEFT names, layer by layer.
    adapters: Vec<(String, Var)>,
    dtype: DType,
    device: Device,
    base_frozen: bool,
    /// The output projection's reduced-precision copy, in sampling copies only.
    sampler_head: Option<Arc<SamplerWeight>>,
    /// The precision of a sampling copy's packed weights (F32: none, the model itself).
    sampling: Precision,
}

impl Transformer {
    /// Builds the model from `vb`: every weight `cfg` needs must be there with the right shape,
    /// and nothing else (but a tied `lm_head` copy or rotary tables, which carry nothing new).
    pub fn load(vb: WeightSource, cfg: &Config) -> Result<Self> {
        cfg.validate()?;
        let (dtype, device) = (vb.dtype(), vb.device());
        let (vocab, hs) = (cfg.vocab_size, cfg.hidden_size);
        let m = vb.pp("model");
        let embed_tokens = m
            .pp("embed_tokens")
            .get(&[vocab, hs], "weight", Init::Normal)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Block::load(&m.pp("layers").pp(i), cfg))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(&m.pp("norm"), hs, cfg.rms_norm_eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(vb.pp("lm_head").get(&[vocab, hs], "weight", Init::Normal)?)
        };
        let named = vb.finish(|n| n == "lm_head.weight" || n.ends_with("rotary_emb.inv_freq"))?;
        Ok(Transformer {
            cfg: cfg.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: Rotary::new(cfg, dtype, &device)?,
            named,
            adapters: Vec::new(),
            dtype,
            device,
            base_frozen: false,
            sampler_head: None,
            sampling: Precision::F32,
        })
    }

    /// Builds the model from HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// converting them to `dtype`.
    pub fn from_tensors(
        cfg: &Config,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load(WeightSource::from_tensors(tensors, dtype, device), cfg)
    }

    /// A randomly initialised model (normal(0, 0.02) matrices, norms near 1), seeded.
    pub fn random(cfg: &Config, dtype: DType, device: &Device, seed: u64) -> Result<Self> {
        Self::load(WeightSource::random(seed, dtype, device), cfg)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All base parameters with their HF names (LoRA adapters not included).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        self.named.clone()
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
        self.adapters.clone()
    }

    /// Adds fresh LoRA adapters (A random, B zero: the model's output is unchanged) to the
    /// targeted projections of every layer and freezes the base weights.
    pub fn add_lora(&mut self, lcfg: &LoraConfig, seed: u64) -> Result<()> {
        lora::add_adapters(self.linears_mut(), lcfg, seed)?;
        self.adapters = lora::adapter_vars(self.linears_mut().map(|l| &*l));
        self.set_base_frozen(true);
        Ok(())
    }

    /// Removes all adapters and unfreezes the base.
    pub fn remove_lora(&mut self) {
        for lin in self.linears_mut() {
            lin.lora = None;
        }
        self.adapters.clear();
        self.set_base_frozen(false);
    }

    /// Folds each adapter into its base weight (`W + scale · B A`) and removes the adapters:
    /// the same function with plain weights, which is how a LoRA warm start is saved.
    pub fn merge_lora(&mut self) -> Result<()> {
        for lin in self.linears_mut() {
            if lin.lora.is_some() {
                lin.weight.set(&lin.merged_weight()?)?;
            }
        }
        self.remove_lora();
        Ok(())
    }

    /// Every projection that can carry a LoRA adapter, layer by layer.
    fn linears_mut(&mut self) -> impl Iterator<Item = &mut LoraLinear> {
        self.layers.iter_mut().flat_map(Block::linears_mut)
    }

    /// Loads adapter values saved by `Transformer::lora_vars` (PEFT names). The adapters must
    /// already exist (`add_lora` with the same config) so shapes are checked.
    pub fn set_lora_tensors(&mut self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        lora::set_adapter_vars(self.lora_vars(), tensors)
    }

    /// Freezing the base detaches its weights in the forward pass, so backward computes
    /// gradients only for LoRA adapters (and costs accordingly less).
    pub fn set_base_frozen(&mut self, frozen: bool) {
        self.base_frozen = frozen;
    }

    pub fn base_frozen(&self) -> bool {
        self.base_frozen
    }

    /// How a training forward reads the parameters.
    fn train_pass(&self) -> Pass {
        if self.base_frozen {
            Pass::Frozen
        } else {
            Pass::Train
        }
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
        self.forward_pass(
            ids,
            &positions,
            &key_mask,
            PastMode::None,
            self.train_pass(),
        )
    }

    /// A training forward of prompts that completions will share (`forward_after_prefix`):
    /// final hidden states [B,T,H] and each layer's keys and values, all in the graph.
    pub(crate) fn forward_prefix(
        &self,
        ids: &Tensor,
        key_mask: &[Vec<u8>],
    ) -> Result<(Tensor, Vec<(Tensor, Tensor)>)> {
        let positions = positions_from_mask(key_mask);
        let mut kv = Vec::with_capacity(self.layers.len());
        let pass = self.train_pass();
        let h = self.forward_pass(ids, &positions, key_mask, PastMode::Record(&mut kv), pass)?;
        Ok((h, kv))
    }

    /// A training forward of tokens `ids` [B,T] that continue prompts run by `forward_prefix`:
    /// row i attends to `prefix` row `rows[i]` (whose gradient sums over the rows that share
    /// it) and then causally to its own tokens. `key_mask` rows cover prompt + own tokens.
    pub(crate) fn forward_after_prefix(
        &self,
        ids: &Tensor,
        key_mask: &[Vec<u8>],
        prefix: &[(Tensor, Tensor)],
        rows: &[u32],
    ) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let positions: Vec<Vec<u32>> = positions_from_mask(key_mask)
            .into_iter()
            .map(|r| r[r.len().saturating_sub(t)..].to_vec())
            .collect();
        let idx = Tensor::new(rows, &self.device)?;
        let past = prefix
            .iter()
            .map(|(k, v)| Ok((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?)))
            .collect::<Result<Vec<_>>>()?;
        let pass = self.train_pass();
        self.forward_pass(ids, &positions, key_mask, PastMode::Prefix(&past), pass)
    }

    /// Hidden states → logits via the (possibly tied) output projection.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.train_pass()
            .linear(hidden, &self.output_weight(), None)
    }

    /// `logits` for inference (no autograd graph).
    pub fn logits_infer(&self, hidden: &Tensor) -> Result<Tensor> {
        if let Some(head) = &self.sampler_head {
            return head.forward(hidden);
        }
        Pass::Infer.linear(hidden, &Pass::Infer.base(self.output_var()), None)
    }

    /// The model generation runs at `precision`: itself for f32, otherwise a copy whose
    /// projections (LoRA adapters merged) and output projection are rounded and packed for
    /// the reduced-precision kernel. Norms, embeddings, attention and sampling stay f32. The
    /// copy shares every `Var` with `self` and is a snapshot: make a new one after an update.
    /// A sampling copy at `precision` is its own sampling copy (a server makes one at startup
    /// instead of one per request).
    pub fn sampling_copy(&self, precision: Precision) -> Result<Cow<'_, Transformer>> {
        if precision == self.sampling {
            return Ok(Cow::Borrowed(self));
        }
        if precision == Precision::F32 {
            return Err(Error::Invalid(format!(
                "an f32 sampling copy of a {:?} sampling copy: sample from the model itself",
                self.sampling
            )));
        }
        let mut copy = self.clone();
        copy.sampling = precision;
        let pack = |l: &LoraLinear| -> Result<_> {
            Ok(Some(Arc::new(SamplerWeight::pack(
                &l.merged_weight()?,
                precision,
            )?)))
        };
        for layer in &mut copy.layers {
            let (a, m) = (&mut layer.self_attn, &mut layer.mlp);
            a.qkv = Some(FusedSampler::pack(
                &[&a.q_proj, &a.k_proj, &a.v_proj],
                precision,
            )?);
            a.o_proj.sampler = pack(&a.o_proj)?;
            m.gate_up = Some(FusedSampler::pack(&[&m.gate_proj, &m.up_proj], precision)?);
            m.down_proj.sampler = pack(&m.down_proj)?;
        }
        // int4 keeps the output projection in 8 bits, as llama.cpp's 4-bit files keep it
        // (SmolLM2's Q4_1 GGUF stores its embeddings, the tied head, as Q8_0): one wide matrix
        // whose error every logit carries.
        let head_precision = match precision {
            Precision::Int4 => Precision::Int8,
            p => p,
        };
        let head = self.output_var().as_tensor();
        copy.sampler_head = Some(Arc::new(SamplerWeight::pack(head, head_precision)?));
        Ok(Cow::Owned(copy))
    }

    /// The output projection [vocab, hidden] as a training pass reads it.
    pub(crate) fn output_weight(&self) -> Tensor {
        self.train_pass().base(self.output_var())
    }

    /// `lm_head`, or the embedding when tied.
    fn output_var(&self) -> &Var {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// The forward for generation: `ids` [B,T] are new tokens at `positions` (B×T); `key_mask`
    /// (B×S) covers every key the new tokens can see (cached ones first, then these T).
    /// Causality is by index: new token t sees keys 0..=S-T+t. The same function as
    /// `forward_hidden` (equal within float rounding), but no autograd graph is built (nothing
    /// is kept alive for a backward pass) and the linear layers use their small-batch form.
    pub fn forward_infer(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        key_mask: &[Vec<u8>],
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let past = match cache {
            Some(c) => PastMode::Cache(c),
            None => PastMode::None,
        };
        self.forward_pass(ids, positions, key_mask, past, Pass::Infer)
    }

    fn forward_pass(
        &self,
        ids: &Tensor,
        positions: &[Vec<u32>],
        key_mask: &[Vec<u8>],
        mut past: PastMode,
        pass: Pass,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        if positions.len() != b || key_mask.len() != b {
            return Err(Error::Invalid(format!(
                "batch of {b} ids but {} position rows and {} mask rows",
                positions.len(),
                key_mask.len()
            )));
        }
        let cached = match &past {
            PastMode::Cache(c) => c.len,
            PastMode::Prefix(p) => p.first().map(|(k, _)| k.dim(2)).transpose()?.unwrap_or(0),
            PastMode::None | PastMode::Record(_) => 0,
        };
        // Training without a cache on the CPU runs the fused attention op, and a sampling copy
        // decoding in f32 runs `cached_attention`; both take the key mask itself. Everything
        // else adds a bias to the scores.
        let cache = matches!(past, PastMode::Cache(_));
        let fused = fused_ok(&self.rotary.cos)
            && if cache {
                self.sampler_head.is_some() && self.dtype == DType::F32
            } else {
                pass != Pass::Infer
            };
        let mask = self.attention_mask(key_mask, cached, t, fused)?;
        let (cos, sin) = self.rotary.at(positions, t)?;
        let emb = pass.base(&self.embed_tokens);
        let mut x = crate::ops::embedding(&emb, &ids.flatten_all()?)?.reshape((
            b,
            t,
            self.cfg.hidden_size,
        ))?;
        for (i, layer) in self.layers.iter().enumerate() {
            let p = match &mut past {
                PastMode::None => Past::None,
                PastMode::Cache(c) => Past::Cache(c, i),
                PastMode::Record(kept) => Past::Record(kept),
                PastMode::Prefix(p) => Past::Prefix(&p[i]),
            };
            x = layer.forward(&x, (&cos, &sin), &mask, p, pass)?;
        }
        if let PastMode::Cache(c) = past {
            c.len += t;
        }
        self.norm.forward(&x, pass)
    }

    /// The mask of `t` new tokens after `cached` ones: `key_mask` rows of S = cached + t keys,
    /// causal by index.
    fn attention_mask(
        &self,
        key_mask: &[Vec<u8>],
        cached: usize,
        t: usize,
        fused: bool,
    ) -> Result<AttentionMask> {
        let s = key_mask[0].len();
        if s != cached + t || key_mask.iter().any(|r| r.len() != s) {
            return Err(Error::Invalid(format!(
                "key mask length must be cached ({cached}) + new ({t}) for every row"
            )));
        }
        if fused {
            return Ok(AttentionMask::Keys(Arc::new(key_mask.to_vec())));
        }
        let mut bias = Vec::with_capacity(key_mask.len() * t * s);
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
        let bias = Tensor::from_vec(bias, (key_mask.len(), 1, 1, t, s), &self.device)?;
        Ok(AttentionMask::Bias(bias.to_dtype(self.dtype)?))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Arch;

    #[test]
    fn a_sampling_copy_prefills_many_rows_with_the_f32_weights() {
        let dev = Device::Cpu;
        let mut cfg = Config::tiny(Arch::Qwen2);
        cfg.max_position_embeddings = 2 * lora::PACKED_MAX_ROWS;
        let m = Transformer::random(&cfg, DType::F32, &dev, 4).unwrap();
        let hidden = |t: &Transformer, rows: usize| -> Vec<f32> {
            let ids: Vec<u32> = (0..rows as u32).map(|i| 3 + i % 20).collect();
            let ids = Tensor::from_vec(ids, (1, rows), &dev).unwrap();
            let pos = vec![(0..rows as u32).collect::<Vec<_>>()];
            let keys = vec![vec![1u8; rows]];
            let h = t.forward_infer(&ids, &pos, &keys, None).unwrap();
            h.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        let n = lora::PACKED_MAX_ROWS;
        for precision in [Precision::Bf16, Precision::Int8, Precision::Int4] {
            let copy = m.sampling_copy(precision).unwrap();
            // a prompt of PACKED_MAX_ROWS tokens: the model's own arithmetic, bit for bit
            assert_eq!(hidden(&copy, n), hidden(&m, n), "{precision:?}");
            // fewer rows: the packed weights, which round
            assert_ne!(hidden(&copy, n - 1), hidden(&m, n - 1), "{precision:?}");
        }
    }

    #[test]
    fn fused_sampling_projections_give_the_bits_separate_ones_do() {
        let dev = Device::Cpu;
        // Qwen2: q/k/v carry biases; the tiny widths put k's and v's 8 outputs each in one
        // panel of 16
        for arch in [Arch::Llama, Arch::Qwen2] {
            let m = Transformer::random(&Config::tiny(arch), DType::F32, &dev, 3).unwrap();
            let (a, mlp) = (&m.layers[0].self_attn, &m.layers[0].mlp);
            for precision in [Precision::Bf16, Precision::Int8, Precision::Int4] {
                for rows in [1, 5] {
                    let x = Tensor::randn(0f32, 1.0, (rows, 1, m.cfg.hidden_size), &dev).unwrap();
                    for group in [
                        vec![&a.q_proj, &a.k_proj, &a.v_proj],
                        vec![&mlp.gate_proj, &mlp.up_proj],
                    ] {
                        let fused = FusedSampler::pack(&group, precision).unwrap();
                        let outs = fused.forward(&x, &group).unwrap();
                        for (l, got) in group.iter().zip(outs) {
                            let alone = SamplerWeight::pack(&l.merged_weight().unwrap(), precision)
                                .unwrap();
                            let mut want = alone.forward(&x).unwrap();
                            if let Some(b) = &l.bias {
                                want = want.broadcast_add(b.as_tensor()).unwrap();
                            }
                            let bits = |t: &Tensor| -> Vec<u32> {
                                let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                                v.iter().map(|f| f.to_bits()).collect()
                            };
                            assert_eq!(got.dims(), want.dims(), "{}", l.name);
                            assert_eq!(bits(&got), bits(&want), "{} {precision:?}", l.name);
                        }
                    }
                }
            }
        }
    }
}
