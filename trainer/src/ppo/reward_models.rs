//! The reward models PPO reads (label RM, rationale RM, value-model source): which ones a reward
//! mode needs, the check that a directory is a reward model for this task and base, and loading
//! one as a frozen adapter + score head. The on-policy diagnostics load theirs the same way.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rllr_core::checkpoint::load_adapter;
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::task::TaskSpec;
use rllr_core::Llama;

use super::config::PpoConfig;
use crate::train::config::required;

/// Open a reward-model directory and check it is one, for `task`, trained on `base`.
pub fn check_reward_model(
    dir: &Path,
    what: &str,
    task: &TaskSpec,
    base: &Path,
) -> anyhow::Result<()> {
    if !dir.join("adapter_config.json").is_file() {
        bail!(
            "{what} {}: not a reward model directory (no adapter_config.json; give the model/ folder of an `rllr-train reward` run)",
            dir.display()
        );
    }
    let m =
        Manifest::read(dir)?.with_context(|| format!("{what} {}: no rllr.json", dir.display()))?;
    if m.kind != ModelKind::Reward {
        bail!(
            "{what} {}: a {:?} model, not a reward model",
            dir.display(),
            m.kind
        );
    }
    if let Some(t) = m.task.as_deref().filter(|t| *t != task.name) {
        bail!(
            "{what} {} was trained for task '{t}', not '{}'",
            dir.display(),
            task.name
        );
    }
    if let Some(b) = &m.base_checkpoint {
        let same = match (std::fs::canonicalize(b), std::fs::canonicalize(base)) {
            (Ok(x), Ok(y)) => x == y,
            _ => Path::new(b) == base,
        };
        if !same {
            bail!(
                "{what} {} was trained on base {b}, but PPO runs on {} (the reward models must share the policy's M_sft)",
                dir.display(),
                base.display()
            );
        }
    }
    Ok(())
}

/// The reward models a mode needs, and the value model's source.
pub(super) struct Models {
    pub label: Option<PathBuf>,
    pub rationale: Option<PathBuf>,
    pub value: PathBuf,
}

pub(super) fn reward_models(c: &PpoConfig) -> anyhow::Result<Models> {
    let mode = c.reward_mode;
    let label = if mode.needs_label_rm() {
        Some(required(&c.reward_model, "reward_model")?)
    } else {
        None
    };
    let rationale = if mode.needs_rationale_rm() {
        Some(required(
            &c.reward_model_rationale,
            "reward_model_rationale",
        )?)
    } else {
        None
    };
    let value = match (&c.value_model, &label, &rationale) {
        (Some(v), _, _) => v.clone(),
        (None, Some(l), _) => l.clone(),
        (None, None, Some(r)) => r.clone(),
        (None, None, None) => unreachable!("every mode reads a reward model"),
    };
    Ok(Models {
        label,
        rationale,
        value,
    })
}

/// Load a frozen reward model (PEFT adapter + score head) from `dir` as adapter and head `name`.
pub fn load_reward_model(m: &mut Llama, dir: &Path, name: &str, what: &str) -> anyhow::Result<()> {
    load_adapter(m, dir, name, false).with_context(|| format!("{what} {}", dir.display()))?;
    if m.head(name).is_none() {
        bail!(
            "{what} {}: the reward model has no score head",
            dir.display()
        );
    }
    Ok(())
}
