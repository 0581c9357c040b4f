//! LoRA adapters: `W x + (alpha/r) · B A x` on chosen projections, so the base can stay frozen
//! and only the small A/B matrices are trained and saved.

use crate::cpu::Precision;
use crate::error::{Error, Result};
use crate::int8::SamplerWeight;
use crate::weights::{normal, Init, Pass, WeightSource};
use candle_core::{Tensor, Var};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// A projection that can carry an adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LoraTarget {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// Parses `q`, `q_proj`, `gate`, `gate_proj`, ...
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim().trim_end_matches("_proj");
        Ok(match s {
            "q" => LoraTarget::Q,
            "k" => LoraTarget::K,
            "v" => LoraTarget::V,
            "o" => LoraTarget::O,
            "gate" => LoraTarget::Gate,
            "up" => LoraTarget::Up,
            "down" => LoraTarget::Down,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown LoRA target `{other}` (use q,k,v,o,gate,up,down)"
                )))
            }
        })
    }
}

/// Adapter hyper-parameters; serialized as `adapter_config.json` next to the adapter weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    #[serde(rename = "r")]
    pub rank: usize,
    #[serde(rename = "lora_alpha")]
    pub alpha: f64,
    #[serde(rename = "target_modules")]
    pub targets: Vec<LoraTarget>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: vec![LoraTarget::Q, LoraTarget::V],
        }
    }
}

impl LoraConfig {
    pub fn validate(&self) -> Result<()> {
        if self.rank == 0 {
            return Err(Error::Invalid("LoRA rank must be > 0".into()));
        }
        if self.targets.is_empty() {
            return Err(Error::Invalid("LoRA needs at least one target".into()));
        }
        Ok(())
    }
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// [r, in]
    pub a: Var,
    /// [out, r]
    pub b: Var,
    pub scale: f64,
}

/// A linear layer `x W^T + b` with an optional LoRA adapter.
#[derive(Debug, Clone)]
pub struct LoraLinear {
    /// HF module name, e.g. `model.layers.0.self_attn.q_proj`.
    pub name: String,
    pub target: LoraTarget,
    pub weight: Var,
    pub bias: Option<Var>,
    pub lora: Option<LoraAdapter>,
    /// A reduced-precision copy of the weight (adapter merged) that generation uses instead
    /// of the f32 one; only sampling copies made by `Transformer::sampling_copy` carry it.
    pub(crate) sampler: Option<Arc<SamplerWeight>>,
}

impl LoraLinear {
    /// Loads `<vb>.weight` [out, inp] and, with `bias`, `<vb>.bias` [out]; the module's last
    /// name (`q_proj`, ...) is its LoRA target.
    pub fn load(vb: &WeightSource, out: usize, inp: usize, bias: bool) -> Result<Self> {
        let name = vb.prefix().to_string();
        let target = LoraTarget::parse(name.rsplit('.').next().unwrap_or_default())?;
        let weight = vb.get(&[out, inp], "weight", Init::Normal)?;
        let bias = if bias {
            Some(vb.get(&[out], "bias", Init::Normal)?)
        } else {
            None
        };
        Ok(LoraLinear {
            name,
            target,
            weight,
            bias,
            lora: None,
            sampler: None,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let b = self.bias.as_ref().map(|b| pass.base(b));
        if let (Pass::Infer, Some(packed), true) = (pass, &self.sampler, packed_rows(x)) {
            let y = packed.forward(x)?;
            return Ok(match b {
                Some(b) => y.broadcast_add(&b)?,
                None => y,
            });
        }
        let y = pass.linear(x, &pass.base(&self.weight), b.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(ad) => {
                let h = pass.linear(x, &pass.adapter(&ad.a), None)?;
                let d = pass.linear(&h, &pass.adapter(&ad.b), None)?;
                Ok((y + (d * ad.scale)?)?)
            }
        }
    }

    /// The weight generation multiplies by, the adapter merged in (`W + scale · B A`).
    pub(crate) fn merged_weight(&self) -> Result<Tensor> {
        let w = self.weight.as_tensor().detach();
        Ok(match &self.lora {
            None => w,
            Some(ad) => (w + (ad.b.as_tensor().matmul(ad.a.as_tensor())? * ad.scale)?)?,
        })
    }

    /// Kaiming-uniform-like A (std 1/sqrt(in)) and zero B, as PEFT does, so adding an adapter
    /// does not change the model.
    fn add_lora(&mut self, cfg: &LoraConfig, rng: &mut impl Rng) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
        let (dtype, device) = (self.weight.dtype(), self.weight.device());
        let std = 1.0 / (inp as f32).sqrt();
        let a: Vec<f32> = (0..cfg.rank * inp).map(|_| std * normal(rng)).collect();
        let a = Tensor::from_vec(a, (cfg.rank, inp), device)?.to_dtype(dtype)?;
        let b = Tensor::zeros((out, cfg.rank), dtype, device)?;
        self.lora = Some(LoraAdapter {
            a: Var::from_tensor(&a)?,
            b: Var::from_tensor(&b)?,
            scale: cfg.scale(),
        });
        Ok(())
    }
}

/// Below this many rows of input a sampling copy multiplies by its packed weights; from it
/// on, by the f32 ones (the model's own, adapter unmerged: what the copy shares with it).
/// Packed weights cut the bytes read per weight, which bounds decoding at a few rows; a
/// prompt's prefill of hundreds of rows is bound by arithmetic instead, where the blocked f32
/// gemm beats the packed kernels (which widen every weight again for each 4 or 6 rows).
pub(crate) const PACKED_MAX_ROWS: usize = 64;

/// Whether `x` [..., in] is few enough rows for the packed weights (`PACKED_MAX_ROWS`).
pub(crate) fn packed_rows(x: &Tensor) -> bool {
    let inp = x.dims().last().copied().unwrap_or(1).max(1);
    x.elem_count() / inp < PACKED_MAX_ROWS
}

/// Projections of one input packed as one weight for sampling (a sampling copy's q/k/v and
/// gate/up): their merged weights stacked along the outputs, so a decoding step runs one
/// parallel matmul for them instead of one each. Every output is computed as its own
/// projection's sampler would (the kernels treat each output alone), so the bits are the same.
#[derive(Debug, Clone)]
pub(crate) struct FusedSampler {
    weight: Arc<SamplerWeight>,
    widths: Vec<usize>,
}

impl FusedSampler {
    pub(crate) fn pack(linears: &[&LoraLinear], precision: Precision) -> Result<Self> {
        let weights = linears
            .iter()
            .map(|l| l.merged_weight())
            .collect::<Result<Vec<_>>>()?;
        let widths = weights
            .iter()
            .map(|w| w.dim(0))
            .collect::<std::result::Result<_, _>>()?;
        let stacked = Tensor::cat(&weights, 0)?;
        Ok(FusedSampler {
            weight: Arc::new(SamplerWeight::pack(&stacked, precision)?),
            widths,
        })
    }

    /// Each of `linears`' outputs for `x` [..., in] (contiguous, biases added): the ones
    /// this was packed from, in the same order.
    pub(crate) fn forward(&self, x: &Tensor, linears: &[&LoraLinear]) -> Result<Vec<Tensor>> {
        let y = self.weight.forward(x)?;
        let last = y.rank() - 1;
        let mut start = 0;
        let mut outs = Vec::with_capacity(linears.len());
        for (l, &w) in linears.iter().zip(&self.widths) {
            let part = y.narrow(last, start, w)?.contiguous()?;
            start += w;
            outs.push(match &l.bias {
                Some(b) => part.broadcast_add(&Pass::Infer.base(b))?,
                None => part,
            });
        }
        Ok(outs)
    }
}

/// Adds fresh adapters (A random, B zero) to the `linears` that `cfg` targets, in order, from
/// one RNG seeded with `seed`.
pub(crate) fn add_adapters<'a>(
    linears: impl IntoIterator<Item = &'a mut LoraLinear>,
    cfg: &LoraConfig,
    seed: u64,
) -> Result<()> {
    cfg.validate()?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for lin in linears {
        if cfg.targets.contains(&lin.target) {
            lin.add_lora(cfg, &mut rng)?;
        }
    }
    Ok(())
}

/// The adapters of `linears` with PEFT names (`base_model.model.<module>.lora_A.weight`).
pub(crate) fn adapter_vars<'a>(
    linears: impl IntoIterator<Item = &'a LoraLinear>,
) -> Vec<(String, Var)> {
    let mut out = Vec::new();
    for lin in linears {
        if let Some(ad) = &lin.lora {
            let base = format!("base_model.model.{}", lin.name);
            out.push((format!("{base}.lora_A.weight"), ad.a.clone()));
            out.push((format!("{base}.lora_B.weight"), ad.b.clone()));
        }
    }
    out
}

/// Sets adapter `vars` (from `adapter_vars`) to the values in `tensors`, checking shapes.
pub(crate) fn set_adapter_vars(
    vars: Vec<(String, Var)>,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
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
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Writes adapter `vars` to `dir/adapter_model.safetensors` and a PEFT `adapter_config.json`
/// naming `base_model` as `base_model_name_or_path`: a folder `peft` loads over that base
/// (`PeftModel.from_pretrained`, `AutoPeftModelForCausalLM`). The adapter is stored in f32.
pub(crate) fn write_adapters(
    vars: Vec<(String, Var)>,
    cfg: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    if vars.is_empty() {
        return Err(Error::Invalid("model has no LoRA adapters to save".into()));
    }
    let map = vars
        .into_iter()
        .map(|(n, v)| Ok((n, v.as_tensor().to_dtype(candle_core::DType::F32)?)))
        .collect::<Result<HashMap<String, Tensor>>>()?;
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors"))?;
    let p = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&peft_config(cfg, base_model))?;
    std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    Ok(())
}

/// `adapter_config.json` as peft's `LoraConfig` writes it, limited to the fields that say what
/// arlrr's adapters are (fields later peft versions added are left to their defaults, so older
/// versions read the file without warnings about unknown keys).
pub(crate) fn peft_config(cfg: &LoraConfig, base_model: &str) -> serde_json::Value {
    // an integral alpha is written as an integer, as peft writes it
    let alpha: serde_json::Value = if cfg.alpha.fract() == 0.0 && cfg.alpha.abs() < 1e15 {
        (cfg.alpha as i64).into()
    } else {
        cfg.alpha.into()
    };
    serde_json::json!({
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": cfg.rank,
        "target_modules": cfg.targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": false,
    })
}

/// Parses a PEFT `adapter_config.json` (arlrr's or one peft wrote): a plain LoRA on the
/// projections arlrr models. Settings that would change what the adapter computes and that
/// arlrr does not implement (rsLoRA, DoRA, trained biases, per-layer ranks, extra trained
/// modules) are refused, naming the file and the field.
pub(crate) fn parse_peft_config(text: &str, path: &Path) -> Result<LoraConfig> {
    let bad = |field: &str, why: String| {
        Error::Invalid(format!("{}: field `{field}`: {why}", path.display()))
    };
    let v: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", path.display())))?;
    if !v.is_object() {
        return Err(Error::Invalid(format!(
            "{}: not a JSON object",
            path.display()
        )));
    }
    if let Some(t) = v.get("peft_type").filter(|t| !t.is_null()) {
        if t != "LORA" {
            return Err(bad(
                "peft_type",
                format!("{t}: only LORA adapters are supported"),
            ));
        }
    }
    let rank =
        v.get("r")
            .and_then(|r| r.as_u64())
            .ok_or_else(|| bad("r", "missing or not a positive integer".into()))? as usize;
    let alpha = v
        .get("lora_alpha")
        .and_then(|a| a.as_f64())
        .ok_or_else(|| bad("lora_alpha", "missing or not a number".into()))?;
    let targets = match v.get("target_modules") {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|t| {
                let name = t
                    .as_str()
                    .ok_or_else(|| bad("target_modules", format!("{t} is not a string")))?;
                LoraTarget::parse(name).map_err(|e| bad("target_modules", e.to_string()))
            })
            .collect::<Result<Vec<_>>>()?,
        Some(serde_json::Value::String(s)) => {
            return Err(bad(
                "target_modules",
                format!("the pattern {s:?} is not supported; list the projections"),
            ))
        }
        _ => return Err(bad("target_modules", "missing".into())),
    };
    let on = |field: &str| v.get(field).and_then(|x| x.as_bool()).unwrap_or(false);
    for field in ["use_rslora", "use_dora", "fan_in_fan_out", "lora_bias"] {
        if on(field) {
            return Err(bad(field, "true is not supported".into()));
        }
    }
    if let Some(b) = v.get("bias").filter(|b| !b.is_null() && *b != "none") {
        return Err(bad("bias", format!("{b} is not supported (only \"none\")")));
    }
    let set = |x: &serde_json::Value| match x {
        serde_json::Value::Null => false,
        serde_json::Value::Array(a) => !a.is_empty(),
        serde_json::Value::Object(o) => !o.is_empty(),
        _ => true,
    };
    for field in [
        "modules_to_save",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layer_replication",
        "trainable_token_indices",
    ] {
        if let Some(x) = v.get(field).filter(|x| set(x)) {
            return Err(bad(field, format!("{x} is not supported")));
        }
    }
    let cfg = LoraConfig {
        rank,
        alpha,
        targets,
    };
    cfg.validate()
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    Ok(cfg)
}

/// Reads a PEFT adapter folder (`write_adapters`', a checkpoint's, or one peft wrote): the
/// config and the named tensors.
pub(crate) fn read_adapters(
    dir: &Path,
    device: &candle_core::Device,
) -> Result<(LoraConfig, HashMap<String, Tensor>)> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let cfg = parse_peft_config(&text, &p)?;
    let w = dir.join("adapter_model.safetensors");
    if !w.exists() {
        return Err(Error::io(
            &w,
            std::io::Error::new(std::io::ErrorKind::NotFound, "adapter weights not found"),
        ));
    }
    let tensors = candle_core::safetensors::load(&w, device)
        .map_err(|e| Error::Invalid(format!("{}: {e}", w.display())))?;
    Ok((cfg, tensors))
}

/// `base_model_name_or_path` of a PEFT adapter folder, when it names one.
pub fn adapter_base_model(dir: &Path) -> Result<Option<String>> {
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", p.display())))?;
    Ok(v.get("base_model_name_or_path")
        .and_then(|b| b.as_str())
        .filter(|b| !b.is_empty())
        .map(String::from))
}
