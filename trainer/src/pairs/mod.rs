//! Preference pairs for the reward models, deterministic given a seed:
//!
//! - **label-sensitive** (RLLR, D3/D4): same input, chosen = a rationale for the gold label +
//!   the gold answer line, rejected = a rationale for a wrong label + that label's answer line;
//!   k wrong labels per example (all, or k sampled by seed);
//! - **rationale-sensitive** (the RLHF baseline, D5): same input and gold label, two rationales
//!   ordered by a [`Judge`];
//! - **held-out label-sensitive test pairs**: label pairs over a split that shares no input with
//!   the training split, for reward-model accuracy.
//!
//! Rationales come from the examples themselves and from `rllr-train rationalize` output files.
//! On-policy pairs (M_sft's own samples) are built in [`crate::onpolicy::pairs`]; the
//! `rllr-train pairs` command that drives all three (and the on-policy one) is in [`command`].

mod command;

pub use command::{run, LabelArgs, PairInputs, PairsArgs, PairsCommand, RationaleArgs, TestArgs};

use std::collections::{BTreeMap, HashSet};

use rllr_core::dataset::{Example, Pair, PairKind, Rationale};
use rllr_core::task::TaskSpec;

use crate::data::rationales::RationaleRecord;
use crate::data::split::{input_key, rank_key};

/// How many wrong labels each example gets (D3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WrongLabels {
    /// Every wrong label (k−1 for a k-way task).
    All,
    /// At most this many, sampled per example by seed.
    Sample(usize),
}

impl std::str::FromStr for WrongLabels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "all" => Ok(WrongLabels::All),
            n => n
                .parse::<usize>()
                .ok()
                .filter(|&k| k >= 1)
                .map(WrongLabels::Sample)
                .ok_or_else(|| format!("expected 'all' or a count >= 1, got '{s}'")),
        }
    }
}

impl WrongLabels {
    /// Wrong labels per example for a task with `n_labels` labels.
    pub fn per_example(self, n_labels: usize) -> usize {
        match self {
            WrongLabels::All => n_labels - 1,
            WrongLabels::Sample(k) => k.min(n_labels - 1),
        }
    }
}

/// Why pairs could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Core(#[from] rllr_core::Error),
    #[error("{0}")]
    Invalid(String),
}

/// The wrong labels of `ex` to use, in task order (sampled ones chosen by seeded hash).
pub fn wrong_labels<'t>(
    task: &'t TaskSpec,
    ex: &Example,
    k: WrongLabels,
    seed: u64,
) -> Vec<&'t str> {
    let mut wrong: Vec<&str> = task
        .labels
        .iter()
        .map(|l| l.name.as_str())
        .filter(|&l| l != ex.label)
        .collect();
    if let WrongLabels::Sample(n) = k {
        wrong.sort_by_key(|l| rank_key(seed, &format!("{}\u{0}{l}", ex.id)));
        wrong.truncate(n);
        wrong.sort_by_key(|l| task.label_index(l).unwrap_or(usize::MAX));
    }
    wrong
}

/// Rationales per example id and label: the examples' own plus those from rationale files.
pub type RationalePool = BTreeMap<String, BTreeMap<String, Vec<Rationale>>>;

/// Build the pool from examples and extra rationale records (records for unknown ids are ignored).
pub fn rationale_pool(examples: &[Example], records: &[RationaleRecord]) -> RationalePool {
    let mut pool: RationalePool = examples
        .iter()
        .map(|e| (e.id.clone(), e.rationales.clone()))
        .collect();
    for r in records {
        if let Some(by_label) = pool.get_mut(&r.id) {
            let v = by_label.entry(r.label.clone()).or_default();
            let new = Rationale {
                text: r.text.clone(),
                source: r.source.clone(),
            };
            if !v.contains(&new) {
                v.push(new);
            }
        }
    }
    pool
}

/// One rationale for (example, label), chosen by seeded hash among those available.
fn pick<'p>(pool: &'p RationalePool, seed: u64, id: &str, label: &str) -> Option<&'p Rationale> {
    pick_where(pool, seed, id, label, |_| true)
}

/// [`pick`] among the rationales that pass `keep`.
fn pick_where<'p>(
    pool: &'p RationalePool,
    seed: u64,
    id: &str,
    label: &str,
    keep: impl Fn(&Rationale) -> bool,
) -> Option<&'p Rationale> {
    let v = pool.get(id)?.get(label)?;
    v.iter()
        .filter(|r| keep(r))
        .min_by_key(|r| rank_key(seed, &format!("{id}\u{0}{label}\u{0}{}", r.text)))
}

/// The gold-label rationale of a label pair: one by the writer of the wrong-label side when the
/// example has one (D2: one writer, one prompt, for every label), so that a label RM learns
/// which label the rationale argues for, not who wrote it (e-SNLI's gold labels carry human
/// rationales, its wrong labels only the teacher's); otherwise any, by [`pick`].
fn pick_gold<'p>(
    pool: &'p RationalePool,
    seed: u64,
    ex: &Example,
    writer: Option<&str>,
) -> Option<&'p Rationale> {
    writer
        .and_then(|w| pick_where(pool, seed, &ex.id, &ex.label, |r| r.source == w))
        .or_else(|| pick(pool, seed, &ex.id, &ex.label))
}

/// Label pairs, and the ids of examples left out because a needed rationale was missing.
#[derive(Debug, Default)]
pub struct Built {
    pub pairs: Vec<Pair>,
    pub incomplete: Vec<String>,
}

/// Label-sensitive pairs: `k` per example with every needed rationale. Checks the count is
/// (complete examples) × k and that no pair has chosen == rejected.
pub fn label_pairs(
    task: &TaskSpec,
    examples: &[Example],
    pool: &RationalePool,
    k: WrongLabels,
    seed: u64,
) -> Result<Built, PairError> {
    let format = task.response_format();
    let display = |l: &str| -> Result<String, PairError> {
        Ok(task.labels[task.label_index(l)?].display().to_string())
    };
    let mut out = Built::default();
    for ex in examples {
        let wrong = wrong_labels(task, ex, k, seed);
        let rejected: Option<Vec<(&str, &Rationale)>> = wrong
            .iter()
            .map(|&w| pick(pool, seed, &ex.id, w).map(|r| (w, r)))
            .collect();
        let writer = rejected
            .as_ref()
            .and_then(|r| r.first())
            .map(|(_, r)| r.source.as_str());
        let gold = pick_gold(pool, seed, ex, writer);
        let (Some(gold), Some(rejected)) = (gold, rejected) else {
            out.incomplete.push(ex.id.clone());
            continue;
        };
        let chosen = format.render(&gold.text, &display(&ex.label)?);
        for (w, r) in rejected {
            out.pairs.push(Pair {
                id: format!("{}:{}>{}", ex.id, ex.label, w),
                task: task.name.clone(),
                kind: PairKind::Label,
                input: ex.input.clone(),
                chosen: chosen.clone(),
                rejected: format.render(&r.text, &display(w)?),
                chosen_label: ex.label.clone(),
                rejected_label: w.to_string(),
            });
        }
    }
    let complete = examples.len() - out.incomplete.len();
    let want = complete * k.per_example(task.labels.len());
    if out.pairs.len() != want {
        return Err(PairError::Invalid(format!(
            "built {} label pairs, expected {complete} examples × {} = {want}",
            out.pairs.len(),
            k.per_example(task.labels.len())
        )));
    }
    check_distinct(&out.pairs)?;
    Ok(out)
}

/// Held-out label-sensitive test pairs: every wrong label, over examples none of whose inputs
/// occur in `train` (normalised text); an overlap is an error naming the example.
pub fn test_pairs(
    task: &TaskSpec,
    test: &[Example],
    train: &[Example],
    pool: &RationalePool,
    seed: u64,
) -> Result<Built, PairError> {
    let seen: HashSet<String> = train.iter().map(|e| input_key(&e.input)).collect();
    if let Some(ex) = test.iter().find(|e| seen.contains(&input_key(&e.input))) {
        return Err(PairError::Invalid(format!(
            "test example '{}' has the same input as a training example; pairs would not be held out",
            ex.id
        )));
    }
    label_pairs(task, test, pool, WrongLabels::All, seed)
}

pub(crate) fn check_distinct(pairs: &[Pair]) -> Result<(), PairError> {
    match pairs.iter().find(|p| p.chosen == p.rejected) {
        Some(p) => Err(PairError::Invalid(format!(
            "pair '{}' has chosen == rejected",
            p.id
        ))),
        None => Ok(()),
    }
}

/// A rationale offered to a judge: its text and source, and whether it was written for the gold
/// label (a rationale written for another label is a natural "worse" rationale).
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub rationale: &'a Rationale,
    pub for_gold: bool,
}

/// Orders rationales of one example by quality; lower rank is better, `None` = cannot judge.
pub trait Judge {
    fn rank(&self, c: &Candidate<'_>) -> Option<usize>;
}

/// Judges by source: an ordered list of source prefixes, best first (`human`, `openai:`,
/// `local:`); rationales written for a wrong label rank below all of them.
#[derive(Debug, Clone)]
pub struct SourceRank {
    pub order: Vec<String>,
}

impl Judge for SourceRank {
    fn rank(&self, c: &Candidate<'_>) -> Option<usize> {
        if !c.for_gold {
            return Some(self.order.len());
        }
        self.order
            .iter()
            .position(|p| c.rationale.source == *p || c.rationale.source.starts_with(p.as_str()))
    }
}

/// Rationale-sensitive pairs: for each example, the best-ranked gold rationale against the
/// worst-ranked candidate (gold rationales, plus wrong-label rationales when
/// `use_wrong_label_rationales`), both rendered with the gold label. Ties within a rank are
/// broken by seeded hash; examples whose candidates all share one rank give no pair.
pub fn rationale_pairs(
    task: &TaskSpec,
    examples: &[Example],
    pool: &RationalePool,
    judge: &dyn Judge,
    use_wrong_label_rationales: bool,
    seed: u64,
) -> Result<Vec<Pair>, PairError> {
    let format = task.response_format();
    let mut pairs = Vec::new();
    for ex in examples {
        let Some(by_label) = pool.get(&ex.id) else {
            continue;
        };
        let mut ranked: Vec<(usize, [u8; 32], &Rationale)> = by_label
            .iter()
            .filter(|(l, _)| use_wrong_label_rationales || **l == ex.label)
            .flat_map(|(l, rs)| rs.iter().map(move |r| (l == &ex.label, r)))
            .filter_map(|(for_gold, r)| {
                let rank = judge.rank(&Candidate {
                    rationale: r,
                    for_gold,
                })?;
                Some((
                    rank,
                    rank_key(seed, &format!("{}\u{0}{}", ex.id, r.text)),
                    r,
                ))
            })
            .collect();
        ranked.sort_by_key(|a| (a.0, a.1));
        let (Some(best), Some(worst)) = (ranked.first(), ranked.last()) else {
            continue;
        };
        if best.0 == worst.0 || best.2.text == worst.2.text {
            continue;
        }
        let label = task.labels[task.label_index(&ex.label)?].display();
        pairs.push(Pair {
            id: format!("{}:{}", ex.id, ex.label),
            task: task.name.clone(),
            kind: PairKind::Rationale,
            input: ex.input.clone(),
            chosen: format.render(&best.2.text, label),
            rejected: format.render(&worst.2.text, label),
            chosen_label: ex.label.clone(),
            rejected_label: ex.label.clone(),
        });
    }
    check_distinct(&pairs)?;
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rllr_core::task::TaskInput;

    fn nli() -> TaskSpec {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../data/tasks/esnli.json"
        ))
        .unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn r(text: &str, source: &str) -> Rationale {
        Rationale {
            text: text.into(),
            source: source.into(),
        }
    }

    fn examples(n: usize) -> Vec<Example> {
        let labels = ["entailment", "neutral", "contradiction"];
        (0..n)
            .map(|i| {
                let mut rationales = BTreeMap::new();
                for l in labels {
                    rationales.insert(l.to_string(), vec![r(&format!("{i} is {l}."), "local:m")]);
                }
                rationales
                    .get_mut(labels[i % 3])
                    .unwrap()
                    .push(r(&format!("Human says {i}."), "human"));
                Example {
                    id: format!("e{i}"),
                    task: "esnli".into(),
                    input: TaskInput::Pair(format!("p{i}"), format!("h{i}")),
                    label: labels[i % 3].into(),
                    rationales,
                }
            })
            .collect()
    }

    #[test]
    fn label_pairs_count_is_n_times_k_and_seeded() {
        let task = nli();
        let exs = examples(10);
        let pool = rationale_pool(&exs, &[]);
        let all = label_pairs(&task, &exs, &pool, WrongLabels::All, 1).unwrap();
        assert_eq!(all.pairs.len(), 20);
        let one = label_pairs(&task, &exs, &pool, WrongLabels::Sample(1), 1).unwrap();
        assert_eq!(one.pairs.len(), 10);
        let again = label_pairs(&task, &exs, &pool, WrongLabels::Sample(1), 1).unwrap();
        assert_eq!(one.pairs, again.pairs);
        let other = label_pairs(&task, &exs, &pool, WrongLabels::Sample(1), 2).unwrap();
        assert_ne!(one.pairs, other.pairs, "another seed samples other labels");
        for p in &all.pairs {
            assert_ne!(p.chosen_label, p.rejected_label);
            assert!(p.chosen.ends_with(&format!("Answer: {}", p.chosen_label)));
        }
    }

    #[test]
    fn the_gold_side_has_the_wrong_sides_writer() {
        // Every gold label has a human and a teacher rationale, wrong labels only the teacher's:
        // with any seed, the chosen side is the teacher's, never the human one.
        let task = nli();
        let exs = examples(9);
        let pool = rationale_pool(&exs, &[]);
        for seed in 0..4 {
            let b = label_pairs(&task, &exs, &pool, WrongLabels::All, seed).unwrap();
            assert_eq!(b.pairs.len(), 18);
            assert!(
                b.pairs.iter().all(|p| !p.chosen.starts_with("Human says")),
                "seed {seed}: {:?}",
                b.pairs.iter().map(|p| &p.chosen).collect::<Vec<_>>()
            );
        }
        // No rationale by that writer for the gold label: any gold rationale is used.
        let mut exs = examples(1);
        exs[0]
            .rationales
            .get_mut("entailment")
            .unwrap()
            .retain(|r| r.source == "human");
        let pool = rationale_pool(&exs, &[]);
        let b = label_pairs(&task, &exs, &pool, WrongLabels::All, 0).unwrap();
        assert!(b.pairs.iter().all(|p| p.chosen.starts_with("Human says")));
    }

    #[test]
    fn missing_rationales_skip_the_example() {
        let task = nli();
        let mut exs = examples(3);
        exs[0].rationales.remove("neutral");
        let pool = rationale_pool(&exs, &[]);
        let b = label_pairs(&task, &exs, &pool, WrongLabels::All, 0).unwrap();
        assert_eq!(b.incomplete, vec!["e0".to_string()]);
        assert_eq!(b.pairs.len(), 4);
    }

    #[test]
    fn identical_responses_are_refused() {
        let task = nli();
        let mut exs = examples(1);
        let same = r("Same.", "x");
        exs[0].rationales.clear();
        exs[0]
            .rationales
            .insert("entailment".into(), vec![same.clone()]);
        exs[0].rationales.insert("neutral".into(), vec![same]);
        exs[0].label = "entailment".into();
        // Different labels render different answer lines, so identical pairs can only come from
        // a rationale judge picking one text twice; that is skipped, never written.
        let pool = rationale_pool(&exs, &[]);
        let judge = SourceRank {
            order: vec!["x".into()],
        };
        assert!(rationale_pairs(&task, &exs, &pool, &judge, true, 0)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn rationale_pairs_prefer_the_judged_better_source() {
        let task = nli();
        let exs = examples(6);
        let pool = rationale_pool(&exs, &[]);
        let judge = SourceRank {
            order: vec!["human".into(), "local:".into()],
        };
        let pairs = rationale_pairs(&task, &exs, &pool, &judge, false, 0).unwrap();
        assert_eq!(pairs.len(), 6);
        assert!(pairs.iter().all(|p| p.chosen.starts_with("Human says")));
        assert!(pairs.iter().all(|p| p.chosen_label == p.rejected_label));
    }

    #[test]
    fn test_pairs_refuse_inputs_seen_in_training() {
        let task = nli();
        let exs = examples(4);
        let pool = rationale_pool(&exs, &[]);
        let (train, test) = exs.split_at(2);
        assert_eq!(
            test_pairs(&task, test, train, &pool, 0)
                .unwrap()
                .pairs
                .len(),
            4
        );
        let e = test_pairs(&task, &exs, train, &pool, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("'e0'"), "{e}");
    }
}
