//! Atomic file and directory writes: a crash mid-write never leaves a half-written checkpoint.
//!
//! Files go to a temporary sibling and are renamed into place; directories are built in a temporary
//! sibling directory and swapped in with renames, so readers see either the old or the new whole.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Read and parse a JSON file, `None` when it does not exist.
pub fn read_json_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::json(path, e))
}

/// Write `bytes` to `path` atomically (temp file in the same directory, fsync, rename).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| Error::io(&dir, e))?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    set_mode(tmp.path(), 0o644)?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Temp files and dirs are created private (0600/0700); checkpoints are meant to be shared
/// (e.g. read by a server running as another user), so give them ordinary permissions.
#[cfg(unix)]
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(path, e))
}

/// No-op where Unix permissions do not exist.
#[cfg(not(unix))]
pub fn set_mode(_path: &Path, _mode: u32) -> Result<()> {
    Ok(())
}

/// Build a directory atomically: `fill` writes into a fresh temporary directory next to `dest`,
/// which then replaces `dest` (an existing `dest` is moved aside first and removed afterwards).
pub fn write_dir_atomic<F>(dest: &Path, fill: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let parent = parent_of(dest);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("checkpoint");
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.tmp-"))
        .tempdir_in(&parent)
        .map_err(|e| Error::io(&parent, e))?;
    fill(tmp.path())?;
    set_mode(tmp.path(), 0o755)?;
    let staged = tmp.keep();
    if dest.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(dest, &old).map_err(|e| Error::io(dest, e))?;
        std::fs::rename(&staged, dest).map_err(|e| Error::io(dest, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
    } else {
        std::fs::rename(&staged, dest).map_err(|e| Error::io(dest, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_replaced_whole_and_failed_fill_leaves_old() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("ckpt");
        write_dir_atomic(&dest, |d| write_file_atomic(&d.join("a"), b"1")).unwrap();
        write_dir_atomic(&dest, |d| write_file_atomic(&d.join("b"), b"2")).unwrap();
        assert!(!dest.join("a").exists());
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"2");
        let err = write_dir_atomic(&dest, |_| Err(Error::Input("boom".into())));
        assert!(err.is_err());
        assert_eq!(std::fs::read(dest.join("b")).unwrap(), b"2");
        // no temporary directories are left behind
        let names: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }
}
