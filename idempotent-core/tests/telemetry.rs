//! Metrics: what each call counts, through the `metrics` facade.

use std::time::Duration;

use idempotent_core::{Error, Idempotency, MemoryStore, Operation, telemetry};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

static CHARGE: Operation = Operation::new("telemetry::charge");

#[test]
fn calls_are_counted_and_store_calls_timed_with_the_operation_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
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
            DebugValue::Gauge(_) => panic!("no gauges"),
        }
    }
    assert_eq!(counters.get(telemetry::EXECUTED), Some(&1));
    assert_eq!(counters.get(telemetry::REPLAYED), Some(&2));
    assert_eq!(counters.get(telemetry::MISMATCH), Some(&1));
    assert_eq!(counters.get(telemetry::IN_FLIGHT), Some(&0));
    assert_eq!(counters.get(telemetry::STORE_ERRORS), Some(&0));
    assert_eq!(latencies.get("claim"), Some(&4), "every call claims");
    assert_eq!(
        latencies.get("complete"),
        Some(&1),
        "one call ran and stored"
    );
}
