//! TRL-style preference data (`prompt` / `chosen` / `rejected`, JSONL), both ways.
//!
//! TRL's two preference shapes are read and written:
//!
//! - *standard*: `{"prompt": "<user turn>", "chosen": "<response>", "rejected": "<response>"}`;
//! - *conversational*: `{"prompt": [{"role": "user", "content": "<user turn>"}], "chosen":
//!   [{"role": "assistant", "content": "<response>"}], "rejected": [...]}`.
//!
//! The mapping onto [`Pair`]:
//!
//! - `prompt` is the task's user turn, [`TaskSpec::query`]: the instruction, a newline, then
//!   [`TaskSpec::input_text`]; import strips the instruction and splits the rest into the task's
//!   input fields, and a prompt that does not begin with the task's instruction is an error.
//!   Conversational prompts are one `user` message, optionally after one `system` message; the
//!   system text is dropped (rllr takes the system text from the chat template, `--template` or the
//!   checkpoint) and counted in [`Imported::system_dropped`]. Any other turn layout (an assistant
//!   turn in the prompt, two user turns) is refused as multi-turn.
//! - `chosen` / `rejected` are the full responses (rationale, then the `Answer:` line), kept as is.
//!   TRL data carries no labels, so they are read from the responses with the strict response
//!   parser (`rllr_core::response`): `chosen` must give a label of the task, or the record is an
//!   error naming the file, line and field; a `rejected` response without an answer in the label
//!   set gives `rejected_label: ""`, as an on-policy label pair whose sample had no parseable answer.
//!   `kind` is `rationale` when both labels are the same, else `label`.
//! - `id` is not a TRL column; export writes it as an extra key (TRL keeps or ignores extra columns)
//!   and import reads it back, defaulting to `<task>-trl-<line>`.
//!
//! Implicit-prompt data (no `prompt`; `chosen`/`rejected` hold the whole text or conversation) is
//! refused: where the prompt ends cannot be told reliably.
//!
//! Export refuses a pair whose recorded labels or kind differ from what its responses parse to,
//! since such a pair would not read back the same.

use std::path::Path;

use rllr_core::dataset::{Pair, PairKind};
use rllr_core::task::{TaskInput, TaskSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::DataError;

/// How a pair file is laid out: the canonical schema or TRL's. Readers detect it per file unless
/// told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PairsFormat {
    /// By the first record's keys: `chosen_label` or `kind` → rllr, otherwise TRL.
    #[default]
    Auto,
    /// rllr's own pair records (`rllr_core::dataset::Pair`).
    Rllr,
    /// TRL standard or conversational preference records.
    Trl,
}

/// Which TRL shape export writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrlStyle {
    Standard,
    Conversational,
}

/// One chat message of a conversational record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

#[derive(Serialize)]
struct Record<T> {
    prompt: T,
    chosen: T,
    rejected: T,
    id: String,
}

/// What a TRL file held.
#[derive(Debug, Default, PartialEq)]
pub struct Imported {
    pub pairs: Vec<Pair>,
    /// Records whose conversational prompt had a system turn, which was dropped.
    pub system_dropped: usize,
}

/// Pairs as TRL JSONL text (one record per line, `\n`-terminated).
pub fn export_pairs(task: &TaskSpec, pairs: &[Pair], style: TrlStyle) -> Result<String, DataError> {
    let mut out = String::new();
    for p in pairs {
        check_round_trip(task, p)?;
        let prompt = task.query(&p.input)?;
        let msg = |role: &str, content: &str| {
            vec![Message {
                role: role.into(),
                content: content.into(),
            }]
        };
        let line = match style {
            TrlStyle::Standard => serde_json::to_string(&Record {
                prompt,
                chosen: p.chosen.clone(),
                rejected: p.rejected.clone(),
                id: p.id.clone(),
            }),
            TrlStyle::Conversational => serde_json::to_string(&Record {
                prompt: msg("user", &prompt),
                chosen: msg("assistant", &p.chosen),
                rejected: msg("assistant", &p.rejected),
                id: p.id.clone(),
            }),
        }
        .map_err(|e| DataError::Invalid(format!("pair '{}': {e}", p.id)))?;
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// Refuse a pair whose labels or kind would not be read back from its responses.
fn check_round_trip(task: &TaskSpec, p: &Pair) -> Result<(), DataError> {
    let chosen = parse_label(task, &p.chosen);
    let rejected = parse_label(task, &p.rejected);
    let recorded = |l: &str| -> Result<Option<usize>, DataError> {
        match l.is_empty() {
            true => Ok(None),
            false => Ok(Some(task.label_index(l)?)),
        }
    };
    let bad = |field: &str, got: Option<usize>, want: &str| {
        let got = got.map_or("no label", |i| task.labels[i].name.as_str());
        DataError::Invalid(format!(
            "pair '{}': {field} reads as {got:?} but the pair records {want:?}; TRL data carries \
             no labels, so it would not read back the same",
            p.id
        ))
    };
    if chosen.is_none() || chosen != recorded(&p.chosen_label)? {
        return Err(bad("chosen", chosen, &p.chosen_label));
    }
    if rejected != recorded(&p.rejected_label)? {
        return Err(bad("rejected", rejected, &p.rejected_label));
    }
    if p.kind != kind_of(chosen, rejected) {
        return Err(DataError::Invalid(format!(
            "pair '{}': kind {:?} does not match its labels ({:?} vs {:?})",
            p.id, p.kind, p.chosen_label, p.rejected_label
        )));
    }
    Ok(())
}

fn kind_of(chosen: Option<usize>, rejected: Option<usize>) -> PairKind {
    match chosen == rejected {
        true => PairKind::Rationale,
        false => PairKind::Label,
    }
}

/// The label index a response parses to under the task's strict parser.
fn parse_label(task: &TaskSpec, text: &str) -> Option<usize> {
    task.response_format()
        .parse(text, &task.label_texts())
        .label
}

/// Read a TRL JSONL file for `task`.
pub fn read(task: &TaskSpec, path: &Path) -> Result<Imported, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse(task, &text, path)
}

/// [`read`] on text in memory; `path` only names the source in errors.
pub fn parse(task: &TaskSpec, text: &str, path: &Path) -> Result<Imported, DataError> {
    let mut out = Imported::default();
    for (i, line) in text.split('\n').enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let at = |msg: String| DataError::raw(path, i + 1, msg);
        let (pair, system) = parse_record(task, line, i + 1).map_err(at)?;
        out.pairs.push(pair);
        out.system_dropped += usize::from(system);
    }
    Ok(out)
}

/// One record; the error is the message without its file:line. Also says whether a system turn
/// was dropped.
fn parse_record(task: &TaskSpec, line: &str, n: usize) -> Result<(Pair, bool), String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let Value::Object(obj) = value else {
        return Err(format!("expected a JSON object, got {}", type_name(&value)));
    };
    let get = |field: &str| {
        obj.get(field)
            .ok_or_else(|| format!("field '{field}': missing"))
    };
    let prompt = obj
        .get("prompt")
        .ok_or_else(|| match obj.contains_key("chosen") {
            true => {
                "field 'prompt': missing (implicit-prompt preference data, where chosen/rejected \
                 hold the whole text, is not supported: put the user turn in 'prompt')"
                    .to_string()
            }
            false => "field 'prompt': missing".to_string(),
        })?;
    let (chosen, rejected) = (get("chosen")?, get("rejected")?);
    let (prompt, chosen, rejected, system) = match prompt {
        Value::String(p) => (
            p.clone(),
            string_field("chosen", chosen)?,
            string_field("rejected", rejected)?,
            false,
        ),
        Value::Array(_) => {
            let (p, system) = conversational_prompt(prompt)?;
            (
                p,
                assistant_reply("chosen", chosen)?,
                assistant_reply("rejected", rejected)?,
                system,
            )
        }
        other => {
            return Err(format!(
                "field 'prompt': expected a string or a list of {{role, content}} messages, got {}",
                type_name(other)
            ))
        }
    };
    for (field, text) in [("chosen", &chosen), ("rejected", &rejected)] {
        if text.trim().is_empty() {
            return Err(format!("field '{field}': empty response"));
        }
    }
    let input = input_of(task, &prompt).map_err(|e| format!("field 'prompt': {e}"))?;
    let (chosen_label, _) =
        super::alpaca::parse_response(task, &chosen).map_err(|e| format!("field 'chosen': {e}"))?;
    let rejected_label =
        parse_label(task, &rejected).map_or(String::new(), |i| task.labels[i].name.clone());
    let id = match obj.get("id") {
        None => format!("{}-trl-{n}", task.name),
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(format!(
                "field 'id': expected a string, got {}",
                type_name(other)
            ))
        }
    };
    let kind = match chosen_label == rejected_label {
        true => PairKind::Rationale,
        false => PairKind::Label,
    };
    let pair = Pair {
        id,
        task: task.name.clone(),
        kind,
        input,
        chosen,
        rejected,
        chosen_label,
        rejected_label,
    };
    Ok((pair, system))
}

/// The task input behind a prompt: `instruction\ninput_text` (or the bare instruction).
fn input_of(task: &TaskSpec, prompt: &str) -> Result<TaskInput, String> {
    let rest = match prompt == task.instruction {
        true => "",
        false => prompt
            .strip_prefix(&format!("{}\n", task.instruction))
            .ok_or_else(|| {
                format!(
                    "does not begin with task '{}''s instruction {:?} and a newline",
                    task.name, task.instruction
                )
            })?,
    };
    task.parse_input_text(rest).map_err(|e| e.to_string())
}

fn string_field(field: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!(
            "field '{field}': expected a string (the prompt is a string, so the record is in \
             TRL's standard format), got {}",
            type_name(other)
        )),
    }
}

/// The messages of a conversational field.
fn messages(field: &str, v: &Value) -> Result<Vec<Message>, String> {
    let Value::Array(items) = v else {
        return Err(format!(
            "field '{field}': expected a list of {{role, content}} messages (the prompt is a \
             list, so the record is conversational), got {}",
            type_name(v)
        ));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let str_key = |obj: &Map<String, Value>, key: &str| match obj.get(key) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(format!(
                    "field '{field}': message {}: '{key}' must be a string, got {}",
                    i + 1,
                    type_name(other)
                )),
                None => Err(format!("field '{field}': message {}: no '{key}'", i + 1)),
            };
            match m {
                Value::Object(obj) => Ok(Message {
                    role: str_key(obj, "role")?,
                    content: str_key(obj, "content")?,
                }),
                other => Err(format!(
                    "field '{field}': message {}: expected an object, got {}",
                    i + 1,
                    type_name(other)
                )),
            }
        })
        .collect()
}

/// A conversational prompt: `[system?, user]`; the user text and whether a system turn was there.
fn conversational_prompt(v: &Value) -> Result<(String, bool), String> {
    let msgs = messages("prompt", v)?;
    let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
    match roles.as_slice() {
        ["user"] => Ok((msgs[0].content.clone(), false)),
        ["system", "user"] => Ok((msgs[1].content.clone(), true)),
        _ => Err(format!(
            "field 'prompt': expected one user message (optionally after one system message), got \
             roles {roles:?}; multi-turn conversations are not supported"
        )),
    }
}

/// The content of a conversational response: exactly one assistant message.
fn assistant_reply(field: &str, v: &Value) -> Result<String, String> {
    let msgs = messages(field, v)?;
    match msgs.as_slice() {
        [m] if m.role == "assistant" => Ok(m.content.clone()),
        _ => Err(format!(
            "field '{field}': expected exactly one assistant message, got roles {:?}",
            msgs.iter().map(|m| m.role.as_str()).collect::<Vec<_>>()
        )),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Which format a pair file is in, by its first non-blank record's keys (rllr when that record is
/// not a JSON object, so the canonical reader reports the bad line).
pub fn detect(text: &str) -> PairsFormat {
    let first = text.split('\n').find(|l| !l.trim().is_empty());
    match first.and_then(|l| serde_json::from_str::<Map<String, Value>>(l).ok()) {
        Some(obj) if !obj.contains_key("chosen_label") && !obj.contains_key("kind") => {
            PairsFormat::Trl
        }
        _ => PairsFormat::Rllr,
    }
}

/// Read a pair file in either format (`Auto`: [`detect`]). A TRL file's dropped system turns are
/// logged.
pub fn read_pairs(
    path: &Path,
    task: &TaskSpec,
    format: PairsFormat,
) -> Result<Vec<Pair>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    let format = match format {
        PairsFormat::Auto => detect(&text),
        f => f,
    };
    match format {
        PairsFormat::Trl => {
            let got = parse(task, &text, path)?;
            if got.system_dropped > 0 {
                tracing::warn!(
                    path = %path.display(),
                    records = got.system_dropped,
                    "system turns dropped; the chat template's system text is used"
                );
            }
            Ok(got.pairs)
        }
        _ => Ok(rllr_core::dataset::parse_jsonl(&text, path)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mrpc() -> TaskSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tasks/mrpc.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn pair(id: &str, kind: PairKind, rejected: &str, rejected_label: &str) -> Pair {
        Pair {
            id: id.into(),
            task: "mrpc".into(),
            kind,
            input: TaskInput::Pair("A cat sat.".into(), "A cat was sitting.".into()),
            chosen: "Both say a cat sat.\nAnswer: equivalent".into(),
            rejected: rejected.into(),
            chosen_label: "equivalent".into(),
            rejected_label: rejected_label.into(),
        }
    }

    /// A label pair, a rationale pair and an on-policy pair whose rejected sample has no answer.
    fn pairs() -> Vec<Pair> {
        vec![
            pair(
                "l",
                PairKind::Label,
                "One sits, one stands.\nAnswer: not equivalent",
                "not_equivalent",
            ),
            pair(
                "r",
                PairKind::Rationale,
                "Cats are animals.\nAnswer: equivalent",
                "equivalent",
            ),
            pair("u", PairKind::Label, "I am not sure what", ""),
        ]
    }

    const PROMPT: &str =
        "Do the two sentences mean the same thing?\nSentence 1: A cat sat.\nSentence 2: A cat was sitting.";

    fn parse_one(line: &str) -> Result<Imported, String> {
        parse(&mrpc(), line, Path::new("p.jsonl")).map_err(|e| e.to_string())
    }

    fn err_of(line: &str) -> String {
        parse_one(line).unwrap_err()
    }

    #[test]
    fn standard_export_then_import_gives_the_same_pairs() {
        let text = export_pairs(&mrpc(), &pairs(), TrlStyle::Standard).unwrap();
        let back = parse(&mrpc(), &text, Path::new("x")).unwrap();
        assert_eq!(back.pairs, pairs());
    }

    #[test]
    fn conversational_export_then_import_gives_the_same_pairs() {
        let text = export_pairs(&mrpc(), &pairs(), TrlStyle::Conversational).unwrap();
        let back = parse(&mrpc(), &text, Path::new("x")).unwrap();
        assert_eq!(back.pairs, pairs());
    }

    #[test]
    fn standard_export_writes_the_user_turn_as_prompt() {
        let text = export_pairs(&mrpc(), &pairs()[..1], TrlStyle::Standard).unwrap();
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["prompt"], PROMPT);
        assert_eq!(v["chosen"], "Both say a cat sat.\nAnswer: equivalent");
    }

    #[test]
    fn conversational_export_writes_user_and_assistant_messages() {
        let text = export_pairs(&mrpc(), &pairs()[..1], TrlStyle::Conversational).unwrap();
        let v: Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(
            v["prompt"],
            serde_json::json!([{"role": "user", "content": PROMPT}])
        );
        assert_eq!(v["rejected"][0]["role"], "assistant");
    }

    #[test]
    fn export_refuses_a_pair_whose_labels_its_responses_do_not_give() {
        let mut p = pairs().remove(0);
        p.rejected_label = "equivalent".into();
        p.kind = PairKind::Rationale;
        let e = export_pairs(&mrpc(), &[p], TrlStyle::Standard)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pair 'l': rejected reads as \"not_equivalent\""),
            "{e}"
        );
    }

    /// Lines in the exact shape TRL's docs show (Python `json.dumps` spacing, no `id`).
    #[test]
    fn trl_shaped_standard_line_loads() {
        let line = format!(
            "{{\"prompt\": {}, \"chosen\": \"Same event.\\nAnswer: equivalent\", \"rejected\": \"Different.\\nAnswer: not equivalent\"}}\n",
            serde_json::to_string(PROMPT).unwrap()
        );
        let got = parse_one(&line).unwrap().pairs;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].id, "mrpc-trl-1");
        assert_eq!(got[0].kind, PairKind::Label);
        assert_eq!(got[0].rejected_label, "not_equivalent");
        assert_eq!(got[0].input, pairs()[0].input);
    }

    #[test]
    fn trl_shaped_conversational_line_loads() {
        let line = format!(
            "{{\"prompt\": [{{\"role\": \"user\", \"content\": {}}}], \"chosen\": [{{\"role\": \"assistant\", \"content\": \"Same.\\nAnswer: equivalent\"}}], \"rejected\": [{{\"role\": \"assistant\", \"content\": \"Other.\\nAnswer: not equivalent\"}}]}}",
            serde_json::to_string(PROMPT).unwrap()
        );
        let got = parse_one(&line).unwrap().pairs;
        assert_eq!(got[0].chosen, "Same.\nAnswer: equivalent");
        assert_eq!(got[0].chosen_label, "equivalent");
    }

    fn conv(prompt: Value) -> String {
        serde_json::json!({
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": "Same.\nAnswer: equivalent"}],
            "rejected": [{"role": "assistant", "content": "No.\nAnswer: not equivalent"}],
        })
        .to_string()
    }

    #[test]
    fn a_system_turn_is_dropped_and_counted() {
        let got = parse_one(&conv(serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": PROMPT}
        ])))
        .unwrap();
        assert_eq!(got.system_dropped, 1);
        assert_eq!(got.pairs[0].input, pairs()[0].input);
    }

    #[test]
    fn multi_turn_prompt_is_refused() {
        let e = err_of(&conv(serde_json::json!([
            {"role": "user", "content": PROMPT},
            {"role": "assistant", "content": "Which?"},
            {"role": "user", "content": PROMPT}
        ])));
        assert!(
            e.contains("p.jsonl:1: field 'prompt'") && e.contains("multi-turn"),
            "{e}"
        );
    }

    fn standard(chosen: Value) -> String {
        serde_json::json!({"prompt": PROMPT, "chosen": chosen, "rejected": "No.\nAnswer: not equivalent"})
            .to_string()
    }

    #[test]
    fn bad_json_line_reports_its_line_number() {
        let good = standard(Value::from("Same.\nAnswer: equivalent"));
        let e = err_of(&format!("{good}\n\n{{\"prompt\": oops}}\n"));
        assert!(e.starts_with("p.jsonl:3: malformed JSON"), "{e}");
    }

    #[test]
    fn missing_rejected_is_named() {
        let line = serde_json::json!({"prompt": PROMPT, "chosen": "Same.\nAnswer: equivalent"});
        assert_eq!(
            err_of(&line.to_string()),
            "p.jsonl:1: field 'rejected': missing"
        );
    }

    #[test]
    fn implicit_prompt_is_refused_with_a_reason() {
        let line =
            serde_json::json!({"chosen": "The sky is blue.", "rejected": "The sky is green."});
        let e = err_of(&line.to_string());
        assert!(
            e.contains("field 'prompt': missing (implicit-prompt"),
            "{e}"
        );
    }

    #[test]
    fn chosen_of_the_wrong_type_is_named() {
        let e = err_of(&standard(Value::from(3)));
        assert!(
            e.starts_with("p.jsonl:1: field 'chosen': expected a string"),
            "{e}"
        );
        assert!(e.ends_with("got a number"), "{e}");
    }

    #[test]
    fn conversational_content_of_the_wrong_type_is_named() {
        let e = err_of(&conv(
            serde_json::json!([{"role": "user", "content": ["a"]}]),
        ));
        assert!(
            e.contains("field 'prompt': message 1: 'content' must be a string, got a list"),
            "{e}"
        );
    }

    #[test]
    fn empty_chosen_is_refused() {
        assert_eq!(
            err_of(&standard(Value::from("  \n"))),
            "p.jsonl:1: field 'chosen': empty response"
        );
    }

    #[test]
    fn chosen_without_an_answer_line_is_named() {
        let e = err_of(&standard(Value::from("They match.")));
        assert!(
            e.contains("p.jsonl:1: field 'chosen': no 'Answer:' line"),
            "{e}"
        );
    }

    #[test]
    fn chosen_with_a_label_outside_the_task_is_named() {
        let e = err_of(&standard(Value::from("Hm.\nAnswer: maybe")));
        assert!(
            e.contains("field 'chosen': label 'maybe' is not in task 'mrpc'"),
            "{e}"
        );
    }

    #[test]
    fn prompt_without_the_task_instruction_is_refused() {
        let line = serde_json::json!({"prompt": "The sky is", "chosen": "Answer: equivalent", "rejected": "x"});
        let e = err_of(&line.to_string());
        assert!(
            e.contains("field 'prompt': does not begin with task 'mrpc''s instruction"),
            "{e}"
        );
    }

    #[test]
    fn detect_tells_the_formats_apart_by_keys() {
        let ours = rllr_core::dataset::to_jsonl(&pairs()).unwrap();
        let trl = export_pairs(&mrpc(), &pairs(), TrlStyle::Standard).unwrap();
        assert_eq!(detect(&ours), PairsFormat::Rllr);
        assert_eq!(detect(&format!("\n{trl}")), PairsFormat::Trl);
    }

    #[test]
    fn read_pairs_loads_a_trl_file_like_a_canonical_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, trl) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
        rllr_core::dataset::write_jsonl(&ours, &pairs()).unwrap();
        let text = export_pairs(&mrpc(), &pairs(), TrlStyle::Conversational).unwrap();
        std::fs::write(&trl, text).unwrap();
        let a = read_pairs(&ours, &mrpc(), PairsFormat::Auto).unwrap();
        let b = read_pairs(&trl, &mrpc(), PairsFormat::Auto).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn an_explicit_format_overrides_detection() {
        let dir = tempfile::tempdir().unwrap();
        let ours = dir.path().join("a.jsonl");
        rllr_core::dataset::write_jsonl(&ours, &pairs()).unwrap();
        let e = read_pairs(&ours, &mrpc(), PairsFormat::Trl)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a.jsonl:1: field 'prompt': missing"), "{e}");
    }
}
