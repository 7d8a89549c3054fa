//! The PPO loop: per step, sample the next prompts' rollouts from the policy, score them
//! ([`super::scorer::RewardFn`]), run the PPO update ([`super::step`]) and log the step; the run
//! directory (resume-or-refuse, fingerprint, checkpoints) is [`crate::train::run_dir`]'s, the
//! checkpoint's extra state is the KL controller and the running score moments.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use rllr_core::dataset::Example;
use rllr_core::task::TaskSpec;
use rllr_core::Llama;
use serde_json::{json, Map, Value};

use super::metrics_log::quarter_means;
use super::rollout::{self, Rollout, RolloutSpec};
use super::scorer::RewardFn;
use super::step::{PpoState, StepSpec};
use crate::train::config::TrainConfig;
use crate::train::optim::{learning_rate, AdamW, AdamWParams};
use crate::train::run_dir::{RunDir, Start};
use crate::train::train_loop::{self, mix_seed, DataOrder};

/// What a finished PPO run reports (`report.json`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PpoReport {
    pub reward_mode: &'static str,
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_from: Option<usize>,
    pub lambda: Option<f64>,
    pub lambda_source: Option<String>,
    pub wall_s: f64,
    pub rollout_s: f64,
    pub scoring_s: f64,
    pub update_s: f64,
    /// The last step's statistics.
    pub last: Value,
    /// Means over the first and the last quarter of the run's steps (objective/scores,
    /// rollout/label_accuracy, objective/kl).
    pub first_quarter: Value,
    pub last_quarter: Value,
    /// Greedy answers of the trained policy on `dev` (when given).
    pub dev: Option<crate::metrics::PolicyReport>,
}

/// Fraction of rollouts whose parsed answer is the gold label, and fraction unparseable.
fn rollout_accuracy(task: &TaskSpec, examples: &[Example], rollouts: &[Rollout]) -> (f64, f64) {
    let fmt = task.response_format();
    let labels = task.label_texts();
    let (mut right, mut unparsed) = (0usize, 0usize);
    for r in rollouts {
        let p = fmt.parse(&r.text, &labels);
        match p.label {
            Some(i) if task.labels[i].name == examples[r.item].label => right += 1,
            Some(_) => {}
            None => unparsed += 1,
        }
    }
    let n = rollouts.len().max(1) as f64;
    (right as f64 / n, unparsed as f64 / n)
}

/// What the loop calls per step besides the PPO update.
pub struct Hooks<'a> {
    /// Task and examples for the rollouts' label accuracy (None: not logged).
    pub accuracy: Option<(&'a TaskSpec, &'a [Example])>,
    pub tokenizer: Option<&'a tokenizers::Tokenizer>,
    pub rollout: &'a RolloutSpec<'a>,
    pub reward: &'a dyn RewardFn,
    pub lambda: Option<f64>,
    /// Reward-mode name for the bar and the report.
    pub label: &'static str,
}

/// Where the loop writes and how it starts.
pub struct RunSpec<'a> {
    pub out: &'a Path,
    pub resume: bool,
    pub stop_after: Option<usize>,
    /// Settings a resumed run must share with the run it continues.
    pub fingerprint: Value,
}

/// The PPO loop over `prompts` (example index, ids) with the model's trainable variables;
/// `None` when `stop_after` stopped it.
pub fn run_loop(
    model: &Llama,
    spec: &StepSpec,
    hooks: &Hooks,
    prompts: &[(usize, Vec<u32>)],
    tc: &TrainConfig,
    initial: PpoState,
    run: &RunSpec,
) -> anyhow::Result<Option<PpoReport>> {
    let (out, resume, stop_after) = (run.out, run.resume, run.stop_after);
    let total = train_loop::total_steps(tc, prompts.len());
    let mut opt = AdamW::new(
        model.trainable_vars(),
        AdamWParams {
            beta1: tc.beta1,
            beta2: tc.beta2,
            eps: tc.adam_eps,
            weight_decay: tc.weight_decay,
        },
    )?;
    let run_dir = RunDir::create(out, tc, &run.fingerprint, None)?;
    let Start {
        step: start,
        resumed_from,
        extra,
        mut log,
    } = run_dir.open(&mut opt, resume, "ppo", total)?;
    let mut state = match extra {
        Some(extra) => serde_json::from_value(extra)
            .with_context(|| format!("{}: PPO state", run_dir.checkpoints().display()))?,
        None => initial,
    };
    let mut order = DataOrder::new(prompts.len(), tc.seed);
    let bar = train_loop::progress_bar(&format!("ppo {}", hooks.label), total, start);
    let t0 = Instant::now();
    let (mut t_roll, mut t_score, mut t_upd) = (0.0, 0.0, 0.0);
    let mut last = Value::Null;
    for step in start..total {
        let lr = learning_rate(tc.schedule, tc.learning_rate, step, total, tc.warmup_steps);
        let batch: Vec<(usize, Vec<u32>)> = (0..tc.batch_size)
            .map(|j| prompts[order.item(step * tc.batch_size + j)].clone())
            .collect();
        let seeds: Vec<u64> = (0..batch.len())
            .map(|j| mix_seed(&[tc.seed, step as u64, 0x5a3, j as u64]))
            .collect();
        let t = Instant::now();
        let rollouts = rollout::sample(model, hooks.tokenizer, &batch, &seeds, hooks.rollout)?;
        let dt_roll = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut stats = Map::new();
        let scores = hooks.reward.score(&rollouts, step, &mut stats)?;
        let dt_score = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let upd = spec.step(
            model,
            &mut opt,
            &mut state,
            (&rollouts, &scores),
            (step, lr),
        )?;
        let dt_upd = t.elapsed().as_secs_f64();
        t_roll += dt_roll;
        t_score += dt_score;
        t_upd += dt_upd;
        stats.extend(upd);
        stats.insert("step".into(), json!(step + 1));
        let mut acc = f64::NAN;
        if let Some((task, examples)) = hooks.accuracy {
            let (a, unparsed) = rollout_accuracy(task, examples, &rollouts);
            acc = a;
            stats.insert("rollout/label_accuracy".into(), json!(a));
            stats.insert("rollout/unparseable".into(), json!(unparsed));
        }
        stats.insert("time/rollout_s".into(), json!(dt_roll));
        stats.insert("time/scoring_s".into(), json!(dt_score));
        stats.insert("time/update_s".into(), json!(dt_upd));
        stats.insert("elapsed_s".into(), json!(t0.elapsed().as_secs_f64()));
        if let Some(r) = rollouts.first() {
            stats.insert("sample".into(), json!(r.text));
        }
        let rec = Value::Object(stats);
        writeln!(log, "{rec}")?;
        bar.set_position((step + 1) as u64);
        bar.set_message(format!(
            "score {:.3} kl {:.3} acc {:.2} len {:.0}",
            rec["objective/scores"].as_f64().unwrap_or(f64::NAN),
            rec["objective/kl"].as_f64().unwrap_or(f64::NAN),
            acc,
            rec["tokens/responses_len_mean"].as_f64().unwrap_or(0.0)
        ));
        last = rec;
        let done = step + 1 == total;
        if done || (tc.save_every > 0 && (step + 1) % tc.save_every == 0) {
            run_dir.save(
                step + 1,
                &opt,
                tc.keep_checkpoints,
                &serde_json::to_value(state)?,
            )?;
        }
        if stop_after == Some(step + 1) && !done {
            bar.abandon();
            return Ok(None);
        }
    }
    bar.finish_and_clear();
    let (first_q, last_q) = quarter_means(&run_dir.log_path())?;
    Ok(Some(PpoReport {
        reward_mode: hooks.label,
        steps: total,
        total_steps: total,
        resumed_from,
        lambda: hooks.lambda,
        lambda_source: None,
        wall_s: t0.elapsed().as_secs_f64(),
        rollout_s: t_roll,
        scoring_s: t_score,
        update_s: t_upd,
        last,
        first_quarter: first_q,
        last_quarter: last_q,
        dev: None,
    }))
}
