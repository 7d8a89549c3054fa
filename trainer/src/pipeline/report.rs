//! The pipeline's report: the paper-style table (test accuracy per task of SFT, SFT with
//! rationales, RLHF, RLLR and RLLR-mixed, with unparseable rates, plus a mean row), the reward
//! models' pairwise accuracy on held-out label-sensitive test pairs, λ, and each stage's wall
//! time. Built from the stages' own report files, rendered as Markdown and JSON.

use std::path::Path;

use serde::Serialize;
use serde_json::Value;

use super::plan::{POLICIES, REWARD_MODELS};

/// A policy's test score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PolicyScore {
    pub accuracy: f64,
    pub unparseable_rate: f64,
    pub n: usize,
}

/// A reward model's held-out pairwise accuracy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PairScore {
    pub accuracy: f64,
    pub n: usize,
}

/// One task's row; `None` where the stage has not produced a report (yet).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRow {
    pub task: String,
    /// In [`POLICIES`] order.
    pub policies: Vec<(String, Option<PolicyScore>)>,
    /// In [`REWARD_MODELS`] order.
    pub reward_models: Vec<(String, Option<PairScore>)>,
    /// λ the rllr-mixed run used (its report's `lambda`).
    pub lambda: Option<f64>,
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

/// A task's row from `<task_dir>/eval-*/report.json` and `<task_dir>/ppo-rllr-mixed/report.json`.
pub fn task_row(task: &str, task_dir: &Path) -> TaskRow {
    let eval = |key: &str| read_json(&task_dir.join(format!("eval-{key}")).join("report.json"));
    let policies = scores(&POLICIES, &eval, |v| {
        Some(PolicyScore {
            accuracy: v["accuracy"].as_f64()?,
            unparseable_rate: v["unparseable_rate"].as_f64()?,
            n: v["n"].as_u64()? as usize,
        })
    });
    let reward_models = scores(&REWARD_MODELS, &eval, |v| {
        Some(PairScore {
            accuracy: v["accuracy"].as_f64()?,
            n: v["n"].as_u64()? as usize,
        })
    });
    let lambda = read_json(&task_dir.join("ppo-rllr-mixed").join("report.json"))
        .and_then(|v| v["lambda"].as_f64());
    TaskRow {
        task: task.into(),
        policies,
        reward_models,
        lambda,
    }
}

/// One score per key, parsed from that key's evaluation report (`None` when absent).
fn scores<T>(
    keys: &[(&str, &str)],
    eval: &dyn Fn(&str) -> Option<Value>,
    parse: fn(&Value) -> Option<T>,
) -> Vec<(String, Option<T>)> {
    keys.iter()
        .map(|(key, _)| (key.to_string(), eval(key).as_ref().and_then(parse)))
        .collect()
}

fn mean(v: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let xs: Vec<f64> = v.flatten().collect();
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{:.1}", 100.0 * x))
}

fn policy_cell(s: Option<PolicyScore>) -> String {
    match s {
        Some(s) => format!(
            "{} ({})",
            pct(Some(s.accuracy)),
            pct(Some(s.unparseable_rate))
        ),
        None => "–".into(),
    }
}

/// The report as Markdown.
pub fn render_markdown(r: &Report) -> String {
    let mut md = format!(
        "# rllr pipeline report\n\nConfig: `{}`. Test-split accuracy in % (unparseable answers in %, counted wrong); reward models: pairwise accuracy in % on held-out label-sensitive test pairs.\n\n",
        r.config
    );
    let mut head = String::from("| task |");
    let mut rule = String::from("|---|");
    for (_, title) in POLICIES.iter().chain(REWARD_MODELS.iter()) {
        head.push_str(&format!(" {title} |"));
        rule.push_str("---:|");
    }
    md.push_str(&format!("{head} λ |\n{rule}---:|\n"));
    for t in &r.tasks {
        let mut line = format!("| {} |", t.task);
        for (_, s) in &t.policies {
            line.push_str(&format!(" {} |", policy_cell(*s)));
        }
        for (_, s) in &t.reward_models {
            line.push_str(&format!(" {} |", pct(s.map(|s| s.accuracy))));
        }
        let lambda = t.lambda.map_or_else(|| "–".into(), |l| format!("{l:.3}"));
        md.push_str(&format!("{line} {lambda} |\n"));
    }
    if r.tasks.len() > 1 {
        let mut line = String::from("| **mean** |");
        for i in 0..POLICIES.len() {
            let m = mean(r.tasks.iter().map(|t| t.policies[i].1.map(|s| s.accuracy)));
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

    fn row(task: &str, accs: [f64; 5], rm: [f64; 2], lambda: Option<f64>) -> TaskRow {
        TaskRow {
            task: task.into(),
            policies: POLICIES
                .iter()
                .zip(accs)
                .map(|((k, _), a)| {
                    (
                        k.to_string(),
                        Some(PolicyScore {
                            accuracy: a,
                            unparseable_rate: 0.02,
                            n: 100,
                        }),
                    )
                })
                .collect(),
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
        let json: Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["tasks"][0]["lambda"], 1.25);
    }

    #[test]
    fn rows_are_read_from_stage_reports() {
        let dir = tempfile::tempdir().unwrap();
        let put = |stage: &str, v: Value| {
            std::fs::create_dir_all(dir.path().join(stage)).unwrap();
            std::fs::write(dir.path().join(stage).join("report.json"), v.to_string()).unwrap();
        };
        put(
            "eval-sft",
            serde_json::json!({"n": 10, "accuracy": 0.7, "unparseable_rate": 0.1}),
        );
        put(
            "eval-rm-label",
            serde_json::json!({"n": 20, "accuracy": 0.9}),
        );
        put(
            "ppo-rllr-mixed",
            serde_json::json!({"steps": 3, "wall_s": 1.0, "lambda": 2.5}),
        );
        let r = task_row("comve", dir.path());
        assert_eq!(
            r.policies[1].1,
            Some(PolicyScore {
                accuracy: 0.7,
                unparseable_rate: 0.1,
                n: 10
            })
        );
        assert_eq!(r.policies[0].1, None);
        assert_eq!(
            r.reward_models[0].1,
            Some(PairScore {
                accuracy: 0.9,
                n: 20
            })
        );
        assert_eq!(r.lambda, Some(2.5));
    }
}
