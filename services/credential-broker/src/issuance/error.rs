//! What the core refuses or fails with, and the status each is.

use std::fmt;

use steward_errors::{Detail, Invalid, ServiceError};
use tonic::Code;

use crate::ca::CsrError;
use crate::store::StoreError;

/// Why an operation did nothing.
#[derive(Debug)]
pub enum Error {
    /// A request value refused: INVALID_ARGUMENT.
    Invalid(Invalid),
    /// The caller's CSR: INVALID_ARGUMENT.
    Csr(CsrError),
    /// Refused by the state of things (the identity, the lease, the
    /// policy's cap): FAILED_PRECONDITION. `field` when one is at fault.
    Precondition {
        field: Option<&'static str>,
        message: String,
    },
    /// Authority opened an approval request: FAILED_PRECONDITION, with
    /// the request's id for the caller to wait on.
    ApprovalRequired { request_id: String, reason: String },
    /// Authority denied: PERMISSION_DENIED.
    Denied(String),
    /// Authority's refusal of the ask passed on, or UNAVAILABLE when it
    /// could not answer (fail closed); `message` is what the caller reads.
    Peer { code: Code, message: String },
    /// Something the broker depends on is down; `message` says what was
    /// not done, `detail` is logged.
    Unavailable {
        message: &'static str,
        detail: Detail,
    },
    /// The broker's storage.
    Store(StoreError),
    /// A fault of the broker's own: INTERNAL, `detail` logged.
    Internal {
        message: &'static str,
        detail: Detail,
    },
}

impl Error {
    /// A FAILED_PRECONDITION whose message names its field already.
    pub fn precondition(message: impl Into<String>) -> Self {
        Self::Precondition {
            field: None,
            message: message.into(),
        }
    }

    /// A FAILED_PRECONDITION about `field`: `field: why`.
    pub fn precondition_on(field: &'static str, why: impl fmt::Display) -> Self {
        Self::Precondition {
            field: Some(field),
            message: format!("{field}: {why}"),
        }
    }

    pub fn unavailable(message: &'static str, detail: impl fmt::Display) -> Self {
        Self::Unavailable {
            message,
            detail: Detail::of(detail),
        }
    }

    pub fn internal(message: &'static str, detail: impl fmt::Display) -> Self {
        Self::Internal {
            message,
            detail: Detail::of(detail),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => e.fmt(f),
            Self::Csr(e) => e.fmt(f),
            Self::Precondition { message, .. } | Self::Peer { message, .. } => f.write_str(message),
            Self::Denied(message) => f.write_str(message),
            Self::ApprovalRequired { request_id, reason } => write!(
                f,
                "approval required: authority opened approval request {request_id} ({reason}); retry once it is approved"
            ),
            Self::Unavailable { message, .. } | Self::Internal { message, .. } => {
                f.write_str(message)
            }
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable { detail, .. } | Self::Internal { detail, .. } => Some(detail),
            Self::Store(StoreError::Storage(e)) => Some(e),
            _ => None,
        }
    }
}

impl ServiceError for Error {
    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::Csr(_) => Code::InvalidArgument,
            Self::Precondition { .. } | Self::ApprovalRequired { .. } => Code::FailedPrecondition,
            Self::Denied(_) => Code::PermissionDenied,
            Self::Peer { code, .. } => *code,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
            Self::Store(e) => match e {
                StoreError::NotFound(_) => Code::NotFound,
                StoreError::FailedPrecondition(_) => Code::FailedPrecondition,
                StoreError::Storage(e) => e.code(),
            },
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.field),
            Self::Csr(_) => Some("csr"),
            Self::Precondition { field, .. } => *field,
            _ => None,
        }
    }
}

impl From<Invalid> for Error {
    fn from(e: Invalid) -> Self {
        Self::Invalid(e)
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}
