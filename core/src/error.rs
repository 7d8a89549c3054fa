//! The engine's error type: one enum so callers can map failures (e.g. to gRPC statuses) precisely.

use std::path::PathBuf;

/// Everything that can go wrong inside `rllr-core`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid JSON in {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    #[error("invalid config: {0}")]
    Config(String),
    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: PathBuf, msg: String },
    #[error("GGUF: {0}")]
    Gguf(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("unknown adapter '{0}'")]
    UnknownAdapter(String),
    #[error("template: {0}")]
    Template(String),
}

/// Result alias used across the engine.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wrap an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// Wrap a JSON error with the file it came from.
    pub fn json(path: impl Into<PathBuf>, source: serde_json::Error) -> Self {
        Error::Json {
            path: path.into(),
            source,
        }
    }
    /// A checkpoint-level error with the directory it concerns.
    pub fn checkpoint(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

impl From<tokenizers::Error> for Error {
    fn from(e: tokenizers::Error) -> Self {
        Error::Tokenizer(e.to_string())
    }
}
