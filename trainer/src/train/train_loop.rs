//! `TrainLoop`: the one optimisation loop every stage runs. A stage only says how a micro-batch of
//! its items becomes a loss ([`Objective`]); the loop owns the rest — data order, AdamW, schedule,
//! gradient accumulation and clipping, dropout seeds, the JSONL metrics log, the progress bar,
//! periodic evaluation and resumable checkpoints.
//!
//! Everything random is a pure function of (seed, step): the data order of epoch `e` is a shuffle
//! seeded by (seed, e), and the dropout masks of micro-batch `j` of step `s` are seeded by
//! (seed, s, j). A checkpoint therefore only needs the trainable weights, the optimizer moments and
//! the step number for a resumed run to replay an uninterrupted one exactly.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::bail;
use candle_core::{DType, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rllr_core::Llama;
use serde_json::{json, Map, Value};

use super::config::TrainConfig;
use super::optim::{clip_grad_norm, learning_rate, AdamW, AdamWParams};
use super::run_dir::{RunDir, Start, Stopped};

/// One micro-batch's loss and what to log about it.
pub struct MicroLoss {
    /// Scalar, differentiable, already a mean over the micro-batch.
    pub loss: Tensor,
    /// Tokens processed (prompt included), for tokens/s.
    pub tokens: usize,
    /// (name, numerator, denominator): logged per step as Σnum / Σden over the micro-batches.
    pub stats: Vec<(&'static str, f64, f64)>,
}

/// How a stage turns its items into a loss, and how it evaluates the model.
pub trait Objective {
    type Item;
    /// Loss of one micro-batch, with dropout masks drawn from `dropout_seed`.
    fn micro_loss(
        &self,
        model: &Llama,
        items: &[&Self::Item],
        dropout_seed: u64,
    ) -> anyhow::Result<MicroLoss>;
    /// Dev-set metrics (called every `eval_every` steps and at the end); empty when there is no dev set.
    fn evaluate(&self, model: &Llama) -> anyhow::Result<Map<String, Value>>;
}

/// Where and how a loop runs, beyond the [`TrainConfig`].
pub struct LoopOptions<'a> {
    pub cfg: &'a TrainConfig,
    /// Run directory: `metrics.jsonl` and `checkpoints/` go here.
    pub run_dir: &'a Path,
    /// Continue from the newest checkpoint in `run_dir/checkpoints`.
    pub resume: bool,
    /// Return right after this step (and its checkpoint) as if the process died: for tests and the
    /// `--stop-after` crash switch.
    pub stop_after: Option<usize>,
    /// Settings a resumed run must share with the run it continues (stage config, data sizes).
    pub fingerprint: Value,
    /// Name on the progress bar.
    pub label: &'a str,
}

/// What a finished (or stopped) loop did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoopReport {
    pub steps: usize,
    pub total_steps: usize,
    pub resumed_from: Option<usize>,
    pub stopped_early: bool,
    pub final_loss: Option<f64>,
    pub tokens: usize,
    pub wall_s: f64,
    pub evals: Vec<Value>,
}

impl LoopReport {
    /// The report of a loop that ran to the end; [`Stopped`] when `--stop-after` stopped it.
    pub fn finished(self, stage: &str) -> Result<Self, Stopped> {
        if self.stopped_early {
            return Err(Stopped {
                stage: stage.to_string(),
                step: self.steps,
            });
        }
        Ok(self)
    }
}

/// Optimizer steps for `n` items: `max_steps`, else ⌈epochs · n / (batch · accum)⌉.
pub fn total_steps(cfg: &TrainConfig, n: usize) -> usize {
    if cfg.max_steps > 0 {
        return cfg.max_steps;
    }
    let per_step = (cfg.batch_size * cfg.grad_accum) as f64;
    (cfg.epochs * n as f64 / per_step).ceil().max(1.0) as usize
}

/// Reject settings the loop cannot run with, before any model is touched.
pub fn validate(cfg: &TrainConfig) -> anyhow::Result<()> {
    if cfg.batch_size == 0 || cfg.grad_accum == 0 {
        bail!("batch_size and grad_accum must be >= 1");
    }
    if !(cfg.learning_rate > 0.0 && cfg.learning_rate.is_finite()) {
        bail!("learning_rate must be > 0, got {}", cfg.learning_rate);
    }
    if cfg.max_steps == 0 && (cfg.epochs.is_nan() || cfg.epochs <= 0.0) {
        bail!("epochs must be > 0 when max_steps is 0");
    }
    if !(0.0..1.0).contains(&cfg.beta1) || !(0.0..1.0).contains(&cfg.beta2) {
        bail!("beta1 and beta2 must be in [0, 1)");
    }
    Ok(())
}

/// A stable mix of integers into one seed (splitmix64 steps).
pub fn mix_seed(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15u64, |acc, &p| {
        let mut z = acc ^ p.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The data order: item `k` of the stream is `perm(k / n)[k % n]`, one seeded shuffle per epoch.
pub(crate) struct DataOrder {
    n: usize,
    seed: u64,
    perms: HashMap<usize, Vec<usize>>,
}

impl DataOrder {
    /// The order of `n` items seeded by `seed`.
    pub(crate) fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            perms: HashMap::new(),
        }
    }

    /// The item at position `k` of the endless stream (epoch `k / n`).
    pub(crate) fn item(&mut self, k: usize) -> usize {
        let (epoch, i) = (k / self.n, k % self.n);
        let (n, seed) = (self.n, self.seed);
        self.perms.entry(epoch).or_insert_with(|| {
            let mut p: Vec<usize> = (0..n).collect();
            p.shuffle(&mut rand::rngs::StdRng::seed_from_u64(mix_seed(&[
                seed,
                epoch as u64,
                0xda7a,
            ])));
            p
        })[i]
    }
}

impl<'a> LoopOptions<'a> {
    /// The options of a stage's training run (`label` also names the stage in a [`Stopped`]).
    pub fn stage(
        label: &'a str,
        cfg: &'a TrainConfig,
        run_dir: &'a Path,
        resume: bool,
        stop_after: Option<usize>,
        fingerprint: Value,
    ) -> Self {
        LoopOptions {
            cfg,
            run_dir,
            resume,
            stop_after,
            fingerprint,
            label,
        }
    }
}

/// A stage's training run: [`run`], then [`Stopped`] if `--stop-after` ended it early.
pub fn run_stage<O: Objective>(
    model: &Llama,
    objective: &O,
    data: &[O::Item],
    opts: &LoopOptions,
) -> anyhow::Result<LoopReport> {
    Ok(run(model, objective, data, opts)?.finished(opts.label)?)
}

/// Run the loop over `data` with the model's trainable variables.
pub fn run<O: Objective>(
    model: &Llama,
    objective: &O,
    data: &[O::Item],
    opts: &LoopOptions,
) -> anyhow::Result<LoopReport> {
    let cfg = opts.cfg;
    validate(cfg)?;
    if data.is_empty() {
        bail!("the training set is empty");
    }
    let vars = model.trainable_vars();
    if vars.is_empty() {
        bail!("the model has no trainable variables");
    }
    let total = total_steps(cfg, data.len());
    let mut opt = AdamW::new(
        vars,
        AdamWParams {
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.adam_eps,
            weight_decay: cfg.weight_decay,
        },
    )?;
    let run_dir = RunDir::create(opts.run_dir, cfg, &opts.fingerprint, Some(data.len()))?;
    let Start {
        step: start,
        resumed_from,
        mut log,
        ..
    } = run_dir.open(&mut opt, opts.resume, opts.label, total)?;
    let mut order = DataOrder::new(data.len(), cfg.seed);
    let bar = progress_bar(opts.label, total, start);
    let t0 = Instant::now();
    let mut report = LoopReport {
        steps: start,
        total_steps: total,
        resumed_from,
        stopped_early: false,
        final_loss: None,
        tokens: 0,
        wall_s: 0.0,
        evals: Vec::new(),
    };
    for step in start..total {
        let t_step = Instant::now();
        let lr = learning_rate(
            cfg.schedule,
            cfg.learning_rate,
            step,
            total,
            cfg.warmup_steps,
        );
        let mut acc: Vec<Option<Tensor>> = vec![None; opt.vars().len()];
        let mut loss_sum = 0f64;
        let mut tokens = 0usize;
        let mut stats: Vec<(&'static str, f64, f64)> = Vec::new();
        for j in 0..cfg.grad_accum {
            let first = (step * cfg.grad_accum + j) * cfg.batch_size;
            let idx: Vec<usize> = (first..first + cfg.batch_size)
                .map(|k| order.item(k))
                .collect();
            let items: Vec<&O::Item> = idx.iter().map(|&i| &data[i]).collect();
            let out = objective.micro_loss(
                model,
                &items,
                mix_seed(&[cfg.seed, step as u64, j as u64]),
            )?;
            let value = f64::from(out.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            if !value.is_finite() {
                bail!("loss is {value} at step {}", step + 1);
            }
            loss_sum += value;
            tokens += out.tokens;
            merge_stats(&mut stats, &out.stats);
            let grads = (out.loss / cfg.grad_accum as f64)?.backward()?;
            for (slot, (_, var)) in acc.iter_mut().zip(opt.vars()) {
                if let Some(g) = grads.get(var.as_tensor()) {
                    let g = g.to_dtype(DType::F32)?;
                    *slot = Some(match slot.take() {
                        Some(a) => (a + g)?,
                        None => g,
                    });
                }
            }
        }
        let mut grads = acc
            .into_iter()
            .zip(opt.vars())
            .map(|(g, (_, v))| {
                g.map_or_else(|| v.as_tensor().zeros_like()?.to_dtype(DType::F32), Ok)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let grad_norm = clip_grad_norm(&mut grads, cfg.max_grad_norm)?;
        opt.step(&grads, lr)?;
        let loss = loss_sum / cfg.grad_accum as f64;
        let dt = t_step.elapsed().as_secs_f64();
        report.tokens += tokens;
        report.final_loss = Some(loss);
        report.steps = step + 1;
        let mut rec = json!({
            "step": step + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm,
            "tokens": tokens, "tokens_per_s": tokens as f64 / dt.max(1e-9),
            "elapsed_s": t0.elapsed().as_secs_f64(),
        });
        for (k, num, den) in &stats {
            rec[*k] = json!(num / den.max(1e-12));
        }
        writeln!(log, "{rec}")?;
        bar.set_position((step + 1) as u64);
        bar.set_message(format!(
            "loss {loss:.4} lr {lr:.2e} {:.0} tok/s",
            tokens as f64 / dt.max(1e-9)
        ));
        let done = step + 1 == total;
        if cfg.eval_every > 0 && (step + 1) % cfg.eval_every == 0 && !done {
            let ev = objective.evaluate(model)?;
            if !ev.is_empty() {
                let rec = json!({"step": step + 1, "eval": ev});
                writeln!(log, "{rec}")?;
                bar.println(format!("step {}: eval {}", step + 1, Value::Object(ev)));
                report.evals.push(rec);
            }
        }
        if done || (cfg.save_every > 0 && (step + 1) % cfg.save_every == 0) {
            run_dir.save(step + 1, &opt, cfg.keep_checkpoints, &Value::Null)?;
        }
        if opts.stop_after == Some(step + 1) && !done {
            report.stopped_early = true;
            bar.abandon();
            report.wall_s = t0.elapsed().as_secs_f64();
            return Ok(report);
        }
    }
    bar.finish_and_clear();
    let ev = objective.evaluate(model)?;
    if !ev.is_empty() {
        let rec = json!({"step": total, "eval": ev});
        writeln!(log, "{rec}")?;
        report.evals.push(rec);
    }
    report.wall_s = t0.elapsed().as_secs_f64();
    Ok(report)
}

fn merge_stats(into: &mut Vec<(&'static str, f64, f64)>, add: &[(&'static str, f64, f64)]) {
    for (k, n, d) in add {
        match into.iter_mut().find(|(name, _, _)| name == k) {
            Some(e) => {
                e.1 += n;
                e.2 += d;
            }
            None => into.push((k, *n, *d)),
        }
    }
}

pub(crate) fn progress_bar(label: &str, total: usize, start: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64);
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]",
    )
    .expect("static template")
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label.to_string());
    bar.set_position(start as u64);
    bar.reset_eta();
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sft::{SftItem, SftObjective};
    use crate::train::testutil::{max_var_diff, tiny_model, tiny_train, tok};

    fn items() -> Vec<SftItem> {
        (0..24)
            .map(|i| {
                let p: Vec<u32> = (0..4 + i % 3).map(|j| tok(i, j, 10, 60)).collect();
                SftItem::new(&p, &[2 + p[0] % 5, 9, 1], 64)
            })
            .collect()
    }

    fn run_to(dir: &Path, resume: bool, stop_after: Option<usize>) -> (Llama, LoopReport) {
        // Dropout on, warm-up + cosine, accumulation, clipping, weight decay: everything that a
        // resume could get wrong.
        let model = tiny_model("sft", 11, 0.1);
        let cfg = TrainConfig {
            grad_accum: 2,
            warmup_steps: 3,
            weight_decay: 0.01,
            save_every: 5,
            max_grad_norm: 0.5,
            ..tiny_train(3e-3, 20, 4)
        };
        let obj = SftObjective {
            adapter: "sft",
            pad: 0,
            dev: None,
        };
        let opts = LoopOptions {
            cfg: &cfg,
            run_dir: dir,
            resume,
            stop_after,
            fingerprint: json!({"t": 1}),
            label: "test",
        };
        let r = run(&model, &obj, &items(), &opts).unwrap();
        (model, r)
    }

    #[test]
    fn resumed_run_equals_uninterrupted_run() {
        let straight = tempfile::tempdir().unwrap();
        let (a, ra) = run_to(straight.path(), false, None);
        assert_eq!(ra.steps, 20);
        let broken = tempfile::tempdir().unwrap();
        let (_, rb) = run_to(broken.path(), false, Some(10));
        assert!(rb.stopped_early);
        // without --resume an existing run is refused
        let model = tiny_model("sft", 11, 0.1);
        let obj = SftObjective {
            adapter: "sft",
            pad: 0,
            dev: None,
        };
        let cfg = tiny_train(3e-3, 20, 4);
        let err = run(
            &model,
            &obj,
            &items(),
            &LoopOptions {
                cfg: &cfg,
                run_dir: broken.path(),
                resume: false,
                stop_after: None,
                fingerprint: json!({"t": 1}),
                label: "t",
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("--resume"), "{err}");
        // a different setting is refused on resume
        let err = run(
            &model,
            &obj,
            &items(),
            &LoopOptions {
                cfg: &cfg,
                run_dir: broken.path(),
                resume: true,
                stop_after: None,
                fingerprint: json!({"t": 1}),
                label: "t",
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("different settings"), "{err}");
        let (b, rc) = run_to(broken.path(), true, None);
        assert_eq!(rc.resumed_from, Some(10));
        let d = max_var_diff(&a, &b);
        assert!(d <= 1e-6, "resumed weights differ by {d}");
        let log_a = std::fs::read_to_string(straight.path().join("metrics.jsonl")).unwrap();
        let log_b = std::fs::read_to_string(broken.path().join("metrics.jsonl")).unwrap();
        assert_eq!(log_b.lines().count(), 20);
        let loss = |l: &str| {
            serde_json::from_str::<Value>(l).unwrap()["loss"]
                .as_f64()
                .unwrap()
        };
        for (x, y) in log_a.lines().zip(log_b.lines()) {
            assert!((loss(x) - loss(y)).abs() < 1e-6, "{x} vs {y}");
        }
        // only the newest checkpoints are kept
        let kept = std::fs::read_dir(broken.path().join("checkpoints"))
            .unwrap()
            .count();
        assert_eq!(kept, 2);
    }

    #[test]
    fn data_order_is_a_per_epoch_permutation() {
        let mut o = DataOrder::new(5, 3);
        let e0: Vec<usize> = (0..5).map(|k| o.item(k)).collect();
        let e1: Vec<usize> = (5..10).map(|k| o.item(k)).collect();
        let mut s = e0.clone();
        s.sort_unstable();
        assert_eq!(s, vec![0, 1, 2, 3, 4]);
        assert_ne!(e0, e1);
        assert_eq!(total_steps(&tiny_train(1.0, 0, 4), 10), 3);
    }
}
