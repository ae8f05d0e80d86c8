//! Why the Workload API or SDS serves a caller nothing, with the code the
//! SPIFFE Workload API specification gives each reason: the adapters'
//! one error mapping (through `steward_errors::to_status`, which logs a
//! fault's detail once and never returns it).

use steward_errors::{Detail, ServiceError};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// The spec: a call without `workload.spiffe.io: true` is
    /// INVALID_ARGUMENT, before anything else is looked at.
    #[error("security header missing from request: set workload.spiffe.io: true")]
    NoSecurityHeader,
    /// The socket gave no peer credentials: the caller cannot be attested.
    #[error("the caller's kernel credentials are unavailable")]
    NotAttested,
    /// No registration entry matches the caller (the spec: PERMISSION_DENIED).
    #[error("no identity is registered for this workload")]
    NotRegistered,
    /// The caller asked for one SPIFFE ID it is not registered as.
    #[error("spiffe_id: this workload is not registered as {0}")]
    NotRegisteredAs(String),
    /// Inventory, which holds the registration entries, did not answer.
    #[error("inventory cannot be reached to attest the caller; retry")]
    InventoryUnreachable,
    /// `DeltaSecrets`: Steward serves state-of-the-world SDS only.
    #[error("delta SDS is not served; use StreamSecrets (state of the world)")]
    DeltaSds,
    /// Something of the broker's own failed; `what` is all the caller sees.
    #[error("{what}")]
    Internal {
        what: &'static str,
        #[source]
        detail: Detail,
    },
}

impl Refusal {
    pub(super) fn internal(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            what,
            detail: Detail::of(detail),
        }
    }
}

impl ServiceError for Refusal {
    fn code(&self) -> Code {
        match self {
            Self::NoSecurityHeader => Code::InvalidArgument,
            Self::NotAttested | Self::NotRegistered | Self::NotRegisteredAs(_) => {
                Code::PermissionDenied
            }
            Self::InventoryUnreachable => Code::Unavailable,
            Self::DeltaSds => Code::Unimplemented,
            Self::Internal { .. } => Code::Internal,
        }
    }

    fn field(&self) -> Option<&str> {
        match self {
            Self::NotRegisteredAs(_) => Some("spiffe_id"),
            _ => None,
        }
    }
}

impl From<Refusal> for Status {
    fn from(refusal: Refusal) -> Self {
        steward_errors::to_status(&refusal)
    }
}
