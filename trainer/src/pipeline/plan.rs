//! The stage graph of one task, resolved into concrete stage configs: which stage reads which
//! outputs, where each writes, and the config text its stamp hashes. Nothing runs here, so the
//! plan can be printed (`--dry-run`) and tested without a model.
//!
//! Order: rationales (teacher over the train/dev/test slices, merged into the examples) → pairs
//! (label, rationale, held-out test) → SFT without rationales → SFT with rationales (M_sft) → RM
//! label (RM_rllr) → RM rationale (RM_rlhf) → diagnose (both RMs on M_sft's dev samples) → PPO
//! rlhf, rllr, rllr-mixed → evaluation on the test slice (the five policies, best-of-N, the RMs).
//! Rationales come first because SFT with rationales trains on their output when the data has
//! none of its own. With `[pairs] source = "on-policy"` the pairs are M_sft's own samples, so the
//! pairs stage moves after `sft` and reads it.

use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::Serialize;

use super::config::{
    DiagnoseSection, PairSource, PairsSection, PipelineFile, PipelineSection, RationalesSection,
    TaskEntry,
};
use super::stamp::Input;
use crate::ppo::config::{Lambda, PpoFile, RewardMode};
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

/// Best-of-N under the mixed reward (M_sft's N samples, the highest min(r_label, λ) + r_rationale
/// answers), evaluated by stage `eval-best-of-n` in the same report schema as [`POLICIES`].
pub const BEST_OF_N: (&str, &str) = ("best-of-n", "Best-of-N (mixed)");

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
    /// `rllr-train diagnose` on the dev slice → `<out>/{report.json, samples.jsonl}`.
    Diagnose(SampledJob),
    /// `rllr-train best-of-n` on the test slice → `<out>/{report.json, predictions.jsonl}`.
    BestOfN(SampledJob),
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

/// The pair stage: label and rationale pairs from the train slice (teacher rationales, or M_sft's
/// samples when `on_policy` is set), test pairs from the test slice.
#[derive(Debug, Clone, Serialize)]
pub struct PairsJob {
    pub task: String,
    pub tasks_dir: PathBuf,
    pub train: PathBuf,
    pub test: PathBuf,
    pub seed: u64,
    pub pairs: TeacherPairs,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<OnPolicyJob>,
}

/// The teacher keys of `[pairs]`. Only these (not the on-policy keys) are in a teacher pair
/// stage's config, so its stamp is the same as before on-policy pairs existed.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherPairs {
    pub wrong_labels: String,
    pub prefer: Vec<String>,
    pub wrong_label_rationales: bool,
}

/// `pairs on-policy` from M_sft (`sft/model`).
#[derive(Debug, Clone, Serialize)]
pub struct OnPolicyJob {
    pub model: PathBuf,
    pub k: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub max_new_tokens: usize,
    pub pairs_per_prompt: usize,
    pub limit: usize,
    pub unparseable_rejected: bool,
    pub batch_size: usize,
    pub template: String,
    pub device: String,
    pub dtype: String,
}

/// M_sft's samples scored by both RMs: `diagnose` (dev) and `best-of-n` (test).
#[derive(Debug, Clone, Serialize)]
pub struct SampledJob {
    pub model: PathBuf,
    pub reward_model: PathBuf,
    pub reward_model_rationale: PathBuf,
    pub task: PathBuf,
    pub data: PathBuf,
    pub limit: usize,
    pub seed: u64,
    pub sampling: DiagnoseSection,
    /// `[ppo.ppo]`'s λ settings, calibrated on the dev slice as PPO calibrates them.
    pub lambda: Lambda,
    pub lambda_data: PathBuf,
    pub lambda_percentile: f64,
    pub lambda_limit: usize,
    pub lambda_cutoff: usize,
    /// The rllr-mixed PPO report whose λ wins when it has one (best-of-N).
    pub lambda_from: Option<PathBuf>,
    pub template: String,
    pub device: String,
    pub dtype: String,
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
    let on_policy = f.pairs.source == PairSource::OnPolicy;
    let mut out = vec![rationales_stage(run, t, f, &d)?];
    if !on_policy {
        out.push(pairs_stage(run, t, f, &d)?);
    }
    for (name, rationales, file) in [("sft-norat", false, &f.sft_norat), ("sft", true, &f.sft)] {
        out.push(sft_stage(run, t, &d, name, rationales, file)?);
    }
    if on_policy {
        out.push(pairs_stage(run, t, f, &d)?);
    }
    for (name, kind, file) in [
        ("rm-label", "label", &f.reward_label),
        ("rm-rationale", "rationale", &f.reward_rationale),
    ] {
        out.push(reward_stage(run, t, &d, name, kind, file)?);
    }
    out.push(sampled_stage(run, t, f, &d, "diagnose")?);
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
    out.push(sampled_stage(
        run,
        t,
        f,
        &d,
        &format!("eval-{}", BEST_OF_N.0),
    )?);
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
    let p = &f.pairs;
    let on_policy = (p.source == PairSource::OnPolicy).then(|| OnPolicyJob {
        model: d.model("sft"),
        k: p.k,
        temperature: p.temperature,
        top_k: p.top_k,
        max_new_tokens: p.max_new_tokens,
        pairs_per_prompt: p.pairs_per_prompt,
        limit: p.limit,
        unparseable_rejected: p.unparseable_rejected,
        batch_size: p.batch_size,
        template: run.template.clone(),
        device: run.device.clone(),
        dtype: run.dtype.clone(),
    });
    let mut inputs = vec![Input::Stage(d.of("rationales"))];
    if on_policy.is_some() {
        inputs.push(Input::Stage(d.of("sft")));
    }
    let job = PairsJob {
        task: t.name.clone(),
        tasks_dir: t.tasks_dir.clone(),
        train: d.rat("train"),
        test: d.rat("test"),
        seed: run.seed,
        pairs: teacher_pairs(p),
        on_policy,
    };
    Ok(stage(
        t,
        d,
        "pairs",
        toml::to_string(&job)?,
        inputs,
        Job::Pairs(job),
    ))
}

fn teacher_pairs(p: &PairsSection) -> TeacherPairs {
    TeacherPairs {
        wrong_labels: p.wrong_labels.clone(),
        prefer: p.prefer.clone(),
        wrong_label_rationales: p.wrong_label_rationales,
    }
}

/// `diagnose` (dev slice, `[diagnose] limit`, before PPO) or `eval-best-of-n` (test slice,
/// `[eval] limit`, λ from the rllr-mixed run): M_sft sampled with `[diagnose]`, both RMs, λ as
/// `[ppo.ppo]` sets it.
fn sampled_stage(
    run: &PipelineSection,
    t: &TaskEntry,
    f: &PipelineFile,
    d: &Dirs,
    name: &str,
) -> anyhow::Result<Stage> {
    let best_of_n = name != "diagnose";
    let c = &f.ppo.ppo;
    let mixed = d.of(&format!("ppo-{}", RewardMode::RllrMixed.name()));
    let job = SampledJob {
        model: d.model("sft"),
        reward_model: d.model("rm-label"),
        reward_model_rationale: d.model("rm-rationale"),
        task: t.spec(),
        data: d.rat(if best_of_n { "test" } else { "dev" }),
        limit: if best_of_n {
            match (f.diagnose.best_of_n_limit, f.eval.limit) {
                (0, e) => e,
                (b, 0) => b,
                (b, e) => b.min(e),
            }
        } else {
            f.diagnose.limit
        },
        seed: run.seed,
        sampling: f.diagnose.clone(),
        lambda: c.lambda,
        lambda_data: d.rat("dev"),
        lambda_percentile: c.lambda_percentile,
        lambda_limit: c.lambda_limit,
        lambda_cutoff: c.max_prompt_len + c.max_new_tokens,
        lambda_from: best_of_n.then(|| mixed.join("report.json")),
        template: run.template.clone(),
        device: run.device.clone(),
        dtype: run.dtype.clone(),
    };
    let mut inputs = vec![
        Input::Stage(d.of("sft")),
        Input::Stage(d.of("rm-label")),
        Input::Stage(d.of("rm-rationale")),
        Input::Stage(d.of("rationales")),
    ];
    if best_of_n {
        inputs.push(Input::Stage(mixed));
    }
    let config = toml::to_string(&job)?;
    let job = match best_of_n {
        true => Job::BestOfN(job),
        false => Job::Diagnose(job),
    };
    Ok(stage(t, d, name, config, inputs, job))
}

/// One line for `--dry-run`: the stages (or files) a stage reads, and where on-policy pairs come from.
pub fn describe(s: &Stage) -> String {
    let reads: Vec<String> = s
        .inputs
        .iter()
        .map(|i| match i {
            Input::Stage(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            Input::File(p) | Input::Model(p) => p.display().to_string(),
        })
        .collect();
    let mut line = format!("reads {}", reads.join(", "));
    if let Job::Pairs(PairsJob {
        on_policy: Some(o), ..
    }) = &s.job
    {
        line.push_str(&format!(
            "; label/rationale pairs on-policy: {} samples per prompt from {} (T {}, top-k {}, ≤ {} pairs per prompt)",
            o.k,
            o.model.display(),
            o.temperature,
            o.top_k,
            o.pairs_per_prompt
        ));
    }
    line
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::config::parse;

    const BASE: &str =
        "[pipeline]\nrun_dir = \"runs/x\"\nmodel = \"models/m\"\n\n[[tasks]]\nname = \"comve\"\n";

    fn stages(extra: &str) -> Vec<Stage> {
        let l = parse(&format!("{BASE}{extra}"), "t").unwrap();
        let (t, f) = &l.per_task[0];
        task_stages(&l.file.pipeline, t, f).unwrap()
    }

    fn names(s: &[Stage]) -> Vec<&str> {
        s.iter().map(|s| s.name.as_str()).collect()
    }

    fn find<'s>(s: &'s [Stage], name: &str) -> &'s Stage {
        s.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn teacher_pairs_come_before_sft_and_on_policy_pairs_after_it() {
        let t = stages("");
        let at = |s: &[Stage], n: &str| names(s).iter().position(|x| *x == n).unwrap();
        assert!(at(&t, "pairs") < at(&t, "sft-norat"));
        assert!(!find(&t, "pairs")
            .inputs
            .contains(&Input::Stage("runs/x/comve/sft".into())));
        let o = stages("[pairs]\nsource = \"on-policy\"\n");
        assert!(at(&o, "pairs") > at(&o, "sft"));
        assert!(at(&o, "pairs") < at(&o, "rm-label"));
        let p = find(&o, "pairs");
        assert!(
            p.inputs.contains(&Input::Stage("runs/x/comve/sft".into())),
            "reruns when M_sft changes"
        );
        assert!(
            describe(p).contains("on-policy: 8 samples per prompt from runs/x/comve/sft/model"),
            "{}",
            describe(p)
        );
        assert_eq!(t.len(), o.len());
    }

    #[test]
    fn a_teacher_pair_config_holds_no_on_policy_keys() {
        let t = find(&stages("[pairs]\nk = 3\n"), "pairs").config.clone();
        assert_eq!(
            t,
            find(&stages(""), "pairs").config,
            "on-policy keys do not touch a teacher stamp"
        );
        assert!(!t.contains("on_policy"), "{t}");
        let o = find(&stages("[pairs]\nsource = \"on-policy\"\nk = 3\n"), "pairs")
            .config
            .clone();
        assert!(o.contains("[on_policy]") && o.contains("k = 3"), "{o}");
    }

    #[test]
    fn diagnose_runs_after_both_rms_and_before_ppo_on_dev() {
        let s = stages("[ppo.ppo]\nlambda = \"auto\"\n");
        let at = |n: &str| names(&s).iter().position(|x| *x == n).unwrap();
        assert!(at("rm-rationale") < at("diagnose") && at("diagnose") < at("ppo-rlhf"));
        let Job::Diagnose(j) = &find(&s, "diagnose").job else {
            panic!("diagnose job")
        };
        assert_eq!(j.data, PathBuf::from("runs/x/comve/rationales/dev.jsonl"));
        assert_eq!((j.sampling.k, j.limit, j.lambda), (8, 64, Lambda::Auto));
        assert_eq!(j.lambda_from, None);
    }

    #[test]
    fn best_of_n_answers_the_test_slice_with_the_mixed_runs_lambda() {
        let s = stages("[eval]\nlimit = 30\n[diagnose]\nk = 4\n");
        let b = find(&s, "eval-best-of-n");
        let Job::BestOfN(j) = &b.job else {
            panic!("best-of-n job")
        };
        assert_eq!(j.data, PathBuf::from("runs/x/comve/rationales/test.jsonl"));
        assert_eq!((j.sampling.k, j.limit), (4, 30));
        let mixed = PathBuf::from("runs/x/comve/ppo-rllr-mixed");
        assert_eq!(j.lambda_from, Some(mixed.join("report.json")));
        assert!(b.inputs.contains(&Input::Stage(mixed)));
    }
}
