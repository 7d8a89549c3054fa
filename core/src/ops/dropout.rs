//! Inverted dropout with a mask drawn from a seed (deterministic, so resumed runs replay exactly).
//!
//! The mask is drawn on the host (the same bits on every device) and uploaded to x's device in
//! x's dtype, so the composite runs wherever x lives (CUDA training included).

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rand::{Rng, SeedableRng};

use super::cpu::{slice, storage, with_f32, CResult};
use super::fusable;
use crate::Result;

/// Inverted dropout with a mask drawn from `seed`: the fused op where [`fusable`], else the
/// composite (the same mask, multiplied in).
pub fn dropout(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if fusable(x) {
        return Ok(fused(x, p, seed)?);
    }
    composite(x, p, seed)
}

/// `x ⊙ mask(p, seed)` from plain candle ops, on x's device and in x's dtype.
pub(crate) fn composite(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    Ok(x.mul(&mask)?)
}

/// The inverted-dropout multipliers for `n` elements: 0 with probability `p`, else 1 / (1 − p).
pub(crate) fn dropout_mask(n: usize, p: f32, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect()
}

/// Inverted dropout whose mask is regenerated from its seed in the backward instead of being kept
/// by the graph (one activation-sized tensor less per LoRA module).
struct Dropout {
    p: f32,
    seed: u64,
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mask = dropout_mask(x.len(), self.p, self.seed);
        x.iter().zip(mask).map(|(x, m)| x * m).collect()
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "rllr-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        Ok(storage(self.apply(slice(s, l)?), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let dx = with_f32(g, |g| Ok(self.apply(g)))?;
        Ok(Some(Tensor::from_vec(dx, g.shape(), g.device())?))
    }
}

/// `x ⊙ mask(p, seed)` with the same mask as [`composite`].
pub(crate) fn fused(x: &Tensor, p: f32, seed: u64) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(Dropout { p, seed })
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::ops::{
        dropout,
        test_util::{check, half, rand, rel_diff, HALF},
    };

    #[test]
    fn dropout_matches_composite() {
        let f = |t: &[Tensor]| Ok(dropout::fused(&t[0], 0.3, 17)?);
        let c = |t: &[Tensor]| {
            let mask = dropout::dropout_mask(t[0].elem_count(), 0.3, 17);
            Ok(t[0].mul(&Tensor::from_vec(mask, t[0].shape(), &Device::Cpu)?)?)
        };
        check("dropout", &f, &c, &[rand(&[6, 40], 23)]);
    }

    #[test]
    fn dropout_in_half_precision_keeps_the_dtype_and_the_mask() {
        // Half precision takes the composite: x's dtype out, the f32 path's mask.
        let x = rand(&[6, 40], 24);
        let want = dropout::dropout(&x, 0.3, 17).unwrap();
        for dtype in HALF {
            let got = dropout::dropout(&half(&x, dtype), 0.3, 17).unwrap();
            assert_eq!(got.dtype(), dtype);
            let zeros = |t: &Tensor| -> Vec<bool> {
                let v = t.flatten_all().unwrap().to_dtype(DType::F32).unwrap();
                v.to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| *v == 0.0)
                    .collect()
            };
            assert_eq!(
                zeros(&got),
                zeros(&want),
                "{dtype:?}: same dropped elements"
            );
            let rel = rel_diff(&got, &want);
            assert!(rel <= 1e-2, "{dtype:?}: relative max |Δ| {rel}");
        }
    }
}
