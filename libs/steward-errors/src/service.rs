//! One error model: each service's error enum says its gRPC code and the
//! request field at fault, keeps what went wrong inside as its `source`,
//! and [`to_status`] turns it into the one status a caller sees.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

/// An error a service answers a caller with.
///
/// `Display` is what the caller reads: lowercase, no trailing period, the
/// field first when there is one (`ttl_seconds: at most 3600`). Detail the
/// caller must not see (SQL, paths, a peer's message) goes in
/// [`std::error::Error::source`], which [`to_status`] logs and never
/// returns.
pub trait ServiceError: std::error::Error {
    /// The gRPC status code.
    fn code(&self) -> Code;

    /// The request field at fault, as the wire names it (`task.window_end`,
    /// `audience[2]`).
    fn field(&self) -> Option<&str> {
        None
    }
}

/// Whether `code` means the service, not the request, went wrong.
fn service_fault(code: Code) -> bool {
    matches!(
        code,
        Code::Internal
            | Code::Unavailable
            | Code::DataLoss
            | Code::ResourceExhausted
            | Code::Unknown
    )
}

/// What went wrong inside, kept as an error's source: logged by
/// [`to_status`], never returned to a caller.
#[derive(Debug)]
pub struct Detail(pub String);

impl Detail {
    pub fn of(detail: impl std::fmt::Display) -> Self {
        Self(detail.to_string())
    }
}

impl std::fmt::Display for Detail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Detail {}

/// `error` and every error below it, outermost first, each told once:
/// what a log line says of a fault.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut told: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if told.last() != Some(&text) {
            told.push(text);
        }
        next = e.source();
    }
    told.join(": ")
}

/// The status for `error`: its code and message. An INVALID_ARGUMENT that
/// names its field carries a `google.rpc.BadRequest` with that one field
/// violation, so a client can point at the field without parsing text. A
/// service fault with a source is logged here, once, with that source.
pub fn to_status<E: ServiceError + ?Sized>(error: &E) -> Status {
    let code = error.code();
    let message = error.to_string();
    if service_fault(code)
        && let Some(source) = error.source()
    {
        tracing::error!(?code, error = %causes(source), "{message}");
    }
    match error.field() {
        Some(field) if code == Code::InvalidArgument => {
            let description = message
                .strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(": "))
                .unwrap_or(&message)
                .to_owned();
            Status::with_error_details(
                code,
                message,
                ErrorDetails::with_bad_request_violation(field, description),
            )
        }
        _ => Status::new(code, message),
    }
}

/// The field a status's `google.rpc.BadRequest` names first, if any.
pub fn bad_field(status: &Status) -> Option<String> {
    status
        .get_error_details()
        .bad_request()
        .and_then(|b| b.field_violations.first())
        .map(|v| v.field.clone())
}
