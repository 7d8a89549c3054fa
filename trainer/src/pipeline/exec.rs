//! Running one planned stage in-process: SFT, reward and PPO read the stage config file the
//! pipeline wrote (`--config`, `--resume`), the rationale, pair, diagnose and evaluation stages
//! are called with their arguments built from the plan. PPO goes through [`Runners`] so tests can stand in
//! for it.

use std::path::Path;

use anyhow::Context;
use std::collections::HashMap;

use rllr_core::dataset::{read_examples, write_jsonl, Example, Rationale};

use super::plan::{
    EvalPolicyJob, EvalRewardJob, Job, OnPolicyJob, PairsJob, RationalesJob, SampledJob, Stage,
};
use crate::data::cli::TaskArgs;
use crate::data::rationales::RationaleRecord;
use crate::eval::{EvalArgs, EvalWhat, PolicyArgs, RewardEvalArgs};
use crate::onpolicy::best_of_n::BestOfNArgs;
use crate::onpolicy::diagnose::DiagnoseArgs;
use crate::onpolicy::pairs::OnPolicyArgs;
use crate::onpolicy::reward::RewardModelsArgs;
use crate::onpolicy::sample::SamplerArgs;
use crate::pairs::{LabelArgs, PairInputs, PairsArgs, PairsCommand, RationaleArgs, TestArgs};
use crate::ppo::PpoArgs;
use crate::rationalize::{LocalArgs, OpenAiArgs, RationalizeArgs, TeacherKind};
use crate::reward::RewardArgs;
use crate::sft::SftArgs;

use super::config::TeacherChoice;

/// The stage entry points the pipeline calls; a seam for tests.
#[derive(Clone, Copy)]
pub struct Runners {
    pub ppo: fn(&PpoArgs) -> anyhow::Result<()>,
}

impl Default for Runners {
    fn default() -> Self {
        Self {
            ppo: crate::ppo::run,
        }
    }
}

/// Run `s` with its config file at `config`; `resume` continues an interrupted run.
pub fn run_stage(s: &Stage, config: &Path, resume: bool, runners: &Runners) -> anyhow::Result<()> {
    let config = Some(config.to_path_buf());
    // The training stages read everything from the config file; no flag overrides it.
    macro_rules! from_file {
        ($args:ident) => {
            $args {
                config,
                resume,
                stop_after: None,
                stage: Default::default(),
                train: Default::default(),
                lora: Default::default(),
            }
        };
    }
    match &s.job {
        Job::Sft => crate::sft::run(&from_file!(SftArgs)),
        Job::Reward => crate::reward::run(&from_file!(RewardArgs)),
        Job::Ppo => (runners.ppo)(&from_file!(PpoArgs)),
        Job::Rationales(j) => rationales(j, &s.out),
        Job::Pairs(j) => pairs(j, &s.out),
        Job::EvalPolicy(j) => eval_policy(j, &s.out),
        Job::EvalReward(j) => eval_reward(j, &s.out),
        Job::Diagnose(j) => crate::onpolicy::diagnose::run(&DiagnoseArgs {
            task: j.task.clone(),
            data: j.data.clone(),
            limit: j.limit,
            sampler: sampler(j),
            rewards: rewards(j),
            output: s.out.clone(),
        }),
        Job::BestOfN(j) => crate::onpolicy::best_of_n::run(&BestOfNArgs {
            task: j.task.clone(),
            data: j.data.clone(),
            limit: j.limit,
            sampler: sampler(j),
            rewards: rewards(j),
            output: s.out.clone(),
        }),
    }
}

/// The sampler of a diagnose / best-of-N job: M_sft with `[diagnose]`'s settings.
fn sampler(j: &SampledJob) -> SamplerArgs {
    let d = &j.sampling;
    SamplerArgs {
        model: j.model.clone(),
        adapter: None,
        k: d.k,
        temperature: d.temperature,
        top_k: d.top_k,
        max_new_tokens: d.max_new_tokens,
        batch_size: d.batch_size,
        seed: j.seed,
        template: j.template.clone(),
        device: j.device.clone(),
        dtype: j.dtype.clone(),
    }
}

fn rewards(j: &SampledJob) -> RewardModelsArgs {
    RewardModelsArgs {
        reward_model: j.reward_model.clone(),
        reward_model_rationale: j.reward_model_rationale.clone(),
        lambda: j.lambda,
        lambda_from: j.lambda_from.clone(),
        lambda_data: Some(j.lambda_data.clone()),
        lambda_percentile: j.lambda_percentile,
        lambda_limit: j.lambda_limit,
        lambda_cutoff: j.lambda_cutoff,
        score_batch_size: j.sampling.score_batch_size,
    }
}

fn task_args(task: &str, tasks_dir: &Path) -> TaskArgs {
    TaskArgs {
        task: task.into(),
        tasks_dir: tasks_dir.to_path_buf(),
    }
}

/// Teacher records per split in `<out>/records/`, then each slice with its records merged in as
/// `<out>/<split>.jsonl` (what every later stage reads).
fn rationales(j: &RationalesJob, out: &Path) -> anyhow::Result<()> {
    let r = &j.rationales;
    let task = task_args(&j.task, &j.tasks_dir);
    let spec = task.load()?;
    for (split, raw, limit, teacher_limit) in &j.splits {
        let records = out.join("records").join(format!("{split}.jsonl"));
        crate::rationalize::run(&RationalizeArgs {
            task: task_args(&j.task, &j.tasks_dir),
            input: raw.clone(),
            output: records.clone(),
            teacher: match r.teacher {
                TeacherChoice::Dataset => TeacherKind::Dataset,
                TeacherChoice::Openai => TeacherKind::Openai,
                TeacherChoice::Local => TeacherKind::Local,
            },
            wrong_labels: r.wrong_labels.parse().map_err(anyhow::Error::msg)?,
            limit: (*teacher_limit > 0).then_some(*teacher_limit),
            seed: j.seed,
            chunk: r.chunk,
            openai: OpenAiArgs {
                base_url: r.openai_base_url.clone(),
                openai_model: r.openai_model.clone(),
                api_key: std::env::var("OPENAI_API_KEY").ok(),
                concurrency: r.openai_concurrency,
                max_retries: 5,
                timeout_s: 60,
                cache_dir: ".rllr-cache/teacher".into(),
                openai_max_tokens: r.max_new_tokens as u32,
            },
            local: LocalArgs {
                model: r.local_model.clone(),
                template: "auto".into(),
                batch_size: r.local_batch_size,
                max_new_tokens: r.max_new_tokens,
                temperature: 0.0,
                device: j.device.clone(),
            },
        })?;
        let mut examples = read_examples(raw, &spec)?;
        if *limit > 0 {
            examples.truncate(*limit);
        }
        let recs: Vec<RationaleRecord> = match records.exists() {
            true => rllr_core::dataset::read_jsonl(&records)?,
            false => Vec::new(),
        };
        merge_records(&mut examples, &recs);
        write_jsonl(&out.join(format!("{split}.jsonl")), &examples)?;
    }
    Ok(())
}

/// Add each record to its example's rationales unless that text is already there (the dataset
/// teacher hands back the data's own rationales).
pub fn merge_records(examples: &mut [Example], records: &[RationaleRecord]) {
    let index: HashMap<String, usize> = examples
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.clone(), i))
        .collect();
    for r in records {
        let Some(&i) = index.get(&r.id) else {
            continue;
        };
        let list = examples[i].rationales.entry(r.label.clone()).or_default();
        if !list.iter().any(|x| x.text == r.text) {
            list.push(Rationale {
                text: r.text.clone(),
                source: r.source.clone(),
            });
        }
    }
}

/// `pairs label` and `pairs rationale` (teacher) or `pairs on-policy` (M_sft's samples), and
/// `pairs test`, into `<out>/{label,rationale,test}.jsonl`.
fn pairs(j: &PairsJob, out: &Path) -> anyhow::Result<()> {
    let inputs = |data: &Path, name: &str| PairInputs {
        task: task_args(&j.task, &j.tasks_dir),
        data: data.to_path_buf(),
        rationales: Vec::new(),
        output: out.join(format!("{name}.jsonl")),
        seed: j.seed,
    };
    let p = &j.pairs;
    let mut commands = match &j.on_policy {
        Some(o) => vec![PairsCommand::OnPolicy(Box::new(on_policy(j, o, out)))],
        None => vec![
            PairsCommand::Label(LabelArgs {
                inputs: inputs(&j.train, "label"),
                wrong_labels: p.wrong_labels.parse().map_err(anyhow::Error::msg)?,
            }),
            PairsCommand::Rationale(RationaleArgs {
                inputs: inputs(&j.train, "rationale"),
                prefer: p.prefer.clone(),
                wrong_label_rationales: p.wrong_label_rationales,
            }),
        ],
    };
    commands.push(PairsCommand::Test(TestArgs {
        inputs: inputs(&j.test, "test"),
        train: j.train.clone(),
    }));
    for command in commands {
        crate::pairs::run(&PairsArgs { command }).context("building pairs")?;
    }
    Ok(())
}

fn on_policy(j: &PairsJob, o: &OnPolicyJob, out: &Path) -> OnPolicyArgs {
    OnPolicyArgs {
        task: task_args(&j.task, &j.tasks_dir),
        data: j.train.clone(),
        limit: o.limit,
        sampler: SamplerArgs {
            model: o.model.clone(),
            adapter: None,
            k: o.k,
            temperature: o.temperature,
            top_k: o.top_k,
            max_new_tokens: o.max_new_tokens,
            batch_size: o.batch_size,
            seed: j.seed,
            template: o.template.clone(),
            device: o.device.clone(),
            dtype: o.dtype.clone(),
        },
        pairs_per_prompt: o.pairs_per_prompt,
        unparseable_rejected: o.unparseable_rejected,
        out_dir: out.to_path_buf(),
    }
}

fn eval_policy(j: &EvalPolicyJob, out: &Path) -> anyhow::Result<()> {
    crate::eval::run(&EvalArgs {
        what: EvalWhat::Policy(PolicyArgs {
            model: j.model.clone(),
            adapter: j.adapter.clone(),
            task: j.task.clone(),
            data: j.data.clone(),
            limit: j.limit,
            max_new_tokens: j.max_new_tokens,
            batch_size: j.batch_size,
            template: j.template.clone(),
            format_hint: false,
            output: Some(out.join("report.json")),
            predictions: Some(out.join("predictions.jsonl")),
            device: j.device.clone(),
            dtype: j.dtype.clone(),
        }),
    })
}

fn eval_reward(j: &EvalRewardJob, out: &Path) -> anyhow::Result<()> {
    crate::eval::run(&EvalArgs {
        what: EvalWhat::Reward(RewardEvalArgs {
            model: j.model.clone(),
            base: Some(j.base.clone()),
            task: j.task.clone(),
            pairs: j.pairs.clone(),
            pairs_format: crate::data::trl::PairsFormat::Rllr,
            limit: j.limit,
            cutoff_len: j.cutoff_len,
            batch_size: j.batch_size,
            template: j.template.clone(),
            output: Some(out.join("report.json")),
            scores: Some(out.join("scores.jsonl")),
            device: j.device.clone(),
            dtype: j.dtype.clone(),
        }),
    })
}
