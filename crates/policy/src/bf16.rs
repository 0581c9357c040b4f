//! bf16 matmuls with f32 accumulation, on the CPU's own bf16 instructions: AMX tiles where
//! the CPU has `amx_bf16`, else AVX512-BF16 dot products, else AVX2+FMA (bf16 weights widened
//! to f32 in registers, 8 lanes of FMA), else a portable loop computing the same products
//! (picked once, at run time, under `ARLRR_MAX_CPU_ISA`: `cpu::Isa`).
//!
//! Two users. Sampling: `Transformer::sampling_copy` rounds each projection weight to bf16
//! once per rollout and packs it here. The log-probs GRPO differentiates still come from the
//! f32 teacher-forced pass, as TRL and verl do with vLLM rollouts, so rounding the sampler
//! changes which tokens get sampled but never the gradient's arithmetic. Training, opt-in:
//! `with_matmul_precision` makes the teacher-forced pass's large matmuls (`linear.rs`) pack
//! both f32 operands on the fly, like torch's `set_float32_matmul_precision("medium")`.
//! Decoding is bound by weight bandwidth and multiply-adds, and bf16 halves the first; AMX
//! multiplies whole 16x32 tiles per instruction.

pub use crate::cpu::{matmul_precision, with_matmul_precision, Precision};
use crate::cpu::{wide, Isa, Mat, SendPtr};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Outputs per packed panel: one 512-bit register of f32 accumulators.
const LANES: usize = 16;

thread_local! {
    static WEIGHT_PACKS: std::cell::RefCell<Option<WeightPacks>> =
        const { std::cell::RefCell::new(None) };
}

/// Packed weights by (address, rows, cols, row stride, column stride) of the view packed.
type WeightPacks = std::collections::HashMap<[usize; 5], Arc<PackedBf16>>;

/// While the returned guard lives, bf16 training matmuls on this thread pack each weight once
/// (per orientation) instead of once per micro-batch. Hold it only while no weight changes:
/// the trainer holds it for one gradient computation (every micro-batch's forward and
/// backward) and drops it before the optimizer step.
pub fn cache_weight_packs() -> WeightPackScope {
    WEIGHT_PACKS.with(|c| *c.borrow_mut() = Some(WeightPacks::new()));
    WeightPackScope(())
}

pub struct WeightPackScope(());

impl Drop for WeightPackScope {
    fn drop(&mut self) {
        WEIGHT_PACKS.with(|c| *c.borrow_mut() = None);
    }
}

/// `w` (a weight, read as the right operand) packed, from the scope's cache when there is one.
pub(crate) fn packed_weight(w: Mat<f32>) -> Arc<PackedBf16> {
    let key = [w.data.as_ptr() as usize, w.rows, w.cols, w.rs, w.cs];
    WEIGHT_PACKS.with(|c| match c.borrow_mut().as_mut() {
        Some(cache) => cache
            .entry(key)
            .or_insert_with(|| Arc::new(PackedBf16::pack_b(w)))
            .clone(),
        None => Arc::new(PackedBf16::pack_b(w)),
    })
}

/// Each value rounded to the nearest bf16 (ties to even) and widened back to f32: a product
/// of two such values is exact in f32, so f32 gemm over them computes what the bf16
/// instructions compute, up to the order of the f32 sums.
pub(crate) fn round_to_bf16(v: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; v.len()];
    crate::cpu::par_rows(v, &mut out, 4096, |src, dst| {
        wide(|| {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f32::from_bits((to_bf16(*s) as u32) << 16);
            }
        })
    });
    out
}

/// `f` rounded to the nearest bf16 (ties to even), as its bit pattern; NaN stays NaN.
/// Branch-free, so the packing loops vectorize.
#[inline(always)]
pub fn to_bf16(f: f32) -> u16 {
    let b = f.to_bits();
    let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16;
    let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
    (if nan { 0x7fc0 } else { rounded }) as u16
}

/// Two values as one word of bf16s, the first in the low half.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | ((to_bf16(hi) as u32) << 16)
}

fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// A weight [out, in] in bf16, packed for `x · Wᵀ`: panels of 16 outputs, and within a panel
/// for each pair of inputs (2k, 2k+1) one 32-bit word per output holding both (the even one in
/// the low half). One panel's 16 pairs are then both a 512-bit operand row of the AVX512-BF16
/// dot product and an AMX tile of B (16 pair-rows of 64 bytes). Pairs are zero-padded to a
/// multiple of 16 and panels to an even count, so every kernel runs on whole tiles.
#[derive(Clone)]
pub struct PackedBf16 {
    out: usize,
    inp: usize,
    /// Input pairs, padded: `ceil(in / 2)` rounded up to `TILE_PAIRS`.
    pairs: usize,
    /// `[panel][pair][lane]`.
    data: Vec<u32>,
}

/// Pairs per AMX tile row block (64 bytes of bf16 pairs... 16 words).
const TILE_PAIRS: usize = 16;
/// Rows per AMX tile.
const TILE_ROWS: usize = 16;

impl PackedBf16 {
    /// Packs a rank-2 weight [out, in] of any float dtype, for `x · Wᵀ`.
    pub fn pack(w: &Tensor) -> Result<Self> {
        let (_, inp) = w.dims2()?;
        let w = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Self::pack_b(Mat::rows(&w, inp).t()))
    }

    /// Packs the right operand `b` [K, N] of `a · b` (any strides).
    pub(crate) fn pack_b(b: Mat<f32>) -> Self {
        let (inp, out) = (b.rows, b.cols);
        let pairs = inp.div_ceil(2).next_multiple_of(TILE_PAIRS);
        let panels = out.div_ceil(LANES).next_multiple_of(PANELS_PER_BLOCK);
        let mut data = vec![0u32; panels * pairs * LANES];
        data.par_chunks_mut(pairs * LANES)
            .enumerate()
            .for_each(|(p, panel)| wide(|| pack_panel(b, p, panel)));
        PackedBf16 {
            out,
            inp,
            pairs,
            data,
        }
    }

    /// `x · Wᵀ` for `x` [..., in] (f32), as f32 [..., out].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let inp = *dims.last().unwrap_or(&0);
        if inp != self.inp {
            return Err(Error::Invalid(format!(
                "bf16 linear: input width {inp} but weight {}x{}",
                self.out, self.inp
            )));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let y = self.matmul(&xs);
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.out;
        Ok(Tensor::from_vec(y, out_dims, x.device())?.to_dtype(x.dtype())?)
    }

    /// `x` row-major [rows, in] times `Wᵀ`: row-major [rows, out].
    pub fn matmul(&self, x: &[f32]) -> Vec<f32> {
        let mut y = vec![0f32; x.len() / self.inp.max(1) * self.out];
        self.matmul_into(&mut y, Mat::rows(x, self.inp), Kernel::best());
        y
    }

    /// `dst` (row-major [a.rows, out]) `= a · B` for the packed B and any view `a` [M, K].
    pub(crate) fn matmul_into(&self, y: &mut [f32], a: Mat<f32>, kernel: Kernel) {
        let rows = a.rows;
        assert!(a.cols == self.inp && y.len() == rows * self.out);
        if rows == 0 || self.out == 0 {
            return;
        }
        // a as bf16 pairs (or, for the AVX2 kernel, as f32 values rounded to bf16, two words
        // per pair), rows padded with zeros to whole row blocks.
        let block_rows = kernel.block_rows();
        let widened = kernel == Kernel::Avx2;
        let xs = if widened { 2 * self.pairs } else { self.pairs };
        let mut xp = vec![0u32; rows.next_multiple_of(block_rows) * xs];
        xp.par_chunks_mut(xs * LANES)
            .take(rows.div_ceil(LANES))
            .enumerate()
            .for_each(|(blk, dst)| {
                wide(|| match widened {
                    true => pack_rows_widened(a, blk * LANES, xs, dst),
                    false => pack_rows(a, blk * LANES, self.pairs, dst),
                })
            });
        // Tasks own runs of panel pairs (columns of y) and write only those columns.
        let blocks = self.data.len() / (self.pairs * LANES * PANELS_PER_BLOCK);
        let per = blocks.div_ceil(rayon::current_num_threads() * 4).max(1);
        let y_ptr = SendPtr(y.as_mut_ptr());
        (0..blocks.div_ceil(per)).into_par_iter().for_each(|task| {
            let y_ptr = &y_ptr;
            let cols = task * per..blocks.min((task + 1) * per);
            let blk = |b: usize, r0: usize| Block {
                w: &self.data[b * PANELS_PER_BLOCK * self.pairs * LANES..],
                x: &xp[r0 * xs..],
                pairs: self.pairs,
                xs,
                y: y_ptr.0,
                row0: r0,
                rows: block_rows.min(rows - r0),
                col0: b * PANELS_PER_BLOCK * LANES,
                out: self.out,
            };
            // SAFETY: each block covers rows r0.. (stores stop at `rows`) and the panel pair
            // b (stores stop at `out`), inside `y` and owned by this task alone; `xp` holds
            // whole row blocks and `data` whole panel pairs.
            unsafe {
                match kernel {
                    #[cfg(amx)]
                    Kernel::Amx => amx::run(cols, rows, block_rows, blk),
                    Kernel::Avx512Bf16 => {
                        for b in cols {
                            for r0 in (0..rows).step_by(block_rows) {
                                block_avx512(&blk(b, r0));
                            }
                        }
                    }
                    Kernel::Avx2 => {
                        for b in cols {
                            for r0 in (0..rows).step_by(block_rows) {
                                block_avx2(&blk(b, r0));
                            }
                        }
                    }
                    Kernel::Portable => {
                        for b in cols {
                            for r0 in (0..rows).step_by(block_rows) {
                                block_portable(&blk(b, r0));
                            }
                        }
                    }
                }
            }
        });
    }
}

/// The kernels, best first: AMX tiles (`amx_bf16`), AVX512-BF16 dot products, AVX2+FMA on
/// the weights widened to f32, plain loops. A CPU with AVX-512F but not its bf16 dot product
/// (Skylake-X, Ice Lake) runs the AVX2 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    #[cfg(amx)]
    Amx,
    Avx512Bf16,
    Avx2,
    Portable,
}

impl Kernel {
    /// The best kernel this CPU has, under the cap `ARLRR_MAX_CPU_ISA` sets (`cpu::Isa`).
    pub fn best() -> Kernel {
        static BEST: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| {
            #[cfg(amx)]
            if Isa::Amx.enabled() && amx::available() {
                return Kernel::Amx;
            }
            Kernel::available()
                .into_iter()
                .find(|k| k.isa().enabled())
                .unwrap_or(Kernel::Portable)
        })
    }

    /// Every kernel but AMX whose instructions this CPU has (the cap aside), best first: the
    /// tests run each of them.
    pub(crate) fn available() -> Vec<Kernel> {
        [Kernel::Avx512Bf16, Kernel::Avx2, Kernel::Portable]
            .into_iter()
            .filter(|k| k.isa().detected())
            .collect()
    }

    /// The instruction set the kernel needs.
    pub fn isa(self) -> Isa {
        match self {
            #[cfg(amx)]
            Kernel::Amx => Isa::Amx,
            Kernel::Avx512Bf16 => Isa::Avx512Bf16,
            Kernel::Avx2 => Isa::Avx2,
            Kernel::Portable => Isa::Portable,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            #[cfg(amx)]
            Kernel::Amx => "AMX tiles",
            Kernel::Avx512Bf16 => "AVX512-BF16 dot products",
            Kernel::Avx2 => "AVX2+FMA on widened bf16",
            Kernel::Portable => "portable loop",
        }
    }

    /// Whether the bf16 training matmuls (`linear.rs`) run as f32 gemm over operands rounded
    /// to bf16 instead of packing them for this kernel: without bf16 instructions the `gemm`
    /// crate's cache-blocked f32 kernels are faster than ours, measured on an AVX2 EPYC
    /// (docs/benchmarks.md, "Reduced precision"). The products are the same.
    pub(crate) fn trains_via_gemm(self) -> bool {
        matches!(self, Kernel::Avx2 | Kernel::Portable)
    }

    /// Rows each kernel call covers.
    fn block_rows(self) -> usize {
        match self {
            #[cfg(amx)]
            Kernel::Amx => 2 * TILE_ROWS,
            Kernel::Avx512Bf16 | Kernel::Avx2 | Kernel::Portable => ROWS_PER_BLOCK,
        }
    }
}

/// The paths this process runs on this CPU, in one line for benches and logs: the CPU's
/// instruction sets, the bf16 matmul kernel, the vector level of arlrr's own loops, and the
/// f32 gemm (the `gemm` crate picks its own kernels from the CPU's features; the cap does not
/// reach it).
pub fn cpu_paths() -> String {
    #[cfg(target_arch = "x86_64")]
    let gemm = if std::is_x86_feature_detected!("avx512f") {
        "avx512"
    } else if Isa::Avx2.detected() {
        "avx2+fma"
    } else {
        "sse2"
    };
    #[cfg(not(target_arch = "x86_64"))]
    let gemm = "portable";
    let cap = match Isa::cap_from_env() {
        Ok(Some(c)) => format!(", capped at {} by {}", c.name(), Isa::ENV),
        _ => String::new(),
    };
    let k = Kernel::best();
    let train = if k.trains_via_gemm() {
        "f32 gemm over bf16-rounded operands"
    } else {
        k.name()
    };
    let has = [Isa::Amx, Isa::Avx512Bf16, Isa::Avx512, Isa::Avx2]
        .iter()
        .map(|i| format!("{} {}", i.name(), if i.detected() { "yes" } else { "no" }))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "cpu has {has}; bf16 matmuls: {} (sampling: {}; training: {train}); own loops: {}; \
         f32 gemm: gemm crate, {gemm}{cap}",
        k.isa().name(),
        k.name(),
        crate::cpu::simd_level().name(),
    )
}

impl std::fmt::Debug for PackedBf16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedBf16({}x{})", self.out, self.inp)
    }
}

/// Packs panel `p` (outputs 16p..16p+16) of the right operand `b` [K, N]: word (k, lane) =
/// (b[2k, n], b[2k+1, n]). Reads along whichever dimension of `b` is contiguous.
#[inline(always)]
fn pack_panel(b: Mat<f32>, p: usize, panel: &mut [u32]) {
    let (inp, n0) = (b.rows, p * LANES);
    let lanes = LANES.min(b.cols.saturating_sub(n0));
    let at = |k: usize, n: usize| {
        if k < inp {
            b.data[k * b.rs + n * b.cs]
        } else {
            0.0
        }
    };
    if b.cs == 1 {
        // rows of b contiguous: 16 neighbours of two rows per pair
        for k in 0..inp.div_ceil(2) {
            let dst = &mut panel[k * LANES..][..lanes];
            for (l, d) in dst.iter_mut().enumerate() {
                *d = pair(at(2 * k, n0 + l), at(2 * k + 1, n0 + l));
            }
        }
    } else {
        // columns of b contiguous (a weight [out, in] read as its transpose): one per lane
        for l in 0..lanes {
            for k in 0..inp.div_ceil(2) {
                panel[k * LANES + l] = pair(at(2 * k, n0 + l), at(2 * k + 1, n0 + l));
            }
        }
    }
}

/// Packs rows m0..m0+16 of the left operand `a` [M, K] into `dst` (`pairs` words per row):
/// word (m, k) = (a[m, 2k], a[m, 2k+1]). Row by row when rows are contiguous, else 16 rows
/// at a time along the contiguous columns (the transposed gradient of a weight's backward).
#[inline(always)]
fn pack_rows(a: Mat<f32>, m0: usize, pairs: usize, dst: &mut [u32]) {
    let rows = LANES.min(a.rows.saturating_sub(m0));
    let kp = a.cols.div_ceil(2);
    let at = |m: usize, k: usize| {
        if k < a.cols {
            a.data[m * a.rs + k * a.cs]
        } else {
            0.0
        }
    };
    if a.cs == 1 {
        for i in 0..rows {
            let row = &a.data[(m0 + i) * a.rs..][..a.cols];
            let out = &mut dst[i * pairs..][..kp];
            for (d, c) in out.iter_mut().zip(row.chunks_exact(2)) {
                *d = pair(c[0], c[1]);
            }
            if a.cols % 2 == 1 {
                out[kp - 1] = pair(row[a.cols - 1], 0.0);
            }
        }
    } else {
        for k in 0..kp {
            for i in 0..rows {
                dst[i * pairs + k] = pair(at(m0 + i, 2 * k), at(m0 + i, 2 * k + 1));
            }
        }
    }
}

/// `pack_rows` for the AVX2 kernel: rows m0..m0+16 of `a` as f32 values rounded to bf16
/// (`xs` words per row, zero beyond `a.cols`), so the kernel broadcasts each from memory.
#[inline(always)]
fn pack_rows_widened(a: Mat<f32>, m0: usize, xs: usize, dst: &mut [u32]) {
    let rows = LANES.min(a.rows.saturating_sub(m0));
    let round = |v: f32| (to_bf16(v) as u32) << 16;
    if a.cs == 1 {
        for i in 0..rows {
            let row = &a.data[(m0 + i) * a.rs..][..a.cols];
            for (d, &v) in dst[i * xs..][..a.cols].iter_mut().zip(row) {
                *d = round(v);
            }
        }
    } else {
        for k in 0..a.cols {
            for i in 0..rows {
                dst[i * xs + k] = round(a.data[(m0 + i) * a.rs + k * a.cs]);
            }
        }
    }
}

/// Panels per kernel call (2 x 16 outputs) and rows per AVX512 kernel call: 2 x 12
/// accumulator registers, 2 weight registers and a broadcast fit the 32 vector registers.
const PANELS_PER_BLOCK: usize = 2;
const ROWS_PER_BLOCK: usize = 12;

/// One kernel call's operands: two panels from `w`, rows from `x`, results to `y` at
/// (`row0`, `col0`) with row stride `out`; only `rows` rows and the columns below `out` are
/// stored.
struct Block<'a> {
    w: &'a [u32],
    x: &'a [u32],
    pairs: usize,
    /// Words per row of `x`: `pairs`, or `2 * pairs` for the AVX2 kernel's f32 rows.
    xs: usize,
    y: *mut f32,
    row0: usize,
    rows: usize,
    col0: usize,
    out: usize,
}

impl Block<'_> {
    /// Stores accumulator row `r`, lanes of panel `p`, from `src` (16 values).
    unsafe fn store(&self, r: usize, p: usize, src: &[f32]) {
        let col = self.col0 + p * LANES;
        if r < self.rows && col < self.out {
            let n = (self.out - col).min(LANES);
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                self.y.add((self.row0 + r) * self.out + col),
                n,
            );
        }
    }
}

/// The products the instructions compute, one at a time.
unsafe fn block_portable(b: &Block) {
    for r in 0..b.rows {
        for p in 0..PANELS_PER_BLOCK {
            let mut acc = [0f32; LANES];
            for (lane, a) in acc.iter_mut().enumerate() {
                for k in 0..b.pairs {
                    let w = b.w[(p * b.pairs + k) * LANES + lane];
                    let x = b.x[r * b.pairs + k];
                    *a += from_bf16(w as u16) * from_bf16(x as u16)
                        + from_bf16((w >> 16) as u16) * from_bf16((x >> 16) as u16);
                }
            }
            b.store(r, p, &acc);
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_avx512(b: &Block) {
    block_portable(b)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn block_avx2(b: &Block) {
    block_portable(b)
}

/// The AVX2 kernel on one block: each panel in runs of up to 6 rows (12 accumulator
/// registers of the 16).
#[cfg(target_arch = "x86_64")]
unsafe fn block_avx2(b: &Block) {
    for p in 0..PANELS_PER_BLOCK {
        let mut r0 = 0;
        while r0 < b.rows {
            match b.rows - r0 {
                6.. => avx2_rows::<6>(b, p, r0),
                5 => avx2_rows::<5>(b, p, r0),
                4 => avx2_rows::<4>(b, p, r0),
                3 => avx2_rows::<3>(b, p, r0),
                2 => avx2_rows::<2>(b, p, r0),
                _ => avx2_rows::<1>(b, p, r0),
            }
            r0 += 6;
        }
    }
}

/// Panel `p` x rows r0..r0+R: for each input pair, the panel's 16 words are widened to two
/// f32 vectors of 8 (the even input: word << 16; the odd one: word & 0xffff0000), and each
/// meets the row's value, broadcast from the widened x, in one FMA per 8 outputs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2_rows<const R: usize>(b: &Block, p: usize, r0: usize) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    let w = b.w.as_ptr().add(p * b.pairs * LANES);
    let x = (b.x.as_ptr() as *const f32).add(r0 * b.xs);
    let hi = _mm256_set1_epi32(0xffff_0000u32 as i32);
    for k in 0..b.pairs {
        let wk = w.add(k * LANES) as *const __m256i;
        let (w0, w1) = (_mm256_loadu_si256(wk), _mm256_loadu_si256(wk.add(1)));
        let even = [
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w0)),
            _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w1)),
        ];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = _mm256_broadcast_ss(&*x.add(r * b.xs + 2 * k));
            acc_r[0] = _mm256_fmadd_ps(even[0], xv, acc_r[0]);
            acc_r[1] = _mm256_fmadd_ps(even[1], xv, acc_r[1]);
        }
        let odd = [
            _mm256_castsi256_ps(_mm256_and_si256(w0, hi)),
            _mm256_castsi256_ps(_mm256_and_si256(w1, hi)),
        ];
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = _mm256_broadcast_ss(&*x.add(r * b.xs + 2 * k + 1));
            acc_r[0] = _mm256_fmadd_ps(odd[0], xv, acc_r[0]);
            acc_r[1] = _mm256_fmadd_ps(odd[1], xv, acc_r[1]);
        }
    }
    let mut lanes = [0f32; LANES];
    for (r, acc_r) in acc.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc_r[0]);
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc_r[1]);
        b.store(r0 + r, p, &lanes);
    }
}

/// Dispatches to the kernel monomorphized for this block's row count.
#[cfg(target_arch = "x86_64")]
unsafe fn block_avx512(b: &Block) {
    match b.rows {
        12.. => kernel::<12>(b),
        11 => kernel::<11>(b),
        10 => kernel::<10>(b),
        9 => kernel::<9>(b),
        8 => kernel::<8>(b),
        7 => kernel::<7>(b),
        6 => kernel::<6>(b),
        5 => kernel::<5>(b),
        4 => kernel::<4>(b),
        3 => kernel::<3>(b),
        2 => kernel::<2>(b),
        _ => kernel::<1>(b),
    }
}

/// 32 bf16 pairs seen as the dot-product instruction's operand type (same 512 bits).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn as_bh(v: std::arch::x86_64::__m512i) -> std::arch::x86_64::__m512bh {
    // SAFETY: both are plain 512-bit vectors.
    unsafe { std::mem::transmute::<std::arch::x86_64::__m512i, std::arch::x86_64::__m512bh>(v) }
}

/// Two panels x `R` rows: for each input pair, 2 weight loads, `R` broadcasts of the row's
/// pair, `2·R` dot-product accumulations.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); PANELS_PER_BLOCK]; R];
    let w = b.w.as_ptr();
    let x = b.x.as_ptr();
    for k in 0..b.pairs {
        let mut wv = [_mm512_setzero_si512(); PANELS_PER_BLOCK];
        for (p, v) in wv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(w.add((p * b.pairs + k) * LANES) as *const _);
        }
        for (r, acc_r) in acc.iter_mut().enumerate() {
            let xv = _mm512_set1_epi32(*x.add(r * b.pairs + k) as i32);
            for (a, v) in acc_r.iter_mut().zip(&wv) {
                let (w, x) = (as_bh(*v), as_bh(xv));
                *a = _mm512_dpbf16_ps(*a, w, x);
            }
        }
    }
    let mut lanes = [0f32; LANES];
    for (r, acc_r) in acc.iter().enumerate() {
        for (p, a) in acc_r.iter().enumerate() {
            _mm512_storeu_ps(lanes.as_mut_ptr(), *a);
            b.store(r, p, &lanes);
        }
    }
}

/// AMX: a block is 2 x 2 tiles of C (32 rows x 32 outputs), fed per 16 input pairs by two
/// tiles of x rows and the two panels' tiles, which the packing already laid out as AMX's B.
/// The instructions are written as inline assembly: Rust has no stable AMX intrinsics.
#[cfg(amx)]
mod amx {
    use super::{Block, LANES, TILE_PAIRS, TILE_ROWS};
    use std::arch::asm;

    /// Palette 1 with tiles 0-7 all 16 rows x 64 bytes.
    #[repr(C, align(64))]
    struct TileConfig {
        palette: u8,
        start_row: u8,
        reserved: [u8; 14],
        colsb: [u16; 16],
        rows: [u8; 16],
    }

    const CONFIG: TileConfig = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
        rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
    };

    /// The kernel lets this process use the tile state (Linux asks each process to request
    /// it once); call only where the CPU has AMX (`Isa::Amx.enabled()`).
    pub(super) fn available() -> bool {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only asks for permission; it has no pointers.
        unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            ) == 0
        }
    }

    /// Runs the blocks of panel pairs `cols` over all row blocks on this thread.
    ///
    /// # Safety
    /// `available()` returned true, and `blk(b, r0)` gives blocks whose `x` holds two whole
    /// tiles of rows from `r0` and whose `w` holds two whole panels.
    pub(super) unsafe fn run<'a>(
        cols: std::ops::Range<usize>,
        rows: usize,
        block_rows: usize,
        blk: impl Fn(usize, usize) -> Block<'a>,
    ) {
        asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack));
        let mut c = [0f32; 4 * TILE_ROWS * LANES];
        for b in cols {
            for r0 in (0..rows).step_by(block_rows) {
                let blk = blk(b, r0);
                tiles(&blk, &mut c);
                for (t, tile) in c.chunks(TILE_ROWS * LANES).enumerate() {
                    let (rt, p) = (t / 2, t % 2);
                    for (r, row) in tile.chunks(LANES).enumerate() {
                        blk.store(rt * TILE_ROWS + r, p, row);
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack));
    }

    /// C tiles 0-3 (row tile, panel) = x tiles 4-5 times w tiles 6-7, stored to `c`.
    unsafe fn tiles(b: &Block, c: &mut [f32; 4 * TILE_ROWS * LANES]) {
        let xs = b.pairs * 4; // bytes between x rows
        let x0 = b.x.as_ptr();
        let x1 = x0.add(TILE_ROWS * b.pairs);
        let w0 = b.w.as_ptr();
        let w1 = w0.add(b.pairs * LANES);
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack)
        );
        for k in (0..b.pairs).step_by(TILE_PAIRS) {
            asm!(
                "tileloadd tmm4, [{x0} + {xs}]",
                "tileloadd tmm5, [{x1} + {xs}]",
                "tileloadd tmm6, [{w0} + {ws}]",
                "tileloadd tmm7, [{w1} + {ws}]",
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                x0 = in(reg) x0.add(k),
                x1 = in(reg) x1.add(k),
                w0 = in(reg) w0.add(k * LANES),
                w1 = in(reg) w1.add(k * LANES),
                xs = in(reg) xs,
                ws = in(reg) LANES * 4,
                options(nostack),
            );
        }
        let cs = LANES * 4;
        let cp = c.as_mut_ptr();
        let t = TILE_ROWS * LANES;
        asm!(
            "tilestored [{c0} + {cs}], tmm0",
            "tilestored [{c1} + {cs}], tmm1",
            "tilestored [{c2} + {cs}], tmm2",
            "tilestored [{c3} + {cs}], tmm3",
            c0 = in(reg) cp,
            c1 = in(reg) cp.add(t),
            c2 = in(reg) cp.add(2 * t),
            c3 = in(reg) cp.add(3 * t),
            cs = in(reg) cs,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// f64 reference of the bf16-rounded operands.
    fn reference(x: &[f32], w: &[f32], rows: usize, out: usize, inp: usize) -> Vec<f64> {
        let r = |v: f32| from_bf16(to_bf16(v)) as f64;
        let mut y = vec![0f64; rows * out];
        for i in 0..rows {
            for o in 0..out {
                y[i * out + o] = (0..inp)
                    .map(|k| r(x[i * inp + k]) * r(w[o * inp + k]))
                    .sum();
            }
        }
        y
    }

    #[test]
    fn every_kernel_matches_the_rounded_reference_on_ragged_shapes() {
        // Odd widths, a partial last panel and row counts around the block sizes.
        let mut kernels = Kernel::available();
        kernels.push(Kernel::best());
        for &(rows, out, inp) in &[(1, 5, 3), (13, 33, 17), (32, 48, 64), (45, 17, 576)] {
            let dev = Device::Cpu;
            let x = Tensor::randn(0f32, 1.0, (rows, inp), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (out, inp), &dev).unwrap();
            let packed = PackedBf16::pack(&w).unwrap();
            let y = packed.forward(&x).unwrap();
            assert_eq!(y.dims(), &[rows, out]);
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let ws = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let want = reference(&xs, &ws, rows, out, inp);
            for &k in &kernels {
                let mut y = vec![0f32; rows * out];
                packed.matmul_into(&mut y, Mat::rows(&xs, inp), k);
                for (a, b) in y.iter().zip(&want) {
                    // products of bf16 values are exact in f32; only the f32 sums round
                    let tol = 1e-5 * (inp as f64).sqrt() * (1.0 + b.abs());
                    assert!((*a as f64 - b).abs() <= tol, "{k:?}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn strided_operands_pack_like_contiguous_ones() {
        // a given as its transpose's storage, b [K, N] row-major: the layouts of the weight
        // backward (gᵀ · x) and of dx = g · W.
        let (m, k, n) = (21, 37, 19);
        let dev = Device::Cpu;
        let a = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, (k, n), &dev).unwrap();
        let at = a.t().unwrap().contiguous().unwrap().flatten_all().unwrap();
        let at = at.to_vec1::<f32>().unwrap();
        let bs = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let a_view = Mat::rows(&at, m).t();
        let packed = PackedBf16::pack_b(Mat::rows(&bs, n));
        let av = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let bt = b.t().unwrap().contiguous().unwrap().flatten_all().unwrap();
        let want = reference(&av, &bt.to_vec1::<f32>().unwrap(), m, n, k);
        for kernel in Kernel::available() {
            let mut y = vec![0f32; m * n];
            packed.matmul_into(&mut y, a_view, kernel);
            for (got, want) in y.iter().zip(&want) {
                assert!(
                    (*got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "{kernel:?}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn the_kernels_of_the_cpus_instructions_are_all_tested() {
        let kernels = Kernel::available();
        assert_eq!(kernels.last(), Some(&Kernel::Portable));
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            assert!(kernels.contains(&Kernel::Avx2), "{kernels:?}");
        }
        assert!(cpu_paths().contains(Kernel::best().name()));
    }

    #[test]
    fn instruction_set_names_are_checked() {
        assert_eq!(Isa::parse("AVX2").unwrap(), Isa::Avx2);
        assert_eq!(Isa::parse("avx512bf16").unwrap(), Isa::Avx512Bf16);
        assert!(Isa::Portable < Isa::Avx2 && Isa::Avx512Bf16 < Isa::Amx);
        let e = Isa::parse("sse9").unwrap_err().to_string();
        assert!(e.contains("ARLRR_MAX_CPU_ISA") && e.contains("sse9") && e.contains("avx2"));
    }

    #[test]
    fn precision_names_are_checked() {
        assert_eq!(Precision::parse("bf16").unwrap(), Precision::Bf16);
        let e = Precision::parse("fp8").unwrap_err().to_string();
        assert!(e.contains("fp8") && e.contains("f32, bf16"), "{e}");
    }
}
