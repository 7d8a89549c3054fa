//! The pipeline's config file: a `[pipeline]` table (run directory, base model, device, seed), a
//! task list, and one table per stage that *is* that stage's own config file (`[sft]` holds an
//! `SftFile`: `[sft.sft]`, `[sft.train]`, `[sft.lora]`), so no stage setting is declared twice.
//! Each `[[tasks]]` entry may carry `overrides`, merged over the root tables for that task only.
//! Every table rejects unknown keys, after the per-task merge too.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::ppo::config::PpoFile;
use crate::reward::RewardFile;
use crate::sft::SftFile;

/// `[pipeline]`: what every stage shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSection {
    /// Where everything goes: `<run_dir>/<task>/<stage>/`, `configs/`, `report.{md,json}`.
    pub run_dir: PathBuf,
    /// Base chat model (HF layout), e.g. models/smollm2-135m-instruct.
    pub model: PathBuf,
    /// Chat template of every stage (auto: from the checkpoint).
    #[serde(default = "auto")]
    pub template: String,
    /// cpu, cuda or cuda:N, for every stage.
    #[serde(default = "cpu")]
    pub device: String,
    /// Compute dtype of every stage.
    #[serde(default = "f32")]
    pub dtype: String,
    /// Seed of every stage (init, data order, dropout, pair sampling).
    #[serde(default = "seed")]
    pub seed: u64,
    /// After the report, ship the small results here (`<export_dir>/<task>/{sft, rm-label,
    /// rm-rationale, rlhf, rllr, rllr-mixed}` adapters with relative bases, plus the report):
    /// the quickstart writes the server's embedded default, `models/quickstart`.
    #[serde(default)]
    pub export_dir: Option<PathBuf>,
}

fn auto() -> String {
    "auto".into()
}
fn cpu() -> String {
    "cpu".into()
}
fn f32() -> String {
    "f32".into()
}
fn seed() -> u64 {
    42
}

/// One `[[tasks]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskEntry {
    /// Task name: spec `<tasks_dir>/<name>.json`, splits `<data_dir>/{train,dev,test}.jsonl`.
    pub name: String,
    #[serde(default = "tasks_dir")]
    pub tasks_dir: PathBuf,
    /// Default `data/<name>`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Tables merged over the root ones for this task (e.g. `[tasks.overrides.rationales]`).
    #[serde(default)]
    pub overrides: toml::Table,
}

fn tasks_dir() -> PathBuf {
    "data/tasks".into()
}

impl TaskEntry {
    /// The task spec file.
    pub fn spec(&self) -> PathBuf {
        self.tasks_dir.join(format!("{}.json", self.name))
    }

    /// A raw split file (`train`, `dev` or `test`).
    pub fn split(&self, split: &str) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| Path::new("data").join(&self.name))
            .join(format!("{split}.jsonl"))
    }
}

/// `[data]`: how much of each split the run uses (0: all). Slices are prefixes of the bundled
/// files, so they are the same on every machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSection {
    pub train_limit: usize,
    pub dev_limit: usize,
    pub test_limit: usize,
}

impl Default for DataSection {
    fn default() -> Self {
        Self {
            train_limit: 0,
            dev_limit: 200,
            test_limit: 0,
        }
    }
}

/// Who writes rationales (the `rationalize` stage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherChoice {
    /// Rationales the data holds (ComVE: right and confusing reasons); writes nothing new.
    Dataset,
    /// An OpenAI-compatible endpoint (OPENAI_API_KEY from the environment).
    Openai,
    /// A local rllr checkpoint.
    Local,
}

/// `[rationales]`: the teacher run over the three slices before anything is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RationalesSection {
    pub teacher: TeacherChoice,
    /// `all` or a count of wrong labels per example (D3).
    pub wrong_labels: String,
    pub openai_model: String,
    pub openai_base_url: String,
    pub openai_concurrency: usize,
    /// Checkpoint of the `local` teacher.
    pub local_model: Option<PathBuf>,
    pub max_new_tokens: usize,
    /// Prompts per generation batch of the `local` teacher: a batched decode step costs little
    /// more than a single one, so 32 rows write rationales several times faster than 8.
    pub local_batch_size: usize,
    /// Requests per synced append (a crash loses at most one chunk; keep it ≥ local_batch_size).
    pub chunk: usize,
}

impl Default for RationalesSection {
    fn default() -> Self {
        Self {
            teacher: TeacherChoice::Dataset,
            wrong_labels: "all".into(),
            openai_model: "gpt-4o-mini".into(),
            openai_base_url: "https://api.openai.com/v1".into(),
            openai_concurrency: 4,
            local_model: None,
            max_new_tokens: 64,
            local_batch_size: 32,
            chunk: 32,
        }
    }
}

/// Where the label and rationale pairs the reward models train on come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PairSource {
    /// Rationales for the correct and the wrong labels from the `[rationales]` teacher (or the
    /// data): `pairs label` and `pairs rationale`, before SFT.
    Teacher,
    /// M_sft's own samples (`pairs on-policy`), so the stage runs after `sft`.
    OnPolicy,
}

/// `[pairs]`: how label, rationale and held-out test pairs are built (`rllr-train pairs`). The
/// held-out `test.jsonl` is always built from the data (`pairs test`), whatever the source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PairsSection {
    /// `teacher` (default) or `on-policy`.
    pub source: PairSource,
    /// Teacher: wrong labels per example of the label pairs, `all` or a count.
    pub wrong_labels: String,
    /// Teacher: source-rank judge of the rationale pairs, best first.
    pub prefer: Vec<String>,
    /// Teacher: offer wrong-label rationales as the worse rationale (ComVE's confusing reasons).
    pub wrong_label_rationales: bool,
    /// On-policy: samples of M_sft per training prompt.
    pub k: usize,
    /// On-policy: sampling temperature (PPO's rollouts: 1.0).
    pub temperature: f32,
    /// On-policy: sampling top-k (PPO's rollouts: 50; 0: off).
    pub top_k: usize,
    /// On-policy: response length cap of a sample.
    pub max_new_tokens: usize,
    /// On-policy: at most this many pairs per prompt and kind.
    pub pairs_per_prompt: usize,
    /// On-policy: sample the first N training prompts (0: the whole train slice).
    pub limit: usize,
    /// On-policy: an unparseable sample may be the rejected side of a label pair.
    pub unparseable_rejected: bool,
    /// On-policy: prompts per generate call.
    pub batch_size: usize,
}

impl Default for PairsSection {
    fn default() -> Self {
        Self {
            source: PairSource::Teacher,
            wrong_labels: "all".into(),
            prefer: vec!["human".into(), "openai:".into(), "local:".into()],
            wrong_label_rationales: false,
            k: 8,
            temperature: 1.0,
            top_k: 50,
            max_new_tokens: 256,
            pairs_per_prompt: 2,
            limit: 0,
            unparseable_rejected: true,
            batch_size: 4,
        }
    }
}

/// `[diagnose]`: M_sft's own samples scored by both reward models before PPO (the `diagnose`
/// stage, dev slice), and the `eval-best-of-n` policy (test slice, `[eval] limit`), which uses
/// the same sampling settings with N = `k`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiagnoseSection {
    /// Samples per prompt (N of best-of-N).
    pub k: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub max_new_tokens: usize,
    /// Dev prompts the diagnostics sample (0: the whole dev slice).
    pub limit: usize,
    /// Prompts per generate call.
    pub batch_size: usize,
    /// Sequences per reward-model forward.
    pub score_batch_size: usize,
    /// Test prompts of `eval-best-of-n` (0: the `[eval] limit`): N samples a prompt cost N
    /// greedy answers, so a CPU run may rank fewer prompts than the greedy evaluations answer.
    pub best_of_n_limit: usize,
}

impl Default for DiagnoseSection {
    fn default() -> Self {
        Self {
            k: 8,
            temperature: 1.0,
            top_k: 50,
            max_new_tokens: 256,
            limit: 64,
            batch_size: 4,
            score_batch_size: 8,
            best_of_n_limit: 0,
        }
    }
}

/// `[eval]`: the test-split evaluation of the five policies and the two reward models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalSection {
    /// Test examples per policy (0: the whole test slice).
    pub limit: usize,
    pub max_new_tokens: usize,
    pub batch_size: usize,
    /// Held-out test pairs per reward model (0: all).
    pub pairs_limit: usize,
    pub cutoff_len: usize,
}

impl Default for EvalSection {
    fn default() -> Self {
        Self {
            limit: 0,
            max_new_tokens: 512,
            batch_size: 8,
            pairs_limit: 0,
            cutoff_len: 1536,
        }
    }
}

/// The whole file. Stage tables default to the stages' own defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub pipeline: PipelineSection,
    pub tasks: Vec<TaskEntry>,
    #[serde(default)]
    pub data: DataSection,
    #[serde(default)]
    pub rationales: RationalesSection,
    #[serde(default)]
    pub pairs: PairsSection,
    /// SFT without rationales (the "SFT" baseline); `rationales` is forced to false.
    #[serde(default)]
    pub sft_norat: SftFile,
    /// SFT with rationales, merged into M_sft; `rationales` is forced to true.
    #[serde(default)]
    pub sft: SftFile,
    /// RM_rllr on label-sensitive pairs.
    #[serde(default)]
    pub reward_label: RewardFile,
    /// RM_rlhf on rationale-sensitive pairs.
    #[serde(default)]
    pub reward_rationale: RewardFile,
    /// The three PPO runs; `reward_mode` is set per run.
    #[serde(default)]
    pub ppo: PpoFile,
    #[serde(default)]
    pub eval: EvalSection,
    #[serde(default)]
    pub diagnose: DiagnoseSection,
}

/// The file as read, with each task's settings resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub file: PipelineFile,
    /// One resolved file per task (root tables + that task's overrides), in task order.
    pub per_task: Vec<(TaskEntry, PipelineFile)>,
}

/// Parse a pipeline config from TOML text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Loaded> {
    let root: toml::Table = toml::from_str(text).with_context(|| format!("config {origin}"))?;
    let file: PipelineFile = root
        .clone()
        .try_into()
        .with_context(|| format!("config {origin}"))?;
    if file.tasks.is_empty() {
        bail!("config {origin}: no [[tasks]]");
    }
    let mut per_task = Vec::new();
    for t in &file.tasks {
        if per_task
            .iter()
            .any(|(e, _): &(TaskEntry, _)| e.name == t.name)
        {
            bail!("config {origin}: task '{}' is listed twice", t.name);
        }
        let resolved = resolve_task(&root, t)
            .with_context(|| format!("config {origin}: overrides of task '{}'", t.name))?;
        per_task.push((t.clone(), resolved));
    }
    Ok(Loaded { file, per_task })
}

/// Read and parse a pipeline config file.
pub fn load(path: &Path) -> anyhow::Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    parse(&text, &path.display().to_string())
}

/// Root tables with the task's overrides merged in (tables merge key by key, values replace).
fn resolve_task(root: &toml::Table, t: &TaskEntry) -> anyhow::Result<PipelineFile> {
    for k in ["pipeline", "tasks"] {
        if t.overrides.contains_key(k) {
            bail!("`{k}` cannot be overridden per task");
        }
    }
    let mut merged = root.clone();
    merge(&mut merged, &t.overrides);
    Ok(merged.try_into()?)
}

fn merge(into: &mut toml::Table, from: &toml::Table) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            _ => {
                into.insert(k.clone(), v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[pipeline]\nrun_dir = \"runs/x\"\nmodel = \"models/m\"\n\n[[tasks]]\nname = \"comve\"\n";

    #[test]
    fn unknown_keys_are_rejected_everywhere() {
        assert!(parse(MINIMAL, "t").is_ok());
        let bad = [
            format!("{MINIMAL}[eval]\nlimt = 3\n"),
            format!("{MINIMAL}[sft.train]\nlearnig_rate = 1e-3\n"),
            format!("{MINIMAL}[ppo.ppo]\nno_such = 1\n"),
            format!("{MINIMAL}[nonsense]\n"),
            format!("{MINIMAL}[tasks.overrides.sft.sft]\nlimt = 3\n"),
            format!("{MINIMAL}[tasks.overrides.pipeline]\nseed = 3\n"),
        ];
        for text in bad {
            assert!(parse(&text, "t").is_err(), "accepted:\n{text}");
        }
        let e = parse(
            "[pipeline]\nrun_dir = \"r\"\nmodel = \"m\"\ntasks = []\n",
            "t",
        );
        assert!(e.is_err());
    }

    #[test]
    fn task_overrides_merge_over_the_root_tables() {
        let text = format!(
            "{MINIMAL}[tasks.overrides.sft.train]\nmax_steps = 7\n\n[[tasks]]\nname = \"esnli\"\n\n[sft.train]\nlearning_rate = 1e-3\nmax_steps = 3\n"
        );
        let l = parse(&text, "t").unwrap();
        let (comve, esnli) = (&l.per_task[0].1, &l.per_task[1].1);
        assert_eq!(comve.sft.train.max_steps, 7);
        assert_eq!(comve.sft.train.learning_rate, 1e-3);
        assert_eq!(esnli.sft.train.max_steps, 3);
        assert_eq!(
            l.per_task[1].0.split("test"),
            PathBuf::from("data/esnli/test.jsonl")
        );
    }

    #[test]
    fn pairs_source_reads_teacher_and_on_policy() {
        let l = parse(MINIMAL, "t").unwrap();
        assert_eq!(l.file.pairs.source, PairSource::Teacher);
        let text =
            format!("{MINIMAL}[pairs]\nsource = \"on-policy\"\nk = 4\npairs_per_prompt = 1\n");
        let p = parse(&text, "t").unwrap().file.pairs;
        assert_eq!(
            (p.source, p.k, p.pairs_per_prompt),
            (PairSource::OnPolicy, 4, 1)
        );
        assert!(parse(&format!("{MINIMAL}[pairs]\nsource = \"student\"\n"), "t").is_err());
        assert!(parse(&format!("{MINIMAL}[diagnose]\nkk = 3\n"), "t").is_err());
    }

    #[test]
    fn shipped_configs_parse() {
        let q = parse(
            include_str!("../../../configs/quickstart.toml"),
            "quickstart",
        )
        .unwrap();
        assert_eq!(q.per_task.len(), 1);
        assert_eq!(q.per_task[0].0.name, "sst2");
        let p = parse(include_str!("../../../configs/paper.toml"), "paper").unwrap();
        assert!(p.per_task.len() >= 3, "{} tasks", p.per_task.len());
        let c = parse(include_str!("../../../configs/paper-cpu.toml"), "paper-cpu").unwrap();
        let names: Vec<&str> = c.per_task.iter().map(|(t, _)| t.name.as_str()).collect();
        assert_eq!(names, ["esnli", "sst2"]);
        for (t, _) in p.per_task.iter().chain(&c.per_task) {
            assert!(Path::new("..").join(t.spec()).is_file(), "{}", t.name);
        }
    }
}
