//! CPU custom ops *with* a backward pass: softmax/log-softmax over the last dim, RMSNorm,
//! rotary embedding, masked attention softmax and SwiGLU (the matmul ops are in `linear.rs`).
//!
//! Built from primitives (max, sub, exp, sum, div, ...) they are exact but keep several
//! full-size intermediates per layer alive for backward, which at SmolLM2 scale with
//! 4,096-token batches outgrows a small machine's memory (docs/benchmarks.md, "The policy's
//! own CPU training ops"). These ops keep only what their backward
//! needs, run their loops on all threads (candle's CPU element-wise ops use one), and their
//! `bwd` is the textbook Jacobian-vector product, checked against the primitive versions and
//! by the finite-difference tests. The wrappers below pick them on the CPU and the primitive
//! versions (each op with a backward in candle) on other devices. Each op is a
//! `cpu_op::FloatOp`, written once for f32 and f64.

use crate::cpu::{exp_approx, fast_training, n_threads, par_out, par_rows, wide, Float, PAR_MIN};
use crate::cpu_op::{fused_ok, Arg, Cpu, FloatOp, Grads};
use candle_core::{Result, Shape, Tensor, D};
use rayon::prelude::*;

/// Rows `ids` (u32, flat) of `table`. Under bf16 training with a gradient sink installed the
/// table's gradient goes to the sink row by row, instead of candle's zeroed table-sized
/// gradient per micro-batch (about a tenth of a GB for SmolLM2's vocabulary).
pub(crate) fn embedding(table: &Tensor, ids: &Tensor) -> crate::Result<Tensor> {
    match crate::grad_sink::current() {
        Some(sink) if fused_ok(table) && fast_training() && table.is_variable() => {
            let ids = ids.to_vec1::<u32>()?;
            Ok(table.apply_op1(Cpu(Embedding { ids, sink }))?)
        }
        _ => Ok(table.index_select(ids, 0)?),
    }
}

/// `embedding`'s op: the forward gathers rows, the backward adds into the sink.
struct Embedding {
    ids: Vec<u32>,
    sink: std::sync::Arc<crate::grad_sink::GradSink>,
}

impl FloatOp<1> for Embedding {
    fn name(&self) -> &'static str {
        "policy-embedding"
    }
    fn fwd<T: Float>(&self, [(table, l)]: [Arg<T>; 1]) -> Result<(Vec<T>, Shape)> {
        let (v, h) = l.shape().dims2()?;
        let mut out = Vec::with_capacity(self.ids.len() * h);
        for &id in &self.ids {
            if id as usize >= v {
                candle_core::bail!("embedding: token {id} outside the table of {v}");
            }
            out.extend_from_slice(&table[id as usize * h..][..h]);
        }
        Ok((out, Shape::from((self.ids.len(), h))))
    }
    fn bwd(&self, [table]: [&Tensor; 1], _: &Tensor, grad: &Tensor) -> Grads<1> {
        self.sink.add_rows(table, &self.ids, grad)?;
        Ok([None])
    }
}

/// RMSNorm, `x / sqrt(mean(x²) + eps) * w`, with a backward pass.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    if fused_ok(x) {
        return Ok(x.contiguous()?.apply_op2(
            &w.contiguous()?,
            Cpu(RmsNormOp {
                eps,
                fast: fast_training(),
            }),
        )?);
    }
    rms_norm_primitive(x, w, eps)
}

/// RMSNorm from primitives (each with a backward in candle).
pub fn rms_norm_primitive(x: &Tensor, w: &Tensor, eps: f64) -> crate::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let inv = (ms + eps)?.sqrt()?.recip()?;
    Ok(x.broadcast_mul(&inv)?.broadcast_mul(w)?)
}

/// Softmax over the last dim with a backward pass.
pub fn softmax_last(x: &Tensor) -> crate::Result<Tensor> {
    if fused_ok(x) {
        return Ok(x.contiguous()?.apply_op1(Cpu(SoftmaxLast { log: false }))?);
    }
    softmax_last_primitive(x)
}

/// Log-softmax over the last dim; same dispatch as `softmax_last`.
pub fn log_softmax_last(x: &Tensor) -> crate::Result<Tensor> {
    if fused_ok(x) {
        return Ok(x.contiguous()?.apply_op1(Cpu(SoftmaxLast { log: true }))?);
    }
    log_softmax_last_primitive(x)
}

/// Softmax over the last dim from primitives. The max is detached: softmax does not depend on
/// it, so the gradient stays exact while `exp` cannot overflow.
pub fn softmax_last_primitive(x: &Tensor) -> crate::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&m)?.exp()?;
    let s = e.sum_keepdim(D::Minus1)?;
    Ok(e.broadcast_div(&s)?)
}

/// Log-softmax over the last dim from primitives (same detached-max trick).
pub fn log_softmax_last_primitive(x: &Tensor) -> crate::Result<Tensor> {
    let m = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&m)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

/// Rotary embedding of `x` [B,T,H,D] returned as [B,H,T,D] (the layout attention needs);
/// `cos`/`sin` [B,T,D/2] hold one half of the table, gathered per (batch, position) so
/// left-padded rows get their own positions.
pub(crate) fn rope_to_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> crate::Result<Tensor> {
    if fused_ok(x) {
        return Ok(x
            .contiguous()?
            .apply_op3(cos, sin, Cpu(Rope { to_heads: true }))?);
    }
    // HF-style ("rotate half"): `x*cos + rotate_half(x)*sin` with the table's halves repeated.
    let full = |c: &Tensor| Tensor::cat(&[c, c], D::Minus1)?.unsqueeze(1);
    let (x, cos, sin) = (x.transpose(1, 2)?, full(cos)?, full(sin)?);
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rot = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(&cos)? + rot.broadcast_mul(&sin)?)?)
}

/// Attention probabilities `softmax(scale * scores + bias)` for scores [B,KVH,G,T,S] and bias
/// [B,1,1,T,S].
pub(crate) fn attention_probs(scores: &Tensor, bias: &Tensor, scale: f64) -> crate::Result<Tensor> {
    if fused_ok(scores) {
        return Ok(scores
            .contiguous()?
            .apply_op2(&bias.contiguous()?, Cpu(MaskedSoftmax { scale }))?);
    }
    softmax_last(&(scores * scale)?.broadcast_add(bias)?)
}

/// `silu(gate) * up`.
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    if fused_ok(gate) {
        return Ok(gate.contiguous()?.apply_op2(
            &up.contiguous()?,
            Cpu(SwiGlu {
                fast: fast_training(),
            }),
        )?);
    }
    Ok((gate.silu()? * up)?)
}

/// `silu(gate) * up` for a reduced-precision sampling copy: no autograd, and `exp` by
/// [`exp_approx`], which vectorizes (libm's `expf` does not: SwiGLU's exps were a tenth of a
/// bf16 decoding step). Sampling may approximate; training never runs this.
pub(crate) fn swiglu_approx(gate: &Tensor, up: &Tensor) -> crate::Result<Tensor> {
    let (g, u) = (gate.contiguous()?, up.contiguous()?);
    let (Ok(gd), Ok(ud)) = (
        g.flatten_all()?.to_vec1::<f32>(),
        u.flatten_all()?.to_vec1::<f32>(),
    ) else {
        return swiglu(gate, up);
    };
    if gd.len() != ud.len() {
        return Err(crate::Error::Invalid(format!(
            "swiglu: gate {:?} vs up {:?}",
            gate.dims(),
            up.dims()
        )));
    }
    let mut out = gd;
    let d = 256.min(out.len().max(1));
    // An approximate exp is far cheaper than a libm one: the split counts it as an eighth.
    let work = out.len() / 8;
    par_out(&mut out, d, work, |r0, o| {
        let u = &ud[r0 * d..][..o.len()];
        wide(|| silu_mul(o, u))
    });
    Ok(Tensor::from_vec(out, gate.shape(), gate.device())?)
}

#[inline(always)]
fn silu_mul(g: &mut [f32], u: &[f32]) {
    for (x, &u) in g.iter_mut().zip(u) {
        *x = *x / (1.0 + exp_approx(-*x)) * u;
    }
}

/// Softmax of a row in place, given its maximum: `exp(x - max)`, then divided by the sum.
pub(crate) fn exp_normalize<T: Float>(row: &mut [T], max: T) {
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum = sum + *x;
    }
    let inv = T::one() / sum;
    for x in row.iter_mut() {
        *x = *x * inv;
    }
}

/// `exp_normalize` with `Float::exp_fast` and sixteen partial sums (another summation
/// order), so that it vectorizes: for the reduced-precision training kernels.
pub(crate) fn exp_normalize_fast<T: Float>(row: &mut [T], max: T) {
    const L: usize = 16;
    wide(|| {
        let mut sums = [T::zero(); L];
        let split = row.len() - row.len() % L;
        for c in row[..split].chunks_exact_mut(L) {
            for (x, s) in c.iter_mut().zip(&mut sums) {
                *x = (*x - max).exp_fast();
                *s = *s + *x;
            }
        }
        let mut sum = T::zero();
        for x in row[split..].iter_mut() {
            *x = (*x - max).exp_fast();
            sum = sum + *x;
        }
        let inv = T::one() / sums.iter().fold(sum, |a, &b| a + b);
        for x in row.iter_mut() {
            *x = *x * inv;
        }
    })
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxLast {
    pub log: bool,
}

fn rows<T: Copy + Send + Sync + Float>(x: &[T], d: usize, log: bool) -> Vec<T> {
    let mut out = vec![T::zero(); x.len()];
    par_rows(x, &mut out, d, |x, out| rows_into(x, out, d, log));
    out
}

fn rows_into<T: Copy + Float>(x: &[T], out: &mut [T], d: usize, log: bool) {
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

impl FloatOp<1> for SoftmaxLast {
    fn name(&self) -> &'static str {
        if self.log {
            "policy-log-softmax-last"
        } else {
            "policy-softmax-last"
        }
    }

    fn fwd<T: Float>(&self, [(x, l)]: [Arg<T>; 1]) -> Result<(Vec<T>, Shape)> {
        let d = *l.dims().last().expect("rank >= 1");
        Ok((rows(x, d, self.log), l.shape().clone()))
    }

    fn bwd(&self, _: [&Tensor; 1], res: &Tensor, grad: &Tensor) -> Grads<1> {
        let g = if self.log {
            // y = x - lse(x): dx = g - softmax(x) * sum(g)
            let p = res.exp()?;
            let s = grad.sum_keepdim(D::Minus1)?;
            (grad - p.broadcast_mul(&s)?)?
        } else {
            // y = softmax(x): dx = y * (g - sum(g * y))
            res.apply_op2_no_bwd(&grad.contiguous()?, &Cpu(SoftmaxBwd { scale: 1.0 }))?
        };
        Ok([Some(g)])
    }
}

/// RMSNorm over the last dim, `x / sqrt(mean(x²) + eps) * w`, as a custom op with a backward
/// pass: the primitive composition keeps five full-size intermediates per norm for backward
/// (two norms per layer), this keeps none beyond its inputs, and runs on all threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RmsNormOp {
    pub eps: f64,
    /// The backward as one pass over the rows (`RmsNormBwd`) instead of candle primitives,
    /// whose summation order the f32 path keeps (`fast_training`).
    pub fast: bool,
}

fn rms_rows<T: Copy + Send + Sync + Float>(x: &[T], w: &[T], d: usize, eps: f64) -> Vec<T> {
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

impl FloatOp<2> for RmsNormOp {
    fn name(&self) -> &'static str {
        "policy-rms-norm"
    }

    fn fwd<T: Float>(&self, [(x, l), (w, _)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let d = *l.dims().last().expect("rank >= 1");
        if w.len() != d {
            candle_core::bail!("rms-norm weight has {} entries, rows have {d}", w.len());
        }
        Ok((rms_rows(x, w, d, self.eps), l.shape().clone()))
    }

    fn bwd(&self, [x, w]: [&Tensor; 2], _res: &Tensor, g: &Tensor) -> Grads<2> {
        // With xh = x * inv, inv = 1/sqrt(mean(x²) + eps):
        //   dx = inv * (g*w - xh * mean(g*w*xh)),   dw = Σ_rows g * xh.
        // Detached, or dw (a parameter gradient, kept until the optimizer step) would hold
        // `x` and with it the whole forward graph.
        let (x, w) = (&x.detach(), &w.detach());
        if self.fast {
            let d = w.dim(0)?;
            let rows = x.elem_count() / d;
            let both =
                x.apply_op3_no_bwd(w, &g.contiguous()?, &Cpu(RmsNormBwd { eps: self.eps }))?;
            let dx = both.narrow(0, 0, rows)?.reshape(x.shape())?;
            let dw = both.narrow(0, rows, 1)?.reshape(d)?;
            return Ok([Some(dx), Some(dw)]);
        }
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?
            .sqrt()?
            .recip()?;
        let xh = x.broadcast_mul(&inv)?;
        let gw = g.broadcast_mul(w)?;
        let m = (&gw * &xh)?.mean_keepdim(D::Minus1)?;
        let dx = (gw - xh.broadcast_mul(&m)?)?.broadcast_mul(&inv)?;
        let d = w.dim(0)?;
        let dw = (g * xh)?.reshape(((), d))?.sum(0)?;
        Ok([Some(dx), Some(dw)])
    }
}

/// The backward of `RmsNormOp` on (x, w, g) in one pass over the rows: [rows + 1, d] holding
/// dx, then dw (summed per thread, then across threads).
#[derive(Debug, Clone, Copy)]
struct RmsNormBwd {
    eps: f64,
}

impl FloatOp<3> for RmsNormBwd {
    fn name(&self) -> &'static str {
        "policy-rms-norm-bwd"
    }
    fn fwd<T: Float>(&self, [(x, _), (w, _), (g, _)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let d = w.len();
        let rows = x.len() / d.max(1);
        let (eps, n) = (T::from_f64(self.eps), T::from_f64(d as f64));
        let mut out = vec![T::zero(); x.len() + d];
        let (dx, dw) = out.split_at_mut(x.len());
        let per = rows.div_ceil(n_threads()).max(1) * d;
        let partial = |(dx, (x, g)): (&mut [T], (&[T], &[T]))| {
            let mut dw = vec![T::zero(); d];
            for ((o, x), g) in dx
                .chunks_exact_mut(d)
                .zip(x.chunks_exact(d))
                .zip(g.chunks_exact(d))
            {
                let (mut ss, mut gwx) = (T::zero(), T::zero());
                for ((&x, &g), &w) in x.iter().zip(g).zip(w) {
                    ss = ss + x * x;
                    gwx = gwx + g * w * x;
                }
                let inv = T::one() / (ss / n + eps).sqrt();
                let m = gwx * inv / n;
                for ((((o, &x), &g), &w), dw) in o.iter_mut().zip(x).zip(g).zip(w).zip(&mut dw) {
                    let xh = x * inv;
                    *o = inv * (g * w - xh * m);
                    *dw = *dw + g * xh;
                }
            }
            dw
        };
        let sum = |a: Vec<T>, b: Vec<T>| a.iter().zip(&b).map(|(&a, &b)| a + b).collect();
        let total: Vec<T> = if x.len() < PAR_MIN {
            partial((dx, (x, g)))
        } else {
            dx.par_chunks_mut(per)
                .zip(x.par_chunks(per).zip(g.par_chunks(per)))
                .map(partial)
                .reduce(|| vec![T::zero(); d], sum)
        };
        dw.copy_from_slice(&total);
        Ok((out, Shape::from((rows + 1, d))))
    }
}

/// `y * (g - Σ y g) * scale` per row: the backward of a softmax whose input was scaled by
/// `scale`, in one pass over `y` (the softmax output) and `g` (its gradient).
#[derive(Debug, Clone, Copy)]
pub(crate) struct SoftmaxBwd {
    pub scale: f64,
}

impl FloatOp<2> for SoftmaxBwd {
    fn name(&self) -> &'static str {
        "policy-softmax-bwd"
    }
    fn fwd<T: Float>(&self, [(y, l), (g, _)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let d = *l.dims().last().expect("rank >= 1");
        let mut out = vec![T::zero(); y.len()];
        let scale = T::from_f64(self.scale);
        let out_len = out.len();
        par_out(&mut out, d, out_len, |r0, out| {
            for (j, o) in out.chunks_exact_mut(d).enumerate() {
                let base = (r0 + j) * d;
                let (y, g) = (&y[base..base + d], &g[base..base + d]);
                let mut dot = T::zero();
                for (&a, &b) in y.iter().zip(g) {
                    dot = dot + a * b;
                }
                for ((o, &a), &b) in o.iter_mut().zip(y).zip(g) {
                    *o = a * (b - dot) * scale;
                }
            }
        });
        Ok((out, l.shape().clone()))
    }
}

/// Attention probabilities `softmax(scale * scores + bias)` over the last dim, for scores
/// [B, KVH, G, T, S] and an additive mask bias [B, 1, 1, T, S], as one custom op with a
/// backward: neither the scaled queries nor the biased scores (each as large as the scores)
/// are materialized, and only the output is kept for backward.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaskedSoftmax {
    pub scale: f64,
}

impl FloatOp<2> for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "policy-masked-softmax"
    }
    fn fwd<T: Float>(&self, [(x, l1), (bias, l2)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let dims = l1.dims();
        if dims.len() != 5 || l2.dims() != [dims[0], 1, 1, dims[3], dims[4]] {
            candle_core::bail!("masked softmax: scores {dims:?}, bias {:?}", l2.dims());
        }
        let (t, s) = (dims[3], dims[4]);
        let heads = dims[1] * dims[2];
        let mut out = vec![T::zero(); x.len()];
        let scale = T::from_f64(self.scale);
        let out_len = out.len();
        par_out(&mut out, s, out_len, |r0, out| {
            for (j, o) in out.chunks_exact_mut(s).enumerate() {
                let r = r0 + j;
                let (bi, ti) = (r / (heads * t), r % t);
                let x = &x[r * s..(r + 1) * s];
                let bias = &bias[(bi * t + ti) * s..(bi * t + ti + 1) * s];
                let mut m = x[0] * scale + bias[0];
                for ((o, &v), &bv) in o.iter_mut().zip(x).zip(bias) {
                    *o = v * scale + bv;
                    if *o > m {
                        m = *o;
                    }
                }
                exp_normalize(o, m);
            }
        });
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, _: [&Tensor; 2], res: &Tensor, grad: &Tensor) -> Grads<2> {
        let back = Cpu(SoftmaxBwd { scale: self.scale });
        let dx = res.apply_op2_no_bwd(&grad.contiguous()?, &back)?;
        Ok([Some(dx), None])
    }
}

/// HF ("rotate half") rotary embedding fused with the [B,T,H,D] -> [B,H,T,D] transpose that
/// attention needs next (`to_heads`), or, with `to_heads` false, the reverse direction
/// [B,H,T,D] -> [B,T,H,D]. `cos`/`sin`: [B,T,D/2] (one half of the duplicated table). Being
/// linear, its backward is the same op in the other direction with `-sin`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rope {
    pub to_heads: bool,
}

impl FloatOp<3> for Rope {
    fn name(&self) -> &'static str {
        "policy-rope"
    }
    fn fwd<T: Float>(
        &self,
        [(x, l1), (cos, l2), (sin, l3)]: [Arg<T>; 3],
    ) -> Result<(Vec<T>, Shape)> {
        let (b, d1, d2, d) = l1.shape().dims4()?;
        let to_heads = self.to_heads;
        let (t, h) = if to_heads { (d1, d2) } else { (d2, d1) };
        if l2.dims() != [b, t, d / 2] || l3.dims() != [b, t, d / 2] {
            candle_core::bail!("rope: x {:?}, cos {:?}", l1.dims(), l2.dims());
        }
        let mut out = vec![T::zero(); b * t * h * d];
        let half = d / 2;
        // Output rows of width d, in output order.
        let out_len = out.len();
        par_out(&mut out, d, out_len, |r0, out| {
            for (j, o) in out.chunks_exact_mut(d).enumerate() {
                let r = r0 + j;
                // Output index -> (bi, ti, hi).
                let (bi, ti, hi) = if to_heads {
                    (r / (h * t), r % t, (r / t) % h)
                } else {
                    (r / (t * h), (r / h) % t, r % h)
                };
                let src = if to_heads {
                    ((bi * t + ti) * h + hi) * d
                } else {
                    ((bi * h + hi) * t + ti) * d
                };
                let x = &x[src..src + d];
                let cs = (bi * t + ti) * half;
                let (c, sn) = (&cos[cs..cs + half], &sin[cs..cs + half]);
                for i in 0..half {
                    let (x1, x2) = (x[i], x[i + half]);
                    o[i] = x1 * c[i] - x2 * sn[i];
                    o[i + half] = x2 * c[i] + x1 * sn[i];
                }
            }
        });
        let shape = if to_heads { (b, h, t, d) } else { (b, t, h, d) };
        Ok((out, shape.into()))
    }
    fn bwd(&self, [_, cos, sin]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Grads<3> {
        let back = Cpu(Rope {
            to_heads: !self.to_heads,
        });
        let dx = grad
            .contiguous()?
            .apply_op3_no_bwd(cos, &sin.neg()?, &back)?;
        Ok([Some(dx), None, None])
    }
}

/// SwiGLU, `silu(gate) * up`, with a backward that recomputes `silu` instead of keeping it:
/// one [tokens, intermediate] tensor less per layer, and both cores busy.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SwiGlu {
    /// `Float::exp_fast`, and both gradients in one pass (`fast_training`).
    pub fast: bool,
}

/// Which backward product `SwiGluBwd` computes: d/dgate (`true`) or d/dup.
#[derive(Debug, Clone, Copy)]
struct SwiGluBwd {
    gate: bool,
}

fn swiglu_map<T: Copy + Send + Sync + Float>(
    a: &[T],
    b: &[T],
    c: Option<&[T]>,
    f: impl Fn(T, T, T) -> T + Sync,
) -> Vec<T> {
    let mut out = vec![T::zero(); a.len()];
    let d = 256.min(a.len().max(1));
    let out_len = out.len();
    par_out(&mut out, d, out_len, |r0, out| {
        let base = r0 * d;
        for (i, o) in out.iter_mut().enumerate() {
            let k = base + i;
            *o = f(a[k], b[k], c.map_or(T::zero(), |c| c[k]));
        }
    });
    out
}

fn sigmoid<T: Float + Copy>(x: T) -> T {
    T::one() / (T::one() + (T::zero() - x).exp())
}

#[inline(always)]
fn sigmoid_fast<T: Float + Copy>(x: T) -> T {
    T::one() / (T::one() + (T::zero() - x).exp_fast())
}

/// Both gradients of SwiGLU, d/dgate then d/dup, in one pass with one `exp_fast` per
/// element: [2 · n] for inputs of n elements.
#[derive(Debug, Clone, Copy)]
struct SwiGluBwdBoth;

impl FloatOp<3> for SwiGluBwdBoth {
    fn name(&self) -> &'static str {
        "policy-swiglu-bwd-both"
    }
    fn fwd<T: Float>(&self, [(g, _), (u, _), (dy, _)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let n = g.len();
        let mut out = vec![T::zero(); 2 * n];
        let (dg, du) = out.split_at_mut(n);
        let kernel = |(k, (dg, du)): (usize, (&mut [T], &mut [T]))| {
            let r = k * SWIGLU_CHUNK..;
            let (g, u, dy) = (&g[r.clone()], &u[r.clone()], &dy[r]);
            wide(|| {
                for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du).zip(g).zip(u).zip(dy) {
                    let s = sigmoid_fast(g);
                    *dg = dy * u * s * (T::one() + g * (T::one() - s));
                    *du = dy * g * s;
                }
            })
        };
        if n < PAR_MIN {
            kernel((0, (dg, du)));
        } else {
            dg.par_chunks_mut(SWIGLU_CHUNK)
                .zip(du.par_chunks_mut(SWIGLU_CHUNK))
                .enumerate()
                .for_each(kernel);
        }
        Ok((out, Shape::from(2 * n)))
    }
}

/// Elements per task of `SwiGluBwdBoth`.
const SWIGLU_CHUNK: usize = 1 << 14;

impl FloatOp<2> for SwiGlu {
    fn name(&self) -> &'static str {
        "policy-swiglu"
    }
    fn fwd<T: Float>(&self, [(g, l1), (u, l2)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("swiglu: gate {:?} vs up {:?}", l1.dims(), l2.dims());
        }
        let out = if self.fast {
            let mut out = g.to_vec();
            let out_len = out.len();
            par_out(&mut out, SWIGLU_CHUNK, out_len / 8, |r0, o| {
                let u = &u[r0 * SWIGLU_CHUNK..][..o.len()];
                wide(|| {
                    for (x, &u) in o.iter_mut().zip(u) {
                        *x = *x * sigmoid_fast(*x) * u;
                    }
                })
            });
            out
        } else {
            swiglu_map(g, u, None, |g, u, _| g * sigmoid(g) * u)
        };
        Ok((out, l1.shape().clone()))
    }
    fn bwd(&self, [gate, up]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Grads<2> {
        let grad = grad.contiguous()?;
        if self.fast {
            let both = gate.apply_op3_no_bwd(up, &grad, &Cpu(SwiGluBwdBoth))?;
            let n = gate.elem_count();
            let dg = both.narrow(0, 0, n)?.reshape(gate.shape())?;
            let du = both.narrow(0, n, n)?.reshape(gate.shape())?;
            return Ok([Some(dg), Some(du)]);
        }
        let dg = gate.apply_op3_no_bwd(up, &grad, &Cpu(SwiGluBwd { gate: true }))?;
        let du = gate.apply_op3_no_bwd(up, &grad, &Cpu(SwiGluBwd { gate: false }))?;
        Ok([Some(dg), Some(du)])
    }
}

impl FloatOp<3> for SwiGluBwd {
    fn name(&self) -> &'static str {
        "policy-swiglu-bwd"
    }
    fn fwd<T: Float>(&self, [(g, l), (u, _), (dy, _)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let out = if self.gate {
            // d silu(x)/dx = s(x) * (1 + x * (1 - s(x)))
            swiglu_map(g, u, Some(dy), |g, u, dy| {
                let s = sigmoid(g);
                dy * u * s * (T::one() + g * (T::one() - s))
            })
        } else {
            swiglu_map(g, u, Some(dy), |g, _u, dy| dy * g * sigmoid(g))
        };
        Ok((out, l.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_swiglu_matches_the_exact_op() {
        let dev = candle_core::Device::Cpu;
        let g = Tensor::randn(0f32, 3.0, (3, 2, 7000), &dev).unwrap();
        let u = Tensor::randn(0f32, 1.0, (3, 2, 7000), &dev).unwrap();
        let want = swiglu(&g, &u).unwrap();
        let got = swiglu_approx(&g, &u).unwrap();
        assert_eq!(got.dims(), want.dims());
        let diff = (got - &want).unwrap().abs().unwrap().max_all().unwrap();
        let scale = want.abs().unwrap().max_all().unwrap();
        let (d, s) = (
            diff.to_scalar::<f32>().unwrap(),
            scale.to_scalar::<f32>().unwrap(),
        );
        assert!(d <= 1e-6 * s, "max difference {d} at scale {s}");
    }
}
