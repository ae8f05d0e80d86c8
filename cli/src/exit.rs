//! How a refused call reaches the shell: an exit code per gRPC status, so
//! scripts can tell "not found" from "not allowed" from "try again", and a
//! line that says what to do next.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | any other failure |
//! | 2 | bad usage or a refused argument (INVALID_ARGUMENT) |
//! | 3 | `audit verify`: the log failed verification |
//! | 4 | not found |
//! | 5 | not allowed (PERMISSION_DENIED, UNAUTHENTICATED) |
//! | 6 | not now: FAILED_PRECONDITION, approval required among them |
//! | 7 | unavailable: the service or one it needs cannot be reached; retry |

use std::process::ExitCode;

use tonic::Code;

/// Bad usage, or an argument a service (or the command itself) refused.
pub const BAD_ARGUMENT: u8 = 2;

/// The exit code and the advice for a failed command.
pub fn failure(error: &anyhow::Error) -> (ExitCode, Option<String>) {
    if let Some(steward_identity::connector::ConnectError::Transport(..)) =
        error.downcast_ref::<steward_identity::connector::ConnectError>()
    {
        return (
            ExitCode::from(7),
            Some("is Steward running there? `steward health` checks every service".to_owned()),
        );
    }
    let Some(status) = error.downcast_ref::<tonic::Status>() else {
        return (ExitCode::FAILURE, None);
    };
    let (code, hint) = match status.code() {
        Code::InvalidArgument | Code::OutOfRange => (BAD_ARGUMENT, None),
        Code::NotFound => (4, None),
        Code::PermissionDenied | Code::Unauthenticated => (
            5,
            Some(
                "`steward whoami` shows who the services see; a human action needs `steward login`"
                    .to_owned(),
            ),
        ),
        Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => (
            6,
            status
                .metadata()
                .get("steward-approval-request-id")
                .and_then(|v| v.to_str().ok())
                .map(|id| {
                    format!("approval request {id} must be approved first; retry once it is")
                }),
        ),
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted => (
            7,
            Some("retry; `steward health` shows which service is down".to_owned()),
        ),
        _ => (1, None),
    };
    (ExitCode::from(code), hint)
}
