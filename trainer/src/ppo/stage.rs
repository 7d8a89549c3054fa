//! The `rllr-train ppo` stage around the loop: read and check the config, data and models, load
//! the policy, value and reward adapters onto one M_sft, calibrate λ, run [`super::ppo_loop`]
//! and write the policy adapter with its manifest, the dev evaluation and `report.json`.

use std::path::Path;

use anyhow::{bail, Context};
use rllr_core::checkpoint::{load_adapter, save_adapter};
use rllr_core::dataset::{read_examples, Example};
use rllr_core::manifest::ModelKind;
use rllr_core::task::TaskSpec;
use rllr_core::{ForwardCtx, SamplingParams, StopCriteria};
use serde_json::{json, Value};

use super::config::{Lambda, PpoConfig, RewardMode};
use super::lambda::{calibrate_lambda, LambdaSpec};
use super::math::{KlController, LossParams, RunningMoments};
use super::ppo_loop::{run_loop, Hooks, PpoReport, RunSpec};
use super::reward_models::{check_reward_model, load_reward_model, reward_models};
use super::rollout::RolloutSpec;
use super::scorer::Scorer;
use super::step::{PpoState, StepSpec};
use super::validate::validate;
use super::{PpoArgs, POLICY, RM_LABEL, RM_RATIONALE, VALUE};
use crate::stage::{self, Loaded};
use crate::train::config::{required, TrainConfig};
use crate::train::run_dir::{stage_manifest, Stopped};

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
    let mut report = report.ok_or_else(|| Stopped {
        stage: "ppo".into(),
        step: args.stop_after.unwrap_or_default(),
    })?;
    report.lambda_source = lambda_source;
    report.dev = dev_eval(&loaded, &task, c)?;
    let mut manifest = stage_manifest(
        ModelKind::Policy,
        "ppo",
        &task,
        &loaded.template,
        &model_dir,
        &file,
        &report,
    )?;
    manifest.rationales = true;
    manifest.adapter = Some(POLICY.into());
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

/// The trained policy's greedy answers on `c.dev` (none when unset), for choosing a policy on dev.
fn dev_eval(
    loaded: &Loaded,
    task: &TaskSpec,
    c: &PpoConfig,
) -> anyhow::Result<Option<crate::metrics::PolicyReport>> {
    let Some(path) = &c.dev else {
        return Ok(None);
    };
    let mut dev = read_examples(path, task)?;
    if c.dev_limit > 0 {
        dev.truncate(c.dev_limit);
    }
    let spec =
        crate::metrics::PolicyEvalSpec::of(task, loaded, c.dev_max_new_tokens, c.dev_batch_size);
    let r = crate::metrics::evaluate_policy(
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

/// The loop: returns `None` when `--stop-after` stopped it (the caller returns [`Stopped`]).
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
    let run = RunSpec {
        out,
        resume: args.resume,
        stop_after: args.stop_after,
        fingerprint,
    };
    run_loop(model, &spec, &hooks, prompts, tc, initial, &run)
}
