//! Bundled task data: converting the raw public datasets into the canonical JSONL schema
//! (`rllr_core::dataset`), splitting them reproducibly, and moving data to and from the reference
//! code's alpaca JSON and TRL's preference JSONL.

pub mod alpaca;
pub mod build;
pub mod cli;
pub mod rationales;
pub mod sources;
pub mod split;
pub mod trl;

use std::path::PathBuf;

/// Everything that can go wrong while reading raw data or writing bundled data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Core(#[from] rllr_core::Error),
    #[error("{path}:{line}: {msg}")]
    Raw {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    /// A bad row in a raw file, with its 1-based line number.
    pub fn raw(path: impl Into<PathBuf>, line: usize, msg: impl Into<String>) -> Self {
        DataError::Raw {
            path: path.into(),
            line,
            msg: msg.into(),
        }
    }
    /// Wrap an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
