//! `ServerConfig`: the one configuration type of `rllr-server`.
//!
//! Values come from, in rising precedence: the embedded default (`server/server.toml`), the file
//! given by `--config`, environment variables, command-line flags. Every field is both a TOML key
//! and a `--flag`/`RLLR_SERVER_*` variable so deployments can use whichever they manage (the old
//! `RLLR_*` names are still read, with a deprecation warning, for one release).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};
use rllr_cli::LogFormat;
use serde::{Deserialize, Serialize};

/// The configuration compiled into the binary.
pub const EMBEDDED_DEFAULT: &str = include_str!("../server.toml");

/// A model to load at start-up: `name=path` on the command line, a `[[models]]` table in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The name requests use.
    pub name: String,
    /// Checkpoint directory, relative to `model_root`.
    pub path: PathBuf,
}

impl FromStr for ModelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, path) = s
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=PATH, got '{s}'"))?;
        Ok(ModelSpec {
            name: name.to_string(),
            path: path.into(),
        })
    }
}

/// rllr-server: batched gRPC reward scoring and CoT classification.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "rllr-server", version)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// TOML file with any of these settings; flags and env override it. Without one the embedded
    /// default (server/server.toml) is served.
    #[arg(long, env = "RLLR_SERVER_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// gRPC listen address (port 0 picks a free port).
    #[arg(long, env = "RLLR_SERVER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,
    /// Prometheus /metrics listen address; empty disables the listener.
    #[arg(
        long,
        env = "RLLR_SERVER_METRICS_LISTEN",
        default_value = "127.0.0.1:9000"
    )]
    pub metrics_listen: String,
    /// HTTP/JSON listen address (`/v1/score`, `/v1/classify`, `/get_reward`, OpenAI-compatible
    /// `/v1/chat/completions`, `/health`, `/ready`, `/openapi.json`); empty disables it. A port of
    /// its own so gRPC keeps HTTP/2-only semantics and each can be exposed or firewalled apart.
    #[arg(
        long,
        env = "RLLR_SERVER_HTTP_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub http_listen: String,
    /// Largest HTTP request body accepted, in bytes; larger bodies get 413 before any parsing.
    #[arg(
        long,
        env = "RLLR_SERVER_HTTP_MAX_BODY_BYTES",
        default_value_t = 8 * 1024 * 1024
    )]
    pub http_max_body_bytes: usize,
    /// Reward `/get_reward` returns for a response without a parseable `Answer:` line (or with a
    /// label outside the label set): below what any parsed answer can get from a capped label
    /// reward, so PPO learns to answer in the format.
    #[arg(
        long,
        env = "RLLR_SERVER_GET_REWARD_PENALTY",
        default_value_t = -10.0,
        allow_negative_numbers = true
    )]
    pub get_reward_penalty: f32,
    /// Directory every model path is confined to (LoadModel cannot reach outside it).
    #[arg(long, env = "RLLR_SERVER_MODEL_ROOT", default_value = "models")]
    pub model_root: PathBuf,
    /// Models to load at start-up, NAME=PATH (PATH relative to --model-root); repeatable.
    #[arg(long = "model", env = "RLLR_SERVER_MODELS", value_delimiter = ',')]
    pub models: Vec<ModelSpec>,
    /// Model Score uses when a request names none (default: the first reward model loaded).
    #[arg(long, env = "RLLR_SERVER_DEFAULT_REWARD_MODEL")]
    pub default_reward_model: Option<String>,
    /// Model Classify uses when a request names none (default: the first policy model loaded).
    #[arg(long, env = "RLLR_SERVER_DEFAULT_POLICY_MODEL")]
    pub default_policy_model: Option<String>,
    /// Device for the engines: cpu, cuda, cuda:N, metal.
    #[arg(long, env = "RLLR_SERVER_DEVICE", default_value = "cpu")]
    pub device: String,
    /// Weight dtype: f32, f16, bf16 (f32 on CPU keeps scores exact).
    #[arg(long, env = "RLLR_SERVER_DTYPE", default_value = "f32")]
    pub dtype: String,
    /// Longest prompt (+ response, for scoring) accepted, in tokens; longer is INVALID_ARGUMENT.
    #[arg(long, env = "RLLR_SERVER_MAX_INPUT_TOKENS", default_value_t = 2048)]
    pub max_input_tokens: usize,
    /// Most tokens one classification may generate (requests may ask for fewer).
    #[arg(long, env = "RLLR_SERVER_MAX_NEW_TOKENS", default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Most items (or inputs) in one request; send more through the streaming RPCs.
    #[arg(long, env = "RLLR_SERVER_MAX_ITEMS_PER_REQUEST", default_value_t = 64)]
    pub max_items_per_request: usize,
    /// Requests served at once; beyond this, RESOURCE_EXHAUSTED at once rather than queueing.
    #[arg(
        long,
        env = "RLLR_SERVER_MAX_CONCURRENT_REQUESTS",
        default_value_t = 512
    )]
    pub max_concurrent_requests: usize,
    /// Items waiting per model; a request that does not fit gets RESOURCE_EXHAUSTED.
    #[arg(long, env = "RLLR_SERVER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Padded tokens (rows x longest row) per engine batch: bounds memory per forward pass.
    #[arg(long, env = "RLLR_SERVER_MAX_BATCH_TOKENS", default_value_t = 16384)]
    pub max_batch_tokens: usize,
    /// Rows per engine batch (scoring rows, or live sequences in a decode batch); 1 disables batching.
    #[arg(long, env = "RLLR_SERVER_MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,
    /// Microseconds the batcher may wait for more work to fill a scoring batch (0: run as soon as
    /// the engine is free, as TEI does; >0: Triton's max_queue_delay).
    #[arg(long, env = "RLLR_SERVER_MAX_DELAY_US", default_value_t = 0)]
    pub max_delay_us: u64,
    /// Default cap lambda on the label reward in min(r_label, lambda) + r_rationale (docs/method.md 5.3).
    #[arg(long, env = "RLLR_SERVER_LAMBDA", default_value_t = 1.0)]
    pub lambda: f32,
    /// Bearer token every RPC must carry (unset: no auth; bind to localhost then). Never printed.
    #[arg(long, env = "RLLR_SERVER_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Bearer token for LoadModel/UnloadModel (unset: admin RPCs are refused). Never printed.
    #[arg(long, env = "RLLR_SERVER_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// PEM certificate chain for TLS (with --tls-key); unset serves plaintext.
    #[arg(long, env = "RLLR_SERVER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "RLLR_SERVER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Seconds to drain in-flight requests after SIGTERM/SIGINT before exiting anyway.
    #[arg(long, env = "RLLR_SERVER_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    pub shutdown_timeout_s: u64,
    /// Seconds between turning health NOT_SERVING and closing the listener on SIGTERM, so load
    /// balancers and Kubernetes endpoints stop sending new calls before the port goes away.
    #[arg(long, env = "RLLR_SERVER_DRAIN_DELAY_S", default_value_t = 0)]
    pub drain_delay_s: u64,
    /// OTLP/gRPC collector for traces (e.g. http://otel-collector:4317). Unset: no spans are
    /// exported (off by default: without a collector the exporter would only log errors). Each
    /// RPC then gets a server span continuing the caller's W3C `traceparent`.
    #[arg(long, env = "RLLR_SERVER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    #[arg(
        long,
        env = "RLLR_SERVER_OTEL_SERVICE_NAME",
        default_value = "rllr-server"
    )]
    pub otel_service_name: String,
    /// Fraction of root traces sampled (calls without a sampled `traceparent`); a caller's
    /// sampling decision is always followed.
    #[arg(long, env = "RLLR_SERVER_OTEL_SAMPLE_RATIO", default_value_t = 1.0)]
    pub otel_sample_ratio: f64,
    /// Log lines as human-readable text or JSON objects (for log collectors).
    #[arg(long, env = "RLLR_SERVER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The environment prefix of `rllr-server`'s variables.
pub const ENV_PREFIX: &str = "RLLR_SERVER_";

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig::parse_from(["rllr-server"])
    }
}

impl ServerConfig {
    /// The configuration from the process's flags, env and `--config` file (or the embedded default).
    /// `--help`, `--version` and flag errors end the process the way clap does (exit 0 on stdout,
    /// or exit 2 with one message on stderr).
    pub fn load() -> anyhow::Result<Self> {
        let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
        if let Err(e) = Self::command().try_get_matches_from(&args) {
            e.exit();
        }
        Self::load_from(args)
    }

    /// As [`ServerConfig::load`], from explicit arguments.
    pub fn load_from<I, T>(args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Self::command().try_get_matches_from(args)?;
        let cli = Self::from_arg_matches(&matches)?;
        let file_text = match &cli.config {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()))?,
            None => EMBEDDED_DEFAULT.to_string(),
        };
        let file: toml::Table = toml::from_str(&file_text)
            .map_err(|e| anyhow::anyhow!("parsing the server config: {e}"))?;
        // Start from the flag defaults, lay the file over them, then the flags/env given explicitly.
        let mut merged = serde_json::to_value(&cli)?;
        let obj = merged
            .as_object_mut()
            .expect("struct serialises to an object");
        for (k, v) in file {
            obj.insert(k, serde_json::to_value(v)?);
        }
        let cli_json = serde_json::to_value(&cli)?;
        for id in matches.ids() {
            let explicit = matches!(
                matches.value_source(id.as_str()),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            );
            if explicit {
                if let Some(v) = cli_json.get(id.as_str()) {
                    obj.insert(id.to_string(), v.clone());
                }
            }
        }
        let mut cfg: ServerConfig = serde_json::from_value(merged)
            .map_err(|e| anyhow::anyhow!("invalid server config: {e}"))?;
        cfg.config = cli.config;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reject settings that cannot work.
    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("max_input_tokens", self.max_input_tokens),
            ("max_new_tokens", self.max_new_tokens),
            ("max_items_per_request", self.max_items_per_request),
            ("max_concurrent_requests", self.max_concurrent_requests),
            ("queue_capacity", self.queue_capacity),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_batch_size", self.max_batch_size),
        ];
        for (name, v) in positive {
            anyhow::ensure!(v > 0, "{name} must be >= 1");
        }
        anyhow::ensure!(self.lambda.is_finite(), "lambda must be finite");
        anyhow::ensure!(
            self.get_reward_penalty.is_finite(),
            "get_reward_penalty must be finite"
        );
        anyhow::ensure!(
            self.http_max_body_bytes >= 1024,
            "http_max_body_bytes must be >= 1024"
        );
        anyhow::ensure!(
            self.tls_cert.is_some() == self.tls_key.is_some(),
            "tls_cert and tls_key go together"
        );
        Ok(())
    }

    /// The batcher's max delay.
    pub fn max_delay(&self) -> Duration {
        Duration::from_micros(self.max_delay_us)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_loads_and_flags_override_the_file() {
        let cfg = ServerConfig::load_from(["rllr-server"]).unwrap();
        let names: Vec<&str> = cfg.models.iter().map(|m| m.name.as_str()).collect();
        let policy = cfg.default_policy_model.as_deref().unwrap();
        for want in [policy, "rm-label", "rm-rationale", "smollm2"] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        assert_eq!(cfg.metrics_listen, "127.0.0.1:9000");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(
            &p,
            "max_batch_size = 8\nlambda = 3.9\n[[models]]\nname='rm'\npath='x'\n",
        )
        .unwrap();
        let cfg = ServerConfig::load_from([
            "rllr-server",
            "--config",
            p.to_str().unwrap(),
            "--max-batch-size",
            "4",
        ])
        .unwrap();
        assert_eq!(cfg.max_batch_size, 4);
        assert_eq!(cfg.lambda, 3.9);
        assert_eq!(cfg.models[0].name, "rm");
        std::fs::write(&p, "max_batch_sise = 8\n").unwrap();
        assert!(ServerConfig::load_from(["rllr-server", "--config", p.to_str().unwrap()]).is_err());
    }
}
