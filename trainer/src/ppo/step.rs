//! One PPO step on a batch of scored rollouts (TRL 0.7.2 `PPOTrainer.step`): the old-policy,
//! reference and value pass, score normalisation, per-token KL rewards, GAE and whitening, then
//! `ppo_epochs` passes of clipped policy + value loss over minibatches, each an AdamW step, and
//! the adaptive KL update. Models and reward functions stay outside: the caller hands in rollouts
//! and their raw scores, so the same step trains against reward models or a rule (the toy test).

use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rllr_core::{ForwardCtx, Llama};
use serde_json::{json, Map, Value};

use super::math::{self, KlController, LossParams, RunningMoments};
use super::rollout::{Rollout, SeqBatch};
use crate::train::optim::{clip_grad_norm, AdamW};
use crate::train::train_loop::mix_seed;

/// Names and constants a step needs.
pub struct StepSpec<'a> {
    pub policy: &'a str,
    pub value: &'a str,
    pub pad: u32,
    pub gamma: f64,
    pub gae_lambda: f64,
    pub loss: LossParams,
    pub ppo_epochs: usize,
    /// Rollouts per optimizer step (≥ 1).
    pub mini_batch_size: usize,
    pub score_norm: bool,
    /// Dropout in the old/value/training passes (and the value head's 0.1), seeded by `seed`.
    pub dropout: bool,
    pub head_dropout: f32,
    pub max_grad_norm: f64,
    pub seed: u64,
}

/// What persists from step to step (checkpointed with the weights).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PpoState {
    pub kl: KlController,
    pub moments: RunningMoments,
}

/// Per-rollout quantities of the old policy.
struct Old {
    logprobs: Vec<Vec<f64>>,
    ref_logprobs: Vec<Vec<f64>>,
    values: Vec<Vec<f64>>,
}

/// Accumulates minibatch statistics as means.
#[derive(Default)]
struct Means(Vec<(&'static str, f64, usize)>);

impl Means {
    fn add(&mut self, k: &'static str, v: f64) {
        match self.0.iter_mut().find(|(n, _, _)| *n == k) {
            Some(e) => {
                e.1 += v;
                e.2 += 1;
            }
            None => self.0.push((k, v, 1)),
        }
    }
    fn into_map(self, m: &mut Map<String, Value>) {
        for (k, s, n) in self.0 {
            m.insert(k.into(), json!(s / n.max(1) as f64));
        }
    }
}

fn ctx<'a>(adapter: Option<&'a str>, dropout: bool, seed: u64) -> ForwardCtx<'a> {
    ForwardCtx {
        adapter,
        dropout_seed: dropout.then_some(seed),
    }
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len().max(1) as f64
}

fn flat(xs: &[Vec<f64>]) -> Vec<f64> {
    xs.iter().flatten().copied().collect()
}

fn to_tensor(xs: &[f64], model: &Llama) -> candle_core::Result<Tensor> {
    let v: Vec<f32> = xs.iter().map(|&x| x as f32).collect();
    Tensor::new(v.as_slice(), model.device())
}

impl StepSpec<'_> {
    fn head_dropout(&self, seed: u64) -> Option<(f32, u64)> {
        self.dropout.then_some((self.head_dropout, seed))
    }

    /// Old log-probs (policy, train-mode dropout as the released code), reference log-probs (bare
    /// base) and values, per rollout; in chunks of the minibatch size.
    fn old_pass(&self, model: &Llama, rollouts: &[Rollout], step: u64) -> anyhow::Result<Old> {
        let mut old = Old {
            logprobs: Vec::new(),
            ref_logprobs: Vec::new(),
            values: Vec::new(),
        };
        for (c, chunk) in rollouts.chunks(self.mini_batch_size).enumerate() {
            let refs: Vec<&Rollout> = chunk.iter().collect();
            let sb = SeqBatch::new(&refs, self.pad, model)?;
            let s = |k: u64| mix_seed(&[self.seed, step, 0x01d, c as u64, k]);
            let lp = sb.logprobs(model, &ctx(Some(self.policy), self.dropout, s(1)))?;
            let rlp = sb.logprobs(model, &ctx(None, false, 0))?;
            let v = sb.values(
                model,
                &ctx(Some(self.value), self.dropout, s(2)),
                self.value,
                self.head_dropout(s(3)),
            )?;
            old.logprobs
                .extend(sb.split(&lp.detach().to_vec1::<f32>()?));
            old.ref_logprobs
                .extend(sb.split(&rlp.detach().to_vec1::<f32>()?));
            old.values.extend(sb.split(&v.detach().to_vec1::<f32>()?));
        }
        Ok(old)
    }

    /// Run PPO step `step` (0-based) at learning rate `lr`; `scores` are the raw task rewards of
    /// `rollouts`.
    pub fn step(
        &self,
        model: &Llama,
        opt: &mut AdamW,
        state: &mut PpoState,
        (rollouts, scores): (&[Rollout], &[f64]),
        (step, lr): (usize, f64),
    ) -> anyhow::Result<Map<String, Value>> {
        anyhow::ensure!(rollouts.len() == scores.len() && !rollouts.is_empty());
        let step_seed = step as u64;
        let old = self.old_pass(model, rollouts, step_seed)?;
        let norm = if self.score_norm {
            state.moments.normalise(scores, true)
        } else {
            scores.to_vec()
        };
        let beta = state.kl.value;
        let (mut adv, mut ret, mut kl_sums, mut non_score) = (vec![], vec![], vec![], vec![]);
        for (i, &score) in norm.iter().enumerate() {
            let (r, kl) =
                math::per_token_rewards(score, &old.logprobs[i], &old.ref_logprobs[i], beta);
            kl_sums.push(kl.iter().sum::<f64>());
            non_score.push(-beta * kl.iter().sum::<f64>());
            let (a, rt) = math::gae(&r, &old.values[i], self.gamma, self.gae_lambda);
            adv.push(a);
            ret.push(rt);
        }
        let white = math::whiten(&flat(&adv));
        let mut at = 0;
        let adv: Vec<Vec<f64>> = adv
            .iter()
            .map(|a| {
                let w = white[at..at + a.len()].to_vec();
                at += a.len();
                w
            })
            .collect();
        let mut means = Means::default();
        let mut updates = 0usize;
        for epoch in 0..self.ppo_epochs {
            let mut order: Vec<usize> = (0..rollouts.len()).collect();
            let mut rng =
                rand::rngs::StdRng::seed_from_u64(mix_seed(&[self.seed, step_seed, epoch as u64]));
            order.shuffle(&mut rng);
            for (m, idx) in order.chunks(self.mini_batch_size).enumerate() {
                let pick = |v: &[Vec<f64>]| -> Vec<f64> {
                    idx.iter().flat_map(|&i| v[i].iter().copied()).collect()
                };
                let refs: Vec<&Rollout> = idx.iter().map(|&i| &rollouts[i]).collect();
                let sb = SeqBatch::new(&refs, self.pad, model)?;
                let s =
                    |k: u64| mix_seed(&[self.seed, step_seed, 0x7a1, epoch as u64, m as u64, k]);
                let lp = sb.logprobs(model, &ctx(Some(self.policy), self.dropout, s(1)))?;
                let vp = sb.values(
                    model,
                    &ctx(Some(self.value), self.dropout, s(2)),
                    self.value,
                    self.head_dropout(s(3)),
                )?;
                let out = math::ppo_loss(
                    &lp,
                    &vp,
                    &to_tensor(&pick(&old.logprobs), model)?,
                    &to_tensor(&pick(&old.values), model)?,
                    &to_tensor(&pick(&adv), model)?,
                    &to_tensor(&pick(&ret), model)?,
                    &self.loss,
                )?;
                let grads = out.loss.backward()?;
                let mut g = opt
                    .vars()
                    .iter()
                    .map(|(_, v)| match grads.get(v.as_tensor()) {
                        Some(g) => g.to_dtype(DType::F32),
                        None => v.as_tensor().zeros_like()?.to_dtype(DType::F32),
                    })
                    .collect::<candle_core::Result<Vec<_>>>()?;
                let gn = clip_grad_norm(&mut g, self.max_grad_norm)?;
                if !out.skipped {
                    opt.step(&g, lr)?;
                    updates += 1;
                }
                means.add("loss/policy", out.pg_loss);
                means.add("loss/value", out.vf_loss);
                means.add("loss/total", out.pg_loss + self.loss.vf_coef * out.vf_loss);
                means.add("policy/approxkl", out.approxkl);
                means.add("policy/policykl", out.policykl);
                means.add("policy/clipfrac", out.pg_clipfrac);
                means.add("val/clipfrac", out.vf_clipfrac);
                means.add("val/ratio", out.mean_ratio);
                means.add("ppo/grad_norm", gn);
            }
        }
        let kl_mean = mean(&kl_sums);
        state.kl.update(kl_mean, rollouts.len());
        let lens: Vec<f64> = rollouts.iter().map(|r| r.response.len() as f64).collect();
        let entropy = mean(
            &old.logprobs
                .iter()
                .map(|l| -l.iter().sum::<f64>())
                .collect::<Vec<_>>(),
        );
        let flat_ret = flat(&ret);
        let flat_val = flat(&old.values);
        let mut stats = Map::new();
        stats.insert("objective/kl".into(), json!(kl_mean));
        stats.insert("objective/kl_coef".into(), json!(beta));
        stats.insert("objective/entropy".into(), json!(entropy));
        stats.insert("objective/scores".into(), json!(mean(scores)));
        stats.insert("ppo/mean_scores".into(), json!(mean(&norm)));
        stats.insert("ppo/std_scores".into(), json!(math::std_unbiased(&norm)));
        stats.insert("ppo/mean_non_score_reward".into(), json!(mean(&non_score)));
        stats.insert("ppo/learning_rate".into(), json!(lr));
        stats.insert("ppo/updates".into(), json!(updates));
        stats.insert("val/mean".into(), json!(mean(&flat_val)));
        stats.insert(
            "val/var_explained".into(),
            json!(math::var_explained(&flat_val, &flat_ret)),
        );
        stats.insert("returns/mean".into(), json!(mean(&flat_ret)));
        stats.insert("tokens/responses_len_mean".into(), json!(mean(&lens)));
        means.into_map(&mut stats);
        Ok(stats)
    }
}
