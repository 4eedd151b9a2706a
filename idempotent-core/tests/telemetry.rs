//! Metrics: what each call counts, through the `metrics` facade (the
//! `tracing` span is in `tracing_spans.rs`).

use std::collections::HashMap;
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation, telemetry};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

static CHARGE: Operation = Operation::new("telemetry::charge");

#[test]
fn calls_are_counted_and_store_calls_timed_with_the_operation_label() {
    let snapshotter = recorded(|| async {
        let idempotency = Idempotency::new(MemoryStore::new());
        let call = |payload: u64| {
            idempotency
                .call(&CHARGE)
                .key("k")
                .payload(&payload)
                .run(async { Ok::<_, Error>(1u64) })
        };
        assert!(!call(1).await.unwrap().replayed);
        assert!(call(1).await.unwrap().replayed);
        assert!(call(1).await.unwrap().replayed);
        assert!(matches!(call(2).await, Err(Error::KeyReused { .. })));
        tokio::time::sleep(Duration::ZERO).await;
    });
    let mut counters = std::collections::HashMap::new();
    let mut latencies = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
        };
        if key.name() == telemetry::EVICTED {
            // The store's own, labelled by store: nothing was evicted.
            assert_eq!(label("store").as_deref(), Some("memory"));
            assert!(matches!(value, DebugValue::Counter(0)), "{value:?}");
            continue;
        }
        assert_eq!(
            label("operation").as_deref(),
            Some("telemetry::charge"),
            "{key:?}"
        );
        match value {
            DebugValue::Counter(n) => {
                counters.insert(key.name().to_owned(), n);
            }
            DebugValue::Histogram(samples) => {
                latencies.insert(label("call").unwrap(), samples.len());
            }
            DebugValue::Gauge(value) => {
                assert_eq!(key.name(), telemetry::PENDING);
                assert_eq!(value.into_inner(), 0.0, "no result waits for the store");
            }
        }
    }
    assert_eq!(counters.get(telemetry::EXECUTED), Some(&1));
    assert_eq!(counters.get(telemetry::REPLAYED), Some(&2));
    assert_eq!(counters.get(telemetry::KEY_REUSED), Some(&1));
    assert_eq!(counters.get(telemetry::IN_PROGRESS), Some(&0));
    assert_eq!(counters.get(telemetry::STORE_ERRORS), Some(&0));
    assert_eq!(counters.get(telemetry::LOST), Some(&0));
    assert_eq!(latencies.get("claim"), Some(&4), "every call claims");
    assert_eq!(
        latencies.get("complete"),
        Some(&1),
        "one call ran and stored"
    );
}

/// Runs `body` on a current-thread runtime with a recorder of its own;
/// what it recorded.
fn recorded<F: std::future::Future<Output = ()>>(
    body: impl FnOnce() -> F,
) -> metrics_util::debugging::Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(body());
    });
    snapshotter
}

/// Each counter's value by name, summed over labels other than `operation`.
fn counters(snapshotter: &metrics_util::debugging::Snapshotter) -> HashMap<String, u64> {
    let mut counters = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(n) = value {
            *counters.entry(key.key().name().to_owned()).or_default() += n;
        }
    }
    counters
}

static WAITING: Operation = Operation::new("telemetry::waiting")
    .wait(Duration::from_secs(5))
    .lease(Duration::from_millis(60));

#[test]
fn a_waiting_duplicate_counts_once_however_often_it_rechecks_and_a_refused_claim_is_a_store_error()
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        // Paused time: the 60 ms lease and its renewals are exact, whatever
        // the machine's load.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            // Room for one record: while `a` runs, a new key is refused.
            let store = MemoryStore::builder().shards(1).max_entries(1).build();
            let idempotency = Idempotency::new(store);
            let call = |key: &'static str| {
                let idempotency = idempotency.clone();
                async move {
                    idempotency
                        .call(&WAITING)
                        .key(key)
                        .run(async {
                            // Longer than the lease: the waiter's checks
                            // time out with it and claim again, several times.
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            Ok::<_, Error>(1u64)
                        })
                        .await
                }
            };
            let first = tokio::spawn(call("a"));
            tokio::time::sleep(Duration::from_millis(20)).await;
            let waiter = tokio::spawn(call("a"));
            let refused = call("b").await;
            assert!(
                matches!(refused, Err(Error::StoreUnavailable(_))),
                "{refused:?}"
            );
            assert!(!first.await.unwrap().unwrap().replayed);
            assert!(waiter.await.unwrap().unwrap().replayed);
        });
    });
    let counters = counters(&snapshotter);
    assert_eq!(
        counters.get(telemetry::IN_PROGRESS),
        Some(&1),
        "one call met a duplicate"
    );
    assert_eq!(counters.get(telemetry::EXECUTED), Some(&1));
    assert_eq!(counters.get(telemetry::REPLAYED), Some(&1));
    assert_eq!(
        counters.get(telemetry::STORE_ERRORS),
        Some(&1),
        "the refused claim"
    );
}

static CHECKOUT: Operation = Operation::new("telemetry::checkout");

/// Journaled steps: each step recorded once, and replayed on the retry.
#[test]
fn steps_recorded_and_replayed_are_counted() {
    let snapshotter = recorded(|| async {
        let idempotency = Idempotency::new(MemoryStore::new());
        for attempt in 0..2 {
            let steps = idempotent_core::Steps::new();
            let _ = idempotency
                .call(&CHECKOUT)
                .key("order-1")
                .steps(&steps)
                .run(async {
                    steps.run("charge", async { Ok::<_, Error>(1) }).await?;
                    if attempt == 0 {
                        return Err(Error::NotConfigured);
                    }
                    steps.run("email", async { Ok::<_, Error>(2) }).await
                })
                .await;
        }
    });
    let counters = counters(&snapshotter);
    assert_eq!(counters.get(telemetry::STEPS_RECORDED), Some(&2));
    assert_eq!(counters.get(telemetry::STEPS_REPLAYED), Some(&1));
}
