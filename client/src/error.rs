//! The one error type of the library, so callers can match on what went wrong (a bad endpoint, a
//! gRPC status, a deadline, a malformed input record) instead of parsing strings.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything the client library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint was configured.
    #[error("no server endpoint given")]
    NoEndpoints,
    /// An endpoint URI that tonic rejects.
    #[error("invalid endpoint '{endpoint}': {source}")]
    Endpoint {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// TLS or auth settings that cannot work (unreadable CA file, a token with invalid characters).
    #[error("{0}")]
    Config(String),
    /// The server answered with a non-OK status (after any retries).
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(Box<tonic::Status>),
    /// The caller's deadline passed while retrying; `last` is the status of the last attempt.
    #[error("deadline exceeded after {attempts} attempt(s); last error: {last}")]
    DeadlineExceeded { attempts: u32, last: String },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input record that cannot be used, with its 1-based line number.
    #[error("line {line}: {message}")]
    BadRecord { line: usize, message: String },
    /// The batch job could not finish (it can be restarted: finished rows are kept).
    #[error("batch job: {0}")]
    Batch(String),
    /// `rllr merge` found the shard outputs incomplete, or one unreadable.
    #[error("merge: {0}")]
    Merge(String),
}

impl From<tonic::Status> for Error {
    fn from(s: tonic::Status) -> Self {
        Error::Status(Box::new(s))
    }
}

impl Error {
    /// The gRPC code, when the error is a status.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            Error::DeadlineExceeded { .. } => Some(tonic::Code::DeadlineExceeded),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}
