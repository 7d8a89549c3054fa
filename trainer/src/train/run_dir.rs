//! `RunDir`: the run directory every training stage (SFT, reward, PPO) writes — `metrics.jsonl`,
//! `checkpoints/step-NNNNNNNN/` — and the rules around it, written once: open a fresh run, resume
//! the newest checkpoint or refuse to clobber one, the settings fingerprint a resumed run must
//! match, checkpoint save / load / prune, log truncation on resume, the `--stop-after` crash
//! switch ([`Stopped`]) and the manifest of the stage's artefact.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::Tensor;
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::task::TaskSpec;
use rllr_core::template::ChatTemplate;
use serde_json::{json, Value};

use super::config::TrainConfig;
use super::optim::AdamW;

/// A stage stopped after a step as `--stop-after` asked, as if the process had died there: its
/// checkpoint is on disk and no final artefact is written. The binary exits with 137 on it; the
/// pipeline propagates it like any failure (the stage is not stamped).
#[derive(Debug, thiserror::Error)]
#[error("{stage}: stopping after step {step} as asked (--stop-after)")]
pub struct Stopped {
    pub stage: String,
    pub step: usize,
}

/// Whether `e` (or an error it wraps) is a [`Stopped`].
pub fn is_stopped(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Stopped>())
}

/// The settings of `cfg` that change the trajectory (device and checkpoint cadence do not).
pub fn settings_fingerprint(cfg: &TrainConfig) -> Value {
    let mut v = serde_json::to_value(cfg).expect("config serialises");
    if let Some(m) = v.as_object_mut() {
        for k in ["save_every", "keep_checkpoints", "eval_every", "device"] {
            m.remove(k);
        }
    }
    v
}

/// A stage's run directory with the fingerprint its checkpoints carry.
pub struct RunDir {
    root: PathBuf,
    fingerprint: Value,
}

/// Where an opened run starts.
pub struct Start {
    /// The first step to run (0 for a fresh run).
    pub step: usize,
    pub resumed_from: Option<usize>,
    /// The stage state saved with the resumed checkpoint (`None` for a fresh run).
    pub extra: Option<Value>,
    /// `metrics.jsonl`, opened for appending (truncated to `step`).
    pub log: File,
}

impl RunDir {
    /// The run directory `root` (created) for a loop with `cfg` and the stage's own settings;
    /// `items`, when given, is part of the fingerprint too.
    pub fn create(
        root: &Path,
        cfg: &TrainConfig,
        stage: &Value,
        items: Option<usize>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let mut fingerprint = json!({"train": settings_fingerprint(cfg), "stage": stage});
        if let Some(n) = items {
            fingerprint["items"] = json!(n);
        }
        Ok(Self {
            root: root.to_path_buf(),
            fingerprint,
        })
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    pub fn log_path(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    /// Resume the newest checkpoint into `opt` (with `resume`), refuse to overwrite one (without),
    /// or start fresh; `label` names the stage in the log lines, `total` is the run's length.
    pub fn open(
        &self,
        opt: &mut AdamW,
        resume: bool,
        label: &str,
        total: usize,
    ) -> anyhow::Result<Start> {
        let ckpt_dir = self.checkpoints();
        let log_path = self.log_path();
        let (mut step, mut resumed_from, mut extra) = (0, None, None);
        match (latest_checkpoint(&ckpt_dir)?, resume) {
            (Some((s, dir)), true) => {
                extra = Some(load_checkpoint(&dir, opt, &self.fingerprint)?);
                truncate_log(&log_path, s)?;
                step = s;
                resumed_from = Some(s);
                tracing::info!("{label}: resuming from {} (step {s}/{total})", dir.display());
            }
            (None, true) => tracing::warn!(
                "{label}: --resume: no checkpoint in {}, starting fresh",
                ckpt_dir.display()
            ),
            (Some((s, _)), false) => bail!(
                "{} already holds checkpoints (step {s}); pass --resume to continue or use a new output directory",
                ckpt_dir.display()
            ),
            (None, false) => truncate_log(&log_path, 0)?,
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        Ok(Start {
            step,
            resumed_from,
            extra,
            log,
        })
    }

    /// Save the checkpoint of `step` (weights, AdamW state, `extra` stage state) and keep only
    /// the newest `keep`.
    pub fn save(&self, step: usize, opt: &AdamW, keep: usize, extra: &Value) -> anyhow::Result<()> {
        save_checkpoint(
            &self.checkpoints(),
            step,
            opt,
            &self.fingerprint,
            keep,
            extra,
        )
    }
}

/// The manifest of a stage's artefact: `kind`, the task, template and base it was trained with,
/// the stage's config and report as provenance. The stage adds adapter / head / rationales.
pub fn stage_manifest(
    kind: ModelKind,
    stage: &str,
    task: &TaskSpec,
    template: &ChatTemplate,
    base: &Path,
    config: &impl serde::Serialize,
    metrics: &impl serde::Serialize,
) -> anyhow::Result<Manifest> {
    let mut manifest = Manifest::new(kind, stage);
    manifest.task = Some(task.name.clone());
    manifest.labels = task.labels.iter().map(|l| l.name.clone()).collect();
    manifest.answer_prefix = task.answer_prefix.clone();
    manifest.task_spec = Some(task.clone());
    manifest.chat_template = Some(template.clone());
    manifest.base_checkpoint = Some(base.display().to_string());
    manifest.provenance.config = serde_json::to_value(config)?;
    manifest.provenance.metrics = serde_json::to_value(metrics)?;
    Ok(manifest)
}

fn step_dir(ckpt_dir: &Path, step: usize) -> PathBuf {
    ckpt_dir.join(format!("step-{step:08}"))
}

/// The newest complete checkpoint (one with `state.json`), if any.
pub fn latest_checkpoint(ckpt_dir: &Path) -> anyhow::Result<Option<(usize, PathBuf)>> {
    if !ckpt_dir.is_dir() {
        return Ok(None);
    }
    let mut best = None;
    for entry in std::fs::read_dir(ckpt_dir)? {
        let path = entry?.path();
        let step = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("step-"))
            .and_then(|n| n.parse::<usize>().ok());
        if let Some(step) = step.filter(|_| path.join("state.json").is_file()) {
            if best.as_ref().is_none_or(|(b, _)| step > *b) {
                best = Some((step, path));
            }
        }
    }
    Ok(best)
}

fn save_checkpoint(
    ckpt_dir: &Path,
    step: usize,
    opt: &AdamW,
    fingerprint: &Value,
    keep: usize,
    extra: &Value,
) -> anyhow::Result<()> {
    let weights: Vec<(String, Tensor)> = opt
        .vars()
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
        .collect();
    let state =
        json!({"step": step, "optimizer_t": opt.t, "fingerprint": fingerprint, "extra": extra});
    rllr_core::fsutil::write_dir_atomic(&step_dir(ckpt_dir, step), |dir| {
        rllr_core::checkpoint::save_safetensors(&dir.join("trainable.safetensors"), &weights)?;
        rllr_core::checkpoint::save_safetensors(
            &dir.join("optimizer.safetensors"),
            &opt.state_tensors(),
        )?;
        rllr_core::fsutil::write_file_atomic(&dir.join("state.json"), state.to_string().as_bytes())
    })?;
    prune(ckpt_dir, keep)
}

/// Keep only the newest `keep` (at least one) checkpoints.
fn prune(ckpt_dir: &Path, keep: usize) -> anyhow::Result<()> {
    let mut steps: Vec<usize> = std::fs::read_dir(ckpt_dir)?
        .filter_map(|e| {
            e.ok()?
                .file_name()
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()
        })
        .collect();
    steps.sort_unstable();
    let drop = steps.len().saturating_sub(keep.max(1));
    for s in &steps[..drop] {
        std::fs::remove_dir_all(step_dir(ckpt_dir, *s))?;
    }
    Ok(())
}

/// Restore the weights and AdamW state of `dir`; returns the `extra` state saved with them.
fn load_checkpoint(dir: &Path, opt: &mut AdamW, fingerprint: &Value) -> anyhow::Result<Value> {
    let state: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state.json"))?)
        .with_context(|| format!("{}/state.json", dir.display()))?;
    if &state["fingerprint"] != fingerprint {
        bail!(
            "cannot resume from {}: it was written with different settings\n  checkpoint: {}\n  now:        {}",
            dir.display(),
            state["fingerprint"],
            fingerprint
        );
    }
    let dev = opt.vars()[0].1.device().clone();
    let mut weights = candle_core::safetensors::load(dir.join("trainable.safetensors"), &dev)?;
    for (name, var) in opt.vars() {
        let w = weights
            .remove(name)
            .with_context(|| format!("checkpoint {} lacks {name}", dir.display()))?;
        var.set(&w.to_dtype(var.dtype())?)?;
    }
    let moments = candle_core::safetensors::load(dir.join("optimizer.safetensors"), &dev)?;
    let t = state["optimizer_t"]
        .as_u64()
        .context("state.json lacks optimizer_t")?;
    opt.load_state(moments, t)?;
    Ok(state["extra"].clone())
}

/// Keep only the log records of steps `<= step` (a resumed run rewrites what follows).
fn truncate_log(path: &Path, step: usize) -> anyhow::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path)?;
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    rllr_core::fsutil::write_file_atomic(path, kept.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopped_is_found_through_context() {
        let e = anyhow::Error::new(Stopped {
            stage: "sft".into(),
            step: 10,
        })
        .context("stage sft-comve");
        assert!(is_stopped(&e));
        assert!(
            format!("{e:#}").contains("sft: stopping after step 10 as asked (--stop-after)"),
            "{e:#}"
        );
        assert!(!is_stopped(&anyhow::anyhow!("other")));
    }

    #[test]
    fn fingerprint_leaves_out_cadence_and_device() {
        let cfg = TrainConfig::default();
        let a = settings_fingerprint(&cfg);
        let b = settings_fingerprint(&TrainConfig {
            save_every: cfg.save_every + 1,
            keep_checkpoints: cfg.keep_checkpoints + 1,
            eval_every: cfg.eval_every + 1,
            device: "cuda:3".into(),
            ..cfg.clone()
        });
        assert_eq!(a, b);
        assert!(a.get("device").is_none());
    }
}
