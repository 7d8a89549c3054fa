//! rllr-server: batched gRPC reward scoring and chain-of-thought classification, with an HTTP/JSON
//! front (`http`) over the same services.
//!
//! Request path: tonic service → validate (limits, labels) → tokenize (blocking pool) → per-model
//! bounded queue → batcher (token budget, max batch, max delay) → engine worker (its own OS thread,
//! owning the model) → reply with timing metadata. Health follows the workers through a `watch`
//! channel; every error maps to a status in one place (`error.rs`); metrics are recorded at the
//! edges of each stage.

pub mod auth;
pub mod batcher;
pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod label_fork;
pub mod metrics;
pub mod models;
pub mod otel;
pub mod policy;
pub mod registry;
pub mod revision;
pub mod reward;
pub mod server;
pub mod state;
pub mod stream;
#[cfg(feature = "testutil")]
pub mod testutil;
pub mod text;

pub use config::ServerConfig;

/// The crate version, as in `rllr-server --version` and `rllr_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built from (see `build.rs`).
pub const GIT_SHA: &str = env!("RLLR_GIT_SHA");
pub use error::{Error, Result};
pub use server::{start, RunningServer};
