//! AdamW written out (rather than candle-nn's) so its moments can be checkpointed, snapshotted
//! for lookahead probes and restored bit for bit; plus the learning-rate schedule and the
//! global-norm gradient clipping.

use anyhow::{Context, Result};
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// `[optim]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (AdamW), applied as `p -= lr * wd * p`.
    pub weight_decay: f64,
    /// Linear warmup from 0 to `lr` over this many optimizer steps.
    pub warmup_steps: u64,
    /// `"cosine"` (decay to `min_lr_ratio * lr` at the last step) or `"constant"`.
    pub schedule: LrSchedule,
    pub min_lr_ratio: f64,
    /// Clip the global gradient norm to this value; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_steps: 0,
            schedule: LrSchedule::Constant,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LrSchedule {
    Cosine,
    Constant,
}

impl OptimConfig {
    /// Learning rate at optimizer step `t` (0-based) of `total`.
    pub fn lr_at(&self, t: u64, total: u64) -> f64 {
        if t < self.warmup_steps {
            return self.lr * (t + 1) as f64 / self.warmup_steps as f64;
        }
        match self.schedule {
            LrSchedule::Constant => self.lr,
            LrSchedule::Cosine => {
                let span = total.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((t - self.warmup_steps) as f64 / span).min(1.0);
                let min = self.lr * self.min_lr_ratio;
                min + (self.lr - min) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

/// AdamW state: step count and first/second moments, one pair per var.
#[derive(Clone)]
pub struct AdamW {
    pub config: OptimConfig,
    /// Updates applied so far (bias correction uses it).
    pub t: u64,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
}

impl AdamW {
    pub fn new(vars: &[(String, Var)], config: OptimConfig) -> Result<Self> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        Ok(AdamW {
            config,
            t: 0,
            m: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
            v: vars
                .iter()
                .map(|(_, v)| zeros(v))
                .collect::<candle_core::Result<_>>()?,
        })
    }

    /// One update with learning rate `lr`:
    /// `m = b1 m + (1-b1) g`, `v = b2 v + (1-b2) g²`,
    /// `p = p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)`.
    pub fn step(&mut self, vars: &[(String, Var)], grads: &[Tensor], lr: f64) -> Result<()> {
        let c = &self.config;
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t as i32);
        let bc2 = 1.0 - c.beta2.powi(self.t as i32);
        for (i, ((_, var), g)) in vars.iter().zip(grads).enumerate() {
            // A gradient can carry the op graph it was computed from (and with it the forward
            // pass); the moments outlive the step, so they must not hold on to it.
            let g = &g.detach();
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
            let p = var.as_tensor();
            let next = ((p * (1.0 - lr * c.weight_decay))? - (update * lr)?)?;
            var.set(&next)?;
            self.m[i] = m.detach();
            self.v[i] = v.detach();
        }
        Ok(())
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let mut t: HashMap<String, Tensor> = HashMap::new();
        for (i, (m, v)) in self.m.iter().zip(&self.v).enumerate() {
            t.insert(format!("m.{i}"), m.clone());
            t.insert(format!("v.{i}"), v.clone());
        }
        candle_core::safetensors::save(&t, path)
            .with_context(|| format!("writing optimizer state {}", path.display()))
    }

    /// Loads moments written by [`AdamW::save`]; `t` comes from the run state.
    pub fn load(&mut self, path: &Path, t: u64) -> Result<()> {
        let device = self
            .m
            .first()
            .map(|m| m.device().clone())
            .unwrap_or(candle_core::Device::Cpu);
        let mut tensors = candle_core::safetensors::load(path, &device)
            .with_context(|| format!("reading optimizer state {}", path.display()))?;
        for i in 0..self.m.len() {
            for (prefix, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let name = format!("{prefix}.{i}");
                let x = tensors
                    .remove(&name)
                    .with_context(|| format!("{}: tensor `{name}` missing", path.display()))?;
                anyhow::ensure!(
                    x.dims() == slot.dims(),
                    "{}: `{name}` has shape {:?}, expected {:?}",
                    path.display(),
                    x.dims(),
                    slot.dims()
                );
                *slot = x;
            }
        }
        self.t = t;
        Ok(())
    }
}

/// Global L2 norm of a gradient list (f64; NaN/inf propagate so the caller can skip).
pub fn global_norm(grads: &[Tensor]) -> Result<f64> {
    let mut sq = 0.0f64;
    for g in grads {
        sq += g
            .sqr()?
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
    }
    Ok(sq.sqrt())
}

/// Scales gradients so that their global norm is at most `max_norm` (0 = no clipping).
pub fn clip_grads(grads: &mut [Tensor], norm: f64, max_norm: f64) -> Result<()> {
    if max_norm > 0.0 && norm > max_norm {
        let s = max_norm / (norm + 1e-6);
        for g in grads.iter_mut() {
            *g = (&*g * s)?;
        }
    }
    Ok(())
}
