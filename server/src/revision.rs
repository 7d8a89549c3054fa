//! Model provenance: the content hash (revision) of a served checkpoint.
//!
//! A revision is `sha256:` + hex of SHA-256 over the sorted `(directory index, file name, SHA-256
//! of the file)` of every regular file in the checkpoint directory and in each base it builds on
//! (an adapter's base, that base's base, ...). A hot reload of changed weights therefore changes the
//! revision, and two servers with the same revision serve byte-identical files. File hashes are
//! cached by (path, length, modification time), so models sharing a base hash it once.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use dashmap::DashMap;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// File hashes already computed, keyed by path and validated by length and mtime.
#[derive(Default)]
pub struct HashCache {
    files: DashMap<PathBuf, (u64, Option<SystemTime>, [u8; 32])>,
}

impl HashCache {
    fn file(&self, path: &Path) -> Result<[u8; 32]> {
        let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
        let (len, mtime) = (meta.len(), meta.modified().ok());
        if let Some(hit) = self.files.get(path) {
            if hit.0 == len && hit.1 == mtime {
                return Ok(hit.2);
            }
        }
        let mut f = std::fs::File::open(path).map_err(|e| io(path, e))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| io(path, e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let digest: [u8; 32] = h.finalize().into();
        self.files.insert(path.to_path_buf(), (len, mtime, digest));
        Ok(digest)
    }

    /// The revision of the checkpoint made of `dirs` (the model's directory first, then its bases).
    pub fn revision(&self, dirs: &[PathBuf]) -> Result<String> {
        let mut h = Sha256::new();
        for (i, dir) in dirs.iter().enumerate() {
            let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
                .map_err(|e| io(dir, e))?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                // dotfiles are temporaries of atomic writes, not part of the checkpoint
                .filter(|(n, _)| !n.starts_with('.'))
                .collect();
            files.sort();
            for (name, path) in files {
                h.update((i as u64).to_le_bytes());
                h.update((name.len() as u64).to_le_bytes());
                h.update(name.as_bytes());
                h.update(self.file(&path)?);
            }
        }
        Ok(format!("sha256:{}", hex(&h.finalize())))
    }
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::FailedPrecondition(format!("hashing {}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_changes_with_content_and_is_stable_otherwise() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("model.safetensors"), b"abc").unwrap();
        std::fs::write(d.path().join(".tmp-x"), b"ignored").unwrap();
        let cache = HashCache::default();
        let dirs = [d.path().to_path_buf()];
        let a = cache.revision(&dirs).unwrap();
        assert_eq!(a, HashCache::default().revision(&dirs).unwrap());
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64, "{a}");
        std::fs::write(d.path().join(".tmp-x"), b"still ignored").unwrap();
        assert_eq!(a, cache.revision(&dirs).unwrap());
        std::fs::write(d.path().join("model.safetensors"), b"abcd").unwrap();
        assert_ne!(a, cache.revision(&dirs).unwrap());
    }

    #[test]
    fn the_empty_checkpoint_hashes_to_sha256_of_nothing() {
        let d = tempfile::tempdir().unwrap();
        let r = HashCache::default()
            .revision(&[d.path().to_path_buf()])
            .unwrap();
        // SHA-256 of the empty input, computed independently (sha256sum < /dev/null).
        assert_eq!(
            r,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
