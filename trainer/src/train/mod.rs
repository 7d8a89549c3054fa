//! The training machinery shared by the SFT and reward stages (and later PPO): losses, AdamW and
//! schedules, configuration files, the [`run_dir`] every stage writes (checkpoints, log, manifest)
//! and the [`train_loop`] that runs them.

pub mod config;
pub mod losses;
pub mod optim;
pub mod run_dir;
#[cfg(test)]
pub mod testutil;
pub mod train_loop;
