//! Fused CPU kernels with a forward AND a backward, for the hot elementwise parts of the decoder.
//!
//! Candle's own fused ops (`rms_norm`, `softmax_last_dim`, `rope`) have no backward, and the
//! composite versions allocate a fresh tensor per step of the chain. These candle `CustomOp`s do
//! one pass each way over contiguous f32 rows: RMSNorm, RoPE (fused with the head transpose),
//! scaled softmax with an additive mask, SwiGLU, masked cross-entropy, and a linear layer over a
//! frozen weight whose backward skips the weight gradient candle would otherwise compute and drop.
//!
//! Every entry point checks [`fusable`] and the callers fall back to the composite path (plain
//! candle ops, the reference the gradient-check tests compare against) for other devices and dtypes.

use std::sync::{Mutex, OnceLock};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor,
};
use rayon::prelude::*;

use crate::skinny;

type CResult<T> = candle_core::Result<T>;

/// Below this many output elements a kernel runs on the calling thread (rayon's fork/join costs
/// more than the work in a decode step).
const PAR_MIN: usize = 1 << 15;

/// Can the fused kernels run on `t`: f32 on the CPU, unless `RLLR_FUSED=0` opts out (the
/// composite path, for A/B runs and as a fallback).
///
/// Each kernel matches the composite path within 1e-4 forward and backward (tests below) and is
/// row-deterministic: a row's output and gradient are bit-identical whatever batch, padding or
/// rayon thread count it is computed under (`fused_determinism`). Whole-model outputs are not
/// bit-identical across batch shapes on either path, because candle's gemm blocks differently
/// with the row count.
pub(crate) fn fusable(t: &Tensor) -> bool {
    cpu_f32(t) && fused_enabled()
}

fn cpu_f32(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn fused_enabled() -> bool {
    #[cfg(test)]
    if let Some(on) = FORCE.with(|f| f.get()) {
        return on;
    }
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("RLLR_FUSED").as_deref() != Ok("0"))
}

#[cfg(test)]
thread_local! {
    static FORCE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Run `f` on this thread with the fused kernels forced on or off (tests of both paths in one
/// process; the environment switch is read once).
#[cfg(test)]
pub(crate) fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
    let before = FORCE.with(|c| c.replace(Some(on)));
    let r = f();
    FORCE.with(|c| c.set(before));
    r
}

fn msg(s: &str) -> candle_core::Error {
    candle_core::Error::Msg(s.to_string())
}

/// The f32 elements of a contiguous CPU storage under `layout`.
fn slice<'a>(s: &'a CpuStorage, l: &Layout) -> CResult<&'a [f32]> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| msg("fused op needs contiguous inputs"))?;
    Ok(&s.as_slice::<f32>()?[a..b])
}

/// Run `f` on the f32 elements of `t` (made contiguous first) on the CPU.
fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> CResult<R>) -> CResult<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => Err(msg("fused op on a non-CPU tensor")),
    }
}

/// Fill `out` row by row (rows of `width`), in parallel when it is large.
fn rows_mut(out: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.len() >= PAR_MIN {
        out.par_chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    } else {
        out.chunks_mut(width)
            .enumerate()
            .for_each(|(r, row)| f(r, row));
    }
}

/// A fresh f32 tensor of `shape` filled row by row, on `like`'s device.
fn build(
    like: &Tensor,
    shape: &Shape,
    width: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> CResult<Tensor> {
    let mut out = vec![0f32; shape.elem_count()];
    rows_mut(&mut out, width, f);
    Tensor::from_vec(out, shape, like.device())
}

fn storage(out: Vec<f32>, shape: Shape) -> (CpuStorage, Shape) {
    (CpuStorage::F32(out), shape)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

// ---- RMSNorm --------------------------------------------------------------------------------

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
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> CResult<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---- RoPE -----------------------------------------------------------------------------------

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
pub(crate) fn rope_transposed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> CResult<Tensor> {
    let (b, l, h, d) = x.dims4()?;
    let op = Rope { dims: [b, h, l, d] };
    x.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
}

// ---- softmax with scale and additive mask ---------------------------------------------------

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

fn softmax_row(y: &mut [f32], s: &[f32], bias: &[f32], scale: f32) {
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
pub(crate) fn masked_softmax(scores: &Tensor, bias: &Tensor, scale: f64) -> CResult<Tensor> {
    let (_, groups, len, _) = scores.dims4()?;
    let op = MaskedSoftmax {
        scale: scale as f32,
        groups,
        len,
    };
    scores.contiguous()?.apply_op2(&bias.contiguous()?, op)
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

/// Can [`infer_attention`] take these: no gradient to track, an AVX-512 CPU, whole query groups,
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
        masked_softmax(&s, &self.bias, self.scale)?.reshape((b, kv, rows, t))
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
pub(crate) fn attention(
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

// ---- dropout ------------------------------------------------------------------------------

/// Inverted dropout whose mask is regenerated from its seed in the backward instead of being kept
/// by the graph (one activation-sized tensor less per LoRA module).
struct Dropout {
    p: f32,
    seed: u64,
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mask = crate::lora::dropout_mask(x.len(), self.p, self.seed);
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

/// `x ⊙ mask(p, seed)` with the same mask as [`crate::lora::dropout`]'s composite path.
pub(crate) fn dropout(x: &Tensor, p: f32, seed: u64) -> CResult<Tensor> {
    x.contiguous()?.apply_op1(Dropout { p, seed })
}

// ---- SwiGLU ---------------------------------------------------------------------------------

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
pub(crate) fn swiglu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
}

// ---- masked cross-entropy -------------------------------------------------------------------

/// Mean over masked rows of `logsumexp(z) − z[target]`; logits (N, V), targets (N) u32, mask (N).
struct MaskedCrossEntropy;

fn log_sum_exp(z: &[f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + z.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

fn mask_count(mask: &[f32]) -> f32 {
    mask.iter().sum::<f32>().max(1.0)
}

/// `f(r)` for each of `n` rows in order, in parallel when `elems` (the work) is large.
fn per_row(n: usize, elems: usize, f: impl Fn(usize) -> f32 + Sync + Send) -> Vec<f32> {
    if elems >= PAR_MIN {
        (0..n).into_par_iter().map(f).collect()
    } else {
        (0..n).map(f).collect()
    }
}

/// One row's loss `m·(lse − z[target])` (0 when masked out).
fn ce_row_loss(z: &[f32], lse: f32, target: u32, m: f32) -> f32 {
    if m == 0.0 {
        0.0
    } else {
        m * (lse - z[target as usize])
    }
}

/// One row of d loss / d logits, `m·(softmax(z) − onehot(target))` with `lse = logsumexp(z)`;
/// left untouched (zeros) when masked out.
fn ce_grad_row(d: &mut [f32], z: &[f32], lse: f32, target: u32, m: f32) {
    if m == 0.0 {
        return;
    }
    d.iter_mut()
        .zip(z)
        .for_each(|(d, z)| *d = m * (z - lse).exp());
    d[target as usize] -= m;
}

impl CustomOp3 for MaskedCrossEntropy {
    fn name(&self) -> &'static str {
        "rllr-masked-cross-entropy"
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
        let (z, mask) = (slice(s1, l1)?, slice(s3, l3)?);
        let (a, b) = l2
            .contiguous_offsets()
            .ok_or_else(|| msg("targets not contiguous"))?;
        let targets = &s2.as_slice::<u32>()?[a..b];
        let v = z.len() / mask.len().max(1);
        // Per-row losses in parallel, then one sequential sum in row order: a rayon `sum` would
        // add in a tree shaped by the thread count and work stealing (different bits per run).
        let rows = per_row(mask.len(), z.len(), |r| {
            let zr = &z[r * v..(r + 1) * v];
            match mask[r] {
                0.0 => 0.0,
                m => ce_row_loss(zr, log_sum_exp(zr), targets[r], m),
            }
        });
        let total: f32 = rows.iter().sum();
        Ok(storage(vec![total / mask_count(mask)], Shape::from(())))
    }

    /// d logits = g · mask/count · (softmax(z) − onehot(target)).
    fn bwd(
        &self,
        z: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let v = z.dim(1)?;
        let g = g.to_vec0::<f32>()?;
        let targets = targets.to_vec1::<u32>()?;
        let dz = with_f32(z, |zs| {
            with_f32(mask, |ms| {
                let coef = g / mask_count(ms);
                build(z, z.shape(), v, |r, d| {
                    let zr = &zs[r * v..(r + 1) * v];
                    if ms[r] != 0.0 {
                        ce_grad_row(d, zr, log_sum_exp(zr), targets[r], ms[r] * coef);
                    }
                })
            })
        })?;
        Ok((Some(dz), None, None))
    }
}

/// Fused masked cross-entropy: logits (N, V) f32, targets (N) u32, mask (N) f32 → scalar.
pub(crate) fn masked_cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> CResult<Tensor> {
    let v = logits.dim(1)?;
    if let Some(t) = targets
        .to_vec1::<u32>()?
        .into_iter()
        .find(|t| *t as usize >= v)
    {
        return Err(msg(&format!(
            "cross-entropy target {t} out of a vocabulary of {v}"
        )));
    }
    logits.contiguous()?.apply_op3(
        &targets.contiguous()?,
        &mask.contiguous()?,
        MaskedCrossEntropy,
    )
}

// ---- linear over a frozen weight -------------------------------------------------------------

// ---- LM head + masked cross-entropy ----------------------------------------------------------

/// Rows of logits one chunk of [`LinearCrossEntropy`] materialises: (CE_CHUNK, V), 50 MB for a
/// 49152-token vocabulary, instead of (N, V).
const CE_CHUNK: usize = 256;

/// `masked_cross_entropy(h·Wᵀ, targets, mask)` over a frozen W (V, H) without the (N, V) logits:
/// the forward runs the LM head a chunk of rows at a time and, when `h` takes a gradient, also
/// computes d loss / d h = (mask/count · (softmax − onehot))·W for the chunk, which the backward
/// scales by the incoming (scalar) gradient. Neither the logits nor their gradient outlive a chunk.
struct LinearCrossEntropy {
    weight: Tensor,
    targets: Vec<u32>,
    mask: Vec<f32>,
    grad: bool,
    dh: Mutex<Option<Tensor>>,
}

impl CustomOp1 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "rllr-linear-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let (n, hd) = l.shape().dims2()?;
        let (h, wt) = (slice(s, l)?, self.weight.t()?);
        let v = wt.dim(1)?;
        let coef = 1.0 / mask_count(&self.mask);
        let (mut losses, mut dh) = (Vec::with_capacity(n), Vec::new());
        for r0 in (0..n).step_by(CE_CHUNK) {
            let rows = CE_CHUNK.min(n - r0);
            let hc = Tensor::from_slice(
                &h[r0 * hd..(r0 + rows) * hd],
                (rows, hd),
                &candle_core::Device::Cpu,
            )?;
            let logits = hc.matmul(&wt)?;
            let (tg, mk) = (&self.targets[r0..r0 + rows], &self.mask[r0..r0 + rows]);
            let dz = with_f32(&logits, |zs| {
                let lse = per_row(rows, zs.len(), |r| log_sum_exp(&zs[r * v..(r + 1) * v]));
                losses.extend(
                    zs.chunks(v)
                        .enumerate()
                        .map(|(r, zr)| ce_row_loss(zr, lse[r], tg[r], mk[r])),
                );
                if !self.grad {
                    return Ok(None);
                }
                let dz = build(&logits, logits.shape(), v, |r, d| {
                    ce_grad_row(d, &zs[r * v..(r + 1) * v], lse[r], tg[r], mk[r] * coef);
                })?;
                Ok(Some(dz))
            })?;
            if let Some(dz) = dz {
                dh.push(dz.matmul(&self.weight)?);
            }
        }
        if self.grad {
            *self.dh.lock().map_err(|_| msg("poisoned"))? = Some(Tensor::cat(&dh, 0)?);
        }
        let total: f32 = losses.iter().sum();
        Ok(storage(
            vec![total / mask_count(&self.mask)],
            Shape::from(()),
        ))
    }

    fn bwd(&self, _h: &Tensor, _y: &Tensor, g: &Tensor) -> CResult<Option<Tensor>> {
        let dh = self.dh.lock().map_err(|_| msg("poisoned"))?.take();
        let dh = dh.ok_or_else(|| msg("rllr-linear-cross-entropy: one backward per forward"))?;
        Ok(Some(dh.broadcast_mul(g)?))
    }
}

/// Mean masked cross-entropy of the logits `h·Wᵀ`: h (N, H) f32, a frozen W (V, H), targets
/// (N) and mask (N) as slices; never holds more than [`CE_CHUNK`] rows of logits.
pub(crate) fn linear_cross_entropy(
    h: &Tensor,
    weight: &Tensor,
    targets: Vec<u32>,
    mask: Vec<f32>,
) -> CResult<Tensor> {
    let v = weight.dim(0)?;
    if let Some(t) = targets.iter().find(|t| **t as usize >= v) {
        return Err(msg(&format!(
            "cross-entropy target {t} out of a vocabulary of {v}"
        )));
    }
    let op = LinearCrossEntropy {
        weight: weight.contiguous()?,
        targets,
        mask,
        grad: h.track_op(),
        dh: Mutex::new(None),
    };
    h.contiguous()?.apply_op1(op)
}

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
/// or larger inputs, other devices or dtypes, no AVX-512): the caller then runs them one by one.
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
    //! Gradient check: every fused kernel against its composite reference, forward and backward.

    use candle_core::{Device, Var};
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::model::{masked_softmax_composite, rms_norm_composite, swiglu_composite};

    type Op<'a> = &'a dyn Fn(&[Tensor]) -> crate::Result<Tensor>;

    fn rand(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-2.0..2.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().flatten_all().unwrap();
        d.max(0).unwrap().to_scalar::<f32>().unwrap()
    }

    /// Output of `f` at `inputs` and the gradients of Σ y·r (r fixed random) w.r.t. each input.
    fn value_and_grads(f: Op, inputs: &[Tensor]) -> (Tensor, Vec<Tensor>) {
        let vars: Vec<Var> = inputs
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&ts).unwrap();
        let r = rand(y.dims(), 99);
        let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let g = vars.iter().map(|v| grads.get(v).unwrap().clone()).collect();
        (y, g)
    }

    fn check(name: &str, fused: Op, composite: Op, inputs: &[Tensor]) {
        let (yf, gf) = value_and_grads(fused, inputs);
        let (yc, gc) = value_and_grads(composite, inputs);
        assert_eq!(yf.dims(), yc.dims(), "{name}");
        let fwd = max_diff(&yf, &yc);
        assert!(fwd <= 1e-4, "{name} forward: max |Δ| {fwd}");
        for (i, (a, b)) in gf.iter().zip(&gc).enumerate() {
            let bwd = max_diff(a, b);
            assert!(bwd <= 1e-4, "{name} grad of input {i}: max |Δ| {bwd}");
        }
    }

    #[test]
    fn rms_norm_matches_composite() {
        let f = |t: &[Tensor]| Ok(rms_norm(&t[0], &t[1], 1e-5)?);
        let c = |t: &[Tensor]| rms_norm_composite(&t[0], &t[1], 1e-5);
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
    fn rope_matches_composite() {
        let (cos, sin) = (rand(&[2, 1, 5, 8], 3), rand(&[2, 1, 5, 8], 4));
        let f = |t: &[Tensor]| crate::rope::apply_heads(&t[0], &cos, &sin);
        let c = |t: &[Tensor]| {
            let x = t[0].transpose(1, 2)?.contiguous()?;
            crate::rope::apply(&x, &cos, &sin)
        };
        check("rope", &f, &c, &[rand(&[2, 5, 3, 8], 5)]);
    }

    #[test]
    fn masked_softmax_matches_composite() {
        let (b, g, l, t) = (2, 3, 4, 6);
        let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let valid = vec![vec![false, true, true, true, true, true]; b];
        let q: Vec<Vec<u32>> = vec![(2..6).collect(); b];
        let bias = crate::model::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap();
        let f = |x: &[Tensor]| Ok(masked_softmax(&x[0], &bias.reshape((b, l, t))?, 0.3)?);
        let c = |x: &[Tensor]| masked_softmax_composite(&x[0], &bias.reshape((b, 1, l, t))?, 0.3);
        check("masked_softmax", &f, &c, &[rand(&[b, g, l, t], 6)]);
    }

    /// Grouped-query attention the unfused way: matmul, composite masked softmax, matmul.
    /// q (B, KV, rep·L, D), k and v (B, KV, T, D), bias (B, 1, 1, L, T).
    fn attention_composite(x: &[Tensor], bias: &Tensor, heads: usize) -> crate::Result<Tensor> {
        let (b, kv, rows, _) = x[0].dims4()?;
        let t = x[1].dim(2)?;
        let l = rows * kv / heads;
        let s = x[0].matmul(&x[1].t()?)?.reshape((b, heads, l, t))?;
        let p = masked_softmax_composite(&s, &bias.reshape((b, 1, l, t))?, 0.3)?;
        Ok(p.reshape((b, kv, rows, t))?.matmul(&x[2])?)
    }

    /// Causal mask over a cache of t − l earlier slots, the first of each row padding.
    fn cached_bias(b: usize, l: usize, t: usize) -> Tensor {
        let pos: Vec<Vec<u32>> = vec![(0..t as u32).collect(); b];
        let mut valid = vec![vec![true; t]; b];
        valid.iter_mut().for_each(|v| v[0] = false);
        let q: Vec<Vec<u32>> = vec![((t - l) as u32..t as u32).collect(); b];
        crate::model::attention_bias(&q, &pos, &valid, None, &Device::Cpu).unwrap()
    }

    #[test]
    fn attention_matches_composite_forward_and_backward() {
        // 2 KV heads × 3 query heads each; without a cache (t = l) and with one (t > l).
        let (b, kv, rep, d) = (2, 2, 3, 8);
        for (l, t) in [(5, 5), (4, 7)] {
            let bias = cached_bias(b, l, t);
            let f = |x: &[Tensor]| {
                let bias = bias.reshape((b, l, t))?;
                Ok(attention(&x[0], &x[1], &x[2], &bias, 0.3, kv * rep)?)
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
        if skinny::tests::skip_without_avx512() {
            return;
        }
        let (b, kv, rep, d) = (3, 2, 3, 16);
        for (l, t) in [(1, 6), (4, 7)] {
            let bias = cached_bias(b, l, t);
            let q = rand(&[b, kv * rep, l, d], 30 + l as u64);
            // Keys and values as the KV cache holds them: the first t slots of a longer buffer.
            let k = rand(&[b, kv, t + 5, d], 31).narrow(2, 0, t).unwrap();
            let v = rand(&[b, kv, t + 5, d], 32).narrow(2, 0, t).unwrap();
            assert!(infer_attention_fits(&q, &k, &v).unwrap());
            let got = infer_attention(&q, &k, &v, &bias.reshape((b, l, t)).unwrap(), 0.3).unwrap();
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
    fn dropout_matches_composite() {
        let f = |t: &[Tensor]| Ok(dropout(&t[0], 0.3, 17)?);
        let c = |t: &[Tensor]| {
            let mask = crate::lora::dropout_mask(t[0].elem_count(), 0.3, 17);
            Ok(t[0].mul(&Tensor::from_vec(mask, t[0].shape(), &Device::Cpu)?)?)
        };
        check("dropout", &f, &c, &[rand(&[6, 40], 23)]);
    }

    #[test]
    fn swiglu_matches_composite() {
        let f = |t: &[Tensor]| Ok(swiglu(&t[0], &t[1])?);
        let c = |t: &[Tensor]| swiglu_composite(&t[0], &t[1]);
        check("swiglu", &f, &c, &[rand(&[4, 10], 7), rand(&[4, 10], 8)]);
    }

    #[test]
    fn masked_cross_entropy_matches_composite() {
        let targets = Tensor::new(&[3u32, 0, 10, 5, 7, 1], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32, 1.0, 0.0, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let f = |t: &[Tensor]| Ok(masked_cross_entropy(&t[0], &targets, &mask)?);
        let c = |t: &[Tensor]| crate::loss::composite(&t[0], &targets.unsqueeze(1)?, &mask);
        check("cross_entropy", &f, &c, &[rand(&[6, 11], 9)]);
    }

    #[test]
    fn frozen_linear_matches_matmul_and_leaves_the_weight_alone() {
        let w = rand(&[3, 7], 10);
        let f = |t: &[Tensor]| Ok(frozen_linear(&t[0], &w)?);
        let c = |t: &[Tensor]| Ok(t[0].matmul(&w.t()?)?);
        check("frozen_linear", &f, &c, &[rand(&[5, 7], 11)]);
        // The forward is candle's matmul, bit for bit, for a contiguous and a transposed input.
        let a = Var::from_tensor(&rand(&[5, 7], 12)).unwrap();
        let b = Var::from_tensor(&rand(&[7, 5], 13)).unwrap();
        for x in [a.as_tensor().clone(), b.as_tensor().t().unwrap()] {
            let got = frozen_linear(&x, &w).unwrap();
            let want = x.detach().matmul(&w.t().unwrap()).unwrap();
            assert_eq!(
                got.to_vec2::<f32>().unwrap(),
                want.to_vec2::<f32>().unwrap()
            );
        }
    }
}
