//! `rllr merge`: join the outputs of a sharded batch (`rllr batch --shard I/N`, one per pod of an
//! Indexed Job) into one output, and check that it is complete.
//!
//! The expected ids come from the original input, read with the same validation and
//! de-duplication as the batch job ([`crate::batch::read_input`]), so "complete" means the same
//! thing on both sides. Every expected id must appear exactly once over all shard outputs: missing
//! ids (a pod that failed or was never run), duplicates (overlapping shards, the same file given
//! twice) and unknown ids (an output of another input) are counted and the first few named. An
//! incomplete merge fails unless `allow_incomplete`. The merged output is in input order, written
//! atomically with its summary, and its accuracy is recomputed by [`crate::report`].

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::PathBuf;

use serde::Serialize;

use crate::batch::{read_input, summary_path};
use crate::error::{Error, Result};
use crate::input::Format;
use crate::report::{self, Accuracy};
use crate::resume::write_atomic;

/// How many ids of each problem the summary and the error name.
pub const SHOW_IDS: usize = 5;

/// Settings of one merge.
#[derive(Debug, Clone)]
pub struct MergeConfig {
    /// The input the shards were run over.
    pub input: PathBuf,
    pub format: Option<Format>,
    /// The shard outputs (JSONL).
    pub shards: Vec<PathBuf>,
    /// The merged JSONL; its summary goes to `<output>.summary.json`.
    pub output: PathBuf,
    /// Write the merge even when ids are missing, duplicated or unknown.
    pub allow_incomplete: bool,
}

/// A count and the first few ids.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Ids {
    pub count: usize,
    pub first: Vec<String>,
}

impl Ids {
    fn push(&mut self, id: &str) {
        self.count += 1;
        if self.first.len() < SHOW_IDS {
            self.first.push(id.to_string());
        }
    }
}

/// What a merge found; also written to `<output>.summary.json`.
#[derive(Debug, Clone, Serialize)]
pub struct MergeSummary {
    pub input: String,
    pub output: String,
    pub shards: Vec<String>,
    /// Valid records of the input.
    pub expected: usize,
    /// Rows in the merged output.
    pub merged: usize,
    /// Expected ids in no shard output.
    pub missing: Ids,
    /// Rows whose id was already seen (in the same or an earlier shard output); the first is kept.
    pub duplicates: Ids,
    /// Rows whose id is not in the input (dropped).
    pub unknown: Ids,
    pub complete: bool,
    pub accuracy: Option<Accuracy>,
}

impl MergeSummary {
    /// One line per problem, for the error message and the CLI.
    pub fn problems(&self) -> String {
        let mut out = Vec::new();
        for (what, ids) in [
            ("missing", &self.missing),
            ("duplicate", &self.duplicates),
            ("unknown", &self.unknown),
        ] {
            if ids.count > 0 {
                out.push(format!("{} {what} id(s), e.g. {:?}", ids.count, ids.first));
            }
        }
        out.join("; ")
    }
}

/// Read the shard outputs: id → its (first) line, plus duplicates and unknown ids.
fn read_shards(
    shards: &[PathBuf],
    expected: &HashMap<&str, usize>,
) -> Result<(HashMap<String, String>, Ids, Ids)> {
    let mut rows: HashMap<String, String> = HashMap::new();
    let (mut duplicates, mut unknown) = (Ids::default(), Ids::default());
    for path in shards {
        let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let id = serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("id").and_then(|x| x.as_str()).map(str::to_string))
                .ok_or_else(|| {
                    Error::Merge(format!(
                        "{} line {}: not a batch output row (no string 'id')",
                        path.display(),
                        i + 1
                    ))
                })?;
            if !expected.contains_key(id.as_str()) {
                unknown.push(&id);
                continue;
            }
            match rows.entry(id) {
                Entry::Occupied(e) => duplicates.push(e.key()),
                Entry::Vacant(e) => {
                    e.insert(line.to_string());
                }
            }
        }
    }
    Ok((rows, duplicates, unknown))
}

/// Merge the shard outputs into `cfg.output` in input order. Fails (writing nothing) when the
/// shards are incomplete, unless `cfg.allow_incomplete`.
pub fn merge(cfg: &MergeConfig) -> Result<MergeSummary> {
    let (records, _bad) = read_input(&cfg.input, cfg.format)?;
    let expected: HashMap<&str, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.as_str(), i))
        .collect();
    let (mut rows, duplicates, unknown) = read_shards(&cfg.shards, &expected)?;
    let mut missing = Ids::default();
    let mut merged = String::new();
    let mut n = 0;
    for r in &records {
        match rows.remove(&r.id) {
            Some(line) => {
                merged.push_str(&line);
                merged.push('\n');
                n += 1;
            }
            None => missing.push(&r.id),
        }
    }
    let mut summary = MergeSummary {
        input: cfg.input.display().to_string(),
        output: cfg.output.display().to_string(),
        shards: cfg.shards.iter().map(|p| p.display().to_string()).collect(),
        expected: records.len(),
        merged: n,
        complete: missing.count == 0 && duplicates.count == 0 && unknown.count == 0,
        missing,
        duplicates,
        unknown,
        accuracy: None,
    };
    if !summary.complete && !cfg.allow_incomplete {
        return Err(Error::Merge(format!(
            "the shard outputs do not cover {} exactly: {} (nothing written; rerun the missing shards, or pass --allow-incomplete)",
            cfg.input.display(),
            summary.problems()
        )));
    }
    write_atomic(&cfg.output, merged.as_bytes())?;
    summary.accuracy = report::accuracy_of_output(&cfg.output)?;
    let json = serde_json::to_string_pretty(&summary).expect("summary serialises") + "\n";
    write_atomic(&summary_path(&cfg.output), json.as_bytes())?;
    Ok(summary)
}

/// The output files of a glob-free shard list: a directory stands for its `*.jsonl` files
/// (sorted), a file for itself.
pub fn expand_shards(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(Error::io(p))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(shards: &[&str]) -> (tempfile::TempDir, MergeConfig) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(
            &input,
            "{\"id\":\"a\",\"text\":\"x\",\"label\":\"pos\"}\n{\"id\":\"b\",\"text\":\"y\",\"label\":\"neg\"}\n{\"id\":\"c\",\"text\":\"z\",\"label\":\"pos\"}\n",
        )
        .unwrap();
        let mut files = Vec::new();
        for (i, s) in shards.iter().enumerate() {
            let p = dir.path().join(format!("shard-{i}.jsonl"));
            std::fs::write(&p, s).unwrap();
            files.push(p);
        }
        let output = dir.path().join("merged.jsonl");
        let cfg = MergeConfig {
            input,
            format: None,
            shards: files,
            output,
            allow_incomplete: false,
        };
        (dir, cfg)
    }

    fn row(id: &str, label: &str, gold: &str) -> String {
        format!("{{\"id\":\"{id}\",\"label\":\"{label}\",\"gold\":\"{gold}\"}}\n")
    }

    #[test]
    fn complete_shards_merge_in_input_order() {
        let s0 = row("c", "pos", "pos") + &row("a", "pos", "pos");
        let s1 = row("b", "pos", "neg");
        let (_d, cfg) = setup(&[&s0, &s1]);
        let s = merge(&cfg).unwrap();
        assert!(s.complete && s.merged == 3, "{s:?}");
        let text = std::fs::read_to_string(&cfg.output).unwrap();
        assert_eq!(
            text,
            row("a", "pos", "pos") + &row("b", "pos", "neg") + &row("c", "pos", "pos")
        );
        let acc = s.accuracy.unwrap();
        assert_eq!((acc.n, acc.correct), (3, 2));
        assert!(summary_path(&cfg.output).exists());
    }

    #[test]
    fn missing_ids_fail_and_write_nothing() {
        let (_d, cfg) = setup(&[&row("a", "pos", "pos")]);
        let e = merge(&cfg).unwrap_err().to_string();
        assert!(e.contains("2 missing id(s)") && e.contains("\"b\""), "{e}");
        assert!(!cfg.output.exists());
    }

    #[test]
    fn duplicates_and_unknown_ids_are_counted() {
        let s0 = row("a", "pos", "pos") + &row("b", "neg", "neg");
        let s1 = row("b", "pos", "neg") + &row("c", "pos", "pos") + &row("zz", "pos", "pos");
        let (_d, mut cfg) = setup(&[&s0, &s1]);
        let e = merge(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("1 duplicate id(s)") && e.contains("1 unknown id(s)"),
            "{e}"
        );
        cfg.allow_incomplete = true;
        let s = merge(&cfg).unwrap();
        assert!(!s.complete);
        assert_eq!(s.duplicates.first, ["b"]);
        assert_eq!(s.unknown.first, ["zz"]);
        assert_eq!((s.missing.count, s.merged), (0, 3));
        // The first occurrence wins.
        let text = std::fs::read_to_string(&cfg.output).unwrap();
        assert!(text.contains(&row("b", "neg", "neg")));
    }

    #[test]
    fn a_directory_stands_for_its_jsonl_files() {
        let (d, cfg) = setup(&["", ""]);
        let got = expand_shards(&[d.path().to_path_buf()]).unwrap();
        // in.jsonl is there too: the caller points at a directory of shard outputs only.
        assert_eq!(got.len(), 3);
        assert_eq!(expand_shards(&cfg.shards).unwrap(), cfg.shards);
    }
}
