//! `softmax(scale·scores + bias)` over the last dim with an additive mask: attention's probabilities.
//!
//! No dispatch function of its own: [`super::attention`] is the only caller and decides the path.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use super::cpu::{build, dot, msg, rows_mut, slice, storage, with_f32, CResult};
use crate::Result;

/// `softmax(scale·scores + bias)` from plain candle ops, in f32; scores (B, G, L, T), bias
/// (B, 1, L, T): the non-CPU path and the fused kernel's reference.
pub(crate) fn composite(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (scores * scale)?
        .to_dtype(DType::F32)?
        .broadcast_add(bias)?;
    Ok(candle_nn::ops::softmax(&scores, D::Minus1)?)
}

/// `softmax(scale·s + bias)` over the last dim; scores (B, G, L, T), bias (B, L, T) shared by
/// the G head groups.
struct MaskedSoftmax {
    scale: f32,
    groups: usize,
    len: usize,
}

impl MaskedSoftmax {
    /// Row of the bias used by scores row `r` of (B, G, L).
    fn bias_row(&self, r: usize) -> usize {
        let b = r / (self.groups * self.len);
        b * self.len + r % self.len
    }
}

pub(super) fn softmax_row(y: &mut [f32], s: &[f32], bias: &[f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for ((y, s), b) in y.iter_mut().zip(s).zip(bias) {
        *y = s * scale + b;
        max = max.max(*y);
    }
    let mut sum = 0f32;
    for y in y.iter_mut() {
        *y = (*y - max).exp();
        sum += *y;
    }
    let inv = 1.0 / sum;
    y.iter_mut().for_each(|y| *y *= inv);
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "rllr-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (s, bias) = (slice(s1, l1)?, slice(s2, l2)?);
        let t = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; s.len()];
        rows_mut(&mut out, t, |r, y| {
            let br = self.bias_row(r);
            softmax_row(
                y,
                &s[r * t..(r + 1) * t],
                &bias[br * t..(br + 1) * t],
                self.scale,
            );
        });
        Ok(storage(out, l1.shape().clone()))
    }

    /// ds = scale · p·(g − Σ g·p); the bias is a constant mask (no gradient).
    fn bwd(
        &self,
        s: &Tensor,
        bias: &Tensor,
        p: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        if bias.track_op() {
            return Err(msg("rllr-masked-softmax: the mask takes no gradient"));
        }
        let t = s.dim(candle_core::D::Minus1)?;
        let ds = with_f32(p, |ps| {
            with_f32(g, |gs| {
                build(s, s.shape(), t, |r, ds| {
                    let (pr, gr) = (&ps[r * t..(r + 1) * t], &gs[r * t..(r + 1) * t]);
                    let gp = dot(pr, gr);
                    for ((d, p), g) in ds.iter_mut().zip(pr).zip(gr) {
                        *d = self.scale * p * (g - gp);
                    }
                })
            })
        })?;
        Ok((Some(ds), None))
    }
}

/// Fused `softmax(scale·scores + bias)`; scores (B, G, L, T), bias (B, L, T).
pub(crate) fn fused(scores: &Tensor, bias: &Tensor, scale: f64) -> CResult<Tensor> {
    let (_, groups, len, _) = scores.dims4()?;
    let op = MaskedSoftmax {
        scale: scale as f32,
        groups,
        len,
    };
    scores.contiguous()?.apply_op2(&bias.contiguous()?, op)
}
