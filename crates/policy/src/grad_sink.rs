//! Weight gradients summed where the backward computes them, across the micro-batches of one
//! gradient computation ("gradient accumulation fusion", as Megatron-LM calls it).
//!
//! candle's backprop gives every gradient it receives a fresh zeroed buffer and adds into it
//! (`GradStore::or_insert` + `add`), and the trainer then adds each micro-batch's store to its
//! running sum: for the linear weights (nine tenths of SmolLM2's parameters) that is a memset
//! and two allocating, single-threaded adds of the whole model per micro-batch. While a sink
//! is installed, the linear layers built on that thread keep their weight gradient out of the
//! store and add it here in place instead. The sums are the same bits: the first gradient is
//! kept as computed and each later one is added element by element, as `0 + g1 + g2` was.

use crate::cpu::Float;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Storage, Tensor, TensorId};
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

thread_local! {
    static SINK: RefCell<Option<Arc<GradSink>>> = const { RefCell::new(None) };
}

/// The running gradient sums of the weights whose gradients reached it.
#[derive(Debug, Default)]
pub struct GradSink {
    sums: Mutex<HashMap<TensorId, Tensor>>,
}

/// Installs a fresh sink on this thread until the guard drops; take the sums from the guard.
pub fn install_grad_sink() -> GradSinkScope {
    let sink = Arc::new(GradSink::default());
    SINK.with(|s| *s.borrow_mut() = Some(sink.clone()));
    GradSinkScope(sink)
}

/// The sink installed on this thread, if any (linear layers capture it at their forward, so
/// their backward finds it wherever it runs).
pub(crate) fn current() -> Option<Arc<GradSink>> {
    SINK.with(|s| s.borrow().clone())
}

pub struct GradSinkScope(Arc<GradSink>);

impl GradSinkScope {
    /// The summed gradient of `weight` (removed from the sink); `None` when none reached it.
    pub fn take(&self, weight: &Tensor) -> Option<Tensor> {
        self.0.sums.lock().expect("grad sink").remove(&weight.id())
    }
}

impl Drop for GradSinkScope {
    fn drop(&mut self) {
        SINK.with(|s| *s.borrow_mut() = None);
    }
}

impl GradSink {
    /// Adds `grad` (no graph) to `weight`'s sum. The first one becomes the sum, copied when
    /// it is a view into a larger buffer (the sum is later added to in place).
    pub(crate) fn add(&self, weight: &Tensor, grad: Tensor) -> Result<()> {
        let mut sums = self.sums.lock().expect("grad sink");
        match sums.get(&weight.id()) {
            Some(sum) => sum.inplace_op2(&grad, &Inplace(AddAssign)),
            None => {
                let whole = {
                    let (storage, layout) = grad.storage_and_layout();
                    let len = match &*storage {
                        Storage::Cpu(CpuStorage::F32(v)) => v.len(),
                        Storage::Cpu(CpuStorage::F64(v)) => v.len(),
                        _ => 0,
                    };
                    layout.start_offset() == 0 && grad.is_contiguous() && len == grad.elem_count()
                };
                sums.insert(weight.id(), if whole { grad } else { grad.copy()? });
                Ok(())
            }
        }
    }

    /// Adds the rows of `grad` [N, H] to rows `ids` of `weight`'s sum (an embedding table's
    /// gradient: one zeroed table per gradient computation, not one per micro-batch).
    pub(crate) fn add_rows(&self, weight: &Tensor, ids: &[u32], grad: &Tensor) -> Result<()> {
        let mut sums = self.sums.lock().expect("grad sink");
        let sum = match sums.entry(weight.id()) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(weight.detach().zeros_like()?),
        };
        sum.inplace_op2(&grad.contiguous()?, &Inplace(AddRows(ids)))
    }
}

/// An in-place op `a ∘= b` on the slices of two contiguous tensors of one float type.
trait InPlace {
    const NAME: &'static str;
    fn apply<T: Float>(&self, a: &mut [T], b: &[T]) -> Result<()>;
}

/// An `InPlace` as a candle in-place op.
struct Inplace<O>(O);

impl<O: InPlace> InplaceOp2 for Inplace<O> {
    fn name(&self) -> &'static str {
        O::NAME
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let (Some((a0, a1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("{} needs contiguous tensors", O::NAME);
        };
        match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => self.0.apply(&mut a[a0..a1], &b[b0..b1]),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => self.0.apply(&mut a[a0..a1], &b[b0..b1]),
            (a, b) => candle_core::bail!("{} of {:?} and {:?}", O::NAME, a.dtype(), b.dtype()),
        }
    }
}

/// `a += b` element by element, on all threads.
struct AddAssign;

impl InPlace for AddAssign {
    const NAME: &'static str = "policy-add-assign";
    fn apply<T: Float>(&self, a: &mut [T], b: &[T]) -> Result<()> {
        if a.len() != b.len() {
            candle_core::bail!("add-assign: {} values vs {}", a.len(), b.len());
        }
        a.par_chunks_mut(1 << 16)
            .zip(b.par_chunks(1 << 16))
            .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a = *a + b));
        Ok(())
    }
}

/// `table[ids[i]] += rows[i]` for a table [V, H] (`a`) and rows [N, H] (`b`).
struct AddRows<'a>(&'a [u32]);

impl InPlace for AddRows<'_> {
    const NAME: &'static str = "policy-add-rows";
    fn apply<T: Float>(&self, table: &mut [T], rows: &[T]) -> Result<()> {
        let h = rows.len() / self.0.len().max(1);
        for (&id, row) in self.0.iter().zip(rows.chunks_exact(h.max(1))) {
            let Some(dst) = table.get_mut(id as usize * h..(id as usize + 1) * h) else {
                candle_core::bail!("add-rows: row {id} outside the table");
            };
            dst.iter_mut().zip(row).for_each(|(a, &b)| *a = *a + b);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn the_sink_sums_like_candle_adds() {
        let dev = Device::Cpu;
        let w = Var::randn(0f32, 1.0, (3, 70_000), &dev).unwrap();
        let g: Vec<Tensor> = (0..3)
            .map(|_| Tensor::randn(0f32, 1.0, (3, 70_000), &dev).unwrap())
            .collect();
        let scope = install_grad_sink();
        let sink = current().unwrap();
        for gi in &g {
            sink.add(w.as_tensor(), gi.copy().unwrap()).unwrap();
        }
        let got = scope.take(w.as_tensor()).unwrap();
        let want = ((g[0].zeros_like().unwrap() + &g[0]).unwrap() + &g[1]).unwrap() + &g[2];
        let (got, want) = (
            got.to_vec2::<f32>().unwrap(),
            want.unwrap().to_vec2::<f32>().unwrap(),
        );
        assert_eq!(got, want);
        assert!(scope.take(w.as_tensor()).is_none());
        drop(scope);
        assert!(current().is_none());
    }
}
