//! Stage stamps: how the pipeline knows a stage's outputs are current. A finished stage writes
//! `<out>/stage.json` (its config hash, the hashes of its inputs, when it finished and how long it
//! took) atomically after its outputs; a stage is current when that stamp matches the config and
//! inputs it would run with now. An upstream stage's input hash is the hash of its stamp, so any
//! rerun upstream reruns exactly the stages below it. A `pending.json` written before a stage
//! starts tells a later run whether the half-finished outputs may be resumed or must be wiped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const STAMP: &str = "stage.json";
const PENDING: &str = "pending.json";

/// What a stage depends on besides its config.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// An upstream stage's output directory (its stamp is hashed).
    Stage(PathBuf),
    /// A data or spec file (its bytes are hashed).
    File(PathBuf),
    /// A model directory (config.json and the names and sizes of its files are hashed).
    Model(PathBuf),
}

impl Input {
    /// The current hash, or `"missing"` when the input does not exist (yet).
    pub fn hash(&self) -> anyhow::Result<String> {
        let bytes = match self {
            Input::Stage(out) => std::fs::read(out.join(STAMP)).ok(),
            Input::File(p) => std::fs::read(p).ok(),
            Input::Model(dir) => model_fingerprint(dir)?,
        };
        Ok(bytes.map_or_else(|| "missing".into(), |b| hash_bytes(&b)))
    }

    /// The path it names (the stamp's key).
    pub fn path(&self) -> &Path {
        match self {
            Input::Stage(p) | Input::File(p) | Input::Model(p) => p,
        }
    }
}

/// Hex SHA-256.
pub fn hash_bytes(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// config.json plus every file's name and size: cheap, and changes when the model is replaced.
fn model_fingerprint(dir: &Path) -> anyhow::Result<Option<Vec<u8>>> {
    let Ok(config) = std::fs::read(dir.join("config.json")) else {
        return Ok(None);
    };
    let mut entries: Vec<(String, u64)> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            Some((
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().ok()?.len(),
            ))
        })
        .collect();
    entries.sort();
    let mut bytes = config;
    bytes.extend(format!("{entries:?}").into_bytes());
    Ok(Some(bytes))
}

/// The current hashes of `inputs`, keyed by path.
pub fn input_hashes(inputs: &[Input]) -> anyhow::Result<BTreeMap<String, String>> {
    inputs
        .iter()
        .map(|i| Ok((i.path().display().to_string(), i.hash()?)))
        .collect()
}

/// What a stage would run with: its config hash and input hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub config_hash: String,
    pub inputs: BTreeMap<String, String>,
}

/// `<out>/stage.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stamp {
    pub stage: String,
    #[serde(flatten)]
    pub key: Key,
    /// Unix time in seconds.
    pub finished_at: f64,
    pub wall_s: f64,
}

/// Is the stage in `out` current for `key`?
#[derive(Debug, Clone, PartialEq)]
pub enum Currency {
    Current(Stamp),
    /// Never finished here.
    Missing,
    /// Finished with another config or other inputs.
    Stale(&'static str),
}

/// Compare the stamp in `out` with `key`.
pub fn check(out: &Path, key: &Key) -> Currency {
    let Ok(Some(stamp)) = rllr_core::fsutil::read_json_opt::<Stamp>(&out.join(STAMP)) else {
        return Currency::Missing;
    };
    if stamp.key.config_hash != key.config_hash {
        Currency::Stale("config changed")
    } else if stamp.key.inputs != key.inputs {
        Currency::Stale("inputs changed")
    } else {
        Currency::Current(stamp)
    }
}

/// Get `out` ready for a run with `key`: resume (true) when an interrupted run with the same key
/// left outputs there, otherwise wipe whatever is there and start fresh (false).
pub fn prepare(out: &Path, key: &Key) -> anyhow::Result<bool> {
    let pending = out.join(PENDING);
    let same: Option<Key> = rllr_core::fsutil::read_json_opt(&pending).ok().flatten();
    if same.as_ref() == Some(key) {
        let _ = std::fs::remove_file(out.join(STAMP));
        return Ok(true);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    rllr_core::fsutil::write_file_atomic(&pending, serde_json::to_string_pretty(key)?.as_bytes())?;
    Ok(false)
}

/// Record a finished stage: the stamp, written atomically, then the pending marker removed.
pub fn finish(out: &Path, stage: &str, key: Key, wall_s: f64) -> anyhow::Result<Stamp> {
    let finished_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let stamp = Stamp {
        stage: stage.into(),
        key,
        finished_at,
        wall_s,
    };
    rllr_core::fsutil::write_file_atomic(
        &out.join(STAMP),
        serde_json::to_string_pretty(&stamp)?.as_bytes(),
    )?;
    let _ = std::fs::remove_file(out.join(PENDING));
    Ok(stamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cfg: &str, inputs: &[Input]) -> Key {
        Key {
            config_hash: hash_bytes(cfg.as_bytes()),
            inputs: input_hashes(inputs).unwrap(),
        }
    }

    #[test]
    fn a_stamp_is_current_until_config_or_inputs_change() {
        let dir = tempfile::tempdir().unwrap();
        let (up, down) = (dir.path().join("up"), dir.path().join("down"));
        let data = dir.path().join("data.jsonl");
        std::fs::write(&data, "a\n").unwrap();
        let up_in = [Input::File(data.clone())];
        assert_eq!(check(&up, &key("u", &up_in)), Currency::Missing);
        assert!(!prepare(&up, &key("u", &up_in)).unwrap());
        finish(&up, "up", key("u", &up_in), 1.0).unwrap();
        assert!(matches!(
            check(&up, &key("u", &up_in)),
            Currency::Current(_)
        ));
        let down_in = [Input::Stage(up.clone())];
        prepare(&down, &key("d", &down_in)).unwrap();
        finish(&down, "down", key("d", &down_in), 2.0).unwrap();
        assert!(matches!(
            check(&down, &key("d", &down_in)),
            Currency::Current(_)
        ));
        assert_eq!(
            check(&down, &key("d2", &down_in)),
            Currency::Stale("config changed")
        );
        // the upstream reruns (new stamp): the downstream stage is stale, the upstream current
        std::thread::sleep(std::time::Duration::from_millis(5));
        prepare(&up, &key("u", &up_in)).unwrap();
        finish(&up, "up", key("u", &up_in), 1.5).unwrap();
        assert_eq!(
            check(&down, &key("d", &down_in)),
            Currency::Stale("inputs changed")
        );
        std::fs::write(&data, "b\n").unwrap();
        assert_eq!(
            check(&up, &key("u", &up_in)),
            Currency::Stale("inputs changed")
        );
    }

    #[test]
    fn prepare_resumes_only_the_same_interrupted_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("s");
        let k = key("a", &[]);
        assert!(!prepare(&out, &k).unwrap());
        std::fs::write(out.join("checkpoint"), "x").unwrap();
        assert!(prepare(&out, &k).unwrap(), "same key: resume");
        assert!(out.join("checkpoint").exists());
        assert!(!prepare(&out, &key("b", &[])).unwrap(), "new key: fresh");
        assert!(!out.join("checkpoint").exists());
    }
}
