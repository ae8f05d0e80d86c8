//! The JSON exports of cloud and SaaS APIs: one or more JSON values one
//! after another (as `cat` of several pages or files gives), each an array
//! of items or an object holding one (`{"value": [...]}` from Microsoft
//! Graph, `{"installations": [...]}` from GitHub).

use serde_json::Value;

/// Every item, in order, or where the content stops being JSON: the
/// 1-based index of the item that is not whole, and why (never quoting the
/// content).
pub(super) fn items(content: &[u8], keys: &[&str]) -> Result<Vec<Value>, (u64, String)> {
    let mut out = Vec::new();
    let mut values = serde_json::Deserializer::from_slice(content).into_iter::<Value>();
    let mut any = false;
    for value in &mut values {
        let next = out.len() as u64 + 1;
        let value = value.map_err(|e| (next, format!("not JSON at item {next}: {e}")))?;
        any = true;
        match value {
            Value::Array(items) => out.extend(items),
            Value::Object(mut object) => {
                let held = keys
                    .iter()
                    .find_map(|k| match object.remove(*k) {
                        Some(Value::Array(items)) => Some(items),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        (
                            next,
                            format!(
                                "an object without an array under {}",
                                keys.iter()
                                    .map(|k| format!("\"{k}\""))
                                    .collect::<Vec<_>>()
                                    .join(" or ")
                            ),
                        )
                    })?;
                out.extend(held);
            }
            _ => return Err((next, "neither an array nor an object".into())),
        }
    }
    if !any {
        return Err((1, "no JSON value".into()));
    }
    Ok(out)
}

/// [`items`], or `None` with the content refused at the item that broke.
pub(super) fn read(
    content: &[u8],
    keys: &[&str],
    parsed: &mut super::Parsed,
) -> Option<Vec<Value>> {
    match items(content, keys) {
        Ok(items) => Some(items),
        Err((line, reason)) => {
            parsed.reject(line, "content", reason);
            None
        }
    }
}

/// Copies the string fields `(label, key)` of `item` that are not empty
/// into `labels`.
pub(super) fn copy(
    item: &Value,
    labels: &mut std::collections::BTreeMap<String, String>,
    pairs: &[(&str, &str)],
) {
    for (label, key) in pairs {
        let value = text(item, key);
        if !value.is_empty() {
            labels.insert((*label).to_owned(), value.to_owned());
        }
    }
}

/// A string field, empty when absent.
pub(super) fn text<'a>(item: &'a Value, key: &str) -> &'a str {
    item.get(key).and_then(Value::as_str).unwrap_or("")
}

/// An RFC 3339 time field, `None` when absent, empty or null.
pub(super) fn time(item: &Value, key: &'static str) -> Result<Option<i64>, (&'static str, String)> {
    match text(item, key) {
        "" => Ok(None),
        value => super::rfc3339(value)
            .map(Some)
            .map_err(|reason| (key, reason)),
    }
}

/// An expiry field: `None` when absent, and also when it lies beyond what
/// Steward holds (after 2262; Graph and gcloud write 2299-12-31 or
/// 9999-12-31 for "never"), since such a credential has no expiry to act
/// on.
pub(super) fn expiry(
    item: &Value,
    key: &'static str,
) -> Result<Option<i64>, (&'static str, String)> {
    let value = text(item, key);
    if let Ok(t) =
        ::time::OffsetDateTime::parse(value, &::time::format_description::well_known::Rfc3339)
        && t.unix_timestamp_nanos() > i128::from(i64::MAX)
    {
        return Ok(None);
    }
    time(item, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_pages_and_wrapped_arrays_are_one_list() {
        let content = br#"[{"a": 1}] {"value": [{"a": 2}, {"a": 3}]}
            [{"a": 4}]"#;
        let items = items(content, &["value"]).unwrap();
        assert_eq!(items.len(), 4);
        let cut = br#"[{"a": 1}] [{"a": 2}, {"a""#;
        let (index, reason) = super::items(cut, &["value"]).unwrap_err();
        assert_eq!(index, 2);
        assert!(reason.starts_with("not JSON at item 2"), "{reason}");
        assert_eq!(
            super::items(br#"{"other": []}"#, &["value"]).unwrap_err().0,
            1
        );
    }

    #[test]
    fn a_never_ending_expiry_is_none() {
        let item = serde_json::json!({"a": "9999-12-31T23:59:59Z", "b": "2299-12-31T05:00:00Z", "c": "2027-01-01T00:00:00Z"});
        assert_eq!(expiry(&item, "a").unwrap(), None);
        assert_eq!(expiry(&item, "b").unwrap(), None);
        assert_eq!(expiry(&item, "c").unwrap(), Some(1_798_761_600_000_000_000));
        assert_eq!(expiry(&item, "d").unwrap(), None);
    }
}
