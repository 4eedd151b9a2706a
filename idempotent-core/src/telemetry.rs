//! Metric names, and the one place that records them.
//!
//! Everything goes through the [`metrics`] facade, so any exporter works
//! (Prometheus, StatsD, ...). Every metric carries an `operation` label.

use std::time::Duration;

/// Counter: bodies actually executed.
pub const EXECUTED: &str = "idempotent_executed_total";
/// Counter: stored responses replayed.
pub const REPLAYED: &str = "idempotent_replayed_total";
/// Counter: calls that met a duplicate in flight (answered in-progress or made to wait).
pub const IN_FLIGHT: &str = "idempotent_in_flight_total";
/// Counter: keys reused with another payload (possible key collisions).
pub const MISMATCH: &str = "idempotent_mismatch_total";
/// Counter: store calls that failed (label `call`).
pub const STORE_ERRORS: &str = "idempotent_store_errors_total";
/// Histogram: store call latency in seconds (label `call`: claim, complete, release, renew).
pub const STORE_LATENCY: &str = "idempotent_store_latency_seconds";

pub(crate) fn count(name: &'static str, operation: &'static str) {
    metrics::counter!(name, "operation" => operation).increment(1);
}

pub(crate) fn store_call(operation: &'static str, call: &'static str, elapsed: Duration, ok: bool) {
    metrics::histogram!(STORE_LATENCY, "operation" => operation, "call" => call)
        .record(elapsed.as_secs_f64());
    if !ok {
        metrics::counter!(STORE_ERRORS, "operation" => operation, "call" => call).increment(1);
    }
}
