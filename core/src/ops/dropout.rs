//! Inverted dropout with a mask drawn from a seed (deterministic, so resumed runs replay exactly).

use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape, Tensor};
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

/// `x ⊙ mask(p, seed)` from plain candle ops.
pub(crate) fn composite(x: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    let mask = dropout_mask(x.elem_count(), p, seed);
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
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
    use candle_core::{Device, Tensor};

    use crate::ops::{
        dropout,
        test_util::{check, rand},
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
}
