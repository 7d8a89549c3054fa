//! `rllr-bench`: the engine's speed against PyTorch + transformers on the same weights, the same
//! shapes and the same thread count, measured in one run so the ratios mean something on a shared,
//! noisy machine.
//!
//! Work measured (medians of `--repeats` runs after one warm-up):
//! - `forward_8x128`, `forward_32x128`: one forward pass over a full batch, logits at every position;
//! - `decode_b1_64`, `decode_b8_64`: greedy decode of exactly 64 new tokens from 32-token prompts,
//!   batch 1 and 8, with the KV cache.
//!
//! The PyTorch side is `benches/torch_peer.py`; it is run as a subprocess unless `--no-peer`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use rllr_core::checkpoint::Checkpoint;
use rllr_core::{
    generate, Batch, ForwardCtx, GenerationRequest, PaddingSide, SamplingParams, StopCriteria,
};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark rllr's engine against PyTorch on the same model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// HF-layout model directory (e.g. from scripts/fetch-smollm2.sh), used by both sides.
    #[arg(
        long,
        env = "RLLR_BENCH_MODEL",
        default_value = "models/smollm2-135m-instruct"
    )]
    model: PathBuf,
    /// Threads for both engines; ratios are only fair at equal thread counts.
    #[arg(long, env = "RLLR_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// Timed runs per measurement (median reported), after one warm-up.
    #[arg(long, env = "RLLR_BENCH_REPEATS", default_value_t = 3)]
    repeats: usize,
    /// Comma-separated subset of: forward_8x128, forward_32x128, decode_b1_64, decode_b8_64.
    #[arg(
        long,
        env = "RLLR_BENCH_ONLY",
        default_value = "forward_8x128,forward_32x128,decode_b1_64,decode_b8_64"
    )]
    only: String,
    /// Skip the PyTorch peer (no Python needed; no ratios).
    #[arg(long, env = "RLLR_BENCH_NO_PEER")]
    no_peer: bool,
    /// Python interpreter with torch + transformers for the peer.
    #[arg(long, env = "RLLR_BENCH_PYTHON", default_value = "python3")]
    python: String,
    /// Write all numbers here as JSON.
    #[arg(long, env = "RLLR_BENCH_JSON")]
    json: Option<PathBuf>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time_runs(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<Vec<f64>> {
    f()?; // warm-up
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f()?;
            Ok(t.elapsed().as_secs_f64())
        })
        .collect()
}

/// Deterministic pseudo-random ids (an LCG), so both sides see full-vocabulary inputs.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) % vocab as u64) as u32
        })
        .collect()
}

fn run_rllr(args: &Args, which: &[&str]) -> Result<Value> {
    let ckpt = Checkpoint::open(&args.model)?;
    let model = ckpt.load_model(DType::F32, &Device::Cpu)?;
    let vocab = model.config().vocab_size;
    let ctx = ForwardCtx::default();
    let mut out = serde_json::Map::new();
    for name in which {
        let (runs, tokens) = match *name {
            "forward_8x128" | "forward_32x128" => {
                let b = if *name == "forward_8x128" { 8 } else { 32 };
                let seqs: Vec<Vec<u32>> = (0..b).map(|i| ids(128, vocab, i as u64)).collect();
                let batch = Batch::new(&seqs, 0, PaddingSide::Right, &Device::Cpu)?;
                (
                    time_runs(args.repeats, || {
                        model.forward(&batch, &ctx).map(drop).map_err(Into::into)
                    })?,
                    None,
                )
            }
            "decode_b1_64" | "decode_b8_64" => {
                let b = if *name == "decode_b1_64" { 1 } else { 8 };
                let reqs: Vec<GenerationRequest> = (0..b)
                    .map(|i| GenerationRequest {
                        prompt: ids(32, vocab, 100 + i as u64),
                        sampling: SamplingParams::greedy(),
                        stop: StopCriteria {
                            eos_ids: vec![],
                            stop_strings: vec![],
                            max_new_tokens: 64,
                        },
                    })
                    .collect();
                (
                    time_runs(args.repeats, || {
                        generate(&model, None, &reqs, &ctx, 0)
                            .map(drop)
                            .map_err(Into::into)
                    })?,
                    Some(b * 64),
                )
            }
            other => bail!("unknown measurement '{other}'"),
        };
        let med = median(runs.clone());
        let mut entry = json!({"median_s": med, "runs": runs});
        if let Some(t) = tokens {
            entry["tokens_per_s"] = json!(t as f64 / med);
        }
        eprintln!("rllr    {name:<16} {med:>9.4} s");
        out.insert(name.to_string(), entry);
    }
    Ok(Value::Object(out))
}

fn run_peer(args: &Args, which: &[&str]) -> Result<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torch_peer.py");
    let out = tempfile_path("rllr-peer.json");
    let status = Command::new(&args.python)
        .arg(&script)
        .arg("--model")
        .arg(&args.model)
        .arg("--threads")
        .arg(args.threads.to_string())
        .arg("--repeats")
        .arg(args.repeats.to_string())
        .arg("--only")
        .arg(which.join(","))
        .arg("--json")
        .arg(&out)
        .status()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    if !status.success() {
        bail!("PyTorch peer failed ({status}); rerun with --no-peer to skip it");
    }
    let text =
        std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

fn main() -> Result<()> {
    let args = Args::parse();
    // candle and gemm size their pools from RAYON_NUM_THREADS; set it before any pool starts.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let which: Vec<&str> = args
        .only
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let rllr = run_rllr(&args, &which)?;
    let peer = if args.no_peer {
        Value::Null
    } else {
        run_peer(&args, &which)?
    };
    println!(
        "\n| work | rllr (s) | PyTorch (s) | rllr / PyTorch time | rllr tok/s | PyTorch tok/s |"
    );
    println!("|---|---|---|---|---|---|");
    for name in &which {
        let r = &rllr[*name];
        let p = &peer["results"][*name];
        let (rs, ps) = (
            r["median_s"].as_f64().unwrap_or(f64::NAN),
            p["median_s"].as_f64().unwrap_or(f64::NAN),
        );
        let tok = |v: &Value| {
            v["tokens_per_s"]
                .as_f64()
                .map(|t| format!("{t:.1}"))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "| {name} | {rs:.4} | {ps:.4} | {:.2}× | {} | {} |",
            rs / ps,
            tok(r),
            tok(p)
        );
    }
    let report = json!({
        "model": args.model, "threads": args.threads, "repeats": args.repeats,
        "rllr": rllr, "peer": peer,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
