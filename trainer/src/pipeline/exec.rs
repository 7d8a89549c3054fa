//! Running one planned stage in-process: SFT, reward and PPO read the stage config file the
//! pipeline wrote (`--config`, `--resume`), the rationale, pair and evaluation stages are called
//! with their arguments built from the plan. PPO goes through [`Runners`] so tests can stand in
//! for it.

use std::path::Path;

use anyhow::Context;
use std::collections::HashMap;

use rllr_core::dataset::{read_examples, write_jsonl, Example, Rationale};

use super::plan::{EvalPolicyJob, EvalRewardJob, Job, PairsJob, RationalesJob, Stage};
use crate::data::cli::TaskArgs;
use crate::eval::{EvalArgs, EvalWhat, PolicyArgs, RewardEvalArgs};
use crate::pairs::{LabelArgs, PairInputs, PairsArgs, PairsCommand, RationaleArgs, TestArgs};
use crate::ppo::PpoArgs;
use crate::rationalize::{LocalArgs, OpenAiArgs, RationaleRecord, RationalizeArgs, TeacherKind};
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
    for (split, raw, limit) in &j.splits {
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
            limit: (*limit > 0).then_some(*limit),
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
                batch_size: 8,
                max_new_tokens: r.max_new_tokens,
                temperature: 0.0,
                device: "cpu".into(),
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

/// `pairs label`, `pairs rationale` and `pairs test` into `<out>/{label,rationale,test}.jsonl`.
fn pairs(j: &PairsJob, out: &Path) -> anyhow::Result<()> {
    let inputs = |data: &Path, name: &str| PairInputs {
        task: task_args(&j.task, &j.tasks_dir),
        data: data.to_path_buf(),
        rationales: Vec::new(),
        output: out.join(format!("{name}.jsonl")),
        seed: j.seed,
    };
    let p = &j.pairs;
    let commands = [
        PairsCommand::Label(LabelArgs {
            inputs: inputs(&j.train, "label"),
            wrong_labels: p.wrong_labels.parse().map_err(anyhow::Error::msg)?,
        }),
        PairsCommand::Rationale(RationaleArgs {
            inputs: inputs(&j.train, "rationale"),
            prefer: p.prefer.clone(),
            wrong_label_rationales: p.wrong_label_rationales,
        }),
        PairsCommand::Test(TestArgs {
            inputs: inputs(&j.test, "test"),
            train: j.train.clone(),
        }),
    ];
    for command in commands {
        crate::pairs::run(&PairsArgs { command }).context("building pairs")?;
    }
    Ok(())
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
