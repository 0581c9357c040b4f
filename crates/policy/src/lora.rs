//! LoRA adapters: `W x + (alpha/r) · B A x` on chosen projections, so the base can stay frozen
//! and only the small A/B matrices are trained and saved.

use crate::error::{Error, Result};
use crate::transformer::{lin_param, linear_fwd, linear_fwd_infer, normal};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

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

    /// Module path inside a decoder layer, as in HF/PEFT.
    pub fn module_path(self) -> &'static str {
        match self {
            LoraTarget::Q => "self_attn.q_proj",
            LoraTarget::K => "self_attn.k_proj",
            LoraTarget::V => "self_attn.v_proj",
            LoraTarget::O => "self_attn.o_proj",
            LoraTarget::Gate => "mlp.gate_proj",
            LoraTarget::Up => "mlp.up_proj",
            LoraTarget::Down => "mlp.down_proj",
        }
    }

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
    pub weight: Var,
    pub bias: Option<Var>,
    pub lora: Option<LoraAdapter>,
    pub(crate) frozen: bool,
}

impl LoraLinear {
    pub fn new(weight: Var, bias: Option<Var>) -> Self {
        LoraLinear {
            weight,
            bias,
            lora: None,
            frozen: false,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = lin_param(&self.weight, self.frozen);
        let b = self.bias.as_ref().map(|b| lin_param(b, self.frozen));
        let y = linear_fwd(x, &w, b.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(ad) => {
                let h = linear_fwd(x, ad.a.as_tensor(), None)?;
                let d = linear_fwd(&h, ad.b.as_tensor(), None)?;
                Ok((y + (d * ad.scale)?)?)
            }
        }
    }

    /// `forward` for inference: weights detached (no autograd graph), small-batch matmul form.
    pub(crate) fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.weight.as_tensor().detach();
        let b = self.bias.as_ref().map(|b| b.as_tensor().detach());
        let y = linear_fwd_infer(x, &w, b.as_ref())?;
        match &self.lora {
            None => Ok(y),
            Some(ad) => {
                let h = linear_fwd_infer(x, &ad.a.as_tensor().detach(), None)?;
                let d = linear_fwd_infer(&h, &ad.b.as_tensor().detach(), None)?;
                Ok((y + (d * ad.scale)?)?)
            }
        }
    }

    /// Kaiming-uniform-like A (std 1/sqrt(in)) and zero B, as PEFT does, so adding an adapter
    /// does not change the model.
    pub(crate) fn add_lora(
        &mut self,
        cfg: &LoraConfig,
        rng: &mut impl Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<()> {
        let (out, inp) = self.weight.dims2()?;
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

/// Saves the adapters of `model` to `dir/adapter_model.safetensors` + `dir/adapter_config.json`
/// (PEFT layout and names).
pub fn save_lora(
    model: &crate::Transformer,
    cfg: &LoraConfig,
    dir: impl AsRef<Path>,
) -> Result<()> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let vars = model.lora_vars();
    if vars.is_empty() {
        return Err(Error::Invalid("model has no LoRA adapters to save".into()));
    }
    let map: HashMap<String, Tensor> = vars
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().clone()))
        .collect();
    candle_core::safetensors::save(&map, dir.join("adapter_model.safetensors"))?;
    let mut j = serde_json::to_value(cfg)?;
    j["peft_type"] = "LORA".into();
    j["task_type"] = "CAUSAL_LM".into();
    let p = dir.join("adapter_config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&j)?).map_err(|e| Error::io(&p, e))?;
    Ok(())
}

/// Reads an adapter folder written by `save_lora`, adds fresh adapters to `model` with the
/// saved config and sets their values. Returns the config.
pub fn load_lora(model: &mut crate::Transformer, dir: impl AsRef<Path>) -> Result<LoraConfig> {
    let dir = dir.as_ref();
    let p = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let cfg: LoraConfig = serde_json::from_str(&text)?;
    let w = dir.join("adapter_model.safetensors");
    if !w.exists() {
        return Err(Error::io(
            &w,
            std::io::Error::new(std::io::ErrorKind::NotFound, "adapter weights not found"),
        ));
    }
    let tensors = candle_core::safetensors::load(&w, model.device())?;
    model.remove_lora();
    model.add_lora(&cfg, 0)?;
    model.set_lora_tensors(&tensors)?;
    Ok(cfg)
}
