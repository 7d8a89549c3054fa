//! `rllr-train best-of-n`: best-of-N under the mixed reward as a policy of its own, the cheapest
//! way to spend the reward models at test time and the bar PPO with the same reward should clear.
//! M_sft samples N responses per test prompt, the one with the highest `min(r_label, λ) +
//! r_rationale` (λ of the rllr-mixed PPO run, or calibrated as PPO does) is the answer; it is
//! scored like `eval policy` (same `PolicyReport`), with one prediction row per prompt.

use std::path::PathBuf;

use anyhow::{bail, Context};
use rllr_core::dataset::Example;
use rllr_core::task::TaskSpec;

use super::reward::{self, best_index, RewardModelsArgs, Rewards};
use super::sample::{read_prompts, Sample, SamplerArgs};
use crate::metrics::{policy_metrics, predictions_jsonl, print_policy, PolicyReport};

pub use crate::metrics::Prediction;

/// The highest-mixed-reward sample of each prompt as its answer: predictions in input order and
/// the report.
pub fn pick(
    task: &TaskSpec,
    examples: &[Example],
    samples: &[Vec<Sample>],
    rewards: &[Vec<Rewards>],
) -> anyhow::Result<(Vec<Prediction>, PolicyReport)> {
    let fmt = task.response_format();
    let labels = task.label_texts();
    let (mut gold, mut pred, mut words, mut rows) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((ex, ss), rs) in examples.iter().zip(samples).zip(rewards) {
        let mixed: Vec<f64> = rs.iter().map(|r| r.mixed).collect();
        let Some(best) = best_index(&mixed).map(|i| &ss[i]) else {
            bail!("example '{}': no sample to choose from", ex.id);
        };
        gold.push(task.label_index(&ex.label)?);
        pred.push(best.label);
        words.push(
            fmt.parse(&best.text, &labels)
                .rationale
                .split_whitespace()
                .count(),
        );
        rows.push(Prediction {
            id: ex.id.clone(),
            gold: ex.label.clone(),
            pred: best.label_name(task).map(String::from),
            correct: best.is_gold(task, ex),
            text: best.text.clone(),
        });
    }
    let names: Vec<String> = task.labels.iter().map(|l| l.name.clone()).collect();
    let mut report = policy_metrics(&names, &gold, &pred, &words);
    report.samples = rows
        .iter()
        .take(5)
        .map(|r| (r.gold.clone(), r.text.clone()))
        .collect();
    Ok((rows, report))
}

/// `rllr-train best-of-n` arguments.
#[derive(clap::Args, Debug)]
pub struct BestOfNArgs {
    /// Task spec file.
    #[arg(long, env = "RLLR_TRAIN_TASK")]
    pub task: PathBuf,
    /// Examples to answer (the test split, as `eval policy`).
    #[arg(long, env = "RLLR_TRAIN_DATA")]
    pub data: PathBuf,
    /// Answer the first N examples (0: all); compare with `eval policy` on the same N.
    #[arg(long, env = "RLLR_TRAIN_LIMIT", default_value_t = 0)]
    pub limit: usize,
    /// N is --k: samples per prompt the rewards choose among.
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub rewards: RewardModelsArgs,
    /// Directory for report.json (eval policy's schema) and predictions.jsonl.
    #[arg(long, env = "RLLR_TRAIN_OUTPUT")]
    pub output: PathBuf,
}

/// Sample N, choose by the mixed reward, score, write.
pub fn run(a: &BestOfNArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let task = TaskSpec::load(&a.task).with_context(|| format!("task {}", a.task.display()))?;
    let examples = read_prompts(&a.data, &task, a.limit)?;
    let what = format!("best-of-{}", a.sampler.k);
    let sc = reward::sample_and_score(&what, &task, &examples, &a.sampler, &a.rewards)?;
    let (lambda, k) = (sc.lambda, sc.k);
    let (rows, mut report) = pick(&task, &examples, &sc.samples, &sc.rewards)?;
    report.wall_s = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.output)?;
    rllr_core::fsutil::write_file_atomic(
        &a.output.join("predictions.jsonl"),
        predictions_jsonl(&rows)?.as_bytes(),
    )?;
    rllr_core::fsutil::write_file_atomic(
        &a.output.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!("best-of-{k} (mixed reward, λ {lambda:.3}):");
    print_policy(&task, &report);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::testutil::{toy_examples, toy_task};

    fn s(text: &str) -> Sample {
        let task = toy_task();
        Sample {
            label: task
                .response_format()
                .parse(text, &task.label_texts())
                .label,
            text: text.into(),
            query: vec![],
            response: vec![],
        }
    }

    fn m(mixed: f64) -> Rewards {
        Rewards {
            label: 0.0,
            rationale: 0.0,
            mixed,
        }
    }

    #[test]
    fn the_highest_mixed_reward_is_the_answer() {
        let (task, exs) = (toy_task(), toy_examples(2)); // gold hot, cold
        let samples = vec![
            vec![s("a\nAnswer: cold"), s("b\nAnswer: hot")],
            vec![s("no answer"), s("c\nAnswer: hot")],
        ];
        let rewards = vec![vec![m(0.1), m(0.9)], vec![m(2.0), m(1.0)]];
        let (rows, report) = pick(&task, &exs, &samples, &rewards).unwrap();
        assert_eq!(rows[0].pred.as_deref(), Some("hot"));
        assert!(rows[0].correct);
        assert_eq!(rows[1].pred, None, "unparseable best sample counts wrong");
        assert_eq!(rows[1].text, "no answer");
        assert_eq!(
            rows.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["toy-0", "toy-1"]
        );
        assert_eq!(report.n, 2);
        assert!((report.accuracy - 0.5).abs() < 1e-12);
        assert!((report.unparseable_rate - 0.5).abs() < 1e-12);
    }

    #[test]
    fn best_of_n_writes_a_policy_report_and_predictions_on_a_tiny_model() {
        let dir = tempfile::tempdir().unwrap();
        let (sampler, mut rewards, task, data) =
            super::super::diagnose::tests::toy_setup(dir.path());
        let ppo = dir.path().join("ppo-report.json");
        std::fs::write(&ppo, r#"{"lambda": 0.25}"#).unwrap();
        rewards.lambda_from = Some(ppo);
        rewards.lambda_data = None; // λ comes from the PPO report: nothing is calibrated
        let out = dir.path().join("bon");
        run(&BestOfNArgs {
            task,
            data,
            limit: 0,
            sampler,
            rewards,
            output: out.clone(),
        })
        .unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        for k in [
            "n",
            "accuracy",
            "unparseable_rate",
            "per_label",
            "confusion",
        ] {
            assert!(r.get(k).is_some(), "{k} missing");
        }
        assert_eq!(r["n"].as_u64(), Some(6));
        let rows = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap();
        let ids: Vec<String> = rows
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(ids, (0..6).map(|i| format!("toy-{i}")).collect::<Vec<_>>());
    }
}
