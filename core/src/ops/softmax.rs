//! `softmax(scale·scores + bias)` over the last dim with an additive mask: attention's probabilities.
//!
//! No dispatch function of its own: [`super::attention`] is the only caller and decides the path.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

use super::cpu::{build, dot, msg, rows_mut, slice, storage, with_f32, CResult};
use crate::Result;

/// `softmax(scale·scores + bias)` from plain candle ops, in f32 whatever the scores' dtype (they
/// are upcast before scaling, and the result is f32); scores (B, G, L, T), bias (B, 1, L, T) f32:
/// the non-CPU / non-f32 path and the fused kernel's reference.
pub(crate) fn composite(scores: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (scores.to_dtype(DType::F32)? * scale)?.broadcast_add(bias)?;
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

/// Below this, f32 `exp` rounds to +0 (e^−103.97 is half the smallest subnormal).
const EXP_ZERO_BELOW: f32 = -104.0;

pub(super) fn softmax_row(y: &mut [f32], s: &[f32], bias: &[f32], scale: f32) {
    let mut max = f32::NEG_INFINITY;
    for ((y, s), b) in y.iter_mut().zip(s).zip(bias) {
        *y = s * scale + b;
        max = max.max(*y);
    }
    let mut sum = 0f32;
    for y in y.iter_mut() {
        // Masked entries (bias −∞ or a huge negative) would take libm's underflow path, a
        // measurable share of an attention step; below −104 expf is exactly +0 anyway.
        let d = *y - max;
        *y = if d < EXP_ZERO_BELOW { 0.0 } else { d.exp() };
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    use crate::ops::{
        attention, softmax,
        test_util::{assert_row_stable, bits, check, half, max_diff, rand, value_and_grad, HALF},
        MASKED,
    };

    #[test]
    fn exp_below_the_cutoff_is_exactly_zero() {
        // The shortcut in softmax_row must not change a bit: every f32 below the cutoff has
        // exp == +0 (sampled densely near it), and just above it exp is still positive.
        let cut = super::EXP_ZERO_BELOW;
        let mut d = cut;
        while d > -140.0 {
            d = d.next_down();
            assert_eq!(d.exp().to_bits(), 0, "exp({d})");
            d -= 0.001;
        }
        for d in [-1e4f32, f32::MIN, f32::NEG_INFINITY] {
            assert_eq!(d.exp().to_bits(), 0, "exp({d})");
        }
        assert!((cut + 0.5).exp() > 0.0);
    }

    #[test]
    fn masked_softmax_matches_composite() {
        let (b, g, l, t) = (2, 3, 4, 6);
        let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let valid = vec![vec![false, true, true, true, true, true]; b];
        let q: Vec<Vec<u32>> = vec![(2..6).collect(); b];
        let bias = attention::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap();
        let f = |x: &[Tensor]| Ok(softmax::fused(&x[0], &bias.reshape((b, l, t))?, 0.3)?);
        let c = |x: &[Tensor]| softmax::composite(&x[0], &bias.reshape((b, 1, l, t))?, 0.3);
        check("masked_softmax", &f, &c, &[rand(&[b, g, l, t], 6)]);
    }

    #[test]
    fn masked_softmax_is_row_deterministic() {
        // One sequence's scores over 4 head groups × 9 queries × 523 keys, causal bias.
        let (g, l, t) = (4, 9, 523);
        let bias: Vec<f32> = (0..l * t)
            .map(|i| if i % t <= t - l + i / t { 0.0 } else { MASKED })
            .collect();
        let bias = Tensor::from_vec(bias, (1, l, t), &Device::Cpu).unwrap();
        let f = |x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.125).unwrap();
        let targets = [rand(&[1, g, l, t], 8), bias];
        assert_row_stable("masked_softmax", &f, &targets, &[], &[1, g, l, t]);
    }

    #[test]
    fn masked_softmax_ignores_padding_keys() {
        // The same sequence with `pad` masked keys in front of (left) or behind (right) its own:
        // identical probabilities on the real keys, exact zeros on the pads, forward and backward.
        let (g, l, t) = (3, 5, 37);
        let scores = rand(&[1, g, l, t], 20);
        let alone = value_and_grad(
            &|x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.3).unwrap(),
            &[
                scores.clone(),
                Tensor::zeros((1, l, t), DType::F32, &Device::Cpu).unwrap(),
            ],
            &rand(&[1, g, l, t], 21),
        );
        for (pad, left) in [(1, true), (6, false), (13, true)] {
            let noise = rand(&[1, g, l, pad], 22);
            let cat = |a: &Tensor, b: &Tensor| {
                let parts = if left { [b, a] } else { [a, b] };
                Tensor::cat(&parts, 3).unwrap()
            };
            let masked = Tensor::full(MASKED, (1, l, pad), &Device::Cpu).unwrap();
            let zeros = Tensor::zeros((1, l, t), DType::F32, &Device::Cpu).unwrap();
            let bias = if left {
                Tensor::cat(&[&masked, &zeros], 2)
            } else {
                Tensor::cat(&[&zeros, &masked], 2)
            }
            .unwrap();
            let r = cat(&rand(&[1, g, l, t], 21), &noise);
            let [y, dx] = value_and_grad(
                &|x: &[Tensor]| softmax::fused(&x[0], &x[1], 0.3).unwrap(),
                &[cat(&scores, &noise), bias],
                &r,
            );
            let real = |x: &Tensor| x.narrow(3, if left { pad } else { 0 }, t).unwrap();
            let pads = |x: &Tensor| x.narrow(3, if left { 0 } else { t }, pad).unwrap();
            assert!(bits(&real(&y)) == bits(&alone[0]), "forward, pad {pad}");
            assert!(bits(&real(&dx)) == bits(&alone[1]), "backward, pad {pad}");
            assert!(bits(&pads(&y)).iter().all(|b| *b == 0), "pads get 0");
        }
    }

    #[test]
    fn masked_softmax_of_half_precision_scores_is_f32_and_close() {
        let (b, l, t) = (2, 4, 6);
        let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let valid = vec![vec![false, true, true, true, true, true]; b];
        let q: Vec<Vec<u32>> = vec![(2..6).collect(); b];
        let bias = attention::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap();
        let bias = bias.reshape((b, 1, l, t)).unwrap();
        let scores = rand(&[b, 3, l, t], 16);
        let want = softmax::composite(&scores, &bias, 0.3).unwrap();
        for dtype in HALF {
            let got = softmax::composite(&half(&scores, dtype), &bias, 0.3).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-2, "{dtype:?}: max |Δ| {diff}");
        }
    }
}
