//! `[ppo]`: every setting of the PPO stage (docs/method.md §5.3–5.4, §6.1) in one place, read from the
//! TOML file and overridable by flags / `RLLR_TRAIN_*` variables like every other stage. Defaults are the
//! released code's (TRL 0.7.2 semantics); what the quickstart changes is in its config file.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::train::config::{overridable, LoraSection, TrainConfig};

/// What the task reward of a rollout is (docs/method.md §5.3, D6, D8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum RewardMode {
    /// RLHF baseline: the rationale-sensitive RM's score.
    Rlhf,
    /// RLLR: the label-sensitive RM's score.
    Rllr,
    /// RLLR-mixed (released code): min(r_label, λ) + r_rationale.
    RllrMixed,
    /// The weighted alternative of D6: w·r_label + (1 − w)·r_rationale.
    RllrWeighted,
}

impl RewardMode {
    /// Does this mode read the label-sensitive RM?
    pub fn needs_label_rm(self) -> bool {
        !matches!(self, RewardMode::Rlhf)
    }

    /// Does this mode read the rationale-sensitive RM?
    pub fn needs_rationale_rm(self) -> bool {
        !matches!(self, RewardMode::Rllr)
    }

    /// Name used in reports and run directories.
    pub fn name(self) -> &'static str {
        match self {
            RewardMode::Rlhf => "rlhf",
            RewardMode::Rllr => "rllr",
            RewardMode::RllrMixed => "rllr-mixed",
            RewardMode::RllrWeighted => "rllr-weighted",
        }
    }
}

/// λ, the cap on the label reward in `rllr-mixed`: a number in raw RM units, or `auto` (D7): a
/// percentile of the label RM's scores on correct-label responses of a held-out set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lambda {
    Fixed(f64),
    Auto,
}

impl FromStr for Lambda {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Lambda::Auto);
        }
        match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Lambda::Fixed(v)),
            _ => Err(format!(
                "lambda must be a finite number or \"auto\", got {s:?}"
            )),
        }
    }
}

impl fmt::Display for Lambda {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lambda::Fixed(v) => write!(f, "{v}"),
            Lambda::Auto => f.write_str("auto"),
        }
    }
}

impl Serialize for Lambda {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Lambda::Fixed(v) => s.serialize_f64(*v),
            Lambda::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for Lambda {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(Lambda::Fixed(v)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

overridable! {
    /// `[ppo]`: models, data, rollout, reward and PPO settings.
    PpoConfig / PpoStageArgs {
        value {
            /// rlhf (rationale RM), rllr (label RM), rllr-mixed (min(r_label, λ) + r_rationale) or
            /// rllr-weighted (w·r_label + (1−w)·r_rationale).
            reward_mode: RewardMode = RewardMode::RllrMixed, "RLLR_TRAIN_REWARD_MODE";
            /// λ of rllr-mixed (ignored by the other modes) in raw RM units, or "auto" (a percentile of the label RM's scores on
            /// correct-label responses of `lambda_data`, logged and recorded in the report).
            lambda: Lambda = Lambda::Fixed(1.0), "RLLR_TRAIN_LAMBDA";
            /// Percentile (0–100) that `--lambda auto` takes.
            lambda_percentile: f64 = 90.0, "RLLR_TRAIN_LAMBDA_PERCENTILE";
            /// Held-out examples scored for `--lambda auto` (0: all of lambda_data).
            lambda_limit: usize = 200, "RLLR_TRAIN_LAMBDA_LIMIT";
            /// w of rllr-weighted.
            label_weight: f64 = 0.5, "RLLR_TRAIN_LABEL_WEIGHT";
            /// Use at most this many training prompts (0: all).
            limit: usize = 0, "RLLR_TRAIN_LIMIT";
            /// Prompts longer than this many tokens are cut on the left side of the query text.
            max_prompt_len: usize = 512, "RLLR_TRAIN_MAX_PROMPT_LEN";
            /// Rollout length cap (a response that hits it is scored at its last token, quirk 3).
            max_new_tokens: usize = 256, "RLLR_TRAIN_MAX_NEW_TOKENS";
            /// Rollout sampling temperature (docs/method.md §5.4.1: 1.0).
            temperature: f32 = 1.0, "RLLR_TRAIN_TEMPERATURE";
            /// Rollout top-k (implicit 50 in the released code, D13; 0: off).
            top_k: usize = 50, "RLLR_TRAIN_TOP_K";
            /// Rollout top-p.
            top_p: f32 = 1.0, "RLLR_TRAIN_TOP_P";
            /// Initial KL coefficient β₀.
            init_kl_coef: f64 = 0.2, "RLLR_TRAIN_INIT_KL_COEF";
            /// Adaptive KL controller (target, horizon); false keeps β fixed.
            adaptive_kl: bool = true, "RLLR_TRAIN_ADAPTIVE_KL";
            /// Target of the adaptive KL controller (llmtuner: 6.0).
            kl_target: f64 = 6.0, "RLLR_TRAIN_KL_TARGET";
            /// Horizon of the adaptive KL controller.
            kl_horizon: f64 = 10000.0, "RLLR_TRAIN_KL_HORIZON";
            /// GAE discount γ.
            gamma: f64 = 1.0, "RLLR_TRAIN_GAMMA";
            /// GAE λ.
            gae_lambda: f64 = 0.95, "RLLR_TRAIN_GAE_LAMBDA";
            /// Policy ratio clip ε.
            cliprange: f64 = 0.2, "RLLR_TRAIN_CLIPRANGE";
            /// Value clip around the old values.
            cliprange_value: f64 = 0.2, "RLLR_TRAIN_CLIPRANGE_VALUE";
            /// Weight of the value loss.
            vf_coef: f64 = 0.1, "RLLR_TRAIN_VF_COEF";
            /// Skip a minibatch whose mean ratio exceeds this (TRL ratio_threshold).
            ratio_threshold: f64 = 10.0, "RLLR_TRAIN_RATIO_THRESHOLD";
            /// PPO epochs over each rollout batch (released code: 1).
            ppo_epochs: usize = 1, "RLLR_TRAIN_PPO_EPOCHS";
            /// Rollouts per optimizer step inside a PPO epoch (0: the whole batch, one step per batch).
            mini_batch_size: usize = 0, "RLLR_TRAIN_MINI_BATCH_SIZE";
            /// Running score normalisation and scaling (--ppo_score_norm, §5.4.2).
            score_norm: bool = true, "RLLR_TRAIN_SCORE_NORM";
            /// Dropout on in the scoring, old-logprob/value and training passes, as the released
            /// code runs them (D12); false for deterministic passes.
            dropout: bool = true, "RLLR_TRAIN_PPO_DROPOUT";
            /// Chat template (auto: from the checkpoint).
            template: String = "auto".into(), "RLLR_TRAIN_TEMPLATE";
            /// Dev examples the trained policy answers greedily at the end (0: all of `dev`), so
            /// a policy can be chosen on dev without touching the test split.
            dev_limit: usize = 0, "RLLR_TRAIN_DEV_LIMIT";
            /// Token budget of those dev answers.
            dev_max_new_tokens: usize = 64, "RLLR_TRAIN_DEV_MAX_NEW_TOKENS";
            /// Prompts per generation batch of the dev answers.
            dev_batch_size: usize = 32, "RLLR_TRAIN_DEV_BATCH_SIZE";
        }
        optional {
            /// Dev examples (task JSONL) for the final greedy evaluation; unset: none.
            dev: PathBuf, "RLLR_TRAIN_DEV";
            /// The frozen base and reference: M_sft.
            model: PathBuf, "RLLR_TRAIN_MODEL";
            /// Task spec file.
            task: PathBuf, "RLLR_TRAIN_TASK";
            /// Training prompts (task JSONL; labels are only used for the rollouts' accuracy log).
            train: PathBuf, "RLLR_TRAIN_TRAIN";
            /// Label-sensitive RM directory (rllr-train reward on label pairs).
            reward_model: PathBuf, "RLLR_TRAIN_REWARD_MODEL";
            /// Rationale-sensitive RM directory (rllr-train reward on rationale pairs).
            reward_model_rationale: PathBuf, "RLLR_TRAIN_REWARD_MODEL_RATIONALE";
            /// RM whose adapter + head initialise the value model (default: the label RM for rllr and
            /// rllr-mixed, the rationale RM for rlhf, as docs/method.md §4).
            value_model: PathBuf, "RLLR_TRAIN_VALUE_MODEL";
            /// Held-out examples with gold rationales for --lambda auto (e.g. the dev split).
            lambda_data: PathBuf, "RLLR_TRAIN_LAMBDA_DATA";
            /// Run directory: model/ (policy adapter + rllr.json), checkpoints/, metrics.jsonl, report.json.
            output: PathBuf, "RLLR_TRAIN_OUTPUT";
        }
    }
}

/// The config file: `[ppo]`, `[train]` (rollout batch = batch_size), `[lora]` (policy adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PpoFile {
    pub ppo: PpoConfig,
    pub train: TrainConfig,
    pub lora: LoraSection,
}

impl Default for PpoFile {
    /// The released PPO settings (§6.1): lr 5e-6, weight decay 0.01, cosine, no warm-up.
    fn default() -> Self {
        Self {
            ppo: PpoConfig::default(),
            train: TrainConfig {
                learning_rate: 5e-6,
                weight_decay: 0.01,
                batch_size: 16,
                ..TrainConfig::default()
            },
            lora: LoraSection::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_reads_numbers_and_auto() {
        let f: PpoFile = toml::from_str("[ppo]\nlambda = \"auto\"\n").unwrap();
        assert_eq!(f.ppo.lambda, Lambda::Auto);
        let f: PpoFile = toml::from_str("[ppo]\nlambda = 3.9\n").unwrap();
        assert_eq!(f.ppo.lambda, Lambda::Fixed(3.9));
        assert_eq!("auto".parse::<Lambda>(), Ok(Lambda::Auto));
        assert!("nan".parse::<Lambda>().is_err());
        assert!(toml::from_str::<PpoFile>("[ppo]\nlambda = \"high\"\n").is_err());
        assert!(toml::from_str::<PpoFile>("[ppo]\nno_such_key = 1\n").is_err());
    }

    #[test]
    fn defaults_are_the_released_settings() {
        let f = PpoFile::default();
        assert_eq!(f.train.learning_rate, 5e-6);
        assert_eq!(f.train.weight_decay, 0.01);
        assert_eq!(
            (f.ppo.top_k, f.ppo.top_p, f.ppo.temperature),
            (50, 1.0, 1.0)
        );
        assert_eq!(
            (f.ppo.gamma, f.ppo.gae_lambda, f.ppo.vf_coef),
            (1.0, 0.95, 0.1)
        );
        assert_eq!(f.ppo.reward_mode, RewardMode::RllrMixed);
    }
}
