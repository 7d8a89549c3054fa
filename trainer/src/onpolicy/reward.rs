//! The two reward models on M_sft's samples, scored exactly as PPO scores a rollout
//! ([`crate::ppo::rm_scores`]: last-token score of prompt ⊕ response, eval mode here), the mixed
//! reward `min(r_label, λ) + r_rationale` by PPO's [`crate::ppo::combine`], and λ found the way
//! PPO's `lambda = "auto"` finds it ([`crate::ppo::calibrate_lambda`]) unless it is given.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rllr_core::task::TaskSpec;

use super::sample::{Policy, Sample};
use crate::ppo::config::{Lambda, RewardMode};
use crate::ppo::{self, LambdaSpec, RM_LABEL, RM_RATIONALE};

/// The reward models and λ.
#[derive(clap::Args, Debug, Clone)]
pub struct RewardModelsArgs {
    /// Label-sensitive RM (RM_rllr: `rllr-train reward` on label pairs), trained on --model.
    #[arg(long, env = "RLLR_TRAIN_REWARD_MODEL")]
    pub reward_model: PathBuf,
    /// Rationale-sensitive RM (RM_rlhf: `rllr-train reward` on rationale pairs), trained on --model.
    #[arg(long, env = "RLLR_TRAIN_REWARD_MODEL_RATIONALE")]
    pub reward_model_rationale: PathBuf,
    /// λ of the mixed reward min(r_label, λ) + r_rationale in raw RM units, or "auto": calibrated
    /// as PPO's lambda = "auto" (a percentile of RM_rllr's scores on --lambda-data gold responses).
    #[arg(long, env = "RLLR_TRAIN_LAMBDA", default_value = "auto")]
    pub lambda: Lambda,
    /// A PPO report.json whose `lambda` wins when it has one, so samples are ranked by the reward
    /// the rllr-mixed policy was trained with.
    #[arg(long, env = "RLLR_TRAIN_LAMBDA_FROM")]
    pub lambda_from: Option<PathBuf>,
    /// Held-out examples with gold rationales for --lambda auto (the dev split, as PPO).
    #[arg(long, env = "RLLR_TRAIN_LAMBDA_DATA")]
    pub lambda_data: Option<PathBuf>,
    /// Percentile (0–100) that --lambda auto takes (PPO's lambda_percentile).
    #[arg(long, env = "RLLR_TRAIN_LAMBDA_PERCENTILE", default_value_t = 90.0)]
    pub lambda_percentile: f64,
    /// Gold responses scored for --lambda auto (0: all; PPO's lambda_limit).
    #[arg(long, env = "RLLR_TRAIN_LAMBDA_LIMIT", default_value_t = 200)]
    pub lambda_limit: usize,
    /// Token cap of prompt + gold response for --lambda auto (PPO: max_prompt_len + max_new_tokens).
    #[arg(long, env = "RLLR_TRAIN_LAMBDA_CUTOFF", default_value_t = 768)]
    pub lambda_cutoff: usize,
    /// Sequences per reward-model forward: larger is faster until memory runs out.
    #[arg(long, env = "RLLR_TRAIN_SCORE_BATCH_SIZE", default_value_t = 8)]
    pub score_batch_size: usize,
}

/// One sample's rewards in raw RM units.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rewards {
    pub label: f64,
    pub rationale: f64,
    /// min(label, λ) + rationale.
    pub mixed: f64,
}

/// Load both reward models onto the policy's base (it must be the M_sft they were trained on).
pub fn load(
    policy: &mut Policy,
    r: &RewardModelsArgs,
    task: &TaskSpec,
    base: &Path,
) -> anyhow::Result<()> {
    for (dir, what) in [
        (&r.reward_model, "--reward-model"),
        (&r.reward_model_rationale, "--reward-model-rationale"),
    ] {
        ppo::check_reward_model(dir, what, task, base)?;
    }
    let m = &mut policy.loaded.model;
    ppo::load_reward_model(m, &r.reward_model, RM_LABEL, "--reward-model")?;
    ppo::load_reward_model(
        m,
        &r.reward_model_rationale,
        RM_RATIONALE,
        "--reward-model-rationale",
    )
}

/// The `lambda` of a PPO report.json, when the file exists and has a number there.
pub fn lambda_of_report(path: &Path) -> anyhow::Result<Option<f64>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(None);
    };
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    Ok(v["lambda"].as_f64())
}

/// λ and where it came from: --lambda-from's report, else a fixed --lambda, else calibrated.
pub fn lambda(
    policy: &Policy,
    r: &RewardModelsArgs,
    task: &TaskSpec,
) -> anyhow::Result<(f64, String)> {
    if let Some(path) = &r.lambda_from {
        if let Some(l) = lambda_of_report(path)? {
            return Ok((l, format!("from {}", path.display())));
        }
    }
    match r.lambda {
        Lambda::Fixed(l) => Ok((l, "fixed".into())),
        Lambda::Auto => {
            let Some(data) = &r.lambda_data else {
                bail!("--lambda auto needs --lambda-data (held-out examples with gold rationales)");
            };
            let spec = LambdaSpec {
                data,
                limit: r.lambda_limit,
                percentile: r.lambda_percentile,
                cutoff: r.lambda_cutoff,
            };
            ppo::calibrate_lambda(&policy.loaded, task, &spec)
        }
    }
}

/// What `diagnose` and `best-of-n` share: M_sft and both RMs loaded, λ resolved, k samples of
/// every prompt drawn and scored.
pub struct Scored {
    pub policy: Policy,
    pub lambda: f64,
    pub k: usize,
    pub samples: Vec<Vec<Sample>>,
    pub rewards: Vec<Vec<Rewards>>,
}

/// Load, resolve λ (logged under `what`), sample `examples` and score every sample.
pub fn sample_and_score(
    what: &str,
    task: &TaskSpec,
    examples: &[rllr_core::dataset::Example],
    sampler: &super::sample::SamplerArgs,
    rewards: &RewardModelsArgs,
) -> anyhow::Result<Scored> {
    let spec = sampler.spec();
    spec.validate()?;
    let mut policy = sampler.load(task)?;
    load(&mut policy, rewards, task, &sampler.model)?;
    let (lambda, source) = self::lambda(&policy, rewards, task)?;
    eprintln!("{what}: λ = {lambda:.4} ({source})");
    let samples = super::sample::sample_k(&policy, task, examples, &spec)?;
    let scored = score(&policy, &samples, lambda, rewards.score_batch_size)?;
    Ok(Scored {
        policy,
        lambda,
        k: spec.k,
        samples,
        rewards: scored,
    })
}

/// Both rewards and the mixed one for every sample, in the samples' shape (eval mode).
pub fn score(
    policy: &Policy,
    samples: &[Vec<Sample>],
    lambda: f64,
    batch_size: usize,
) -> anyhow::Result<Vec<Vec<Rewards>>> {
    let rollouts: Vec<_> = samples
        .iter()
        .enumerate()
        .flat_map(|(i, ss)| ss.iter().map(move |s| s.rollout(i)))
        .collect();
    let refs: Vec<_> = rollouts.iter().collect();
    let (model, pad) = (&policy.loaded.model, policy.loaded.pad);
    let label = ppo::rm_scores(model, pad, &refs, RM_LABEL, None, batch_size)?;
    let rationale = ppo::rm_scores(model, pad, &refs, RM_RATIONALE, None, batch_size)?;
    let mixed = ppo::combine(
        RewardMode::RllrMixed,
        lambda,
        0.5,
        Some(&label),
        Some(&rationale),
    );
    let mut flat = (0..label.len()).map(|n| Rewards {
        label: label[n],
        rationale: rationale[n],
        mixed: mixed[n],
    });
    Ok(samples
        .iter()
        .map(|ss| flat.by_ref().take(ss.len()).collect())
        .collect())
}

/// Index of the highest value (the first one on ties; NaN never wins); `None` when empty.
pub fn best_index(xs: &[f64]) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, &x) in xs.iter().enumerate() {
        if !x.is_nan() && best.is_none_or(|b| x > xs[b]) {
            best = Some(i);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_takes_the_first_maximum() {
        assert_eq!(best_index(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(best_index(&[f64::NAN, -1.0]), Some(1));
        assert_eq!(best_index(&[]), None);
    }

    #[test]
    fn lambda_of_report_reads_the_number_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("report.json");
        assert_eq!(lambda_of_report(&p).unwrap(), None, "no report yet");
        std::fs::write(&p, r#"{"lambda": 3.5}"#).unwrap();
        assert_eq!(lambda_of_report(&p).unwrap(), Some(3.5));
        std::fs::write(&p, r#"{"lambda": null}"#).unwrap();
        assert_eq!(lambda_of_report(&p).unwrap(), None);
    }
}
