//! `--log-format`: human-readable text (colour only when stderr is a terminal, so files and
//! container logs carry no ANSI codes) or one JSON object per line for log collectors.

use std::io::IsTerminal;

use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event (timestamp, level, target, fields): for Loki, Elasticsearch,
    /// Cloud Logging and the like.
    Json,
}

/// Install the global subscriber: level filter from `filter_env` (e.g. `RUST_LOG`), else
/// `default_filter`.
pub fn init_logging(format: LogFormat, filter_env: &str, default_filter: &str) {
    let filter =
        EnvFilter::try_from_env(filter_env).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init in one process (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}
