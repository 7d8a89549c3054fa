//! `rllr-bench`: the engine's speed against PyTorch + transformers on the same weights, the same
//! shapes, the same device and dtype (and on the CPU the same thread count), measured in one run
//! so the ratios mean something on a shared, noisy machine.
//!
//! Work measured (medians of `--repeats` runs after one warm-up), named by shape so any size can
//! be asked for with `--only`:
//! - `forward_{B}x{L}`: one forward pass over a full B×L batch, logits at every position;
//! - `train_lora_{B}x{L}`: one LoRA training step (adapter `LoraConfig::default()`: r 16, α 32,
//!   dropout 0.1 on q_proj and v_proj): forward → mean cross-entropy over every position →
//!   backward → AdamW step over `trainable_vars()`;
//! - `score_{B}x{L}`: reward scoring, hidden states → a scalar head at each row's last token;
//! - `decode_b{B}_{N}`: greedy decode of exactly N new tokens from 32-token prompts, batch B,
//!   with the KV cache;
//! - `decode_lora_b{B}_{N}`: the same through a frozen, unmerged LoRA adapter (r 16 on q_proj and
//!   v_proj): PPO rollouts, best-of-N samples and served adapter policies decode this way;
//! - `peak_rss_train_lora`: the RSS high-water mark (`VmHWM`) of a fresh process that loads the
//!   model and runs two `train_lora_8x256` steps (CPU only).
//!
//! The default set is [`CPU_WORKLOADS`] on the CPU and [`GPU_WORKLOADS`] on CUDA. On CUDA the
//! device is synchronized before each timer stops, so times cover the kernels, not their launch.
//! Without weights (a GPU box), `--random-config` builds a seeded random model of a config's
//! shape and writes it as an HF directory that both sides load.
//!
//! The PyTorch side is `benches/torch_peer.py`; it is run as a subprocess unless `--no-peer`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::Tensor;
use candle_core::{DType, Device};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use clap::Parser;
use rllr_benches::{ModelArg, RandomModelArgs};
use rllr_core::checkpoint::{dtype_name, Checkpoint};
use rllr_core::{
    generate, Batch, ForwardCtx, GenerationRequest, Llama, LoraConfig, PaddingSide, SamplingParams,
    StopCriteria,
};
use serde_json::{json, Value};

#[global_allocator]
static GLOBAL: rllr_cli::alloc::MiMalloc = rllr_cli::alloc::MiMalloc;

/// Benchmark rllr's engine against PyTorch on the same model.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    random: RandomModelArgs,
    /// Device for both engines: cpu, cuda or cuda:N (PyTorch gets the same string), so the
    /// ratios compare the two on the same chip.
    #[arg(long, env = "RLLR_BENCH_DEVICE", default_value = "cpu")]
    device: String,
    /// Weight and compute dtype for both engines: f32, bf16 or f16 (bf16 is what GPUs are
    /// compared at; f32 is the CPU baseline).
    #[arg(long, env = "RLLR_BENCH_DTYPE", default_value = "f32")]
    dtype: String,
    /// CPU threads for both engines; ratios are only fair at equal thread counts.
    #[arg(long, env = "RLLR_BENCH_THREADS", default_value_t = 2)]
    threads: usize,
    /// Timed runs per measurement (median reported), after one warm-up.
    #[arg(long, env = "RLLR_BENCH_REPEATS", default_value_t = 3)]
    repeats: usize,
    /// Comma-separated workloads, by name (forward_{B}x{L}, train_lora_{B}x{L}, score_{B}x{L},
    /// decode_b{B}_{N}, decode_lora_b{B}_{N}, peak_rss_train_lora) or set (`cpu`, `gpu`);
    /// default: the CPU set on the CPU, the GPU set on CUDA, so each device runs shapes that
    /// suit it.
    #[arg(long, env = "RLLR_BENCH_ONLY")]
    only: Option<String>,
    /// Skip the PyTorch peer (no Python needed; no ratios).
    #[arg(long, env = "RLLR_BENCH_NO_PEER")]
    no_peer: bool,
    /// Python interpreter with torch + transformers for the peer.
    #[arg(long, env = "RLLR_BENCH_PYTHON", default_value = "python3")]
    python: String,
    /// The PyTorch peer script; default: benches/torch_peer.py of the source tree this binary
    /// was built from if it is there, else torch_peer.py next to the executable (for a binary
    /// built on one machine and run on another).
    #[arg(long, env = "RLLR_BENCH_PEER_SCRIPT")]
    peer_script: Option<PathBuf>,
    /// Write all numbers here as JSON.
    #[arg(long, env = "RLLR_BENCH_JSON")]
    json: Option<PathBuf>,
}

/// The CPU set, in the order they run (the shapes of the committed CPU results).
const CPU_WORKLOADS: &str = "forward_8x128,forward_32x128,train_lora_8x256,score_16x128,\
decode_b1_64,decode_b8_64,decode_b32_64,decode_lora_b8_64,peak_rss_train_lora";

/// The GPU set: longer sequences, bigger decode batches, 128 new tokens.
const GPU_WORKLOADS: &str = "forward_32x512,decode_b1_128,decode_b8_128,decode_b64_128,\
train_lora_8x512,score_16x512";

/// The workload whose memory `peak_rss_train_lora` measures, in a fresh process.
const TRAIN: &str = "train_lora_8x256";

/// The memory workload's name.
const PEAK_RSS: &str = "peak_rss_train_lora";

/// Prompt length of the decode workloads.
const PROMPT: usize = 32;

/// One workload, parsed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Forward { batch: usize, len: usize },
    Train { batch: usize, len: usize },
    Score { batch: usize, len: usize },
    Decode { batch: usize, new: usize },
    DecodeLora { batch: usize, new: usize },
    PeakRss,
}

/// `"{a}{sep}{b}"` as two positive numbers.
fn two(s: &str, sep: char) -> Option<(usize, usize)> {
    let (a, b) = s.split_once(sep)?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a > 0 && b > 0).then_some((a, b))
}

impl Workload {
    fn parse(name: &str) -> Result<Self> {
        let w = if name == PEAK_RSS {
            Some(Workload::PeakRss)
        } else if let Some(r) = name.strip_prefix("forward_") {
            two(r, 'x').map(|(batch, len)| Workload::Forward { batch, len })
        } else if let Some(r) = name.strip_prefix("train_lora_") {
            two(r, 'x').map(|(batch, len)| Workload::Train { batch, len })
        } else if let Some(r) = name.strip_prefix("score_") {
            two(r, 'x').map(|(batch, len)| Workload::Score { batch, len })
        } else if let Some(r) = name.strip_prefix("decode_b") {
            two(r, '_').map(|(batch, new)| Workload::Decode { batch, new })
        } else if let Some(r) = name.strip_prefix("decode_lora_b") {
            two(r, '_').map(|(batch, new)| Workload::DecodeLora { batch, new })
        } else {
            None
        };
        w.with_context(|| {
            format!(
                "unknown workload '{name}': use forward_{{B}}x{{L}}, train_lora_{{B}}x{{L}}, \
                 score_{{B}}x{{L}}, decode_b{{B}}_{{N}}, decode_lora_b{{B}}_{{N}}, {PEAK_RSS}, \
                 or the sets cpu / gpu"
            )
        })
    }
}

/// The workload names `--only` asks for (sets expanded, duplicates dropped), checked.
fn select(only: Option<&str>, cuda: bool) -> Result<Vec<String>> {
    let default = if cuda { GPU_WORKLOADS } else { CPU_WORKLOADS };
    let mut out: Vec<String> = Vec::new();
    for w in only.unwrap_or(default).split(',').map(str::trim) {
        let names = match w {
            "" => continue,
            "cpu" => CPU_WORKLOADS.split(',').collect(),
            "gpu" => GPU_WORKLOADS.split(',').collect(),
            n => vec![n],
        };
        for n in names {
            Workload::parse(n)?;
            if !out.iter().any(|o| o == n) {
                out.push(n.to_string());
            }
        }
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One warm-up, then `repeats` timed runs; each timer stops after `device` has finished the
/// queued work (a no-op on the CPU; on CUDA kernels run asynchronously).
fn time_runs(
    repeats: usize,
    device: &Device,
    mut f: impl FnMut() -> Result<()>,
) -> Result<Vec<f64>> {
    f()?; // warm-up
    device.synchronize()?;
    (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f()?;
            device.synchronize()?;
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

/// One timed workload: the closure to time and the tokens (or sequences) it handles.
type Work<'a> = (Box<dyn FnMut() -> Result<()> + 'a>, usize);

fn random_batch(b: usize, len: usize, vocab: usize, seed: u64, device: &Device) -> Result<Batch> {
    let seqs: Vec<Vec<u32>> = (0..b).map(|i| ids(len, vocab, seed + i as u64)).collect();
    Ok(Batch::new(&seqs, 0, PaddingSide::Right, device)?)
}

fn forward_work(model: &Llama, b: usize, len: usize) -> Result<Work<'_>> {
    let batch = random_batch(b, len, model.config().vocab_size, 0, model.device())?;
    let ctx = ForwardCtx::default();
    let run = move || model.forward(&batch, &ctx).map(drop).map_err(Into::into);
    Ok((Box::new(run), b * len))
}

fn train_work(model: &mut Llama, b: usize, len: usize) -> Result<Work<'_>> {
    model.add_adapter("bench", &LoraConfig::default(), 0)?;
    let vars = model.trainable_vars().into_iter().map(|(_, v)| v).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW::default())?;
    let vocab = model.config().vocab_size;
    let device = model.device().clone();
    let batch = random_batch(b, len, vocab, 1000, &device)?;
    let targets = Tensor::from_vec(ids(b * len, vocab, 7), (b, len), &device)?;
    let mask = Tensor::ones((b, len), DType::F32, &device)?;
    let model = &*model;
    let mut step = 0u64;
    let run = move || -> Result<()> {
        step += 1;
        let ctx = ForwardCtx {
            adapter: Some("bench"),
            dropout_seed: Some(step),
        };
        // The LM head and the loss in one: on the CPU in f32 the (B·L, vocab) logits are never
        // materialised.
        let h = model.hidden_states(&batch, &ctx)?;
        let loss = model.lm_cross_entropy(&h, &targets, &mask)?;
        opt.backward_step(&loss)?;
        Ok(())
    };
    Ok((Box::new(run), b * len))
}

fn score_work(model: &mut Llama, b: usize, len: usize) -> Result<Work<'_>> {
    model.add_new_head("reward", false, 0)?;
    let batch = random_batch(b, len, model.config().vocab_size, 2000, model.device())?;
    let model = &*model;
    let run = move || -> Result<()> {
        let h = model.hidden_states(&batch, &ForwardCtx::default())?;
        let s = model.score(&h, &batch, "reward")?;
        s.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        Ok(())
    };
    Ok((Box::new(run), b))
}

fn decode_work<'a>(
    model: &'a Llama,
    b: usize,
    new: usize,
    adapter: Option<&'static str>,
) -> Result<Work<'a>> {
    let vocab = model.config().vocab_size;
    let reqs: Vec<GenerationRequest> = (0..b)
        .map(|i| GenerationRequest {
            prompt: ids(PROMPT, vocab, 100 + i as u64),
            sampling: SamplingParams::greedy(),
            stop: StopCriteria {
                eos_ids: vec![],
                stop_strings: vec![],
                max_new_tokens: new,
            },
        })
        .collect();
    let ctx = ForwardCtx {
        adapter,
        dropout_seed: None,
    };
    let run = move || {
        generate(model, None, &reqs, &ctx, 0)
            .map(drop)
            .map_err(Into::into)
    };
    Ok((Box::new(run), b * new))
}

/// Decoding through a frozen LoRA adapter (`LoraConfig::default()`: r 16, α 32 on q_proj and
/// v_proj, unmerged): what a PPO rollout, a best-of-N sample or a served adapter policy runs. A
/// fresh adapter's B is zero, which changes no timing (no kernel skips zeros).
fn decode_lora_work(model: &mut Llama, b: usize, new: usize) -> Result<Work<'_>> {
    model.add_adapter("bench", &LoraConfig::default(), 0)?;
    model.set_adapter_trainable("bench", false)?;
    decode_work(model, b, new, Some("bench"))
}

/// Build workload `w` on `model` (training and scoring add their adapter or head to it).
fn work(model: &mut Llama, w: Workload) -> Result<Work<'_>> {
    match w {
        Workload::Forward { batch, len } => forward_work(model, batch, len),
        Workload::Train { batch, len } => train_work(model, batch, len),
        Workload::Score { batch, len } => score_work(model, batch, len),
        Workload::Decode { batch, new } => decode_work(model, batch, new, None),
        Workload::DecodeLora { batch, new } => decode_lora_work(model, batch, new),
        Workload::PeakRss => bail!("{PEAK_RSS} runs in a child process"),
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
fn peak_rss_child(args: &Args, model: &Path) -> Result<Value> {
    let out = tempfile_path("rllr-peak.json");
    let status = Command::new(std::env::current_exe()?)
        .arg("--model")
        .arg(model)
        .args(["--device", &args.device, "--dtype", &args.dtype])
        .args(["--threads", &args.threads.to_string()])
        .args(["--repeats", "1", "--only", TRAIN, "--no-peer", "--json"])
        .arg(&out)
        .env_remove("RLLR_BENCH_RANDOM_CONFIG")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("peak-memory child failed ({status})");
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&out)?)?;
    let _ = std::fs::remove_file(&out);
    Ok(json!({"peak_rss_mib": report["rllr"]["peak_rss_mib"]}))
}

/// Measure one workload on a fresh model from `ckpt`.
fn measure(
    args: &Args,
    ckpt: &Checkpoint,
    model_dir: &Path,
    device: &Device,
    dtype: DType,
    name: &str,
) -> Result<Value> {
    let w = Workload::parse(name)?;
    if w == Workload::PeakRss {
        let entry = peak_rss_child(args, model_dir)?;
        eprintln!("rllr    {name:<20} {} MiB", entry["peak_rss_mib"]);
        return Ok(entry);
    }
    // A fresh model per workload: adapters and heads added by one never leak into the next.
    let mut model = ckpt.load_model(dtype, device)?;
    let (mut run, items) = work(&mut model, w)?;
    let runs = time_runs(args.repeats, device, &mut run)?;
    let med = median(runs.clone());
    let rate = if matches!(w, Workload::Score { .. }) {
        "sequences_per_s"
    } else {
        "tokens_per_s"
    };
    eprintln!("rllr    {name:<20} {med:>9.4} s");
    Ok(json!({"median_s": med, "runs": runs, rate: items as f64 / med}))
}

/// Every workload of `which`; one that fails (out of memory on a GPU, say) is recorded as
/// `{"error": ...}` and the rest still run, so one scarce GPU session yields every number it can.
/// Returns the results and how many failed.
fn run_rllr(
    args: &Args,
    model_dir: &Path,
    device: &Device,
    dtype: DType,
    which: &[String],
) -> Result<(Value, usize)> {
    let ckpt = Checkpoint::open(model_dir)?;
    let mut out = serde_json::Map::new();
    let mut failed = 0;
    for name in which {
        let entry = measure(args, &ckpt, model_dir, device, dtype, name).unwrap_or_else(|e| {
            eprintln!("rllr    {name:<20} failed: {e:#}");
            failed += 1;
            json!({"error": format!("{e:#}")})
        });
        out.insert(name.to_string(), entry);
    }
    if device.is_cpu() {
        out.insert("peak_rss_mib".into(), json!(peak_rss_mib()));
    }
    Ok((Value::Object(out), failed))
}

/// The peer script: `--peer-script`, else the source tree's, else the one beside the binary.
fn peer_script(arg: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = arg {
        if !p.is_file() {
            bail!("--peer-script {}: no such file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let built = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/torch_peer.py"));
    if built.is_file() {
        return Ok(built.to_path_buf());
    }
    let exe = std::env::current_exe()?;
    let beside = exe.with_file_name("torch_peer.py");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!(
        "no PyTorch peer script: not at {} (where this binary was built) nor at {}; pass \
         --peer-script PATH/torch_peer.py (or --no-peer)",
        built.display(),
        beside.display()
    )
}

fn run_peer(
    args: &Args,
    model_dir: &Path,
    device: &Device,
    dtype: DType,
    which: &[String],
) -> Result<Value> {
    let script = peer_script(args.peer_script.as_deref())?;
    let out = tempfile_path("rllr-peer.json");
    let mut cmd = Command::new(&args.python);
    if device.is_cpu() && rllr_core::isa() == rllr_core::Isa::Avx2 {
        // The peer runs the same instruction set: PyTorch's own kernels, MKL and oneDNN.
        cmd.env("ATEN_CPU_CAPABILITY", "avx2")
            .env("MKL_ENABLE_INSTRUCTIONS", "AVX2")
            .env("ONEDNN_MAX_CPU_ISA", "AVX2");
    }
    let status = cmd
        .arg(&script)
        .arg("--model")
        .arg(model_dir)
        .args(["--device", &args.device, "--dtype", dtype_name(dtype)])
        .args(["--threads", &args.threads.to_string()])
        .args(["--repeats", &args.repeats.to_string()])
        .args(["--only", &which.join(",")])
        .arg("--json")
        .arg(&out)
        .status()
        .with_context(|| format!("running {} {}", args.python, script.display()))?;
    // The peer writes its JSON even when some workloads failed (they carry an "error"), then
    // exits 1; keep what it measured.
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    match (status.success(), text) {
        (true, Some(t)) => Ok(serde_json::from_str(&t)?),
        (false, Some(t)) => {
            let mut v: Value = serde_json::from_str(&t)?;
            v["error"] = json!(format!("the peer exited with {status}"));
            Ok(v)
        }
        (_, None) => bail!(
            "PyTorch peer failed ({status}) without a report; rerun with --no-peer to skip it"
        ),
    }
}

fn tempfile_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", std::process::id()))
}

/// The GPU's name from `nvidia-smi`, if it is there (the peer also records torch's name).
fn gpu_name(device: &str) -> Option<String> {
    let ordinal = device.trim().strip_prefix("cuda:").unwrap_or("0");
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=name", "--format=csv,noheader", "-i", ordinal])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !name.is_empty()).then_some(name)
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

fn print_table(which: &[String], rllr: &Value, peer: &Value) {
    println!("\n| work | rllr | PyTorch | rllr / PyTorch | rllr rate | PyTorch rate |");
    println!("|---|---|---|---|---|---|");
    for name in which {
        let (r, p) = (&rllr[name.as_str()], &peer[name.as_str()]);
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
    rllr_cli::alloc::retain_freed_memory();
    let args = Args::parse();
    // candle and gemm size their pools from RAYON_NUM_THREADS; set it before any pool starts.
    std::env::set_var("RAYON_NUM_THREADS", args.threads.to_string());
    let device = rllr_core::device::parse_device(&args.device)?;
    let dtype = rllr_core::device::parse_dtype(&args.dtype)?;
    let mut which = select(args.only.as_deref(), device.is_cuda())?;
    if !device.is_cpu() && which.iter().any(|w| w == PEAK_RSS) {
        eprintln!("{PEAK_RSS} skipped: it measures host RSS, so it is CPU-only");
        which.retain(|w| w != PEAK_RSS);
    }
    let isa = rllr_core::isa();
    if device.is_cpu() {
        eprintln!(
            "rllr kernels: {} (RLLR_ISA={}; gemm picks its own from the CPU)",
            isa.name(),
            std::env::var("RLLR_ISA").unwrap_or_else(|_| "auto".into())
        );
    }
    let model = rllr_benches::model_dir(&args.model, &args.random, dtype, &[])?;
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(model.path.join("config.json"))
            .with_context(|| format!("reading {}/config.json", model.path.display()))?,
    )?;
    let gpu = device.is_cuda().then(|| gpu_name(&args.device)).flatten();
    eprintln!(
        "rllr-bench: {} on {}{} in {}",
        model.path.display(),
        args.device,
        gpu.as_deref()
            .map(|g| format!(" ({g})"))
            .unwrap_or_default(),
        dtype_name(dtype)
    );
    let (rllr, failed) = run_rllr(&args, &model.path, &device, dtype, &which)?;
    let peer = if args.no_peer {
        Value::Null
    } else {
        run_peer(&args, &model.path, &device, dtype, &which).unwrap_or_else(|e| {
            eprintln!("PyTorch peer: {e:#}");
            json!({"error": format!("{e:#}")})
        })
    };
    print_table(&which, &rllr, &peer["results"]);
    let report = json!({
        "model": model.path,
        "random_config": args.random.random_config,
        "seed": model.random.then_some(args.random.seed),
        "config": config,
        "device": args.device, "dtype": dtype_name(dtype), "gpu": gpu,
        "threads": args.threads, "repeats": args.repeats,
        "isa": isa.name(),
        "workloads": which,
        "rllr": rllr, "peer": peer,
    });
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let mut failures = Vec::new();
    if failed > 0 {
        failures.push(format!("{failed} rllr workload(s) failed"));
    }
    if peer.get("error").is_some() {
        failures.push("the PyTorch peer failed".to_string());
    }
    if !failures.is_empty() {
        bail!("{}; the report has the errors", failures.join(" and "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_parse_by_shape() {
        assert_eq!(
            Workload::parse("forward_32x512").unwrap(),
            Workload::Forward {
                batch: 32,
                len: 512
            }
        );
        assert_eq!(
            Workload::parse("decode_b64_128").unwrap(),
            Workload::Decode {
                batch: 64,
                new: 128
            }
        );
        assert_eq!(
            Workload::parse("train_lora_8x256").unwrap(),
            Workload::Train { batch: 8, len: 256 }
        );
        assert_eq!(
            Workload::parse("score_16x128").unwrap(),
            Workload::Score {
                batch: 16,
                len: 128
            }
        );
        assert_eq!(
            Workload::parse("decode_lora_b8_64").unwrap(),
            Workload::DecodeLora { batch: 8, new: 64 }
        );
        assert_eq!(Workload::parse(PEAK_RSS).unwrap(), Workload::PeakRss);
        for bad in [
            "forward_8",
            "forward_0x128",
            "decode_b8x64",
            "train_8x256",
            "nope",
        ] {
            assert!(Workload::parse(bad).is_err(), "{bad}");
        }
        for set in [CPU_WORKLOADS, GPU_WORKLOADS] {
            for n in set.split(',') {
                Workload::parse(n).unwrap();
            }
        }
    }

    #[test]
    fn the_default_set_follows_the_device() {
        assert_eq!(select(None, false).unwrap().join(","), CPU_WORKLOADS);
        assert_eq!(select(None, true).unwrap().join(","), GPU_WORKLOADS);
        assert_eq!(
            select(Some("decode_b1_64, gpu,decode_b1_64"), false)
                .unwrap()
                .len(),
            1 + GPU_WORKLOADS.split(',').count()
        );
        assert!(select(Some("forward_x"), false).is_err());
    }
}
