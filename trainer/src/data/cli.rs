//! `rllr-train data …`: the command-line glue over the data library (build the bundled files,
//! import and export alpaca JSON and TRL preference JSONL). Argument parsing and reporting only; the work is in the
//! sibling modules.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rllr_core::dataset::{read_examples, write_jsonl, Pair};
use rllr_core::fsutil::write_file_atomic;
use rllr_core::task::TaskSpec;

use super::alpaca::{self, AlpacaRecord, SftOutput};
use super::build::{build_task, markdown_table};
use super::sources::TASKS;
use super::split::{Sizes, TARGET};
use super::trl::{self, PairsFormat, TrlStyle};

/// Which task a command works on: its name, looked up in the task-spec directory.
#[derive(Args, Debug, Clone)]
pub struct TaskArgs {
    /// Task name; its spec is `<tasks-dir>/<task>.json` (label set, instruction, input fields),
    /// against which every record is checked.
    #[arg(long, env = "RLLR_TRAIN_TASK")]
    pub task: String,
    /// Directory of task specs, so a custom task needs only a new file, not a rebuild.
    #[arg(long, env = "RLLR_TRAIN_TASKS_DIR", default_value = "data/tasks")]
    pub tasks_dir: PathBuf,
}

impl TaskArgs {
    /// Load and validate the task spec.
    pub fn load(&self) -> anyhow::Result<TaskSpec> {
        let path = self.tasks_dir.join(format!("{}.json", self.task));
        TaskSpec::load(&path).with_context(|| format!("loading task spec {}", path.display()))
    }
}

#[derive(Args, Debug)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Convert the raw public datasets into the bundled JSONL splits (reproducible, byte for byte).
    Build(BuildArgs),
    /// Read the reference code's alpaca JSON into canonical examples or pairs JSONL.
    ImportAlpaca(ImportArgs),
    /// Write canonical examples or pairs as the reference code's alpaca JSON.
    ExportAlpaca(ExportArgs),
    /// Read TRL preference JSONL (`prompt` / `chosen` / `rejected`, standard or conversational)
    /// into canonical pairs JSONL.
    ImportTrl(ImportTrlArgs),
    /// Write canonical pairs as TRL preference JSONL (standard, or conversational with
    /// `--conversational`).
    ExportTrl(ExportTrlArgs),
}

#[derive(Args, Debug)]
pub struct BuildArgs {
    /// Root of the raw datasets (one folder per source, as in shared/data). Required: the
    /// program never reaches outside the repository on its own.
    #[arg(long, env = "RLLR_TRAIN_RAW_DATA")]
    pub raw: PathBuf,
    /// Where the splits go (`<out>/<task>/{train,dev,test}.jsonl`); the bundled copy is `data`.
    #[arg(long, env = "RLLR_TRAIN_DATA_DIR", default_value = "data")]
    pub out: PathBuf,
    /// Task-spec directory every converted example is checked against.
    #[arg(long, env = "RLLR_TRAIN_TASKS_DIR", default_value = "data/tasks")]
    pub tasks_dir: PathBuf,
    /// Only these tasks (repeatable); default all bundled tasks.
    #[arg(long = "only")]
    pub only: Vec<String>,
    /// Split seed. Changing it changes every split; the bundled data uses the default.
    #[arg(long, env = "RLLR_TRAIN_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Train examples per task (fewer when a task is smaller; then all three shrink in proportion).
    #[arg(long, default_value_t = TARGET.train)]
    pub train: usize,
    /// Dev examples per task.
    #[arg(long, default_value_t = TARGET.dev)]
    pub dev: usize,
    /// Test examples per task.
    #[arg(long, default_value_t = TARGET.test)]
    pub test: usize,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Alpaca JSON file (a JSON array of {instruction, input, output}).
    #[arg(long)]
    pub from: PathBuf,
    /// Output JSONL: examples for single-response records, pairs for `[chosen, rejected]` ones.
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Canonical examples JSONL to export (an SFT/test set).
    #[arg(long, conflicts_with = "pairs", required_unless_present = "pairs")]
    pub examples: Option<PathBuf>,
    /// Canonical pairs JSONL to export (a reward-model set, output = [chosen, rejected]).
    #[arg(long)]
    pub pairs: Option<PathBuf>,
    /// For examples: label-only outputs (sft_train, test) or rationale + label (sft_with_rat_train).
    #[arg(long, value_enum, default_value = "label")]
    pub output: SftOutput,
    /// Alpaca JSON file to write (atomically).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args, Debug)]
pub struct ImportTrlArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// TRL preference JSONL; each record's prompt must be the task's user turn (instruction,
    /// newline, input) and `chosen` must end in an answer line of the task.
    #[arg(long)]
    pub from: PathBuf,
    /// Canonical pairs JSONL to write (atomically).
    #[arg(long)]
    pub to: PathBuf,
}

#[derive(Args, Debug)]
pub struct ExportTrlArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Pairs to export: canonical pairs JSONL (or TRL JSONL, to change its style).
    #[arg(long)]
    pub pairs: PathBuf,
    /// Write conversational records (`[{"role", "content"}]` lists; TRL applies the tokenizer's chat
    /// template) instead of standard ones (plain strings).
    #[arg(long, env = "RLLR_TRAIN_CONVERSATIONAL")]
    pub conversational: bool,
    /// TRL JSONL file to write (atomically).
    #[arg(long)]
    pub to: PathBuf,
}

/// Run a `data` subcommand.
pub fn run(args: &DataArgs) -> anyhow::Result<()> {
    match &args.command {
        DataCommand::Build(a) => build(a),
        DataCommand::ImportAlpaca(a) => import(a),
        DataCommand::ExportAlpaca(a) => export(a),
        DataCommand::ImportTrl(a) => import_trl(a),
        DataCommand::ExportTrl(a) => export_trl(a),
    }
}

fn build(args: &BuildArgs) -> anyhow::Result<()> {
    if !args.raw.is_dir() {
        bail!("--raw {}: not a directory", args.raw.display());
    }
    let names: Vec<String> = if args.only.is_empty() {
        TASKS.iter().map(|t| t.to_string()).collect()
    } else {
        args.only.clone()
    };
    let target = Sizes {
        train: args.train,
        dev: args.dev,
        test: args.test,
    };
    let mut reports = Vec::new();
    for name in &names {
        let r = build_task(
            &args.raw,
            &args.tasks_dir,
            &args.out,
            name,
            target,
            args.seed,
        )
        .with_context(|| format!("building task {name}"))?;
        tracing::info!(task = %name, raw = r.raw_rows, skipped = r.skipped, "converted");
        reports.push(r);
    }
    print!("{}", markdown_table(&reports));
    Ok(())
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    let task = args.task.load()?;
    let text = std::fs::read_to_string(&args.from)
        .with_context(|| format!("reading {}", args.from.display()))?;
    let records: Vec<AlpacaRecord> = serde_json::from_str(&text)
        .with_context(|| format!("{}: not an alpaca JSON array", args.from.display()))?;
    let got = alpaca::import(&task, &records)
        .with_context(|| format!("importing {}", args.from.display()))?;
    match (got.examples.is_empty(), got.pairs.is_empty()) {
        (false, true) => write_jsonl(&args.to, &got.examples)?,
        (true, false) => write_jsonl(&args.to, &got.pairs)?,
        (true, true) => bail!("{}: no records", args.from.display()),
        (false, false) => bail!(
            "{}: mixes single responses and [chosen, rejected] outputs; split the file",
            args.from.display()
        ),
    }
    println!(
        "imported {} examples, {} pairs -> {}",
        got.examples.len(),
        got.pairs.len(),
        args.to.display()
    );
    Ok(())
}

fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let task = args.task.load()?;
    let (records, skipped) = match (&args.examples, &args.pairs) {
        (Some(path), _) => {
            alpaca::export_examples(&task, &read_examples(path, &task)?, args.output)?
        }
        (None, Some(path)) => (alpaca::export_pairs(&task, &read_pairs(path, &task)?)?, 0),
        (None, None) => bail!("pass --examples or --pairs"),
    };
    let json = serde_json::to_string_pretty(&records)?;
    write_file_atomic(&args.to, json.as_bytes())?;
    println!(
        "exported {} records ({skipped} without a gold rationale left out) -> {}",
        records.len(),
        args.to.display()
    );
    Ok(())
}

fn import_trl(args: &ImportTrlArgs) -> anyhow::Result<()> {
    let task = args.task.load()?;
    let got = trl::read(&task, &args.from)?;
    if got.pairs.is_empty() {
        bail!("{}: no records", args.from.display());
    }
    write_jsonl(&args.to, &got.pairs)?;
    if got.system_dropped > 0 {
        tracing::warn!(
            records = got.system_dropped,
            "system turns dropped; the chat template's system text is used"
        );
    }
    println!(
        "imported {} pairs ({} system turns dropped) -> {}",
        got.pairs.len(),
        got.system_dropped,
        args.to.display()
    );
    Ok(())
}

fn export_trl(args: &ExportTrlArgs) -> anyhow::Result<()> {
    let task = args.task.load()?;
    let pairs = read_pairs(&args.pairs, &task)?;
    let style = match args.conversational {
        true => TrlStyle::Conversational,
        false => TrlStyle::Standard,
    };
    let text = trl::export_pairs(&task, &pairs, style)?;
    write_file_atomic(&args.to, text.as_bytes())?;
    println!(
        "exported {} pairs ({style:?}) -> {}",
        pairs.len(),
        args.to.display()
    );
    Ok(())
}

/// Read a pairs file, canonical or TRL (detected by its keys), and check it against `task`
/// (errors name file and line).
pub fn read_pairs(path: &Path, task: &TaskSpec) -> anyhow::Result<Vec<Pair>> {
    let pairs = trl::read_pairs(path, task, PairsFormat::Auto)?;
    crate::stage::check_pairs(&pairs, task, path)?;
    Ok(pairs)
}
