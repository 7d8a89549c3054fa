//! `rllr-train eval`: how good a policy or a reward model is (docs/method.md §7), as a command —
//! its flags, the files it writes and what it prints; the metrics themselves are [`crate::metrics`].

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rllr_core::checkpoint::{self, SCORE_HEAD};
use rllr_core::dataset::{read_examples, Pair};
use rllr_core::task::TaskSpec;
use rllr_core::ForwardCtx;
use serde::Serialize;

use crate::metrics::{
    encode_pairs, evaluate_policy, pair_metrics, predictions_jsonl, print_policy, score_pairs,
    PolicyEvalSpec,
};
use crate::stage;

#[derive(Args, Debug)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub what: EvalWhat,
}

#[derive(Subcommand, Debug)]
pub enum EvalWhat {
    /// A policy (SFT, PPO or base model) on a task split: accuracy from greedy generations.
    Policy(PolicyArgs),
    /// A reward model on a pair file: pairwise accuracy and margin.
    Reward(RewardEvalArgs),
}

#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Model directory (merged M_sft, a base model, ...).
    #[arg(long, env = "RLLR_TRAIN_MODEL")]
    pub model: PathBuf,
    /// PEFT adapter to apply on top (e.g. <sft run>/adapter).
    #[arg(long, env = "RLLR_TRAIN_ADAPTER")]
    pub adapter: Option<PathBuf>,
    /// Task spec file.
    #[arg(long, env = "RLLR_TRAIN_TASK")]
    pub task: PathBuf,
    /// Examples (JSONL), e.g. data/comve/dev.jsonl.
    #[arg(long, env = "RLLR_TRAIN_DATA")]
    pub data: PathBuf,
    /// Evaluate the first N examples (0: all).
    #[arg(long, env = "RLLR_TRAIN_LIMIT", default_value_t = 0)]
    pub limit: usize,
    #[arg(long, env = "RLLR_TRAIN_MAX_NEW_TOKENS", default_value_t = 96)]
    pub max_new_tokens: usize,
    #[arg(long, env = "RLLR_TRAIN_BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, env = "RLLR_TRAIN_TEMPLATE", default_value = "auto")]
    pub template: String,
    /// Append an instruction describing the answer format to each prompt (for models never
    /// trained on it, e.g. the zero-shot base).
    #[arg(long, env = "RLLR_TRAIN_FORMAT_HINT")]
    pub format_hint: bool,
    /// Write the JSON report here (it is printed as a table either way).
    #[arg(long, env = "RLLR_TRAIN_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Also write every example's answer as JSONL (`{"id", "gold", "pred", "correct", "text"}`,
    /// in input order), so two policies evaluated on the same split can be compared example by
    /// example (paired difference, McNemar test) rather than by their accuracies alone.
    #[arg(long, env = "RLLR_TRAIN_PREDICTIONS")]
    pub predictions: Option<PathBuf>,
    #[arg(long, env = "RLLR_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,
    #[arg(long, env = "RLLR_TRAIN_DTYPE", default_value = "f32")]
    pub dtype: String,
}

#[derive(Args, Debug)]
pub struct RewardEvalArgs {
    /// Reward-model directory written by `rllr-train reward` (PEFT adapter + score head + rllr.json).
    #[arg(long, env = "RLLR_TRAIN_MODEL")]
    pub model: PathBuf,
    /// Base the adapter goes on (default: the manifest's base_checkpoint).
    #[arg(long, env = "RLLR_TRAIN_BASE")]
    pub base: Option<PathBuf>,
    /// Task spec file.
    #[arg(long, env = "RLLR_TRAIN_TASK")]
    pub task: PathBuf,
    /// Pair file (JSONL): rllr's pair records or TRL preference records.
    #[arg(long, env = "RLLR_TRAIN_PAIRS")]
    pub pairs: PathBuf,
    /// Layout of the pair file: auto (by its keys), rllr or trl.
    #[arg(
        long,
        env = "RLLR_TRAIN_PAIRS_FORMAT",
        value_enum,
        default_value = "auto"
    )]
    pub pairs_format: crate::data::trl::PairsFormat,
    #[arg(long, env = "RLLR_TRAIN_LIMIT", default_value_t = 0)]
    pub limit: usize,
    #[arg(long, env = "RLLR_TRAIN_CUTOFF_LEN", default_value_t = 512)]
    pub cutoff_len: usize,
    #[arg(long, env = "RLLR_TRAIN_BATCH_SIZE", default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, env = "RLLR_TRAIN_TEMPLATE", default_value = "auto")]
    pub template: String,
    #[arg(long, env = "RLLR_TRAIN_OUTPUT")]
    pub output: Option<PathBuf>,
    /// Also write every pair's two rewards as JSONL (`{"id", "chosen", "rejected"}`), so two reward
    /// models scored on the same pairs can be compared pair by pair (e.g. a McNemar test).
    #[arg(long, env = "RLLR_TRAIN_SCORES")]
    pub scores: Option<PathBuf>,
    #[arg(long, env = "RLLR_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,
    #[arg(long, env = "RLLR_TRAIN_DTYPE", default_value = "f32")]
    pub dtype: String,
}

/// One pair's rewards, as `eval reward --scores` writes them.
#[derive(Serialize)]
struct PairScore<'a> {
    id: &'a str,
    chosen: f32,
    rejected: f32,
}

/// JSONL of every pair's rewards, in pair-file order.
fn pair_scores_jsonl(pairs: &[Pair], chosen: &[f32], rejected: &[f32]) -> anyhow::Result<String> {
    let mut out = String::new();
    for ((p, &c), &r) in pairs.iter().zip(chosen).zip(rejected) {
        let row = PairScore {
            id: &p.id,
            chosen: c,
            rejected: r,
        };
        out.push_str(&serde_json::to_string(&row)?);
        out.push('\n');
    }
    Ok(out)
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    match &args.what {
        EvalWhat::Policy(a) => run_policy(a),
        EvalWhat::Reward(a) => run_reward(a),
    }
}

/// The answer-format instruction for models that were not trained on it.
pub fn format_hint(task: &TaskSpec) -> String {
    let labels = task.label_texts().join(", ");
    format!(
        "Explain your reasoning in one or two sentences, then finish with a last line of the form \"{} <label>\" where <label> is one of: {labels}.",
        task.answer_prefix
    )
}

fn run_policy(a: &PolicyArgs) -> anyhow::Result<()> {
    let task = TaskSpec::load(&a.task).with_context(|| format!("task {}", a.task.display()))?;
    let mut examples = read_examples(&a.data, &task)?;
    if a.limit > 0 {
        examples.truncate(a.limit);
    }
    if examples.is_empty() {
        bail!("{}: no examples", a.data.display());
    }
    let ckpt = stage::open_checkpoint(&a.model, "--model", Some(&task))?;
    let mut loaded = stage::load(ckpt, &a.template, &a.device, &a.dtype)?;
    let ctx = match &a.adapter {
        Some(dir) => {
            checkpoint::load_adapter(&mut loaded.model, dir, "adapter", false)
                .with_context(|| format!("loading --adapter {}", dir.display()))?;
            ForwardCtx::with_adapter("adapter")
        }
        None => ForwardCtx::default(),
    };
    let hint = a.format_hint.then(|| format_hint(&task));
    let spec = PolicyEvalSpec {
        hint: hint.as_deref(),
        ..PolicyEvalSpec::of(&task, &loaded, a.max_new_tokens, a.batch_size)
    };
    let report = evaluate_policy(&loaded.model, &ctx, &examples, &spec)?;
    print_policy(&task, &report);
    if let Some(out) = &a.output {
        rllr_core::fsutil::write_file_atomic(
            out,
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    if let Some(path) = &a.predictions {
        rllr_core::fsutil::write_file_atomic(
            path,
            predictions_jsonl(&report.predictions)?.as_bytes(),
        )?;
    }
    Ok(())
}

fn run_reward(a: &RewardEvalArgs) -> anyhow::Result<()> {
    let task = TaskSpec::load(&a.task).with_context(|| format!("task {}", a.task.display()))?;
    let mut pairs = crate::data::trl::read_pairs(&a.pairs, &task, a.pairs_format)?;
    if a.limit > 0 {
        pairs.truncate(a.limit);
    }
    stage::check_pairs(&pairs, &task, &a.pairs)?;
    let manifest = rllr_core::manifest::Manifest::read(&a.model)?.with_context(|| {
        format!(
            "{}: no rllr.json (not a reward model written by rllr-train reward?)",
            a.model.display()
        )
    })?;
    let base = match (&a.base, &manifest.base_checkpoint) {
        (Some(b), _) => b.clone(),
        (None, Some(b)) => PathBuf::from(b),
        (None, None) => bail!(
            "{}: rllr.json names no base_checkpoint; pass --base",
            a.model.display()
        ),
    };
    let ckpt = stage::open_checkpoint(&base, "base", Some(&task))?;
    let mut loaded = stage::load(ckpt, &a.template, &a.device, &a.dtype)?;
    checkpoint::load_adapter(&mut loaded.model, &a.model, SCORE_HEAD, false)
        .with_context(|| format!("loading reward model {}", a.model.display()))?;
    if loaded.model.head(SCORE_HEAD).is_none() {
        bail!("{}: the adapter has no score head", a.model.display());
    }
    let items = encode_pairs(&loaded, &task, &pairs, a.cutoff_len)?;
    let (c, r) = score_pairs(
        &loaded.model,
        &ForwardCtx::with_adapter(SCORE_HEAD),
        SCORE_HEAD,
        &items,
        loaded.pad,
        a.batch_size,
    )?;
    let report = pair_metrics(&c, &r);
    println!(
        "pairs {}  accuracy {:.4}  margin {:.4}  chosen {:.4}  rejected {:.4}  reward mean {:.4} std {:.4}",
        report.n, report.accuracy, report.margin, report.chosen_mean, report.rejected_mean, report.reward_mean, report.reward_std
    );
    if let Some(out) = &a.output {
        rllr_core::fsutil::write_file_atomic(
            out,
            serde_json::to_string_pretty(&report)?.as_bytes(),
        )?;
    }
    if let Some(path) = &a.scores {
        rllr_core::fsutil::write_file_atomic(path, pair_scores_jsonl(&pairs, &c, &r)?.as_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_scores_are_one_line_per_pair_in_order() {
        let pair = |id: &str| -> Pair {
            serde_json::from_value(serde_json::json!({
                "id": id, "task": "t", "kind": "label", "input": "x",
                "chosen": "c", "rejected": "r", "chosen_label": "a", "rejected_label": "b"
            }))
            .unwrap()
        };
        let text =
            pair_scores_jsonl(&[pair("p1"), pair("p2")], &[1.5, -2.0], &[0.25, 3.0]).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            serde_json::json!({"id": "p1", "chosen": 1.5, "rejected": 0.25})
        );
        assert_eq!(
            rows[1],
            serde_json::json!({"id": "p2", "chosen": -2.0, "rejected": 3.0})
        );
    }
}
