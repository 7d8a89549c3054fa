//! Accuracy and confusion matrix of a finished batch output whose records carry gold labels.
//!
//! Computed from the output file itself, not from this run's memory, so a job that was resumed
//! five times still reports over all its rows.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};

/// Predicted label of a record without a parseable answer.
pub const NO_LABEL: &str = "<none>";

/// Accuracy over the records with a gold label; `matrix[g][p]` counts gold `labels[g]` predicted
/// as `labels[p]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Accuracy {
    pub n: usize,
    pub correct: usize,
    pub accuracy: f64,
    pub labels: Vec<String>,
    pub matrix: Vec<Vec<usize>>,
}

/// Accuracy of (gold, predicted) pairs; None when there are none.
pub fn accuracy<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<Accuracy> {
    let pairs: Vec<(&str, &str)> = pairs
        .into_iter()
        .map(|(g, p)| (g, if p.is_empty() { NO_LABEL } else { p }))
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let labels: Vec<String> = pairs
        .iter()
        .flat_map(|&(g, p)| [g, p])
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    let idx = |l: &str| labels.iter().position(|x| x == l).expect("label collected");
    let mut matrix = vec![vec![0; labels.len()]; labels.len()];
    let mut correct = 0;
    for &(g, p) in &pairs {
        matrix[idx(g)][idx(p)] += 1;
        correct += usize::from(g.eq_ignore_ascii_case(p));
    }
    Some(Accuracy {
        n: pairs.len(),
        correct,
        accuracy: correct as f64 / pairs.len() as f64,
        labels,
        matrix,
    })
}

/// Accuracy over the records of a JSONL output that have `gold`.
pub fn accuracy_of_output(path: &Path) -> Result<Option<Accuracy>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(path))?;
    let rows: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let s = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let pairs: Vec<(String, String)> = rows
        .iter()
        .filter_map(|r| Some((s(r, "gold")?, s(r, "label").unwrap_or_default())))
        .collect();
    Ok(accuracy(
        pairs.iter().map(|(g, p)| (g.as_str(), p.as_str())),
    ))
}

impl Accuracy {
    /// The matrix as text: gold labels down, predictions across.
    pub fn render(&self) -> String {
        let w = self
            .labels
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(4)
            .max(6);
        let mut out = format!(
            "accuracy {:.4} ({}/{})\n{:>w$}  ",
            self.accuracy, self.correct, self.n, "gold\\pred"
        );
        for l in &self.labels {
            out.push_str(&format!("{l:>w$} "));
        }
        out.push('\n');
        for (g, row) in self.labels.iter().zip(&self.matrix) {
            out.push_str(&format!("{g:>w$}  "));
            for c in row {
                out.push_str(&format!("{c:>w$} "));
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confusion_matrix_counts_gold_by_prediction() {
        let a = accuracy([("pos", "pos"), ("pos", "neg"), ("neg", "neg"), ("neg", "")]).unwrap();
        assert_eq!(a.labels, [NO_LABEL, "neg", "pos"]);
        assert_eq!(a.matrix, [[0, 0, 0], [1, 1, 0], [0, 1, 1]]);
        assert_eq!((a.n, a.correct), (4, 2));
        assert!((a.accuracy - 0.5).abs() < 1e-12);
        assert!(a.render().contains("accuracy 0.5000 (2/4)"));
        assert!(accuracy(std::iter::empty()).is_none());
    }
}
