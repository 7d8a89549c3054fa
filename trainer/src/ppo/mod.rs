//! `rllr-train ppo`: PPO against a label-sensitive, rationale-sensitive or mixed reward
//! (docs/method.md §5.3–5.4, TRL 0.7.2 semantics), on one frozen M_sft with named LoRA adapters for the
//! policy, the value model and the reward models, switched per forward, so the base is held once.
//!
//! A step: take the next `batch_size` prompts (seeded per-epoch shuffle), sample one response each
//! from the policy (eval mode, seeded per (seed, step, row)), score them with the reward model(s),
//! then [`step::StepSpec::step`]. Checkpoints hold the policy/value adapters, the value head, the
//! AdamW moments, the KL coefficient and the running score moments, so `--resume` after a crash
//! replays exactly the run that was interrupted.
//!
//! One module per job: [`validate`] (settings), [`reward_models`] (which RMs, checks, loading),
//! [`lambda`] (λ calibration), [`scorer`] (the reward), [`stage`] (the command: set-up, manifest,
//! report), [`ppo_loop`] (the loop), [`metrics_log`] (reading the log back); [`rollout`], [`step`]
//! and [`math`] are the PPO algorithm itself.

pub mod config;
mod lambda;
pub mod math;
mod metrics_log;
mod ppo_loop;
mod reward_models;
pub mod rollout;
mod scorer;
mod stage;
pub mod step;
mod validate;

pub use lambda::{calibrate_lambda, LambdaSpec};
pub use reward_models::{check_reward_model, load_reward_model};
pub use scorer::{combine, rm_scores};
pub use stage::run;

use crate::train::config::stage_args;
use config::{PpoFile, PpoStageArgs};

/// Adapter (and head) names inside the one model.
pub const POLICY: &str = "policy";
pub const VALUE: &str = "value";
pub const RM_LABEL: &str = "rm_label";
pub const RM_RATIONALE: &str = "rm_rationale";

stage_args! {
    /// `rllr-train ppo` arguments.
    PpoArgs => PpoFile { ppo: PpoStageArgs }
}

#[cfg(test)]
mod tests;
