//! The losses of SFT and reward modelling (docs/method.md §5.1–5.2), written as composite candle ops so
//! that every one of them has a backward pass, and kept apart from the models so that each can be
//! checked against hand-computed numbers.

use candle_core::{DType, Device, Result, Tensor, D};

/// Token-mean cross-entropy over the positions where `mask` is set, with next-token shift:
/// position `t` of `logits` (B, L, V) predicts `ids[t + 1]`, and counts when `mask[t + 1]` is set
/// (the prompt is masked, the response and its EOS are targets). Returns (loss, #targets, #argmax hits).
#[cfg_attr(not(test), allow(dead_code))]
pub fn masked_ce(logits: &Tensor, ids: &[Vec<u32>], mask: &[Vec<bool>]) -> Result<CeOut> {
    let (b, l, v) = logits.dims3()?;
    let (rows, targets) = shifted_targets(ids, mask, l);
    if rows.is_empty() {
        candle_core::bail!("masked_ce: no target tokens in the batch");
    }
    let idx = Tensor::new(rows.as_slice(), logits.device())?;
    let picked = logits.reshape((b * l, v))?.index_select(&idx, 0)?;
    token_ce(&picked, &targets)
}

/// Flat row indices (b·L + t) of the positions that predict a target, and those target ids.
pub fn shifted_targets(ids: &[Vec<u32>], mask: &[Vec<bool>], len: usize) -> (Vec<u32>, Vec<u32>) {
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (r, (seq, m)) in ids.iter().zip(mask).enumerate() {
        for t in 1..seq.len().min(len) {
            if m[t] {
                rows.push((r * len + t - 1) as u32);
                targets.push(seq[t]);
            }
        }
    }
    (rows, targets)
}

/// What a cross-entropy call measured.
pub struct CeOut {
    /// Scalar mean loss (differentiable).
    pub loss: Tensor,
    pub tokens: usize,
    /// Positions whose argmax equals the target (token accuracy numerator).
    pub correct: usize,
}

/// Mean −log softmax(logits)[target] over N rows of (N, V) logits.
pub fn token_ce(logits: &Tensor, targets: &[u32]) -> Result<CeOut> {
    let logits = logits.to_dtype(DType::F32)?;
    let t = Tensor::new(targets, logits.device())?;
    let lp = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let picked = lp.gather(&t.unsqueeze(1)?, 1)?.squeeze(1)?;
    let loss = picked.mean_all()?.neg()?;
    let argmax = logits.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let correct = argmax.iter().zip(targets).filter(|(a, b)| a == b).count();
    Ok(CeOut {
        loss,
        tokens: targets.len(),
        correct,
    })
}

/// softplus(x) = log(1 + eˣ), stably: max(x, 0) + log(1 + e^(−|x|)).
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    let pos = x.relu()?;
    let tail = (x.abs()?.neg()?.exp()? + 1.0)?.log()?;
    pos + tail
}

/// Plain last-token Bradley–Terry: mean −log σ(r_c − r_r − margin) = mean softplus(−(…)), plus
/// TRL's `center_rewards_coefficient · mean((r_c + r_r)²)` when the coefficient is non-zero.
pub fn bradley_terry(
    chosen: &Tensor,
    rejected: &Tensor,
    margin: f64,
    center: f64,
) -> Result<Tensor> {
    let diff = ((chosen - rejected)? - margin)?;
    let loss = softplus(&diff.neg()?)?.mean_all()?;
    if center == 0.0 {
        return Ok(loss);
    }
    let c = (chosen + rejected)?.sqr()?.mean_all()?;
    loss + (c * center)?
}

/// The span `[d, e)` of the divergent-span loss for one pair (docs/method.md §5.2a): `d` = first
/// position where the padded token rows differ, `e` = max of the real lengths; identical rows give
/// `e = len_c`, `d = e − 1`.
pub fn divergent_span(
    chosen: &[u32],
    rejected: &[u32],
    len_c: usize,
    len_r: usize,
) -> (usize, usize) {
    match chosen.iter().zip(rejected).position(|(a, b)| a != b) {
        Some(d) => (d, len_c.max(len_r)),
        None => (len_c - 1, len_c),
    }
}

/// The released code's per-token RM loss: for pair i, the mean over t ∈ [d_i, e_i) of
/// −log σ((v^c_t − v^r_t)/T), averaged over pairs. `vc`, `vr` are (n, L) head outputs at every
/// position; `spans` the per-pair `[d, e)`.
pub fn divergent_span_loss(
    vc: &Tensor,
    vr: &Tensor,
    spans: &[(usize, usize)],
    temperature: f64,
) -> Result<Tensor> {
    let (n, l) = vc.dims2()?;
    let mut w = vec![0f32; n * l];
    for (i, &(d, e)) in spans.iter().enumerate() {
        if e <= d || e > l {
            candle_core::bail!("divergent span [{d}, {e}) invalid for length {l}");
        }
        let share = 1.0 / ((e - d) as f32 * n as f32);
        w[i * l + d..i * l + e].fill(share);
    }
    let w = Tensor::from_vec(w, (n, l), &Device::Cpu)?.to_device(vc.device())?;
    let x = ((vc - vr)? / temperature)?;
    (softplus(&x.neg()?)? * w)?.sum_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f32, b: f64) {
        assert!((f64::from(a) - b).abs() < 1e-5, "{a} vs {b}");
    }

    fn log_softmax_at(row: &[f64], i: usize) -> f64 {
        let z: f64 = row.iter().map(|x| x.exp()).sum();
        row[i] - z.ln()
    }

    #[test]
    fn masked_ce_matches_hand_computation() {
        // B=2, L=3, V=3. Row 0: prompt [0], response [1, 2] → targets at t=1,2, predicted from t=0,1.
        // Row 1: prompt [0, 1], response [2] → one target at t=2, predicted from t=1.
        let l0 = [[1.0, 2.0, 0.5], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]];
        let l1 = [[5.0, 5.0, 5.0], [1.0, -1.0, 0.0], [7.0, 0.0, 0.0]];
        let logits = Tensor::new(&[l0, l1], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap();
        let ids = vec![vec![0, 1, 2], vec![0, 1, 2]];
        let mask = vec![vec![false, true, true], vec![false, false, true]];
        let out = masked_ce(&logits, &ids, &mask).unwrap();
        let expect =
            -(log_softmax_at(&l0[0], 1) + log_softmax_at(&l0[1], 2) + log_softmax_at(&l1[1], 2))
                / 3.0;
        close(out.loss.to_scalar::<f32>().unwrap(), expect);
        assert_eq!(out.tokens, 3);
        // argmax: row0 t0 → 1 (hit), row0 t1 → 2 (hit), row1 t1 → 0 (miss)
        assert_eq!(out.correct, 2);
        let none = vec![vec![false; 3], vec![false; 3]];
        assert!(masked_ce(&logits, &ids, &none).is_err());
    }

    #[test]
    fn bradley_terry_matches_hand_computation() {
        let c = Tensor::new(&[2f32, -1.0], &Device::Cpu).unwrap();
        let r = Tensor::new(&[0.5f32, 1.0], &Device::Cpu).unwrap();
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let plain = (sp(-1.5) + sp(2.0)) / 2.0;
        close(
            bradley_terry(&c, &r, 0.0, 0.0)
                .unwrap()
                .to_scalar()
                .unwrap(),
            plain,
        );
        let with_margin = (sp(-1.5 + 0.5) + sp(2.0 + 0.5)) / 2.0;
        close(
            bradley_terry(&c, &r, 0.5, 0.0)
                .unwrap()
                .to_scalar()
                .unwrap(),
            with_margin,
        );
        let centred = plain + 0.01 * (2.5f64.powi(2) + 0.0) / 2.0;
        close(
            bradley_terry(&c, &r, 0.0, 0.01)
                .unwrap()
                .to_scalar()
                .unwrap(),
            centred,
        );
        // stable for large differences: no inf/NaN
        let big = Tensor::new(&[500f32], &Device::Cpu).unwrap();
        let zero = Tensor::new(&[0f32], &Device::Cpu).unwrap();
        close(
            bradley_terry(&zero, &big, 0.0, 0.0)
                .unwrap()
                .to_scalar()
                .unwrap(),
            500.0,
        );
    }

    #[test]
    fn divergent_span_loss_handles_different_lengths_and_identical_rows() {
        let pad = 0;
        // pair 0: chosen [5,6,7,2] (len 4), rejected [5,6,2,pad,pad] (len 3): d = 2, e = 4
        // pair 1: identical [5,8,2] (len 3): e = 3, d = 2
        let c0 = [5, 6, 7, 2, pad];
        let r0 = [5, 6, 2, pad, pad];
        let c1 = [5, 8, 2, pad, pad];
        assert_eq!(divergent_span(&c0, &r0, 4, 3), (2, 4));
        assert_eq!(divergent_span(&c1, &c1, 3, 3), (2, 3));
        let vc = [[0.1, 0.2, 1.0, 2.0, 9.0], [0.0, 0.0, 0.3, 5.0, 5.0]];
        let vr = [[0.1, 0.2, 0.5, -1.0, 9.0], [0.0, 0.0, 0.3, 1.0, 1.0]];
        let t = |v: [[f64; 5]; 2]| {
            Tensor::new(&v, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
        };
        let sp = |x: f64| (1.0 + x.exp()).ln();
        let l0 = (sp(-(1.0 - 0.5)) + sp(-(2.0 + 1.0))) / 2.0;
        let l1 = sp(0.0);
        let spans = [(2, 4), (2, 3)];
        let got = divergent_span_loss(&t(vc), &t(vr), &spans, 1.0).unwrap();
        close(got.to_scalar().unwrap(), (l0 + l1) / 2.0);
        let hot = divergent_span_loss(&t(vc), &t(vr), &spans, 2.0).unwrap();
        let l0t = (sp(-0.25) + sp(-1.5)) / 2.0;
        close(hot.to_scalar().unwrap(), (l0t + l1) / 2.0);
        assert!(divergent_span_loss(&t(vc), &t(vr), &[(3, 3), (2, 3)], 1.0).is_err());
    }
}
