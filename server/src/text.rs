//! Text in and out: turning request inputs into the exact token sequences the models were trained
//! on, and generated tokens back into a classification with label probabilities.
//!
//! Scored text (docs/method.md §5.2) is the chat-rendered prompt, then `format.render(rationale, label)`,
//! then `template.response_end()` (or the EOS id when the template has none); the reward is the
//! head output at its last token.
//!
//! Label probabilities: the logits at the step where the labels' token sequences part ways (their
//! [`LabelFork`](crate::label_fork::LabelFork): the first token for `entailment`/`neutral`/`contradiction`, the second for
//! `Statement 1`/`Statement 2`, whose first token is shared), restricted to each label's token there
//! and softmax-normalised: P(label | answer line so far). When the labels never part at one common
//! position (one label a prefix of another), the first tokens are used and labels sharing one get
//! equal shares of it.

use std::ops::Range;

use rllr_core::task::TaskInput;
use tokenizers::Tokenizer;

use crate::error::{Error, Result};
use crate::registry::ModelEntry;
use rllr_proto::v1;

/// Validate `input` (at `field`) and turn it into a task input.
pub fn task_input(input: Option<&v1::Input>, field: &str) -> Result<TaskInput> {
    let input = input.ok_or_else(|| Error::invalid(field, "is required"))?;
    if input.text.trim().is_empty() {
        return Err(Error::invalid(format!("{field}.text"), "must be non-empty"));
    }
    Ok(match &input.text_pair {
        Some(p) if p.trim().is_empty() => {
            return Err(Error::invalid(
                format!("{field}.text_pair"),
                "must be non-empty when set",
            ))
        }
        Some(p) => TaskInput::Pair(input.text.clone(), p.clone()),
        None => TaskInput::Single(input.text.clone()),
    })
}

/// The user turn for `input` under `model`'s task (or the raw text without a task spec).
pub fn query(model: &ModelEntry, input: &TaskInput, field: &str) -> Result<String> {
    match &model.task {
        Some(t) => t
            .query(input)
            .map_err(|e| Error::invalid(field, e.to_string())),
        None => Ok(match input {
            TaskInput::Single(t) => t.clone(),
            TaskInput::Pair(a, b) => format!("{a}\n{b}"),
        }),
    }
}

/// Index of `label` in `model`'s label set (by name or display text); any label is accepted by a
/// model without a label set (index `None`).
pub fn label_index(model: &ModelEntry, label: &str, field: &str) -> Result<Option<usize>> {
    if label.trim().is_empty() {
        return Err(Error::invalid(field, "must be non-empty"));
    }
    if model.labels.is_empty() {
        return Ok(None);
    }
    model
        .labels
        .iter()
        .zip(&model.label_texts)
        .position(|(n, d)| n == label || d == label)
        .map(Some)
        .ok_or_else(|| {
            Error::invalid(
                field,
                format!(
                    "'{label}' is not one of the labels of model '{}': {}",
                    model.name,
                    model.labels.join(", ")
                ),
            )
        })
}

/// What a scored response answers: a task input the server renders (Score, Compare, best-of-n),
/// or a prompt the caller already rendered with the model's chat template (`/get_reward`, whose
/// queries are full chat texts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Task(TaskInput),
    Rendered(String),
}

impl Prompt {
    /// The chat-rendered prompt text under `model`.
    pub fn render(&self, model: &ModelEntry, field: &str) -> Result<String> {
        match self {
            Prompt::Task(input) => Ok(model
                .template
                .render_prompt(None, &query(model, input, field)?)),
            Prompt::Rendered(p) => Ok(p.clone()),
        }
    }
}

/// Tokens of the scored text for one response.
pub fn score_tokens(
    model: &ModelEntry,
    prompt: &Prompt,
    rationale: &str,
    label: &str,
    max_tokens: usize,
    field: &str,
) -> Result<Vec<u32>> {
    let prompt = prompt.render(model, field)?;
    let text = format!(
        "{prompt}{}{}",
        model.format.render(rationale, label),
        model.template.response_end()
    );
    let mut ids = encode(&model.tokenizer, &text)?;
    if model.template.response_end().is_empty() {
        ids.extend(model.eos_id);
    }
    check_len(ids.len(), max_tokens, field)?;
    Ok(ids)
}

/// Tokens of the generation prompt for one input.
pub fn prompt_tokens(
    model: &ModelEntry,
    input: &TaskInput,
    system: Option<&str>,
    max_tokens: usize,
    field: &str,
) -> Result<Vec<u32>> {
    let prompt = model
        .template
        .render_prompt(system, &query(model, input, field)?);
    let ids = encode(&model.tokenizer, &prompt)?;
    check_len(ids.len(), max_tokens, field)?;
    Ok(ids)
}

fn check_len(n: usize, max: usize, field: &str) -> Result<()> {
    if n > max {
        return Err(Error::invalid(
            field,
            format!("{n} tokens exceed max_input_tokens {max}"),
        ));
    }
    Ok(())
}

fn encode(tokenizer: &Tokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .encode(text, false)
        .map_err(rllr_core::Error::from)?
        .get_ids()
        .to_vec())
}

/// Decode generated ids (special tokens removed).
pub fn decode(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    Ok(tokenizer
        .decode(ids, true)
        .map_err(rllr_core::Error::from)?)
}

/// Probabilities over the label set at the label position of a generated `text`, or `None` when
/// the position cannot be found (no answer line, or the label starts inside a token that also
/// holds text before it).
pub fn label_probabilities(
    model: &ModelEntry,
    tokens: &[u32],
    label_logits: &[Vec<f32>],
    text: &str,
) -> Option<Vec<f32>> {
    let n = model.label_texts.len();
    if n == 0 || model.label_forks.iter().any(|f| f.ids.len() != n) {
        return None;
    }
    let span: Range<usize> = model.format.label_span(text)?;
    // The first token whose decoded prefix reaches past the label's first byte.
    let prefix_len = |k: usize| {
        decode(&model.tokenizer, &tokens[..k])
            .map(|s| s.len())
            .unwrap_or(0)
    };
    let (mut lo, mut hi) = (0usize, tokens.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if prefix_len(mid + 1) > span.start {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let step = lo;
    let before = decode(&model.tokenizer, &tokens[..step]).ok()?;
    let lead = text.get(before.len().min(span.start)..span.start)?;
    let variant = match lead {
        "" => 0,
        " " => 1,
        _ => return None,
    };
    let fork = &model.label_forks[variant];
    let at = step + fork.prefix.len();
    if tokens.get(step..at)? != fork.prefix.as_slice() {
        return None;
    }
    let logits = label_logits.get(at)?;
    let set = logits.get(variant * n..variant * n + n)?;
    let max = set.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return None;
    }
    let exps: Vec<f64> = set.iter().map(|&l| f64::from(l - max).exp()).collect();
    let total: f64 = exps.iter().sum();
    Some(exps.iter().map(|e| (e / total) as f32).collect())
}
