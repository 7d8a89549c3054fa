//! The stage graph of one task, resolved into concrete stage configs: which stage reads which
//! outputs, where each writes, and the config text its stamp hashes. Nothing runs here, so the
//! plan can be printed (`--dry-run`) and tested without a model.
//!
//! Order: rationales (teacher over the train/dev/test slices, merged into the examples) → pairs
//! (label, rationale, held-out test) → SFT without rationales → SFT with rationales (M_sft) → RM
//! label (RM_rllr) → RM rationale (RM_rlhf) → PPO rlhf, rllr, rllr-mixed → evaluation on the test
//! slice. Rationales come first because SFT with rationales trains on their output when the data
//! has none of its own.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use super::config::{PairsSection, PipelineFile, PipelineSection, RationalesSection, TaskEntry};
use super::stamp::Input;
use crate::ppo::config::{PpoFile, RewardMode};
use crate::reward::RewardFile;
use crate::sft::SftFile;
use crate::train::config::TrainConfig;

/// The three PPO runs, in order: (stage suffix and report key, mode).
pub const PPO_MODES: [RewardMode; 3] = [RewardMode::Rlhf, RewardMode::Rllr, RewardMode::RllrMixed];

/// The policies the report compares: (key, column title). Key `x` is evaluated by stage `eval-x`.
pub const POLICIES: [(&str, &str); 5] = [
    ("sft-norat", "SFT"),
    ("sft", "SFT + rationales"),
    ("rlhf", "RLHF"),
    ("rllr", "RLLR"),
    ("rllr-mixed", "RLLR-mixed"),
];

/// The reward models the report scores on held-out label-sensitive pairs: (key, title).
pub const REWARD_MODELS: [(&str, &str); 2] =
    [("rm-label", "RM label"), ("rm-rationale", "RM rationale")];

/// One stage of one task.
#[derive(Debug, Clone)]
pub struct Stage {
    pub task: String,
    pub name: String,
    /// Output directory (stamp, outputs, checkpoints).
    pub out: PathBuf,
    /// The resolved config (TOML), written to `<run_dir>/configs/<task>/<name>.toml` and hashed.
    pub config: String,
    pub inputs: Vec<Input>,
    pub job: Job,
}

/// What running a stage means.
#[derive(Debug, Clone)]
pub enum Job {
    Rationales(RationalesJob),
    Pairs(PairsJob),
    /// `rllr-train sft --config <configs/…toml>`.
    Sft,
    /// `rllr-train reward --config …`.
    Reward,
    /// `rllr-train ppo --config …`.
    Ppo,
    EvalPolicy(EvalPolicyJob),
    EvalReward(EvalRewardJob),
}

/// The rationale stage: a teacher over each split slice, merged into `<out>/<split>.jsonl`.
#[derive(Debug, Clone, Serialize)]
pub struct RationalesJob {
    pub task: String,
    pub tasks_dir: PathBuf,
    /// (split, raw file, slice limit, teacher limit; 0 = all). The teacher writes rationales for
    /// the first `teacher limit` examples of the slice: on the test split only the held-out RM
    /// pairs read them, so it stops at `[eval] pairs_limit` while the policies are evaluated on
    /// the whole slice.
    pub splits: Vec<(String, PathBuf, usize, usize)>,
    pub seed: u64,
    /// Where the `local` teacher runs ([pipeline] device).
    pub device: String,
    pub rationales: RationalesSection,
}

/// The pair stage: label and rationale pairs from the train slice, test pairs from the test slice.
#[derive(Debug, Clone, Serialize)]
pub struct PairsJob {
    pub task: String,
    pub tasks_dir: PathBuf,
    pub train: PathBuf,
    pub test: PathBuf,
    pub seed: u64,
    pub pairs: PairsSection,
}

/// `rllr-train eval policy` on the test slice; the report goes to `<out>/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalPolicyJob {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub task: PathBuf,
    pub data: PathBuf,
    pub limit: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    pub template: String,
    pub device: String,
    pub dtype: String,
}

/// `rllr-train eval reward` on the held-out test pairs; the report goes to `<out>/report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct EvalRewardJob {
    pub model: PathBuf,
    pub base: PathBuf,
    pub task: PathBuf,
    pub pairs: PathBuf,
    pub limit: usize,
    pub cutoff_len: usize,
    pub batch_size: usize,
    pub template: String,
    pub device: String,
    pub dtype: String,
}

/// Output directories of one task's stages.
struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn of(&self, stage: &str) -> PathBuf {
        self.root.join(stage)
    }
    fn rat(&self, split: &str) -> PathBuf {
        self.of("rationales").join(format!("{split}.jsonl"))
    }
    fn pairs(&self, kind: &str) -> PathBuf {
        self.of("pairs").join(format!("{kind}.jsonl"))
    }
    fn model(&self, stage: &str) -> PathBuf {
        self.of(stage).join("model")
    }
}

/// Every stage of one task, in run order.
pub fn task_stages(
    run: &PipelineSection,
    t: &TaskEntry,
    f: &PipelineFile,
) -> anyhow::Result<Vec<Stage>> {
    let d = Dirs {
        root: run.run_dir.join(&t.name),
    };
    let spec = t.spec();
    let mut out = vec![
        rationales_stage(run, t, f, &d)?,
        pairs_stage(run, t, f, &d)?,
    ];
    for (name, rationales, file) in [("sft-norat", false, &f.sft_norat), ("sft", true, &f.sft)] {
        out.push(sft_stage(run, t, &d, name, rationales, file)?);
    }
    for (name, kind, file) in [
        ("rm-label", "label", &f.reward_label),
        ("rm-rationale", "rationale", &f.reward_rationale),
    ] {
        out.push(reward_stage(run, t, &d, name, kind, file)?);
    }
    for mode in PPO_MODES {
        out.push(ppo_stage(run, t, &d, mode, &f.ppo)?);
    }
    for (key, _) in POLICIES {
        let (model, adapter, up) = match key {
            "sft-norat" | "sft" => (d.model(key), None, vec![Input::Stage(d.of(key))]),
            mode => {
                let ppo = d.of(&format!("ppo-{mode}"));
                let ups = vec![Input::Stage(d.of("sft")), Input::Stage(ppo.clone())];
                (d.model("sft"), Some(ppo.join("model")), ups)
            }
        };
        let job = EvalPolicyJob {
            model,
            adapter,
            task: spec.clone(),
            data: d.rat("test"),
            limit: f.eval.limit,
            max_new_tokens: f.eval.max_new_tokens,
            batch_size: f.eval.batch_size,
            template: run.template.clone(),
            device: run.device.clone(),
            dtype: run.dtype.clone(),
        };
        let mut inputs = up;
        inputs.push(Input::Stage(d.of("rationales")));
        out.push(stage(
            t,
            &d,
            &format!("eval-{key}"),
            toml::to_string(&job)?,
            inputs,
            Job::EvalPolicy(job),
        ));
    }
    for (key, _) in REWARD_MODELS {
        let job = EvalRewardJob {
            model: d.model(key),
            base: d.model("sft"),
            task: spec.clone(),
            pairs: d.pairs("test"),
            limit: f.eval.pairs_limit,
            cutoff_len: f.eval.cutoff_len,
            batch_size: f.eval.batch_size,
            template: run.template.clone(),
            device: run.device.clone(),
            dtype: run.dtype.clone(),
        };
        let inputs = vec![
            Input::Stage(d.of(key)),
            Input::Stage(d.of("pairs")),
            Input::Stage(d.of("sft")),
        ];
        out.push(stage(
            t,
            &d,
            &format!("eval-{key}"),
            toml::to_string(&job)?,
            inputs,
            Job::EvalReward(job),
        ));
    }
    Ok(out)
}

fn stage(
    t: &TaskEntry,
    d: &Dirs,
    name: &str,
    config: String,
    inputs: Vec<Input>,
    job: Job,
) -> Stage {
    Stage {
        task: t.name.clone(),
        name: name.into(),
        out: d.of(name),
        config,
        inputs,
        job,
    }
}

fn rationales_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    f: &PipelineFile,
    d: &Dirs,
) -> anyhow::Result<Stage> {
    let limits = [
        ("train", f.data.train_limit),
        ("dev", f.data.dev_limit),
        ("test", f.data.test_limit),
    ];
    let job = RationalesJob {
        task: t.name.clone(),
        tasks_dir: t.tasks_dir.clone(),
        splits: limits
            .iter()
            .map(|(s, n)| {
                let teacher = match (*s, f.eval.pairs_limit) {
                    ("test", p) if p > 0 && (*n == 0 || p < *n) => p,
                    _ => *n,
                };
                (s.to_string(), t.split(s), *n, teacher)
            })
            .collect(),
        seed: run.seed,
        device: run.device.clone(),
        rationales: f.rationales.clone(),
    };
    let mut inputs = vec![Input::File(t.spec())];
    inputs.extend(limits.iter().map(|(s, _)| Input::File(t.split(s))));
    if let Some(m) = &f.rationales.local_model {
        inputs.push(Input::Model(m.clone()));
    }
    Ok(stage(
        t,
        d,
        "rationales",
        toml::to_string(&job)?,
        inputs,
        Job::Rationales(job),
    ))
}

fn pairs_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    f: &PipelineFile,
    d: &Dirs,
) -> anyhow::Result<Stage> {
    let job = PairsJob {
        task: t.name.clone(),
        tasks_dir: t.tasks_dir.clone(),
        train: d.rat("train"),
        test: d.rat("test"),
        seed: run.seed,
        pairs: f.pairs.clone(),
    };
    let inputs = vec![Input::Stage(d.of("rationales"))];
    Ok(stage(
        t,
        d,
        "pairs",
        toml::to_string(&job)?,
        inputs,
        Job::Pairs(job),
    ))
}

/// The pipeline sets these; a stage table that sets them is an error rather than ignored.
fn refuse_owned(stage: &str, fields: &[(&str, bool)]) -> anyhow::Result<()> {
    if let Some((k, _)) = fields.iter().find(|(_, set)| *set) {
        bail!("[{stage}]: `{k}` is set by the pipeline (from [pipeline] and the task); remove it");
    }
    Ok(())
}

/// Device, dtype and seed come from `[pipeline]`.
fn shared_train(run: &PipelineSection, tc: &TrainConfig) -> TrainConfig {
    TrainConfig {
        device: run.device.clone(),
        dtype: run.dtype.clone(),
        seed: run.seed,
        ..tc.clone()
    }
}

fn sft_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    d: &Dirs,
    name: &str,
    rationales: bool,
    file: &SftFile,
) -> anyhow::Result<Stage> {
    let c = &file.sft;
    let table = if rationales {
        "sft.sft"
    } else {
        "sft_norat.sft"
    };
    refuse_owned(
        table,
        &[
            ("model", c.model.is_some()),
            ("task", c.task.is_some()),
            ("train", c.train.is_some()),
            ("dev", c.dev.is_some()),
            ("output", c.output.is_some()),
        ],
    )?;
    let mut f = file.clone();
    f.sft.model = Some(run.model.clone());
    f.sft.task = Some(t.spec());
    f.sft.train = Some(d.rat("train"));
    f.sft.dev = Some(d.rat("dev"));
    f.sft.output = Some(d.of(name));
    f.sft.rationales = rationales;
    f.sft.template = run.template.clone();
    f.train = shared_train(run, &file.train);
    let inputs = vec![
        Input::Model(run.model.clone()),
        Input::Stage(d.of("rationales")),
    ];
    Ok(stage(t, d, name, toml::to_string(&f)?, inputs, Job::Sft))
}

fn reward_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    d: &Dirs,
    name: &str,
    kind: &str,
    file: &RewardFile,
) -> anyhow::Result<Stage> {
    let c = &file.reward;
    refuse_owned(
        &format!("reward_{kind}.reward"),
        &[
            ("model", c.model.is_some()),
            ("task", c.task.is_some()),
            ("pairs", c.pairs.is_some()),
            ("output", c.output.is_some()),
        ],
    )?;
    let mut f = file.clone();
    f.reward.model = Some(d.model("sft"));
    f.reward.task = Some(t.spec());
    f.reward.pairs = Some(d.pairs(kind));
    f.reward.output = Some(d.of(name));
    f.reward.template = run.template.clone();
    f.train = shared_train(run, &file.train);
    let inputs = vec![Input::Stage(d.of("sft")), Input::Stage(d.of("pairs"))];
    Ok(stage(t, d, name, toml::to_string(&f)?, inputs, Job::Reward))
}

fn ppo_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    d: &Dirs,
    mode: RewardMode,
    file: &PpoFile,
) -> anyhow::Result<Stage> {
    let c = &file.ppo;
    refuse_owned(
        "ppo.ppo",
        &[
            ("model", c.model.is_some()),
            ("task", c.task.is_some()),
            ("train", c.train.is_some()),
            ("reward_model", c.reward_model.is_some()),
            ("reward_model_rationale", c.reward_model_rationale.is_some()),
            ("value_model", c.value_model.is_some()),
            ("lambda_data", c.lambda_data.is_some()),
            ("dev", c.dev.is_some()),
            ("output", c.output.is_some()),
        ],
    )?;
    let name = format!("ppo-{}", mode.name());
    let mut f = file.clone();
    f.ppo.reward_mode = mode;
    f.ppo.model = Some(d.model("sft"));
    f.ppo.task = Some(t.spec());
    f.ppo.train = Some(d.rat("train"));
    f.ppo.dev = Some(d.rat("dev"));
    f.ppo.output = Some(d.of(&name));
    f.ppo.template = run.template.clone();
    f.train = shared_train(run, &file.train);
    let mut inputs = vec![Input::Stage(d.of("sft")), Input::Stage(d.of("rationales"))];
    if mode.needs_label_rm() {
        f.ppo.reward_model = Some(d.model("rm-label"));
        inputs.push(Input::Stage(d.of("rm-label")));
    }
    if mode == RewardMode::RllrMixed {
        f.ppo.lambda_data = Some(d.rat("dev"));
    }
    if mode.needs_rationale_rm() {
        f.ppo.reward_model_rationale = Some(d.model("rm-rationale"));
        inputs.push(Input::Stage(d.of("rm-rationale")));
    }
    Ok(stage(t, d, &name, toml::to_string(&f)?, inputs, Job::Ppo))
}

/// The stage config file path: `<run_dir>/configs/<task>/<stage>.toml`.
pub fn config_path(run_dir: &Path, s: &Stage) -> PathBuf {
    run_dir
        .join("configs")
        .join(&s.task)
        .join(format!("{}.toml", s.name))
}
