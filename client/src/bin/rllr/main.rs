//! `rllr`: the command line of rllr-client — one-off calls (score, classify, compare, models,
//! health) for people and scripts, and `rllr batch` for classifying whole files resumably.
//!
//! This file holds the connection flags and the dispatch; each command lives in its own module
//! (its flags and what it does), the flag groups they share in `args`, the printing in `output`.

mod args;
mod batch;
mod classify;
mod compare;
mod merge;
mod output;
mod score;
mod server;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use output::OutputFormat;
use rllr_client::{Client, ClientConfig, RetryPolicy};

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
    /// Server endpoints, comma-separated (http://host:port or https://host:port). A host name is
    /// resolved to all its addresses (a Kubernetes headless Service lists every ready pod), and
    /// calls and batch streams are spread round-robin over every address; one that just failed
    /// is skipped, so one server going down does not stop the work.
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
    /// Seconds between lookups of the endpoint names, so replicas that come and go are followed
    /// (an address that fails also triggers a lookup); 0 = resolve never and leave names to the
    /// connector (one connection per name, the behaviour behind a ClusterIP Service).
    #[arg(
        long,
        env = "RLLR_CLIENT_RESOLVE_EVERY_S",
        default_value_t = 10.0,
        global = true
    )]
    resolve_every_s: f64,
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

#[derive(Subcommand, Debug)]
enum Cmd {
    Score(score::Score),
    Classify(classify::Classify),
    Compare(compare::Compare),
    Models(server::Models),
    Info(server::Info),
    Health(server::Health),
    Batch(batch::Batch),
    Merge(merge::Merge),
}

fn secs(s: f64) -> Option<Duration> {
    (s > 0.0).then(|| Duration::from_secs_f64(s))
}

fn client(c: &Conn) -> Result<Client> {
    let mut cfg = ClientConfig::new(c.endpoints.iter().map(|e| e.trim().to_string()))
        .timeout(secs(c.timeout_s))
        .resolve_every(secs(c.resolve_every_s))
        .retry(RetryPolicy {
            max_attempts: c.attempts.max(1),
            ..RetryPolicy::default()
        });
    cfg.api_key = c.api_key.clone();
    cfg.ca_cert = c.ca_cert.clone();
    cfg.tls_domain = c.tls_domain.clone();
    Ok(cfg.connect()?)
}

/// Run the command; the exit code (1 when a health check or batch rows failed).
async fn run(cli: Cli) -> Result<i32> {
    let c = client(&cli.conn)?;
    let out = cli.conn.output;
    match cli.cmd {
        Cmd::Score(a) => a.run(&c, out).await,
        Cmd::Classify(a) => a.run(&c, out).await,
        Cmd::Compare(a) => a.run(&c, out).await,
        Cmd::Models(a) => a.run(&c, out).await,
        Cmd::Info(a) => a.run(&c, out).await,
        Cmd::Health(a) => a.run(&c, out).await,
        Cmd::Batch(a) => a.run(&c).await,
        Cmd::Merge(a) => a.run(),
    }
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
