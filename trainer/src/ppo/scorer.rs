//! The task reward of a PPO step: the reward models' last-token scores in raw RM units
//! ([`rm_scores`]), combined by the reward mode ([`combine`], docs/method.md §5.3) behind the
//! [`RewardFn`] seam the loop calls (tests plug a rule-based reward in there).

use rllr_core::{ForwardCtx, Llama};
use serde_json::{json, Map, Value};

use super::config::RewardMode;
use super::rollout::{Rollout, SeqBatch};
use super::{RM_LABEL, RM_RATIONALE};
use crate::train::train_loop::mix_seed;

/// Last-token scores of the reward model loaded as adapter + head `name`, in raw RM units, one per
/// rollout, `batch_size` sequences per forward; `dropout_seed` `None` is eval mode.
pub fn rm_scores(
    model: &Llama,
    pad: u32,
    rollouts: &[&Rollout],
    name: &str,
    dropout_seed: Option<u64>,
    batch_size: usize,
) -> anyhow::Result<Vec<f64>> {
    let ctx = ForwardCtx {
        adapter: Some(name),
        dropout_seed,
    };
    let mut out = Vec::with_capacity(rollouts.len());
    for chunk in rollouts.chunks(batch_size.max(1)) {
        let sb = SeqBatch::new(chunk, pad, model)?;
        out.extend(sb.scores(model, &ctx, name)?);
    }
    Ok(out)
}

/// The task reward of each rollout (raw, before normalisation); may add component means to `stats`.
pub trait RewardFn {
    fn score(
        &self,
        rollouts: &[Rollout],
        step: usize,
        stats: &mut Map<String, Value>,
    ) -> anyhow::Result<Vec<f64>>;
}

/// The reward models' scores in raw RM units, combined by the reward mode.
pub(super) struct Scorer<'a> {
    pub mode: RewardMode,
    pub lambda: f64,
    pub label_weight: f64,
    pub pad: u32,
    pub dropout: bool,
    pub seed: u64,
    pub model: &'a Llama,
}

impl RewardFn for Scorer<'_> {
    fn score(
        &self,
        rollouts: &[Rollout],
        step: usize,
        stats: &mut Map<String, Value>,
    ) -> anyhow::Result<Vec<f64>> {
        let refs: Vec<&Rollout> = rollouts.iter().collect();
        let read = |name: &str, k: u64| -> anyhow::Result<Vec<f64>> {
            let seed = self
                .dropout
                .then(|| mix_seed(&[self.seed, step as u64, 0x5c0, k]));
            rm_scores(self.model, self.pad, &refs, name, seed, refs.len())
        };
        let label = self
            .mode
            .needs_label_rm()
            .then(|| read(RM_LABEL, 1))
            .transpose()?;
        let rationale = self
            .mode
            .needs_rationale_rm()
            .then(|| read(RM_RATIONALE, 2))
            .transpose()?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        if let Some(l) = &label {
            stats.insert("rewards/label_mean".into(), json!(mean(l)));
        }
        if let Some(r) = &rationale {
            stats.insert("rewards/rationale_mean".into(), json!(mean(r)));
        }
        Ok(combine(
            self.mode,
            self.lambda,
            self.label_weight,
            label.as_deref(),
            rationale.as_deref(),
        ))
    }
}

/// The mixed reward of docs/method.md §5.3 and its variants.
pub fn combine(
    mode: RewardMode,
    lambda: f64,
    w: f64,
    label: Option<&[f64]>,
    rationale: Option<&[f64]>,
) -> Vec<f64> {
    match (mode, label, rationale) {
        (RewardMode::Rllr, Some(l), _) => l.to_vec(),
        (RewardMode::Rlhf, _, Some(r)) => r.to_vec(),
        (RewardMode::RllrMixed, Some(l), Some(r)) => {
            l.iter().zip(r).map(|(l, r)| l.min(lambda) + r).collect()
        }
        (RewardMode::RllrWeighted, Some(l), Some(r)) => l
            .iter()
            .zip(r)
            .map(|(l, r)| w * l + (1.0 - w) * r)
            .collect(),
        _ => panic!("combine: the scores {mode:?} needs were not computed"),
    }
}
