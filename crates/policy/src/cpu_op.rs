//! Where the CPU custom ops meet candle. Each op implements `FloatOp<N>` once, generic over
//! the float type; `Cpu(op)` is the candle `CustomOpN` that checks the arguments (one float
//! type, contiguous), picks f32 or f64 and hands the op plain slices; `fused_ok` says which
//! tensors the ops take (the wrappers fall back to candle's primitives for the others).

use crate::cpu::Float;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};

/// True where the custom CPU kernels apply (they are written for f32 and f64).
pub(crate) fn fused_ok(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// One argument of a `FloatOp`: its contiguous data and its layout.
pub(crate) type Arg<'a, T> = (&'a [T], &'a Layout);

/// A CPU op over `N` tensors of one float type (f32 or f64), written once for both.
pub(crate) trait FloatOp<const N: usize> {
    fn name(&self) -> &'static str;
    /// The output and its shape.
    fn fwd<T: Float>(&self, args: [Arg<T>; N]) -> Result<(Vec<T>, Shape)>;
    /// The arguments' gradients (`None` where there is none); by default the op has no backward.
    fn bwd(&self, _args: [&Tensor; N], _res: &Tensor, _grad: &Tensor) -> Grads<N> {
        Err(candle_core::Error::BackwardNotSupported { op: self.name() })
    }
}

/// What `FloatOp::bwd` returns: a gradient or `None` per argument.
pub(crate) type Grads<const N: usize> = Result<[Option<Tensor>; N]>;

/// A `FloatOp` as a candle custom op.
#[derive(Debug)]
pub(crate) struct Cpu<O>(pub O);

/// Runs `op` on storages that must all hold the float type of the first.
fn run<O: FloatOp<N>, const N: usize>(
    op: &O,
    args: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    match args[0].0.dtype() {
        DType::F32 => run_as::<f32, O, N>(op, args),
        DType::F64 => run_as::<f64, O, N>(op, args),
        dt => candle_core::bail!("{} supports f32 and f64, got {dt:?}", op.name()),
    }
}

fn run_as<T: Float, O: FloatOp<N>, const N: usize>(
    op: &O,
    args: [(&CpuStorage, &Layout); N],
) -> Result<(CpuStorage, Shape)> {
    let name = op.name();
    let mut data: [Arg<T>; N] = [(&[], args[0].1); N];
    for (i, (s, l)) in args.into_iter().enumerate() {
        let Some(all) = T::slice(s) else {
            candle_core::bail!("{name} supports f32 and f64 (all arguments of one type)");
        };
        let (a, b) = l.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg(format!("{name}: argument {} must be contiguous", i + 1))
        })?;
        data[i] = (&all[a..b], l);
    }
    let (out, shape) = op.fwd(data)?;
    Ok((T::storage(out), shape))
}

impl<O: FloatOp<1>> CustomOp1 for Cpu<O> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout) -> Result<(CpuStorage, Shape)> {
        run(&self.0, [(s1, l1)])
    }
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let [d] = self.0.bwd([arg], res, grad)?;
        Ok(d)
    }
}

// A macro: candle's `CustomOp2` and `CustomOp3` differ only in arity, which no generic
// impl can express.
macro_rules! impl_custom_op {
    ($op:ident, $n:literal, $grads:ty, $(($s:ident, $l:ident, $a:ident, $d:ident)),+) => {
        impl<O: FloatOp<$n>> $op for Cpu<O> {
            fn name(&self) -> &'static str {
                self.0.name()
            }
            fn cpu_fwd(&self, $($s: &CpuStorage, $l: &Layout),+) -> Result<(CpuStorage, Shape)> {
                run(&self.0, [$(($s, $l)),+])
            }
            fn bwd(&self, $($a: &Tensor,)+ res: &Tensor, grad: &Tensor) -> Result<$grads> {
                let [$($d),+] = self.0.bwd([$($a),+], res, grad)?;
                Ok(($($d),+))
            }
        }
    };
}
/// One argument's gradient in candle's `bwd` tuples.
type Grad = Option<Tensor>;
impl_custom_op!(
    CustomOp2,
    2,
    (Grad, Grad),
    (s1, l1, a1, d1),
    (s2, l2, a2, d2)
);
impl_custom_op!(
    CustomOp3,
    3,
    (Grad, Grad, Grad),
    (s1, l1, a1, d1),
    (s2, l2, a2, d2),
    (s3, l3, a3, d3)
);
