//! How a service speaks of a value it refuses.
//!
//! An error message goes back to the caller and into logs. Quoting what
//! the caller sent is useful when it is short ("`explode` is not an
//! action"), and harmful when it is not: a 1 MB value copied into a status
//! message overflows a gRPC client's metadata limit (grpcio stops at
//! 16 KiB) and turns INVALID_ARGUMENT into RESOURCE_EXHAUSTED, and a
//! secret pasted into the wrong field would be echoed into every log that
//! records the error. [`shown`] is the one way services quote a value.
//!
//! It is also where the services' one error model lives: the
//! [`ServiceError`] trait each service's error enum implements,
//! [`to_status`], and the wire checks in [`wire`] that name the field they
//! refuse.

use std::fmt::Write as _;

mod service;
pub mod wire;

pub use service::{Detail, ServiceError, bad_field, causes, to_status};
pub use wire::{Invalid, invalid};

/// Most characters of a value an error quotes.
pub const SHOWN_CHARS: usize = 64;

/// A refused value as an error may quote it: in double quotes, escaped
/// (control characters and quotes as Rust escapes), at most
/// [`SHOWN_CHARS`] characters followed by `… (N bytes)` when longer, and
/// never a value that looks like a secret: a Steward API token (`stw_`),
/// a JWT, or a PEM block is shown only as its kind and length.
pub fn shown(value: &str) -> String {
    if let Some(kind) = secret_kind(value) {
        return format!("<{kind}, {} bytes, not shown>", value.len());
    }
    let mut out = String::with_capacity(SHOWN_CHARS + 24);
    out.push('"');
    let mut chars = value.chars();
    for c in chars.by_ref().take(SHOWN_CHARS) {
        for e in c.escape_debug() {
            out.push(e);
        }
    }
    out.push('"');
    if chars.next().is_some() {
        let _ = write!(out, "… ({} bytes)", value.len());
    }
    out
}

/// A peer's answer to a call this service made on a caller's behalf, as
/// the caller should see it: a refusal about the request (bad argument,
/// not found, not allowed, not now, not authenticated) is passed on,
/// prefixed with the peer's name; anything else means the peer could not
/// decide, and the caller gets UNAVAILABLE saying that nothing was done
/// (`nothing_done`): fail closed. The peer's own detail is logged, not
/// returned.
pub fn from_peer(peer: &str, status: &tonic::Status, nothing_done: &str) -> tonic::Status {
    use tonic::Code;
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Unauthenticated => {
            tonic::Status::new(status.code(), format!("{peer}: {}", status.message()))
        }
        code => {
            tracing::warn!(
                peer,
                ?code,
                status_message = status.message(),
                "peer could not answer; failing closed"
            );
            tonic::Status::unavailable(format!(
                "{peer} cannot be reached; {nothing_done} (fail closed); retry"
            ))
        }
    }
}

/// What kind of secret `value` looks like, if any.
pub fn secret_kind(value: &str) -> Option<&'static str> {
    let v = value.trim();
    if v.starts_with("stw_") {
        return Some("an API token");
    }
    if v.contains("-----BEGIN") {
        return Some("a PEM block");
    }
    if looks_like_jwt(v) {
        return Some("a JWT");
    }
    let bearer = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "));
    bearer
        .filter(|rest| !rest.trim().is_empty())
        .map(|_| "a bearer token")
}

/// Three base64url segments, the first a JSON object (`eyJ`).
fn looks_like_jwt(v: &str) -> bool {
    let mut parts = v.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let b64url = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=')
    };
    header.starts_with("eyJ") && b64url(header) && b64url(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_values_are_quoted_and_escaped() {
        assert_eq!(shown("explode"), "\"explode\"");
        assert_eq!(shown("a\"b\nc"), "\"a\\\"b\\nc\"");
        assert_eq!(shown("\u{1b}[31m"), "\"\\u{1b}[31m\"");
    }

    #[test]
    fn long_values_are_cut_with_their_length() {
        let long = "x".repeat(1 << 20);
        let s = shown(&long);
        assert!(s.len() < 100, "{s}");
        assert!(s.ends_with("… (1048576 bytes)"), "{s}");
        // Cut on a character boundary.
        let wide = "é".repeat(100);
        assert!(shown(&wide).starts_with(&format!("\"{}\"", "é".repeat(SHOWN_CHARS))));
    }

    #[test]
    fn a_peers_refusal_is_passed_on_and_its_absence_fails_closed() {
        let refused = from_peer(
            "authority",
            &tonic::Status::permission_denied("no policy permits this request"),
            "nothing was changed",
        );
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "authority: no policy permits this request"
        );
        let down = from_peer(
            "authority",
            &tonic::Status::internal("h2 protocol error: connection reset"),
            "nothing was changed",
        );
        assert_eq!(down.code(), tonic::Code::Unavailable);
        assert_eq!(
            down.message(),
            "authority cannot be reached; nothing was changed (fail closed); retry"
        );
    }

    #[test]
    fn secrets_are_never_shown() {
        for secret in [
            "stw_9f8e7d6c5b4a39281706f5e4d3c2b1a0",
            "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
            "-----BEGIN PRIVATE KEY-----\nMIGH\n-----END PRIVATE KEY-----",
            "Bearer abc.def",
        ] {
            let s = shown(secret);
            assert!(s.starts_with('<') && s.contains("not shown"), "{s}");
            assert!(!s.contains(&secret[4..12]), "{s}");
        }
        assert_eq!(secret_kind("spiffe://td/a"), None);
        assert_eq!(secret_kind("a.b.c"), None);
    }
}
