//! Softmax and log-softmax over the last dim as candle custom ops *with* a backward pass.
//!
//! Built from primitives (max, sub, exp, sum, div) they are exact but keep four or five
//! full-size intermediates per attention layer alive for backward; at SmolLM2 scale with
//! 4,096-token batches that is over 10 GB. These ops keep only input and output, and their
//! `bwd` is the textbook Jacobian-vector product, written with differentiable tensor ops and
//! checked by the finite-difference tests. On devices other than the CPU the primitive
//! versions in `transformer` are used instead.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};

#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxLast {
    pub log: bool,
}

fn rows<T: Copy + num_like::Float>(x: &[T], d: usize, log: bool) -> Vec<T> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks_exact(d) {
        let mut m = row[0];
        for &v in row {
            if v > m {
                m = v;
            }
        }
        let mut s = T::zero();
        for &v in row {
            s = s + (v - m).exp();
        }
        if log {
            let lse = s.ln();
            out.extend(row.iter().map(|&v| v - m - lse));
        } else {
            let inv = T::one() / s;
            out.extend(row.iter().map(|&v| (v - m).exp() * inv));
        }
    }
    out
}

impl CustomOp1 for SoftmaxLast {
    fn name(&self) -> &'static str {
        if self.log {
            "policy-log-softmax-last"
        } else {
            "policy-softmax-last"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("softmax input must be contiguous".into()))?;
        let d = *layout.dims().last().expect("rank >= 1");
        let out = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(rows(&x[start..end], d, self.log)),
            CpuStorage::F64(x) => CpuStorage::F64(rows(&x[start..end], d, self.log)),
            _ => candle_core::bail!("softmax supports f32 and f64"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = if self.log {
            // y = x - lse(x): dx = g - softmax(x) * sum(g)
            let p = res.exp()?;
            let s = grad.sum_keepdim(D::Minus1)?;
            (grad - p.broadcast_mul(&s)?)?
        } else {
            // y = softmax(x): dx = y * (g - sum(g * y))
            let s = (grad * res)?.sum_keepdim(D::Minus1)?;
            (res * grad.broadcast_sub(&s)?)?
        };
        Ok(Some(g))
    }
}

/// The little float arithmetic the kernels need, for f32 and f64.
mod num_like {
    pub trait Float:
        PartialOrd
        + std::ops::Add<Output = Self>
        + std::ops::Sub<Output = Self>
        + std::ops::Mul<Output = Self>
        + std::ops::Div<Output = Self>
        + Sized
    {
        fn exp(self) -> Self;
        fn ln(self) -> Self;
        fn zero() -> Self;
        fn one() -> Self;
    }
    impl Float for f32 {
        fn exp(self) -> Self {
            f32::exp(self)
        }
        fn ln(self) -> Self {
            f32::ln(self)
        }
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
    }
    impl Float for f64 {
        fn exp(self) -> Self {
            f64::exp(self)
        }
        fn ln(self) -> Self {
            f64::ln(self)
        }
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
    }
}
