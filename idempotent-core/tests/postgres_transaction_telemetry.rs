//! The same-transaction mode runs through the engine: each call has the
//! `idempotent` span with its outcome, and is counted and timed like a call
//! of any other mode.
//!
//! A test binary of its own: the span and the metrics are captured with a
//! subscriber and a recorder local to one thread, which a concurrent test
//! reaching the same callsites first could leave disabled.

#[path = "support/postgres_schema.rs"]
mod postgres_schema;
#[path = "support/spans.rs"]
mod spans;

use std::collections::HashMap;

use idempotent_core::postgres::sqlx;
use idempotent_core::{Error, Idempotency, Operation, StoreError, TxBody, telemetry};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use spans::Spans;

static TX: Operation = Operation::new("pg.tx.telemetry");

/// A `transaction = ...` function whose body opens a span of its own.
#[idempotent_core::idempotent(key = id, transaction = store, runtime = runtime, name = "pg.tx.macro")]
async fn charged(
    store: &idempotent_core::postgres::PostgresStore,
    runtime: &Idempotency,
    #[tx] tx: &mut sqlx::PgConnection,
    id: &str,
) -> Result<i64, Error> {
    let _ = id;
    let _body = tracing::info_span!("body.macro").entered();
    drop(_body);
    sqlx::query_scalar("INSERT INTO ledger (amount) VALUES (1) RETURNING id")
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| Error::StoreUnavailable(StoreError::unavailable(e)))
}
static TX_NOWAIT: Operation = Operation::new("pg.tx.telemetry.nowait");

fn insert(
    amount: i64,
) -> impl for<'c> FnOnce(&'c mut sqlx::PgConnection) -> TxBody<'c, i64, Error> {
    move |tx| {
        Box::pin(async move {
            sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
                .bind(amount)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::StoreUnavailable(StoreError::unavailable(e)))
        })
    }
}

fn declined() -> impl for<'c> FnOnce(&'c mut sqlx::PgConnection) -> TxBody<'c, i64, Error> {
    |_| {
        Box::pin(async {
            Err(Error::Codec {
                action: "test",
                operation: String::new(),
                detail: String::new(),
            })
        })
    }
}

#[test]
fn transactional_calls_have_the_span_and_the_metrics_of_every_call() {
    let spans = Spans::default();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rows = tracing::subscriber::with_default(spans.clone(), || {
        metrics::with_local_recorder(&recorder, || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (schema, store) = postgres_schema::with_ledger("tx_telemetry").await;
                let idempotency = Idempotency::new(store.clone());
                let call = |payload: i64| idempotency.call(&TX).key("order-1").payload(&payload);
                let first = call(5).run_in_transaction(&store, insert(5)).await.unwrap();
                let again = call(5).run_in_transaction(&store, insert(5)).await.unwrap();
                assert!(!first.replayed && again.replayed);
                assert_eq!(first.value, again.value);
                let reused = call(6).run_in_transaction(&store, insert(6)).await;
                assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
                // A body's error rolls back (timed as a release); a retry runs.
                let other = || idempotency.call(&TX).key("order-2").payload(&7);
                assert!(
                    other()
                        .run_in_transaction(&store, declined())
                        .await
                        .is_err()
                );
                assert!(
                    !other()
                        .run_in_transaction(&store, insert(7))
                        .await
                        .unwrap()
                        .replayed
                );
                // A duplicate while the key is held, without a wait: in progress.
                let held = idempotency.call(&TX_NOWAIT).key("order-3");
                let idempotent_core::Begun::Fresh(tx) = held.begin::<i64, _>(&store).await.unwrap()
                else {
                    panic!("a new key begins fresh");
                };
                let duplicate = idempotency
                    .call(&TX_NOWAIT)
                    .key("order-3")
                    .run_in_transaction(&store, insert(8))
                    .await;
                assert!(
                    matches!(duplicate, Err(Error::InProgress { .. })),
                    "{duplicate:?}"
                );
                tx.finish(Ok::<_, Error>(0)).await.unwrap();
                // Bodies run in the call's span, in each form of the mode.
                charged(&store, &idempotency, "order-4").await.unwrap();
                idempotency
                    .call(&TX_NOWAIT)
                    .key("order-5")
                    .run_in_transaction(&store, |tx| {
                        Box::pin(async move {
                            drop(tracing::info_span!("body.closure").entered());
                            insert(9)(tx).await
                        })
                    })
                    .await
                    .unwrap();
                schema.count("ledger").await - 2
            })
        })
    });
    assert_eq!(rows, 2, "one row per executed key");
    for body in ["body.macro", "body.closure"] {
        let spans = spans.named(body);
        assert_eq!(spans.len(), 1, "{body}");
        assert_eq!(
            spans[0].get("parent").map(String::as_str),
            Some("idempotent"),
            "{body} runs in the call's span"
        );
    }

    let outcomes: Vec<_> = spans
        .named("idempotent")
        .iter()
        .map(|s| {
            (
                s["operation"].clone(),
                s["key"].clone(),
                s.get("outcome").cloned(),
            )
        })
        .collect();
    let expected = [
        ("pg.tx.telemetry", "order-1", "executed"),
        ("pg.tx.telemetry", "order-1", "replayed"),
        ("pg.tx.telemetry", "order-1", "key_reused"),
        ("pg.tx.telemetry", "order-2", "executed"),
        ("pg.tx.telemetry", "order-2", "executed"),
        ("pg.tx.telemetry.nowait", "order-3", "in_progress"),
        ("pg.tx.telemetry.nowait", "order-3", "executed"),
        ("pg.tx.macro", "order-4", "executed"),
        ("pg.tx.telemetry.nowait", "order-5", "executed"),
    ];
    let mut sorted = outcomes.clone();
    sorted.sort();
    let mut expected: Vec<_> = expected
        .iter()
        .map(|(o, k, r)| (o.to_string(), k.to_string(), Some(r.to_string())))
        .collect();
    expected.sort();
    assert_eq!(sorted, expected, "{outcomes:?}");

    let mut counters: HashMap<(String, String), u64> = HashMap::new();
    let mut timings: HashMap<(String, String), usize> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        match value {
            DebugValue::Counter(n) => {
                counters.insert((key.name().to_owned(), label("operation")), n);
            }
            DebugValue::Histogram(samples) => {
                timings.insert((label("operation"), label("call")), samples.len());
            }
            DebugValue::Gauge(_) => {}
        }
    }
    let count = |name: &str, operation: &str| {
        counters
            .get(&(name.to_owned(), operation.to_owned()))
            .copied()
    };
    assert_eq!(
        count(telemetry::EXECUTED, "pg.tx.telemetry"),
        Some(3),
        "{counters:?}"
    );
    assert_eq!(count(telemetry::REPLAYED, "pg.tx.telemetry"), Some(1));
    assert_eq!(count(telemetry::KEY_REUSED, "pg.tx.telemetry"), Some(1));
    assert_eq!(
        count(telemetry::IN_PROGRESS, "pg.tx.telemetry.nowait"),
        Some(1)
    );
    let timed = |operation: &str, call: &str| {
        timings
            .get(&(operation.to_owned(), call.to_owned()))
            .copied()
    };
    assert_eq!(
        timed("pg.tx.telemetry", "claim"),
        Some(5),
        "every call claims: {timings:?}"
    );
    assert_eq!(timed("pg.tx.telemetry", "complete"), Some(2), "two commits");
    assert_eq!(timed("pg.tx.telemetry", "release"), Some(1), "one rollback");
}
