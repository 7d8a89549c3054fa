//! `rllr-train ppo`: PPO against a label-sensitive, rationale-sensitive or mixed reward
//! (method.md §5.3–5.4, TRL 0.7.2 semantics), on one frozen M_sft with named LoRA adapters for the
//! policy, the value model and the reward models, switched per forward.

pub mod config;

use std::path::PathBuf;

use clap::Args;

use crate::train::config::{read_toml, LoraArgs, TrainArgs};
use config::{PpoFile, PpoStageArgs};

#[derive(Args, Debug)]
pub struct PpoArgs {
    /// TOML config file with [ppo], [train] and [lora] tables; flags override it.
    #[arg(long, env = "RLLR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Continue from the newest checkpoint in <output>/checkpoints.
    #[arg(long, env = "RLLR_RESUME")]
    pub resume: bool,
    /// Exit (status 137, no final save) right after this step's checkpoint, as a crash would.
    #[arg(long, hide = true, env = "RLLR_STOP_AFTER")]
    pub stop_after: Option<usize>,
    #[command(flatten)]
    pub stage: PpoStageArgs,
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub lora: LoraArgs,
}

impl PpoArgs {
    /// File, then flags.
    pub fn resolve(&self) -> anyhow::Result<PpoFile> {
        let mut f: PpoFile = read_toml(self.config.as_deref())?;
        self.stage.apply(&mut f.ppo);
        self.train.apply(&mut f.train);
        self.lora.apply(&mut f.lora);
        Ok(f)
    }
}

/// Run the PPO stage.
pub fn run(args: &PpoArgs) -> anyhow::Result<()> {
    let _file = args.resolve()?;
    anyhow::bail!("ppo: not implemented yet")
}
