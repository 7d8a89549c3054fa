//! Stage configuration: a TOML file (`--config`), then command-line flags / `RLLR_TRAIN_*` environment
//! variables on top. One declaration per field gives both the serde struct (unknown keys are an
//! error, so a typo never silently falls back to a default) and the clap struct of overrides.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

use super::optim::ScheduleKind;

/// Declares `$cfg` (serde, `deny_unknown_fields`, every field defaulted) and `$args` (clap; every
/// field an `Option` flag with an env variable) plus `$args::apply(&self, &mut $cfg)`. `value`
/// fields always have a value; `optional` fields are `Option<T>` in the config.
macro_rules! overridable {
    (
        $(#[$meta:meta])*
        $cfg:ident / $args:ident {
            value { $( $(#[doc = $doc:literal])* $f:ident : $ty:ty = $default:expr, $env:literal; )* }
            optional { $( $(#[doc = $odoc:literal])* $of:ident : $oty:ty, $oenv:literal; )* }
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $cfg {
            $( $(#[doc = $doc])* pub $f: $ty, )*
            $( $(#[doc = $odoc])* pub $of: Option<$oty>, )*
        }

        impl Default for $cfg {
            fn default() -> Self {
                Self { $( $f: $default, )* $( $of: None, )* }
            }
        }

        #[doc = concat!("Command-line overrides of [`", stringify!($cfg), "`].")]
        #[derive(Debug, Clone, Default, clap::Args)]
        pub struct $args {
            $( $(#[doc = $doc])* #[arg(long, env = $env)] pub $f: Option<$ty>, )*
            $( $(#[doc = $odoc])* #[arg(long, env = $oenv)] pub $of: Option<$oty>, )*
        }

        impl $args {
            /// Overwrite the fields given on the command line.
            pub fn apply(&self, c: &mut $cfg) {
                $( if let Some(v) = &self.$f { c.$f = v.clone(); } )*
                $( if let Some(v) = &self.$of { c.$of = Some(v.clone()); } )*
            }
        }
    };
}
pub(crate) use overridable;

/// Declares a training stage's command line: `--config FILE` (the stage's `[$table]`, `[train]` and
/// `[lora]` tables), `--resume`, the hidden `--stop-after` crash switch, and every key of those
/// tables as an override; `resolve()` reads the file, then applies the flags.
macro_rules! stage_args {
    ($(#[$meta:meta])* $name:ident => $file:ident { $table:ident: $stage:ty }) => {
        $(#[$meta])*
        #[derive(clap::Args, Debug)]
        pub struct $name {
            /// TOML config file with the stage's table, [train] and [lora]; flags override it.
            #[arg(long, env = "RLLR_TRAIN_CONFIG")]
            pub config: Option<std::path::PathBuf>,
            /// Continue from the newest checkpoint in <output>/checkpoints.
            #[arg(long, env = "RLLR_TRAIN_RESUME")]
            pub resume: bool,
            /// Exit (status 137, no final save) right after this step's checkpoint, as a crash would.
            #[arg(long, hide = true, env = "RLLR_TRAIN_STOP_AFTER")]
            pub stop_after: Option<usize>,
            #[command(flatten)]
            pub stage: $stage,
            #[command(flatten)]
            pub train: $crate::train::config::TrainArgs,
            #[command(flatten)]
            pub lora: $crate::train::config::LoraArgs,
        }

        impl $name {
            /// File, then flags.
            pub fn resolve(&self) -> anyhow::Result<$file> {
                let mut f: $file = $crate::train::config::read_toml(self.config.as_deref())?;
                self.stage.apply(&mut f.$table);
                self.train.apply(&mut f.train);
                self.lora.apply(&mut f.lora);
                Ok(f)
            }
        }
    };
}
pub(crate) use stage_args;

overridable! {
    /// `[train]`: the optimisation loop shared by every stage (docs/method.md §6.1 defaults).
    TrainConfig / TrainArgs {
        value {
            /// Peak learning rate.
            learning_rate: f64 = 2e-4, "RLLR_TRAIN_LEARNING_RATE";
            /// Passes over the training data (ignored when max_steps > 0).
            epochs: f64 = 1.0, "RLLR_TRAIN_EPOCHS";
            /// Stop after this many optimizer steps (0: from epochs).
            max_steps: usize = 0, "RLLR_TRAIN_MAX_STEPS";
            /// Examples (SFT) or pairs (RM) per micro-batch.
            batch_size: usize = 4, "RLLR_TRAIN_BATCH_SIZE";
            /// Micro-batches per optimizer step; their losses are averaged.
            grad_accum: usize = 1, "RLLR_TRAIN_GRAD_ACCUM";
            /// Decoupled weight decay (SFT/RM: 0.0).
            weight_decay: f64 = 0.0, "RLLR_TRAIN_WEIGHT_DECAY";
            /// AdamW β1.
            beta1: f64 = 0.9, "RLLR_TRAIN_BETA1";
            /// AdamW β2.
            beta2: f64 = 0.999, "RLLR_TRAIN_BETA2";
            /// AdamW ε.
            adam_eps: f64 = 1e-8, "RLLR_TRAIN_ADAM_EPS";
            /// Clip the global gradient norm to this (0: off).
            max_grad_norm: f64 = 1.0, "RLLR_TRAIN_MAX_GRAD_NORM";
            /// Learning-rate schedule after warm-up.
            schedule: ScheduleKind = ScheduleKind::Cosine, "RLLR_TRAIN_SCHEDULE";
            /// Linear warm-up steps.
            warmup_steps: usize = 0, "RLLR_TRAIN_WARMUP_STEPS";
            /// Seed of adapter/head init, data order and dropout masks.
            seed: u64 = 42, "RLLR_TRAIN_SEED";
            /// Write a resumable checkpoint every N optimizer steps (0: only at the end).
            save_every: usize = 100, "RLLR_TRAIN_SAVE_EVERY";
            /// Keep this many step checkpoints (older ones are deleted).
            keep_checkpoints: usize = 2, "RLLR_TRAIN_KEEP_CHECKPOINTS";
            /// Evaluate on the dev data every N steps (0: only at the end).
            eval_every: usize = 0, "RLLR_TRAIN_EVAL_EVERY";
            /// cpu, cuda or cuda:N.
            device: String = "cpu".into(), "RLLR_TRAIN_DEVICE";
            /// Compute dtype (f32 on CPU).
            dtype: String = "f32".into(), "RLLR_TRAIN_DTYPE";
        }
        optional {}
    }
}

overridable! {
    /// `[lora]`: the adapter trained by the stage (docs/method.md §4 defaults).
    LoraSection / LoraArgs {
        value {
            /// LoRA rank.
            lora_r: usize = 16, "RLLR_TRAIN_LORA_R";
            /// LoRA α (scale α/r).
            lora_alpha: f64 = 32.0, "RLLR_TRAIN_LORA_ALPHA";
            /// Dropout on the adapter input while training.
            lora_dropout: f32 = 0.1, "RLLR_TRAIN_LORA_DROPOUT";
            /// Comma-separated target projections.
            lora_targets: String = "q_proj,v_proj".into(), "RLLR_TRAIN_LORA_TARGETS";
        }
        optional {}
    }
}

impl LoraSection {
    /// As the engine's adapter config (validated).
    pub fn to_lora(&self) -> anyhow::Result<rllr_core::LoraConfig> {
        let cfg = rllr_core::LoraConfig {
            r: self.lora_r,
            lora_alpha: self.lora_alpha,
            lora_dropout: self.lora_dropout,
            target_modules: self
                .lora_targets
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            use_rslora: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Read a TOML config file into `T`; unknown keys and bad values are errors naming the file.
pub fn read_toml<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

/// A required path setting, with an error that says how to give it.
pub fn required(p: &Option<PathBuf>, key: &str) -> anyhow::Result<PathBuf> {
    p.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "`{key}` is not set: give --{} or `{key}` in the config file",
            key.replace('_', "-")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct File {
        train: TrainConfig,
        lora: LoraSection,
    }

    #[test]
    fn unknown_keys_are_errors_and_flags_override_the_file() {
        let f: File =
            toml::from_str("[train]\nlearning_rate = 1e-3\nschedule = \"linear\"\n").unwrap();
        assert_eq!(f.train.learning_rate, 1e-3);
        assert_eq!(f.train.schedule, ScheduleKind::Linear);
        assert_eq!(f.train.batch_size, 4);
        let e = toml::from_str::<File>("[train]\nlearnig_rate = 1e-3\n").unwrap_err();
        assert!(e.to_string().contains("learnig_rate"), "{e}");
        assert!(toml::from_str::<File>("[trian]\n").is_err());
        let mut c = f.train.clone();
        TrainArgs {
            batch_size: Some(8),
            ..Default::default()
        }
        .apply(&mut c);
        assert_eq!((c.batch_size, c.learning_rate), (8, 1e-3));
        assert_eq!(f.lora.to_lora().unwrap(), rllr_core::LoraConfig::default());
    }
}
