//! `rllr-bench`: the engine's speed against PyTorch + transformers on the same weights, the same
//! shapes and the same thread count, measured in one run so the ratios mean something on a shared,
//! noisy machine.
//!
//! Work measured (medians of `--repeats` runs after one warm-up):
//! - `forward_8x128`, `forward_32x128`: one forward pass over a full batch, logits at every position;
//! - `train_lora_8x256`: one LoRA training step (adapter `LoraConfig::default()`: r 16, α 32,
//!   dropout 0.1 on q_proj and v_proj): forward → mean cross-entropy over every position →
//!   backward → AdamW step over `trainable_vars()`;
//! - `score_16x128`: reward scoring, hidden states → a scalar head at each row's last token;
//! - `decode_b1_64`, `decode_b8_64`, `decode_b32_64`: greedy decode of exactly 64 new tokens from
//!   32-token prompts, batch 1, 8 and 32, with the KV cache;
//! - `peak_rss_train_lora`: the RSS high-water mark (`VmHWM`) of a fresh process that loads the
//!   model and runs two `train_lora_8x256` steps.
//!
//! The PyTorch side is `benches/torch_peer.py`; it is run as a subprocess unless `--no-peer`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Parser;
use rllr_benches::ModelArg;
use rllr_core::checkpoint::Checkpoint;
use rllr_core::{
    generate, Batch, ForwardCtx, GenerationRequest, Llama, LoraConfig, PaddingSide, SamplingParams,
    StopCriteria,
};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Benchmark rllr's engine against PyTorch on the same model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    model: ModelArg,
    /// Threads for both engines; ratios are only fair at equal thread counts.
    #[arg(long, env = "RLLR_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// Timed runs per measurement (median reported), after one warm-up.
    #[arg(long, env = "RLLR_BENCH_REPEATS", default_value_t = 3)]
    repeats: usize,
    /// Comma-separated subset of the workloads (default: all of them).
    #[arg(long, env = "RLLR_BENCH_ONLY", default_value = ALL_WORKLOADS)]
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

/// Every workload, in the order they run.
const ALL_WORKLOADS: &str = "forward_8x128,forward_32x128,train_lora_8x256,score_16x128,\
decode_b1_64,decode_b8_64,decode_b32_64,peak_rss_train_lora";

/// The workload whose memory `peak_rss_train_lora` measures, in a fresh process.
const TRAIN: &str = "train_lora_8x256";

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

/// One timed workload: the closure to time and the tokens it produces or consumes.
type Work<'a> = (Box<dyn FnMut() -> Result<()> + 'a>, usize);

fn random_batch(b: usize, len: usize, vocab: usize, seed: u64) -> Result<Batch> {
    let seqs: Vec<Vec<u32>> = (0..b).map(|i| ids(len, vocab, seed + i as u64)).collect();
    Ok(Batch::new(&seqs, 0, PaddingSide::Right, &Device::Cpu)?)
}

fn forward_work(model: &Llama, b: usize) -> Result<Work<'_>> {
    let batch = random_batch(b, 128, model.config().vocab_size, 0)?;
    let ctx = ForwardCtx::default();
    let run = move || model.forward(&batch, &ctx).map(drop).map_err(Into::into);
    Ok((Box::new(run), b * 128))
}

fn train_work(model: &mut Llama, b: usize, len: usize) -> Result<Work<'_>> {
    model.add_adapter("bench", &LoraConfig::default(), 0)?;
    let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW::default())?;
    let vocab = model.config().vocab_size;
    let batch = random_batch(b, len, vocab, 1000)?;
    let targets = Tensor::from_vec(ids(b * len, vocab, 7), (b, len), &Device::Cpu)?;
    let mask = Tensor::ones((b, len), DType::F32, &Device::Cpu)?;
    let model = &*model;
    let mut step = 0u64;
    let run = move || -> Result<()> {
        step += 1;
        let ctx = ForwardCtx {
            adapter: Some("bench"),
            dropout_seed: Some(step),
        };
        // The LM head and the loss in one: the (8·256, vocab) logits are never materialised.
        let h = model.hidden_states(&batch, &ctx)?;
        let loss = model.lm_cross_entropy(&h, &targets, &mask)?;
        opt.backward_step(&loss)?;
        Ok(())
    };
    Ok((Box::new(run), b * len))
}

fn score_work(model: &mut Llama, b: usize) -> Result<Work<'_>> {
    model.add_new_head("reward", false, 0)?;
    let batch = random_batch(b, 128, model.config().vocab_size, 2000)?;
    let model = &*model;
    let run = move || -> Result<()> {
        let h = model.hidden_states(&batch, &ForwardCtx::default())?;
        model.score(&h, &batch, "reward")?.to_vec1::<f32>()?;
        Ok(())
    };
    Ok((Box::new(run), b))
}

fn decode_work(model: &Llama, b: usize) -> Result<Work<'_>> {
    let vocab = model.config().vocab_size;
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
    let run = move || {
        generate(model, None, &reqs, &ForwardCtx::default(), 0)
            .map(drop)
            .map_err(Into::into)
    };
    Ok((Box::new(run), b * 64))
}

/// Build workload `name` on `model` (training and scoring add their adapter or head to it).
fn work<'a>(model: &'a mut Llama, name: &str) -> Result<Work<'a>> {
    match name {
        "forward_8x128" => forward_work(model, 8),
        "forward_32x128" => forward_work(model, 32),
        TRAIN => train_work(model, 8, 256),
        "score_16x128" => score_work(model, 16),
        "decode_b1_64" => decode_work(model, 1),
        "decode_b8_64" => decode_work(model, 8),
        "decode_b32_64" => decode_work(model, 32),
        other => bail!("unknown measurement '{other}'"),
    }
}

/// This process's RSS high-water mark in MiB (Linux `VmHWM`).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Run the training workload alone in a fresh copy of this binary and read its `VmHWM`.
fn peak_rss_child(args: &Args) -> Result<Value> {
    let out = tempfile_path("rllr-peak.json");
    let status = Command::new(std::env::current_exe()?)
        .args(["--model", &args.model.model.to_string_lossy()])
        .args(["--threads", &args.threads.to_string()])
        .args(["--repeats", "1", "--only", TRAIN, "--no-peer", "--json"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("peak-memory child failed ({status})");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    Ok(json!({"peak_rss_mib": report["rllr"]["peak_rss_mib"]}))
}

fn run_rllr(args: &Args, which: &[&str]) -> Result<Value> {
    let ckpt = Checkpoint::open(&args.model.model)?;
    let mut out = serde_json::Map::new();
    for name in which {
        if *name == "peak_rss_train_lora" {
            let entry = peak_rss_child(args)?;
            eprintln!("rllr    {name:<20} {} MiB", entry["peak_rss_mib"]);
            out.insert(name.to_string(), entry);
            continue;
        }
        // A fresh model per workload: adapters and heads added by one never leak into the next.
        let mut model = ckpt.load_model(DType::F32, &Device::Cpu)?;
        let (mut run, items) = work(&mut model, name)?;
        let runs = time_runs(args.repeats, &mut run)?;
        let med = median(runs.clone());
        let rate = if name.starts_with("score") {
            "sequences_per_s"
        } else {
            "tokens_per_s"
        };
        out.insert(
            name.to_string(),
            json!({"median_s": med, "runs": runs, rate: items as f64 / med}),
        );
        eprintln!("rllr    {name:<20} {med:>9.4} s");
    }
    out.insert("peak_rss_mib".into(), json!(peak_rss_mib()));
    Ok(Value::Object(out))
}

fn run_peer(args: &Args, which: &[&str]) -> Result<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("torch_peer.py");
    let out = tempfile_path("rllr-peer.json");
    let mut cmd = Command::new(&args.python);
    if rllr_core::isa() == rllr_core::Isa::Avx2 {
        // The peer runs the same instruction set: PyTorch's own kernels, MKL and oneDNN.
        cmd.env("ATEN_CPU_CAPABILITY", "avx2")
            .env("MKL_ENABLE_INSTRUCTIONS", "AVX2")
            .env("ONEDNN_MAX_CPU_ISA", "AVX2");
    }
    let status = cmd
        .arg(&script)
        .arg("--model")
        .arg(&args.model.model)
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

/// The headline number of a result: median seconds, or peak RSS in MiB for the memory row.
fn headline(v: &Value) -> (f64, &'static str) {
    match v["median_s"].as_f64() {
        Some(s) => (s, "s"),
        None => (v["peak_rss_mib"].as_f64().unwrap_or(f64::NAN), "MiB"),
    }
}

/// Tokens/s, or sequences/s for scoring, as printed.
fn rate(v: &Value) -> String {
    let per_s = v["tokens_per_s"]
        .as_f64()
        .map(|t| format!("{t:.1} tok/s"))
        .or_else(|| {
            v["sequences_per_s"]
                .as_f64()
                .map(|t| format!("{t:.1} seq/s"))
        });
    per_s.unwrap_or_else(|| "-".into())
}

fn print_table(which: &[&str], rllr: &Value, peer: &Value) {
    println!("\n| work | rllr | PyTorch | rllr / PyTorch | rllr rate | PyTorch rate |");
    println!("|---|---|---|---|---|---|");
    for name in which {
        let (r, p) = (&rllr[*name], &peer[*name]);
        let ((rv, unit), (pv, _)) = (headline(r), headline(p));
        println!(
            "| {name} | {rv:.4} {unit} | {pv:.4} {unit} | {:.2}× | {} | {} |",
            rv / pv,
            rate(r),
            rate(p)
        );
    }
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
    let isa = rllr_core::isa();
    eprintln!(
        "rllr kernels: {} (RLLR_ISA={}; gemm picks its own from the CPU)",
        isa.name(),
        std::env::var("RLLR_ISA").unwrap_or_else(|_| "auto".into())
    );
    let rllr = run_rllr(&args, &which)?;
    let peer = if args.no_peer {
        Value::Null
    } else {
        run_peer(&args, &which)?
    };
    print_table(&which, &rllr, &peer["results"]);
    let report = json!({
        "model": args.model.model, "threads": args.threads, "repeats": args.repeats,
        "isa": isa.name(),
        "rllr": rllr, "peer": peer,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
