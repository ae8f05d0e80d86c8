//! What authority's decision path refuses or fails with, and the status
//! each is. The gRPC adapter maps it with `steward_errors::to_status`.

use std::fmt;

use steward_errors::{Detail, Invalid, ServiceError};
use tonic::Code;

use crate::store::StoreError;

/// Why a decision (or a change waiting on one) was not made.
#[derive(Debug)]
pub enum Error {
    /// A request value refused: INVALID_ARGUMENT.
    Invalid(Invalid),
    /// The caller may not ask this: PERMISSION_DENIED. `field` is the
    /// request value at fault, when one is.
    Denied {
        field: Option<String>,
        reason: String,
    },
    /// The caller's own identity cannot be a principal: UNAUTHENTICATED.
    Unauthenticated(String),
    /// The identity asked about is not in inventory: NOT_FOUND.
    NoSuchIdentity(uuid::Uuid),
    /// The policies could not evaluate the request: INVALID_ARGUMENT.
    Policy(String),
    /// Something authority depends on is down; `message` says what was not
    /// done, `detail` is logged.
    Unavailable {
        message: &'static str,
        detail: Detail,
    },
    /// Authority's storage.
    Store(StoreError),
    /// A fault of authority's own: INTERNAL, `detail` logged.
    Internal { message: String, detail: Detail },
}

impl Error {
    /// PERMISSION_DENIED about `field`: `field: reason`.
    pub fn denied_on(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Denied {
            field: Some(field.into()),
            reason: reason.into(),
        }
    }

    /// PERMISSION_DENIED with no one field at fault.
    pub fn denied(reason: impl Into<String>) -> Self {
        Self::Denied {
            field: None,
            reason: reason.into(),
        }
    }

    pub fn unavailable(message: &'static str, detail: impl fmt::Display) -> Self {
        Self::Unavailable {
            message,
            detail: Detail::of(detail),
        }
    }

    pub fn internal(message: impl Into<String>, detail: impl fmt::Display) -> Self {
        Self::Internal {
            message: message.into(),
            detail: Detail::of(detail),
        }
    }

    /// The same error about a request nested under `prefix` (`request.`
    /// in DryRun and Explain): the field it names is prefixed.
    pub fn under(self, prefix: &str) -> Self {
        if prefix.is_empty() {
            return self;
        }
        match self {
            Self::Invalid(e) => Self::Invalid(steward_errors::invalid(
                format!("{prefix}{}", e.field),
                e.reason,
            )),
            Self::Denied {
                field: Some(field),
                reason,
            } => Self::Denied {
                field: Some(format!("{prefix}{field}")),
                reason,
            },
            other => other,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Invalid(e) => e.fmt(f),
            Self::Denied {
                field: Some(field),
                reason,
            } => write!(f, "{field}: {reason}"),
            Self::Denied {
                field: None,
                reason,
            } => f.write_str(reason),
            Self::Unauthenticated(m) | Self::Policy(m) | Self::Internal { message: m, .. } => {
                f.write_str(m)
            }
            Self::NoSuchIdentity(id) => {
                write!(f, "resource_id: identity {id} does not exist in inventory")
            }
            Self::Unavailable { message, .. } => f.write_str(message),
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
            Self::Invalid(_) | Self::Policy(_) => Code::InvalidArgument,
            Self::Denied { .. } => Code::PermissionDenied,
            Self::Unauthenticated(_) => Code::Unauthenticated,
            Self::NoSuchIdentity(_) => Code::NotFound,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::Internal { .. } => Code::Internal,
            Self::Store(e) => match e {
                StoreError::NotFound(_) => Code::NotFound,
                StoreError::FailedPrecondition(_) => Code::FailedPrecondition,
                StoreError::AlreadyExists(_) => Code::AlreadyExists,
                StoreError::PermissionDenied(_) => Code::PermissionDenied,
                StoreError::Storage(e) => e.code(),
            },
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid(e) => Some(&e.field),
            Self::Denied { field, .. } => field.as_deref(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_request_names_its_fields_under_the_prefix() {
        let e =
            Error::from(steward_errors::invalid("context.reason", "is required")).under("request.");
        assert_eq!(e.field(), Some("request.context.reason"));
        assert_eq!(e.to_string(), "request.context.reason: is required");
        let d = Error::denied_on("principal", "may not act for x").under("request.");
        assert_eq!(d.to_string(), "request.principal: may not act for x");
        assert_eq!(d.code(), Code::PermissionDenied);
    }

    #[test]
    fn storage_detail_is_logged_never_shown() {
        let e = Error::Store(StoreError::Storage(steward_db::StorageError::unavailable(
            "disk I/O error at /var/x",
        )));
        assert_eq!(e.code(), Code::Unavailable);
        assert!(!e.to_string().contains("/var/x"));
        let logged = steward_errors::causes(std::error::Error::source(&e).unwrap());
        assert!(logged.contains("/var/x"), "{logged}");
    }
}
