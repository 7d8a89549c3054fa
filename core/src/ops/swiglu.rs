//! SwiGLU: `silu(gate) · up`, the Llama MLP's activation.

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};

use super::cpu::{build, rows_mut, slice, storage, with_f32, CResult};
use super::fusable;
use crate::Result;

/// `silu(gate) · up` for tensors of the same shape: fused where [`fusable`], else the composite.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fusable(gate) && fusable(up) {
        return Ok(fused(gate, up)?);
    }
    composite(gate, up)
}

/// `silu(gate) · up` from plain candle ops (any device and dtype; in the inputs' dtype, as
/// transformers computes it).
pub(crate) fn composite(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    Ok((gate.silu()? * up)?)
}

/// `silu(gate) · up`, elementwise.
struct SwiGlu;

fn sigmoid(a: f32) -> f32 {
    1.0 / (1.0 + (-a).exp())
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "rllr-swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (a, u) = (slice(s1, l1)?, slice(s2, l2)?);
        let w = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; a.len()];
        rows_mut(&mut out, w, |r, y| {
            let (ar, ur) = (&a[r * w..(r + 1) * w], &u[r * w..(r + 1) * w]);
            for ((y, a), u) in y.iter_mut().zip(ar).zip(ur) {
                *y = a * sigmoid(*a) * u;
            }
        });
        Ok(storage(out, l1.shape().clone()))
    }

    /// d gate = g·up·σ(a)·(1 + a·(1 − σ(a))), d up = g·silu(a).
    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let w = gate.dim(candle_core::D::Minus1)?;
        with_f32(gate, |a| {
            with_f32(up, |u| {
                with_f32(g, |gs| {
                    let row = |r: usize| r * w..(r + 1) * w;
                    let da = build(gate, gate.shape(), w, |r, d| {
                        let (ar, ur, gr) = (&a[row(r)], &u[row(r)], &gs[row(r)]);
                        for (((d, a), u), g) in d.iter_mut().zip(ar).zip(ur).zip(gr) {
                            let s = sigmoid(*a);
                            *d = g * u * s * (1.0 + a * (1.0 - s));
                        }
                    })?;
                    let du = build(up, up.shape(), w, |r, d| {
                        let (ar, gr) = (&a[row(r)], &gs[row(r)]);
                        for ((d, a), g) in d.iter_mut().zip(ar).zip(gr) {
                            *d = g * a * sigmoid(*a);
                        }
                    })?;
                    Ok((Some(da), Some(du)))
                })
            })
        })
    }
}

/// Fused `silu(gate) · up` for tensors of the same shape.
pub(crate) fn fused(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use crate::ops::{
        swiglu,
        test_util::{assert_row_stable, check, half, rand, rel_diff, HALF, W},
    };

    #[test]
    fn swiglu_matches_composite() {
        let f = |t: &[Tensor]| Ok(swiglu::fused(&t[0], &t[1])?);
        let c = |t: &[Tensor]| swiglu::composite(&t[0], &t[1]);
        check("swiglu", &f, &c, &[rand(&[4, 10], 7), rand(&[4, 10], 8)]);
    }

    #[test]
    fn swiglu_is_row_deterministic() {
        let f = |t: &[Tensor]| swiglu::fused(&t[0], &t[1]).unwrap();
        let targets = [rand(&[1, W], 3), rand(&[1, W], 4)];
        assert_row_stable("swiglu", &f, &targets, &[], &[1, W]);
    }

    #[test]
    fn swiglu_in_half_precision_matches_f32() {
        let (gate, up) = (rand(&[4, 10], 7), rand(&[4, 10], 8));
        let want = swiglu::swiglu(&gate, &up).unwrap();
        for dtype in HALF {
            let got = swiglu::swiglu(&half(&gate, dtype), &half(&up, dtype)).unwrap();
            assert_eq!(got.dtype(), dtype);
            let rel = rel_diff(&got, &want);
            assert!(rel <= 1e-2, "{dtype:?}: relative max |Δ| {rel}");
        }
    }
}
