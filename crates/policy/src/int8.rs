//! 8- and 4-bit weights for sampling (`sample_precision = "int8"` or `"int4"`): each weight row
//! quantized in blocks of 32 inputs, affine as GGUF's Q4_1: `w ≈ m + d · q`, `q` in 0..=255
//! (int8) or 0..=15 (int4), `m` the block's minimum and `d = (max - min) / 255` (or `/ 15`),
//! f32 each, multiplied by f32 activations with f32 accumulation. int4 is Q4_1's own grid (with
//! f32 rather than f16 steps and minima): a model fetched as Q4_1 keeps its weights exactly, in
//! 0.75 bytes per weight; any other model loses more than with int8. Affine rather than symmetric (Q8_0's `d · q`): its step
//! is never larger, and a block that came from GGUF's Q4_1 (16 evenly spaced levels, its
//! minimum and maximum always levels 0 and 15) keeps its levels to within an ulp (the step is
//! the 4-bit one / 17), so the fetched SmolLM2 (Q4_1) samples as from its own weights.
//! Decoding a token at batch 1 reads every weight once, so it is bound by memory: int8 reads
//! 1.25 bytes per weight (steps and minima included), int4 0.75, against bf16's 2 and f32's 4. The
//! activations stay f32 (llama.cpp rounds them to 8 bits too; we keep them exact, so the
//! only error is the weights'). Like the bf16 sampler, it only changes which tokens are
//! sampled: the log-probs GRPO differentiates come from the f32 teacher-forced pass.
//!
//! candle's own quantized matmul (`QMatMul` with Q8_0, 0.9.2) was measured 3-4x slower than
//! the bf16 sampler at batch 1 and 15-30x slower at batch 32 on SmolLM2's shapes (AVX2 EPYC),
//! so the kernel is our own: AVX2+FMA where the CPU has it, else a portable loop (which
//! computes all 4 rows of a call whatever the batch: a fallback, not a fast path).

use crate::bf16::PackedBf16;
use crate::cpu::{Isa, Mat, Precision, SendPtr};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;

/// Outputs per panel (two AVX2 vectors of 8).
const LANES: usize = 16;
/// Inputs per quantization block.
pub const BLOCK: usize = 32;
/// Rows of x per kernel call (4 x 2 accumulators and 4 x 2 block sums in 16 registers).
const ROWS: usize = 4;

/// A weight [out, in] as 8- or 4-bit blocks: panels of 16 outputs; within a panel, for each
/// input k the 16 outputs' codes (8 bits: one byte per lane; 4 bits: byte j holds lane j in
/// its low half and lane j + 8 in its high half), and for each block of 32 inputs the 16
/// outputs' steps and minima. Inputs are zero-padded to whole blocks (padding codes meet zero
/// inputs).
#[derive(Clone)]
pub struct PackedInt8 {
    out: usize,
    inp: usize,
    blocks: usize,
    /// 8 or 4.
    bits: u32,
    /// `[panel][k][bytes per k]`.
    q: Vec<u8>,
    /// `[panel][block][lane]`: the step `d`.
    d: Vec<f32>,
    /// `[panel][block][lane]`: the minimum `m`.
    m: Vec<f32>,
}

impl std::fmt::Debug for PackedInt8 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedInt{}({}x{})", self.bits, self.out, self.inp)
    }
}

impl PackedInt8 {
    /// Quantizes a rank-2 weight [out, in] of any float dtype to `bits` (8 or 4) per weight.
    pub fn pack(w: &Tensor, bits: u32) -> Result<Self> {
        assert!(bits == 8 || bits == 4, "8- or 4-bit codes");
        let (out, inp) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let blocks = inp.div_ceil(BLOCK);
        let kp = blocks * BLOCK;
        let per_k = LANES * bits as usize / 8;
        let levels = (1u32 << bits) - 1;
        let panels = out.div_ceil(LANES);
        let mut q = vec![0u8; panels * kp * per_k];
        let mut d = vec![0f32; panels * blocks * LANES];
        let mut m = vec![0f32; panels * blocks * LANES];
        q.par_chunks_mut(kp * per_k)
            .zip(d.par_chunks_mut(blocks * LANES))
            .zip(m.par_chunks_mut(blocks * LANES))
            .enumerate()
            .for_each(|(p, ((qp, dp), mp))| {
                for lane in 0..LANES.min(out - p * LANES) {
                    let row = &w[(p * LANES + lane) * inp..][..inp];
                    for (b, chunk) in row.chunks(BLOCK).enumerate() {
                        let (step, min) = block_range(chunk, levels);
                        dp[b * LANES + lane] = step;
                        mp[b * LANES + lane] = min;
                        for (i, &v) in chunk.iter().enumerate() {
                            let c = code(v, step, min, levels);
                            let k = b * BLOCK + i;
                            if bits == 8 {
                                qp[k * LANES + lane] = c;
                            } else {
                                qp[k * 8 + lane % 8] |= c << (4 * (lane / 8));
                            }
                        }
                    }
                }
            });
        Ok(PackedInt8 {
            out,
            inp,
            blocks,
            bits,
            q,
            d,
            m,
        })
    }

    /// The code of output `o` (panel `p`, lane) at input `k`.
    fn code_at(&self, p: usize, k: usize, lane: usize) -> u8 {
        let kp = self.blocks * BLOCK;
        if self.bits == 8 {
            self.q[(p * kp + k) * LANES + lane]
        } else {
            (self.q[(p * kp + k) * 8 + lane % 8] >> (4 * (lane / 8))) & 0x0F
        }
    }

    /// The weight this packing stands for, [out, in] row-major: `m + d · q`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.inp];
        for o in 0..self.out {
            let (p, lane) = (o / LANES, o % LANES);
            for k in 0..self.inp {
                let q = self.code_at(p, k, lane) as f32;
                let s = (p * self.blocks + k / BLOCK) * LANES + lane;
                w[o * self.inp + k] = self.m[s] + self.d[s] * q;
            }
        }
        w
    }

    /// `x · Wᵀ` for `x` [..., in] (f32), as f32 [..., out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        if inp != self.inp {
            return Err(Error::Invalid(format!(
                "int{} linear: input width {inp} but weight {}x{}",
                self.bits, self.out, self.inp
            )));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut y = vec![0f32; xs.len() / inp.max(1) * self.out];
        self.matmul_into(&mut y, Mat::rows(&xs, inp), Isa::Avx2.enabled());
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out;
        Ok(Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype())?)
    }

    /// `y` (row-major [x.rows, out]) `= x · Wᵀ`, with the AVX2 kernel when `avx2` (the caller
    /// checked the CPU has it).
    fn matmul_into(&self, y: &mut [f32], x: Mat<f32>, avx2: bool) {
        let rows = x.rows;
        assert!(x.cols == self.inp && x.cs == 1 && y.len() == rows * self.out);
        if rows == 0 || self.out == 0 {
            return;
        }
        // x rows padded with zeros to whole blocks (and to whole kernel calls), and each
        // block's sum (what the minima multiply)
        let kp = self.blocks * BLOCK;
        let padded = rows.next_multiple_of(ROWS);
        let mut xp = vec![0f32; padded * kp];
        let mut xsum = vec![0f32; padded * self.blocks];
        for (r, (dst, sums)) in xp
            .chunks_mut(kp)
            .zip(xsum.chunks_mut(self.blocks))
            .take(rows)
            .enumerate()
        {
            dst[..self.inp].copy_from_slice(&x.data[r * x.rs..][..self.inp]);
            for (s, blk) in sums.iter_mut().zip(dst.chunks(BLOCK)) {
                *s = blk.iter().sum();
            }
        }
        let panels = self.out.div_ceil(LANES);
        let per = panels.div_ceil(rayon::current_num_threads() * 4).max(1);
        let y_ptr = SendPtr(y.as_mut_ptr());
        (0..panels.div_ceil(per)).into_par_iter().for_each(|task| {
            let y_ptr = &y_ptr;
            for p in task * per..panels.min((task + 1) * per) {
                for r0 in (0..rows).step_by(ROWS) {
                    let scales = p * self.blocks * LANES..(p + 1) * self.blocks * LANES;
                    let per_k = LANES * self.bits as usize / 8;
                    let call = Call {
                        q: &self.q[p * kp * per_k..][..kp * per_k],
                        four: self.bits == 4,
                        d: &self.d[scales.clone()],
                        m: &self.m[scales],
                        x: &xp[r0 * kp..][..ROWS * kp],
                        xsum: &xsum[r0 * self.blocks..][..ROWS * self.blocks],
                        kp,
                    };
                    let mut acc = [[0f32; LANES]; ROWS];
                    #[cfg(target_arch = "x86_64")]
                    if avx2 {
                        // SAFETY: the caller checked the CPU has AVX2 and FMA; `call` holds
                        // whole blocks of one panel and ROWS whole rows of x.
                        unsafe {
                            match (rows - r0, call.four) {
                                (4.., false) => kernel_avx2::<4, false>(&call, &mut acc),
                                (3, false) => kernel_avx2::<3, false>(&call, &mut acc),
                                (2, false) => kernel_avx2::<2, false>(&call, &mut acc),
                                (_, false) => kernel_avx2::<1, false>(&call, &mut acc),
                                (4.., true) => kernel_avx2::<4, true>(&call, &mut acc),
                                (3, true) => kernel_avx2::<3, true>(&call, &mut acc),
                                (2, true) => kernel_avx2::<2, true>(&call, &mut acc),
                                (_, true) => kernel_avx2::<1, true>(&call, &mut acc),
                            }
                        };
                    } else {
                        kernel_portable(&call, &mut acc);
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = avx2;
                        kernel_portable(&call, &mut acc);
                    }
                    let n = LANES.min(self.out - p * LANES);
                    for (r, a) in acc.iter().enumerate().take(rows - r0) {
                        // SAFETY: row r0 + r < rows and columns p·16 .. p·16 + n < out lie
                        // inside `y`, and only this task writes panel p's columns.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                a.as_ptr(),
                                y_ptr.0.add((r0 + r) * self.out + p * LANES),
                                n,
                            )
                        };
                    }
                }
            }
        });
    }
}

/// A block's step `(max - min) / levels` and minimum (step 0 for a constant block).
fn block_range(block: &[f32], levels: u32) -> (f32, f32) {
    let (lo, hi) = block
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if !(hi - lo).is_finite() || hi <= lo {
        return (0.0, if lo.is_finite() { lo } else { 0.0 });
    }
    ((hi - lo) / levels as f32, lo)
}

/// The code of `v` in a block of this step and minimum: the nearest of `levels + 1` levels.
fn code(v: f32, step: f32, min: f32, levels: u32) -> u8 {
    if step == 0.0 {
        return 0;
    }
    ((v - min) / step).round().clamp(0.0, levels as f32) as u8
}

/// One kernel call: one panel's codes, steps and minima, and ROWS rows of x (`kp` each) with
/// their block sums.
struct Call<'a> {
    q: &'a [u8],
    /// 4-bit codes (two lanes per byte), else 8-bit.
    four: bool,
    d: &'a [f32],
    m: &'a [f32],
    x: &'a [f32],
    xsum: &'a [f32],
    kp: usize,
}

/// Per block: Σ (m + d·q)·x = d · Σ q·x + m · Σ x, the first sum in f32 per output.
fn kernel_portable(c: &Call, acc: &mut [[f32; LANES]; ROWS]) {
    let blocks = c.kp / BLOCK;
    for b in 0..blocks {
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let mut sum = [0f32; LANES];
            for k in b * BLOCK..(b + 1) * BLOCK {
                let xv = c.x[r * c.kp + k];
                for (lane, s) in sum.iter_mut().enumerate() {
                    let q = if c.four {
                        (c.q[k * 8 + lane % 8] >> (4 * (lane / 8))) & 0x0F
                    } else {
                        c.q[k * LANES + lane]
                    };
                    *s += q as f32 * xv;
                }
            }
            let xs = c.xsum[r * blocks + b];
            let (d, m) = (&c.d[b * LANES..][..LANES], &c.m[b * LANES..][..LANES]);
            for (l, a) in acc_r.iter_mut().enumerate() {
                *a += sum[l] * d[l] + m[l] * xs;
            }
        }
    }
}

/// `kernel_portable` with 8 lanes per instruction: each input's 16 codes are widened to two
/// f32 vectors (zero-extending loads, then conversions), which meet the rows' value in FMAs;
/// each block's sums then go into the accumulators by two FMAs per 8 (step, minimum).
/// `R` (at most ROWS) rows of x: the rest of `acc` is left alone. `FOUR`: 4-bit codes, the 8
/// bytes of an input split into low halves (lanes 0-7) and high halves (lanes 8-15).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2<const R: usize, const FOUR: bool>(c: &Call, acc: &mut [[f32; LANES]; ROWS]) {
    use std::arch::x86_64::*;
    let mut total = [[_mm256_setzero_ps(); 2]; R];
    let q = c.q.as_ptr();
    let x = c.x.as_ptr();
    let nibble = _mm_set1_epi8(0x0F);
    for b in 0..c.kp / BLOCK {
        let mut sum = [[_mm256_setzero_ps(); 2]; R];
        for k in b * BLOCK..(b + 1) * BLOCK {
            let (lo, hi) = if FOUR {
                let bytes = _mm_loadl_epi64(q.add(k * 8) as *const _);
                (
                    _mm_and_si128(bytes, nibble),
                    _mm_and_si128(_mm_srli_epi16(bytes, 4), nibble),
                )
            } else {
                let qk = q.add(k * LANES);
                (
                    _mm_loadl_epi64(qk as *const _),
                    _mm_loadl_epi64(qk.add(8) as *const _),
                )
            };
            let lo = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo));
            let hi = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi));
            for (r, s) in sum.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x.add(r * c.kp + k));
                s[0] = _mm256_fmadd_ps(lo, xv, s[0]);
                s[1] = _mm256_fmadd_ps(hi, xv, s[1]);
            }
        }
        let (d, m) = (c.d.as_ptr().add(b * LANES), c.m.as_ptr().add(b * LANES));
        let (d0, d1) = (_mm256_loadu_ps(d), _mm256_loadu_ps(d.add(8)));
        let (m0, m1) = (_mm256_loadu_ps(m), _mm256_loadu_ps(m.add(8)));
        for (r, (t, s)) in total.iter_mut().zip(&sum).enumerate() {
            let xs = _mm256_broadcast_ss(&*c.xsum.as_ptr().add(r * (c.kp / BLOCK) + b));
            t[0] = _mm256_fmadd_ps(s[0], d0, _mm256_fmadd_ps(m0, xs, t[0]));
            t[1] = _mm256_fmadd_ps(s[1], d1, _mm256_fmadd_ps(m1, xs, t[1]));
        }
    }
    for (a, t) in acc.iter_mut().zip(&total) {
        _mm256_storeu_ps(a.as_mut_ptr(), t[0]);
        _mm256_storeu_ps(a.as_mut_ptr().add(8), t[1]);
    }
}

/// A projection weight as a sampling copy holds it (`Transformer::sampling_copy`): bf16
/// pairs or int8/int4 blocks.
#[derive(Debug, Clone)]
pub enum SamplerWeight {
    Bf16(PackedBf16),
    Int(PackedInt8),
}

impl SamplerWeight {
    /// `w` [out, in] packed for sampling at `precision` (bf16, int8 or int4; f32 samples with
    /// the model's own weights and has no packed copy).
    pub fn pack(w: &Tensor, precision: Precision) -> Result<Self> {
        match precision {
            Precision::Bf16 => Ok(SamplerWeight::Bf16(PackedBf16::pack(w)?)),
            Precision::Int8 => Ok(SamplerWeight::Int(PackedInt8::pack(w, 8)?)),
            Precision::Int4 => Ok(SamplerWeight::Int(PackedInt8::pack(w, 4)?)),
            Precision::F32 => Err(Error::Invalid(
                "an f32 sampler uses the model's own weights".into(),
            )),
        }
    }

    /// `x · Wᵀ` for `x` [..., in].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            SamplerWeight::Bf16(p) => p.forward(x),
            SamplerWeight::Int(p) => p.forward(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn quantization_error_is_within_half_a_step_per_block() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (19, 70), &dev).unwrap();
        let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for bits in [8, 4] {
            let dq = PackedInt8::pack(&w, bits).unwrap().dequantize();
            for o in 0..19 {
                for (b, chunk) in ws[o * 70..][..70].chunks(BLOCK).enumerate() {
                    let (d, _) = block_range(chunk, (1 << bits) - 1);
                    for (i, &v) in chunk.iter().enumerate() {
                        let got = dq[o * 70 + b * BLOCK + i];
                        assert!((got - v).abs() <= d * 0.5 + 1e-6, "{got} vs {v} (step {d})");
                    }
                }
            }
            // a constant row stays itself
            let c = Tensor::full(0.25f32, (3, 40), &dev).unwrap();
            let c = PackedInt8::pack(&c, bits).unwrap();
            assert!(c.dequantize().iter().all(|&v| v == 0.25));
        }
    }

    #[test]
    fn four_bit_gguf_blocks_keep_their_levels() {
        // Q4_1 as candle dequantizes it: w = q·d + m, q in 0..16, d and m f16 values.
        let (d, m) = (3.0f32 / 256.0, -0.09375f32);
        let w: Vec<f32> = (0..64).map(|i| ((i * 7) % 16) as f32 * d + m).collect();
        let t = Tensor::from_vec(w.clone(), (1, 64), &Device::Cpu).unwrap();
        // int8: the 4-bit step / 17; int4: the step itself
        for bits in [8, 4] {
            let dq = PackedInt8::pack(&t, bits).unwrap().dequantize();
            for (a, b) in dq.iter().zip(&w) {
                assert!(
                    (a - b).abs() <= 2.0 * f32::EPSILON * b.abs().max(1e-3),
                    "{bits} bits: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_multiplies_by_the_dequantized_weight() {
        let dev = Device::Cpu;
        let mut kernels = vec![false];
        if Isa::Avx2.enabled() {
            kernels.push(true);
        }
        // odd widths, a partial last panel, row counts around the kernel's 4
        for &(rows, out, inp) in &[(1, 5, 3), (3, 33, 17), (4, 48, 64), (9, 17, 576)] {
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (&avx2, bits) in kernels.iter().flat_map(|k| [(k, 8), (k, 4)]) {
                let packed = PackedInt8::pack(&w, bits).unwrap();
                let dq = packed.dequantize();
                let mut y = vec![0f32; rows * out];
                packed.matmul_into(&mut y, Mat::rows(&xs, inp), avx2);
                for i in 0..rows {
                    for o in 0..out {
                        let want: f64 = (0..inp)
                            .map(|k| xs[i * inp + k] as f64 * dq[o * inp + k] as f64)
                            .sum();
                        let got = y[i * out + o] as f64;
                        let tol = 1e-5 * (inp as f64).sqrt() * (1.0 + want.abs());
                        assert!(
                            (got - want).abs() <= tol,
                            "avx2={avx2} {bits} bits: {got} vs {want}"
                        );
                    }
                }
                let via = packed.forward(&x).unwrap();
                assert_eq!(via.dims(), &[rows, out]);
            }
        }
    }
}
