//! `rllr-train ppo`: PPO against a label-sensitive, rationale-sensitive or mixed reward
//! (docs/method.md §5.3–5.4, TRL 0.7.2 semantics), on one frozen M_sft with named LoRA adapters for the
//! policy, the value model and the reward models, switched per forward, so the base is held once.
//!
//! A step: take the next `batch_size` prompts (seeded per-epoch shuffle), sample one response each
//! from the policy (eval mode, seeded per (seed, step, row)), score them with the reward model(s),
//! then [`step::StepSpec::step`]. Checkpoints hold the policy/value adapters, the value head, the
//! AdamW moments, the KL coefficient and the running score moments, so `--resume` after a crash
//! replays exactly the run that was interrupted.

pub mod config;
pub mod math;
pub mod rollout;
pub mod step;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use rllr_core::checkpoint::{load_adapter, save_adapter};
use rllr_core::dataset::{read_examples, Example};
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::task::TaskSpec;
use rllr_core::{ForwardCtx, Llama, SamplingParams, StopCriteria};
use serde_json::{json, Map, Value};

use crate::stage::{self, Loaded};
use crate::train::config::{required, stage_args, TrainConfig};
use crate::train::optim::{learning_rate, AdamW, AdamWParams};
use crate::train::train_loop::{self, mix_seed, DataOrder};
use config::{Lambda, PpoConfig, PpoFile, PpoStageArgs, RewardMode};
use math::{KlController, LossParams, RunningMoments};
use rollout::{Rollout, RolloutSpec, SeqBatch};
use step::{PpoState, StepSpec};

/// Adapter (and head) names inside the one model.
pub const POLICY: &str = "policy";
pub const VALUE: &str = "value";
pub const RM_LABEL: &str = "rm_label";
pub const RM_RATIONALE: &str = "rm_rationale";

stage_args! {
    /// `rllr-train ppo` arguments.
    PpoArgs => PpoFile { ppo: PpoStageArgs }
}

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
    pub dev: Option<crate::eval::PolicyReport>,
}

/// Check the settings that need no model, before anything is loaded.
fn validate(c: &PpoConfig, tc: &TrainConfig) -> anyhow::Result<()> {
    train_loop::validate(tc)?;
    if tc.grad_accum != 1 {
        bail!(
            "ppo: grad_accum is not used (minibatches are set by mini_batch_size); leave it at 1"
        );
    }
    if c.ppo_epochs == 0 {
        bail!("ppo_epochs must be >= 1");
    }
    if c.mini_batch_size > tc.batch_size {
        bail!(
            "mini_batch_size ({}) must be <= batch_size ({})",
            c.mini_batch_size,
            tc.batch_size
        );
    }
    if c.max_new_tokens == 0 {
        bail!("max_new_tokens must be >= 1");
    }
    if !(0.0..=100.0).contains(&c.lambda_percentile) {
        bail!("lambda_percentile must be in [0, 100]");
    }
    if !(0.0..=1.0).contains(&c.label_weight) {
        bail!("label_weight must be in [0, 1]");
    }
    for (k, v) in [
        ("cliprange", c.cliprange),
        ("cliprange_value", c.cliprange_value),
        ("kl_horizon", c.kl_horizon),
        ("kl_target", c.kl_target),
    ] {
        if v.is_nan() || v <= 0.0 {
            bail!("{k} must be > 0, got {v}");
        }
    }
    if c.init_kl_coef.is_nan() || c.init_kl_coef < 0.0 {
        bail!("init_kl_coef must be >= 0");
    }
    SamplingParams {
        temperature: c.temperature,
        top_k: Some(c.top_k),
        top_p: Some(c.top_p),
        seed: 0,
    }
    .validate()
    .context("ppo sampling settings")?;
    Ok(())
}

/// Open a reward-model directory and check it is one, for `task`, trained on `base`.
pub fn check_reward_model(
    dir: &Path,
    what: &str,
    task: &TaskSpec,
    base: &Path,
) -> anyhow::Result<()> {
    if !dir.join("adapter_config.json").is_file() {
        bail!(
            "{what} {}: not a reward model directory (no adapter_config.json; give the model/ folder of an `rllr-train reward` run)",
            dir.display()
        );
    }
    let m =
        Manifest::read(dir)?.with_context(|| format!("{what} {}: no rllr.json", dir.display()))?;
    if m.kind != ModelKind::Reward {
        bail!(
            "{what} {}: a {:?} model, not a reward model",
            dir.display(),
            m.kind
        );
    }
    if let Some(t) = m.task.as_deref().filter(|t| *t != task.name) {
        bail!(
            "{what} {} was trained for task '{t}', not '{}'",
            dir.display(),
            task.name
        );
    }
    if let Some(b) = &m.base_checkpoint {
        let same = match (std::fs::canonicalize(b), std::fs::canonicalize(base)) {
            (Ok(x), Ok(y)) => x == y,
            _ => Path::new(b) == base,
        };
        if !same {
            bail!(
                "{what} {} was trained on base {b}, but PPO runs on {} (the reward models must share the policy's M_sft)",
                dir.display(),
                base.display()
            );
        }
    }
    Ok(())
}

/// The reward models a mode needs, and the value model's source.
struct Models {
    label: Option<PathBuf>,
    rationale: Option<PathBuf>,
    value: PathBuf,
}

fn reward_models(c: &PpoConfig) -> anyhow::Result<Models> {
    let mode = c.reward_mode;
    let label = if mode.needs_label_rm() {
        Some(required(&c.reward_model, "reward_model")?)
    } else {
        None
    };
    let rationale = if mode.needs_rationale_rm() {
        Some(required(
            &c.reward_model_rationale,
            "reward_model_rationale",
        )?)
    } else {
        None
    };
    let value = match (&c.value_model, &label, &rationale) {
        (Some(v), _, _) => v.clone(),
        (None, Some(l), _) => l.clone(),
        (None, None, Some(r)) => r.clone(),
        (None, None, None) => unreachable!("every mode reads a reward model"),
    };
    Ok(Models {
        label,
        rationale,
        value,
    })
}

/// Tokenised training prompts (index into the example list, ids); over-long prompts are left out.
fn encode_prompts(
    loaded: &Loaded,
    task: &TaskSpec,
    examples: &[Example],
    max_len: usize,
) -> anyhow::Result<Vec<(usize, Vec<u32>)>> {
    let mut out = Vec::with_capacity(examples.len());
    let mut skipped = 0;
    for (i, ex) in examples.iter().enumerate() {
        let text = stage::prompt_text(task, &loaded.template, &ex.input, None)?;
        let ids = stage::encode(&loaded.tokenizer, &text)?;
        if ids.len() > max_len {
            skipped += 1;
            continue;
        }
        out.push((i, ids));
    }
    if skipped > 0 {
        eprintln!("ppo: left out {skipped} prompts longer than max_prompt_len = {max_len} tokens");
    }
    if out.is_empty() {
        bail!("no training prompt fits max_prompt_len = {max_len}");
    }
    Ok(out)
}

/// How `lambda = "auto"` is calibrated (D7); PPO and the on-policy diagnostics share it.
pub struct LambdaSpec<'a> {
    /// Held-out examples whose gold responses (human rationale + gold label) are scored.
    pub data: &'a Path,
    /// Score at most this many examples (0: all).
    pub limit: usize,
    /// The percentile (0–100) of the scores that becomes λ.
    pub percentile: f64,
    /// Token cap of prompt + response (proportional cut, docs/method.md §2.3).
    pub cutoff: usize,
}

/// λ for `--lambda auto` (D7): the percentile of the label RM's scores (adapter and head
/// [`RM_LABEL`]) on the gold (correct-label, human-rationale) responses of held-out examples.
pub fn calibrate_lambda(
    loaded: &Loaded,
    task: &TaskSpec,
    spec: &LambdaSpec,
) -> anyhow::Result<(f64, String)> {
    let path = spec.data;
    let mut examples = read_examples(path, task)?;
    if spec.limit > 0 {
        examples.truncate(spec.limit);
    }
    let mut seqs = Vec::new();
    for ex in &examples {
        let Some(resp) = stage::gold_response(task, ex, true)? else {
            continue;
        };
        let prompt = stage::encode(
            &loaded.tokenizer,
            &stage::prompt_text(task, &loaded.template, &ex.input, None)?,
        )?;
        let r = stage::response_ids(&loaded.tokenizer, &loaded.template, &loaded.eos, &resp)?;
        let (s, t) = stage::proportional_cut(prompt.len(), r.len(), spec.cutoff);
        seqs.push(Rollout {
            item: 0,
            query: prompt[..s].to_vec(),
            response: r[..t.max(1).min(r.len())].to_vec(),
            text: String::new(),
        });
    }
    if seqs.is_empty() {
        bail!(
            "{}: no example with a gold rationale for --lambda auto",
            path.display()
        );
    }
    let refs: Vec<&Rollout> = seqs.iter().collect();
    let scores = rm_scores(&loaded.model, loaded.pad, &refs, RM_LABEL, None, 8)?;
    let lambda = math::percentile(&scores, spec.percentile).expect("non-empty");
    let source = format!(
        "auto: p{} of the label RM's scores on {} gold responses of {} (min {:.3}, median {:.3}, max {:.3})",
        spec.percentile,
        scores.len(),
        path.display(),
        math::percentile(&scores, 0.0).unwrap_or(f64::NAN),
        math::percentile(&scores, 50.0).unwrap_or(f64::NAN),
        math::percentile(&scores, 100.0).unwrap_or(f64::NAN),
    );
    Ok((lambda, source))
}

/// Last-token scores of the reward model loaded as adapter + head `name`, in raw RM units, one per
/// rollout, `batch_size` sequences per forward; `dropout_seed` `None` is eval mode.
pub fn rm_scores(
    model: &Llama,
    pad: u32,
    rollouts: &[&Rollout],
    name: &str,
    dropout_seed: Option<u64>,
    batch_size: usize,
) -> anyhow::Result<Vec<f64>> {
    let ctx = ForwardCtx {
        adapter: Some(name),
        dropout_seed,
    };
    let mut out = Vec::with_capacity(rollouts.len());
    for chunk in rollouts.chunks(batch_size.max(1)) {
        let sb = SeqBatch::new(chunk, pad, model)?;
        out.extend(sb.scores(model, &ctx, name)?);
    }
    Ok(out)
}

/// Load a frozen reward model (PEFT adapter + score head) from `dir` as adapter and head `name`.
pub fn load_reward_model(m: &mut Llama, dir: &Path, name: &str, what: &str) -> anyhow::Result<()> {
    load_adapter(m, dir, name, false).with_context(|| format!("{what} {}", dir.display()))?;
    if m.head(name).is_none() {
        bail!(
            "{what} {}: the reward model has no score head",
            dir.display()
        );
    }
    Ok(())
}

/// The task reward of each rollout (raw, before normalisation); may add component means to `stats`.
pub trait RewardFn {
    fn score(
        &self,
        rollouts: &[Rollout],
        step: usize,
        stats: &mut Map<String, Value>,
    ) -> anyhow::Result<Vec<f64>>;
}

/// The reward models' scores in raw RM units, combined by the reward mode.
struct Scorer<'a> {
    mode: RewardMode,
    lambda: f64,
    label_weight: f64,
    pad: u32,
    dropout: bool,
    seed: u64,
    model: &'a Llama,
}

impl RewardFn for Scorer<'_> {
    fn score(
        &self,
        rollouts: &[Rollout],
        step: usize,
        stats: &mut Map<String, Value>,
    ) -> anyhow::Result<Vec<f64>> {
        let refs: Vec<&Rollout> = rollouts.iter().collect();
        let read = |name: &str, k: u64| -> anyhow::Result<Vec<f64>> {
            let seed = self
                .dropout
                .then(|| mix_seed(&[self.seed, step as u64, 0x5c0, k]));
            rm_scores(self.model, self.pad, &refs, name, seed, refs.len())
        };
        let label = self
            .mode
            .needs_label_rm()
            .then(|| read(RM_LABEL, 1))
            .transpose()?;
        let rationale = self
            .mode
            .needs_rationale_rm()
            .then(|| read(RM_RATIONALE, 2))
            .transpose()?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        if let Some(l) = &label {
            stats.insert("rewards/label_mean".into(), json!(mean(l)));
        }
        if let Some(r) = &rationale {
            stats.insert("rewards/rationale_mean".into(), json!(mean(r)));
        }
        Ok(combine(
            self.mode,
            self.lambda,
            self.label_weight,
            label.as_deref(),
            rationale.as_deref(),
        ))
    }
}

/// The mixed reward of docs/method.md §5.3 and its variants.
pub fn combine(
    mode: RewardMode,
    lambda: f64,
    w: f64,
    label: Option<&[f64]>,
    rationale: Option<&[f64]>,
) -> Vec<f64> {
    match (mode, label, rationale) {
        (RewardMode::Rllr, Some(l), _) => l.to_vec(),
        (RewardMode::Rlhf, _, Some(r)) => r.to_vec(),
        (RewardMode::RllrMixed, Some(l), Some(r)) => {
            l.iter().zip(r).map(|(l, r)| l.min(lambda) + r).collect()
        }
        (RewardMode::RllrWeighted, Some(l), Some(r)) => l
            .iter()
            .zip(r)
            .map(|(l, r)| w * l + (1.0 - w) * r)
            .collect(),
        _ => panic!("combine: the scores {mode:?} needs were not computed"),
    }
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

/// Run the PPO stage.
pub fn run(args: &PpoArgs) -> anyhow::Result<()> {
    let file = args.resolve()?;
    let (c, tc) = (&file.ppo, &file.train);
    validate(c, tc)?;
    let lora = file.lora.to_lora()?;
    let model_dir = required(&c.model, "model")?;
    let task_path = required(&c.task, "task")?;
    let train_path = required(&c.train, "train")?;
    let out = required(&c.output, "output")?;
    let models = reward_models(c)?;
    let task =
        TaskSpec::load(&task_path).with_context(|| format!("task {}", task_path.display()))?;
    let mut examples = read_examples(&train_path, &task)?;
    if c.limit > 0 {
        examples.truncate(c.limit);
    }
    if examples.is_empty() {
        bail!("{}: no training examples", train_path.display());
    }
    for (dir, what) in [
        (&models.label, "reward_model"),
        (&models.rationale, "reward_model_rationale"),
        (&Some(models.value.clone()), "value_model"),
    ] {
        if let Some(d) = dir {
            check_reward_model(d, what, &task, &model_dir)?;
        }
    }
    let ckpt = stage::open_checkpoint(&model_dir, "--model", Some(&task))?;
    let mut loaded = stage::load(ckpt, &c.template, &tc.device, &tc.dtype)?;
    let prompts = encode_prompts(&loaded, &task, &examples, c.max_prompt_len)?;
    if prompts.len() < tc.batch_size {
        bail!(
            "{} usable prompts, fewer than one batch of {}",
            prompts.len(),
            tc.batch_size
        );
    }
    let m = &mut loaded.model;
    m.add_adapter(POLICY, &lora, tc.seed)?;
    load_adapter(m, &models.value, VALUE, true)
        .with_context(|| format!("value model {}", models.value.display()))?;
    if m.head(VALUE).is_none() {
        bail!(
            "value_model {}: the adapter has no score head",
            models.value.display()
        );
    }
    if let Some(d) = &models.label {
        load_reward_model(m, d, RM_LABEL, "reward_model")?;
    }
    if let Some(d) = &models.rationale {
        load_reward_model(m, d, RM_RATIONALE, "reward_model_rationale")?;
    }
    let (lambda, lambda_source) = match (c.reward_mode, c.lambda) {
        (RewardMode::RllrMixed, Lambda::Auto) => {
            let path = required(&c.lambda_data, "lambda_data")
                .context("--lambda auto scores held-out correct-label responses")?;
            let spec = LambdaSpec {
                data: &path,
                limit: c.lambda_limit,
                percentile: c.lambda_percentile,
                cutoff: c.max_prompt_len + c.max_new_tokens,
            };
            let (l, s) = calibrate_lambda(&loaded, &task, &spec)?;
            eprintln!("ppo: λ = {l:.4} ({s})");
            (Some(l), Some(s))
        }
        (RewardMode::RllrMixed, Lambda::Fixed(l)) => (Some(l), Some("fixed".to_string())),
        _ => (None, None),
    };
    let fingerprint =
        json!({"ppo": c, "lora": file.lora, "lambda": lambda, "prompts": prompts.len()});
    let report = train(
        &loaded,
        &task,
        &examples,
        &prompts,
        c,
        tc,
        lambda,
        &out,
        args,
        fingerprint,
    )?;
    let Some(mut report) = report else {
        std::process::exit(137);
    };
    report.lambda_source = lambda_source;
    report.dev = dev_eval(&loaded, &task, c)?;
    let mut manifest = Manifest::new(ModelKind::Policy, "ppo");
    manifest.task = Some(task.name.clone());
    manifest.labels = task.labels.iter().map(|l| l.name.clone()).collect();
    manifest.answer_prefix = task.answer_prefix.clone();
    manifest.task_spec = Some(task.clone());
    manifest.rationales = true;
    manifest.chat_template = Some(loaded.template.clone());
    manifest.base_checkpoint = Some(model_dir.display().to_string());
    manifest.adapter = Some(POLICY.into());
    manifest.provenance.config = serde_json::to_value(&file)?;
    manifest.provenance.metrics = serde_json::to_value(&report)?;
    save_adapter(
        &loaded.model,
        POLICY,
        None,
        &model_dir.display().to_string(),
        &out.join("model"),
        Some(&manifest),
    )?;
    rllr_core::fsutil::write_file_atomic(
        &out.join("report.json"),
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    println!(
        "ppo ({}): {} steps in {:.1}s (rollout {:.0}s, scoring {:.0}s, update {:.0}s); policy adapter at {}; first quarter {} → last quarter {}",
        report.reward_mode,
        report.steps,
        report.wall_s,
        report.rollout_s,
        report.scoring_s,
        report.update_s,
        out.join("model").display(),
        report.first_quarter,
        report.last_quarter
    );
    Ok(())
}

/// The trained policy's greedy answers on `c.dev` (none when unset), for choosing a policy on dev.
fn dev_eval(
    loaded: &Loaded,
    task: &TaskSpec,
    c: &PpoConfig,
) -> anyhow::Result<Option<crate::eval::PolicyReport>> {
    let Some(path) = &c.dev else {
        return Ok(None);
    };
    let mut dev = read_examples(path, task)?;
    if c.dev_limit > 0 {
        dev.truncate(c.dev_limit);
    }
    let spec =
        crate::eval::PolicyEvalSpec::of(task, loaded, c.dev_max_new_tokens, c.dev_batch_size);
    let r = crate::eval::evaluate_policy(
        &loaded.model,
        &ForwardCtx::with_adapter(POLICY),
        &dev,
        &spec,
    )?;
    eprintln!(
        "ppo: dev accuracy {:.3} ({} examples, {:.1} % unparseable)",
        r.accuracy,
        r.n,
        100.0 * r.unparseable_rate
    );
    Ok(Some(r))
}

/// The loop: returns `None` when `--stop-after` stopped it (the caller exits as a crash would).
#[allow(clippy::too_many_arguments)]
fn train(
    loaded: &Loaded,
    task: &TaskSpec,
    examples: &[Example],
    prompts: &[(usize, Vec<u32>)],
    c: &PpoConfig,
    tc: &TrainConfig,
    lambda: Option<f64>,
    out: &Path,
    args: &PpoArgs,
    fingerprint: Value,
) -> anyhow::Result<Option<PpoReport>> {
    let model = &loaded.model;
    let mini = if c.mini_batch_size == 0 {
        tc.batch_size
    } else {
        c.mini_batch_size
    };
    let spec = StepSpec {
        policy: POLICY,
        value: VALUE,
        pad: loaded.pad,
        gamma: c.gamma,
        gae_lambda: c.gae_lambda,
        loss: LossParams {
            cliprange: c.cliprange,
            cliprange_value: c.cliprange_value,
            vf_coef: c.vf_coef,
            ratio_threshold: c.ratio_threshold,
        },
        ppo_epochs: c.ppo_epochs,
        mini_batch_size: mini,
        score_norm: c.score_norm,
        dropout: c.dropout,
        head_dropout: 0.1,
        max_grad_norm: tc.max_grad_norm,
        seed: tc.seed,
    };
    let rollout_spec = RolloutSpec {
        adapter: Some(POLICY),
        sampling: SamplingParams {
            temperature: c.temperature,
            top_k: (c.top_k > 0).then_some(c.top_k),
            top_p: Some(c.top_p),
            seed: 0,
        },
        stop: StopCriteria {
            eos_ids: loaded.eos.clone(),
            stop_strings: loaded.template.stop_strings(),
            max_new_tokens: c.max_new_tokens,
        },
        pad: loaded.pad,
    };
    let scorer = Scorer {
        mode: c.reward_mode,
        lambda: lambda.unwrap_or(f64::INFINITY),
        label_weight: c.label_weight,
        pad: loaded.pad,
        dropout: c.dropout,
        seed: tc.seed,
        model,
    };
    let initial = PpoState {
        kl: KlController {
            value: c.init_kl_coef,
            target: c.adaptive_kl.then_some(c.kl_target),
            horizon: c.kl_horizon,
        },
        moments: RunningMoments::default(),
    };
    let hooks = Hooks {
        accuracy: Some((task, examples)),
        tokenizer: Some(&loaded.tokenizer),
        rollout: &rollout_spec,
        reward: &scorer,
        lambda,
        label: c.reward_mode.name(),
    };
    let run = RunDir {
        out,
        resume: args.resume,
        stop_after: args.stop_after,
        fingerprint,
    };
    run_loop(model, &spec, &hooks, prompts, tc, initial, &run)
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
pub struct RunDir<'a> {
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
    run: &RunDir,
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
    let ckpt_dir = out.join("checkpoints");
    let log_path = out.join("metrics.jsonl");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tcfp = serde_json::to_value(tc)?;
    if let Some(m) = tcfp.as_object_mut() {
        for k in ["save_every", "keep_checkpoints", "eval_every", "device"] {
            m.remove(k);
        }
    }
    let fingerprint = json!({"train": tcfp, "stage": run.fingerprint});
    let mut state = initial;
    let mut start = 0;
    let mut resumed_from = None;
    match (train_loop::latest_checkpoint(&ckpt_dir)?, resume) {
        (Some((step, dir)), true) => {
            let extra = train_loop::load_checkpoint(&dir, &mut opt, &fingerprint)?;
            state = serde_json::from_value(extra)
                .with_context(|| format!("{}: PPO state", dir.display()))?;
            train_loop::truncate_log(&log_path, step)?;
            start = step;
            resumed_from = Some(step);
            eprintln!("ppo: resuming from {} (step {step}/{total})", dir.display());
        }
        (None, true) => eprintln!("ppo: --resume: no checkpoint in {}, starting fresh", ckpt_dir.display()),
        (Some((step, _)), false) => bail!(
            "{} already holds checkpoints (step {step}); pass --resume to continue or use a new output directory",
            ckpt_dir.display()
        ),
        (None, false) => train_loop::truncate_log(&log_path, 0)?,
    }
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
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
            train_loop::save_checkpoint(
                &ckpt_dir,
                step + 1,
                &opt,
                &fingerprint,
                tc.keep_checkpoints,
                &serde_json::to_value(state)?,
            )?;
        }
        if stop_after == Some(step + 1) && !done {
            bar.abandon();
            eprintln!(
                "ppo: stopping after step {} as asked (--stop-after)",
                step + 1
            );
            return Ok(None);
        }
    }
    bar.finish_and_clear();
    let (first_q, last_q) = quarter_means(&log_path)?;
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

/// Means of the headline statistics over the first and the last quarter of the logged steps.
fn quarter_means(log: &Path) -> anyhow::Result<(Value, Value)> {
    let recs: Vec<Value> = std::fs::read_to_string(log)?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let q = (recs.len() / 4).max(1);
    let keys = [
        "objective/scores",
        "rollout/label_accuracy",
        "objective/kl",
        "tokens/responses_len_mean",
    ];
    let summarise = |rs: &[Value]| {
        let mut m = Map::new();
        for k in keys {
            let v: Vec<f64> = rs.iter().filter_map(|r| r[k].as_f64()).collect();
            m.insert(
                k.into(),
                json!(v.iter().sum::<f64>() / v.len().max(1) as f64),
            );
        }
        Value::Object(m)
    };
    let n = recs.len();
    Ok((
        summarise(&recs[..q.min(n)]),
        summarise(&recs[n.saturating_sub(q)..]),
    ))
}

#[cfg(test)]
mod tests;
