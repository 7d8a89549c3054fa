//! Grouped-query attention `softmax(scale·q·kᵀ + bias)·v`, and the additive bias (mask) it takes.
//!
//! Three paths, chosen by [`attention`]: the one-pass inference kernel (no autograd, AVX-512 or AVX2,
//! keys and values read in place from the KV cache), the fused training op (its backward
//! recomputes the probabilities instead of keeping them), and the composite.

use candle_core::{CpuStorage, CustomOp3, Device, Layout, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::cpu::{msg, slice, storage, with_f32, CResult, PAR_MIN};
use super::softmax::{self, softmax_row};
use super::{cpu_f32, fusable};
use crate::{skinny, Result};

/// Masked attention logits get this instead of -inf, so a fully masked (pad) row never yields NaN.
pub(crate) const MASKED: f32 = -1e30;

/// Attention of q (B, H, L, D) over k and v (B, KV, T, D) (H a multiple of KV) with the
/// additive bias (B, 1, 1, L, T) of [`attention_bias`]; returns (B, H, L, D).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, heads, l, head_dim) = q.dims4()?;
    let (_, n_kv, t, _) = k.dims4()?;
    // Both CPU kernels read the bias as f32 CPU memory too.
    let bias_cpu = cpu_f32(bias);
    if bias_cpu && infer_attention_fits(q, k, v)? {
        return Ok(infer_attention(q, k, v, &bias.reshape((b, l, t))?, scale)?);
    }
    // Grouped-query attention without copying K/V: view the query heads that share a KV head
    // as one longer sequence, (B, KV, rep·L, D).
    let rep = heads / n_kv;
    let qg = q.reshape((b, n_kv, rep * l, head_dim))?;
    let out = if bias_cpu && fusable(&qg) && fusable(k) && fusable(v) {
        fused(&qg, k, v, &bias.reshape((b, l, t))?, scale, heads)?
    } else {
        let scores = qg.matmul(&k.t()?)?.reshape((b, heads, l, t))?;
        let probs = softmax::composite(&scores, &bias.reshape((b, 1, l, t))?, scale)?
            .to_dtype(v.dtype())?
            .reshape((b, n_kv, rep * l, t))?;
        probs.matmul(v)?
    };
    Ok(out.reshape((b, heads, l, head_dim))?)
}

/// Additive attention bias (B, 1, 1, L, T): 0 where query `q` may see key `k` — the key is real,
/// not in the future (`pos_k ≤ pos_q`) and inside the sliding window — else a large negative.
pub fn attention_bias(
    q_pos: &[Vec<u32>],
    k_pos: &[Vec<u32>],
    k_valid: &[Vec<bool>],
    window: Option<usize>,
    device: &Device,
) -> Result<Tensor> {
    let b = q_pos.len();
    let l = q_pos.first().map(Vec::len).unwrap_or(0);
    let t = k_pos.first().map(Vec::len).unwrap_or(0);
    let mut bias = Vec::with_capacity(b * l * t);
    for r in 0..b {
        for &qp in &q_pos[r] {
            for (&kp, &kv) in k_pos[r].iter().zip(&k_valid[r]) {
                let in_window = window.is_none_or(|w| (qp as usize) < kp as usize + w);
                bias.push(if kv && kp <= qp && in_window {
                    0.0
                } else {
                    MASKED
                });
            }
        }
    }
    Ok(Tensor::from_vec(bias, (b, 1, 1, l, t), device)?)
}

// ---- decode attention -------------------------------------------------------------------------

/// Inference attention in one pass per (row, KV head): `softmax(scale·q·kᵀ + bias)·v`, the
/// query heads of a group reading their shared KV head. q (B, H, L, D) and bias (B, L, T); k, v
/// (B, KV, T, D) with a contiguous (T, D) block per row and head (the KV cache's buffers are read
/// in place). Returns (B, H, L, D). Per group, the scores are one skinny product, so a decode
/// step makes B·KV small tasks instead of two gemm calls per row and head. Callers check
/// [`infer_attention_fits`] first.
pub(crate) fn infer_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
) -> CResult<Tensor> {
    let (b, h, l, d) = q.dims4()?;
    let (_, kv, t, _) = k.dims4()?;
    let rows = h / kv * l; // query rows per group: rep heads × L positions
    let scale = scale as f32;
    let (q, bias) = (q.contiguous()?, bias.contiguous()?);
    let mut out = vec![0f32; b * h * l * d];
    with_f32(&q, |q| {
        with_f32(&bias, |bias| {
            with_kv_blocks(k, |k| {
                with_kv_blocks(v, |v| {
                    let group = |g: usize, y: &mut [f32]| {
                        let qg = &q[g * rows * d..(g + 1) * rows * d];
                        let scores = skinny::matmul_t_serial(qg, k.block(g, t * d), rows, d, t);
                        let bias = &bias[(g / kv) * l * t..(g / kv + 1) * l * t];
                        let mut p = vec![0f32; rows * t];
                        for (r, (pr, sr)) in p.chunks_mut(t).zip(scores.chunks(t)).enumerate() {
                            let i = r % l; // the query position of row r
                            softmax_row(pr, sr, &bias[i * t..(i + 1) * t], scale);
                        }
                        skinny::weighted_rows(&p, v.block(g, t * d), rows, t, d, y);
                    };
                    if b * h * l * t * d >= PAR_MIN {
                        out.par_chunks_mut(rows * d)
                            .enumerate()
                            .for_each(|(g, y)| group(g, y));
                    } else {
                        out.chunks_mut(rows * d)
                            .enumerate()
                            .for_each(|(g, y)| group(g, y));
                    }
                    Ok(())
                })
            })
        })
    })?;
    Tensor::from_vec(out, (b, h, l, d), q.device())
}

/// Can [`infer_attention`] take these: no gradient to track, a skinny kernel in use, whole query groups,
/// and keys and values whose (T, D) block per row and KV head is contiguous.
pub(crate) fn infer_attention_fits(q: &Tensor, k: &Tensor, v: &Tensor) -> CResult<bool> {
    let (_, h, _, d) = q.dims4()?;
    let (_, kv, _, _) = k.dims4()?;
    let dense = |t: &Tensor| t.stride()[3] == 1 && t.stride()[2] == d;
    let tracked = q.track_op() || k.track_op() || v.track_op();
    Ok(skinny::available()
        && !tracked
        && h % kv == 0
        && fusable(q)
        && cpu_f32(k)
        && cpu_f32(v)
        && dense(k)
        && dense(v))
}

/// The contiguous (T, D) blocks of a (B, KV, T, D) view, read in place from its storage.
struct KvBlocks<'a> {
    data: &'a [f32],
    start: usize,
    row_stride: usize,
    head_stride: usize,
    heads: usize,
}

impl<'a> KvBlocks<'a> {
    /// The first `len` elements of group `row · KV + head`.
    fn block(&self, g: usize, len: usize) -> &'a [f32] {
        let o =
            self.start + (g / self.heads) * self.row_stride + (g % self.heads) * self.head_stride;
        &self.data[o..o + len]
    }
}

fn with_kv_blocks<R>(t: &Tensor, f: impl FnOnce(KvBlocks<'_>) -> CResult<R>) -> CResult<R> {
    let heads = t.dim(1)?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(s) = &*storage else {
        return Err(msg("fused op on a non-CPU tensor"));
    };
    f(KvBlocks {
        data: s.as_slice::<f32>()?,
        start: layout.start_offset(),
        row_stride: layout.stride()[0],
        head_stride: layout.stride()[1],
        heads,
    })
}

// ---- attention under autograd -----------------------------------------------------------------

/// `softmax(scale·q·kᵀ + mask)·v` as one op whose backward recomputes the probabilities: the
/// graph keeps q, k and v (which it holds anyway) instead of the (B, H, L, T) scores and
/// probabilities of every layer — the largest activations of a training step.
struct Attention {
    /// (B, L, T) additive mask.
    bias: Tensor,
    scale: f64,
    heads: usize,
    len: usize,
}

impl Attention {
    /// Probabilities (B, KV, rep·L, T) for grouped queries q (B, KV, rep·L, D) and keys k
    /// (B, KV, T, D): the same two ops (matmul, fused masked softmax) as the unfused path.
    fn probs(&self, q: &Tensor, k: &Tensor) -> CResult<Tensor> {
        let (b, kv, rows, _) = q.dims4()?;
        let t = k.dim(2)?;
        let s = q.matmul(&k.t()?)?.reshape((b, self.heads, self.len, t))?;
        softmax::fused(&s, &self.bias, self.scale)?.reshape((b, kv, rows, t))
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "rllr-attention"
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
        let dev = candle_core::Device::Cpu;
        let t = |s, l: &Layout| Tensor::from_slice(slice(s, l)?, l.shape(), &dev);
        let (q, k, v) = (t(s1, l1)?, t(s2, l2)?, t(s3, l3)?);
        let out = self.probs(&q, &k)?.matmul(&v)?;
        let shape = out.shape().clone();
        Ok(storage(out.flatten_all()?.to_vec1::<f32>()?, shape))
    }

    /// With P recomputed: dv = Pᵀ·g, dP = g·vᵀ, dS = scale·P·(dP − Σ dP·P), dq = dS·k, dk = dSᵀ·q.
    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _out: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (q, k, v, g) = (q.detach(), k.detach(), v.detach(), g.detach());
        let p = self.probs(&q, &k)?;
        let dv = p.t()?.matmul(&g)?;
        let dp = g.matmul(&v.t()?)?;
        let row = (&dp * &p)?.sum_keepdim(candle_core::D::Minus1)?;
        let ds = (dp.broadcast_sub(&row)? * &p)?.affine(self.scale, 0.0)?;
        let dq = ds.matmul(&k)?;
        let dk = ds.t()?.matmul(&q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// Grouped-query attention with recomputation in the backward: q (B, KV, rep·L, D) (the query
/// heads sharing a KV head as one sequence), k and v (B, KV, T, D), bias (B, L, T); returns
/// (B, KV, rep·L, D). The forward is the unfused path's matmul → fused softmax → matmul.
pub(crate) fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    scale: f64,
    heads: usize,
) -> CResult<Tensor> {
    let len = bias.dim(1)?;
    let op = Attention {
        bias: bias.contiguous()?,
        scale,
        heads,
        len,
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use crate::ops::{
        attention, softmax,
        test_util::{check, half, max_diff, rand, rel_diff, HALF},
    };
    use crate::skinny;

    /// Grouped-query attention the unfused way: matmul, composite masked softmax, matmul.
    /// q (B, KV, rep·L, D), k and v (B, KV, T, D), bias (B, 1, 1, L, T).
    fn attention_composite(x: &[Tensor], bias: &Tensor, heads: usize) -> crate::Result<Tensor> {
        let (b, kv, rows, _) = x[0].dims4()?;
        let t = x[1].dim(2)?;
        let l = rows * kv / heads;
        let s = x[0].matmul(&x[1].t()?)?.reshape((b, heads, l, t))?;
        let p = softmax::composite(&s, &bias.reshape((b, 1, l, t))?, 0.3)?;
        Ok(p.reshape((b, kv, rows, t))?.matmul(&x[2])?)
    }

    /// Causal mask over a cache of t − l earlier slots, the first of each row padding.
    fn cached_bias(b: usize, l: usize, t: usize) -> Tensor {
        let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let mut valid = vec![vec![true; t]; b];
        valid.iter_mut().for_each(|v| v[0] = false);
        let q: Vec<Vec<u32>> = vec![((t - l) as u32..t as u32).collect(); b];
        attention::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_matches_composite_forward_and_backward() {
        // 2 KV heads × 3 query heads each; without a cache (t = l) and with one (t > l).
        let (b, kv, rep, d) = (2, 2, 3, 8);
        for (l, t) in [(5, 5), (4, 7)] {
            let bias = cached_bias(b, l, t);
            let f = |x: &[Tensor]| {
                let bias = bias.reshape((b, l, t))?;
                Ok(attention::fused(&x[0], &x[1], &x[2], &bias, 0.3, kv * rep)?)
            };
            let c = |x: &[Tensor]| attention_composite(x, &bias, kv * rep);
            let inputs = [
                rand(&[b, kv, rep * l, d], 20 + l as u64),
                rand(&[b, kv, t, d], 21),
                rand(&[b, kv, t, d], 22),
            ];
            check(&format!("attention l {l} t {t}"), &f, &c, &inputs);
        }
    }

    #[test]
    fn inference_attention_matches_composite_on_cache_views() {
        if skinny::tests::skip_without_kernel() {
            return;
        }
        let (b, kv, rep, d) = (3, 2, 3, 16);
        for (l, t) in [(1, 6), (4, 7)] {
            let bias = cached_bias(b, l, t);
            let q = rand(&[b, kv * rep, l, d], 30 + l as u64);
            // Keys and values as the KV cache holds them: the first t slots of a longer buffer.
            let k = rand(&[b, kv, t + 5, d], 31).narrow(2, 0, t).unwrap();
            let v = rand(&[b, kv, t + 5, d], 32).narrow(2, 0, t).unwrap();
            assert!(attention::infer_attention_fits(&q, &k, &v).unwrap());
            let got =
                attention::infer_attention(&q, &k, &v, &bias.reshape((b, l, t)).unwrap(), 0.3)
                    .unwrap();
            let qg = q.reshape((b, kv, rep * l, d)).unwrap();
            let want = attention_composite(&[qg, k.clone(), v.clone()], &bias, kv * rep)
                .unwrap()
                .reshape((b, kv * rep, l, d))
                .unwrap();
            let diff = max_diff(&got, &want);
            assert!(diff <= 1e-5, "l {l} t {t}: max |Δ| {diff}");
        }
    }

    #[test]
    fn attention_in_half_precision_matches_f32() {
        // Prefill (t = l) and a decode step over a cache (l = 1), q (B, H, L, D), k/v (B, KV, T, D).
        let (b, kv, rep, d) = (2, 2, 3, 8);
        for (l, t) in [(5, 5), (1, 7)] {
            let bias = cached_bias(b, l, t);
            let q = rand(&[b, kv * rep, l, d], 40 + l as u64);
            let (k, v) = (rand(&[b, kv, t, d], 41), rand(&[b, kv, t, d], 42));
            let want = attention::attention(&q, &k, &v, &bias, 0.3).unwrap();
            for dtype in HALF {
                let [q, k, v] = [&q, &k, &v].map(|x| half(x, dtype));
                let got = attention::attention(&q, &k, &v, &bias, 0.3).unwrap();
                assert_eq!(got.dtype(), dtype);
                let rel = rel_diff(&got, &want);
                assert!(rel <= 1e-2, "l {l} t {t} {dtype:?}: relative max |Δ| {rel}");
            }
        }
    }
}
