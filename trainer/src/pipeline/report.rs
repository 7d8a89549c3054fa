//! The pipeline's report: the paper-style table (test accuracy per task of SFT, SFT with
//! rationales, RLHF, RLLR and RLLR-mixed, with unparseable rates, plus a mean row), the reward
//! models' pairwise accuracy on held-out label-sensitive test pairs, λ, and each stage's wall
//! time. Built from the stages' own report files, rendered as Markdown and JSON.
//!
//! Accuracies alone cannot separate methods that differ by a few points on a few hundred
//! examples, so the report also gives what it takes to read them honestly: the test split's
//! majority-label rate next to each policy's most-predicted label (a policy that always answers
//! one label scores the majority rate), paired comparisons of the methods on the same examples
//! (difference, 95 % interval, exact McNemar p; [`crate::stats`]) from the eval stages'
//! `predictions.jsonl`, the diagnostics stage's reward-model AUCs and best-of-N accuracies when
//! that stage exists, and SVG plots ([`super::plots`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::plan::{POLICIES, REWARD_MODELS};
use crate::metrics::Prediction;
use crate::stats::{self, Paired};

/// Policies the pipeline may also evaluate (stage `eval-<key>`, same files as the others); a
/// column appears only when some task has one. Keys already in [`POLICIES`] are not repeated.
pub const OPTIONAL_POLICIES: [(&str, &str); 1] = [("best-of-n", "best-of-N (mixed)")];

/// The paired comparisons, (A, B) by policy key; a pair is listed when both were evaluated.
pub const COMPARISONS: [(&str, &str); 4] = [
    ("rllr-mixed", "sft"),
    ("rllr-mixed", "rlhf"),
    ("rllr", "rlhf"),
    ("best-of-n", "sft"),
];

/// AUC at or below which the label RM is said not to be able to guide the policy.
pub const AUC_USELESS: f64 = 0.6;

/// A policy's test score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyScore {
    pub accuracy: f64,
    pub unparseable_rate: f64,
    pub n: usize,
    /// The label this policy answered most often.
    pub top_label: Option<TopLabel>,
}

/// A policy's most-predicted label and the share of its answers that label got.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopLabel {
    pub label: String,
    pub share: f64,
}

/// A reward model's held-out pairwise accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairScore {
    pub accuracy: f64,
    pub n: usize,
}

/// Method A against method B on the same test examples.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub a: String,
    pub b: String,
    /// `None` when the predictions are missing or cover different examples (see `note`).
    pub stats: Option<Paired>,
    /// Why there are no stats, or, beside stats, that they cover only part of the split.
    pub note: Option<String>,
}

/// `diagnose/report.json`: how the reward models rank M_sft's own samples on the dev split.
pub use crate::onpolicy::diagnose::DiagnoseReport as Diagnostics;

/// One task's row; `None` where the stage has not produced a report (yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub task: String,
    /// In [`POLICIES`] order, then [`OPTIONAL_POLICIES`].
    pub policies: Vec<(String, Option<PolicyScore>)>,
    /// In [`REWARD_MODELS`] order.
    pub reward_models: Vec<(String, Option<PairScore>)>,
    /// λ the rllr-mixed run used (its report's `lambda`).
    pub lambda: Option<f64>,
    /// Share of the test split's most frequent gold label.
    pub majority_rate: Option<f64>,
    /// The [`COMPARISONS`] whose two policies were evaluated.
    pub comparisons: Vec<Comparison>,
    pub diagnostics: Option<Diagnostics>,
    /// SVG plots, relative to the run directory.
    pub plots: Vec<String>,
    /// What could not be read or drawn.
    pub notes: Vec<String>,
}

/// How a stage went in this invocation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageTime {
    pub task: String,
    pub stage: String,
    /// ran, skipped (current), not selected, planned
    pub status: String,
    /// This run's time, or the recorded time of the run that made the current outputs.
    pub wall_s: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub config: String,
    pub tasks: Vec<TaskRow>,
    pub stages: Vec<StageTime>,
    pub total_wall_s: f64,
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

/// Every policy key the report shows, with its title.
pub fn policy_columns() -> Vec<(&'static str, &'static str)> {
    let mut cols = POLICIES.to_vec();
    for extra in OPTIONAL_POLICIES {
        if !cols.iter().any(|(k, _)| *k == extra.0) {
            cols.push(extra);
        }
    }
    cols
}

fn title_of(key: &str) -> &str {
    policy_columns()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, t)| t)
}

/// `(most-predicted label, its share)` and the majority-label rate from a policy report's
/// `per_label` (`support`, `predicted`); `majority_rate` is taken as written when present.
fn label_balance(v: &Value) -> (Option<TopLabel>, Option<f64>) {
    let n = v["n"].as_u64().filter(|&n| n > 0).map(|n| n as f64);
    let labels = v["per_label"].as_array();
    let (Some(n), Some(labels)) = (n, labels) else {
        return (None, v["majority_rate"].as_f64());
    };
    let top = labels
        .iter()
        .filter_map(|l| Some((l["label"].as_str()?, l["predicted"].as_u64()?)))
        .max_by_key(|(_, p)| *p)
        .map(|(l, p)| TopLabel {
            label: l.to_string(),
            share: p as f64 / n,
        });
    let majority = v["majority_rate"].as_f64().or_else(|| {
        labels
            .iter()
            .filter_map(|l| l["support"].as_u64())
            .max()
            .map(|s| s as f64 / n)
    });
    (top, majority)
}

/// A task's row from `<task_dir>/eval-*/{report.json,predictions.jsonl}`,
/// `<task_dir>/ppo-rllr-mixed/report.json` and `<task_dir>/diagnose/report.json`; renders the
/// plots under `<task_dir>/plots/` (linked as `<task>/plots/…`, relative to the run directory).
pub fn task_row(task: &str, task_dir: &Path) -> TaskRow {
    let eval = |key: &str| read_json(&task_dir.join(format!("eval-{key}")).join("report.json"));
    let mut majority_rate = None;
    let policies = policy_columns()
        .iter()
        .map(|(key, _)| {
            let score = eval(key).and_then(|v| {
                let (top_label, majority) = label_balance(&v);
                majority_rate = majority_rate.or(majority);
                Some(PolicyScore {
                    accuracy: v["accuracy"].as_f64()?,
                    unparseable_rate: v["unparseable_rate"].as_f64()?,
                    n: v["n"].as_u64()? as usize,
                    top_label,
                })
            });
            (key.to_string(), score)
        })
        .collect::<Vec<_>>();
    let reward_models = REWARD_MODELS
        .iter()
        .map(|(key, _)| {
            let score = eval(key).and_then(|v| {
                Some(PairScore {
                    accuracy: v["accuracy"].as_f64()?,
                    n: v["n"].as_u64()? as usize,
                })
            });
            (key.to_string(), score)
        })
        .collect();
    let lambda = read_json(&task_dir.join("ppo-rllr-mixed").join("report.json"))
        .and_then(|v| v["lambda"].as_f64());
    let mut notes = Vec::new();
    let evaluated = |key: &str| policies.iter().any(|(k, s)| k == key && s.is_some());
    let comparisons = COMPARISONS
        .iter()
        .filter(|(a, b)| evaluated(a) && evaluated(b))
        .map(|(a, b)| compare(task_dir, a, b))
        .collect();
    let diagnostics = match std::fs::read_to_string(task_dir.join("diagnose/report.json")) {
        Err(_) => None,
        Ok(text) => match serde_json::from_str::<Diagnostics>(&text) {
            Ok(d) => Some(d),
            Err(e) => {
                notes.push(format!("diagnose/report.json unreadable: {e}"));
                None
            }
        },
    };
    let plots = match super::plots::write_task_plots(task_dir) {
        Ok(files) => files.into_iter().map(|f| format!("{task}/{f}")).collect(),
        Err(e) => {
            notes.push(format!("plots: {e}"));
            Vec::new()
        }
    };
    TaskRow {
        task: task.into(),
        policies,
        reward_models,
        lambda,
        majority_rate,
        comparisons,
        diagnostics,
        plots,
        notes,
    }
}

/// `eval-<key>/predictions.jsonl`, or why not.
fn read_predictions(task_dir: &Path, key: &str) -> Result<Vec<Prediction>, String> {
    let path = task_dir
        .join(format!("eval-{key}"))
        .join("predictions.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!("no eval-{key}/predictions.jsonl (evaluated before predictions were written: rerun with `--only eval-{key} --force`)")
    })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("eval-{key}/predictions.jsonl line {}: {e}", i + 1))
        })
        .collect()
}

/// A's and B's correctness on the examples both evaluated, matched by id.
#[derive(Debug, Clone, PartialEq)]
pub struct Aligned {
    pub a: Vec<bool>,
    pub b: Vec<bool>,
    /// Set when one evaluation covers only part of the other's examples (best-of-N on a prefix of
    /// the test split): the comparison is on those, and this says so.
    pub restricted: Option<String>,
}

/// A's and B's correctness matched by example id, in A's order. When one side's ids are a strict
/// subset of the other's, both are compared on that subset (and `restricted` says so); refused,
/// with the reason, when an id repeats or neither side covers the other.
pub fn align(a: &[Prediction], b: &[Prediction]) -> Result<Aligned, String> {
    let by_id: HashMap<&str, bool> = b.iter().map(|p| (p.id.as_str(), p.correct)).collect();
    let ids_a: HashSet<&str> = a.iter().map(|p| p.id.as_str()).collect();
    if ids_a.len() != a.len() || by_id.len() != b.len() {
        return Err("an example id occurs twice in the predictions".into());
    }
    let common: Vec<&Prediction> = a
        .iter()
        .filter(|p| by_id.contains_key(p.id.as_str()))
        .collect();
    let n = common.len();
    if n == 0 || (n < a.len() && n < b.len()) {
        return Err(format!(
            "the two evaluations cover different examples ({} and {} ids, {n} in common): not compared",
            a.len(),
            b.len()
        ));
    }
    let restricted = (n < a.len().max(b.len())).then(|| {
        format!(
            "on the {n} examples both evaluated (of {} and {}); both accuracies here are on those",
            a.len(),
            b.len()
        )
    });
    Ok(Aligned {
        a: common.iter().map(|p| p.correct).collect(),
        b: common.iter().map(|p| by_id[p.id.as_str()]).collect(),
        restricted,
    })
}

fn compare(task_dir: &Path, a: &str, b: &str) -> Comparison {
    let result = read_predictions(task_dir, a).and_then(|pa| {
        let pb = read_predictions(task_dir, b)?;
        let aligned = align(&pa, &pb)?;
        let s = stats::paired(&aligned.a, &aligned.b).map_err(|e| e.to_string())?;
        Ok((s, aligned.restricted))
    });
    let (stats, note) = match result {
        Ok((s, restricted)) => (Some(s), restricted),
        Err(e) => (None, Some(e)),
    };
    Comparison {
        a: a.into(),
        b: b.into(),
        stats,
        note,
    }
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let xs: Vec<f64> = v.flatten().collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{:.1}", 100.0 * x))
}

/// Signed points with a real minus sign, e.g. `+4.0`, `−2.5`.
fn points(x: f64) -> String {
    let s = format!("{:+.1}", 100.0 * x);
    s.replace('-', "−")
}

fn policy_cell(s: &Option<PolicyScore>) -> String {
    match s {
        Some(s) => format!(
            "{} ({})",
            pct(Some(s.accuracy)),
            pct(Some(s.unparseable_rate))
        ),
        None => "–".into(),
    }
}

fn auc_cell(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{x:.3}"))
}

/// The columns shown: every [`POLICIES`] one, an optional one only when some task has it.
fn shown_columns(r: &Report) -> Vec<(usize, &'static str, &'static str)> {
    policy_columns()
        .into_iter()
        .enumerate()
        .filter(|(i, (key, _))| {
            POLICIES.iter().any(|(k, _)| k == key)
                || r.tasks
                    .iter()
                    .any(|t| t.policies.get(*i).is_some_and(|p| p.1.is_some()))
        })
        .map(|(i, (k, t))| (i, k, t))
        .collect()
}

/// The report as Markdown.
pub fn render_markdown(r: &Report) -> String {
    let cols = shown_columns(r);
    let mut md = format!(
        "# rllr pipeline report\n\nConfig: `{}`. Test-split accuracy in % (unparseable answers in %, counted wrong); reward models: pairwise accuracy in % on held-out label-sensitive test pairs.\n\n",
        r.config
    );
    let mut head = String::from("| task |");
    let mut rule = String::from("|---|");
    for (_, _, title) in &cols {
        head.push_str(&format!(" {title} |"));
        rule.push_str("---:|");
    }
    for (_, title) in REWARD_MODELS {
        head.push_str(&format!(" {title} |"));
        rule.push_str("---:|");
    }
    md.push_str(&format!("{head} λ |\n{rule}---:|\n"));
    for t in &r.tasks {
        let mut line = format!("| {} |", t.task);
        for (i, _, _) in &cols {
            line.push_str(&format!(" {} |", policy_cell(&t.policies[*i].1)));
        }
        for (_, s) in &t.reward_models {
            line.push_str(&format!(" {} |", pct(s.map(|s| s.accuracy))));
        }
        let lambda = t.lambda.map_or_else(|| "–".into(), |l| format!("{l:.3}"));
        md.push_str(&format!("{line} {lambda} |\n"));
    }
    if r.tasks.len() > 1 {
        let mut line = String::from("| **mean** |");
        for (i, _, _) in &cols {
            let m = mean(
                r.tasks
                    .iter()
                    .map(|t| t.policies[*i].1.as_ref().map(|s| s.accuracy)),
            );
            line.push_str(&format!(" {} |", pct(m)));
        }
        for i in 0..REWARD_MODELS.len() {
            let m = mean(
                r.tasks
                    .iter()
                    .map(|t| t.reward_models[i].1.map(|s| s.accuracy)),
            );
            line.push_str(&format!(" {} |", pct(m)));
        }
        md.push_str(&format!("{line} |\n"));
    }
    render_balance(&mut md, r, &cols);
    render_comparisons(&mut md, r);
    render_diagnostics(&mut md, r);
    render_plots(&mut md, r);
    render_notes(&mut md, r);
    md.push_str("\n## Stages\n\n| task | stage | status | wall time (s) |\n|---|---|---|---:|\n");
    for s in &r.stages {
        let wall = s.wall_s.map_or_else(|| "–".into(), |w| format!("{w:.1}"));
        md.push_str(&format!(
            "| {} | {} | {} | {wall} |\n",
            s.task, s.stage, s.status
        ));
    }
    md.push_str(&format!(
        "\nThis invocation took {:.1} s.\n",
        r.total_wall_s
    ));
    md
}

fn render_balance(md: &mut String, r: &Report, cols: &[(usize, &str, &str)]) {
    if r.tasks.iter().all(|t| t.majority_rate.is_none()) {
        return;
    }
    md.push_str("\n## Label balance\n\nShare of the test split's most frequent gold label (what always answering it scores), and each policy's most-predicted label with its share of the answers, in %.\n\n| task | majority label |");
    let mut rule = String::from("|---|---:|");
    for (_, _, title) in cols {
        md.push_str(&format!(" {title} |"));
        rule.push_str("---|");
    }
    md.push_str(&format!("\n{rule}\n"));
    for t in &r.tasks {
        md.push_str(&format!("| {} | {} |", t.task, pct(t.majority_rate)));
        for (i, _, _) in cols {
            let cell = match t.policies[*i].1.as_ref().and_then(|s| s.top_label.as_ref()) {
                Some(top) => format!("{} {}", top.label, pct(Some(top.share))),
                None => "–".into(),
            };
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
}

fn render_comparisons(md: &mut String, r: &Report) {
    if r.tasks.iter().all(|t| t.comparisons.is_empty()) {
        return;
    }
    md.push_str("\n## Paired comparisons\n\nBoth policies on the same test examples, matched by id. Δ = accuracy of A − accuracy of B in points; 95 % CI: Wald on the paired differences, ±1.96·√(((b+c) − (b−c)²/n)/n²) (Newcombe's hybrid score interval after it); b: A right and B wrong, c: A wrong and B right; p: exact two-sided McNemar test (binomial on b of b + c at ½).\n\n| task | A | B | n | acc A | acc B | Δ | 95 % CI (Wald; Newcombe) | b | c | p |\n|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|\n");
    let mut notes = Vec::new();
    let mut restricted = Vec::new();
    for t in &r.tasks {
        for c in &t.comparisons {
            let (a, b) = (title_of(&c.a), title_of(&c.b));
            if let (Some(_), Some(note)) = (&c.stats, &c.note) {
                restricted.push(format!("- {}, {a} vs {b}: {note}\n", t.task));
            }
            match &c.stats {
                Some(s) => md.push_str(&format!(
                    "| {} | {a} | {b} | {} | {} | {} | {} | [{}, {}]; [{}, {}] | {} | {} | {} |\n",
                    t.task,
                    s.n,
                    pct(Some(s.accuracy_a)),
                    pct(Some(s.accuracy_b)),
                    points(s.diff),
                    points(s.ci95_wald.0),
                    points(s.ci95_wald.1),
                    points(s.ci95_newcombe.0),
                    points(s.ci95_newcombe.1),
                    s.b,
                    s.c,
                    p_value(s.p_mcnemar)
                )),
                None => notes.push(format!(
                    "- {}, {a} vs {b}: {}\n",
                    t.task,
                    c.note.as_deref().unwrap_or("not compared")
                )),
            }
        }
    }
    if !restricted.is_empty() {
        md.push_str("\nOn part of the test split:\n\n");
        md.push_str(&restricted.concat());
    }
    if !notes.is_empty() {
        md.push_str("\nNot compared:\n\n");
        md.push_str(&notes.concat());
    }
}

fn p_value(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn render_diagnostics(md: &mut String, r: &Report) {
    if r.tasks.iter().all(|t| t.diagnostics.is_none()) {
        return;
    }
    md.push_str("\n## Diagnostics (dev split)\n\nThe reward models scoring M_sft's own samples on dev prompts: AUC of each reward for telling right samples from wrong ones, and the accuracy of best-of-N (the sample with the highest reward out of k per prompt).\n");
    for t in &r.tasks {
        let Some(d) = &t.diagnostics else {
            continue;
        };
        let lambda = d.lambda.map_or_else(String::new, |l| format!("; λ {l:.3}"));
        md.push_str(&format!(
            "\n### {}\n\n{} prompts × k = {} samples at temperature {}; greedy accuracy {} %, sample accuracy {} %, oracle (some sample right) {} %{lambda}.\n\n| | label RM | rationale RM | mixed |\n|---|---:|---:|---:|\n| RM AUC on M_sft's own dev samples | {} | {} | {} |\n| best-of-N on dev (%) | {} | {} | {} |\n",
            t.task,
            d.n_prompts,
            d.k,
            d.temperature,
            pct(Some(d.greedy_accuracy)),
            pct(Some(d.sample_accuracy)),
            pct(Some(d.oracle_accuracy)),
            auc_cell(d.auc_label),
            auc_cell(d.auc_rationale),
            auc_cell(d.auc_mixed),
            pct(Some(d.best_of_n.label)),
            pct(Some(d.best_of_n.rationale)),
            pct(Some(d.best_of_n.mixed)),
        ));
        if d.auc_label.is_some_and(|a| a <= AUC_USELESS) {
            md.push_str(&format!(
                "\n**{}: the label RM cannot guide the policy (AUC ≤ {AUC_USELESS}).**\n",
                t.task
            ));
        }
    }
}

fn render_plots(md: &mut String, r: &Report) {
    if r.tasks.iter().all(|t| t.plots.is_empty()) {
        return;
    }
    md.push_str("\n## Plots\n\n");
    for t in &r.tasks {
        for p in &t.plots {
            md.push_str(&format!("- {}: [{p}]({p})\n", t.task));
        }
    }
}

fn render_notes(md: &mut String, r: &Report) {
    if r.tasks.iter().all(|t| t.notes.is_empty()) {
        return;
    }
    md.push_str("\n## Notes\n\n");
    for t in &r.tasks {
        for n in &t.notes {
            md.push_str(&format!("- {}: {n}\n", t.task));
        }
    }
}

/// Write `report.md` and `report.json` into `run_dir`, atomically.
pub fn write(run_dir: &Path, r: &Report) -> anyhow::Result<()> {
    rllr_core::fsutil::write_file_atomic(
        &run_dir.join("report.md"),
        render_markdown(r).as_bytes(),
    )?;
    rllr_core::fsutil::write_file_atomic(
        &run_dir.join("report.json"),
        serde_json::to_string_pretty(r)?.as_bytes(),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(accuracy: f64) -> PolicyScore {
        PolicyScore {
            accuracy,
            unparseable_rate: 0.02,
            n: 100,
            top_label: Some(TopLabel {
                label: "a".into(),
                share: 0.5,
            }),
        }
    }

    fn row(task: &str, accs: [f64; 5], rm: [f64; 2], lambda: Option<f64>) -> TaskRow {
        let mut policies: Vec<(String, Option<PolicyScore>)> = POLICIES
            .iter()
            .zip(accs)
            .map(|((k, _), a)| (k.to_string(), Some(score(a))))
            .collect();
        policies.push(("best-of-n".into(), None));
        TaskRow {
            task: task.into(),
            policies,
            reward_models: REWARD_MODELS
                .iter()
                .zip(rm)
                .map(|((k, _), a)| {
                    (
                        k.to_string(),
                        Some(PairScore {
                            accuracy: a,
                            n: 200,
                        }),
                    )
                })
                .collect(),
            lambda,
            majority_rate: None,
            comparisons: Vec::new(),
            diagnostics: None,
            plots: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn report(tasks: Vec<TaskRow>) -> Report {
        Report {
            config: "configs/x.toml".into(),
            tasks,
            stages: Vec::new(),
            total_wall_s: 1.0,
        }
    }

    #[test]
    fn table_has_one_row_per_task_and_a_mean() {
        let mut b = row("esnli", [0.5, 0.6, 0.7, 0.8, 0.9], [0.9, 0.6], None);
        b.policies[4].1 = None;
        let r = Report {
            config: "configs/x.toml".into(),
            tasks: vec![
                row(
                    "comve",
                    [0.6, 0.7, 0.71, 0.74, 0.75],
                    [0.8, 0.55],
                    Some(1.25),
                ),
                b,
            ],
            stages: vec![StageTime {
                task: "comve".into(),
                stage: "sft".into(),
                status: "ran".into(),
                wall_s: Some(312.04),
            }],
            total_wall_s: 400.0,
        };
        let md = render_markdown(&r);
        assert!(md.contains("| task | SFT | SFT + rationales | RLHF | RLLR | RLLR-mixed | RM label | RM rationale | λ |"), "{md}");
        assert!(md.contains("| comve | 60.0 (2.0) | 70.0 (2.0) | 71.0 (2.0) | 74.0 (2.0) | 75.0 (2.0) | 80.0 | 55.0 | 1.250 |"), "{md}");
        assert!(md.contains("| esnli | 50.0 (2.0) | 60.0 (2.0) | 70.0 (2.0) | 80.0 (2.0) | – | 90.0 | 60.0 | – |"), "{md}");
        // means over the tasks that have the number: RLLR-mixed has only comve's 75
        assert!(
            md.contains("| **mean** | 55.0 | 65.0 | 70.5 | 77.0 | 75.0 | 85.0 | 57.5 | |"),
            "{md}"
        );
        assert!(md.contains("| comve | sft | ran | 312.0 |"), "{md}");
        assert!(
            !md.contains("best-of-N"),
            "no best-of-N column without one: {md}"
        );
        let json: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tasks"][0]["lambda"], 1.25);
    }

    #[test]
    fn best_of_n_gets_a_column_when_some_task_has_it() {
        let mut a = row("comve", [0.6, 0.7, 0.71, 0.74, 0.75], [0.8, 0.55], None);
        a.policies[5].1 = Some(score(0.8));
        let b = row("esnli", [0.5, 0.6, 0.7, 0.8, 0.9], [0.9, 0.6], None);
        let md = render_markdown(&report(vec![a, b]));
        assert!(
            md.contains("| RLLR-mixed | best-of-N (mixed) | RM label |"),
            "{md}"
        );
        assert!(md.contains("| 75.0 (2.0) | 80.0 (2.0) | 80.0 |"), "{md}");
        assert!(
            md.contains(
                "| esnli | 50.0 (2.0) | 60.0 (2.0) | 70.0 (2.0) | 80.0 (2.0) | 90.0 (2.0) | – |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 82.5 | 80.0 | 85.0 |"),
            "mean of best-of-N over comve only: {md}"
        );
    }

    fn put(dir: &Path, rel: &str, text: &str) {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn policy_report(n: usize, accuracy: f64) -> String {
        serde_json::json!({"n": n, "accuracy": accuracy, "unparseable_rate": 0.0}).to_string()
    }

    /// Predictions with the given ids and correctness.
    fn predictions(rows: &[(&str, bool)]) -> String {
        rows.iter()
            .map(|(id, ok)| {
                serde_json::json!({"id": id, "gold": "a", "pred": "a", "correct": ok, "text": "t"})
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn rows_are_read_from_stage_reports() {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            "eval-sft/report.json",
            &serde_json::json!({"n": 10, "accuracy": 0.7, "unparseable_rate": 0.1,
            "per_label": [
                {"label": "yes", "support": 6, "predicted": 2},
                {"label": "no", "support": 4, "predicted": 7}
            ]})
            .to_string(),
        );
        put(
            dir.path(),
            "eval-rm-label/report.json",
            &serde_json::json!({"n": 20, "accuracy": 0.9}).to_string(),
        );
        put(
            dir.path(),
            "ppo-rllr-mixed/report.json",
            &serde_json::json!({"steps": 3, "wall_s": 1.0, "lambda": 2.5}).to_string(),
        );
        let r = task_row("comve", dir.path());
        assert_eq!(
            r.policies[1].1,
            Some(PolicyScore {
                accuracy: 0.7,
                unparseable_rate: 0.1,
                n: 10,
                top_label: Some(TopLabel {
                    label: "no".into(),
                    share: 0.7,
                }),
            })
        );
        assert_eq!(r.policies[0].1, None);
        assert_eq!(r.majority_rate, Some(0.6), "6 of 10 gold labels are yes");
        assert_eq!(
            r.reward_models[0].1,
            Some(PairScore {
                accuracy: 0.9,
                n: 20
            })
        );
        assert_eq!(r.lambda, Some(2.5));
        assert!(r.comparisons.is_empty() && r.plots.is_empty() && r.notes.is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["policies"][1][1]["top_label"],
            serde_json::json!({"label": "no", "share": 0.7})
        );
        assert_eq!(json["majority_rate"], 0.6);
        let md = render_markdown(&report(vec![r]));
        assert!(
            md.contains("| comve | 60.0 | – | no 70.0 | – | – | – |"),
            "label balance row: {md}"
        );
    }

    #[test]
    fn paired_comparisons_match_predictions_by_id() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["sft", "rllr-mixed", "rlhf"] {
            put(
                dir.path(),
                &format!("eval-{key}/report.json"),
                &policy_report(4, 0.5),
            );
        }
        // rllr-mixed right on e1, e2, e3; sft (other order) right on e4 only:
        // b = 3 (e1, e2, e3), c = 1 (e4) → Δ = +0.5, p = 2·(1 + 4)/16 = 0.625
        put(
            dir.path(),
            "eval-rllr-mixed/predictions.jsonl",
            &predictions(&[("e1", true), ("e2", true), ("e3", true), ("e4", false)]),
        );
        put(
            dir.path(),
            "eval-sft/predictions.jsonl",
            &predictions(&[("e4", true), ("e3", false), ("e2", false), ("e1", false)]),
        );
        let r = task_row("comve", dir.path());
        let pairs: Vec<(&str, &str)> = r
            .comparisons
            .iter()
            .map(|c| (c.a.as_str(), c.b.as_str()))
            .collect();
        assert_eq!(pairs, vec![("rllr-mixed", "sft"), ("rllr-mixed", "rlhf")]);
        let s = r.comparisons[0].stats.unwrap();
        assert_eq!((s.n, s.b, s.c), (4, 3, 1));
        assert!((s.diff - 0.5).abs() < 1e-12);
        assert!((s.p_mcnemar - 0.625).abs() < 1e-12);
        // eval-rlhf has a report but no predictions: said so, not dropped
        assert!(r.comparisons[1].stats.is_none());
        assert!(
            r.comparisons[1]
                .note
                .as_deref()
                .unwrap()
                .contains("no eval-rlhf/predictions.jsonl"),
            "{:?}",
            r.comparisons[1].note
        );
        let md = render_markdown(&report(vec![r.clone()]));
        assert!(
            md.contains("| comve | RLLR-mixed | SFT + rationales | 4 | 75.0 | 25.0 | +50.0 |"),
            "{md}"
        );
        assert!(md.contains("| 3 | 1 | 0.6250 |"), "{md}");
        assert!(
            md.contains("- comve, RLLR-mixed vs RLHF: no eval-rlhf/predictions.jsonl"),
            "{md}"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["comparisons"][0]["stats"]["b"], 3);
        assert_eq!(json["comparisons"][0]["stats"]["p_mcnemar"], 0.625);
    }

    #[test]
    fn different_id_sets_are_refused() {
        let a = vec![pred("e1", true), pred("e2", true)];
        let b = vec![pred("e1", true), pred("e3", false)];
        let e = align(&a, &b).unwrap_err();
        assert!(
            e.contains("different examples (2 and 2 ids, 1 in common)"),
            "{e}"
        );
        let dup = vec![pred("e1", true), pred("e1", false)];
        assert!(align(&dup, &a).unwrap_err().contains("twice"));
    }

    #[test]
    fn a_subset_is_compared_on_its_examples() {
        // best-of-N on a prefix (e2, e1) of the full split (e1, e2, e3)
        let bon = vec![pred("e2", true), pred("e1", false)];
        let full = vec![pred("e1", true), pred("e2", false), pred("e3", true)];
        let al = align(&bon, &full).unwrap();
        assert_eq!((al.a, al.b), (vec![true, false], vec![false, true]));
        assert!(
            al.restricted
                .as_deref()
                .unwrap()
                .contains("on the 2 examples both evaluated (of 2 and 3)"),
            "{:?}",
            al.restricted
        );
        assert!(align(&full, &full).unwrap().restricted.is_none());
    }

    fn pred(id: &str, correct: bool) -> Prediction {
        Prediction {
            id: id.into(),
            gold: "a".into(),
            pred: None,
            correct,
            text: String::new(),
        }
    }

    #[test]
    fn best_of_n_is_compared_with_sft_when_present() {
        let dir = tempfile::tempdir().unwrap();
        for key in ["sft", "best-of-n"] {
            put(
                dir.path(),
                &format!("eval-{key}/report.json"),
                &policy_report(2, 0.5),
            );
        }
        put(
            dir.path(),
            "eval-sft/predictions.jsonl",
            &predictions(&[("e1", true), ("e2", true)]),
        );
        put(
            dir.path(),
            "eval-best-of-n/predictions.jsonl",
            &predictions(&[("e1", true), ("e2", true)]),
        );
        let r = task_row("comve", dir.path());
        assert_eq!(r.policies[5].0, "best-of-n");
        assert!(r.policies[5].1.is_some());
        assert_eq!(r.comparisons.len(), 1);
        let s = r.comparisons[0].stats.unwrap();
        assert_eq!((s.b, s.c, s.p_mcnemar, s.diff), (0, 0, 1.0, 0.0));
        let md = render_markdown(&report(vec![r]));
        assert!(
            md.contains("| comve | best-of-N (mixed) | SFT + rationales | 2 |"),
            "{md}"
        );
    }

    fn diagnostics(auc_label: Option<f64>) -> String {
        serde_json::json!({
            "n_prompts": 64, "k": 8, "temperature": 1.0,
            "auc_label": auc_label, "auc_rationale": 0.71, "auc_mixed": null,
            "greedy_accuracy": 0.5, "best_of_n": {"label": 0.55, "rationale": 0.6, "mixed": 0.625},
            "oracle_accuracy": 0.9, "sample_accuracy": 0.48, "lambda": 3.5
        })
        .to_string()
    }

    #[test]
    fn diagnostics_are_rendered_and_a_useless_label_rm_is_named() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "diagnose/report.json", &diagnostics(Some(0.55)));
        let r = task_row("comve", dir.path());
        assert_eq!(r.diagnostics.as_ref().unwrap().auc_label, Some(0.55));
        let md = render_markdown(&report(vec![r]));
        assert!(md.contains("64 prompts × k = 8 samples at temperature 1; greedy accuracy 50.0 %, sample accuracy 48.0 %, oracle (some sample right) 90.0 %; λ 3.500."), "{md}");
        assert!(
            md.contains("| RM AUC on M_sft's own dev samples | 0.550 | 0.710 | – |"),
            "{md}"
        );
        assert!(
            md.contains("| best-of-N on dev (%) | 55.0 | 60.0 | 62.5 |"),
            "{md}"
        );
        assert!(
            md.contains("the label RM cannot guide the policy (AUC ≤ 0.6)"),
            "{md}"
        );
    }

    #[test]
    fn a_useful_label_rm_is_not_called_useless() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "diagnose/report.json", &diagnostics(Some(0.61)));
        let md = render_markdown(&report(vec![task_row("comve", dir.path())]));
        assert!(md.contains("| 0.610 |"), "{md}");
        assert!(!md.contains("cannot guide"), "{md}");
    }

    #[test]
    fn a_malformed_diagnostics_file_is_noted() {
        let dir = tempfile::tempdir().unwrap();
        put(dir.path(), "diagnose/report.json", "{\"k\": 8}");
        let r = task_row("comve", dir.path());
        assert!(r.diagnostics.is_none());
        assert!(
            r.notes[0].starts_with("diagnose/report.json unreadable"),
            "{:?}",
            r.notes
        );
    }

    #[test]
    fn plots_are_linked_relative_to_the_run_dir() {
        let run = tempfile::tempdir().unwrap();
        let task_dir = run.path().join("comve");
        put(
            &task_dir,
            "ppo-rllr/metrics.jsonl",
            r#"{"step": 1, "objective/scores": 0.5, "objective/kl": 0.0, "rollout/label_accuracy": 0.5}"#,
        );
        let r = task_row("comve", &task_dir);
        assert_eq!(r.plots, vec!["comve/plots/ppo.svg"]);
        assert!(run.path().join(&r.plots[0]).is_file());
        let md = render_markdown(&report(vec![r]));
        assert!(
            md.contains("- comve: [comve/plots/ppo.svg](comve/plots/ppo.svg)"),
            "{md}"
        );
    }
}
