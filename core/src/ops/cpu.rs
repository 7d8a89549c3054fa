//! The plumbing every fused CPU kernel shares: f32 views of contiguous CPU storage, row-by-row
//! output filling (row-parallel above [`PAR_MIN`] elements) and the error type candle's
//! `CustomOp`s return.

use candle_core::{CpuStorage, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

pub(crate) type CResult<T> = candle_core::Result<T>;

/// Below this many output elements a kernel runs on the calling thread (rayon's fork/join costs
/// more than the work in a decode step).
pub(crate) const PAR_MIN: usize = 1 << 15;

pub(crate) fn msg(s: &str) -> candle_core::Error {
    candle_core::Error::Msg(s.to_string())
}

/// The f32 elements of a contiguous CPU storage under `layout`.
pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| msg("fused op needs contiguous inputs"))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// Run `f` on the f32 elements of `t` (made contiguous first) on the CPU.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => Err(msg("fused op on a non-CPU tensor")),
    }
}

/// Fill `out` row by row (rows of `width`), in parallel when it is large.
pub(crate) fn rows_mut(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        out.chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

/// A fresh f32 tensor of `shape` filled row by row, on `like`'s device.
pub(crate) fn build(
    like: &Tensor,
    shape: &Shape,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> CResult<Tensor> {
    let mut out = vec![0f32; shape.elem_count()];
    rows_mut(&mut out, width, f);
    Tensor::from_vec(out, shape, like.device())
}

pub(crate) fn storage(out: Vec<f32>, shape: Shape) -> (CpuStorage, Shape) {
    (CpuStorage::F32(out), shape)
}

pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `f(r)` for each of `n` rows in order, in parallel when `elems` (the work) is large.
pub(crate) fn per_row(n: usize, elems: usize, f: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    if elems >= PAR_MIN {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}
