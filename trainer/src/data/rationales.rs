//! The record of a rationale file (`rationales.jsonl`): what `rllr-train rationalize` writes and
//! the pair builders and the pipeline read. It lives with the data formats, not with the teacher
//! command, so readers need not depend on the command that writes it.

use serde::{Deserialize, Serialize};

/// One written rationale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RationaleRecord {
    pub id: String,
    pub task: String,
    /// Canonical label the rationale argues for.
    pub label: String,
    /// Whether that label is the gold one.
    pub gold: bool,
    pub text: String,
    pub source: String,
}
