//! `rllr.json`: what a checkpoint is for, beside the Hugging Face files that say what it is.
//!
//! transformers ignores this file; rllr reads it to know the checkpoint's role (sft, reward, value,
//! policy), its task and label set, the response format and chat template it was trained with, the
//! checkpoint it builds on, and how it was made (command, config, metrics).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::fsutil::write_file_atomic;
use crate::Result;

/// File name inside a checkpoint directory.
pub const MANIFEST_FILE: &str = "rllr.json";

/// The role a checkpoint plays in the RLLR pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// An imported base model (e.g. converted from GGUF).
    Base,
    /// Supervised fine-tune (with or without rationales).
    Sft,
    /// Reward model: base + LoRA + score head.
    Reward,
    /// Value model for PPO: base + LoRA + score head.
    Value,
    /// PPO-trained policy.
    Policy,
}

/// How a checkpoint was produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// Seconds since the Unix epoch when it was written.
    pub created_unix: u64,
    /// rllr version that wrote it.
    pub rllr_version: String,
    /// The command line, if written by a CLI.
    #[serde(default)]
    pub command: Vec<String>,
    /// Pipeline stage (convert, sft, reward, ppo, ...).
    #[serde(default)]
    pub stage: Option<String>,
    /// The stage's resolved configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// Final metrics of the stage.
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Where the input came from (e.g. the GGUF file).
    #[serde(default)]
    pub source: Option<String>,
}

impl Provenance {
    /// Provenance stamped now, for `stage`, with this process's command line.
    pub fn now(stage: &str) -> Self {
        Self {
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            rllr_version: env!("CARGO_PKG_VERSION").to_string(),
            command: std::env::args().collect(),
            stage: Some(stage.to_string()),
            ..Default::default()
        }
    }
}

/// The `rllr.json` manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub kind: ModelKind,
    /// Task name (e.g. `esnli`), if task-specific.
    #[serde(default)]
    pub task: Option<String>,
    /// The task's label set, in order; parsed labels index into it.
    #[serde(default)]
    pub labels: Vec<String>,
    /// The answer-line prefix of the CoT response format (`Answer:`).
    #[serde(default = "default_prefix")]
    pub answer_prefix: String,
    /// The full task spec (instruction, input fields, labels), so a served model renders prompts
    /// exactly as it was trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_spec: Option<crate::task::TaskSpec>,
    /// Whether targets carried rationales (CoT) or the label alone.
    #[serde(default)]
    pub rationales: bool,
    /// Chat template: a built-in by name (`"chatml"` or `{"name": "chatml", "system": ...}`) or the
    /// checkpoint's jinja written whole (`{"name": "jinja", "source": ...}`); see `template`.
    #[serde(default)]
    pub chat_template: Option<crate::template::ChatTemplate>,
    /// The checkpoint this one builds on (adapters need it; merged models record it).
    #[serde(default)]
    pub base_checkpoint: Option<String>,
    /// LoRA adapter stored beside the weights (`adapter_model.safetensors`), if any.
    #[serde(default)]
    pub adapter: Option<String>,
    /// Score head name, for reward and value models.
    #[serde(default)]
    pub head: Option<String>,
    pub provenance: Provenance,
}

fn default_prefix() -> String {
    "Answer:".into()
}

impl Manifest {
    /// A manifest of `kind` with defaults and provenance stamped for `stage`.
    pub fn new(kind: ModelKind, stage: &str) -> Self {
        Self {
            kind,
            task: None,
            labels: Vec::new(),
            task_spec: None,
            answer_prefix: default_prefix(),
            rationales: false,
            chat_template: None,
            base_checkpoint: None,
            adapter: None,
            head: None,
            provenance: Provenance::now(stage),
        }
    }

    /// Read `rllr.json` from a checkpoint directory, `None` if absent.
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        crate::fsutil::read_json_opt(&dir.join(MANIFEST_FILE))
    }

    /// Write `rllr.json` into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        write_file_atomic(&dir.join(MANIFEST_FILE), self.to_json().as_bytes())
    }

    /// Pretty JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("manifest serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_and_defaults_fill_in() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(ModelKind::Reward, "reward");
        m.task = Some("esnli".into());
        m.labels = vec![
            "entailment".into(),
            "neutral".into(),
            "contradiction".into(),
        ];
        m.write(dir.path()).unwrap();
        assert_eq!(Manifest::read(dir.path()).unwrap().unwrap(), m);
        let minimal: Manifest = serde_json::from_str(
            r#"{"kind":"sft","provenance":{"created_unix":1,"rllr_version":"0"}}"#,
        )
        .unwrap();
        assert_eq!(minimal.answer_prefix, "Answer:");
        assert!(Manifest::read(&dir.path().join("nope")).unwrap().is_none());
        assert!(serde_json::from_str::<Manifest>(r#"{"kind":"critic","provenance":{}}"#).is_err());
    }
}
