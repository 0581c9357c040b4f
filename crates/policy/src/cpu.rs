//! The low-level CPU pieces the kernels build on, importing nothing from the crate but
//! `error`: the float trait the kernels are written against (`Float`), the matrix view
//! (`Mat`), the run-time SIMD choice (`wide_simd`, `wide`), the vectorizable `exp_approx`,
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
}

impl Precision {
    pub const NAMES: &'static str = "f32, bf16";

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(Error::Invalid(format!(
                "unknown precision `{other}` (choose one of: {})",
                Self::NAMES
            ))),
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

/// Whether the CPU runs 512-bit vectors: the build targets baseline x86-64 (128-bit), so hot
/// loops of our own are compiled a second time for AVX-512 and picked at run time.
pub(crate) fn wide_simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static WIDE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WIDE.get_or_init(|| std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Runs `f` compiled for AVX-512 when the CPU has it: the closure is inlined into the
/// wrapper, so its loops vectorize 16 wide and `exp_approx`'s `floor` is one instruction
/// (the baseline x86-64 target has no SSE4.1 rounding, and calls libm for it).
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if wide_simd() {
        // SAFETY: `wide_simd` checked that the CPU has AVX-512F.
        return unsafe { wide_avx512(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn wide_avx512<R>(f: impl FnOnce() -> R) -> R {
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
