//! Rationale teachers (decision D2): whatever writes "why this input has this label" — rationales
//! already in the data, an OpenAI-compatible endpoint, or a local rllr checkpoint.
//!
//! Every teacher gets the same prompt for the correct and for a wrong label ([`prompt`]), so only
//! the label drives the difference between a chosen and a rejected rationale.

pub mod cache;
pub mod dataset;
pub mod local;
pub mod openai;

use rllr_core::dataset::Example;
use rllr_core::task::TaskSpec;

/// One rationale to write: an example and the label (canonical name) to argue for.
#[derive(Debug, Clone, Copy)]
pub struct RationaleRequest<'a> {
    pub task: &'a TaskSpec,
    pub example: &'a Example,
    pub label: &'a str,
}

/// Writes rationales. A batch goes in so teachers can batch or run requests concurrently; the
/// results come back in the same order, one per request.
pub trait Teacher: Send + Sync {
    /// The `source` recorded with each rationale (`dataset`, `openai:<model>`, `local:<dir>`).
    fn source(&self) -> String;
    /// Write one rationale per request.
    fn rationalize(&self, batch: &[RationaleRequest<'_>]) -> Vec<Result<String, TeacherError>>;
    /// A line of teacher-specific statistics for the run summary (e.g. HTTP requests sent).
    fn stats(&self) -> Option<String> {
        None
    }
}

/// Why a rationale could not be written.
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("the data holds no rationale for label '{0}'")]
    NotInData(String),
    #[error("HTTP {status}: {body}")]
    Http { status: u16, body: String },
    #[error("request timed out: {0}")]
    Timeout(String),
    #[error("transport: {0}")]
    Transport(String),
    #[error("malformed response: {0}")]
    Malformed(String),
    #[error("teacher setup: {0}")]
    Config(String),
    #[error("empty rationale")]
    Empty,
    #[error("cache {path}: {msg}")]
    Cache {
        path: std::path::PathBuf,
        msg: String,
    },
    #[error(transparent)]
    Core(#[from] rllr_core::Error),
}

/// A chat prompt: system text and user turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub system: String,
    pub user: String,
}

/// System text of every teacher prompt.
pub const TEACHER_SYSTEM: &str =
    "You explain classification decisions. Reply with the explanation only, in one or two sentences.";

/// The teacher prompt for (task, input, label): the task's own query, then the label to argue
/// for. The wording does not depend on whether the label is the gold one (D2).
pub fn prompt(req: &RationaleRequest<'_>) -> Result<Prompt, TeacherError> {
    let label = &req.task.labels[req.task.label_index(req.label)?];
    let query = req.task.query(&req.example.input)?;
    Ok(Prompt {
        system: TEACHER_SYSTEM.to_string(),
        user: format!(
            "{query}\n\nThe answer is: {}\nExplain briefly why this answer is right, citing the input.",
            label.display()
        ),
    })
}

/// Trim a teacher's reply to a one-paragraph rationale: drop an echoed answer line and keep it
/// on as few lines as it came.
pub fn clean_rationale(task: &TaskSpec, text: &str) -> Result<String, TeacherError> {
    let parsed = task.response_format().parse(text, &task.label_texts());
    let text = parsed.rationale.trim().to_string();
    if text.is_empty() {
        return Err(TeacherError::Empty);
    }
    Ok(text)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rllr_core::task::TaskInput;

    pub fn sst2() -> TaskSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tasks/sst2.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    pub fn example(id: &str, text: &str, label: &str) -> Example {
        Example {
            id: id.into(),
            task: "sst2".into(),
            input: TaskInput::Single(text.into()),
            label: label.into(),
            rationales: Default::default(),
        }
    }

    #[test]
    fn prompt_differs_only_in_the_label() {
        let task = sst2();
        let ex = example("a", "a fine film", "positive");
        let p = |label| {
            prompt(&RationaleRequest {
                task: &task,
                example: &ex,
                label,
            })
            .unwrap()
        };
        let (good, bad) = (p("positive"), p("negative"));
        assert_eq!(good.system, bad.system);
        assert_eq!(
            good.user.replace("positive", "LABEL"),
            bad.user.replace("negative", "LABEL")
        );
        assert!(good.user.contains("a fine film"));
        assert!(clean_rationale(&task, "Answer: positive").is_err());
        assert_eq!(
            clean_rationale(&task, " It is fine.\nAnswer: positive").unwrap(),
            "It is fine."
        );
    }
}
