//! The server's error type and its one mapping to gRPC statuses.
//!
//! Every failure a request can meet is a variant here, so the status a client sees (and the `err`
//! label of the failure counter) is decided in one place rather than at each call site.

use tonic::{Code, Status};

/// Everything that can fail while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field breaks a rule; the message names the field and the limit.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// A queue or the concurrency limit is full; the client should back off and retry.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The request's deadline passed before its work finished; the work was dropped.
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A model (or other named thing) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// No or a wrong bearer token.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A valid token without the right to call this RPC (admin RPCs).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The model's worker is gone (unloaded, crashed or shutting down).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The model cannot do what was asked (e.g. Score on a model without a score head).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The engine failed on a batch (the message says how).
    #[error("internal: {0}")]
    Internal(String),
    /// The engine failed on valid input.
    #[error("engine: {0}")]
    Engine(#[from] rllr_core::Error),
}

/// Result alias of the server.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The `err` label of `rllr_request_failure_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument { .. } => "validation",
            Error::Overloaded(_) => "overloaded",
            Error::DeadlineExceeded(_) => "deadline",
            Error::NotFound(_) => "not_found",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::PermissionDenied(_) => "permission_denied",
            Error::Unavailable(_) => "unavailable",
            Error::FailedPrecondition(_) => "model_type",
            Error::Internal(_) | Error::Engine(_) => "inference",
        }
    }

    fn code(&self) -> Code {
        match self {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Overloaded(_) => Code::ResourceExhausted,
            Error::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Error::NotFound(_) => Code::NotFound,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Internal(_) => Code::Internal,
            Error::Engine(rllr_core::Error::Input(_)) => Code::InvalidArgument,
            Error::Engine(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_precise() {
        let s: Status = Error::invalid("items[2].label", "'x' is not one of: a, b").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("items[2].label"));
        let s: Status = Error::Overloaded("queue full".into()).into();
        assert_eq!(s.code(), Code::ResourceExhausted);
        let s: Status = Error::DeadlineExceeded("x".into()).into();
        assert_eq!(s.code(), Code::DeadlineExceeded);
    }
}
