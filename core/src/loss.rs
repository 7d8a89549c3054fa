//! Losses the trainers share, written once so every trainer gets the fast path.
//!
//! [`masked_cross_entropy`] is the SFT / reward-pretraining loss: token-level cross-entropy
//! averaged over the positions a mask selects (prompt and padding excluded). On the CPU it is one
//! fused kernel each way (no (N, V) log-probabilities kept for the backward).

use candle_core::{DType, Tensor, D};

use crate::{Error, Result};

/// Mean over masked positions of `-log softmax(logits)[target]`.
///
/// `logits` (..., V) float, `targets` (...) u32, `mask` (...) of 0/1 in any float dtype; the
/// result is a scalar f32. A mask with no ones gives 0 (not NaN).
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let n = logits.elem_count() / v;
    if targets.elem_count() != n || mask.elem_count() != n {
        return Err(Error::Input(format!(
            "cross-entropy: {n} positions of logits, {} targets, {} mask entries",
            targets.elem_count(),
            mask.elem_count()
        )));
    }
    let logits = logits.reshape((n, v))?.to_dtype(DType::F32)?;
    let targets = targets.reshape((n, 1))?.to_dtype(DType::U32)?;
    let mask = mask.reshape(n)?.to_dtype(DType::F32)?;
    if crate::fused::fusable(&logits) {
        return Ok(crate::fused::masked_cross_entropy(
            &logits, &targets, &mask,
        )?);
    }
    composite(&logits, &targets, &mask)
}

/// The reference path (plain candle ops): log-softmax, gather, masked mean.
pub(crate) fn composite(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = logp.gather(targets, 1)?.squeeze(1)?.neg()?;
    let count = mask.sum_all()?.maximum(1f32)?;
    Ok((nll * mask)?.sum_all()?.div(&count)?)
}
