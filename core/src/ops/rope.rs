//! RoPE in the "rotate half" layout transformers uses, on heads straight from a projection.

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor, D};

use super::cpu::{msg, rows_mut, slice, storage, with_f32, CResult};
use super::fusable;
use crate::Result;

/// RoPE on heads straight from a projection: x (B, L, H, D) → (B, H, L, D), tables (B, 1, L, D).
/// On the CPU in f32 the rotation and the transpose are one fused kernel with a backward; else
/// the transpose, then [`apply`].
pub fn apply_heads(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, l, _, d) = x.dims4()?;
    if fusable(x) && fusable(cos) && fusable(sin) {
        let table = |t: &Tensor| t.reshape((b, l, d));
        return Ok(fused(x, &table(cos)?, &table(sin)?)?);
    }
    apply(&x.transpose(1, 2)?.contiguous()?, cos, sin)
}

/// The composite (reference) RoPE: `x·cos + rotate_half(x)·sin` for x of shape (B, H, L, D) and
/// tables (B, 1, L, D).
pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let d = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, d / 2)?;
    let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    Ok((x.broadcast_mul(cos)? + rotated.broadcast_mul(sin)?)?)
}

/// Rotate-half RoPE fused with the head transpose: x (B, L, H, D) → y (B, H, L, D), with
/// y = x·cos + rotate_half(x)·sin and tables (B, L, D).
struct Rope {
    dims: [usize; 4],
}

impl Rope {
    /// Index of row (b, h, l) of the (B, H, L, D) side and row (b, l, h) of the (B, L, H, D) side.
    fn rows(&self, r: usize) -> (usize, usize) {
        let [_, h, l, _] = self.dims;
        let (b, rest) = (r / (h * l), r % (h * l));
        let (hh, ll) = (rest / l, rest % l);
        ((b * l + ll) * h + hh, b * l + ll)
    }

    /// One rotated row: out = a·cos + rot(a)·sin, or with `transpose` its adjoint
    /// out = a·cos + rotᵀ(a·sin).
    fn rotate(out: &mut [f32], a: &[f32], cos: &[f32], sin: &[f32], transpose: bool) {
        let half = a.len() / 2;
        for i in 0..half {
            let (a1, a2) = (a[i], a[i + half]);
            if transpose {
                out[i] = a1 * cos[i] + a2 * sin[i + half];
                out[i + half] = a2 * cos[i + half] - a1 * sin[i];
            } else {
                out[i] = a1 * cos[i] - a2 * sin[i];
                out[i + half] = a2 * cos[i + half] + a1 * sin[i + half];
            }
        }
    }

    /// Map every row: `forward` reads (B, L, H, D) rows and writes (B, H, L, D) ones; the
    /// backward reads (B, H, L, D) rows and writes (B, L, H, D) ones.
    fn map(&self, src: &[f32], cos: &[f32], sin: &[f32], forward: bool) -> Vec<f32> {
        let d = self.dims[3];
        let mut out = vec![0f32; src.len()];
        let [b, h, l, _] = self.dims;
        let fill = |r: usize, row: &mut [f32]| {
            // r enumerates output rows; bhl is the (B, H, L, D) row index on either side.
            let bhl = if forward { r } else { self.bhl_of_blh(r) };
            let (blh, bl) = self.rows(bhl);
            let a = if forward { blh } else { bhl };
            let t = &cos[bl * d..(bl + 1) * d];
            let s = &sin[bl * d..(bl + 1) * d];
            Self::rotate(row, &src[a * d..(a + 1) * d], t, s, !forward);
        };
        debug_assert_eq!(out.len(), b * h * l * d);
        rows_mut(&mut out, d, fill);
        out
    }

    /// (B, H, L) row index of the (B, L, H) row `r`.
    fn bhl_of_blh(&self, r: usize) -> usize {
        let [_, h, l, _] = self.dims;
        let (b, rest) = (r / (l * h), r % (l * h));
        let (ll, hh) = (rest / h, rest % h);
        (b * h + hh) * l + ll
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rllr-rope"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let out = self.map(slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?, true);
        Ok(storage(out, Shape::from(&self.dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        if cos.track_op() || sin.track_op() {
            return Err(msg(
                "rllr-rope: gradients for the cos/sin tables are not supported",
            ));
        }
        let dx = with_f32(g, |gs| {
            with_f32(cos, |c| {
                with_f32(sin, |s| {
                    Tensor::from_vec(self.map(gs, c, s, false), x.shape(), x.device())
                })
            })
        })?;
        Ok((Some(dx), None, None))
    }
}

/// Fused RoPE + transpose: x (B, L, H, D), cos/sin (B, L, D) → (B, H, L, D).
pub(crate) fn fused(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    let op = Rope { dims: [b, h, l, d] };
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::Tensor;

    use crate::ops::{
        rope,
        test_util::{assert_row_stable, check, half, rand, rel_diff, HALF},
    };

    #[test]
    fn rope_matches_composite() {
        let (cos, sin) = (rand(&[2, 1, 5, 8], 3), rand(&[2, 1, 5, 8], 4));
        let f = |t: &[Tensor]| rope::apply_heads(&t[0], &cos, &sin);
        let c = |t: &[Tensor]| {
            let x = t[0].transpose(1, 2)?.contiguous()?;
            rope::apply(&x, &cos, &sin)
        };
        check("rope", &f, &c, &[rand(&[2, 5, 3, 8], 5)]);
    }

    #[test]
    fn rope_is_row_deterministic() {
        // One sequence of 11 tokens, 7 heads of 64: (1, L, H, D) → (1, H, L, D).
        let (l, h, d) = (11, 7, 64);
        let f = |t: &[Tensor]| rope::fused(&t[0], &t[1], &t[2]).unwrap();
        let targets = [
            rand(&[1, l, h, d], 5),
            rand(&[1, l, d], 6),
            rand(&[1, l, d], 7),
        ];
        assert_row_stable("rope", &f, &targets, &[], &[1, h, l, d]);
    }

    #[test]
    fn rope_in_half_precision_matches_f32() {
        let (cos, sin) = (rand(&[2, 1, 5, 8], 3), rand(&[2, 1, 5, 8], 4));
        let x = rand(&[2, 5, 3, 8], 5);
        let want = rope::apply_heads(&x, &cos, &sin).unwrap();
        for dtype in HALF {
            let [x, cos, sin] = [&x, &cos, &sin].map(|t| half(t, dtype));
            let got = rope::apply_heads(&x, &cos, &sin).unwrap();
            assert_eq!(got.dtype(), dtype);
            let rel = rel_diff(&got, &want);
            assert!(rel <= 1e-2, "{dtype:?}: relative max |Δ| {rel}");
        }
    }
}
