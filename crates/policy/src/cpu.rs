//! The low-level CPU pieces the kernels build on, importing nothing from the crate but
//! `error`: the float trait the kernels are written against (`Float`), the matrix view
//! (`Mat`), the run-time SIMD choice (`Isa`, `wide`), the vectorizable `exp_approx`,
//! the worker thread count and row splitting (`n_threads`, `par_out`, `par_rows`), and this
//! thread's training matmul precision with `fast_training`, which an op reads when it is
//! built. `cpu_op`, `grad_sink`, `bf16`, `ops`, `linear` and `attention` sit above it.

use crate::error::{Error, Result};
use candle_core::CpuStorage;
use rayon::prelude::*;

/// The precision of a run's sampling or training matmuls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// The model's own weights (exact: generation log-probs equal teacher-forced ones).
    #[default]
    F32,
    /// Weights rounded to bf16, activations rounded to bf16 at each matmul, f32 accumulation.
    Bf16,
    /// Sampling only: weights as 8-bit affine blocks of 32 (a step and a minimum each,
    /// `int8.rs`), activations f32, f32 accumulation.
    Int8,
    /// Sampling only: as `Int8` with 4-bit codes (GGUF's Q4_1 grid).
    Int4,
}

impl Precision {
    pub const NAMES: &'static str = "f32, bf16, int8, int4";
    /// The precisions training matmuls take.
    pub const TRAINING_NAMES: &'static str = "f32, bf16";

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "int8" => Ok(Precision::Int8),
            "int4" => Ok(Precision::Int4),
            other => Err(Error::Invalid(format!(
                "unknown precision `{other}` (choose one of: {})",
                Self::NAMES
            ))),
        }
    }

    /// `parse` for training matmuls, which have no int8 or int4 form.
    pub fn parse_training(s: &str) -> Result<Self> {
        match Self::parse(s)? {
            Precision::Int8 | Precision::Int4 => Err(Error::Invalid(format!(
                "`{s}` is a sampling precision; training matmuls take one of: {}",
                Self::TRAINING_NAMES
            ))),
            p => Ok(p),
        }
    }
}

/// The precision of the training matmuls on this thread (`linear.rs`'s `gemm_into`: the
/// linear layers, the output projection and their backward passes), in the manner of torch's
/// `set_float32_matmul_precision`: with bf16 the f32 operands are rounded to bf16 and
/// multiplied with f32 accumulation; inputs, outputs, master weights and every other op stay
/// f32. Each op records the precision of its forward and runs its backward at it, so a
/// backward called outside the scope still matches its forward. Per thread, so concurrent
/// runs of a study keep their own.
pub fn with_matmul_precision<R>(p: Precision, f: impl FnOnce() -> R) -> R {
    struct Restore(Precision);
    impl Drop for Restore {
        fn drop(&mut self) {
            MATMUL.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(MATMUL.with(|c| c.replace(p)));
    f()
}

pub fn matmul_precision() -> Precision {
    MATMUL.with(|c| c.get())
}

thread_local! {
    static MATMUL: std::cell::Cell<Precision> = const { std::cell::Cell::new(Precision::F32) };
}

/// Whether a training op built now may take reduced-precision shortcuts in its forward and
/// backward (`Float::exp_fast`, another summation order): only under bf16 training matmuls
/// (`with_matmul_precision`), whose rounding is far coarser. The f32 path keeps the
/// exact kernels, so seeded f32 runs reproduce bit for bit.
pub(crate) fn fast_training() -> bool {
    matmul_precision() == Precision::Bf16
}

/// The instruction-set levels arlrr's own kernels are written for, lowest first. The build
/// targets baseline x86-64 (SSE2), so hot loops of our own are compiled again for AVX2+FMA
/// and for AVX-512 (`wide`), and the bf16 matmuls have a kernel per level
/// (`bf16::Kernel`); the best level the CPU has is picked at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline x86-64, or any other architecture: portable loops.
    Portable,
    /// AVX2 and FMA (Haswell, Zen and later): 256-bit vectors.
    Avx2,
    /// AVX-512F: 512-bit vectors.
    Avx512,
    /// AVX-512 with the bf16 dot product (`vdpbf16ps`: Cooper Lake, Sapphire Rapids, Zen 4).
    Avx512Bf16,
    /// AMX tiles (`amx_bf16`: Sapphire Rapids and later).
    Amx,
}

impl Isa {
    pub const NAMES: &'static str = "amx, avx512bf16, avx512, avx2, portable";
    /// The variable that caps the level, as oneDNN's `ONEDNN_MAX_CPU_ISA` does: a CPU with
    /// AMX can then measure the paths of CPUs without it. A level above the CPU's own has
    /// no effect.
    pub const ENV: &'static str = "ARLRR_MAX_CPU_ISA";

    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "amx" => Ok(Isa::Amx),
            "avx512bf16" | "avx512_bf16" => Ok(Isa::Avx512Bf16),
            "avx512" | "avx512f" => Ok(Isa::Avx512),
            "avx2" => Ok(Isa::Avx2),
            "portable" | "baseline" => Ok(Isa::Portable),
            other => Err(Error::Invalid(format!(
                "{}: unknown instruction set `{other}` (choose one of: {})",
                Self::ENV,
                Self::NAMES
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx",
            Isa::Avx512Bf16 => "avx512bf16",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// The cap `ARLRR_MAX_CPU_ISA` sets, `None` when it is unset or empty; an unknown name is
    /// an error (binaries check it at startup: `check_isa_env`).
    pub fn cap_from_env() -> Result<Option<Isa>> {
        match std::env::var(Self::ENV) {
            Ok(v) if !v.trim().is_empty() => Isa::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    /// Whether kernels of this level may run: the CPU has the instructions and the cap allows
    /// them. (AMX also needs the kernel's permission, which `bf16::Kernel::best` asks for.)
    pub fn enabled(self) -> bool {
        self <= isa_cap() && self.detected()
    }

    /// Whether the CPU has the instructions, whatever the cap.
    pub(crate) fn detected(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                Isa::Portable => true,
                Isa::Avx2 => has!("avx2") && has!("fma"),
                Isa::Avx512 => has!("avx512f") && Isa::Avx2.detected(),
                Isa::Avx512Bf16 => has!("avx512bf16") && Isa::Avx512.detected(),
                // CPUID.(7,0).EDX: bit 22 AMX-BF16, bit 24 AMX-TILE.
                Isa::Amx => {
                    let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
                    edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && Isa::Avx512Bf16.detected()
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }
}

/// Checks `ARLRR_MAX_CPU_ISA` (binaries call it at startup, so a typo is an error, not a
/// silently ignored setting).
pub fn check_isa_env() -> Result<()> {
    Isa::cap_from_env().map(|_| ())
}

/// The level `ARLRR_MAX_CPU_ISA` allows (read once); unset, or unreadable, allows all.
fn isa_cap() -> Isa {
    static CAP: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| Isa::cap_from_env().ok().flatten().unwrap_or(Isa::Amx))
}

/// The vector level `wide` compiles for on this CPU: AVX-512, AVX2+FMA, or portable.
pub(crate) fn simd_level() -> Isa {
    static LEVEL: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|l| l.enabled())
            .unwrap_or(Isa::Portable)
    })
}

/// Runs `f` compiled for the best vector level this CPU has (`simd_level`): the closure is
/// inlined into the wrapper, so its loops vectorize 16 or 8 wide and `exp_approx`'s `floor`
/// is one instruction (the baseline x86-64 target has no SSE4.1 rounding, and calls libm for
/// it). Only the vector width changes: Rust never contracts a multiply and an add into an FMA
/// or reorders a float sum on its own, so every level computes the same bits.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    match simd_level() {
        // SAFETY: `simd_level` checked that the CPU has these features.
        Isa::Avx512 => return unsafe { wide_avx512(f) },
        Isa::Avx2 => return unsafe { wide_avx2(f) },
        _ => {}
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn wide_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `exp` in f32 without a libm call, so loops over it vectorize: x = n·ln2 + r with
/// |r| ≤ ln2/2, then 2^n · e^r by a degree-6 Taylor polynomial (relative error below 3e-7,
/// a few ulp). Below -87.3 it returns 0 (masked attention scores are -inf); above 88.7 it
/// saturates at about 2^128's neighbour instead of inf. For reduced-precision sampling only:
/// the f32 paths keep libm's correctly rounded `exp`.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let c = x.clamp(-87.3, 88.7);
    let n = (c * std::f32::consts::LOG2_E + 0.5).floor();
    let r = c - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < -87.3 {
        0.0
    } else {
        p * scale
    }
}

/// Runs `f` on a thread of rayon's pool and waits for it. A parallel loop started from a
/// thread outside the pool hands its work to the pool and puts the caller to sleep until it is
/// done, a futex wake-up each way; started from a pool thread, the loop's halves are stolen by
/// the other workers and the caller works along. Decoding one token at batch 1 runs some 250
/// small parallel loops (7 projections and the attention per layer): from outside the pool
/// they cost ~4 ms per token on a 2-core EPYC, a quarter of the step. Same work, same bits.
pub(crate) fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Below this many elements a kernel runs on the calling thread: spawning costs more.
pub(crate) const PAR_MIN: usize = 1 << 15;

/// Worker threads for the row kernels and sampling: asked once, since
/// `available_parallelism` reads cgroup files on Linux (it showed up in decoding profiles).
pub(crate) fn n_threads() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Fills `out`, made of rows of width `d`, by calling `f(first_row, rows)` on contiguous runs
/// of whole rows, split across threads when the tensor is large.
/// `work` estimates the elements touched (the output size for element-wise kernels).
pub(crate) fn par_out<T: Send>(
    out: &mut [T],
    d: usize,
    work: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    let rows = out.len() / d.max(1);
    let threads = n_threads().min(rows.max(1));
    if threads <= 1 || work < PAR_MIN {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    out.par_chunks_mut(per * d)
        .enumerate()
        .for_each(|(c, o)| f(c * per, o));
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
    x.par_chunks(per)
        .zip(out.par_chunks_mut(per))
        .for_each(|(xi, oi)| f(xi, oi));
}

/// The little float arithmetic the kernels need, and the storage variant of each type.
pub(crate) trait Float:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + Send
    + Sync
    + 'static
{
    fn exp(self) -> Self;
    /// `exp` within a few ulp, vectorizable (`exp_approx` for f32; f64 keeps `exp`):
    /// for the reduced-precision training kernels only.
    fn exp_fast(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn from_f64(v: f64) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    /// The data of `s` when it holds this type.
    fn slice(s: &CpuStorage) -> Option<&[Self]>;
    /// `s` itself when it holds this type.
    fn vec(s: CpuStorage) -> Option<Vec<Self>>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// `s` itself when this type is f32 (for the bf16 matmul, which reads f32).
    fn f32_slice(s: &[Self]) -> Option<&[f32]>;
    fn f32_mut(s: &mut [Self]) -> Option<&mut [f32]>;
}

// A macro: the two impls differ only in the type and its storage variant.
macro_rules! impl_float {
    ($t:ident, $variant:ident, $is_f32:tt) => {
        impl Float for $t {
            fn exp(self) -> Self {
                $t::exp(self)
            }
            #[inline(always)]
            fn exp_fast(self) -> Self {
                impl_float!(@fast $is_f32, self)
            }
            fn ln(self) -> Self {
                $t::ln(self)
            }
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[allow(clippy::unnecessary_cast)] // f64 as f64 in the f64 impl
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            fn zero() -> Self {
                0.0
            }
            fn one() -> Self {
                1.0
            }
            fn slice(s: &CpuStorage) -> Option<&[Self]> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn vec(s: CpuStorage) -> Option<Vec<Self>> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn f32_slice(s: &[Self]) -> Option<&[f32]> {
                impl_float!(@f32 $is_f32, s)
            }
            fn f32_mut(s: &mut [Self]) -> Option<&mut [f32]> {
                impl_float!(@f32 $is_f32, s)
            }
        }
    };
    (@f32 yes, $s:expr) => {
        Some($s)
    };
    (@fast yes, $x:expr) => {
        crate::cpu::exp_approx($x)
    };
    (@fast no, $x:expr) => {
        $x.exp()
    };
    (@f32 no, $s:expr) => {{
        let _ = $s;
        None
    }};
}
impl_float!(f32, F32, yes);
impl_float!(f64, F64, no);

/// The output buffer of a matmul whose parallel tasks each write their own columns.
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: users give each task a disjoint set of the buffer's elements to write.
unsafe impl Sync for SendPtr {}

/// A matrix view: element (i, j) is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Contiguous `data` as `rows` rows of `cols` (its width).
    pub fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rows: data.len() / cols.max(1),
            cols,
            rs: cols,
            cs: 1,
        }
    }
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
    pub fn in_bounds(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || (self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len()
    }
}

impl<'a, T: Float> Mat<'a, T> {
    /// The same view as f32, when `T` is f32.
    pub fn f32(self) -> Option<Mat<'a, f32>> {
        Some(Mat {
            data: T::f32_slice(self.data)?,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_is_within_a_few_ulp_of_exp() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max(((exp_approx(x) as f64 - want) / want).abs());
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }
}
