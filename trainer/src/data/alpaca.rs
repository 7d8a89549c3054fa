//! Interop with the reference code's data files (docs/method.md §2.1): a JSON array of alpaca records
//! `{instruction, input, output}`, where `output` is a response string, or `[chosen, rejected]`
//! for pair sets. Users of the paper's code can bring their data in and take ours out.
//!
//! Export writes `instruction` = the task instruction and `input` = [`TaskSpec::input_text`], so
//! the reference code's `instruction + "\n" + input` equals our [`TaskSpec::query`]. Import reads the
//! label back from each response with the strict parser; an unknown label is an error naming it.

use std::collections::BTreeMap;

use rllr_core::dataset::{Example, Pair, PairKind, Rationale};
use rllr_core::task::TaskSpec;
use serde::{Deserialize, Serialize};

use super::DataError;

/// One record of the reference code's datasets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlpacaRecord {
    pub instruction: String,
    #[serde(default)]
    pub input: String,
    pub output: AlpacaOutput,
}

/// A single response, or `[chosen, rejected]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AlpacaOutput {
    Response(String),
    Ranked(Vec<String>),
}

/// What an SFT export puts in `output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SftOutput {
    /// `Answer: <label>` only (the `sft_train` / `test` sets).
    Label,
    /// The gold label's first rationale, then the answer line (`sft_with_rat_train`); examples
    /// without a gold rationale are left out.
    Rationale,
}

/// Examples as alpaca SFT records; also returns how many were left out for lack of a rationale.
pub fn export_examples(
    task: &TaskSpec,
    examples: &[Example],
    output: SftOutput,
) -> Result<(Vec<AlpacaRecord>, usize), DataError> {
    let format = task.response_format();
    let mut records = Vec::with_capacity(examples.len());
    for ex in examples {
        let label = task.labels[task.label_index(&ex.label)?].display();
        let rationale = match output {
            SftOutput::Label => Some(""),
            SftOutput::Rationale => ex
                .rationales
                .get(&ex.label)
                .and_then(|r| r.first())
                .map(|r| r.text.as_str()),
        };
        if let Some(r) = rationale {
            records.push(AlpacaRecord {
                instruction: task.instruction.clone(),
                input: task.input_text(&ex.input)?,
                output: AlpacaOutput::Response(format.render(r, label)),
            });
        }
    }
    let skipped = examples.len() - records.len();
    Ok((records, skipped))
}

/// Pairs as alpaca pair records (`output: [chosen, rejected]`).
pub fn export_pairs(task: &TaskSpec, pairs: &[Pair]) -> Result<Vec<AlpacaRecord>, DataError> {
    pairs
        .iter()
        .map(|p| {
            Ok(AlpacaRecord {
                instruction: task.instruction.clone(),
                input: task.input_text(&p.input)?,
                output: AlpacaOutput::Ranked(vec![p.chosen.clone(), p.rejected.clone()]),
            })
        })
        .collect()
}

/// What an alpaca file held: single-response records become examples, ranked ones pairs.
#[derive(Debug, Default, PartialEq)]
pub struct Imported {
    pub examples: Vec<Example>,
    pub pairs: Vec<Pair>,
}

/// Read alpaca records for `task`. Ids are `<task>-alpaca-<index>`.
pub fn import(task: &TaskSpec, records: &[AlpacaRecord]) -> Result<Imported, DataError> {
    let mut out = Imported::default();
    for (i, rec) in records.iter().enumerate() {
        let at = |e: String| DataError::Invalid(format!("alpaca record {i}: {e}"));
        let id = format!("{}-alpaca-{i}", task.name);
        let input = task
            .parse_input_text(&rec.input)
            .map_err(|e| at(e.to_string()))?;
        match &rec.output {
            AlpacaOutput::Response(text) => {
                let (label, rationale) = parse_response(task, text).map_err(at)?;
                let mut rationales = BTreeMap::new();
                if !rationale.is_empty() {
                    let r = Rationale {
                        text: rationale,
                        source: "alpaca".into(),
                    };
                    rationales.insert(label.clone(), vec![r]);
                }
                out.examples.push(Example {
                    id,
                    task: task.name.clone(),
                    input,
                    label,
                    rationales,
                });
            }
            AlpacaOutput::Ranked(ranked) => {
                let [chosen, rejected, ..] = ranked.as_slice() else {
                    return Err(at(format!(
                        "output holds {} responses, need 2",
                        ranked.len()
                    )));
                };
                let (chosen_label, _) = parse_response(task, chosen).map_err(at)?;
                let (rejected_label, _) = parse_response(task, rejected).map_err(at)?;
                let kind = if chosen_label == rejected_label {
                    PairKind::Rationale
                } else {
                    PairKind::Label
                };
                out.pairs.push(Pair {
                    id,
                    task: task.name.clone(),
                    kind,
                    input,
                    chosen: chosen.clone(),
                    rejected: rejected.clone(),
                    chosen_label,
                    rejected_label,
                });
            }
        }
    }
    Ok(out)
}

/// The canonical label and rationale of a response; an answer outside the label set is an error
/// naming it.
pub(super) fn parse_response(task: &TaskSpec, text: &str) -> Result<(String, String), String> {
    let parsed = task.response_format().parse(text, &task.label_texts());
    match parsed.label {
        Some(i) => Ok((task.labels[i].name.clone(), parsed.rationale)),
        None => Err(match parsed.answer_text {
            Some(a) => format!(
                "label '{a}' is not in task '{}' (labels: {})",
                task.name,
                task.label_texts().join(", ")
            ),
            None => format!("no '{}' line in {text:?}", task.answer_prefix),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rllr_core::task::TaskInput;

    fn mrpc() -> TaskSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tasks/mrpc.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn export_then_import_round_trips() {
        let task = mrpc();
        let mut ex = Example {
            id: "mrpc-alpaca-0".into(),
            task: "mrpc".into(),
            input: TaskInput::Pair("A cat sat.".into(), "A cat was sitting.".into()),
            label: "equivalent".into(),
            rationales: BTreeMap::new(),
        };
        ex.rationales.insert(
            "equivalent".into(),
            vec![Rationale {
                text: "Both say a cat sat.".into(),
                source: "alpaca".into(),
            }],
        );
        let (recs, skipped) = export_examples(&task, &[ex.clone()], SftOutput::Rationale).unwrap();
        assert_eq!(skipped, 0);
        let json = serde_json::to_string(&recs).unwrap();
        assert!(json.contains(r#""output":"Both say a cat sat.\nAnswer: equivalent""#));
        let back = import(&task, &serde_json::from_str::<Vec<_>>(&json).unwrap()).unwrap();
        assert_eq!(back.examples, vec![ex]);
    }

    #[test]
    fn pairs_round_trip_and_bad_labels_are_named() {
        let task = mrpc();
        let rec = |out: AlpacaOutput| AlpacaRecord {
            instruction: task.instruction.clone(),
            input: "Sentence 1: a\nSentence 2: b".into(),
            output: out,
        };
        let pair = rec(AlpacaOutput::Ranked(vec![
            "Same.\nAnswer: equivalent".into(),
            "Different.\nAnswer: not equivalent".into(),
        ]));
        let got = import(&task, std::slice::from_ref(&pair)).unwrap();
        assert_eq!(got.pairs[0].kind, PairKind::Label);
        assert_eq!(got.pairs[0].rejected_label, "not_equivalent");
        assert_eq!(export_pairs(&task, &got.pairs).unwrap(), vec![pair]);
        let bad = rec(AlpacaOutput::Response("Hm.\nAnswer: maybe".into()));
        let e = import(&task, &[bad]).unwrap_err().to_string();
        assert!(e.contains("record 0") && e.contains("'maybe'"), "{e}");
    }
}
