//! RMSNorm: `w · x / sqrt(mean(x²) + eps)` over the last dim, computed in f32 as transformers does.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use super::cpu::{build, dot, rows_mut, slice, storage, with_f32, CResult};
use super::fusable;
use crate::Result;

/// RMSNorm of x (..., H) with weight (H), differentiable: the fused kernel where [`fusable`]
/// (f32 on the CPU), else the composite.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fusable(x) && fusable(weight) {
        return Ok(fused(x, weight, eps)?);
    }
    composite(x, weight, eps)
}

/// RMSNorm from plain candle ops: the non-CPU / non-f32 path and the fused kernel's reference.
/// The statistics are taken in f32 whatever x's dtype, then cast back to it before the weight
/// multiplies (transformers' `LlamaRMSNorm`).
pub(crate) fn composite(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let var = xf.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = xf.broadcast_div(&(var + eps)?.sqrt()?)?;
    Ok(normed.to_dtype(dtype)?.broadcast_mul(weight)?)
}

/// `y = w · x / sqrt(mean(x²) + eps)` over the last dim; x (..., H), w (H).
struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn inv_rms(&self, x: &[f32]) -> f32 {
        1.0 / (dot(x, x) / x.len() as f32 + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rllr-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        rows_mut(&mut out, h, |r, y| {
            let xr = &x[r * h..(r + 1) * h];
            let inv = self.inv_rms(xr);
            y.iter_mut()
                .zip(xr)
                .zip(w)
                .for_each(|((y, x), w)| *y = x * inv * w);
        });
        Ok(storage(out, l1.shape().clone()))
    }

    /// dx = r·(w·g − x·r²·mean(w·g·x)), dw = Σ_rows g·x·r, with r = 1/rms(x).
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let h = w.elem_count();
        with_f32(x, |xs| {
            with_f32(w, |ws| {
                with_f32(g, |gs| {
                    let dx = build(x, x.shape(), h, |r, dx| {
                        let (xr, gr) = (&xs[r * h..(r + 1) * h], &gs[r * h..(r + 1) * h]);
                        let inv = self.inv_rms(xr);
                        let wgx: f32 = xr.iter().zip(gr).zip(ws).map(|((x, g), w)| w * g * x).sum();
                        let c = inv * inv * wgx / h as f32;
                        for (((d, x), g), w) in dx.iter_mut().zip(xr).zip(gr).zip(ws) {
                            *d = inv * (w * g - x * c);
                        }
                    })?;
                    let dw = if w.track_op() {
                        let mut acc = vec![0f32; h];
                        for (xr, gr) in xs.chunks(h).zip(gs.chunks(h)) {
                            let inv = self.inv_rms(xr);
                            acc.iter_mut()
                                .zip(xr)
                                .zip(gr)
                                .for_each(|((a, x), g)| *a += g * x * inv);
                        }
                        Some(Tensor::from_vec(acc, h, w.device())?)
                    } else {
                        None
                    };
                    Ok((Some(dx), dw))
                })
            })
        })
    }
}

/// Fused RMSNorm of x (..., H) with weight (H); f32 CPU tensors only.
pub(crate) fn fused(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use crate::ops::{
        rms_norm,
        test_util::{assert_row_stable, check, half, rand, rel_diff, HALF, W},
    };

    #[test]
    fn rms_norm_matches_composite() {
        let f = |t: &[Tensor]| Ok(rms_norm::fused(&t[0], &t[1], 1e-5)?);
        let c = |t: &[Tensor]| rms_norm::composite(&t[0], &t[1], 1e-5);
        check("rms_norm", &f, &c, &[rand(&[3, 5, 16], 1), rand(&[16], 2)]);
        // Large enough for the row-parallel branch.
        check(
            "rms_norm",
            &f,
            &c,
            &[rand(&[3, 40, 300], 12), rand(&[300], 13)],
        );
    }

    #[test]
    fn rms_norm_is_row_deterministic() {
        let f = |t: &[Tensor]| rms_norm::fused(&t[0], &t[1], 1e-5).unwrap();
        assert_row_stable(
            "rms_norm",
            &f,
            &[rand(&[1, W], 1)],
            &[rand(&[W], 2)],
            &[1, W],
        );
    }

    #[test]
    fn rms_norm_in_half_precision_matches_f32() {
        let (x, w) = (rand(&[3, 5, 64], 14), rand(&[64], 15));
        let want = rms_norm::rms_norm(&x, &w, 1e-5).unwrap();
        for dtype in HALF {
            let got = rms_norm::rms_norm(&half(&x, dtype), &half(&w, dtype), 1e-5).unwrap();
            assert_eq!(got.dtype(), dtype);
            let rel = rel_diff(&got, &want);
            assert!(rel <= 1e-2, "{dtype:?}: relative max |Δ| {rel}");
        }
    }
}
