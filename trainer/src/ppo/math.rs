//! The arithmetic of a PPO step, exactly as TRL 0.7.2 does it (docs/method.md §5.4.2–5.4.5), kept
//! apart from models and I/O so each piece is checked against hand-computed numbers: running score
//! moments, the adaptive KL controller, per-token rewards with the KL penalty, GAE, masked
//! whitening, and the clipped policy and value losses.

use candle_core::{Result, Tensor};

/// `RunningMoments` (trl/trainer/utils.py): mean 0, var 1, count 1e-24 to start; the batch enters
/// the statistics before it is normalised (quirk 6).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningMoments {
    pub mean: f64,
    pub var: f64,
    pub std: f64,
    pub count: f64,
}

impl Default for RunningMoments {
    fn default() -> Self {
        Self {
            mean: 0.0,
            var: 1.0,
            std: 1.0,
            count: 1e-24,
        }
    }
}

impl RunningMoments {
    /// Add a batch; returns its mean and unbiased std (TRL's `update` return value).
    pub fn update(&mut self, xs: &[f64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean_b = xs.iter().sum::<f64>() / n;
        let var_b = xs.iter().map(|x| (x - mean_b).powi(2)).sum::<f64>() / n;
        let delta = mean_b - self.mean;
        let tot = self.count + n;
        let old_sum = self.var * self.count + delta * delta * self.count * n / tot;
        self.mean += delta * n / tot;
        self.var = (old_sum + var_b * n) / tot;
        self.std = (self.var * tot / (tot - 1.0)).sqrt();
        self.count = tot;
        (mean_b, (var_b * n / (n - 1.0)).sqrt())
    }

    /// `use_score_scaling` + `use_score_norm`: update, then `(s − mean) / (std + ε)` with ε the f32
    /// machine epsilon; scaling only (`norm = false`) divides without centring.
    pub fn normalise(&mut self, scores: &[f64], norm: bool) -> Vec<f64> {
        self.update(scores);
        let scale = self.std + f64::from(f32::EPSILON);
        scores
            .iter()
            .map(|s| {
                if norm {
                    (s - self.mean) / scale
                } else {
                    s / scale
                }
            })
            .collect()
    }
}

/// β of the KL penalty: `AdaptiveKLController` (target, horizon) or fixed.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KlController {
    pub value: f64,
    /// `None`: fixed β.
    pub target: Option<f64>,
    pub horizon: f64,
}

impl KlController {
    /// β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n/horizon); a fixed controller does nothing.
    pub fn update(&mut self, current_kl: f64, n_steps: usize) {
        if let Some(target) = self.target {
            let err = (current_kl / target - 1.0).clamp(-0.2, 0.2);
            self.value *= 1.0 + err * n_steps as f64 / self.horizon;
        }
    }
}

/// Per-token rewards of one response (`compute_rewards`, kl_penalty "kl"): r_t = −β·(logπ − logπ_ref)
/// and the score added at the last token. Also returns the KL terms (for `objective/kl`).
pub fn per_token_rewards(
    score: f64,
    logprobs: &[f64],
    ref_logprobs: &[f64],
    beta: f64,
) -> (Vec<f64>, Vec<f64>) {
    let kl: Vec<f64> = logprobs
        .iter()
        .zip(ref_logprobs)
        .map(|(a, b)| a - b)
        .collect();
    let mut rewards: Vec<f64> = kl.iter().map(|k| -beta * k).collect();
    if let Some(last) = rewards.last_mut() {
        *last += score;
    }
    (rewards, kl)
}

/// GAE over one response (`compute_advantages`, V after the last token = 0): returns (advantages,
/// returns = advantages + values), before whitening.
pub fn gae(rewards: &[f64], values: &[f64], gamma: f64, lam: f64) -> (Vec<f64>, Vec<f64>) {
    let n = rewards.len();
    let mut adv = vec![0.0; n];
    let mut last = 0.0;
    for t in (0..n).rev() {
        let next = if t + 1 < n { values[t + 1] } else { 0.0 };
        let delta = rewards[t] + gamma * next - values[t];
        last = delta + gamma * lam * last;
        adv[t] = last;
    }
    let ret = adv.iter().zip(values).map(|(a, v)| a + v).collect();
    (adv, ret)
}

/// `masked_whiten` over every response token of the batch: (x − mean)/sqrt(var_unbiased + 1e-8),
/// the mean not added back.
pub fn whiten(xs: &[f64]) -> Vec<f64> {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let var = if n > 1.0 { var * n / (n - 1.0) } else { var };
    let scale = 1.0 / (var + 1e-8).sqrt();
    xs.iter().map(|x| (x - mean) * scale).collect()
}

/// The clipped losses of one minibatch over its N response tokens (flattened; `loss` in TRL).
pub struct PpoLoss {
    /// L_pg + vf_coef·L_vf (zeroed when the mean ratio exceeds the threshold).
    pub loss: Tensor,
    pub pg_loss: f64,
    pub vf_loss: f64,
    pub pg_clipfrac: f64,
    pub vf_clipfrac: f64,
    pub approxkl: f64,
    pub policykl: f64,
    pub mean_ratio: f64,
    /// The minibatch was skipped by the ratio threshold.
    pub skipped: bool,
}

/// Constants of the loss.
#[derive(Debug, Clone, Copy)]
pub struct LossParams {
    pub cliprange: f64,
    pub cliprange_value: f64,
    pub vf_coef: f64,
    pub ratio_threshold: f64,
}

impl Default for LossParams {
    /// The released settings (docs/method.md §6.1): clip 0.2, value clip 0.2, vf_coef 0.1, threshold 10.
    fn default() -> Self {
        Self {
            cliprange: 0.2,
            cliprange_value: 0.2,
            vf_coef: 0.1,
            ratio_threshold: 10.0,
        }
    }
}

/// `logprobs` and `vpreds` carry gradients; the rest are constants of the rollout, all (N,) f32.
pub fn ppo_loss(
    logprobs: &Tensor,
    vpreds: &Tensor,
    old_logprobs: &Tensor,
    old_values: &Tensor,
    advantages: &Tensor,
    returns: &Tensor,
    p: &LossParams,
) -> Result<PpoLoss> {
    let lo = (old_values - p.cliprange_value)?;
    let hi = (old_values + p.cliprange_value)?;
    let vclipped = vpreds.maximum(&lo)?.minimum(&hi)?;
    let vf1 = (vpreds - returns)?.sqr()?;
    let vf2 = (&vclipped - returns)?.sqr()?;
    let vf_loss = (vf1.maximum(&vf2)?.mean_all()? * 0.5)?;
    let log_ratio = (logprobs - old_logprobs)?;
    let ratio = log_ratio.exp()?;
    let neg_adv = advantages.neg()?;
    let pg1 = (&neg_adv * &ratio)?;
    let pg2 = (&neg_adv * ratio.clamp(1.0 - p.cliprange, 1.0 + p.cliprange)?)?;
    let pg_loss = pg1.maximum(&pg2)?.mean_all()?;
    let mut loss = (&pg_loss + (&vf_loss * p.vf_coef)?)?;
    let scalar = |t: &Tensor| -> Result<f64> { Ok(f64::from(t.to_scalar::<f32>()?)) };
    let frac = |a: &Tensor, b: &Tensor| -> Result<f64> {
        scalar(&a.gt(b)?.to_dtype(candle_core::DType::F32)?.mean_all()?)
    };
    let mean_ratio = scalar(&ratio.mean_all()?)?;
    let skipped = mean_ratio > p.ratio_threshold;
    if skipped {
        loss = (loss * 0.0)?;
    }
    Ok(PpoLoss {
        pg_loss: scalar(&pg_loss)?,
        vf_loss: scalar(&vf_loss)?,
        pg_clipfrac: frac(&pg2, &pg1)?,
        vf_clipfrac: frac(&vf2, &vf1)?,
        approxkl: scalar(&(log_ratio.sqr()?.mean_all()? * 0.5)?)?,
        policykl: scalar(&log_ratio.neg()?.mean_all()?)?,
        mean_ratio,
        skipped,
        loss,
    })
}

/// The `p`-th percentile (0–100) of `xs` with linear interpolation (numpy's default).
pub fn percentile(xs: &[f64], p: f64) -> Option<f64> {
    if xs.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let pos = p / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(v[lo] + (v[hi] - v[lo]) * (pos - lo as f64))
}

/// Unbiased standard deviation (0 for fewer than two values).
pub fn std_unbiased(xs: &[f64]) -> f64 {
    let n = xs.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let m = xs.iter().sum::<f64>() / n;
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// Explained variance of the values: 1 − Var(R − V)/Var(R) (`ppo/val/var_explained`).
pub fn var_explained(values: &[f64], returns: &[f64]) -> f64 {
    let var = |xs: &[f64]| {
        let m = xs.iter().sum::<f64>() / xs.len() as f64;
        xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64
    };
    let resid: Vec<f64> = returns.iter().zip(values).map(|(r, v)| r - v).collect();
    let vr = var(returns);
    if vr == 0.0 {
        return 0.0;
    }
    1.0 - var(&resid) / vr
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn running_moments_follow_trl() {
        let mut m = RunningMoments::default();
        // First batch [1, 2, 3]: mean 2, population var 2/3; count 1e-24 contributes nothing.
        let (bm, bs) = m.update(&[1.0, 2.0, 3.0]);
        close(bm, 2.0, 1e-12);
        close(bs, 1.0, 1e-12); // unbiased std of 1,2,3
        close(m.mean, 2.0, 1e-12);
        close(m.var, 2.0 / 3.0, 1e-12);
        close(m.std, 1.0, 1e-12); // sqrt(var·3/2)
                                  // Second batch [5, 7]: mean 6, var 1, δ = 4, N = 5,
                                  // var = (2/3·3 + 16·3·2/5 + 1·2)/5 = (2 + 19.2 + 2)/5 = 4.64
        m.update(&[5.0, 7.0]);
        close(m.mean, 2.0 + 4.0 * 2.0 / 5.0, 1e-12);
        close(m.var, 4.64, 1e-12);
        close(m.std, (4.64f64 * 5.0 / 4.0).sqrt(), 1e-12);
        // The same as the moments of all five numbers at once.
        let all = [1.0, 2.0, 3.0, 5.0, 7.0];
        let mean = all.iter().sum::<f64>() / 5.0;
        let pop = all.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 5.0;
        close(m.mean, mean, 1e-12);
        close(m.var, pop, 1e-12);
    }

    #[test]
    fn score_normalisation_uses_the_updated_statistics() {
        let mut m = RunningMoments::default();
        let out = m.normalise(&[1.0, 3.0], true);
        // mean 2, unbiased std sqrt(2): (1−2)/(√2+ε), (3−2)/(√2+ε)
        let s = 2f64.sqrt() + f64::from(f32::EPSILON);
        close(out[0], -1.0 / s, 1e-12);
        close(out[1], 1.0 / s, 1e-12);
        let mut m = RunningMoments::default();
        let out = m.normalise(&[1.0, 3.0], false);
        close(out[1], 3.0 / s, 1e-12);
    }

    #[test]
    fn adaptive_kl_moves_by_the_clipped_error() {
        let mut k = KlController {
            value: 0.2,
            target: Some(6.0),
            horizon: 10000.0,
        };
        k.update(3.0, 16); // err = clip(0.5 − 1) = −0.2 → ×(1 − 0.2·16/10000)
        close(k.value, 0.2 * (1.0 - 0.2 * 16.0 / 10000.0), 1e-15);
        let before = k.value;
        k.update(6.6, 100); // err = 0.1 → ×(1 + 0.1·0.01)
        close(k.value, before * 1.001, 1e-15);
        let mut fixed = KlController {
            value: 0.2,
            target: None,
            horizon: 10000.0,
        };
        fixed.update(100.0, 16);
        assert_eq!(fixed.value, 0.2);
    }

    #[test]
    fn kl_penalty_and_score_at_the_last_token() {
        let (r, kl) = per_token_rewards(2.0, &[-1.0, -2.0, -0.5], &[-1.5, -2.0, -1.0], 0.1);
        assert_eq!(kl, vec![0.5, 0.0, 0.5]);
        close(r[0], -0.05, 1e-12);
        close(r[1], 0.0, 1e-12);
        close(r[2], -0.05 + 2.0, 1e-12);
    }

    #[test]
    fn gae_matches_hand_computation() {
        // r = [0, 0, 1], V = [0.5, 0.2, 0.4], γ = 1, λ = 0.95
        // t2: δ = 1 − 0.4 = 0.6, A2 = 0.6
        // t1: δ = 0 + 0.4 − 0.2 = 0.2, A1 = 0.2 + 0.95·0.6 = 0.77
        // t0: δ = 0 + 0.2 − 0.5 = −0.3, A0 = −0.3 + 0.95·0.77 = 0.4315
        let (a, r) = gae(&[0.0, 0.0, 1.0], &[0.5, 0.2, 0.4], 1.0, 0.95);
        close(a[2], 0.6, 1e-12);
        close(a[1], 0.77, 1e-12);
        close(a[0], 0.4315, 1e-12);
        close(r[0], 0.9315, 1e-12);
        close(r[1], 0.97, 1e-12);
        close(r[2], 1.0, 1e-12);
        // γ = 0.5, λ = 0: one-step TD errors only.
        let (a, _) = gae(&[1.0, 2.0], &[0.0, 1.0], 0.5, 0.0);
        close(a[0], 1.5, 1e-12);
        close(a[1], 1.0, 1e-12);
    }

    #[test]
    fn whitening_is_unbiased_and_not_shifted_back() {
        // [1, 2, 3]: mean 2, unbiased var 1 → (x − 2)/sqrt(1 + 1e-8)
        let w = whiten(&[1.0, 2.0, 3.0]);
        let s = (1.0f64 + 1e-8).sqrt();
        close(w[0], -1.0 / s, 1e-12);
        close(w[1], 0.0, 1e-12);
        close(w[2], 1.0 / s, 1e-12);
    }

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    #[test]
    fn clipped_losses_match_hand_computation() {
        let lp = Var::from_tensor(&t(&[0.0, 0.0])).unwrap();
        let vp = Var::from_tensor(&t(&[1.0, 0.0])).unwrap();
        // token 0: ratio e^{0.5} = 1.6487 (old −0.5), A = 1 → max(−1.6487, −1.2) = −1.2 (clipped)
        // token 1: ratio e^{−0.1} = 0.9048 (old 0.1), A = −2 → max(1.8097, 1.8097) = 1.8097
        // pg = (−1.2 + 1.8097)/2 = 0.30484
        // value 0: V 1.0, old 0.5 → clipped 0.7; R 0: max(1, 0.49) = 1
        // value 1: V 0.0, old 0.0 → 0.0; R 0.5: max(0.25, 0.25) = 0.25
        // vf = 0.5·(1 + 0.25)/2 = 0.3125; loss = 0.30484 + 0.1·0.3125
        let p = LossParams::default();
        let out = ppo_loss(
            lp.as_tensor(),
            vp.as_tensor(),
            &t(&[-0.5, 0.1]),
            &t(&[0.5, 0.0]),
            &t(&[1.0, -2.0]),
            &t(&[0.0, 0.5]),
            &p,
        )
        .unwrap();
        let pg = (-1.2 + 2.0 * (-0.1f64).exp()) / 2.0;
        close(out.pg_loss, pg, 1e-6);
        close(out.vf_loss, 0.3125, 1e-6);
        let total = f64::from(out.loss.to_scalar::<f32>().unwrap());
        close(total, pg + 0.03125, 1e-6);
        close(out.pg_clipfrac, 0.5, 1e-9);
        close(out.vf_clipfrac, 0.0, 1e-9);
        close(out.approxkl, 0.5 * (0.25 + 0.01) / 2.0, 1e-6);
        close(out.policykl, (-0.5 + 0.1) / 2.0, 1e-6);
        assert!(!out.skipped);
        // Gradients: the clipped token gives none to its log-prob; token 1: d/dlp (−A·ratio)/2 = 2·0.9048/2.
        let g = out.loss.backward().unwrap();
        let glp = g.get(lp.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        close(f64::from(glp[0]), 0.0, 1e-7);
        close(f64::from(glp[1]), (-0.1f64).exp(), 1e-6);
        // Value 0: unclipped branch (1 > 0.49) → 0.1·0.5·2·(V−R)/2 = 0.05; value 1: V = R·… −0.5 → 0.1·0.5·2·(0−0.5)/2
        let gv = g.get(vp.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        close(f64::from(gv[0]), 0.05, 1e-6);
        close(f64::from(gv[1]), -0.025, 1e-6);
    }

    #[test]
    fn ratio_threshold_zeroes_the_minibatch() {
        let p = LossParams::default();
        let out = ppo_loss(
            &t(&[3.0]),
            &t(&[0.0]),
            &t(&[0.0]),
            &t(&[0.0]),
            &t(&[1.0]),
            &t(&[1.0]),
            &p,
        )
        .unwrap();
        assert!(out.skipped, "e^3 > 10");
        assert_eq!(out.loss.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let xs = [3.0, 1.0, 2.0, 4.0];
        close(percentile(&xs, 90.0).unwrap(), 3.7, 1e-12); // pos 2.7 between 3 and 4
        close(percentile(&xs, 0.0).unwrap(), 1.0, 1e-12);
        close(percentile(&xs, 100.0).unwrap(), 4.0, 1e-12);
        assert!(percentile(&[], 50.0).is_none());
    }
}
