//! `rllr-train data build`: raw public datasets → `data/<task>/{train,dev,test}.jsonl`.
//!
//! Every example is checked against its task spec (`data/tasks/<task>.json`) before anything is
//! written, and each file is written atomically, so a failed build leaves the previous files whole.
//! The output depends only on the raw files and the seed: rerunning gives byte-identical files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use rllr_core::dataset::{check_example, write_jsonl, Example};
use rllr_core::task::TaskSpec;

use super::sources::read_task;
use super::split::{split, Sizes};
use super::DataError;

/// The split files of a task, in the order they are written.
pub const SPLITS: [&str; 3] = ["train", "dev", "test"];

/// What was built for one task.
#[derive(Debug, Clone)]
pub struct TaskReport {
    pub task: String,
    pub raw_rows: usize,
    pub skipped: usize,
    pub duplicates: usize,
    /// Per split (train, dev, test): label name → count, in the task's label order.
    pub label_counts: [Vec<(String, usize)>; 3],
    pub with_rationales: usize,
}

/// Path of one split file of a task under a data root.
pub fn split_path(root: &Path, task: &str, split: &str) -> std::path::PathBuf {
    root.join(task).join(format!("{split}.jsonl"))
}

/// Convert one task from `raw` into `out`, with specs from `tasks_dir`.
pub fn build_task(
    raw: &Path,
    tasks_dir: &Path,
    out: &Path,
    name: &str,
    target: Sizes,
    seed: u64,
) -> Result<TaskReport, DataError> {
    let spec = TaskSpec::load(&tasks_dir.join(format!("{name}.json")))?;
    let rawt = read_task(raw, name)?;
    for ex in &rawt.examples {
        check_example(ex, &spec)
            .map_err(|e| DataError::Invalid(format!("converting {name}: {e}")))?;
    }
    let raw_rows = rawt.examples.len() + rawt.skipped;
    let splits = split(rawt.examples, target, seed);
    let parts = [&splits.train, &splits.dev, &splits.test];
    for (split_name, part) in SPLITS.iter().zip(parts) {
        write_jsonl(&split_path(out, name, split_name), part)?;
    }
    let with_rationales = parts
        .iter()
        .flat_map(|p| p.iter())
        .filter(|e| !e.rationales.is_empty())
        .count();
    Ok(TaskReport {
        task: name.to_string(),
        raw_rows,
        skipped: rawt.skipped,
        duplicates: splits.duplicates,
        label_counts: parts.map(|p| label_counts(&spec, p)),
        with_rationales,
    })
}

/// Count gold labels in the task's label order.
pub fn label_counts(spec: &TaskSpec, examples: &[Example]) -> Vec<(String, usize)> {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for ex in examples {
        *counts.entry(ex.label.as_str()).or_default() += 1;
    }
    spec.labels
        .iter()
        .map(|l| {
            (
                l.name.clone(),
                counts.get(l.name.as_str()).copied().unwrap_or(0),
            )
        })
        .collect()
}

/// The reports as the Markdown table kept in `data/README.md`.
pub fn markdown_table(reports: &[TaskReport]) -> String {
    let mut s = String::from(
        "| task | raw rows | skipped | duplicates | train | dev | test | with rationales |\n|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let cell = |i: usize| {
            let c = &r.label_counts[i];
            let total: usize = c.iter().map(|(_, n)| n).sum();
            let by: Vec<String> = c.iter().map(|(l, n)| format!("{l} {n}")).collect();
            format!("{total} ({})", by.join(", "))
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.task,
            r.raw_rows,
            r.skipped,
            r.duplicates,
            cell(0),
            cell(1),
            cell(2),
            r.with_rationales
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::path::PathBuf;

    use rllr_core::dataset::read_examples;

    use super::*;
    use crate::data::sources::TASKS;
    use crate::data::split::{input_key, TARGET};

    fn repo() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }

    /// CI has `shared/` beside the checkout: there the bundled files must be exactly what the
    /// conversion produces from the raw data (the program itself never reads `shared/`).
    #[test]
    fn bundled_data_matches_a_fresh_conversion() {
        let raw = repo().join("../shared/data");
        if !raw.is_dir() {
            eprintln!("skipping: no raw data at {}", raw.display());
            return;
        }
        let out = tempfile::tempdir().unwrap();
        for name in TASKS {
            build_task(
                &raw,
                &repo().join("data/tasks"),
                out.path(),
                name,
                TARGET,
                0,
            )
            .unwrap();
            for split in SPLITS {
                let fresh = std::fs::read(split_path(out.path(), name, split)).unwrap();
                let bundled = std::fs::read(split_path(&repo().join("data"), name, split))
                    .unwrap_or_else(|e| panic!("data/{name}/{split}.jsonl: {e}"));
                assert!(
                    fresh == bundled,
                    "data/{name}/{split}.jsonl differs from a fresh `rllr-train data build`"
                );
            }
        }
    }

    #[test]
    fn every_task_has_splits_and_no_test_input_is_in_train() {
        for name in TASKS {
            let spec = TaskSpec::load(&repo().join(format!("data/tasks/{name}.json"))).unwrap();
            let read = |split| read_examples(&split_path(&repo().join("data"), name, split), &spec);
            let (train, dev, test) = (
                read("train").unwrap(),
                read("dev").unwrap(),
                read("test").unwrap(),
            );
            assert!(
                !train.is_empty() && !dev.is_empty() && !test.is_empty(),
                "{name}"
            );
            let seen: HashSet<String> = train.iter().map(|e| input_key(&e.input)).collect();
            let leaked: Vec<&str> = test
                .iter()
                .chain(&dev)
                .filter(|e| seen.contains(&input_key(&e.input)))
                .map(|e| e.id.as_str())
                .collect();
            assert!(
                leaked.is_empty(),
                "{name}: in train and dev/test: {leaked:?}"
            );
        }
    }
}
