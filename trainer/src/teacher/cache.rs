//! On-disk cache of teacher replies keyed by SHA-256 of (model, prompt), so an interrupted or
//! repeated run never pays twice for the same prompt. Entries are written atomically: a killed
//! run leaves whole entries or none.

use std::path::{Path, PathBuf};

use rllr_core::fsutil::write_file_atomic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Prompt, TeacherError};

/// A directory of `<key[..2]>/<key>.json` entries.
#[derive(Debug, Clone)]
pub struct DiskCache {
    dir: PathBuf,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    model: String,
    system: String,
    user: String,
    text: String,
}

impl DiskCache {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        DiskCache { dir: dir.into() }
    }

    /// Hex SHA-256 of the model and the prompt, each field length-prefixed so no two differ only
    /// by where one field ends.
    pub fn key(model: &str, prompt: &Prompt) -> String {
        let mut h = Sha256::new();
        for part in [model, &prompt.system, &prompt.user] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2]).join(format!("{key}.json"))
    }

    /// The cached reply, if any. An unreadable entry is treated as a miss (and overwritten later).
    pub fn get(&self, model: &str, prompt: &Prompt) -> Option<String> {
        let text = std::fs::read_to_string(self.path(&Self::key(model, prompt))).ok()?;
        let e: Entry = serde_json::from_str(&text).ok()?;
        (e.model == model && e.system == prompt.system && e.user == prompt.user).then_some(e.text)
    }

    /// Store a reply atomically.
    pub fn put(&self, model: &str, prompt: &Prompt, text: &str) -> Result<(), TeacherError> {
        let path = self.path(&Self::key(model, prompt));
        let entry = Entry {
            model: model.into(),
            system: prompt.system.clone(),
            user: prompt.user.clone(),
            text: text.into(),
        };
        let json = serde_json::to_vec(&entry).map_err(|e| cache_err(&path, e))?;
        write_file_atomic(&path, &json).map_err(|e| cache_err(&path, e))
    }
}

fn cache_err(path: &Path, e: impl std::fmt::Display) -> TeacherError {
    TeacherError::Cache {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}
