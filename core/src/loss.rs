//! Losses the trainers share, written once so every trainer gets the fast path.
//!
//! [`masked_cross_entropy`] is the SFT / reward-pretraining loss: token-level cross-entropy
//! averaged over the positions a mask selects (prompt and padding excluded). On the CPU it is one
//! fused kernel each way (no (N, V) log-probabilities kept for the backward).

use candle_core::{DType, Tensor, D};

pub(crate) use crate::ops::check_positions;
use crate::Result;

/// Mean over masked positions of `-log softmax(logits)[target]`.
///
/// `logits` (..., V) float, `targets` (...) u32, `mask` (...) of 0/1 in any float dtype; the
/// result is a scalar f32. A mask with no ones gives 0 (not NaN).
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let v = logits.dim(D::Minus1)?;
    let n = logits.elem_count() / v;
    check_positions("logits", n, targets, mask)?;
    let logits = logits.reshape((n, v))?.to_dtype(DType::F32)?;
    let targets = targets.reshape(n)?.to_dtype(DType::U32)?;
    let mask = mask.reshape(n)?.to_dtype(DType::F32)?;
    crate::ops::masked_cross_entropy(&logits, &targets, &mask)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn batched_targets_match_the_hand_value() {
        // Two rows of uniform logits over 4 classes: each loss is ln 4; the masked-out row is ignored.
        let logits = Tensor::zeros((1, 3, 4), DType::F32, &Device::Cpu).unwrap();
        let targets = Tensor::new(&[[0u32, 3, 1]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1f32, 1.0, 0.0]], &Device::Cpu).unwrap();
        let loss = masked_cross_entropy(&logits, &targets, &mask).unwrap();
        let got = loss.to_scalar::<f32>().unwrap();
        assert!((got - 4f32.ln()).abs() < 1e-6, "{got}");
    }
}
