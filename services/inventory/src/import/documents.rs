//! The JSON exports of cloud and SaaS APIs: one or more JSON values one
//! after another (as `cat` of several pages or files gives), each an array
//! of items or an object holding one (`{"value": [...]}` from Microsoft
//! Graph, `{"installations": [...]}` from GitHub).

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// Every item, in order, or where the content stops being JSON: the
/// 1-based index of the first item that is not whole (items are read one
/// by one, so a file cut short says how far it got), and why, never
/// quoting the content.
pub(super) fn items(content: &[u8], keys: &[&str]) -> Result<Vec<Value>, (u64, String)> {
    let mut out = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(content);
    let mut any = false;
    while de.end().is_err() {
        let next = out.len() as u64 + 1;
        let found = Document {
            out: &mut out,
            keys,
        }
        .deserialize(&mut de)
        .map_err(|e| {
            let at = out.len() as u64 + 1;
            (at, format!("not JSON at item {at}: {e}"))
        })?;
        if !found {
            let names: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
            return Err((
                next,
                format!("an object without an array under {}", names.join(" or ")),
            ));
        }
        any = true;
    }
    if !any {
        return Err((1, "no JSON value".into()));
    }
    Ok(out)
}

/// One JSON value of an export: an array of items, or an object holding
/// one under one of `keys`. Yields whether it held items.
struct Document<'a> {
    out: &'a mut Vec<Value>,
    keys: &'a [&'a str],
}

impl<'de> DeserializeSeed<'de> for Document<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Document<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of items or an object holding one")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        Items(self.out).visit_seq(seq).map(|()| true)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(key) = map.next_key::<String>()? {
            if !found && self.keys.contains(&key.as_str()) {
                found = true;
                map.next_value_seed(Items(&mut *self.out))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// An array's items, pushed one by one.
struct Items<'a>(&'a mut Vec<Value>);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(item) = seq.next_element::<Value>()? {
            self.0.push(item);
        }
        Ok(())
    }
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
        assert_eq!(index, 3, "items 1 and 2 were whole");
        assert!(reason.starts_with("not JSON at item 3"), "{reason}");
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
