//! What every command prints the same way: times, and one record as a
//! two-column listing or as JSON.

use serde::Serialize;

use crate::Output;

/// A timestamp as RFC 3339 in UTC to the second, or empty when unset.
pub fn time(at: Option<&prost_types::Timestamp>) -> String {
    at.and_then(|t| {
        let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    })
    .and_then(|t| {
        t.replace_nanosecond(0)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .unwrap_or_default()
}

/// Prints one record: a `field value` line per field, or JSON.
pub fn record<T: Serialize>(value: &T, output: Output) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&value)?),
        Output::Table => {
            if let Some(fields) = value.as_object() {
                let width = fields.keys().map(String::len).max().unwrap_or(0);
                for (name, value) in fields {
                    let text = match value {
                        serde_json::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    println!("{name:<width$}  {text}");
                }
            }
        }
    }
    Ok(())
}

/// Collects up to `limit` items across pages. `page(token)` fetches one
/// page (the first with an empty token) and returns its items and the next
/// token, empty after the last page.
pub async fn collect<T, F, Fut>(limit: usize, mut page: F) -> anyhow::Result<Vec<T>>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Vec<T>, String)>>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (more, next) = page(token).await?;
        items.extend(more);
        if next.is_empty() || items.len() >= limit {
            break;
        }
        token = next;
    }
    items.truncate(limit);
    Ok(items)
}

/// Prints rows: as JSON, or through `table` for people.
pub fn rows<T: Serialize>(rows: &[T], output: Output, table: impl Fn(&[T])) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(rows)?),
        Output::Table => table(rows),
    }
    Ok(())
}

/// Awaits `work`, showing on a terminal how long it has been waiting
/// (`what… 12 s`), for calls whose service does the long part.
pub async fn waiting<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    use std::io::{IsTerminal, Write};
    if !std::io::stderr().is_terminal() {
        return work.await;
    }
    let started = std::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.tick().await;
    tokio::pin!(work);
    let done = loop {
        tokio::select! {
            done = &mut work => break done,
            _ = tick.tick() => {
                eprint!("\r  {what}… {} s", started.elapsed().as_secs());
                let _ = std::io::stderr().flush();
            }
        }
    };
    eprint!("\r\x1b[K");
    done
}
