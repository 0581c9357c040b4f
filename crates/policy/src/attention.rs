//! Training-time attention as one CPU op with its own backward:
//! `y = softmax(q·kᵀ·scale + mask) · v` for all heads, with grouped-query heads.
//!
//! As a chain of candle ops (matmul, reshape, masked softmax, reshape, matmul, transpose,
//! copy) every score-sized intermediate of every layer got a zeroed gradient buffer and an
//! add in candle's backprop, and each small per-head matmul was split across threads inside
//! gemm. Here each (sequence, kv head) block runs on one thread with gemm, only the
//! probabilities are kept for the backward, and `v`, `y` and their gradients stay in the
//! projections' [B, T, heads, D] layout, so no transposed copies are made.

use crate::cpu::{n_threads, wide, Float, Mat};
use crate::cpu_op::{Arg, Cpu, FloatOp, Grads};
use crate::linear::{for_gemm, gemm_seq};
use crate::ops::exp_normalize;
use candle_core::{CpuStorage, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::{Arc, Mutex};

/// Queries q [B, H, T, D], keys k [B, KVH, S, D] (both after the rotary embedding) and
/// values v [B, S, KVH, D] give y [B, T, H·D]. Query head `h` reads kv head `h / (H / KVH)`.
/// A key is visible to query `t` when it is a real token (`key_mask`) and not in the future
/// (key index ≤ S − T + t); hidden keys get `mask_value` added, as the unfused path does.
#[derive(Debug)]
pub(crate) struct AttentionOp {
    scale: f64,
    mask_value: f64,
    key_mask: Arc<Vec<Vec<u8>>>,
    probs: Mutex<Option<CpuStorage>>,
    keep_probs: bool,
    /// The softmax's `exp` by `Float::exp_fast` (`cpu::fast_training`).
    fast: bool,
}

impl AttentionOp {
    pub fn new(scale: f64, mask_value: f64, key_mask: Arc<Vec<Vec<u8>>>, keep_probs: bool) -> Self {
        AttentionOp {
            scale,
            mask_value,
            key_mask,
            probs: Mutex::new(None),
            keep_probs,
            fast: crate::cpu::fast_training(),
        }
    }
}

/// Attention with a backward (through `AttentionOp`); `keep` decides whether the
/// probabilities are kept for it (they are recomputed otherwise).
pub(crate) fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &Arc<Vec<Vec<u8>>>,
    scale: f64,
    mask_value: f64,
) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let keep = q.track_op() || k.track_op() || v.track_op();
    let op = Cpu(AttentionOp::new(scale, mask_value, key_mask.clone(), keep));
    if keep {
        q.apply_op3(&k, &v, op)
    } else {
        q.apply_op3_no_bwd(&k, &v, &op)
    }
}

/// Attention of new queries over the KV cache, for reduced-precision sampling: q [B, H, T, D]
/// (contiguous), k and v [B, KVH, S, D] views into the cache (read in place, through their
/// strides), y [B, T, H·D]. One sequence per task, scores and weighted sums as plain loops:
/// at decoding (T = 1) each is a few hundred dot products of length D, which cost less than
/// the matmul calls, copies and bias tensor of the op-by-op path. A query with no visible key
/// (left padding) gets zeros, which nothing reads. f32 only.
pub(crate) fn cached_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: &[Vec<u8>],
    scale: f64,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (b, h, t, d) = q.dims4()?;
    let (_, kvh, s, _) = k.dims4()?;
    let q = q.contiguous()?;
    let (qs, ql) = q.storage_and_layout();
    let (ks, kl) = k.storage_and_layout();
    let (vs, vl) = v.storage_and_layout();
    let (qd, kd, vd) = (
        &f32_data(&qs)?[ql.start_offset()..],
        &f32_data(&ks)?[kl.start_offset()..],
        &f32_data(&vs)?[vl.start_offset()..],
    );
    let (kst, vst) = (kl.stride(), vl.stride());
    if kst[3] != 1 || vst[3] != 1 || key_mask.len() != b || key_mask.iter().any(|m| m.len() != s) {
        candle_core::bail!(
            "cached attention: want unit-stride heads and a key mask of {s} keys per row"
        );
    }
    let args = CachedArgs {
        q: qd,
        k: kd,
        v: vd,
        k_stride: kst,
        v_stride: vst,
        key_mask,
        dims: [h, kvh, t, s, d],
        scale: scale as f32,
    };
    let mut y = vec![0f32; b * t * h * d];
    y.par_chunks_mut(t * h * d)
        .enumerate()
        .for_each(|(bi, yb)| wide(|| attend_row(&args, bi, yb)));
    Tensor::from_vec(y, (b, t, h * d), q.device())
}

struct CachedArgs<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    k_stride: &'a [usize],
    v_stride: &'a [usize],
    key_mask: &'a [Vec<u8>],
    /// H, KVH, T, S, D.
    dims: [usize; 5],
    scale: f32,
}

/// Sequence `bi` of `cached_attention` into `yb` [T, H·D]: per kv head, the scores of its g
/// query heads against each visible key, their softmax, then the weighted sum of values.
#[inline(always)]
fn attend_row(a: &CachedArgs, bi: usize, yb: &mut [f32]) {
    let [h, kvh, t, s, d] = a.dims;
    let g = h / kvh;
    let mut w = vec![0f32; g * s];
    let keys = &a.key_mask[bi];
    let at = |st: &[usize], kh: usize, si: usize| bi * st[0] + kh * st[1] + si * st[2];
    for kh in 0..kvh {
        for ti in 0..t {
            let visible = s - t + ti + 1;
            let q_of = |j: usize| &a.q[((bi * h + kh * g + j) * t + ti) * d..][..d];
            for si in 0..visible {
                let k = &a.k[at(a.k_stride, kh, si)..][..d];
                for j in 0..g {
                    w[j * s + si] = if keys[si] != 0 {
                        dot(q_of(j), k) * a.scale
                    } else {
                        f32::NEG_INFINITY
                    };
                }
            }
            for j in 0..g {
                let wj = &mut w[j * s..j * s + visible];
                let max = wj.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                if max == f32::NEG_INFINITY {
                    wj.fill(0.0);
                    continue;
                }
                // Only sampling copies run this: the approximate exp vectorizes.
                wj.iter_mut()
                    .for_each(|x| *x = crate::cpu::exp_approx(*x - max));
                let inv = 1.0 / wj.iter().sum::<f32>();
                wj.iter_mut().for_each(|x| *x *= inv);
            }
            for si in 0..visible {
                let v = &a.v[at(a.v_stride, kh, si)..][..d];
                for j in 0..g {
                    let p = w[j * s + si];
                    let out = &mut yb[(ti * h + kh * g + j) * d..][..d];
                    for (o, &x) in out.iter_mut().zip(v) {
                        *o += p * x;
                    }
                }
            }
        }
    }
}

fn f32_data(st: &candle_core::Storage) -> Result<&[f32]> {
    match st {
        candle_core::Storage::Cpu(CpuStorage::F32(x)) => Ok(x),
        _ => candle_core::bail!("cached attention: f32 CPU tensors only"),
    }
}

/// A dot product in 16 independent lanes, so it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        let (x, y): (&[f32; 16], &[f32; 16]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    kvh: usize,
    g: usize,
    t: usize,
    s: usize,
    d: usize,
}

impl Dims {
    fn of(q: &Layout, k: &Layout, v: &Layout, key_mask: &[Vec<u8>]) -> Result<Self> {
        let (b, h, t, d) = q.shape().dims4()?;
        let (kb, kvh, s, kd) = k.shape().dims4()?;
        if kb != b || kd != d || kvh == 0 || h % kvh != 0 || v.dims() != [b, s, kvh, d] {
            candle_core::bail!(
                "attention: q {:?}, k {:?}, v {:?} do not fit [B,H,T,D], [B,KVH,S,D], [B,S,KVH,D]",
                q.dims(),
                k.dims(),
                v.dims()
            );
        }
        if s < t || key_mask.len() != b || key_mask.iter().any(|r| r.len() != s) {
            candle_core::bail!("attention: key mask must be {b} rows of {s} (and S >= T = {t})");
        }
        Ok(Dims {
            b,
            h,
            kvh,
            g: h / kvh,
            t,
            s,
            d,
        })
    }
    fn tasks(&self) -> usize {
        self.b * self.kvh
    }
    /// Rows (G·T) × width of one block.
    fn gt(&self) -> usize {
        self.g * self.t
    }
}

/// Calls `f(task, a_block, b_block)` for tasks 0..n, task i owning `a[i·a_per..][..a_per]`
/// and `b[i·b_per..][..b_per]`, with the tasks split across threads in contiguous runs.
fn par_tasks<T: Send>(
    n: usize,
    a: &mut [T],
    a_per: usize,
    b: &mut [T],
    b_per: usize,
    f: impl Fn(usize, &mut [T], &mut [T]) + Sync,
) {
    if n == 0 {
        return;
    }
    let per = n.div_ceil(n_threads().clamp(1, n.max(1)));
    a.par_chunks_mut(per * a_per)
        .zip(b.par_chunks_mut(per * b_per))
        .enumerate()
        .for_each(|(c, (ac, bc))| {
            for (j, (ai, bi)) in ac.chunks_mut(a_per).zip(bc.chunks_mut(b_per)).enumerate() {
                f(c * per + j, ai, bi);
            }
        });
}

impl AttentionOp {
    /// Probabilities of one block [G·T, S]: scores by gemm, then the masked softmax per row.
    fn probs_into<T: Float + 'static>(&self, p: &mut [T], q: &[T], k: &[T], dm: Dims, task: usize) {
        let Dims { t, s, d, .. } = dm;
        let bi = task / dm.kvh;
        let qb = Mat::rows(&q[task * dm.gt() * d..][..dm.gt() * d], d);
        let kb = Mat::rows(&k[task * s * d..][..s * d], d);
        gemm_seq(p, qb, kb.t());
        let (scale, hidden) = (T::from_f64(self.scale), T::from_f64(self.mask_value));
        let keys = &self.key_mask[bi];
        for (r, row) in p.chunks_exact_mut(s).enumerate() {
            let last = s - t + r % t;
            let mut m = T::zero();
            for (ki, z) in row.iter_mut().enumerate() {
                *z = *z * scale;
                if ki > last || keys[ki] == 0 {
                    *z = *z + hidden;
                }
                if ki == 0 || *z > m {
                    m = *z;
                }
            }
            if self.fast {
                crate::ops::exp_normalize_fast(row, m);
            } else {
                exp_normalize(row, m);
            }
        }
    }

    /// Values of one block as a strided [S, D] view of v [B, S, KVH, D].
    fn v_block<'a, T>(v: &'a [T], dm: Dims, task: usize) -> Mat<'a, T> {
        let (bi, kv) = (task / dm.kvh, task % dm.kvh);
        Mat {
            data: &v[bi * dm.s * dm.kvh * dm.d + kv * dm.d..],
            rows: dm.s,
            cols: dm.d,
            rs: dm.kvh * dm.d,
            cs: 1,
        }
    }

    fn forward<T: Float + Send + Sync + 'static>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        dm: Dims,
    ) -> (Vec<T>, Vec<T>) {
        let Dims { s, d, .. } = dm;
        let (gts, gtd) = (dm.gt() * s, dm.gt() * d);
        let mut p = for_gemm(dm.tasks() * gts);
        let mut yt = for_gemm(dm.tasks() * gtd);
        par_tasks(dm.tasks(), &mut p, gts, &mut yt, gtd, |task, pb, yb| {
            self.probs_into(pb, q, k, dm, task);
            gemm_seq(yb, Mat::rows(pb, s), Self::v_block(v, dm, task));
        });
        let mut y = for_gemm(yt.len());
        reorder_heads(&mut y, &yt, dm, true);
        (y, p)
    }

    fn backward<T: Float + Send + Sync + 'static>(
        &self,
        q: &[T],
        k: &[T],
        v: &[T],
        dy: &[T],
        kept: Option<&[T]>,
        dm: Dims,
    ) -> Vec<T> {
        let Dims { s, d, .. } = dm;
        let (gts, gtd, sd) = (dm.gt() * s, dm.gt() * d, s * d);
        let mut dyt = for_gemm(dy.len());
        reorder_heads(&mut dyt, dy, dm, false);
        let nq = dm.tasks() * gtd;
        let mut out = for_gemm(nq + 2 * dm.tasks() * sd);
        let (dq, dkv) = out.split_at_mut(nq);
        let mut kv_blocks = for_gemm(dm.tasks() * 2 * sd);
        let scale = T::from_f64(self.scale);
        par_tasks(
            dm.tasks(),
            dq,
            gtd,
            &mut kv_blocks,
            2 * sd,
            |task, dqb, kvb| {
                let mut scratch;
                let p = match kept {
                    Some(p) => &p[task * gts..][..gts],
                    None => {
                        scratch = for_gemm(gts);
                        self.probs_into(&mut scratch, q, k, dm, task);
                        &scratch[..]
                    }
                };
                let dyb = Mat::rows(&dyt[task * gtd..][..gtd], d);
                let (dkb, dvb) = kvb.split_at_mut(sd);
                gemm_seq(dvb, Mat::rows(p, s).t(), dyb);
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, with dP = dy · vᵀ
                let mut ds = for_gemm(gts);
                gemm_seq(&mut ds, dyb, Self::v_block(v, dm, task).t());
                for (dr, pr) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                    let mut c = T::zero();
                    for (&x, &y) in dr.iter().zip(pr) {
                        c = c + x * y;
                    }
                    for (x, &y) in dr.iter_mut().zip(pr) {
                        *x = y * (*x - c) * scale;
                    }
                }
                let dsm = Mat::rows(&ds[..], s);
                gemm_seq(dqb, dsm, Mat::rows(&k[task * sd..][..sd], d));
                gemm_seq(dkb, dsm.t(), Mat::rows(&q[task * gtd..][..gtd], d));
            },
        );
        // dk is already in k's [B, KVH, S, D] order; dv goes back to v's [B, S, KVH, D].
        let (dk, dv) = dkv.split_at_mut(dm.tasks() * sd);
        for task in 0..dm.tasks() {
            let (bi, kv) = (task / dm.kvh, task % dm.kvh);
            let blk = &kv_blocks[task * 2 * sd..][..2 * sd];
            dk[task * sd..][..sd].copy_from_slice(&blk[..sd]);
            for si in 0..s {
                let at = (bi * s + si) * dm.kvh * d + kv * d;
                dv[at..at + d].copy_from_slice(&blk[sd + si * d..][..d]);
            }
        }
        out
    }
}

/// Moves rows between block order [B, KVH, G, T, D] and projection order [B, T, H·D]
/// (`to_tokens`), or back.
fn reorder_heads<T: Copy>(dst: &mut [T], src: &[T], dm: Dims, to_tokens: bool) {
    let Dims {
        b, kvh, g, t, d, h, ..
    } = dm;
    for bi in 0..b {
        for kv in 0..kvh {
            for gi in 0..g {
                for ti in 0..t {
                    let blocked = (((bi * kvh + kv) * g + gi) * t + ti) * d;
                    let tokens = (bi * t + ti) * h * d + (kv * g + gi) * d;
                    let (from, to) = if to_tokens {
                        (blocked, tokens)
                    } else {
                        (tokens, blocked)
                    };
                    dst[to..to + d].copy_from_slice(&src[from..from + d]);
                }
            }
        }
    }
}

impl FloatOp<3> for AttentionOp {
    fn name(&self) -> &'static str {
        "policy-attention"
    }
    fn fwd<T: Float>(&self, [(q, l1), (k, l2), (v, l3)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let dm = Dims::of(l1, l2, l3, &self.key_mask)?;
        let (y, p) = self.forward(q, k, v, dm);
        if self.keep_probs {
            *self.probs.lock().unwrap() = Some(T::storage(p));
        }
        Ok((y, Shape::from((dm.b, dm.t, dm.h * dm.d))))
    }

    fn bwd(&self, [q, k, v]: [&Tensor; 3], _: &Tensor, grad: &Tensor) -> Grads<3> {
        let dy = grad.flatten_all()?;
        let dy = match grad.dtype() {
            DType::F32 => CpuStorage::F32(dy.to_vec1()?),
            DType::F64 => CpuStorage::F64(dy.to_vec1()?),
            dt => candle_core::bail!("attention supports f32 and f64, got {dt:?}"),
        };
        let op = Cpu(AttentionBwd {
            fwd: self,
            dy,
            kept: self.probs.lock().unwrap().take(),
        });
        let d = q.apply_op3_no_bwd(k, v, &op)?;
        let (nq, nk) = (q.elem_count(), k.elem_count());
        let part = |t: &Tensor, at: usize, n: usize| -> Result<Option<Tensor>> {
            if !t.track_op() {
                return Ok(None);
            }
            Ok(Some(d.narrow(0, at, n)?.reshape(t.shape())?))
        };
        Ok([part(q, 0, nq)?, part(k, nq, nk)?, part(v, nq + nk, nk)?])
    }
}

/// The backward of `AttentionOp` on (q, k, v): [dq | dk | dv] flattened, each in its
/// argument's layout.
struct AttentionBwd<'a> {
    fwd: &'a AttentionOp,
    dy: CpuStorage,
    kept: Option<CpuStorage>,
}

impl FloatOp<3> for AttentionBwd<'_> {
    fn name(&self) -> &'static str {
        "policy-attention-bwd"
    }
    fn fwd<T: Float>(&self, [(q, l1), (k, l2), (v, l3)]: [Arg<T>; 3]) -> Result<(Vec<T>, Shape)> {
        let dm = Dims::of(l1, l2, l3, &self.fwd.key_mask)?;
        let Some(dy) = T::slice(&self.dy) else {
            candle_core::bail!("attention supports f32 and f64 (q, k, v and dy the same)");
        };
        let kept = self.kept.as_ref().and_then(T::slice);
        let out = self.fwd.backward(q, k, v, dy, kept, dm);
        let n = l1.shape().elem_count() + 2 * l2.shape().elem_count();
        Ok((out, Shape::from(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn uniform(shape: &[usize], seed: u64) -> Var {
        Var::from_tensor(&crate::linear::tests::uniform(shape, seed)).unwrap()
    }

    /// The same attention from candle primitives: repeat kv heads, scores + bias, softmax.
    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, keys: &[Vec<u8>], scale: f64) -> Tensor {
        let (b, h, t, d) = q.dims4().unwrap();
        let (kvh, s) = (k.dim(1).unwrap(), k.dim(2).unwrap());
        let rep = |x: &Tensor| {
            let x = x
                .unsqueeze(2)
                .unwrap()
                .repeat((1, 1, h / kvh, 1, 1))
                .unwrap();
            x.reshape((b, h, s, d)).unwrap()
        };
        let (k, v) = (rep(k), rep(&v.transpose(1, 2).unwrap()));
        let mut bias = Vec::new();
        for row in keys {
            for ti in 0..t {
                for (ki, &m) in row.iter().enumerate() {
                    let seen = ki <= s - t + ti && m != 0;
                    bias.push(if seen { 0.0 } else { -1e9 });
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, s), &Device::Cpu).unwrap();
        let z = (q.matmul(&k.t().unwrap()).unwrap() * scale).unwrap();
        let z = z.broadcast_add(&bias).unwrap();
        let m = z.max_keepdim(D::Minus1).unwrap().detach();
        let e = z.broadcast_sub(&m).unwrap().exp().unwrap();
        let p = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        let y = p.matmul(&v).unwrap(); // [B, H, T, D]
        y.transpose(1, 2).unwrap().reshape((b, t, h * d)).unwrap()
    }

    #[test]
    fn cached_attention_reads_strided_cache_views_like_the_reference() {
        // 2 rows, 6 query heads over 2 kv heads, 3 new tokens after 4 cached, one padded key.
        let (b, h, kvh, t, s, d, room) = (2, 6, 2, 3, 7, 16, 10);
        let f32 = |shape: &[usize], seed| uniform(shape, seed).to_dtype(DType::F32).unwrap();
        let q = f32(&[b, h, t, d], 1);
        let kc = f32(&[b, kvh, room, d], 2);
        let vc = f32(&[b, kvh, room, d], 3);
        let (k, v) = (kc.narrow(2, 0, s).unwrap(), vc.narrow(2, 0, s).unwrap());
        let keys = vec![vec![1u8; s], vec![0, 1, 1, 1, 1, 1, 1]];
        let got = cached_attention(&q, &k, &v, &keys, 0.25).unwrap();
        let f64 = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
        let vt = v.transpose(1, 2).unwrap();
        let want = reference(&f64(&q), &f64(&k), &f64(&vt), &keys, 0.25);
        let diff = (f64(&got) - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(diff.to_scalar::<f64>().unwrap() < 1e-5);
    }

    #[test]
    fn fused_attention_matches_primitives_in_value_and_gradient() {
        let (b, h, kvh, t, d) = (2, 6, 2, 5, 3);
        // Row 0 left-padded by two; row 1 has a padded key in the middle.
        let keys = Arc::new(vec![vec![0, 0, 1, 1, 1], vec![1, 1, 0, 1, 1]]);
        let (q, k, v) = (
            uniform(&[b, h, t, d], 1),
            uniform(&[b, kvh, t, d], 2),
            uniform(&[b, t, kvh, d], 3),
        );
        let probe = uniform(&[b, t, h * d], 4).as_tensor().detach();
        let scale = 0.7;
        let want = reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), &keys, scale);
        let gw = (&want * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for keep in [true, false] {
            let op = Cpu(AttentionOp::new(scale, -1e9, keys.clone(), keep));
            let y = q
                .as_tensor()
                .apply_op3(k.as_tensor(), v.as_tensor(), op)
                .unwrap();
            let diff = (&y - &want).unwrap().abs().unwrap().max_all().unwrap();
            assert!(diff.to_scalar::<f64>().unwrap() < 1e-12);
            let g = (y * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            for x in [&q, &k, &v] {
                let (a, r) = (g.get(x).unwrap(), gw.get(x).unwrap());
                assert_eq!(a.dims(), x.dims());
                let diff = (a - r).unwrap().abs().unwrap().max_all().unwrap();
                assert!(diff.to_scalar::<f64>().unwrap() < 1e-12, "keep {keep}");
            }
        }
    }

    #[test]
    fn fused_attention_rejects_bad_shapes() {
        let keys = Arc::new(vec![vec![1u8; 4]]);
        let (q, k) = (uniform(&[1, 4, 4, 2], 1), uniform(&[1, 3, 4, 2], 2));
        let v = uniform(&[1, 4, 3, 2], 3);
        let e = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &keys,
            1.0,
            -1e9,
        );
        assert!(e.unwrap_err().to_string().contains("do not fit"));
    }

    /// Under bf16 training matmuls RMSNorm, SwiGLU, attention and the output projection take their fast
    /// kernels (`exp_fast`, one-pass backwards, another summation order); below the bf16
    /// matmul size these are the only difference, and it stays at f32 rounding.
    #[test]
    fn fast_training_kernels_match_the_exact_ones() {
        use crate::bf16::{with_matmul_precision, Precision};
        use crate::linear::OutputLogProbs;
        use crate::ops::{rms_norm, swiglu};
        use candle_core::Var;
        let dev = candle_core::Device::Cpu;
        let t = |shape: &[usize], s: f64| Tensor::randn(0f32, s as f32, shape, &dev).unwrap();
        let (x, w, gate, up) = (
            t(&[3, 5, 64], 2.0),
            t(&[64], 1.0),
            t(&[3, 5, 96], 3.0),
            t(&[3, 5, 96], 1.0),
        );
        let (h, wo) = (t(&[12, 32], 1.0), t(&[300, 32], 1.0));
        let targets: Vec<u32> = (0..12).map(|i| i * 23 % 300).collect();
        // attention: q [B, H, T, D], k [B, KVH, S, D], v [B, S, KVH, D]; row 1 left-padded
        let (q, k, v) = (
            t(&[2, 4, 20, 8], 1.0),
            t(&[2, 2, 20, 8], 1.0),
            t(&[2, 20, 2, 8], 1.0),
        );
        let mut pad = vec![1u8; 20];
        pad[..3].fill(0);
        let keys = std::sync::Arc::new(vec![vec![1u8; 20], pad]);
        let run = |p: Precision| {
            with_matmul_precision(p, || {
                let vars: Vec<Var> = [&x, &w, &gate, &up, &h, &wo, &q, &k, &v]
                    .iter()
                    .map(|t| Var::from_tensor(t).unwrap())
                    .collect();
                let [x, w, gate, up, h, wo, q, k, v] =
                    [0, 1, 2, 3, 4, 5, 6, 7, 8].map(|i| vars[i].as_tensor());
                let y = attention(q, k, v, &keys, 0.35, -1e9).unwrap();
                let norm = rms_norm(x, w, 1e-5).unwrap();
                let act = swiglu(gate, up).unwrap();
                let op = Cpu(OutputLogProbs::new(0.8, true, targets.clone()));
                let lp = h.apply_op2(wo, op).unwrap().narrow(1, 0, 1).unwrap();
                let loss = ((norm.sqr().unwrap().sum_all().unwrap()
                    + act.sin().unwrap().sum_all().unwrap())
                .unwrap()
                    + lp.sum_all().unwrap())
                .unwrap();
                let loss = (loss + y.sin().unwrap().sum_all().unwrap()).unwrap();
                let grads = loss.backward().unwrap();
                let mut out = vec![norm, act, lp, y];
                out.extend(vars.iter().map(|v| grads.get(v).unwrap().clone()));
                out
            })
        };
        let (exact, fast) = (run(Precision::F32), run(Precision::Bf16));
        for (i, (a, b)) in exact.iter().zip(&fast).enumerate() {
            let scale = a
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
            let diff = diff.to_scalar::<f32>().unwrap();
            assert!(
                diff <= 2e-5 * scale,
                "tensor {i}: max difference {diff} at scale {scale}"
            );
        }
        // they are other kernels, not the same ones
        let bits = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(exact.iter().zip(&fast).any(|(a, b)| bits(a) != bits(b)));
    }
}
