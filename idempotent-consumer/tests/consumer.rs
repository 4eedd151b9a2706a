//! The consumer's decisions on a real store, before any broker: what runs,
//! what is acknowledged, retried or dead-lettered. Each broker's own tests
//! (nats.rs, amqp.rs, redis_streams.rs) run the same promises end to end.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_consumer::testing::{Recorded, Settled};
use idempotent_consumer::{Consumer, DeadLetter, KeySource, Message, Outcome};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;
use support::redis_server::RedisServer;

fn consumer(runtime: Idempotency) -> Consumer {
    Consumer::builder(runtime, "ship")
        .max_attempts(3)
        .retry_delay(Duration::from_millis(100), Duration::from_secs(1))
        .build()
}

fn order(id: &str, payload: &str, attempt: u32) -> Recorded {
    Recorded::new(
        Message::new("orders", payload.to_owned())
            .with_id(id)
            .with_attempt(attempt),
    )
}

/// Runs `consumer` on `delivery` with a handler that counts its runs in
/// `runs` and fails when `fail` is set.
async fn handle(
    consumer: &Consumer,
    delivery: &Recorded,
    runs: &AtomicUsize,
    fail: bool,
) -> Outcome {
    consumer
        .handle(delivery.clone(), |_| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            if fail { Err("declined") } else { Ok(42) }
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_duplicate_is_acknowledged_without_running() {
    let consumer = consumer(Idempotency::new(MemoryStore::new()));
    let runs = AtomicUsize::new(0);
    let first = order("order-1", "10", 1);
    assert_eq!(handle(&consumer, &first, &runs, false).await, Outcome::Ran);
    let again = order("order-1", "10", 2);
    assert_eq!(
        handle(&consumer, &again, &runs, false).await,
        Outcome::Replayed
    );
    assert!(first.acked() && again.acked());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_key_is_scoped_by_the_stream_and_named_by_the_consumer() {
    let runtime = Idempotency::new(MemoryStore::new());
    let (ship, bill) = (
        consumer(runtime.clone()),
        Consumer::builder(runtime, "bill").build(),
    );
    let runs = AtomicUsize::new(0);
    let other_stream = Recorded::new(Message::new("returns", "10").with_id("order-1"));
    for delivery in [order("order-1", "10", 1), other_stream] {
        assert_eq!(handle(&ship, &delivery, &runs, false).await, Outcome::Ran);
    }
    assert_eq!(
        handle(&bill, &order("order-1", "10", 1), &runs, false).await,
        Outcome::Ran
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_failure_comes_back_with_a_growing_delay_then_is_dead_lettered() {
    let consumer = consumer(Idempotency::new(MemoryStore::new()));
    let runs = AtomicUsize::new(0);
    let mut settled = Vec::new();
    for attempt in 1..=3 {
        let delivery = order("order-2", "10", attempt);
        handle(&consumer, &delivery, &runs, true).await;
        settled.push(delivery.settled().unwrap());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "each failure released the key"
    );
    assert_eq!(
        settled,
        [
            Settled::Retried(Duration::from_millis(100)),
            Settled::Retried(Duration::from_millis(200)),
            Settled::DeadLettered(DeadLetter::Failed {
                key: "order-2".into(),
                attempts: 3,
                error: "declined".into()
            }),
        ]
    );
}

#[tokio::test]
async fn poison_no_key_and_a_malformed_key_are_dead_lettered_unrun() {
    let consumer = consumer(Idempotency::new(MemoryStore::new()));
    let runs = AtomicUsize::new(0);
    handle(&consumer, &order("order-3", "10", 1), &runs, false).await;
    let poison = order("order-3", "99999", 1);
    let anonymous = Recorded::new(Message::new("orders", "10"));
    let malformed = order("bad key\n", "10", 1);
    for delivery in [&poison, &anonymous, &malformed] {
        let outcome = handle(&consumer, delivery, &runs, false).await;
        assert!(matches!(outcome, Outcome::DeadLettered(_)), "{outcome:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let reasons: Vec<_> = [&poison, &anonymous, &malformed]
        .iter()
        .map(|d| match d.settled() {
            Some(Settled::DeadLettered(letter)) => letter.reason(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(reasons, ["key-reused", "no-key", "invalid-key"]);
}

#[tokio::test]
async fn a_key_from_the_payload_for_producers_without_ids() {
    let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship")
        .key(KeySource::derive(|m| {
            let order: serde_json::Value = serde_json::from_slice(&m.payload).ok()?;
            Some(order["order"].as_str()?.to_owned())
        }))
        .build();
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let delivery = Recorded::new(Message::new("orders", r#"{"order":"o-9"}"#));
        handle(&consumer, &delivery, &runs, false).await;
        assert!(delivery.acked());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn without_deduplication_every_delivery_runs() {
    let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship")
        .deduplicate(false)
        .build();
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        assert_eq!(
            handle(&consumer, &order("order-4", "10", 1), &runs, false).await,
            Outcome::Ran
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_nothing_runs_or_is_acknowledged_until_it_is_back() {
    let mut server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let consumer = consumer(Idempotency::new(store));
    server.kill();
    let runs = Arc::new(AtomicUsize::new(0));
    let delivery = order("order-5", "10", 1);
    let handled = tokio::spawn({
        let (consumer, delivery, runs) = (consumer.clone(), delivery.clone(), Arc::clone(&runs));
        async move { handle(&consumer, &delivery, &runs, false).await }
    });
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(delivery.settled(), None, "nothing acknowledged");
    server.restart();
    assert_eq!(handled.await.unwrap(), Outcome::Ran);
    assert!(delivery.acked());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn duplicates_dead_letters_and_handler_latency_are_counted_per_stream() {
    use idempotent_consumer::telemetry;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let consumer = consumer(Idempotency::new(MemoryStore::new()));
                let runs = AtomicUsize::new(0);
                for delivery in [
                    order("o-1", "10", 1),
                    order("o-1", "10", 2),
                    order("o-1", "11", 1),
                ] {
                    handle(&consumer, &delivery, &runs, false).await;
                }
                let returns =
                    Recorded::new(Message::new("returns", "10").with_id("r-1").with_attempt(3));
                handle(&consumer, &returns, &runs, true).await;
            });
    });
    let mut seen = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let label = |name: &str| {
            key.labels()
                .find(|l| l.key() == name)
                .map(|l| l.value().to_owned())
                .unwrap_or_default()
        };
        let value = match value {
            DebugValue::Counter(n) => n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => continue,
        };
        let detail = if key.name() == telemetry::DEAD_LETTERED {
            label("reason")
        } else {
            label("outcome")
        };
        if key.name().starts_with("idempotent_message") {
            assert_eq!(label("consumer"), "ship");
            seen.push((key.name().to_owned(), label("stream"), detail, value));
        }
    }
    seen.sort();
    let expected = [
        (telemetry::HANDLER_LATENCY, "orders", "", 1),
        (telemetry::HANDLER_LATENCY, "returns", "", 1),
        (telemetry::MESSAGES, "orders", "dead_lettered", 1),
        (telemetry::MESSAGES, "orders", "ran", 1),
        (telemetry::MESSAGES, "orders", "replayed", 1),
        (telemetry::MESSAGES, "returns", "dead_lettered", 1),
        (telemetry::DEAD_LETTERED, "orders", "key-reused", 1),
        (telemetry::DEAD_LETTERED, "returns", "failed", 1),
    ]
    .map(|(name, stream, detail, n)| (name.to_owned(), stream.to_owned(), detail.to_owned(), n));
    let mut expected = expected.to_vec();
    expected.sort();
    assert_eq!(seen, expected);
}
