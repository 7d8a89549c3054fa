//! `rllr`: the command line of rllr-client — one-off calls (score, classify, compare, models,
//! health) for people and scripts, and `rllr batch` for classifying whole files resumably.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use rllr_client::batch::{self, BatchConfig, OnBadRecord};
use rllr_client::input::{self, Format, Record};
use rllr_client::{v1, Client, ClientConfig, RetryPolicy};

/// rllr: call an rllr-server (score, classify, compare, models, health) or run a batch job.
#[derive(Parser, Debug)]
#[command(name = "rllr", version)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    /// Log lines on stderr: `text` for people, `json` (one object per line) when a job runner
    /// collects them. The level comes from RLLR_CLIENT_LOG (default `warn`).
    #[arg(
        long,
        env = "RLLR_CLIENT_LOG_FORMAT",
        value_enum,
        default_value = "text",
        global = true
    )]
    log_format: rllr_cli::LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Debug)]
struct Conn {
    /// Server endpoints, comma-separated (http://host:port or https://host:port). Calls and batch
    /// streams are spread round-robin over them and an endpoint that just failed is skipped, so
    /// one server going down does not stop the work.
    #[arg(
        long = "endpoint",
        env = "RLLR_CLIENT_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    endpoints: Vec<String>,
    /// Bearer token, when the server runs with --api-key (the server reads its own
    /// RLLR_SERVER_API_KEY, so a shell that runs both sets each side explicitly).
    #[arg(
        long,
        env = "RLLR_CLIENT_API_KEY",
        hide_env_values = true,
        global = true
    )]
    api_key: Option<String>,
    /// PEM CA certificate that signed the server's TLS certificate; needed for https endpoints
    /// because servers of internal services use private CAs.
    #[arg(long, env = "RLLR_CLIENT_CA_CERT", global = true)]
    ca_cert: Option<PathBuf>,
    /// Name to check the server certificate against, when it differs from the endpoint's host
    /// (e.g. connecting by IP).
    #[arg(long, env = "RLLR_CLIENT_TLS_DOMAIN", global = true)]
    tls_domain: Option<String>,
    /// Seconds one call may take, retries and backoff included: a deadline, so a script never
    /// hangs on a stuck server (0 = no deadline).
    #[arg(
        long,
        env = "RLLR_CLIENT_TIMEOUT_S",
        default_value_t = 60.0,
        global = true
    )]
    timeout_s: f64,
    /// Attempts per call on UNAVAILABLE / RESOURCE_EXHAUSTED (server restarting, queue full),
    /// with exponential backoff and jitter; never past the deadline.
    #[arg(long, env = "RLLR_CLIENT_ATTEMPTS", default_value_t = 5, global = true)]
    attempts: u32,
    /// Output of the one-off commands: an aligned table for people, JSON (one object per line)
    /// for scripts.
    #[arg(
        long,
        env = "RLLR_CLIENT_OUTPUT",
        value_enum,
        default_value = "table",
        global = true
    )]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OutputFormat {
    Table,
    Json,
}

/// Where the inputs of score/classify come from.
#[derive(Args, Debug)]
struct Inputs {
    /// The text to send (repeat the flag for several); for more, use --file.
    #[arg(long, env = "RLLR_CLIENT_TEXT")]
    text: Vec<String>,
    /// The second text of a pair task (e.g. the hypothesis), applied to every --text.
    #[arg(long, env = "RLLR_CLIENT_TEXT_PAIR")]
    text_pair: Option<String>,
    /// Read records from this JSONL or CSV file instead ('-' = stdin), so piped data needs no
    /// temporary file; fields id, text|input, text_pair, label, rationale.
    #[arg(long, env = "RLLR_CLIENT_FILE")]
    file: Option<PathBuf>,
    /// Format of --file; by default from its extension (.csv, else JSONL).
    #[arg(long, env = "RLLR_CLIENT_INPUT_FORMAT", value_enum)]
    input_format: Option<Format>,
}

impl Inputs {
    fn records(&self) -> Result<Vec<Record>> {
        if let Some(p) = &self.file {
            let format = self.input_format.unwrap_or_else(|| Format::detect(p));
            let parsed = if p.as_os_str() == "-" {
                let mut s = Vec::new();
                std::io::stdin().read_to_end(&mut s)?;
                input::parse(s.as_slice(), format)?
            } else {
                input::parse(
                    std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?,
                    format,
                )?
            };
            if let Some(b) = parsed.bad.first() {
                bail!("{}: {b} ({} bad record(s))", p.display(), parsed.bad.len());
            }
            if parsed.records.is_empty() {
                bail!("{}: no records", p.display());
            }
            return Ok(parsed.records);
        }
        if self.text.is_empty() {
            bail!("nothing to send: give --text or --file");
        }
        Ok(self
            .text
            .iter()
            .enumerate()
            .map(|(i, t)| Record {
                line: i + 1,
                id: (i + 1).to_string(),
                text: t.clone(),
                text_pair: self.text_pair.clone(),
                label: None,
                rationale: None,
            })
            .collect())
    }
}

/// The reward models of score and compare.
#[derive(Args, Debug)]
struct RewardModels {
    /// Label-sensitive reward model; empty = the server's default reward model.
    #[arg(long, env = "RLLR_CLIENT_LABEL_MODEL", default_value = "")]
    label_model: String,
    /// Rationale reward model; when set the mixed reward is min(r_label, lambda) + r_rationale.
    #[arg(long, env = "RLLR_CLIENT_RATIONALE_MODEL", default_value = "")]
    rationale_model: String,
    /// Cap on the label reward in the mix (default: the server's).
    #[arg(long, env = "RLLR_CLIENT_LAMBDA")]
    lambda: Option<f32>,
}

/// Generation settings of classify and batch.
#[derive(Args, Debug)]
struct Generation {
    /// Policy model; empty = the server's default policy model.
    #[arg(long, env = "RLLR_CLIENT_MODEL", default_value = "")]
    model: String,
    /// Limit on generated tokens (rationale + answer); bounds latency and cost per input.
    #[arg(long, env = "RLLR_CLIENT_MAX_NEW_TOKENS")]
    max_new_tokens: Option<u32>,
    /// Sampling temperature; 0 = greedy, which makes results reproducible (and a resumed batch
    /// job equal to an uninterrupted one).
    #[arg(long, env = "RLLR_CLIENT_TEMPERATURE", default_value_t = 0.0)]
    temperature: f32,
    /// RNG seed for sampling at temperature > 0, for reproducible samples.
    #[arg(long, env = "RLLR_CLIENT_SEED", default_value_t = 0)]
    seed: u64,
    /// System text for the chat template (default: the template's).
    #[arg(long, env = "RLLR_CLIENT_SYSTEM")]
    system: Option<String>,
}

impl Generation {
    fn params(&self) -> v1::GenerationParams {
        v1::GenerationParams {
            temperature: Some(self.temperature),
            max_new_tokens: self.max_new_tokens,
            seed: self.seed,
            ..Default::default()
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Score responses (input, rationale, label) with the label-sensitive reward model.
    Score {
        #[command(flatten)]
        inputs: Inputs,
        /// Rationale of the response to score (with --text; a file gives one per record).
        #[arg(long, env = "RLLR_CLIENT_RATIONALE", default_value = "")]
        rationale: String,
        /// Label the response argues for (with --text; a file gives one per record).
        #[arg(long, env = "RLLR_CLIENT_LABEL")]
        label: Option<String>,
        #[command(flatten)]
        models: RewardModels,
        /// Report sigmoid(score) instead of raw head outputs, to read scores as probabilities.
        #[arg(long, env = "RLLR_CLIENT_SIGMOID")]
        sigmoid: bool,
    },
    /// Classify inputs with a rationale each.
    Classify {
        #[command(flatten)]
        inputs: Inputs,
        #[command(flatten)]
        gen: Generation,
        /// Best-of-n: sample n responses per input and keep the highest-reward one (needs a
        /// reward model on the server); trades n x compute for accuracy.
        #[arg(long, env = "RLLR_CLIENT_BEST_OF_N", default_value_t = 0)]
        best_of_n: u32,
    },
    /// Which of two responses to one input the reward model prefers.
    Compare {
        /// The input both responses answer.
        #[arg(long, env = "RLLR_CLIENT_TEXT")]
        text: String,
        /// The second text of a pair task.
        #[arg(long, env = "RLLR_CLIENT_TEXT_PAIR")]
        text_pair: Option<String>,
        /// Rationale of response A.
        #[arg(long, env = "RLLR_CLIENT_A_RATIONALE", default_value = "")]
        a_rationale: String,
        /// Label of response A.
        #[arg(long, env = "RLLR_CLIENT_A_LABEL")]
        a_label: String,
        /// Rationale of response B.
        #[arg(long, env = "RLLR_CLIENT_B_RATIONALE", default_value = "")]
        b_rationale: String,
        /// Label of response B.
        #[arg(long, env = "RLLR_CLIENT_B_LABEL")]
        b_label: String,
        #[command(flatten)]
        models: RewardModels,
    },
    /// List the served models, or describe one (to see its labels and limits before sending).
    Models {
        /// Describe just this model.
        #[arg(long, env = "RLLR_CLIENT_MODEL_NAME")]
        name: Option<String>,
    },
    /// Version, git commit, device and uptime of the server (the first endpoint that answers):
    /// which build a deployment runs.
    Info,
    /// Check grpc.health.v1 on every endpoint; exits non-zero unless all serve (for probes).
    Health {
        /// Service to check: "" (the server), rllr.v1.RewardService, rllr.v1.PolicyService,
        /// rllr.v1.ModelService.
        #[arg(long, env = "RLLR_CLIENT_SERVICE", default_value = "")]
        service: String,
    },
    /// Classify a JSONL/CSV file into a JSONL output; resumable (rerun the same command after a
    /// kill and it carries on where it stopped).
    Batch(BatchArgs),
}

#[derive(Args, Debug)]
struct BatchArgs {
    /// Input JSONL or CSV ('-' = stdin): fields id, text|input, text_pair, label (gold, optional).
    #[arg(long, env = "RLLR_CLIENT_BATCH_INPUT")]
    input: PathBuf,
    /// Output JSONL; rows already there are kept and their ids skipped, which is what makes a
    /// rerun resume.
    #[arg(long, env = "RLLR_CLIENT_BATCH_OUTPUT")]
    out: PathBuf,
    /// Format of --input; by default from its extension (.csv, else JSONL).
    #[arg(long, env = "RLLR_CLIENT_INPUT_FORMAT", value_enum)]
    input_format: Option<Format>,
    /// Requests in flight at once, over all streams and endpoints: enough to keep the servers'
    /// batchers full, few enough not to overflow their queues.
    #[arg(long, env = "RLLR_CLIENT_CONCURRENCY", default_value_t = 8)]
    concurrency: usize,
    /// Inputs per request (the server batches across requests anyway; larger means fewer
    /// messages but more work redone when a stream breaks).
    #[arg(long, env = "RLLR_CLIENT_BATCH_SIZE", default_value_t = 1)]
    batch_size: usize,
    /// Bidi streams to open (default: one per endpoint, and one per 8 of concurrency).
    #[arg(long, env = "RLLR_CLIENT_STREAMS")]
    streams: Option<usize>,
    #[command(flatten)]
    gen: Generation,
    /// A malformed record or a duplicate id: skip it with a warning (the first occurrence of an
    /// id wins), or fail before sending anything so the input can be fixed.
    #[arg(
        long,
        env = "RLLR_CLIENT_ON_BAD_RECORD",
        value_enum,
        default_value = "skip"
    )]
    on_bad_record: OnBadRecord,
    /// Rows between fsyncs of the output: how many rows a power cut may cost (a killed process
    /// loses none).
    #[arg(long, env = "RLLR_CLIENT_CHECKPOINT_EVERY", default_value_t = 64)]
    checkpoint_every: usize,
    /// Seconds a stream may go without a reply before it is reopened (a stuck server).
    #[arg(long, env = "RLLR_CLIENT_REQUEST_TIMEOUT_S", default_value_t = 300.0)]
    request_timeout_s: f64,
    /// Seconds without any successful request before the job gives up (long enough to ride out
    /// a server restart).
    #[arg(long, env = "RLLR_CLIENT_GIVE_UP_AFTER_S", default_value_t = 120.0)]
    give_up_after_s: f64,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long, env = "RLLR_CLIENT_NO_PROGRESS")]
    no_progress: bool,
    /// Test hook: abort after writing N rows, like a crash.
    #[arg(long, env = "RLLR_CLIENT_STOP_AFTER", hide = true)]
    stop_after: Option<usize>,
}

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

fn client(c: &Conn) -> Result<Client> {
    let mut cfg = ClientConfig::new(c.endpoints.iter().map(|e| e.trim().to_string()))
        .timeout(secs(c.timeout_s))
        .retry(RetryPolicy {
            max_attempts: c.attempts.max(1),
            ..RetryPolicy::default()
        });
    cfg.api_key = c.api_key.clone();
    cfg.ca_cert = c.ca_cert.clone();
    cfg.tls_domain = c.tls_domain.clone();
    Ok(cfg.connect()?)
}

/// Print rows as an aligned table.
fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count().min(60));
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&w)
            .map(|(c, &w)| {
                let c: String = c.replace('\n', " ").chars().take(60).collect();
                format!("{c:<w$}")
            })
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn json_lines<T: serde::Serialize>(rows: &[T]) -> Result<()> {
    for r in rows {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}

fn input_of(r: &Record) -> v1::Input {
    v1::Input {
        text: r.text.clone(),
        text_pair: r.text_pair.clone(),
    }
}

fn reward_json(r: &v1::Reward) -> serde_json::Value {
    serde_json::json!({"label_reward": r.label_reward, "rationale_reward": r.rationale_reward, "mixed_reward": r.mixed_reward, "tokens": r.tokens})
}

async fn run(cli: Cli) -> Result<i32> {
    let json = cli.conn.output == OutputFormat::Json;
    let c = client(&cli.conn)?;
    match cli.cmd {
        Cmd::Score {
            inputs,
            rationale,
            label,
            models,
            sigmoid,
        } => {
            let recs = inputs.records()?;
            let items = recs
                .iter()
                .map(|r| {
                    let label = r.label.clone().or_else(|| label.clone()).context(
                        "score needs the label the response argues for (--label or a 'label' field)",
                    )?;
                    Ok(v1::ScoreItem {
                        input: Some(input_of(r)),
                        rationale: r.rationale.clone().unwrap_or_else(|| rationale.clone()),
                        label,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let resp = c
                .score(v1::ScoreRequest {
                    items,
                    label_model: models.label_model,
                    rationale_model: models.rationale_model,
                    lambda: models.lambda,
                    sigmoid,
                })
                .await?;
            let rows: Vec<serde_json::Value> = recs
                .iter()
                .zip(&resp.rewards)
                .map(|(r, w)| {
                    let mut v = reward_json(w);
                    v["id"] = r.id.clone().into();
                    v
                })
                .collect();
            if json {
                json_lines(&rows)?;
            } else {
                let t: Vec<Vec<String>> = recs
                    .iter()
                    .zip(&resp.rewards)
                    .map(|(r, w)| {
                        vec![
                            r.id.clone(),
                            format!("{:.4}", w.label_reward),
                            w.rationale_reward.map_or("-".into(), |x| format!("{x:.4}")),
                            format!("{:.4}", w.mixed_reward),
                            w.tokens.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &["id", "label_reward", "rationale_reward", "mixed", "tokens"],
                    &t,
                );
            }
        }
        Cmd::Classify {
            inputs,
            gen,
            best_of_n,
        } => {
            let recs = inputs.records()?;
            let resp = c
                .classify(v1::ClassifyRequest {
                    inputs: recs.iter().map(input_of).collect(),
                    model: gen.model.clone(),
                    params: Some(gen.params()),
                    system: gen.system.clone(),
                    best_of_n,
                    ..Default::default()
                })
                .await?;
            if json {
                let rows: Vec<serde_json::Value> = recs
                    .iter()
                    .zip(&resp.results)
                    .map(|(r, x)| serde_json::json!({"id": r.id, "label": x.label, "confidence": x.confidence, "rationale": x.rationale, "finish_reason": x.finish_reason, "generated_tokens": x.generated_tokens, "model": resp.model}))
                    .collect();
                json_lines(&rows)?;
            } else {
                let t: Vec<Vec<String>> = recs
                    .iter()
                    .zip(&resp.results)
                    .map(|(r, x)| {
                        vec![
                            r.id.clone(),
                            if x.label.is_empty() {
                                "<none>".into()
                            } else {
                                x.label.clone()
                            },
                            format!("{:.3}", x.confidence),
                            x.rationale.clone(),
                        ]
                    })
                    .collect();
                table(&["id", "label", "confidence", "rationale"], &t);
            }
        }
        Cmd::Compare {
            text,
            text_pair,
            a_rationale,
            a_label,
            b_rationale,
            b_label,
            models,
        } => {
            let resp = c
                .compare(v1::CompareRequest {
                    input: Some(v1::Input { text, text_pair }),
                    a: Some(v1::Candidate {
                        rationale: a_rationale,
                        label: a_label,
                    }),
                    b: Some(v1::Candidate {
                        rationale: b_rationale,
                        label: b_label,
                    }),
                    label_model: models.label_model,
                    rationale_model: models.rationale_model,
                    lambda: models.lambda,
                })
                .await?;
            let (a, b) = (
                resp.reward_a.unwrap_or_default(),
                resp.reward_b.unwrap_or_default(),
            );
            if json {
                json_lines(&[
                    serde_json::json!({"probability_a": resp.probability_a, "reward_a": reward_json(&a), "reward_b": reward_json(&b)}),
                ])?;
            } else {
                table(
                    &["probability_a", "mixed_a", "mixed_b"],
                    &[vec![
                        format!("{:.4}", resp.probability_a),
                        format!("{:.4}", a.mixed_reward),
                        format!("{:.4}", b.mixed_reward),
                    ]],
                );
            }
        }
        Cmd::Models { name } => {
            let models = match name {
                Some(n) => vec![c.get_model(&n).await?],
                None => c.list_models().await?,
            };
            let kind = |k: i32| {
                v1::ModelKind::try_from(k)
                    .map_or("?", |k| k.as_str_name())
                    .trim_start_matches("MODEL_KIND_")
                    .to_lowercase()
            };
            if json {
                let rows: Vec<serde_json::Value> = models
                    .iter()
                    .map(|m| {
                        let l = m.limits.unwrap_or_default();
                        serde_json::json!({"name": m.name, "kind": kind(m.kind), "task": m.task, "labels": m.labels, "template": m.template, "dtype": m.dtype, "device": m.device, "path": m.path, "head": m.head, "ready": m.ready, "revision": m.revision, "limits": {"max_input_tokens": l.max_input_tokens, "max_new_tokens": l.max_new_tokens, "max_items_per_request": l.max_items_per_request, "max_batch_size": l.max_batch_size, "queue_capacity": l.queue_capacity}})
                    })
                    .collect();
                json_lines(&rows)?;
            } else {
                let t: Vec<Vec<String>> = models
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            kind(m.kind),
                            m.task.clone(),
                            m.labels.join(","),
                            m.ready.to_string(),
                            short_revision(&m.revision),
                        ]
                    })
                    .collect();
                table(&["name", "kind", "task", "labels", "ready", "revision"], &t);
            }
        }
        Cmd::Info => {
            let i = c.server_info().await?;
            if json {
                json_lines(&[
                    serde_json::json!({"version": i.version, "git_sha": i.git_sha, "device": i.device, "dtype": i.dtype, "uptime_s": i.uptime_s}),
                ])?;
            } else {
                table(
                    &["version", "git_sha", "device", "dtype", "uptime_s"],
                    &[vec![
                        i.version,
                        i.git_sha,
                        i.device,
                        i.dtype,
                        i.uptime_s.to_string(),
                    ]],
                );
            }
        }
        Cmd::Health { service } => {
            let h = c.health(&service).await;
            if json {
                json_lines(&h)?;
            } else {
                let t: Vec<Vec<String>> = h
                    .iter()
                    .map(|x| vec![x.endpoint.clone(), x.service.clone(), x.status.clone()])
                    .collect();
                table(&["endpoint", "service", "status"], &t);
            }
            if !h.iter().all(|x| x.serving) {
                return Ok(1);
            }
        }
        Cmd::Batch(a) => {
            let mut cfg = BatchConfig::new(&a.input, &a.out);
            cfg.format = a.input_format;
            cfg.concurrency = a.concurrency.max(1);
            cfg.batch_size = a.batch_size.max(1);
            cfg.streams = a.streams;
            cfg.model = a.gen.model.clone();
            cfg.params = a.gen.params();
            cfg.system = a.gen.system.clone();
            cfg.on_bad_record = a.on_bad_record;
            cfg.checkpoint_every = a.checkpoint_every.max(1);
            cfg.request_timeout = secs(a.request_timeout_s).unwrap_or(Duration::from_secs(3600));
            cfg.give_up_after = secs(a.give_up_after_s).unwrap_or(Duration::from_secs(120));
            cfg.progress = !a.no_progress && std::io::stderr().is_terminal();
            cfg.stop_after = a.stop_after;
            let s = batch::run(&c, cfg).await?;
            for b in &s.bad_records {
                eprintln!("skipped {}: {b}", s.input);
            }
            for f in &s.failed {
                eprintln!("failed line {} (id {}): {}", f.line, f.id, f.error);
            }
            eprintln!(
                "{} rows written in {:.1}s ({:.2} rows/s), {} done before, {} bad record(s) skipped, {} failed, {} stream retries; summary: {}",
                s.written,
                s.elapsed_s,
                s.rows_per_s,
                s.already_done,
                s.bad_records.len(),
                s.failed.len(),
                s.retries,
                batch::summary_path(&a.out).display()
            );
            if let Some(acc) = &s.accuracy {
                eprint!("{}", acc.render());
            }
            if !s.failed.is_empty() {
                eprintln!(
                    "error: {} record(s) failed; rerun to retry them",
                    s.failed.len()
                );
                return Ok(1);
            }
        }
    }
    Ok(0)
}

/// `sha256:` + the first 12 hex digits: enough to tell revisions apart in a table (`--output
/// json` has the full hash).
fn short_revision(r: &str) -> String {
    r.chars().take("sha256:".len() + 12).collect()
}

/// The environment prefix of every `rllr` flag.
const ENV_PREFIX: &str = "RLLR_CLIENT_";

fn main() {
    use clap::CommandFactory;
    // Before any thread starts: honour the pre-0.2 shared `RLLR_*` names for one release.
    let legacy = rllr_cli::adopt_legacy_env(&Cli::command(), ENV_PREFIX, "RLLR_");
    let cli = Cli::parse();
    rllr_cli::init_logging(cli.log_format, "RLLR_CLIENT_LOG", "warn");
    for l in &legacy {
        l.warn();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
