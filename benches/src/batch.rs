//! `rllr-batch-bench`: rows/s of an `rllr batch` job (the library's `batch::run`, as the CLI runs
//! it) at several concurrencies, against rllr-server serving its embedded default configuration
//! (`server/server.toml`: SmolLM2-135M-Instruct as the CoT policy) on 127.0.0.1.
//!
//! Inputs are the first `--rows` texts of `data/sst2/test.jsonl` (gold labels kept, so the job's
//! accuracy path runs too); greedy decoding, `--max-new-tokens` per row. Each concurrency writes a
//! fresh output; a 2-row warm-up run comes first.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use rllr_client::batch::{self, BatchConfig};
use rllr_client::ClientConfig;
use serde_json::json;

#[global_allocator]
static GLOBAL: rllr_cli::alloc::MiMalloc = rllr_cli::alloc::MiMalloc;

/// Benchmark batch classification jobs.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Model root holding `smollm2-135m-instruct` and `quickstart/` (the embedded default's model_root).
    #[arg(long, env = "RLLR_BENCH_MODEL_ROOT", default_value = "models")]
    model_root: PathBuf,
    /// Input rows (JSONL with id, input, label): the task of the default policy (ComVE).
    #[arg(long, default_value = "data/comve/test.jsonl")]
    input: PathBuf,
    /// Rows per run.
    #[arg(long, default_value_t = 48)]
    rows: usize,
    /// Concurrencies (chunks in flight) to measure.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    concurrency: Vec<usize>,
    /// Generated tokens per row (short: this measures the job and server, not long CoT).
    #[arg(long, default_value_t = 16)]
    max_new_tokens: u32,
    /// Engine device.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Write the results here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    rllr_cli::alloc::retain_freed_memory();
    let args = Args::parse();
    let root = args.model_root.to_string_lossy().into_owned();
    let cfg = rllr_server::ServerConfig::load_from([
        "rllr-server",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "",
        "--http-listen",
        "",
        "--model-root",
        &root,
        "--device",
        &args.device,
    ])?;
    let model = cfg
        .default_policy_model
        .clone()
        .unwrap_or_else(|| cfg.models[0].name.clone());
    let server = rllr_server::start(cfg)
        .await
        .context("starting the embedded default (run scripts/fetch-smollm2.sh first)")?;
    let client = ClientConfig::new([format!("http://{}", server.addr)])
        .timeout(Some(Duration::from_secs(600)))
        .connect()?;

    let dir = tempfile::tempdir()?;
    let text = std::fs::read_to_string(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?;
    let lines: Vec<&str> = text.lines().take(args.rows).collect();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, lines.join("\n") + "\n")?;
    let warm = dir.path().join("warm.jsonl");
    std::fs::write(&warm, lines[..2].join("\n") + "\n")?;

    let job = |inp: &PathBuf, out: PathBuf, c: usize| {
        let mut b = BatchConfig::new(inp, out);
        b.model = model.clone();
        b.params.max_new_tokens = Some(args.max_new_tokens);
        b.concurrency = c;
        b
    };
    batch::run(&client, job(&warm, dir.path().join("warm-out.jsonl"), 2)).await?;
    let mut runs = Vec::new();
    for &c in &args.concurrency {
        let s = batch::run(
            &client,
            job(&input, dir.path().join(format!("out-{c}.jsonl")), c),
        )
        .await?;
        let r = json!({"concurrency": c, "rows": s.written, "elapsed_s": s.elapsed_s, "rows_per_s": s.rows_per_s, "retries": s.retries});
        eprintln!("{r}");
        runs.push(r);
    }
    server.shutdown(Duration::from_secs(10)).await?;
    let results = json!({
        "what": "rllr batch (rllr_client::batch::run) against rllr-server's embedded default, greedy",
        "model": model, "model_root": root, "device": args.device, "input": args.input.display().to_string(),
        "rows": lines.len(), "max_new_tokens": args.max_new_tokens, "batch_size": 1,
        "machine": "2 shared CPU cores (another build/training job running): indicative only",
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&results)?;
    println!("{text}");
    if let Some(p) = args.out {
        std::fs::write(p, text + "\n")?;
    }
    Ok(())
}
