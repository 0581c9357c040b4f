//! Where the parameters come from, in the manner of candle's `VarBuilder`: each part of the
//! model asks for its own tensors by name and shape where it is built
//! (`vb.pp("self_attn").pp("q_proj").get(...)`), so every HF weight name is written once. The
//! source is a checkpoint's named tensors or a seeded random init, and it keeps every parameter
//! it hands out, in order, under its full name. Also here: how a forward pass reads them.

use crate::error::{Error, Result};
use crate::linear::{linear, linear_infer};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

/// How a randomly initialised parameter is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// normal(0, 0.02): matrices, biases, embeddings.
    Normal,
    /// 1 + normal(0, 0.1): norm scales.
    NearOne,
}

enum Source {
    Tensors(HashMap<String, Tensor>),
    // boxed: the RNG state is six times the size of the map
    Random(Box<rand::rngs::StdRng>),
}

struct State {
    source: Source,
    dtype: DType,
    device: Device,
    taken: Vec<(String, Var)>,
}

/// A view of the parameter source under a name prefix; `pp` goes one level down.
#[derive(Clone)]
pub struct WeightSource {
    state: Rc<RefCell<State>>,
    prefix: String,
}

impl WeightSource {
    /// Parameters from HF-named tensors (`model.layers.0.self_attn.q_proj.weight`, ...),
    /// converted to `dtype` on `device`.
    pub fn from_tensors(tensors: HashMap<String, Tensor>, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Tensors(tensors), dtype, device)
    }

    /// Parameters drawn as each is asked for (see `Init`) from an RNG seeded with `seed`.
    pub fn random(seed: u64, dtype: DType, device: &Device) -> Self {
        let rng = rand::rngs::StdRng::seed_from_u64(seed);
        Self::new(Source::Random(Box::new(rng)), dtype, device)
    }

    fn new(source: Source, dtype: DType, device: &Device) -> Self {
        let state = State {
            source,
            dtype,
            device: device.clone(),
            taken: Vec::new(),
        };
        WeightSource {
            state: Rc::new(RefCell::new(state)),
            prefix: String::new(),
        }
    }

    /// The same source under `<prefix>.<name>`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        WeightSource {
            state: self.state.clone(),
            prefix,
        }
    }

    pub fn dtype(&self) -> DType {
        self.state.borrow().dtype
    }

    pub fn device(&self) -> Device {
        self.state.borrow().device.clone()
    }

    /// The full name of this view (`model.layers.0.self_attn.q_proj`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The parameter `<prefix>.<name>`, which must have `shape`.
    pub fn get(&self, shape: &[usize], name: &str, init: Init) -> Result<Var> {
        let name = self.pp(name).prefix;
        let mut state = self.state.borrow_mut();
        let State {
            source,
            dtype,
            device,
            taken,
        } = &mut *state;
        let t = match source {
            Source::Tensors(map) => {
                let t = map
                    .remove(&name)
                    .ok_or_else(|| Error::MissingWeight(name.clone()))?;
                if t.dims() != shape {
                    return Err(Error::Invalid(format!(
                        "weight `{name}` has shape {:?}, expected {shape:?}",
                        t.dims()
                    )));
                }
                t
            }
            Source::Random(rng) => {
                let n: usize = shape.iter().product();
                let data: Vec<f32> = match init {
                    Init::Normal => (0..n).map(|_| 0.02 * normal(rng)).collect(),
                    Init::NearOne => (0..n).map(|_| 1.0 + 0.1 * normal(rng)).collect(),
                };
                Tensor::from_vec(data, shape, device)?
            }
        };
        let var = Var::from_tensor(&t.to_device(device)?.to_dtype(*dtype)?)?;
        taken.push((name, var.clone()));
        Ok(var)
    }

    /// Every parameter handed out, in order. A checkpoint tensor nobody asked for means the
    /// config and the checkpoint disagree (a bias or norm the config turns off, more layers):
    /// an error naming it, not a silently different model, unless `ignorable` says it
    /// carries nothing new.
    pub fn finish(self, ignorable: impl Fn(&str) -> bool) -> Result<Vec<(String, Var)>> {
        let state = self.state.borrow();
        if let Source::Tensors(map) = &state.source {
            let mut unused: Vec<&String> = map.keys().filter(|n| !ignorable(n)).collect();
            unused.sort();
            if let Some(first) = unused.first() {
                return Err(Error::Invalid(format!(
                    "{} weight(s) the config does not use, e.g. `{first}`: check attention_bias, \
                     qk_norm, tie_word_embeddings and num_hidden_layers against the checkpoint",
                    unused.len(),
                )));
            }
        }
        Ok(state.taken.clone())
    }
}

/// How a forward pass reads the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    /// Training: every parameter is in the autograd graph.
    Train,
    /// Training with the base frozen: base weights detached (backward computes no gradient
    /// nobody will use), LoRA adapters in the graph.
    Frozen,
    /// Generation: no autograd graph, and the small-batch matmul form of `linear_infer`.
    Infer,
}

impl Pass {
    /// A base weight, detached unless it trains.
    pub(crate) fn base(self, v: &Var) -> Tensor {
        read(v, self == Pass::Train)
    }

    /// A LoRA adapter weight, detached only for inference.
    pub(crate) fn adapter(self, v: &Var) -> Tensor {
        read(v, self != Pass::Infer)
    }

    /// `x @ w^T (+ b)` with this pass's kernel.
    pub(crate) fn linear(self, x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
        if self == Pass::Infer {
            linear_infer(x, w, b)
        } else {
            linear(x, w, b)
        }
    }
}

/// The tensor of `v`, in the autograd graph or detached from it.
fn read(v: &Var, in_graph: bool) -> Tensor {
    if in_graph {
        v.as_tensor().clone()
    } else {
        v.as_tensor().detach()
    }
}

/// Standard normal sample (Box–Muller), so seeded init needs no extra crate.
pub(crate) fn normal(rng: &mut impl Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensors(names: &[(&str, usize)]) -> HashMap<String, Tensor> {
        let t = |n| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
        names.iter().map(|&(k, n)| (k.to_string(), t(n))).collect()
    }

    #[test]
    fn errors_name_the_tensor() {
        let map = tensors(&[("a.b.w", 3), ("a.x", 1)]);
        let vb = WeightSource::from_tensors(map, DType::F32, &Device::Cpu);
        let e = vb.clone().finish(|_| false).unwrap_err().to_string();
        assert!(
            e.contains("2 weight(s) the config does not use, e.g. `a.b.w`"),
            "{e}"
        );
        let a = vb.pp("a");
        a.get(&[1], "x", Init::Normal).unwrap();
        let taken = vb.clone().finish(|n| n == "a.b.w").unwrap();
        assert_eq!(taken[0].0, "a.x");
        let e = a.pp("b").get(&[4], "w", Init::Normal).unwrap_err();
        assert!(
            e.to_string()
                .contains("`a.b.w` has shape [3], expected [4]"),
            "{e}"
        );
        let e = a.get(&[1], "missing", Init::Normal).unwrap_err();
        assert!(e.to_string().contains("`a.missing`"), "{e}");
    }

    /// Random parameters are drawn in the order they are asked for, from one seeded stream.
    #[test]
    fn random_draws_in_request_order() {
        let vb = WeightSource::random(9, DType::F64, &Device::Cpu);
        let w = vb.pp("l").get(&[2], "w", Init::Normal).unwrap();
        let n = vb.pp("norm").get(&[3], "weight", Init::NearOne).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let want_w: Vec<f64> = (0..2).map(|_| (0.02 * normal(&mut rng)) as f64).collect();
        let want_n: Vec<f64> = (0..3)
            .map(|_| (1.0 + 0.1 * normal(&mut rng)) as f64)
            .collect();
        assert_eq!(w.as_tensor().to_vec1::<f64>().unwrap(), want_w);
        assert_eq!(n.as_tensor().to_vec1::<f64>().unwrap(), want_n);
        let names: Vec<String> = vb
            .finish(|_| false)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["l.w", "norm.weight"]);
    }
}
