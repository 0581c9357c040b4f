//! AdamW written out (rather than candle-nn's) so its moments can be checkpointed, snapshotted
//! for lookahead probes and restored bit for bit; plus the learning-rate schedule and the
//! global-norm gradient clipping.

use anyhow::{Context, Result};
use candle_core::{CpuStorage, InplaceOp2, InplaceOp3, Layout, Tensor, Var, WithDType};
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

/// AdamW state: step count and first/second moments, one pair per var. The moments and the
/// parameters are updated in place; [`AdamW::snapshot`] is the deep copy a lookahead keeps.
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

    /// A copy that later steps leave alone (they write the moments in place).
    pub fn snapshot(&self) -> Result<Self> {
        let copy = |ts: &[Tensor]| ts.iter().map(Tensor::copy).collect::<Result<Vec<_>, _>>();
        Ok(AdamW {
            config: self.config.clone(),
            t: self.t,
            m: copy(&self.m)?,
            v: copy(&self.v)?,
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
            let p = var.as_tensor();
            if in_place(&[p, g, &self.m[i], &self.v[i]]) {
                // No new moment or parameter buffers: new ones each step are model-sized
                // allocations, freed into the allocator's heap in pieces the next step cannot
                // all reuse (figure: docs/benchmarks.md, "Memory of a training step").
                self.m[i].inplace_op2(
                    g,
                    &Moment {
                        beta: c.beta1,
                        square: false,
                    },
                )?;
                self.v[i].inplace_op2(
                    g,
                    &Moment {
                        beta: c.beta2,
                        square: true,
                    },
                )?;
                let update = Update {
                    inv_bc1: 1.0 / bc1,
                    inv_bc2: 1.0 / bc2,
                    eps: c.eps,
                    decay: 1.0 - lr * c.weight_decay,
                    lr,
                };
                p.inplace_op3(&self.m[i], &self.v[i], &update)?;
                continue;
            }
            let m = ((&self.m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + c.eps)?)?;
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

/// The in-place update applies: CPU tensors of one float type, each laid out contiguously.
fn in_place(ts: &[&Tensor]) -> bool {
    let dtype = ts[0].dtype();
    ts.iter().all(|t| {
        t.device().is_cpu()
            && t.dtype() == dtype
            && matches!(dtype, candle_core::DType::F32 | candle_core::DType::F64)
            && t.layout().is_contiguous()
    })
}

/// `f64::sqrt` and `f32::sqrt`, which candle's `sqrt` calls.
trait Real: WithDType {
    fn sqrt(self) -> Self;
}
impl Real for f32 {
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
}
impl Real for f64 {
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
}

/// Where a contiguous tensor's elements lie in its storage.
fn elems(l: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    l.contiguous_offsets()
        .map(|(a, b)| a..b)
        .ok_or_else(|| candle_core::Error::Msg("adamw: a non-contiguous tensor".into()))
}

/// `m = b m + (1-b) g` (with `square`, `g²`), in place. Every product by a scalar is written as
/// candle's affine `x * a + 0` computes it, so the bits are those of the tensor expressions.
struct Moment {
    beta: f64,
    square: bool,
}

impl Moment {
    fn run<T: Real>(
        &self,
        m: &mut [T],
        lm: &Layout,
        g: &[T],
        lg: &Layout,
    ) -> candle_core::Result<()> {
        let (b, c, z) = (
            T::from_f64(self.beta),
            T::from_f64(1.0 - self.beta),
            T::zero(),
        );
        let (rm, rg) = (elems(lm)?, elems(lg)?);
        for (m, &g) in m[rm].iter_mut().zip(&g[rg]) {
            let g = if self.square { g * g } else { g };
            *m = (*m * b + z) + (g * c + z);
        }
        Ok(())
    }
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adamw-moment"
    }
    fn cpu_fwd(
        &self,
        m: &mut CpuStorage,
        lm: &Layout,
        g: &CpuStorage,
        lg: &Layout,
    ) -> candle_core::Result<()> {
        match (m, g) {
            (CpuStorage::F32(m), CpuStorage::F32(g)) => self.run(m, lm, g, lg),
            (CpuStorage::F64(m), CpuStorage::F64(g)) => self.run(m, lm, g, lg),
            _ => candle_core::bail!("adamw: moments and gradients must be f32 or f64 alike"),
        }
    }
}

/// `p = p (1 - lr wd) - lr m̂ / (sqrt(v̂) + eps)` from the updated moments, in place, in the
/// order and roundings of the tensor expressions (`x / s` is candle's `x * (1/s) + 0`).
struct Update {
    inv_bc1: f64,
    inv_bc2: f64,
    eps: f64,
    decay: f64,
    lr: f64,
}

impl Update {
    fn run<T: Real>(
        &self,
        p: &mut [T],
        lp: &Layout,
        m: &[T],
        lm: &Layout,
        v: &[T],
        lv: &Layout,
    ) -> candle_core::Result<()> {
        let f = T::from_f64;
        let (i1, i2, eps, decay, lr, one, z) = (
            f(self.inv_bc1),
            f(self.inv_bc2),
            f(self.eps),
            f(self.decay),
            f(self.lr),
            T::one(),
            T::zero(),
        );
        let (rp, rm, rv) = (elems(lp)?, elems(lm)?, elems(lv)?);
        for ((p, &m), &v) in p[rp].iter_mut().zip(&m[rm]).zip(&v[rv]) {
            let den = (v * i2 + z).sqrt() * one + eps;
            let u = (m * i1 + z) / den;
            *p = (*p * decay + z) - (u * lr + z);
        }
        Ok(())
    }
}

impl InplaceOp3 for Update {
    fn name(&self) -> &'static str {
        "adamw-update"
    }
    fn cpu_fwd(
        &self,
        p: &mut CpuStorage,
        lp: &Layout,
        m: &CpuStorage,
        lm: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> candle_core::Result<()> {
        match (p, m, v) {
            (CpuStorage::F32(p), CpuStorage::F32(m), CpuStorage::F32(v)) => {
                self.run(p, lp, m, lm, v, lv)
            }
            (CpuStorage::F64(p), CpuStorage::F64(m), CpuStorage::F64(v)) => {
                self.run(p, lp, m, lm, v, lv)
            }
            _ => candle_core::bail!("adamw: parameters and moments must be f32 or f64 alike"),
        }
    }
}

/// `acc += g` (`acc = g` when empty): a running gradient sum over micro-batches.
pub(crate) fn add_grad(acc: &mut Option<Tensor>, g: Option<Tensor>) -> Result<()> {
    if let Some(g) = g {
        *acc = Some(match acc.take() {
            Some(sum) => (sum + g)?,
            None => g,
        });
    }
    Ok(())
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
