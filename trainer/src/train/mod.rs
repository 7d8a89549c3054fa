//! The training machinery shared by the SFT and reward stages (and later PPO): losses, AdamW and
//! schedules, configuration files, and the [`train_loop`] that runs them with checkpoints.

pub mod config;
pub mod losses;
pub mod optim;
#[cfg(test)]
pub mod testutil;
pub mod train_loop;
