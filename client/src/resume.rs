//! The batch job's output file: append-only JSONL that survives being killed at any moment.
//!
//! Every record is one complete line written with a single `write_all` on a file opened for
//! append, and the file is fsynced at checkpoints. A kill can therefore leave at most one torn
//! line, at the very end. On restart [`open_output`] cuts the file back to its last newline,
//! collects the ids of the complete lines (they are done), and returns the file positioned for
//! appending. A complete line that is not a record means the file is not ours: refuse rather than
//! guess.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::error::{Error, Result};

/// What an existing output holds.
#[derive(Debug, Default)]
pub struct Resumed {
    /// Ids of the complete records.
    pub done: HashSet<String>,
    /// Bytes of a torn last line that were cut off (0 when the file ended cleanly).
    pub truncated: u64,
}

/// Open (or create) `path` for appending records, after repairing a torn tail.
pub fn open_output(path: &Path) -> Result<(File, Resumed)> {
    let io = Error::io(path);
    let mut f = OpenOptions::new()
        .read(true)
        .create(true)
        .append(true)
        .open(path)
        .map_err(Error::io(path))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io)?;
    let keep = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let mut out = Resumed {
        truncated: (bytes.len() - keep) as u64,
        ..Resumed::default()
    };
    if out.truncated > 0 {
        f.set_len(keep as u64).map_err(Error::io(path))?;
        f.sync_data().map_err(Error::io(path))?;
    }
    for (i, line) in bytes[..keep].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let id = serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(|x| x.as_str()).map(str::to_string))
            .ok_or_else(|| {
                Error::Batch(format!(
                "{} line {}: not a record of this job (no string 'id'); refusing to append to it",
                path.display(),
                i + 1
            ))
            })?;
        out.done.insert(id);
    }
    f.seek(SeekFrom::End(0)).map_err(Error::io(path))?;
    Ok((f, out))
}

/// Append one record as one complete line with a single write.
pub fn append_line(f: &mut File, json: &str) -> std::io::Result<()> {
    let mut line = String::with_capacity(json.len() + 1);
    line.push_str(json);
    line.push('\n');
    f.write_all(line.as_bytes())
}

/// Write `bytes` to `path` through a temp file and a rename: a crash mid-write leaves the previous
/// file (or none), never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(Error::io(&tmp))?;
    f.write_all(bytes).map_err(Error::io(&tmp))?;
    f.sync_all().map_err(Error::io(&tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(Error::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_last_line_is_cut_and_complete_ids_are_done() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("out.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"label\":\"x\"}\n{\"id\":\"b\",\"label\":\"y\"}\n{\"id\":\"c\",\"la",
        )
        .unwrap();
        let (mut f, r) = open_output(&p).unwrap();
        assert_eq!(r.truncated, 13);
        let mut ids: Vec<_> = r.done.iter().cloned().collect();
        ids.sort();
        assert_eq!(ids, ["a", "b"]);
        append_line(&mut f, "{\"id\":\"c\",\"label\":\"z\"}").unwrap();
        drop(f);
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "{\"id\":\"a\",\"label\":\"x\"}\n{\"id\":\"b\",\"label\":\"y\"}\n{\"id\":\"c\",\"label\":\"z\"}\n"
        );
        // Clean file: nothing cut; reopening twice is idempotent.
        let (_, r) = open_output(&p).unwrap();
        assert_eq!((r.truncated, r.done.len()), (0, 3));
    }

    #[test]
    fn new_file_torn_only_line_and_foreign_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.jsonl");
        let (_, r) = open_output(&p).unwrap();
        assert!(r.done.is_empty() && p.exists());
        std::fs::write(&p, "{\"id\":\"a\"").unwrap();
        let (_, r) = open_output(&p).unwrap();
        assert_eq!((r.truncated, r.done.len()), (9, 0));
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        std::fs::write(&p, "hello\n").unwrap();
        let e = open_output(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("refusing"), "{e}");
    }
}
