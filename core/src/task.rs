//! `TaskSpec`: what a classification task is — its instruction, its input fields (one text or a
//! pair), its label set — and how one example becomes the user turn of a prompt.
//!
//! The trainers, the data tools and the server all render prompts through [`TaskSpec::query`], so a
//! model is always asked the same way it was trained. Specs live as small files in `data/tasks/`
//! and are copied into each checkpoint's `rllr.json`, so a served model carries its own task.

use serde::{Deserialize, Serialize};

use crate::response::{normalize_label, ResponseFormat};
use crate::template;
use crate::{Error, Result};

/// One label: its canonical name (what data files and metrics use) and the text the model writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelSpec {
    pub name: String,
    /// What appears after `Answer:`; defaults to `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

impl LabelSpec {
    /// The text the model writes for this label.
    pub fn display(&self) -> &str {
        self.display.as_deref().unwrap_or(&self.name)
    }
}

/// The input of one example: a single text, or a pair (premise/hypothesis, two sentences, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TaskInput {
    Single(String),
    Pair(String, String),
}

/// A classification task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Short identifier (`sst2`, `esnli`, ...).
    pub name: String,
    /// The instruction that opens every prompt.
    pub instruction: String,
    /// Names of the input fields, one or two (`["sentence"]`, `["premise", "hypothesis"]`).
    pub input_fields: Vec<String>,
    /// The label set, in a fixed order (parsed labels are indices into it).
    pub labels: Vec<LabelSpec>,
    /// Evaluation metric (`accuracy`).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// Answer-line prefix of the CoT response format.
    #[serde(default = "default_prefix")]
    pub answer_prefix: String,
}

fn default_metric() -> String {
    "accuracy".into()
}
fn default_prefix() -> String {
    "Answer:".into()
}

impl TaskSpec {
    /// Reject specs a model could not be trained or served with, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("task '{}': {m}", self.name)));
        if self.name.trim().is_empty() {
            return bad("name is empty".into());
        }
        if !(1..=2).contains(&self.input_fields.len()) {
            return bad(format!(
                "input_fields must name 1 or 2 fields, got {}",
                self.input_fields.len()
            ));
        }
        if self.labels.len() < 2 {
            return bad(format!(
                "labels must hold at least 2 labels, got {}",
                self.labels.len()
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for l in &self.labels {
            let d = l.display();
            if d.trim().is_empty() || d.contains('\n') {
                return bad(format!(
                    "label '{}' has an empty or multi-line display text",
                    l.name
                ));
            }
            if !seen.insert(normalize_label(d)) {
                return bad(format!(
                    "label '{d}' appears twice (after case/space normalisation)"
                ));
            }
        }
        ResponseFormat::new(self.answer_prefix.clone())?;
        Ok(())
    }

    /// Index of the label called `name` (canonical name or display text).
    pub fn label_index(&self, name: &str) -> Result<usize> {
        self.labels
            .iter()
            .position(|l| l.name == name || l.display() == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.labels.iter().map(|l| l.name.as_str()).collect();
                Error::Input(format!(
                    "label '{name}' is not in task '{}' (labels: {})",
                    self.name,
                    names.join(", ")
                ))
            })
    }

    /// Display texts of the labels, in order (what the response parser matches against).
    pub fn label_texts(&self) -> Vec<&str> {
        self.labels.iter().map(LabelSpec::display).collect()
    }

    /// The response format of this task.
    pub fn response_format(&self) -> ResponseFormat {
        ResponseFormat {
            answer_prefix: self.answer_prefix.clone(),
        }
    }

    /// Read a task spec file (`data/tasks/<name>.json`) and validate it.
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let spec: TaskSpec = serde_json::from_str(&text).map_err(|e| Error::json(path, e))?;
        spec.validate()?;
        Ok(spec)
    }

    /// The user turn for one example: the instruction, a newline, then [`TaskSpec::input_text`].
    pub fn query(&self, input: &TaskInput) -> Result<String> {
        Ok(template::query(&self.instruction, &self.input_text(input)?))
    }

    /// The input part of the user turn: a single text as is, a pair as
    /// `Field1: text1\nField2: text2` (the alpaca `input` field of the reference code).
    pub fn input_text(&self, input: &TaskInput) -> Result<String> {
        match (input, self.input_fields.as_slice()) {
            (TaskInput::Single(t), [_]) => Ok(t.clone()),
            (TaskInput::Pair(a, b), [fa, fb]) => {
                Ok(format!("{}: {a}\n{}: {b}", capitalize(fa), capitalize(fb)))
            }
            (TaskInput::Single(_), _) => Err(Error::Input(format!(
                "task '{}' takes a text pair, got one text",
                self.name
            ))),
            (TaskInput::Pair(..), _) => Err(Error::Input(format!(
                "task '{}' takes one text, got a pair",
                self.name
            ))),
        }
    }

    /// Inverse of [`TaskSpec::input_text`]: split an alpaca `input` back into this task's fields.
    pub fn parse_input_text(&self, text: &str) -> Result<TaskInput> {
        match self.input_fields.as_slice() {
            [_] => Ok(TaskInput::Single(text.to_string())),
            [fa, fb] => {
                let (pa, pb) = (
                    format!("{}: ", capitalize(fa)),
                    format!("\n{}: ", capitalize(fb)),
                );
                let rest = text.strip_prefix(&pa);
                let split = rest.and_then(|r| r.find(&pb).map(|i| (&r[..i], &r[i + pb.len()..])));
                split
                    .map(|(a, b)| TaskInput::Pair(a.to_string(), b.to_string()))
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "task '{}': input does not read '{}…{}…'",
                            self.name,
                            pa,
                            pb.trim_start()
                        ))
                    })
            }
            _ => Err(Error::Config(format!(
                "task '{}': input_fields must name 1 or 2 fields",
                self.name
            ))),
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nli() -> TaskSpec {
        serde_json::from_str(
            r#"{"name":"esnli","instruction":"Does the premise entail the hypothesis?",
            "input_fields":["premise","hypothesis"],
            "labels":[{"name":"entailment"},{"name":"neutral"},{"name":"contradiction"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn renders_pairs_and_validates_inputs() {
        let t = nli();
        t.validate().unwrap();
        let q = t
            .query(&TaskInput::Pair(
                "A man sleeps.".into(),
                "A person rests.".into(),
            ))
            .unwrap();
        assert_eq!(q, "Does the premise entail the hypothesis?\nPremise: A man sleeps.\nHypothesis: A person rests.");
        assert!(t
            .query(&TaskInput::Single("x".into()))
            .unwrap_err()
            .to_string()
            .contains("pair"));
        assert_eq!(t.label_index("neutral").unwrap(), 1);
        assert!(t
            .label_index("maybe")
            .unwrap_err()
            .to_string()
            .contains("entailment, neutral, contradiction"));
        assert_eq!(t.metric, "accuracy");
        let pair = TaskInput::Pair("a: b".into(), "c\nd".into());
        let text = t.input_text(&pair).unwrap();
        assert_eq!(t.parse_input_text(&text).unwrap(), pair);
        assert!(t.parse_input_text("no fields").is_err());
    }

    #[test]
    fn duplicate_or_too_few_labels_are_rejected() {
        let mut t = nli();
        t.labels[1] = LabelSpec {
            name: "x".into(),
            display: Some("Entailment".into()),
        };
        assert!(t.validate().unwrap_err().to_string().contains("twice"));
        t.labels.truncate(1);
        assert!(t.validate().unwrap_err().to_string().contains("at least 2"));
    }
}
