//! `rllr-train`: the offline half of rllr, one subcommand per job (convert, data, rationalize,
//! pairs, sft, reward, eval, diagnose, best-of-n, ppo, pipeline). Each flag can also come from an `RLLR_TRAIN_*` environment variable, so runs are scriptable
//! and reproducible from a shell file or a job spec.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use candle_core::DType;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rllr_core::gguf::{base_manifest, import_gguf_with_progress, write_hf_checkpoint_with};

mod data;
mod eval;
mod generate;
mod metrics;
mod onpolicy;
mod pairs;
mod pipeline;
mod ppo;
mod rationalize;
mod reward;
mod sft;
mod stage;
mod stats;
mod teacher;
mod train;

#[global_allocator]
static GLOBAL: rllr_cli::alloc::MiMalloc = rllr_cli::alloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "rllr-train",
    version,
    about = "Convert, fine-tune and evaluate Llama-family models"
)]
struct Cli {
    /// Log lines on stderr: `text` for people, `json` (one object per line) when a scheduler
    /// (Kubernetes Job, Slurm) collects them. The level comes from RUST_LOG (default `info`).
    #[arg(
        long,
        env = "RLLR_TRAIN_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: rllr_cli::LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The environment prefix of every `rllr-train` flag.
const ENV_PREFIX: &str = "RLLR_TRAIN_";

#[derive(Subcommand, Debug)]
enum Command {
    /// Import a llama.cpp GGUF file as a Hugging Face model directory (config.json,
    /// model.safetensors, tokenizer.json, ...) that rllr and transformers both load.
    Convert(ConvertArgs),
    /// Generate answers with a model for one or more prompts (batched), rendered with the
    /// model's chat template: the quickest check that a checkpoint works.
    Generate(generate::GenerateArgs),
    /// Bundled task data: build the JSONL splits from the raw datasets, import/export the
    /// reference code's alpaca JSON.
    Data(data::cli::DataArgs),
    /// Write rationales with a teacher (dataset, openai, local) for the gold label and k wrong
    /// labels of every example; resumable.
    Rationalize(rationalize::RationalizeArgs),
    /// Build label-sensitive, rationale-sensitive or held-out test preference pairs.
    Pairs(pairs::PairsArgs),
    /// Supervised fine-tuning (completion-only loss, LoRA, with or without rationales); merges
    /// the adapter into the base to give M_sft.
    Sft(Box<sft::SftArgs>),
    /// Train a reward model (LoRA + score head) on preference pairs: label-sensitive pairs give
    /// the RLLR reward model, rationale-sensitive pairs the RLHF one.
    Reward(Box<reward::RewardArgs>),
    /// Evaluate a policy on a task split or a reward model on a pair file.
    Eval(eval::EvalArgs),
    /// Before PPO: how well the label, rationale and mixed rewards rank M_sft's own samples on
    /// dev (AUC against correctness, best-of-N, oracle, greedy accuracy).
    Diagnose(Box<onpolicy::diagnose::DiagnoseArgs>),
    /// Best-of-N under the mixed reward as a policy: M_sft samples N answers per prompt, the
    /// highest min(r_label, λ) + r_rationale is the answer, scored like `eval policy`.
    BestOfN(Box<onpolicy::best_of_n::BestOfNArgs>),
    /// PPO of a LoRA policy on M_sft against the label-sensitive (RLLR), rationale-sensitive (RLHF)
    /// or mixed reward, with a value model initialised from a reward model.
    Ppo(Box<ppo::PpoArgs>),
    /// The whole method for one or more tasks: rationales, pairs, both SFTs, both reward models,
    /// PPO in the three reward modes and the test evaluation; skips stages whose outputs are
    /// current and writes report.md / report.json.
    Pipeline(pipeline::PipelineArgs),
}

/// Element type of the written weights.
#[derive(ValueEnum, Clone, Copy, Debug)]
enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl From<WeightDtype> for DType {
    fn from(d: WeightDtype) -> Self {
        match d {
            WeightDtype::F32 => DType::F32,
            WeightDtype::F16 => DType::F16,
            WeightDtype::Bf16 => DType::BF16,
        }
    }
}

#[derive(clap::Args, Debug)]
struct ConvertArgs {
    /// The GGUF file to import. Only `llama`-architecture files (Llama, SmolLM2, ...) are
    /// supported; quantised tensors are dequantised, so training starts from full-precision weights.
    #[arg(long, env = "RLLR_TRAIN_CONVERT_FROM")]
    from: PathBuf,
    /// Destination model directory. It is written atomically (a crash leaves no half-written
    /// model), in the Hugging Face layout, so transformers can load it too.
    #[arg(long, env = "RLLR_TRAIN_CONVERT_TO")]
    to: PathBuf,
    /// Weight element type on disk: f32 (default) keeps the dequantised values exactly and is
    /// what training wants; f16/bf16 halve the size for inference-only use.
    #[arg(long, env = "RLLR_TRAIN_CONVERT_DTYPE", value_enum, default_value_t = WeightDtype::F32)]
    dtype: WeightDtype,
    /// Replace an existing model at the destination. Off by default so a conversion never
    /// clobbers a fine-tuned checkpoint by accident.
    #[arg(long, env = "RLLR_TRAIN_CONVERT_OVERWRITE")]
    overwrite: bool,
}

fn main() -> ExitCode {
    rllr_cli::alloc::retain_freed_memory();
    use clap::CommandFactory;
    // Before any thread starts: honour the pre-0.2 shared `RLLR_*` names for one release.
    let legacy = rllr_cli::adopt_legacy_env(&Cli::command(), ENV_PREFIX, "RLLR_");
    let cli = Cli::parse();
    rllr_cli::init_logging(cli.log_format, "RUST_LOG", "info");
    for l in &legacy {
        l.warn();
    }
    let result = match cli.command {
        Command::Convert(args) => convert(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Data(args) => data::cli::run(&args),
        Command::Rationalize(args) => rationalize::run(&args),
        Command::Pairs(args) => pairs::run(&args),
        Command::Sft(args) => sft::run(&args),
        Command::Reward(args) => reward::run(&args),
        Command::Eval(args) => eval::run(&args),
        Command::Diagnose(args) => onpolicy::diagnose::run(&args),
        Command::BestOfN(args) => onpolicy::best_of_n::run(&args),
        Command::Ppo(args) => ppo::run(&args),
        Command::Pipeline(args) => pipeline::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `--stop-after`: end as a killed process would, so scripts and tests see a crash.
        Err(e) if train::run_dir::is_stopped(&e) => {
            eprintln!("{e:#}");
            ExitCode::from(137)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{spinner} dequantising [{bar:40}] {pos}/{len} {msg}")
        .expect("static template")
        .progress_chars("=> ");
    bar.set_style(style);
    bar
}

fn convert(args: &ConvertArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    if !args.from.is_file() {
        bail!("--from {}: no such file", args.from.display());
    }
    refuse_existing(&args.to, args.overwrite)?;
    let bar = progress_bar();
    let import = import_gguf_with_progress(&args.from, |done, total, name| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(name.to_string());
    })
    .with_context(|| format!("importing {}", args.from.display()));
    bar.finish_and_clear();
    let import = import?;
    let manifest = base_manifest(&import, Some(&args.from));
    write_hf_checkpoint_with(&import, &args.to, args.dtype.into(), &manifest)
        .with_context(|| format!("writing {}", args.to.display()))?;
    let c = &import.config;
    println!(
        "converted {} -> {}\n  params {} ({:.1}M), layers {}, hidden {}, heads {}/{} (q/kv), vocab {}, tied embeddings {}, dtype {:?}\n  took {:.1}s",
        args.from.display(),
        args.to.display(),
        import.num_params(),
        import.num_params() as f64 / 1e6,
        c.num_hidden_layers,
        c.hidden_size,
        c.num_attention_heads,
        c.num_kv_heads(),
        c.vocab_size,
        c.tie_word_embeddings,
        args.dtype,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Refuse to write over an existing model unless asked to.
fn refuse_existing(dest: &Path, overwrite: bool) -> anyhow::Result<()> {
    if dest.exists() && !overwrite {
        bail!(
            "--to {} already exists; pass --overwrite (RLLR_TRAIN_CONVERT_OVERWRITE=1) to replace it",
            dest.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn convert_parses_its_flags() {
        let argv = [
            "rllr-train",
            "convert",
            "--from",
            "m.gguf",
            "--to",
            "out",
            "--dtype",
            "bf16",
        ];
        let Command::Convert(args) = Cli::try_parse_from(argv).unwrap().command else {
            panic!("convert parses as Convert");
        };
        assert_eq!(args.from, PathBuf::from("m.gguf"));
        assert_eq!(args.to, PathBuf::from("out"));
        assert_eq!(DType::from(args.dtype), DType::BF16);
        assert!(!args.overwrite);
        assert!(
            Cli::try_parse_from(["rllr-train", "convert", "--to", "out"]).is_err(),
            "--from is required"
        );
    }

    #[test]
    fn existing_destination_needs_overwrite() {
        let existing = std::env::temp_dir();
        let e = refuse_existing(&existing, false).unwrap_err().to_string();
        assert!(e.contains("--overwrite"), "{e}");
        assert!(refuse_existing(&existing, true).is_ok());
        assert!(refuse_existing(&existing.join("rllr-no-such-dir-4f1c"), false).is_ok());
    }
}
