//! The text output, for people: a record as aligned lines, lists as
//! tables, durations as `1h 2m`, `3.2s` or `450ms`.

use std::fmt::Write as _;
use std::time::Duration;

use idempotent_core::admin::{Eviction, OperationCount, RecordInfo, RecordStatus};
use idempotent_core::record::StorageKey;

/// A duration to read at a glance.
fn duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let seconds = duration.as_secs();
    match seconds {
        _ if duration == Duration::MAX => "never".to_owned(),
        0 => format!("{millis}ms"),
        1..60 => format!("{}.{}s", seconds, duration.subsec_millis() / 100),
        60..3_600 => format!("{}m {}s", seconds / 60, seconds % 60),
        3_600..86_400 => format!("{}h {}m", seconds / 3_600, seconds % 3_600 / 60),
        _ => format!("{}d {}h", seconds / 86_400, seconds % 86_400 / 3_600),
    }
}

/// `namespace / scope / operation / key`, the scope `-` when empty.
fn key_path(key: &StorageKey) -> String {
    let (namespace, scope, operation, id) = key.parts();
    let scope = if scope.is_empty() { "-" } else { scope };
    format!("{namespace} / {scope} / {operation} / {id}")
}

fn running_for(running_for: Option<Duration>) -> String {
    running_for.map_or_else(|| "unknown (record layout 1)".to_owned(), duration)
}

/// `inspect`'s output.
pub(crate) fn inspected(key: &StorageKey, found: Option<&RecordInfo>, show_body: bool) -> String {
    let Some(record) = found else {
        return format!("no live record for {}\n", key_path(key));
    };
    let mut out = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{label:<12} {value}");
    };
    line("key", &key_path(&record.key));
    match &record.status {
        RecordStatus::InProgress {
            owner,
            lease_left,
            running_for: age,
        } => {
            line("state", &"in progress");
            line("fingerprint", &record.fingerprint);
            line("owner", &format!("{:032x}", owner.as_u128()));
            line("lease left", &duration(*lease_left));
            line("running for", &running_for(*age));
        }
        RecordStatus::Completed {
            expires_in,
            response_len,
            response,
        } => {
            line("state", &"completed");
            line("fingerprint", &record.fingerprint);
            line("expires in", &duration(*expires_in));
            let hidden = if show_body {
                ""
            } else {
                " (not shown: --show-body prints it)"
            };
            line("response", &format!("{response_len} bytes{hidden}"));
            line("layout", &record.layout);
            if let Some(body) = response {
                let _ = writeln!(out, "\n{}", String::from_utf8_lossy(body));
            }
            return out;
        }
        _ => line("state", &"unknown to this version of the tool"),
    }
    line("layout", &record.layout);
    out
}

/// `evict`'s output.
pub(crate) fn eviction(key: &StorageKey, eviction: &Eviction) -> String {
    let key = key_path(key);
    let said = match eviction {
        Eviction::Evicted { in_progress: false } => {
            format!("evicted {key}: the next call with this key runs again")
        }
        Eviction::Evicted { in_progress: true } => format!(
            "evicted {key}, which was in progress: its owner can no longer store its result, \
             and the next call with this key runs again"
        ),
        Eviction::Refused { lease_left } => format!(
            "not evicted: {key} is in progress (lease left {}); --force evicts it and fences \
             its owner",
            duration(*lease_left)
        ),
        _ => format!("no live record for {key}: nothing to evict"),
    };
    said + "\n"
}

/// Rows under a header, each column as wide as its widest cell.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let header = header.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}

/// `stuck`'s output.
pub(crate) fn stuck(records: &[RecordInfo], older_than: Duration) -> String {
    if records.is_empty() {
        return format!(
            "no record in progress for {} or more\n",
            duration(older_than)
        );
    }
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|record| {
            let (namespace, scope, operation, id) = record.key.parts();
            let (age, lease_left) = match &record.status {
                RecordStatus::InProgress {
                    running_for: age,
                    lease_left,
                    ..
                } => (
                    age.map_or_else(|| "unknown".to_owned(), duration),
                    duration(*lease_left),
                ),
                _ => (String::new(), String::new()),
            };
            let scope = if scope.is_empty() { "-" } else { scope };
            [
                age,
                lease_left,
                namespace.to_owned(),
                scope.to_owned(),
                operation.to_owned(),
                id.to_owned(),
            ]
        })
        .collect();
    table(
        [
            "RUNNING FOR",
            "LEASE LEFT",
            "NAMESPACE",
            "SCOPE",
            "OPERATION",
            "KEY",
        ],
        &rows,
    )
}

/// `stats`' output.
pub(crate) fn counts(counts: &[OperationCount]) -> String {
    if counts.is_empty() {
        return "no live records\n".to_owned();
    }
    let rows: Vec<[String; 4]> = counts
        .iter()
        .map(|count| {
            [
                count.namespace.clone(),
                count.operation.clone(),
                count.in_progress.to_string(),
                count.completed.to_string(),
            ]
        })
        .collect();
    table(
        ["NAMESPACE", "OPERATION", "IN PROGRESS", "COMPLETED"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(Duration::from_millis(450)), "450ms");
        assert_eq!(duration(Duration::from_millis(3_250)), "3.2s");
        assert_eq!(duration(Duration::from_secs(125)), "2m 5s");
        assert_eq!(duration(Duration::from_secs(3_720)), "1h 2m");
        assert_eq!(duration(Duration::from_secs(90_000)), "1d 1h");
        assert_eq!(duration(Duration::MAX), "never");
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = [
            ["a".to_owned(), "1".to_owned()],
            ["bbb".to_owned(), "22".to_owned()],
        ];
        assert_eq!(
            table(["K", "VALUE"], &rows),
            "K    VALUE\na    1\nbbb  22\n"
        );
    }
}
