//! The canonical data files every stage reads: examples (input, gold label, rationales per label)
//! and preference pairs, as JSONL, one record per line.
//!
//! One schema for all tasks means the SFT, reward, PPO and eval stages share one reader, and a
//! bad file is caught once, here: a malformed line is reported with its file and line number, and a
//! label outside the task's label set is reported by name. Records serialise with a fixed field
//! order and sorted maps, so the same data always gives the same bytes.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::fsutil::write_file_atomic;
use crate::task::{TaskInput, TaskSpec};
use crate::{Error, Result};

/// A rationale for one label, and who wrote it (`human`, `human-confusing`, `local:<model>`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rationale {
    pub text: String,
    pub source: String,
}

/// One labelled example. `rationales` maps a canonical label name (gold or not) to rationales
/// arguing for that label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub task: String,
    pub input: TaskInput,
    /// Canonical name of the gold label.
    pub label: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rationales: BTreeMap<String, Vec<Rationale>>,
}

/// What a preference pair contrasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PairKind {
    /// Same input, correct label chosen over a wrong label (RLLR's reward data).
    Label,
    /// Same input and label, a better rationale chosen over a worse one (the RLHF baseline).
    Rationale,
}

/// One preference pair: two full responses (rationale + answer line) to the same input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pair {
    pub id: String,
    pub task: String,
    pub kind: PairKind,
    pub input: TaskInput,
    pub chosen: String,
    pub rejected: String,
    pub chosen_label: String,
    pub rejected_label: String,
}

/// Read a JSONL file of `T`, one record per non-blank line. A line that does not parse is an
/// error naming the file and the 1-based line number.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_jsonl(&text, path)
}

/// [`read_jsonl`] on text already in memory; `path` only names the source in errors.
pub fn parse_jsonl<T: DeserializeOwned>(text: &str, path: &Path) -> Result<Vec<T>> {
    text.split('\n')
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| {
                Error::Input(format!(
                    "{}:{}: malformed record: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// Serialise records as JSONL (one line each, `\n`-terminated).
pub fn to_jsonl<T: Serialize>(records: &[T]) -> Result<String> {
    let mut out = String::new();
    for r in records {
        let line = serde_json::to_string(r)
            .map_err(|e| Error::Input(format!("serialising a record: {e}")))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Write records as JSONL atomically: readers see the old file or the whole new one.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    write_file_atomic(path, to_jsonl(records)?.as_bytes())
}

/// Read examples and check each against `task`: its task name, input shape, gold label and the
/// labels its rationales are filed under. Errors name the file, the line and the bad value.
pub fn read_examples(path: &Path, task: &TaskSpec) -> Result<Vec<Example>> {
    let examples: Vec<Example> = read_jsonl(path)?;
    for (i, ex) in examples.iter().enumerate() {
        check_example(ex, task)
            .map_err(|e| Error::Input(format!("{}: record {}: {e}", path.display(), i + 1)))?;
    }
    Ok(examples)
}

/// Check one example against its task (see [`read_examples`]).
pub fn check_example(ex: &Example, task: &TaskSpec) -> Result<()> {
    if ex.task != task.name {
        return Err(Error::Input(format!(
            "example '{}' is for task '{}', expected '{}'",
            ex.id, ex.task, task.name
        )));
    }
    task.input_text(&ex.input)?;
    task.label_index(&ex.label)?;
    for label in ex.rationales.keys() {
        task.label_index(label)?;
    }
    Ok(())
}

/// The canonical name of `label` (which may be a display text) in `task`.
pub fn canonical_label<'a>(task: &'a TaskSpec, label: &str) -> Result<&'a str> {
    Ok(&task.labels[task.label_index(label)?].name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sst2() -> TaskSpec {
        serde_json::from_str(
            r#"{"name":"sst2","instruction":"Classify.","input_fields":["sentence"],
            "labels":[{"name":"negative"},{"name":"positive"}]}"#,
        )
        .unwrap()
    }

    fn example(label: &str) -> Example {
        Example {
            id: "a".into(),
            task: "sst2".into(),
            input: TaskInput::Single("fine".into()),
            label: label.into(),
            rationales: BTreeMap::new(),
        }
    }

    #[test]
    fn round_trip_is_byte_stable() {
        let mut ex = example("positive");
        ex.rationales.insert(
            "positive".into(),
            vec![Rationale {
                text: "It says fine.".into(),
                source: "human".into(),
            }],
        );
        let text = to_jsonl(&[ex.clone()]).unwrap();
        assert_eq!(
            text,
            "{\"id\":\"a\",\"task\":\"sst2\",\"input\":\"fine\",\"label\":\"positive\",\"rationales\":{\"positive\":[{\"text\":\"It says fine.\",\"source\":\"human\"}]}}\n"
        );
        let back: Vec<Example> = parse_jsonl(&text, Path::new("x")).unwrap();
        assert_eq!(back, vec![ex]);
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let good = to_jsonl(&[example("positive")]).unwrap();
        let text = format!("{good}\n{{\"id\": oops}}\n");
        let e = parse_jsonl::<Example>(&text, Path::new("d/train.jsonl"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("d/train.jsonl:3:"), "{e}");
    }

    #[test]
    fn unknown_label_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        write_jsonl(&path, &[example("positive"), example("meh")]).unwrap();
        let e = read_examples(&path, &sst2()).unwrap_err().to_string();
        assert!(e.contains("record 2") && e.contains("'meh'"), "{e}");
        let mut ex = example("positive");
        ex.rationales.insert("mixed".into(), vec![]);
        assert!(check_example(&ex, &sst2())
            .unwrap_err()
            .to_string()
            .contains("'mixed'"));
    }
}
