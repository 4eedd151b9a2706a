//! Metric names, and the one place that records them.
//!
//! Everything goes through the [`metrics`] facade, so any exporter works
//! (Prometheus, StatsD, ...). Every metric carries an `operation` label,
//! but [`EVICTED`], which the store counts (label `store`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

/// Counter: bodies actually executed.
pub const EXECUTED: &str = "idempotent_executed_total";
/// Counter: stored responses replayed.
pub const REPLAYED: &str = "idempotent_replayed_total";
/// Counter: calls that met a duplicate in progress (answered in-progress or made to wait).
pub const IN_PROGRESS: &str = "idempotent_in_progress_total";
/// Counter: keys reused with another payload (possible key collisions).
pub const KEY_REUSED: &str = "idempotent_key_reused_total";
/// Counter: store calls that failed (label `call`).
pub const STORE_ERRORS: &str = "idempotent_store_errors_total";
/// Histogram: store call latency in seconds (label `call`: claim, complete, release).
pub const STORE_LATENCY: &str = "idempotent_store_latency_seconds";
/// Counter: completed records a bounded store evicted to make room, before
/// their TTL (label `store`); a retry of an evicted key runs the body again.
pub const EVICTED: &str = "idempotent_evicted_total";
/// Gauge: results of bodies that ran, waiting for the store to take them
/// (it was down or slow when they finished); their keys stay held.
pub const PENDING: &str = "idempotent_pending_results";
/// Counter: results of bodies that ran and were never stored: the lease ran
/// out or was taken over before the store took them, the store refused
/// them for good, or the process ended first (the runtime shut down, or
/// there was none to retry on). A retry of such a key runs the body again
/// once its lease is over. Alert on it.
pub const LOST: &str = "idempotent_lost_results_total";
/// Counter: claims a [`LocalCache`](crate::LocalCache) answered or passed
/// on (label `cache`: `hit`, `miss`), and its entries dropped to stay
/// within its bound (`evicted`).
pub const LOCAL_CACHE: &str = "idempotent_local_cache_total";
/// Counter: journaled steps that ran and were recorded (label `operation`).
pub const STEPS_RECORDED: &str = "idempotent_steps_recorded_total";
/// Counter: journaled steps replayed from an earlier run of their call,
/// without running (label `operation`).
pub const STEPS_REPLAYED: &str = "idempotent_steps_replayed_total";

/// The store calls timed by [`STORE_LATENCY`] (the values of its `call` label).
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoreCall {
    Claim = 0,
    Complete = 1,
    Release = 2,
}

impl StoreCall {
    const ALL: [Self; 3] = [Self::Claim, Self::Complete, Self::Release];

    fn label(self) -> &'static str {
        match self {
            Self::Claim => "claim",
            Self::Complete => "complete",
            Self::Release => "release",
        }
    }
}

/// The metric handles of one operation, registered with the installed
/// recorder on the operation's first call, then reused: building and looking
/// up a labelled key on every call costs more than the rest of a replay.
///
/// Install your recorder (a Prometheus exporter, say) at start-up, before
/// the first idempotent call: an operation called earlier keeps recording
/// into whatever recorder was installed at its first call.
#[derive(Default)]
pub(crate) struct Metrics(OnceLock<Handles>);

#[derive(Clone)]
pub(crate) struct Handles {
    pub(crate) executed: Counter,
    pub(crate) replayed: Counter,
    pub(crate) in_progress: Counter,
    pub(crate) key_reused: Counter,
    pub(crate) pending: Gauge,
    pub(crate) lost: Counter,
    latency: [Histogram; 3],
    errors: [Counter; 3],
}

impl Metrics {
    pub(crate) const fn new() -> Self {
        Self(OnceLock::new())
    }

    pub(crate) fn get(&self, operation: &'static str) -> &Handles {
        self.0.get_or_init(|| {
            Handles {
            executed: metrics::counter!(EXECUTED, "operation" => operation),
            replayed: metrics::counter!(REPLAYED, "operation" => operation),
            in_progress: metrics::counter!(IN_PROGRESS, "operation" => operation),
            key_reused: metrics::counter!(KEY_REUSED, "operation" => operation),
            pending: metrics::gauge!(PENDING, "operation" => operation),
            lost: metrics::counter!(LOST, "operation" => operation),
            latency: StoreCall::ALL.map(|call| {
                metrics::histogram!(STORE_LATENCY, "operation" => operation, "call" => call.label())
            }),
            errors: StoreCall::ALL.map(|call| {
                metrics::counter!(STORE_ERRORS, "operation" => operation, "call" => call.label())
            }),
        }
        })
    }
}

impl Handles {
    pub(crate) fn store_call(&self, call: StoreCall, elapsed: Duration, ok: bool) {
        self.latency[call as usize].record(elapsed.as_secs_f64());
        if !ok {
            self.errors[call as usize].increment(1);
        }
    }
}

impl Clone for Metrics {
    /// A clone registers its own handles (with the same names and labels).
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Metrics(registered)"
        } else {
            "Metrics"
        })
    }
}
