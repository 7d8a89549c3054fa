//! `x·Wᵀ` over a frozen weight: the base product of every projection and of the LM head.
//!
//! Three paths, chosen by [`frozen_linear`]: the skinny AVX-512 or AVX2 kernel for decode-sized inputs
//! without autograd, the [`FrozenLinear`] op under autograd (its backward skips the weight
//! gradient), and candle's plain matmul (the composite) otherwise.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Storage, Tensor};

use super::cpu::{msg, slice, with_f32, CResult};
use super::{cpu_f32, fusable};
use crate::skinny;

/// `x·Wᵀ` whose backward returns only `g·W`: candle's matmul backward would also compute (and
/// then drop) the gradient of the frozen weight, as costly as the forward matmul itself. The
/// forward is candle's own CPU matmul (same bits as `x.matmul(&w.t())`) writing straight into the
/// op's output, so no copy of the (N, out) result is made.
struct FrozenLinear {
    weight: Tensor,
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "rllr-frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (m, k) = l.shape().dims2()?;
        let wt = self.weight.t()?;
        let n = wt.dim(1)?;
        let (ws, wl) = wt.storage_and_layout();
        let Storage::Cpu(w) = &*ws else {
            return Err(msg("rllr-frozen-linear on a non-CPU weight"));
        };
        Ok((s.matmul(w, (1, m, n, k), l, wl)?, Shape::from((m, n))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(g.matmul(&self.weight)?))
    }
}

/// `x·Wᵀ` for x (N, in) and a frozen W (out, in). Under autograd on the CPU the weight gradient
/// is never computed; otherwise this is the plain matmul.
pub(crate) fn frozen_linear(x: &Tensor, weight: &Tensor) -> CResult<Tensor> {
    if !x.track_op() && !weight.track_op() && fusable(x) && cpu_f32(weight) && skinny_fits(x)? {
        return skinny_linear(x, weight);
    }
    // The forward is the same matmul either way, so this one needs no opt-in.
    if !x.track_op() || weight.track_op() || !cpu_f32(x) || !cpu_f32(weight) {
        return x.matmul(&weight.t()?);
    }
    x.apply_op1(FrozenLinear {
        weight: weight.clone(),
    })
}

/// A decode-sized input (at most [`skinny::MAX_ROWS`] rows) on a CPU the skinny kernel runs on.
fn skinny_fits(x: &Tensor) -> CResult<bool> {
    Ok(skinny::available() && x.dims2()?.0 <= skinny::MAX_ROWS)
}

/// Inference `x·Wᵀ` through [`skinny::matmul_t`] (x has no gradient to track).
fn skinny_linear(x: &Tensor, weight: &Tensor) -> CResult<Tensor> {
    let ((m, k), n) = (x.dims2()?, weight.dim(0)?);
    let y = with_f32(x, |xs| {
        with_f32(weight, |ws| Ok(skinny::matmul_t(xs, ws, m, k, n)))
    })?;
    Tensor::from_vec(y, (m, n), x.device())
}

/// Inference `x·Wᵢᵀ` for several frozen weights of one decode-sized input in one skinny dispatch
/// (the q, k and v projections of a decode step); `None` when that path does not apply (tracked
/// or larger inputs, other devices or dtypes, no AVX-512 or AVX2): the caller then runs them one by one.
pub(crate) fn frozen_linear_many(x: &Tensor, weights: &[&Tensor]) -> CResult<Option<Vec<Tensor>>> {
    let frozen = |w: &Tensor| !w.track_op() && cpu_f32(w) && w.is_contiguous();
    if x.track_op() || !fusable(x) || !skinny_fits(x)? || !weights.iter().all(|w| frozen(w)) {
        return Ok(None);
    }
    let (m, k) = x.dims2()?;
    let guards: Vec<_> = weights.iter().map(|w| w.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(weights.len());
    for (storage, layout) in &guards {
        let Storage::Cpu(s) = &**storage else {
            return Ok(None);
        };
        slices.push(slice(s, layout)?);
    }
    let ys = with_f32(x, |xs| Ok(skinny::matmul_t_many(xs, &slices, m, k)))?;
    ys.into_iter()
        .zip(weights)
        .map(|(y, w)| Tensor::from_vec(y, (m, w.dim(0)?), x.device()))
        .collect::<CResult<Vec<_>>>()
        .map(Some)
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use crate::ops::{
        frozen_linear,
        test_util::{check, half, rand, rel_diff, HALF},
    };

    #[test]
    fn frozen_linear_matches_matmul_and_leaves_the_weight_alone() {
        let w = rand(&[3, 7], 10);
        let f = |t: &[Tensor]| Ok(frozen_linear::frozen_linear(&t[0], &w)?);
        let c = |t: &[Tensor]| Ok(t[0].matmul(&w.t()?)?);
        check("frozen_linear", &f, &c, &[rand(&[5, 7], 11)]);
        // The forward is candle's matmul, bit for bit, for a contiguous and a transposed input.
        let a = Var::from_tensor(&rand(&[5, 7], 12)).unwrap();
        let b = Var::from_tensor(&rand(&[7, 5], 13)).unwrap();
        for x in [a.as_tensor().clone(), b.as_tensor().t().unwrap()] {
            let got = frozen_linear::frozen_linear(&x, &w).unwrap();
            let want = x.detach().matmul(&w.t().unwrap()).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap()
            );
        }
    }

    #[test]
    fn frozen_linear_in_half_precision_matches_f32() {
        // Decode-sized (the skinny kernel's shape in f32) and prefill-sized inputs.
        let w = rand(&[24, 40], 14);
        for rows in [1, 37] {
            let x = rand(&[rows, 40], 15);
            let want = frozen_linear::frozen_linear(&x, &w).unwrap();
            for dtype in HALF {
                let got = frozen_linear::frozen_linear(&half(&x, dtype), &half(&w, dtype));
                let got = got.unwrap();
                assert_eq!(got.dtype(), dtype);
                let rel = rel_diff(&got, &want);
                assert!(
                    rel <= 1e-2,
                    "{rows} rows, {dtype:?}: relative max |Δ| {rel}"
                );
            }
        }
    }

    #[test]
    fn frozen_linear_many_leaves_half_precision_to_the_caller() {
        let (x, w) = (rand(&[1, 40], 16), rand(&[24, 40], 17));
        for dtype in HALF {
            let many = frozen_linear::frozen_linear_many(&half(&x, dtype), &[&half(&w, dtype)]);
            assert!(many.unwrap().is_none(), "{dtype:?}");
        }
    }
}
