//! Masked cross-entropy: the mean over masked rows of `logsumexp(z) − z[target]`, from logits
//! (N, V), or from hidden states and a frozen LM head without materialising the (N, V) logits.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor, D};

use super::cpu::{build, msg, per_row, slice, storage, with_f32, CResult};
use super::fusable;
use crate::{Error, Result};

/// Mean masked cross-entropy of logits (N, V), targets (N) u32 and mask (N) f32, as an f32
/// scalar: fused where [`fusable`] (f32 logits on the CPU), else the composite.
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    if fusable(logits) && fusable(mask) {
        return Ok(fused(logits, targets, mask)?);
    }
    composite(logits, &targets.unsqueeze(1)?, mask)
}

/// The reference path (plain candle ops): log-softmax, gather, masked mean; targets (N, 1).
/// Computed in f32 whatever the logits' and mask's dtype (half-precision logits are upcast).
pub(crate) fn composite(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let (logits, mask) = (logits.to_dtype(DType::F32)?, mask.to_dtype(DType::F32)?);
    let logp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let nll = logp.gather(targets, 1)?.squeeze(1)?.neg()?;
    let count = mask.sum_all()?.maximum(1f32)?;
    Ok((nll * &mask)?.sum_all()?.div(&count)?)
}

/// Masked cross-entropy of the logits `h·Wᵀ` for hidden states h (..., H) and a frozen LM head
/// W (V, H), targets and mask shaped like h without its last dim, through the chunked fused op
/// ([`LinearCrossEntropy`]). `None` where that path does not apply (not [`fusable`]: another
/// device such as CUDA, or a dtype other than f32; or W takes a gradient): the composite is then
/// the LM head's logits followed by [`masked_cross_entropy`], which the caller (holding the head)
/// runs.
pub fn linear_cross_entropy(
    h: &Tensor,
    weight: &Tensor,
    targets: &Tensor,
    mask: &Tensor,
) -> Result<Option<Tensor>> {
    if !(fusable(h) && fusable(weight)) || weight.track_op() {
        return Ok(None);
    }
    let hidden = h.dim(D::Minus1)?;
    let n = h.elem_count() / hidden;
    check_positions("hidden states", n, targets, mask)?;
    let targets = targets.flatten_all()?.to_dtype(DType::U32)?.to_vec1()?;
    let mask = mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
    let flat = h.reshape((n, hidden))?;
    Ok(Some(linear_fused(&flat, weight, targets, mask)?))
}

/// `targets` and `mask` must hold one entry per position of the `n` positions of `what`.
pub(crate) fn check_positions(what: &str, n: usize, targets: &Tensor, mask: &Tensor) -> Result<()> {
    if targets.elem_count() != n || mask.elem_count() != n {
        return Err(Error::Input(format!(
            "cross-entropy: {n} positions of {what}, {} targets, {} mask entries",
            targets.elem_count(),
            mask.elem_count()
        )));
    }
    Ok(())
}

/// Mean over masked rows of `logsumexp(z) − z[target]`; logits (N, V), targets (N) u32, mask (N).
struct MaskedCrossEntropy;

fn log_sum_exp(z: &[f32]) -> f32 {
    let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + z.iter().map(|v| (v - max).exp()).sum::<f32>().ln()
}

fn mask_count(mask: &[f32]) -> f32 {
    mask.iter().sum::<f32>().max(1.0)
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
pub(crate) fn fused(logits: &Tensor, targets: &Tensor, mask: &Tensor) -> CResult<Tensor> {
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
pub(crate) fn linear_fused(
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, IndexOp, Tensor};

    use crate::ops::{
        cross_entropy,
        test_util::{bits, check, half, pools, rand, value_and_grad, HALF},
        with_fused,
    };

    #[test]
    fn masked_cross_entropy_matches_composite() {
        let targets = Tensor::new(&[3u32, 0, 10, 5, 7, 1], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32, 1.0, 0.0, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let f = |t: &[Tensor]| Ok(cross_entropy::fused(&t[0], &targets, &mask)?);
        let c = |t: &[Tensor]| cross_entropy::composite(&t[0], &targets.unsqueeze(1)?, &mask);
        check("cross_entropy", &f, &c, &[rand(&[6, 11], 9)]);
    }

    #[test]
    fn masked_cross_entropy_is_row_and_thread_deterministic() {
        let (n, v) = (400, 97); // 400 rows of 97 cross PAR_MIN
        let logits = rand(&[n, v], 30);
        let targets: Vec<u32> = (0..n as u32).map(|i| (i * 97) % v as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let mask: Vec<f32> = (0..n).map(|i| (i % 3 != 1) as u8 as f32).collect();
        let mask = Tensor::new(mask.as_slice(), &Device::Cpu).unwrap();
        let ce = |x: &[Tensor]| cross_entropy::fused(&x[0], &x[1], &x[2]).unwrap();
        let run = |rows: usize| {
            let x = [0, 1, 2].map(|i| [&logits, &targets, &mask][i].narrow(0, 0, rows).unwrap());
            let one = Tensor::new(1f32, &Device::Cpu).unwrap();
            value_and_grad(&ce, &x, &one).map(|t| bits(&t))
        };
        // The whole batch: the same loss and gradient bits on 1, 2 or 3 threads.
        let reference = run(n);
        for pool in pools() {
            let threads = pool.current_num_threads();
            assert!(pool.install(|| run(n)) == reference, "{threads} threads");
        }
        // One row's gradient does not depend on the rows after it (with the same masked count).
        let alone = |rows: usize, row: usize| {
            let m: Vec<f32> = (0..rows).map(|i| (i == row) as u8 as f32).collect();
            let m = Tensor::new(m.as_slice(), &Device::Cpu).unwrap();
            let x = [
                logits.narrow(0, 0, rows).unwrap(),
                targets.narrow(0, 0, rows).unwrap(),
                m,
            ];
            let one = Tensor::new(1f32, &Device::Cpu).unwrap();
            let [y, dx] = value_and_grad(&ce, &x, &one);
            [bits(&y), bits(&dx.i(row).unwrap())]
        };
        for rows in [3, 8, n] {
            assert!(alone(rows, 2) == alone(3, 2), "row 2 in a batch of {rows}");
        }
    }

    #[test]
    fn masked_cross_entropy_of_half_precision_logits_is_f32_and_close() {
        let targets = Tensor::new(&[3u32, 0, 10, 5, 7, 1], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[1f32, 1.0, 0.0, 1.0, 1.0, 0.0], &Device::Cpu).unwrap();
        let logits = rand(&[6, 11], 9);
        let want = cross_entropy::masked_cross_entropy(&logits, &targets, &mask).unwrap();
        let want = want.to_scalar::<f32>().unwrap();
        for dtype in HALF {
            let got = cross_entropy::masked_cross_entropy(&half(&logits, dtype), &targets, &mask);
            let got = got.unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let got = got.to_scalar::<f32>().unwrap();
            assert!(
                (got - want).abs() <= 1e-2 * want,
                "{dtype:?}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn linear_cross_entropy_leaves_half_precision_to_the_composite() {
        let (h, w) = (rand(&[2, 3, 8], 40), rand(&[11, 8], 41));
        let targets = Tensor::new(&[[3u32, 0, 10], [5, 7, 1]], &Device::Cpu).unwrap();
        let mask = Tensor::ones((2, 3), DType::F32, &Device::Cpu).unwrap();
        with_fused(true, || {
            let f32_cpu = cross_entropy::linear_cross_entropy(&h, &w, &targets, &mask).unwrap();
            assert!(f32_cpu.is_some(), "f32 on the CPU takes the fused op");
            for dtype in HALF {
                let (hh, wh) = (half(&h, dtype), half(&w, dtype));
                let got = cross_entropy::linear_cross_entropy(&hh, &wh, &targets, &mask);
                assert!(got.unwrap().is_none(), "{dtype:?}");
            }
        });
    }
}
