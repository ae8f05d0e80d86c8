//! The checks every service makes of wire values, each naming the field
//! it refuses.

use std::fmt;

use tonic::{Code, Status};
use uuid::Uuid;

use crate::{ServiceError, shown, to_status};

/// A refused request field: INVALID_ARGUMENT, `field: reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: String,
    pub reason: String,
}

/// A refusal of `field` for `reason` (which must not quote a secret; use
/// [`shown`] to quote a value).
pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for Invalid {}

impl ServiceError for Invalid {
    fn code(&self) -> Code {
        Code::InvalidArgument
    }

    fn field(&self) -> Option<&str> {
        Some(&self.field)
    }
}

impl From<Invalid> for Status {
    fn from(error: Invalid) -> Self {
        to_status(&error)
    }
}

/// Bounded text: at most `max` bytes, no control characters, and not
/// blank when `required`.
pub fn text(field: &str, value: &str, max: usize, required: bool) -> Result<(), Invalid> {
    if required && value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("at most {max} bytes, no control characters"),
        ));
    }
    Ok(())
}

/// A reason a person wrote: bounded text in which line breaks are allowed.
/// Returns it trimmed.
pub fn reason(field: &str, value: &str, max: usize) -> Result<String, Invalid> {
    if value.len() > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(invalid(
            field,
            format!("at most {max} bytes, no control characters"),
        ));
    }
    Ok(value.trim().to_owned())
}

/// A UUID in any of its text forms.
pub fn uuid(field: &str, value: &str) -> Result<Uuid, Invalid> {
    Uuid::try_parse(value).map_err(|_| invalid(field, format!("{} is not a UUID", shown(value))))
}

/// The latest second a timestamp may name: 9999-12-31T23:59:59Z.
const MAX_SECONDS: i64 = 253_402_300_799;

/// A timestamp between 1970 and 9999 as Unix nanoseconds; `None` when
/// absent.
pub fn timestamp_ns(
    field: &str,
    ts: Option<&prost_types::Timestamp>,
) -> Result<Option<i64>, Invalid> {
    let Some(ts) = ts else { return Ok(None) };
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(invalid(
            field,
            "is not a valid timestamp between 1970 and 9999",
        ));
    }
    Ok(Some(ts.seconds * 1_000_000_000 + i64::from(ts.nanos)))
}

/// Rows a list returns when the request leaves `page_size` at 0.
pub const DEFAULT_PAGE: usize = 100;
/// The most rows one page of any list holds.
pub const MAX_PAGE: usize = 1000;

/// A list's `page_size`, the one rule every list RPC follows: 0 is
/// [`DEFAULT_PAGE`], more than [`MAX_PAGE`] is refused by name (a client
/// that asked for more must learn it gets less).
pub fn page_size(requested: u32) -> Result<usize, Invalid> {
    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT_PAGE),
        Ok(n) if n <= MAX_PAGE => Ok(n),
        _ => Err(invalid("page_size", format!("at most {MAX_PAGE}"))),
    }
}

/// One page of `rows`, read with one row beyond `limit`: the first
/// `limit` rows, and the token of the next page (the last row's `key`),
/// empty when this is the last.
pub fn next_page<T>(
    mut rows: Vec<T>,
    limit: usize,
    key: impl Fn(&T) -> String,
) -> (Vec<T>, String) {
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(key).unwrap_or_default();
        (rows, next)
    } else {
        (rows, String::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bad_field;

    #[test]
    fn every_list_pages_by_one_rule() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(1000), Ok(MAX_PAGE));
        let refused = page_size(1001).unwrap_err();
        assert_eq!(refused.to_string(), "page_size: at most 1000");
        let (rows, next) = next_page(vec![1, 2, 3], 2, |n: &i32| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], "2"));
        let (rows, next) = next_page(vec![1, 2], 2, |n: &i32| n.to_string());
        assert_eq!((rows, next.as_str()), (vec![1, 2], ""));
    }

    #[test]
    fn a_refused_field_is_named_in_the_message_and_in_bad_request() {
        let status = Status::from(text("task.incident_ref", "", 256, true).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "task.incident_ref: is required");
        assert_eq!(bad_field(&status).as_deref(), Some("task.incident_ref"));
        use tonic_types::StatusExt as _;
        let details = status.get_error_details();
        let violation = &details.bad_request().unwrap().field_violations[0];
        assert_eq!(violation.description, "is required");
    }

    #[test]
    fn text_is_bounded_and_has_no_control_characters() {
        assert!(text("f", "ok", 2, true).is_ok());
        assert!(text("f", "", 2, false).is_ok());
        assert_eq!(
            text("f", "abc", 2, false).unwrap_err().to_string(),
            "f: at most 2 bytes, no control characters"
        );
        assert!(text("f", "a\u{1b}", 8, false).is_err());
        assert!(text("f", "  ", 8, true).is_err());
        assert_eq!(reason("r", " two\nlines ", 64).unwrap(), "two\nlines");
        assert!(reason("r", "tab\there", 64).is_err());
    }

    #[test]
    fn a_uuid_refusal_quotes_the_value_safely() {
        assert!(uuid("id", "0192b1c4-5e8a-7cc0-9b1e-2f3a4b5c6d7e").is_ok());
        let refused = uuid("id", &"x".repeat(10_000)).unwrap_err().to_string();
        assert!(refused.starts_with("id: \"xxx"), "{refused}");
        assert!(refused.len() < 120, "{refused}");
        let secret = uuid("id", "stw_abcdefghijklmnop").unwrap_err().to_string();
        assert!(!secret.contains("abcdefgh"), "{secret}");
    }

    #[test]
    fn timestamps_are_between_1970_and_9999() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(timestamp_ns("t", None), Ok(None));
        assert_eq!(timestamp_ns("t", Some(&at(1, 5))), Ok(Some(1_000_000_005)));
        assert!(timestamp_ns("t", Some(&at(-1, 0))).is_err());
        assert!(timestamp_ns("t", Some(&at(MAX_SECONDS + 1, 0))).is_err());
        assert!(timestamp_ns("t", Some(&at(0, 1_000_000_000))).is_err());
    }
}
