//! Softmax and log-softmax over the last dim as candle custom ops *with* a backward pass.
//!
//! Built from primitives (max, sub, exp, sum, div) they are exact but keep four or five
//! full-size intermediates per attention layer alive for backward; at SmolLM2 scale with
//! 4,096-token batches that is over 10 GB. These ops keep only input and output, and their
//! `bwd` is the textbook Jacobian-vector product, written with differentiable tensor ops and
//! checked by the finite-difference tests. On devices other than the CPU the primitive
//! versions in `transformer` are used instead.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

/// Below this many elements a kernel runs on the calling thread: spawning costs more.
const PAR_MIN: usize = 1 << 15;

fn n_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Applies `f(input_rows, output_rows)` to whole rows of width `d`, splitting the rows across
/// the machine's threads when the tensor is large. candle's own CPU element-wise ops run on
/// one thread, which on a 2-core machine leaves half of it idle outside matmuls.
pub(crate) fn par_rows<T: Copy + Send + Sync>(
    x: &[T],
    out: &mut [T],
    d: usize,
    f: impl Fn(&[T], &mut [T]) + Sync,
) {
    let rows = x.len() / d.max(1);
    let threads = n_threads().min(rows.max(1));
    if threads <= 1 || x.len() < PAR_MIN {
        f(x, out);
        return;
    }
    let per = rows.div_ceil(threads) * d;
    std::thread::scope(|s| {
        for (xi, oi) in x.chunks(per).zip(out.chunks_mut(per)) {
            let f = &f;
            s.spawn(move || f(xi, oi));
        }
    });
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxLast {
    pub log: bool,
}

fn rows<T: Copy + Send + Sync + num_like::Float>(x: &[T], d: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    par_rows(x, &mut out, d, |x, out| rows_into(x, out, d, log));
    out
}

fn rows_into<T: Copy + num_like::Float>(x: &[T], out: &mut [T], d: usize, log: bool) {
    for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
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
            for (o, &v) in o.iter_mut().zip(row) {
                *o = v - m - lse;
            }
        } else {
            let inv = T::one() / s;
            for (o, &v) in o.iter_mut().zip(row) {
                *o = (v - m).exp() * inv;
            }
        }
    }
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

/// RMSNorm over the last dim, `x / sqrt(mean(x²) + eps) * w`, as a custom op with a backward
/// pass: the primitive composition keeps five full-size intermediates per norm for backward
/// (two norms per layer), this keeps none beyond its inputs, and runs on all threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RmsNormOp {
    pub eps: f64,
}

fn rms_rows<T: Copy + Send + Sync + num_like::Float>(
    x: &[T],
    w: &[T],
    d: usize,
    eps: f64,
) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    let eps = T::from_f64(eps);
    let n = T::from_f64(d as f64);
    par_rows(x, &mut out, d, |x, out| {
        for (row, o) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let mut ss = T::zero();
            for &v in row {
                ss = ss + v * v;
            }
            let inv = T::one() / (ss / n + eps).sqrt();
            for ((o, &v), &wi) in o.iter_mut().zip(row).zip(w) {
                *o = v * inv * wi;
            }
        }
    });
    out
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "policy-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = l1
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("rms-norm input must be contiguous".into()))?;
        let (wa, wb) = l2
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("rms-norm weight must be contiguous".into()))?;
        let d = *l1.dims().last().expect("rank >= 1");
        if wb - wa != d {
            candle_core::bail!("rms-norm weight has {} entries, rows have {d}", wb - wa);
        }
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(rms_rows(&x[a..b], &w[wa..wb], d, self.eps))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(rms_rows(&x[a..b], &w[wa..wb], d, self.eps))
            }
            _ => candle_core::bail!("rms-norm supports f32 and f64"),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // With xh = x * inv, inv = 1/sqrt(mean(x²) + eps):
        //   dx = inv * (g*w - xh * mean(g*w*xh)),   dw = Σ_rows g * xh.
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xh = x.broadcast_mul(&inv)?;
        let gw = g.broadcast_mul(w)?;
        let m = (&gw * &xh)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - xh.broadcast_mul(&m)?)?.broadcast_mul(&inv)?;
        let d = w.dim(0)?;
        let dw = (g * xh)?.reshape(((), d))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
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
        fn sqrt(self) -> Self;
        fn from_f64(v: f64) -> Self;
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
        fn sqrt(self) -> Self {
            f32::sqrt(self)
        }
        fn from_f64(v: f64) -> Self {
            v as f32
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
        fn sqrt(self) -> Self {
            f64::sqrt(self)
        }
        fn from_f64(v: f64) -> Self {
            v
        }
        fn zero() -> Self {
            0.0
        }
        fn one() -> Self {
            1.0
        }
    }
}
