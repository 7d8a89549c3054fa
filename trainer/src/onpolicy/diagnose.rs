//! `rllr-train diagnose`: before PPO, can the reward models tell M_sft's right answers from its
//! wrong ones *on its own samples*? PPO only ever shows them such samples, so an RM that ranks
//! teacher pairs well but not these cannot guide the policy. For `k` samples per dev prompt it
//! reports the AUC of r_label, r_rationale and the mixed reward against "the parsed label is
//! correct" (unparseable = incorrect), best-of-N accuracy under each reward, the oracle (≥ 1
//! correct sample) and per-sample accuracy, and M_sft's greedy accuracy on the same prompts.

use std::path::PathBuf;

use anyhow::Context;
use rllr_core::task::TaskSpec;
use serde::{Deserialize, Serialize};

use super::reward::{self, best_index, RewardModelsArgs, Rewards};
use super::sample::{read_prompts, temperature_as_written, SamplerArgs};
use crate::metrics::{evaluate_policy, PolicyEvalSpec};

/// Best-of-N accuracy when the sample with the highest reward X is the answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BestOfN {
    pub label: f64,
    pub rationale: f64,
    pub mixed: f64,
}

/// `<out>/report.json`; the pipeline's report reads these exact fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnoseReport {
    pub n_prompts: usize,
    pub k: usize,
    pub temperature: f64,
    pub auc_label: Option<f64>,
    pub auc_rationale: Option<f64>,
    pub auc_mixed: Option<f64>,
    pub greedy_accuracy: f64,
    pub best_of_n: BestOfN,
    pub oracle_accuracy: f64,
    pub sample_accuracy: f64,
    pub lambda: Option<f64>,
}

use crate::stats::auc;

/// Everything but greedy accuracy and λ from per-prompt correctness and rewards.
pub fn report(
    k: usize,
    temperature: f32,
    correct: &[Vec<bool>],
    rewards: &[Vec<Rewards>],
    greedy_accuracy: f64,
    lambda: Option<f64>,
) -> DiagnoseReport {
    let flat_c: Vec<bool> = correct.iter().flatten().copied().collect();
    let flat = |f: fn(&Rewards) -> f64| -> Vec<f64> { rewards.iter().flatten().map(f).collect() };
    let prompts = correct.len().max(1) as f64;
    let best = |f: fn(&Rewards) -> f64| -> f64 {
        let right = correct
            .iter()
            .zip(rewards)
            .filter(|(c, r)| {
                let xs: Vec<f64> = r.iter().map(f).collect();
                best_index(&xs).is_some_and(|i| c[i])
            })
            .count();
        right as f64 / prompts
    };
    DiagnoseReport {
        n_prompts: correct.len(),
        k,
        temperature: temperature_as_written(temperature),
        auc_label: auc(&flat(|r| r.label), &flat_c),
        auc_rationale: auc(&flat(|r| r.rationale), &flat_c),
        auc_mixed: auc(&flat(|r| r.mixed), &flat_c),
        greedy_accuracy,
        best_of_n: BestOfN {
            label: best(|r| r.label),
            rationale: best(|r| r.rationale),
            mixed: best(|r| r.mixed),
        },
        oracle_accuracy: correct.iter().filter(|c| c.iter().any(|&x| x)).count() as f64 / prompts,
        sample_accuracy: flat_c.iter().filter(|&&x| x).count() as f64 / flat_c.len().max(1) as f64,
        lambda,
    }
}

/// One `<out>/samples.jsonl` row.
#[derive(Serialize)]
struct SampleRow<'a> {
    id: &'a str,
    /// The sample's text.
    sample: &'a str,
    label: Option<&'a str>,
    correct: bool,
    r_label: f64,
    r_rationale: f64,
}

/// `rllr-train diagnose` arguments.
#[derive(clap::Args, Debug)]
pub struct DiagnoseArgs {
    /// Task spec file.
    #[arg(long, env = "RLLR_TRAIN_TASK")]
    pub task: PathBuf,
    /// Held-out examples whose prompts are sampled (the dev split: the RMs never saw them).
    #[arg(long, env = "RLLR_TRAIN_DATA")]
    pub data: PathBuf,
    /// Use the first N prompts (0: all): k samples each are generated and scored twice.
    #[arg(long, env = "RLLR_TRAIN_LIMIT", default_value_t = 64)]
    pub limit: usize,
    #[command(flatten)]
    pub sampler: SamplerArgs,
    #[command(flatten)]
    pub rewards: RewardModelsArgs,
    /// Directory for report.json and samples.jsonl.
    #[arg(long, env = "RLLR_TRAIN_OUTPUT")]
    pub output: PathBuf,
}

/// Sample, score, report.
pub fn run(a: &DiagnoseArgs) -> anyhow::Result<()> {
    let task = TaskSpec::load(&a.task).with_context(|| format!("task {}", a.task.display()))?;
    let examples = read_prompts(&a.data, &task, a.limit)?;
    let spec = a.sampler.spec();
    let reward::Scored {
        policy,
        lambda,
        samples,
        rewards,
        ..
    } = reward::sample_and_score("diagnose", &task, &examples, &a.sampler, &a.rewards)?;
    let correct: Vec<Vec<bool>> = examples
        .iter()
        .zip(&samples)
        .map(|(ex, ss)| ss.iter().map(|s| s.is_gold(&task, ex)).collect())
        .collect();
    let l = &policy.loaded;
    let eval = PolicyEvalSpec::of(&task, l, spec.max_new_tokens, spec.batch_size * spec.k);
    let greedy = evaluate_policy(&l.model, &policy.ctx(), &examples, &eval)?.accuracy;
    let r = report(
        spec.k,
        spec.temperature,
        &correct,
        &rewards,
        greedy,
        Some(lambda),
    );
    std::fs::create_dir_all(&a.output)?;
    let mut rows = String::new();
    for ((ex, ss), rs) in examples.iter().zip(&samples).zip(&rewards) {
        for (s, w) in ss.iter().zip(rs) {
            let row = SampleRow {
                id: &ex.id,
                sample: &s.text,
                label: s.label_name(&task),
                correct: s.is_gold(&task, ex),
                r_label: w.label,
                r_rationale: w.rationale,
            };
            rows.push_str(&serde_json::to_string(&row)?);
            rows.push('\n');
        }
    }
    rllr_core::fsutil::write_file_atomic(&a.output.join("samples.jsonl"), rows.as_bytes())?;
    rllr_core::fsutil::write_file_atomic(
        &a.output.join("report.json"),
        serde_json::to_string_pretty(&r)?.as_bytes(),
    )?;
    let f = |x: Option<f64>| x.map_or("n/a".to_string(), |v| format!("{v:.3}"));
    println!(
        "diagnose: {} prompts × k {} (T {}): AUC label {} rationale {} mixed {}; best-of-{} label {:.3} rationale {:.3} mixed {:.3}; greedy {:.3}, oracle {:.3}, per sample {:.3}; λ {lambda:.3} -> {}",
        r.n_prompts, r.k, r.temperature, f(r.auc_label), f(r.auc_rationale), f(r.auc_mixed), r.k,
        r.best_of_n.label, r.best_of_n.rationale, r.best_of_n.mixed, r.greedy_accuracy,
        r.oracle_accuracy, r.sample_accuracy, a.output.display()
    );
    match r.auc_label {
        Some(v) if v <= 0.6 => println!(
            "diagnose: auc_label = {v:.3} ≤ 0.6: the label RM cannot guide the policy on its own samples"
        ),
        None => println!(
            "diagnose: auc_label undefined: M_sft's samples were all right or all wrong, so nothing tells the label RM's ranking apart"
        ),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::train::testutil::{toy_examples, toy_policy_dir, toy_reward_dir, toy_task};

    fn w(label: f64, rationale: f64) -> Rewards {
        Rewards {
            label,
            rationale,
            mixed: label.min(1.0) + rationale,
        }
    }

    #[test]
    fn auc_is_mann_whitney_with_half_ties() {
        assert_eq!(auc(&[3.0, 2.0, 1.0], &[true, false, false]), Some(1.0));
        assert_eq!(auc(&[1.0, 2.0], &[true, false]), Some(0.0));
        // pos {2, 1}, neg {1}: 1 + ½ over 2
        assert_eq!(auc(&[2.0, 1.0, 1.0], &[true, true, false]), Some(0.75));
        assert_eq!(auc(&[1.0, 2.0], &[true, true]), None);
    }

    #[test]
    fn best_of_n_oracle_and_sample_accuracy() {
        let correct = vec![vec![true, false], vec![false, false], vec![false, true]];
        let rewards = vec![
            vec![w(2.0, 0.0), w(1.0, 1.0)],
            vec![w(0.0, 0.0), w(1.0, 0.0)],
            vec![w(0.5, 0.0), w(3.0, -1.0)],
        ];
        let r = report(2, 1.0, &correct, &rewards, 0.5, Some(1.0));
        assert_eq!(r.n_prompts, 3);
        assert!((r.best_of_n.label - 2.0 / 3.0).abs() < 1e-12, "{r:?}");
        assert!((r.best_of_n.rationale - 0.0).abs() < 1e-12, "{r:?}");
        // mixed: prompt 0: 1.0 vs 2.0 (wrong); prompt 2: 0.5 vs 0.0 (wrong)
        assert!((r.best_of_n.mixed - 0.0).abs() < 1e-12, "{r:?}");
        assert!((r.oracle_accuracy - 2.0 / 3.0).abs() < 1e-12);
        assert!((r.sample_accuracy - 2.0 / 6.0).abs() < 1e-12);
        assert_eq!(r.greedy_accuracy, 0.5);
    }

    #[test]
    fn report_has_exactly_the_agreed_fields() {
        let r = report(1, 0.7, &[vec![true]], &[vec![w(0.0, 0.0)]], 1.0, None);
        let v = serde_json::to_value(&r).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "auc_label",
                "auc_mixed",
                "auc_rationale",
                "best_of_n",
                "greedy_accuracy",
                "k",
                "lambda",
                "n_prompts",
                "oracle_accuracy",
                "sample_accuracy",
                "temperature"
            ]
        );
        assert!(v["auc_label"].is_null() && v["lambda"].is_null());
        assert_eq!(v["temperature"].as_f64(), Some(0.7), "as written");
        assert_eq!(v["best_of_n"].as_object().unwrap().len(), 3);
    }

    /// A toy policy, two random RMs on it, a task file and dev data under `dir`.
    pub(crate) fn toy_setup(
        dir: &std::path::Path,
    ) -> (SamplerArgs, RewardModelsArgs, PathBuf, PathBuf) {
        let model = dir.join("m");
        toy_policy_dir(&model);
        toy_reward_dir(&model, &dir.join("rm-l"), 11);
        toy_reward_dir(&model, &dir.join("rm-r"), 12);
        let task = dir.join("toy.json");
        std::fs::write(&task, serde_json::to_string(&toy_task()).unwrap()).unwrap();
        let data = dir.join("dev.jsonl");
        rllr_core::dataset::write_jsonl(&data, &toy_examples(6)).unwrap();
        let sampler = SamplerArgs {
            model,
            adapter: None,
            k: 4,
            temperature: 1.0,
            top_k: 50,
            max_new_tokens: 5,
            batch_size: 2,
            seed: 1,
            template: "auto".into(),
            device: "cpu".into(),
            dtype: "f32".into(),
        };
        let rewards = RewardModelsArgs {
            reward_model: dir.join("rm-l"),
            reward_model_rationale: dir.join("rm-r"),
            lambda: "auto".parse().unwrap(),
            lambda_from: None,
            lambda_data: Some(data.clone()),
            lambda_percentile: 90.0,
            lambda_limit: 0,
            lambda_cutoff: 64,
            score_batch_size: 3,
        };
        (sampler, rewards, task, data)
    }

    #[test]
    fn diagnose_writes_the_report_and_one_row_per_sample() {
        let dir = tempfile::tempdir().unwrap();
        let (sampler, rewards, task, data) = toy_setup(dir.path());
        let out = dir.path().join("out");
        run(&DiagnoseArgs {
            task,
            data,
            limit: 5,
            sampler,
            rewards,
            output: out.clone(),
        })
        .unwrap();
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(
            (r["n_prompts"].as_u64(), r["k"].as_u64()),
            (Some(5), Some(4))
        );
        assert!(
            r["lambda"].as_f64().is_some(),
            "calibrated on the dev gold responses"
        );
        let rows = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
        assert_eq!(rows.lines().count(), 20);
        let first: serde_json::Value = serde_json::from_str(rows.lines().next().unwrap()).unwrap();
        for k in ["id", "sample", "label", "correct", "r_label", "r_rationale"] {
            assert!(first.get(k).is_some(), "{k} missing: {first}");
        }
    }
}
