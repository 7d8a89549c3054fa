//! The decoder's numerical ops, one file per op, each holding everything about that op.
//!
//! Every op file has three parts, and its tests:
//! - the **composite reference**: the op from plain candle ops. It runs on every device and
//!   dtype (the CUDA and half-precision path), gets its gradient from candle's autograd, and is
//!   the correctness oracle the fused kernel is tested against. RMSNorm's statistics, the masked
//!   softmax and cross-entropy are computed in f32 even for bf16/f16 inputs;
//! - the **fused kernel**: a candle `CustomOp` with a forward AND a hand-written backward, the
//!   CPU f32 fast path (one pass each way over contiguous rows instead of a tensor per step of
//!   the chain; candle's own fused `rms_norm`, `softmax_last_dim` and `rope` have no backward);
//! - the **dispatch rule**: the one public function per op the model calls ([`rms_norm`],
//!   [`rope::apply_heads`], [`attention`], [`swiglu`], [`dropout`], `frozen_linear`,
//!   [`masked_cross_entropy`], [`linear_cross_entropy`]) checks the device and dtype of every
//!   tensor the kernel reads ([`fusable`]) and picks the fused kernel or the composite, so no
//!   CPU-only kernel ever sees a CUDA or half-precision tensor. A CUDA kernel per op goes in
//!   that op's file, as one more branch of its dispatch;
//! - the **tests** (`mod tests` at the end of the file): the fused kernel against the composite,
//!   forward and backward, and row determinism (a row's output and input gradient bit-identical
//!   whatever batch and thread count it runs under).
//!
//! `cpu.rs` is the plumbing the CPU kernels share, `test_util.rs` the helpers the tests share;
//! the same determinism question for the whole model is asked in `model/determinism.rs`.

mod attention;
mod cpu;
pub(crate) mod cross_entropy;
mod dropout;
mod frozen_linear;
mod rms_norm;
pub(crate) mod rope;
mod softmax;
mod swiglu;
#[cfg(test)]
pub(crate) mod test_util;

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

#[cfg(test)]
pub(crate) use attention::MASKED;
pub use attention::{attention, attention_bias};
pub(crate) use cross_entropy::check_positions;
pub use cross_entropy::{linear_cross_entropy, masked_cross_entropy};
pub use dropout::dropout;
pub(crate) use frozen_linear::{frozen_linear, frozen_linear_many};
pub use rms_norm::rms_norm;
pub use swiglu::swiglu;

/// Can the fused kernels run on `t`: f32 on the CPU, unless `RLLR_FUSED=0` opts out (the
/// composite path, for A/B runs and as a fallback).
///
/// Each kernel matches the composite path within 1e-4 forward and backward (each op's tests) and is
/// row-deterministic: a row's output and gradient are bit-identical whatever batch, padding or
/// rayon thread count it is computed under. Whole-model outputs are not
/// bit-identical across batch shapes on either path, because candle's gemm blocks differently
/// with the row count.
pub(crate) fn fusable(t: &Tensor) -> bool {
    cpu_f32(t) && fused_enabled()
}

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn fused_enabled() -> bool {
    #[cfg(test)]
    if let Some(on) = FORCE.with(|f| f.get()) {
        return on;
    }
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("RLLR_FUSED").as_deref() != Ok("0"))
}

#[cfg(test)]
thread_local! {
    static FORCE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Run `f` on this thread with the fused kernels forced on or off (tests of both paths in one
/// process; the environment switch is read once).
#[cfg(test)]
pub(crate) fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = FORCE.with(|c| c.replace(Some(on)));
    let r = f();
    FORCE.with(|c| c.set(before));
    r
}
