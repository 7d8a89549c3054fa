//! The PPO settings checks that need no model, run before anything is loaded so a bad config
//! fails in milliseconds rather than after the base and the reward models are read.

use anyhow::{bail, Context};
use rllr_core::SamplingParams;

use super::config::PpoConfig;
use crate::train::config::TrainConfig;
use crate::train::train_loop;

/// Check the settings that need no model, before anything is loaded.
pub(super) fn validate(c: &PpoConfig, tc: &TrainConfig) -> anyhow::Result<()> {
    train_loop::validate(tc)?;
    if tc.grad_accum != 1 {
        bail!(
            "ppo: grad_accum is not used (minibatches are set by mini_batch_size); leave it at 1"
        );
    }
    if c.ppo_epochs == 0 {
        bail!("ppo_epochs must be >= 1");
    }
    if c.mini_batch_size > tc.batch_size {
        bail!(
            "mini_batch_size ({}) must be <= batch_size ({})",
            c.mini_batch_size,
            tc.batch_size
        );
    }
    if c.max_new_tokens == 0 {
        bail!("max_new_tokens must be >= 1");
    }
    if !(0.0..=100.0).contains(&c.lambda_percentile) {
        bail!("lambda_percentile must be in [0, 100]");
    }
    if !(0.0..=1.0).contains(&c.label_weight) {
        bail!("label_weight must be in [0, 1]");
    }
    for (k, v) in [
        ("cliprange", c.cliprange),
        ("cliprange_value", c.cliprange_value),
        ("kl_horizon", c.kl_horizon),
        ("kl_target", c.kl_target),
    ] {
        if v.is_nan() || v <= 0.0 {
            bail!("{k} must be > 0, got {v}");
        }
    }
    if c.init_kl_coef.is_nan() || c.init_kl_coef < 0.0 {
        bail!("init_kl_coef must be >= 0");
    }
    SamplingParams {
        temperature: c.temperature,
        top_k: Some(c.top_k),
        top_p: Some(c.top_p),
        seed: 0,
    }
    .validate()
    .context("ppo sampling settings")?;
    Ok(())
}
