//! `rllr-serve-bench`: scoring throughput and p50/p99 latency of rllr-server at 1, 8 and 64
//! concurrent clients, with the batcher on (`max_batch_size` 64) and off (1), against calling the
//! engine in-process with the same batch sizes; with the batcher on, the same requests also go
//! through the HTTP/JSON front (`POST /v1/score`, one keep-alive HTTP/1.1 connection per client)
//! in the same run, so `http_over_grpc` is the cost of HTTP + JSON over gRPC + protobuf.
//!
//! The reward model is SmolLM2-135M-Instruct (`--model`), or a seeded random model of a config's
//! shape (`--random-config`, with `--tokenizer` copied in: for a GPU box without weights), with a
//! fresh random score head (speed does not depend on the head's values), written as a real reward
//! checkpoint under a temporary model root. The server and the in-process engine run on
//! `--device` in `--dtype`. Each client sends one-item Score requests back to back; throughput is
//! items/s over the whole run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use rllr_benches::{ModelArg, RandomModelArgs};
use rllr_core::checkpoint::{self, Checkpoint};
use rllr_core::manifest::{Manifest, ModelKind};
use rllr_core::{Batch, ForwardCtx, PaddingSide};
use rllr_proto::v1;
use serde_json::json;

#[global_allocator]
static GLOBAL: rllr_cli::alloc::MiMalloc = rllr_cli::alloc::MiMalloc;

/// Benchmark rllr-server's Score path.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    model: ModelArg,
    #[command(flatten)]
    random: RandomModelArgs,
    /// With --random-config: the tokenizer.json to copy into the random model directory (the
    /// server tokenizes text requests; its ids must fit the config's vocab_size).
    #[arg(long, env = "RLLR_BENCH_TOKENIZER")]
    tokenizer: Option<PathBuf>,
    /// Concurrent client counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Requests per client count (at least the client count).
    #[arg(long, default_value_t = 128)]
    requests: usize,
    /// Words of rationale per item (sets the sequence length).
    #[arg(long, default_value_t = 8)]
    words: usize,
    /// Engine device of the server and the in-process engine: cpu, cuda or cuda:N.
    #[arg(long, env = "RLLR_BENCH_DEVICE", default_value = "cpu")]
    device: String,
    /// Weight dtype of the server and the in-process engine: f32, bf16 or f16 (bf16 on GPUs).
    #[arg(long, env = "RLLR_BENCH_DTYPE", default_value = "f32")]
    dtype: String,
    /// Write the results here as JSON.
    #[arg(long, alias = "json")]
    out: Option<PathBuf>,
}

fn item(i: usize, words: usize) -> v1::ScoreItem {
    v1::ScoreItem {
        input: Some(v1::Input {
            text: format!("A man number {i} sleeps on the couch."),
            text_pair: Some("A person rests.".into()),
        }),
        rationale: "Sleeping is a way of resting ".repeat(words.div_ceil(6)),
        label: "entailment".into(),
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Throughput and latency percentiles of `clients` tasks started at `t0`, each returning its
/// per-request latencies in ms.
async fn summarise(
    clients: usize,
    tasks: Vec<tokio::task::JoinHandle<Result<Vec<f64>>>>,
    t0: Instant,
) -> Result<serde_json::Value> {
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let wall = t0.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    Ok(
        json!({"clients": clients, "items": lat.len(), "items_per_s": lat.len() as f64 / wall, "p50_ms": pct(&lat, 0.5), "p99_ms": pct(&lat, 0.99)}),
    )
}

async fn run_clients(
    url: &str,
    clients: usize,
    requests: usize,
    words: usize,
) -> Result<serde_json::Value> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())?
        .connect()
        .await?;
    let per = requests.div_ceil(clients);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = v1::reward_service_client::RewardServiceClient::new(ch.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for r in 0..per {
                let req = v1::ScoreRequest {
                    items: vec![item(c * per + r, words)],
                    label_model: "rm".into(),
                    ..Default::default()
                };
                let s = Instant::now();
                client
                    .score(req)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    summarise(clients, tasks, t0).await
}

/// One keep-alive HTTP/1.1 connection: POST a JSON body, read one answer (axum sends
/// `content-length`). Enough for the bench, without an HTTP client crate.
struct HttpConn {
    stream: tokio::io::BufReader<tokio::net::TcpStream>,
}

impl HttpConn {
    async fn connect(addr: std::net::SocketAddr) -> Result<Self> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(HttpConn {
            stream: tokio::io::BufReader::new(s),
        })
    }

    async fn post(&mut self, path: &str, body: &[u8]) -> Result<Vec<u8>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        let w = self.stream.get_mut();
        w.write_all(head.as_bytes()).await?;
        w.write_all(body).await?;
        let mut status = String::new();
        self.stream.read_line(&mut status).await?;
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse()?;
                }
            }
        }
        let mut out = vec![0u8; len];
        self.stream.read_exact(&mut out).await?;
        anyhow::ensure!(
            status.contains(" 200 "),
            "HTTP {}: {}",
            status.trim(),
            String::from_utf8_lossy(&out)
        );
        Ok(out)
    }
}

/// As [`run_clients`], over the HTTP front.
async fn run_http_clients(
    addr: std::net::SocketAddr,
    clients: usize,
    requests: usize,
    words: usize,
) -> Result<serde_json::Value> {
    let per = requests.div_ceil(clients);
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(HttpConn::connect(addr).await?);
    }
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut conn) in conns.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for r in 0..per {
                let req = v1::ScoreRequest {
                    items: vec![item(c * per + r, words)],
                    label_model: "rm".into(),
                    ..Default::default()
                };
                let s = Instant::now();
                let body = serde_json::to_vec(&req)?;
                let out = conn.post("/v1/score", &body).await?;
                let _: v1::ScoreResponse = serde_json::from_slice(&out)?;
                lat.push(s.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(lat)
        }));
    }
    summarise(clients, tasks, t0).await
}

/// The engine called directly: tokenized items scored in batches of `batch`.
fn in_process(
    dir: &std::path::Path,
    device: &Device,
    dtype: DType,
    batch: usize,
    requests: usize,
    words: usize,
) -> Result<serde_json::Value> {
    let ckpt = Checkpoint::open(dir)?;
    let model = ckpt.load_model(dtype, device)?;
    let tok = ckpt.load_tokenizer()?;
    let tmpl = rllr_core::template::ChatTemplate::from_name("chatml")?;
    let fmt = rllr_core::response::ResponseFormat::default();
    let seqs: Vec<Vec<u32>> = (0..requests)
        .map(|i| {
            let it = item(i, words);
            let inp = it.input.unwrap();
            let q = format!(
                "Does the premise entail the hypothesis?\nPremise: {}\nHypothesis: {}",
                inp.text,
                inp.text_pair.unwrap()
            );
            let text = format!(
                "{}{}{}",
                tmpl.render_prompt(None, &q),
                fmt.render(&it.rationale, &it.label),
                tmpl.response_end()
            );
            tok.encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| anyhow::anyhow!("{e}"))
        })
        .collect::<Result<_>>()?;
    let t0 = Instant::now();
    for chunk in seqs.chunks(batch) {
        let b = Batch::new(chunk, 0, PaddingSide::Right, device)?;
        let h = model.hidden_states(
            &b,
            &ForwardCtx {
                adapter: None,
                dropout_seed: None,
            },
        )?;
        let s = model.score(&h, &b, "score")?;
        s.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    }
    let wall = t0.elapsed().as_secs_f64();
    Ok(
        json!({"batch": batch, "items": requests, "items_per_s": requests as f64 / wall, "tokens_per_item": seqs[0].len()}),
    )
}

#[tokio::main]
async fn main() -> Result<()> {
    rllr_cli::alloc::retain_freed_memory();
    let args = Args::parse();
    let device = rllr_core::device::parse_device(&args.device)?;
    let dtype = rllr_core::device::parse_dtype(&args.dtype)?;
    let tokenizer: Vec<PathBuf> = match (&args.random.random_config, &args.tokenizer) {
        (Some(_), Some(t)) => vec![t.clone()],
        (Some(_), None) => anyhow::bail!(
            "--random-config needs --tokenizer PATH/tokenizer.json: the server tokenizes text"
        ),
        (None, _) => vec![],
    };
    // The base weights are written in f32 (the server casts to --dtype as it loads).
    let base = rllr_benches::model_dir(&args.model, &args.random, DType::F32, &tokenizer)?;
    let root = tempfile::tempdir()?;
    let rm_dir = root.path().join("rm");
    {
        let ckpt = Checkpoint::open(&base.path)
            .with_context(|| format!("opening {}", base.path.display()))?;
        let vocab = ckpt.load_tokenizer()?.get_vocab_size(true);
        anyhow::ensure!(
            vocab <= ckpt.config.vocab_size,
            "the tokenizer has {vocab} ids but the model's vocab_size is {}; pick a tokenizer \
             that fits the config",
            ckpt.config.vocab_size
        );
        let mut model = ckpt.load_model(DType::F32, &Device::Cpu)?;
        model.add_new_head("score", false, 7)?;
        let mut m = Manifest::new(ModelKind::Reward, "bench");
        m.chat_template = Some(rllr_core::template::ChatTemplate::from_name("chatml")?);
        m.head = Some("score".into());
        m.task_spec = Some(serde_json::from_value(
            json!({"name": "nli", "instruction": "Does the premise entail the hypothesis?", "input_fields": ["premise", "hypothesis"], "labels": [{"name": "entailment"}, {"name": "neutral"}, {"name": "contradiction"}]}),
        )?);
        checkpoint::save_model(&model, &rm_dir, Some("score"), Some(&base.path), Some(&m))?;
    }
    let mut results = json!({"model": base.path.display().to_string(), "random_config": args.random.random_config, "device": args.device, "dtype": args.dtype, "grpc": {}, "http": {}, "http_over_grpc": [], "in_process": []});
    for (label, max_batch) in [("batching_on", 64usize), ("batching_off", 1)] {
        let cfg = rllr_server::ServerConfig {
            listen: "127.0.0.1:0".into(),
            metrics_listen: String::new(),
            http_listen: if max_batch > 1 {
                "127.0.0.1:0".into()
            } else {
                String::new()
            },
            model_root: root.path().to_path_buf(),
            models: vec!["rm=rm".parse().map_err(|e: String| anyhow::anyhow!(e))?],
            device: args.device.clone(),
            dtype: args.dtype.clone(),
            max_batch_size: max_batch,
            max_concurrent_requests: 1024,
            queue_capacity: 4096,
            ..Default::default()
        };
        let server = rllr_server::start(cfg).await?;
        let url = format!("http://{}", server.addr);
        run_clients(&url, 1, 2, args.words).await?; // warm-up
        let mut rows = Vec::new();
        for &c in &args.clients {
            let r = run_clients(&url, c, args.requests.max(c), args.words).await?;
            eprintln!("{label} {r}");
            rows.push(r);
        }
        if let Some(http) = server.http_addr {
            run_http_clients(http, 1, 2, args.words).await?; // warm-up
            let mut hrows = Vec::new();
            for (&c, g) in args.clients.iter().zip(&rows) {
                let h = run_http_clients(http, c, args.requests.max(c), args.words).await?;
                let ratio = json!({
                    "clients": c,
                    "throughput": g["items_per_s"].as_f64().unwrap_or(f64::NAN) / h["items_per_s"].as_f64().unwrap_or(f64::NAN),
                    "p50": h["p50_ms"].as_f64().unwrap_or(f64::NAN) / g["p50_ms"].as_f64().unwrap_or(f64::NAN),
                });
                eprintln!("{label} http {h} http/grpc {ratio}");
                results["http_over_grpc"]
                    .as_array_mut()
                    .expect("an array")
                    .push(ratio);
                hrows.push(h);
            }
            results["http"][label] = json!(hrows);
        }
        results["grpc"][label] = json!(rows);
        server.shutdown(Duration::from_secs(30)).await?;
    }
    let dir = Arc::new(rm_dir);
    for b in [1usize, 64] {
        let (d, dev, n, w) = (dir.clone(), device.clone(), args.requests, args.words);
        let r = tokio::task::spawn_blocking(move || in_process(&d, &dev, dtype, b, n, w)).await??;
        eprintln!("in_process {r}");
        results["in_process"].as_array_mut().unwrap().push(r);
    }
    let text = serde_json::to_string_pretty(&results)?;
    println!("{text}");
    if let Some(p) = args.out {
        std::fs::write(p, text)?;
    }
    Ok(())
}
