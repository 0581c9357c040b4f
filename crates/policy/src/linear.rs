//! CPU matmul ops with their own backward: the linear projection `x · Wᵀ`, and the output
//! projection fused with the log-softmax of the target tokens.
//!
//! Built from candle primitives, one linear is four graph nodes (reshape, transpose, matmul,
//! reshape), and candle's backprop allocates a zeroed gradient and adds into it for every
//! node; zeroing, adding and faulting in those buffers was about a fifth of a SmolLM2 training
//! step in `perf`. Here a linear is one node whose backward calls gemm (the kernels candle's
//! matmul uses) into fresh buffers, with no zeroing pass. The output projection goes further:
//! its forward writes the logits once and keeps them for the backward, which turns them into
//! their own gradient in place, so no other [tokens, vocab] buffer is ever allocated.

use crate::bf16::{packed_weight, round_to_bf16, Kernel, PackedBf16};
use crate::cpu::{
    fast_training, matmul_precision, par_out, wide, with_matmul_precision, Float, Mat, Precision,
};
use crate::cpu_op::{fused_ok, Arg, Cpu, FloatOp, Grads};
use crate::grad_sink::{self, GradSink};
use candle_core::{CpuStorage, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use std::sync::{Arc, Mutex};

/// `x @ w^T (+ b)` for `x` of any rank: the `Linear` op below on the CPU, the flattened
/// matmul elsewhere.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> crate::Result<Tensor> {
    let y = if fused_ok(x) {
        x.contiguous()?
            .apply_op2(&w.contiguous()?, Cpu(Linear::new()))?
    } else {
        let (rows, in_dim) = rows_of(x)?;
        let y = x.reshape((rows, in_dim))?.matmul(&w.t()?)?;
        y.reshape(out_dims(x, w)?)?
    };
    Ok(match b {
        Some(b) => y.broadcast_add(b)?,
        None => y,
    })
}

/// `linear` for inference (no autograd graph). With few rows (decoding) the product is
/// computed as `W @ x^T`: gemm then streams the contiguous weight as its left operand instead
/// of packing the whole weight matrix for every step, which is faster at decoding batch sizes
/// on SmolLM2's shapes (docs/benchmarks.md, "Generation kernels"); the small [out, rows]
/// result is transposed back.
pub(crate) fn linear_infer(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> crate::Result<Tensor> {
    let (rows, in_dim) = rows_of(x)?;
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
    Ok(y.reshape(out_dims(x, w)?)?)
}

/// Up to this many rows `linear_infer` uses the `W @ x^T` form...
const SMALL_ROWS: usize = 64;
/// ...unless the output is this wide: for a vocabulary-sized output projection the plain form
/// is the faster one at decoding batch sizes (docs/benchmarks.md, "Generation kernels"), and
/// it needs no transposed copy of the wide result.
const SMALL_ROWS_MAX_OUT: usize = 16_384;

/// (rows, width) of `x` seen as a matrix of its last dim.
fn rows_of(x: &Tensor) -> Result<(usize, usize)> {
    let in_dim = width(x.layout())?;
    Ok((x.elem_count() / in_dim, in_dim))
}

/// The dims of `x @ w^T`: those of `x` with the last one `w`'s output size.
fn out_dims(x: &Tensor, w: &Tensor) -> Result<Vec<usize>> {
    let mut out = x.dims().to_vec();
    *out.last_mut().expect("rank >= 1") = w.dim(0)?;
    Ok(out)
}

/// A buffer gemm will overwrite completely, so it skips the zeroing pass `vec![0; n]` costs.
#[allow(clippy::uninit_vec)]
pub(crate) fn for_gemm<T: Float>(n: usize) -> Vec<T> {
    let mut v = Vec::with_capacity(n);
    // SAFETY: `Float` is only f32/f64, which have no invalid bit patterns, and every caller
    // overwrites the whole buffer (gemm, or a loop over every element) before reading it.
    unsafe { v.set_len(n) };
    v
}

/// `dst` (row-major [a.rows, b.cols]) `= a · b`, on all threads; in bf16 (f32 accumulation)
/// when `cpu::with_matmul_precision` asks for it and the product is large enough to gain.
pub(crate) fn gemm_into<T: Float + 'static>(dst: &mut [T], a: Mat<T>, b: Mat<T>) {
    gemm_packing(dst, a, b, false)
}

/// `gemm_into` where `b` is a weight: in bf16 its packing is reused across the micro-batches
/// of a gradient computation (`bf16::cache_weight_packs`).
pub(crate) fn gemm_into_weight<T: Float + 'static>(dst: &mut [T], a: Mat<T>, b: Mat<T>) {
    gemm_packing(dst, a, b, true)
}

fn gemm_packing<T: Float + 'static>(dst: &mut [T], a: Mat<T>, b: Mat<T>, weight: bool) {
    if a.rows * a.cols * b.cols >= BF16_MIN_WORK && matmul_precision() == Precision::Bf16 {
        if let (Some(dst), Some(a), Some(b)) = (T::f32_mut(dst), a.f32(), b.f32()) {
            let kernel = Kernel::best();
            if kernel.trains_via_gemm() {
                // No bf16 instructions: the same products (exact in f32) through f32 gemm.
                // Weights are rounded again per call, not cached: caching f32 copies raised
                // the SmolLM2 bench step's peak from 3.4 to 4.5 GiB, and rounding per call
                // measured within the step's noise (docs/benchmarks.md, "GRPO step").
                let (a_r, b_r) = (round_to_bf16(a.data), round_to_bf16(b.data));
                let (a, b) = (Mat { data: &a_r, ..a }, Mat { data: &b_r, ..b });
                return gemm_with(dst, a, b, all_threads());
            }
            if weight {
                packed_weight(b).matmul_into(dst, a, kernel);
            } else {
                PackedBf16::pack_b(b).matmul_into(dst, a, kernel);
            }
            return;
        }
    }
    gemm_with(dst, a, b, all_threads())
}

fn all_threads() -> Parallelism {
    let threads = candle_core::utils::get_num_threads();
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// Multiply-adds below which a product stays f32: packing both operands costs about as much.
const BF16_MIN_WORK: usize = 1 << 20;

/// `gemm_into` on the calling thread, for callers that already split work across threads.
pub(crate) fn gemm_seq<T: Float + 'static>(dst: &mut [T], a: Mat<T>, b: Mat<T>) {
    gemm_with(dst, a, b, Parallelism::None)
}

fn gemm_with<T: Float + 'static>(dst: &mut [T], a: Mat<T>, b: Mat<T>, par: Parallelism) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert!(b.rows == k && dst.len() == m * n && a.in_bounds() && b.in_bounds());
    if k == 0 {
        dst.fill(T::zero());
        return;
    }
    // SAFETY: both views were checked to lie inside their slices and `dst` has exactly m·n
    // elements; `dst` is borrowed mutably, so it overlaps neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// The last dim of a layout (the matrix width every op here reads rows of).
fn width(l: &Layout) -> Result<usize> {
    l.dims()
        .last()
        .copied()
        .ok_or_else(|| candle_core::Error::Msg("a matrix op needs rank >= 1".into()))
}

/// `x · Wᵀ` for `x` [..., in] and `W` [out, in], as one graph node with a gemm backward.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    /// The matmul precision at the forward, which the backward reuses.
    precision: Precision,
    /// Where the weight's gradient goes when the weight is a parameter (`grad_sink`).
    sink: Option<Arc<GradSink>>,
}

impl Linear {
    pub(crate) fn new() -> Self {
        Linear {
            precision: matmul_precision(),
            sink: grad_sink::current(),
        }
    }
}

impl FloatOp<2> for Linear {
    fn name(&self) -> &'static str {
        "policy-linear"
    }
    fn fwd<T: Float>(&self, [(x, l1), (w, l2)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let (out, inp) = l2.shape().dims2()?;
        if width(l1)? != inp {
            candle_core::bail!("linear: input width {} but weight {out}x{inp}", width(l1)?);
        }
        let mut dims = l1.dims().to_vec();
        *dims.last_mut().unwrap() = out;
        let x = Mat::rows(x, inp);
        let mut y = for_gemm(x.rows * out);
        gemm_into_weight(&mut y, x, Mat::rows(w, inp).t());
        Ok((y, Shape::from(dims)))
    }
    fn bwd(&self, [x, w]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Grads<2> {
        with_matmul_precision(self.precision, || self.grads(x, w, grad))
    }
}

impl Linear {
    fn grads(&self, x: &Tensor, w: &Tensor, grad: &Tensor) -> Grads<2> {
        let g = grad.contiguous()?;
        // A frozen (detached) argument gets no gradient: no gemm is spent on it.
        let dx = if x.track_op() {
            Some(
                g.apply_op2_no_bwd(w, &Cpu(Product { ta: false }))?
                    .reshape(x.shape())?,
            )
        } else {
            None
        };
        let dw = if w.track_op() {
            let dw = g.apply_op2_no_bwd(x, &Cpu(Product { ta: true }))?;
            match &self.sink {
                Some(sink) if w.is_variable() => {
                    sink.add(w, dw)?;
                    None
                }
                _ => Some(dw),
            }
        } else {
            None
        };
        Ok([dx, dw])
    }
}

/// `A · B` (or `Aᵀ · B` with `ta`) with `A` and `B` contiguous and viewed as matrices of
/// their last-dim width: the two products of the linear backward, `dx = g · W` and
/// `dW = gᵀ · x`. No backward of its own.
#[derive(Debug, Clone, Copy)]
struct Product {
    ta: bool,
}

impl FloatOp<2> for Product {
    fn name(&self) -> &'static str {
        "policy-product"
    }
    fn fwd<T: Float>(&self, [(a, l1), (b, l2)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let (wa, wb) = (width(l1)?, width(l2)?);
        let a = if self.ta {
            Mat::rows(a, wa).t()
        } else {
            Mat::rows(a, wa)
        };
        let b = Mat::rows(b, wb);
        if a.cols != b.rows {
            candle_core::bail!("product: {}x{} times {}x{}", a.rows, a.cols, b.rows, b.cols);
        }
        let mut c = for_gemm(a.rows * b.cols);
        if self.ta {
            gemm_into(&mut c, a, b) // dW = gᵀ · x: b is an activation
        } else {
            gemm_into_weight(&mut c, a, b) // dx = g · W
        }
        Ok((c, Shape::from((a.rows, b.cols))))
    }
}

/// Output projection fused with the target log-softmax: from hidden states `h` [N, H], the
/// output weight `W` [V, H] and the op's N targets, gives [N, 2] = (log softmax(h·Wᵀ / T)
/// [target], entropy of softmax(h·Wᵀ / T)) per row. Only the log-prob column has a gradient:
/// the entropy is for monitoring, and a gradient reaching it is an error, not a silent zero.
///
/// With `keep_logits` the forward keeps its [N, V] logits for the backward (which overwrites
/// them with their gradient); without it the backward recomputes them (one more gemm).
#[derive(Debug)]
pub(crate) struct OutputLogProbs {
    inv_t: f64,
    keep_logits: bool,
    targets: Vec<u32>,
    logits: Mutex<Option<CpuStorage>>,
    /// Each row's log-sum-exp, kept with the logits: the backward needs no second pass.
    lse: Mutex<Option<CpuStorage>>,
    /// The matmul precision at the forward, which the backward reuses.
    precision: Precision,
    /// `Float::exp_fast` in both passes (`cpu::fast_training`).
    fast: bool,
    /// Where a parameter weight's gradient goes under `fast` (`grad_sink`).
    sink: Option<Arc<GradSink>>,
}

impl OutputLogProbs {
    pub fn new(temperature: f64, keep_logits: bool, targets: Vec<u32>) -> Self {
        OutputLogProbs {
            inv_t: 1.0 / temperature,
            keep_logits,
            targets,
            logits: Mutex::new(None),
            lse: Mutex::new(None),
            precision: matmul_precision(),
            fast: fast_training(),
            sink: fast_training().then(grad_sink::current).flatten(),
        }
    }
}

fn check_targets(tg: &[u32], n: usize, v: usize) -> Result<()> {
    if tg.len() != n || tg.iter().any(|&t| t as usize >= v) {
        candle_core::bail!("targets: need {n} ids below {v}");
    }
    Ok(())
}

/// Logits `h · Wᵀ` [N, V].
fn logits_of<T: Float + 'static>(h: &[T], w: &[T], hid: usize) -> Vec<T> {
    let (h, w) = (Mat::rows(h, hid), Mat::rows(w, hid));
    let mut z = for_gemm(h.rows * w.rows);
    gemm_into_weight(&mut z, h, w.t());
    z
}

/// `row_stats` with `Float::exp_fast` and sixteen partial sums per quantity (another
/// summation order), so that it vectorizes.
fn row_stats_fast<T: Float>(row: &[T], inv_t: T) -> (T, T) {
    const L: usize = 16;
    wide(|| {
        let (body, tail) = row.split_at(row.len() - row.len() % L);
        let mut m = [row[0]; L];
        for c in body.chunks_exact(L) {
            for (m, &v) in m.iter_mut().zip(c) {
                *m = if v > *m { v } else { *m };
            }
        }
        let m = m
            .iter()
            .chain(tail)
            .fold(row[0], |a, &b| if b > a { b } else { a })
            * inv_t;
        let (mut s, mut sz) = ([T::zero(); L], [T::zero(); L]);
        for c in body.chunks_exact(L) {
            for ((s, sz), &v) in s.iter_mut().zip(&mut sz).zip(c) {
                let z = v * inv_t;
                let e = (z - m).exp_fast();
                *s = *s + e;
                *sz = *sz + e * z;
            }
        }
        let (mut s1, mut sz1) = (T::zero(), T::zero());
        for &v in tail {
            let z = v * inv_t;
            let e = (z - m).exp_fast();
            s1 = s1 + e;
            sz1 = sz1 + e * z;
        }
        let s = s.iter().fold(s1, |a, &b| a + b);
        let sz = sz.iter().fold(sz1, |a, &b| a + b);
        let lse = m + s.ln();
        (lse, lse - sz / s)
    })
}

/// Log-sum-exp of `row * inv_t` and the entropy of its softmax, in two passes (`fast`:
/// `row_stats_fast`).
fn row_stats<T: Float>(row: &[T], inv_t: T, fast: bool) -> (T, T) {
    if fast {
        return row_stats_fast(row, inv_t);
    }
    let mut m = row[0];
    for &v in row {
        if v > m {
            m = v;
        }
    }
    let m = m * inv_t;
    // With z = x / T and e = exp(z - m): lse = m + ln Σe, entropy = lse - Σ e·z / Σ e.
    let (mut s, mut sz) = (T::zero(), T::zero());
    for &v in row {
        let z = v * inv_t;
        let e = (z - m).exp();
        s = s + e;
        sz = sz + e * z;
    }
    let lse = m + s.ln();
    (lse, lse - sz / s)
}

impl FloatOp<2> for OutputLogProbs {
    fn name(&self) -> &'static str {
        "policy-output-log-probs"
    }
    fn fwd<T: Float>(&self, [(h, l1), (w, l2)]: [Arg<T>; 2]) -> Result<(Vec<T>, Shape)> {
        let (n, hid) = l1.shape().dims2()?;
        let (v, hid2) = l2.shape().dims2()?;
        if hid != hid2 {
            candle_core::bail!("output projection: hidden {hid} but weight {v}x{hid2}");
        }
        let tg = &self.targets;
        check_targets(tg, n, v)?;
        let z = logits_of(h, w, hid);
        let inv_t = T::from_f64(self.inv_t);
        // (log-prob, entropy, lse) per row; the lse stays for the backward.
        let mut stats = vec![T::zero(); 3 * n];
        let fast = self.fast;
        par_out(&mut stats, 3, z.len(), |r0, out| {
            for (j, o) in out.chunks_exact_mut(3).enumerate() {
                let r = r0 + j;
                let row = &z[r * v..(r + 1) * v];
                let (lse, ent) = row_stats(row, inv_t, fast);
                o.copy_from_slice(&[row[tg[r] as usize] * inv_t - lse, ent, lse]);
            }
        });
        let out = stats.chunks_exact(3).flat_map(|o| [o[0], o[1]]).collect();
        if self.keep_logits {
            *self.logits.lock().unwrap() = Some(T::storage(z));
            let lse = stats.chunks_exact(3).map(|o| o[2]).collect();
            *self.lse.lock().unwrap() = Some(T::storage(lse));
        }
        Ok((out, Shape::from((n, 2))))
    }

    fn bwd(&self, [h, w]: [&Tensor; 2], _: &Tensor, grad: &Tensor) -> Grads<2> {
        let (n, hid) = h.dims2()?;
        let v = w.dim(0)?;
        let (need_dh, need_dw) = (h.track_op(), w.track_op());
        let back = Cpu(OutputLogProbsBwd {
            inv_t: self.inv_t,
            targets: self.targets.clone(),
            logits: Mutex::new(self.logits.lock().unwrap().take()),
            lse: Mutex::new(self.lse.lock().unwrap().take()),
            need_dh,
            need_dw,
            fast: self.fast,
        });
        let d = with_matmul_precision(self.precision, || {
            h.apply_op3_no_bwd(w, &grad.contiguous()?, &back)
        })?;
        // `d` packs [dh (N·H) | dW (V·H)], each only when wanted, in one buffer.
        let dh_len = if need_dh { n * hid } else { 0 };
        let dh = need_dh
            .then(|| d.narrow(0, 0, dh_len)?.reshape((n, hid)))
            .transpose()?;
        let dw = need_dw
            .then(|| d.narrow(0, dh_len, v * hid)?.reshape((v, hid)))
            .transpose()?;
        match (dw, &self.sink) {
            (Some(dw), Some(sink)) if w.is_variable() => {
                sink.add(w, dw)?;
                Ok([dh, None])
            }
            (dw, _) => Ok([dh, dw]),
        }
    }
}

/// The backward of `OutputLogProbs` on (h, W, grad [N, 2]): d logits = g · (onehot(target) −
/// softmax(z / T)) / T, written over the logits, then dh = d · W and dW = dᵀ · h, packed
/// into one flat output (a custom op has one).
struct OutputLogProbsBwd {
    inv_t: f64,
    targets: Vec<u32>,
    logits: Mutex<Option<CpuStorage>>,
    lse: Mutex<Option<CpuStorage>>,
    need_dh: bool,
    need_dw: bool,
    fast: bool,
}

impl OutputLogProbsBwd {
    fn go<T: Float + Send + Sync + 'static>(
        &self,
        h: &[T],
        w: &[T],
        g: &[T],
        kept: Option<(Vec<T>, Vec<T>)>,
        hid: usize,
    ) -> Result<Vec<T>> {
        let tg = &self.targets;
        let n = tg.len();
        let v = w.len() / hid;
        if g.len() != 2 * n {
            candle_core::bail!("output projection grad: want {n}x2, got {} values", g.len());
        }
        if g.chunks_exact(2).any(|r| r[1] != T::zero()) {
            candle_core::bail!("the entropy from the output projection has no gradient: detach it");
        }
        let inv_t = T::from_f64(self.inv_t);
        let fast = self.fast;
        let (mut d, lse) = match kept {
            Some((z, lse)) if z.len() == n * v && lse.len() == n => (z, Some(lse)),
            _ => (logits_of(h, w, hid), None),
        };
        let work = d.len();
        par_out(&mut d, v, work, |r0, rows| {
            for (j, row) in rows.chunks_exact_mut(v).enumerate() {
                let r = r0 + j;
                let gi = g[2 * r] * inv_t;
                let lse = match &lse {
                    Some(l) => l[r],
                    None => row_stats(row, inv_t, fast).0,
                };
                if fast {
                    logit_grads::<T, true>(row, gi, inv_t, lse);
                } else {
                    logit_grads::<T, false>(row, gi, inv_t, lse);
                }
                let t = tg[r] as usize;
                row[t] = row[t] + gi;
            }
        });
        let dh_len = if self.need_dh { n * hid } else { 0 };
        let dw_len = if self.need_dw { v * hid } else { 0 };
        let mut out = for_gemm(dh_len + dw_len);
        let (dh, dw) = out.split_at_mut(dh_len);
        let dm = Mat::rows(&d[..], v);
        if self.need_dh {
            gemm_into_weight(dh, dm, Mat::rows(w, hid));
        }
        if self.need_dw {
            gemm_into(dw, dm.t(), Mat::rows(h, hid));
        }
        Ok(out)
    }
}

/// A row of logits z overwritten by `-gi · softmax(z / T)` (`lse` its log-sum-exp).
fn logit_grads<T: Float, const FAST: bool>(row: &mut [T], gi: T, inv_t: T, lse: T) {
    if FAST {
        wide(|| {
            for x in row.iter_mut() {
                *x = T::zero() - gi * (*x * inv_t - lse).exp_fast();
            }
        })
    } else {
        for x in row.iter_mut() {
            *x = T::zero() - gi * (*x * inv_t - lse).exp();
        }
    }
}

impl FloatOp<3> for OutputLogProbsBwd {
    fn name(&self) -> &'static str {
        "policy-output-log-probs-bwd"
    }
    fn fwd<T: Float>(&self, [(h, l1), (w, l2), (g, _)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let (n, hid) = l1.shape().dims2()?;
        let v = l2.shape().dims2()?.0;
        check_targets(&self.targets, n, v)?;
        // The kept logits, unless they were of another float type (then they are recomputed).
        let z = self.logits.lock().unwrap().take().and_then(T::vec);
        let lse = self.lse.lock().unwrap().take().and_then(T::vec);
        let out = self.go(h, w, g, z.zip(lse), hid)?;
        let len = usize::from(self.need_dh) * n * hid + usize::from(self.need_dw) * v * hid;
        Ok((out, Shape::from(len)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::{DType, Device, Var, D};

    /// A seeded f64 tensor with entries uniform in [-1, 1).
    pub(crate) fn uniform(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn bf16_training_matmuls_compute_the_rounded_products_on_every_path() {
        // Above BF16_MIN_WORK, so bf16 applies: whichever path this CPU takes (f32 gemm over
        // rounded operands without bf16 instructions, the packed kernels with them), with the
        // weight as a transposed view (x · Wᵀ), cached or not.
        let (m, k, n) = (64, 130, 161);
        assert!(m * k * n >= BF16_MIN_WORK);
        let to_vec = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let a64 = to_vec(uniform(&[m, k], 7));
        let w64 = to_vec(uniform(&[n, k], 8));
        let (a, w): (Vec<f32>, Vec<f32>) = (
            a64.iter().map(|&v| v as f32).collect(),
            w64.iter().map(|&v| v as f32).collect(),
        );
        let r = |v: f32| f32::from_bits((crate::bf16::to_bf16(v) as u32) << 16) as f64;
        let run = |weight: bool| {
            let mut y = vec![0f32; m * n];
            let (av, wv) = (Mat::rows(&a, k), Mat::rows(&w, k).t());
            with_matmul_precision(Precision::Bf16, || match weight {
                true => gemm_into_weight(&mut y, av, wv),
                false => gemm_into(&mut y, av, wv),
            });
            y
        };
        let plain = run(false);
        let cached = {
            let _scope = crate::bf16::cache_weight_packs();
            run(true);
            run(true) // the second call reads the cache
        };
        assert_eq!(plain, cached);
        let mut worst = 0f64;
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k).map(|t| r(a[i * k + t]) * r(w[j * k + t])).sum();
                let exact: f64 = (0..k).map(|t| a64[i * k + t] * w64[j * k + t]).sum();
                let got = plain[i * n + j] as f64;
                assert!((got - want).abs() < 1e-4, "{got} vs {want}");
                worst = worst.max((want - exact).abs());
            }
        }
        // and the rounding did happen: bf16 operands are off the f64 product by far more
        assert!(worst > 1e-3, "{worst}");
    }

    #[test]
    fn linear_matches_matmul_in_value_and_gradient() {
        let x = Var::from_tensor(&uniform(&[2, 3, 5], 1)).unwrap();
        let w = Var::from_tensor(&uniform(&[7, 5], 2)).unwrap();
        let probe = uniform(&[2, 3, 7], 3);
        let y = x
            .as_tensor()
            .apply_op2(w.as_tensor(), Cpu(Linear::new()))
            .unwrap();
        let reference = x
            .as_tensor()
            .reshape((6, 5))
            .unwrap()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .reshape((2, 3, 7))
            .unwrap();
        assert_eq!(y.dims(), &[2, 3, 7]);
        assert!(max_abs_diff(&y, &reference) < 1e-12);
        let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let gr = (reference * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &w] {
            let (a, b) = (g.get(v).unwrap(), gr.get(v).unwrap());
            assert_eq!(a.dims(), v.dims());
            assert!(max_abs_diff(a, b) < 1e-12);
        }
        // A detached weight gets no gradient (and costs no gemm).
        let y = x
            .as_tensor()
            .apply_op2(&w.as_tensor().detach(), Cpu(Linear::new()))
            .unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_none() && g.get(&x).is_some());
    }

    #[test]
    fn a_grad_sink_takes_the_weight_gradient_out_of_the_store_with_the_same_bits() {
        let x = Var::from_tensor(&uniform(&[4, 3, 5], 1)).unwrap();
        let w = Var::from_tensor(&uniform(&[7, 5], 2)).unwrap();
        let probe = uniform(&[4, 3, 7], 3);
        let grads = |rows: std::ops::Range<usize>| {
            let x = x.as_tensor().narrow(0, rows.start, rows.len()).unwrap();
            let y = x.apply_op2(w.as_tensor(), Cpu(Linear::new())).unwrap();
            let p = probe.narrow(0, rows.start, rows.len()).unwrap();
            (y * p).unwrap().sum_all().unwrap().backward().unwrap()
        };
        // two micro-batches summed as the trainer did before the sink: 0 + g1, then + g2
        let want = (grads(0..2).get(&w).unwrap() + grads(2..4).get(&w).unwrap()).unwrap();
        let scope = crate::grad_sink::install_grad_sink();
        let (g1, g2) = (grads(0..2), grads(2..4));
        assert!(g1.get(&w).is_none() && g2.get(&w).is_none());
        assert!(g1.get(&x).is_some(), "inputs still get their gradient");
        let got = scope.take(w.as_tensor()).unwrap();
        assert_eq!(
            got.to_vec2::<f64>().unwrap(),
            want.to_vec2::<f64>().unwrap()
        );
        // a weight that is not a parameter (here a product) keeps its gradient in the store
        let w2 = (w.as_tensor() * 2.0).unwrap();
        let y = x.as_tensor().apply_op2(&w2, Cpu(Linear::new())).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        assert!(g.get(&w).is_some());
    }

    #[test]
    fn linear_rejects_mismatched_widths_and_dtypes() {
        let x = uniform(&[3, 4], 1);
        let e = x
            .apply_op2(&uniform(&[2, 5], 2), Cpu(Linear::new()))
            .unwrap_err();
        assert!(e.to_string().contains("input width 4"), "{e}");
        let w = uniform(&[2, 4], 2).to_dtype(DType::F32).unwrap();
        let e = x.apply_op2(&w, Cpu(Linear::new())).unwrap_err();
        assert!(e.to_string().contains("f32 and f64"), "{e}");
    }

    /// log softmax(h·Wᵀ / T)[target] and the entropy, from primitives.
    fn reference(h: &Tensor, w: &Tensor, tg: &[u32], t: f64) -> (Tensor, Tensor) {
        let z = (h.matmul(&w.t().unwrap()).unwrap() / t).unwrap();
        let m = z.max_keepdim(D::Minus1).unwrap().detach();
        let s = z.broadcast_sub(&m).unwrap();
        let lsm = s
            .broadcast_sub(
                &s.exp()
                    .unwrap()
                    .sum_keepdim(D::Minus1)
                    .unwrap()
                    .log()
                    .unwrap(),
            )
            .unwrap();
        let idx = Tensor::from_vec(tg.to_vec(), (tg.len(), 1), &Device::Cpu).unwrap();
        let logp = lsm.gather(&idx, 1).unwrap().squeeze(1).unwrap();
        let ent = (lsm.exp().unwrap() * &lsm)
            .unwrap()
            .sum(1)
            .unwrap()
            .neg()
            .unwrap();
        (logp, ent)
    }

    #[test]
    fn output_log_probs_match_primitives_kept_or_recomputed() {
        let tg = vec![3u32, 0, 10, 7];
        let probe = uniform(&[4], 9);
        for keep in [true, false] {
            let h = Var::from_tensor(&uniform(&[4, 6], 4)).unwrap();
            let w = Var::from_tensor(&uniform(&[11, 6], 5)).unwrap();
            let op = Cpu(OutputLogProbs::new(0.7, keep, tg.clone()));
            let both = h.as_tensor().apply_op2(w.as_tensor(), op).unwrap();
            let (lp, ent) = reference(h.as_tensor(), w.as_tensor(), &tg, 0.7);
            assert!(max_abs_diff(&both.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), &lp) < 1e-12);
            let our_ent = both.narrow(1, 1, 1).unwrap().squeeze(1).unwrap();
            assert!(max_abs_diff(&our_ent, &ent) < 1e-12);
            let loss = (both.narrow(1, 0, 1).unwrap().squeeze(1).unwrap() * &probe).unwrap();
            let g = loss.sum_all().unwrap().backward().unwrap();
            let gr = (lp * &probe)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            for v in [&h, &w] {
                assert!(max_abs_diff(g.get(v).unwrap(), gr.get(v).unwrap()) < 1e-12);
            }
        }
    }

    #[test]
    fn output_log_probs_refuse_a_gradient_through_the_entropy() {
        let h = Var::from_tensor(&uniform(&[2, 3], 1)).unwrap();
        let w = uniform(&[5, 3], 2);
        let op = |targets: Vec<u32>| Cpu(OutputLogProbs::new(1.0, true, targets));
        let both = h.as_tensor().apply_op2(&w, op(vec![1, 4])).unwrap();
        let e = both.sum_all().unwrap().backward().unwrap_err();
        assert!(e.to_string().contains("entropy"), "{e}");
        let e = h.as_tensor().apply_op2(&w, op(vec![1, 5])).unwrap_err();
        assert!(e.to_string().contains("below 5"), "{e}");
    }
}
