//! The consumer's promises, the same on every broker. Each broker's test
//! file implements [`Broker`] over its adapter and runs every scenario here
//! against a real server: what ran how often, what was acknowledged, what
//! was dead-lettered and why.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use idempotent_consumer::{BrokerError, Consumer, DeadLetter, Delivery, Message};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;

use super::postgres_schema::Schema;
use super::redis_server::RedisServer;

/// One broker under test: a subject (stream, queue) of the test's own, a
/// consumer group on it, and its dead-letter destination.
pub trait Broker: Send + Sync {
    /// The broker's delivery.
    type Delivery: Delivery + 'static;

    /// Publishes `payload` with the producer id `id` (`None`: no id). Every
    /// publish reaches the consumers, also one whose id was published
    /// before: where the broker deduplicates by id (JetStream), the fixture
    /// turns that off, since these scenarios test the consumer's.
    fn publish(&self, id: Option<&str>, payload: &[u8]) -> impl Future<Output = ()> + Send;

    /// The deliveries of a new member `member` of the consumer group.
    /// Dropping the stream is that member's crash: what it had not settled
    /// goes to another member, at once or after the fixture's (short)
    /// redelivery time.
    fn deliveries(
        &self,
        member: &str,
    ) -> impl Future<Output = BoxStream<'static, Result<Self::Delivery, BrokerError>>> + Send;

    /// The dead letters so far, with their headers.
    fn dead_letters(&self) -> impl Future<Output = Vec<Message>> + Send;

    /// Messages published and not yet acknowledged (nor dead-lettered).
    fn unsettled(&self) -> impl Future<Output = usize> + Send;
}

/// How often the handler ran, and how often it succeeded, per message id.
#[derive(Clone, Default)]
pub struct Runs(Arc<Mutex<HashMap<String, (usize, usize)>>>);

impl Runs {
    /// Counts a run of `message`'s handler; `ok` says whether it succeeded.
    pub fn count(&self, message: &Message, ok: bool) {
        let id = message.id.clone().unwrap_or_default();
        let mut runs = self.0.lock().unwrap();
        let entry = runs.entry(id).or_default();
        entry.0 += 1;
        entry.1 += usize::from(ok);
    }

    /// Runs of the handler for `id`.
    pub fn ran(&self, id: &str) -> usize {
        self.0.lock().unwrap().get(id).map_or(0, |r| r.0)
    }

    /// Runs that succeeded (the effect) for `id`.
    pub fn effects(&self, id: &str) -> usize {
        self.0.lock().unwrap().get(id).map_or(0, |r| r.1)
    }
}

/// A consumer on the memory store, quick to retry.
pub fn consumer(runtime: Idempotency) -> Consumer {
    Consumer::builder(runtime, "ship")
        .max_attempts(3)
        .retry_delay(Duration::from_millis(50), Duration::from_millis(200))
        .wait(Duration::from_secs(5))
        .lease(Duration::from_secs(5))
        .build()
}

fn memory() -> Idempotency {
    Idempotency::new(MemoryStore::new())
}

/// Polls `check` until it holds, or fails after `within` saying `what`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "after {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until nothing published is left unsettled.
pub async fn drained<B: Broker>(broker: &B) {
    eventually(Duration::from_secs(20), "every message settled", || async {
        broker.unsettled().await == 0
    })
    .await;
}

/// A member of the group consuming in the background with a handler that
/// counts its runs and fails as `fails` says (`fails(message, run)` with the
/// run number from 1); aborted when dropped.
pub struct Member(tokio::task::JoinHandle<()>);

impl Drop for Member {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts member `name` of `broker`'s group with `consumer`.
pub async fn member<B, F>(
    broker: &B,
    consumer: &Consumer,
    name: &str,
    runs: &Runs,
    work: Duration,
    fails: F,
) -> Member
where
    B: Broker,
    F: Fn(&Message, usize) -> bool + Send + Sync + 'static,
{
    let deliveries = broker.deliveries(name).await;
    let consumer = consumer.clone();
    let runs = runs.clone();
    Member(tokio::spawn(async move {
        let (runs, fails) = (&runs, &fails);
        consumer
            .consume(deliveries, |message| async move {
                tokio::time::sleep(work).await;
                let run = runs.ran(message.id.as_deref().unwrap_or_default()) + 1;
                let ok = !fails(&message, run);
                runs.count(&message, ok);
                if ok {
                    Ok(())
                } else {
                    Err(format!("run {run} of {:?} failed", message.id))
                }
            })
            .await;
    }))
}

fn never(_: &Message, _: usize) -> bool {
    false
}

fn reason(letter: &Message) -> Option<&str> {
    letter.header(DeadLetter::REASON_HEADER)
}

/// A republished message (a producer's retry: same id, same payload) runs
/// once; both copies are acknowledged.
pub async fn republished_runs_once<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    let _member = member(broker, &consumer, "a", &runs, Duration::ZERO, never).await;
    broker.publish(Some("order-1"), b"order 1").await;
    broker.publish(Some("order-1"), b"order 1").await;
    broker.publish(Some("order-2"), b"order 2").await;
    drained(broker).await;
    assert_eq!((runs.ran("order-1"), runs.ran("order-2")), (1, 1));
    assert!(broker.dead_letters().await.is_empty());
}

/// A delivery whose acknowledgement is lost: the consumer "crashes" after
/// recording the result. Its redelivery to another member replays.
struct Unacknowledged<D>(D);

impl<D: Delivery> Delivery for Unacknowledged<D> {
    fn message(&self) -> &Message {
        self.0.message()
    }

    async fn ack(self) -> Result<(), BrokerError> {
        // The process dies here: the result is recorded, the ack never
        // sent. The delivery is dropped unsettled, as the process's end
        // drops it (its broker hands it back: at once, or when its
        // redelivery time is up).
        drop(self);
        Ok(())
    }

    fn retry(self, delay: Duration) -> impl Future<Output = Result<(), BrokerError>> + Send {
        self.0.retry(delay)
    }

    fn dead_letter(
        self,
        letter: &DeadLetter,
    ) -> impl Future<Output = Result<(), BrokerError>> + Send {
        let Self(inner) = self;
        let letter = letter.clone();
        async move { inner.dead_letter(&letter).await }
    }
}

/// A consumer that crashes after its effect is recorded and before the ack:
/// the broker delivers the message again, to another member, which
/// acknowledges it without running the handler.
pub async fn redelivery_after_a_crash_replays<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    broker.publish(Some("order-3"), b"order 3").await;
    let mut crashing = broker.deliveries("a").await;
    let delivery = crashing
        .next()
        .await
        .expect("a delivery")
        .expect("received");
    let counted = runs.clone();
    let outcome = consumer
        .handle(Unacknowledged(delivery), |message| async move {
            counted.count(&message, true);
            Ok::<_, String>(())
        })
        .await
        .unwrap();
    assert_eq!(outcome, idempotent_consumer::Outcome::Ran);
    drop(crashing);
    assert_eq!(broker.unsettled().await, 1, "the ack was never sent");
    let _member = member(broker, &consumer, "b", &runs, Duration::ZERO, never).await;
    drained(broker).await;
    assert_eq!(runs.ran("order-3"), 1, "the redelivery replayed");
}

/// A handler that fails has its message delivered again, until it succeeds
/// or has failed `max_attempts` (3) times: then it is dead-lettered.
pub async fn failures_redeliver_then_dead_letter<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    let _member = member(
        broker,
        &consumer,
        "a",
        &runs,
        Duration::ZERO,
        |message, run| match message.id.as_deref() {
            Some("flaky") => run == 1,
            Some("broken") => true,
            _ => false,
        },
    )
    .await;
    broker.publish(Some("flaky"), b"flaky").await;
    broker.publish(Some("broken"), b"broken").await;
    drained(broker).await;
    assert_eq!((runs.ran("flaky"), runs.effects("flaky")), (2, 1));
    assert_eq!((runs.ran("broken"), runs.effects("broken")), (3, 0));
    let letters = broker.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].id.as_deref(), Some("broken"));
    assert_eq!(&letters[0].payload[..], b"broken");
    assert_eq!(reason(&letters[0]), Some("failed"));
}

/// The same key with another payload is a poison message: dead-lettered,
/// never run.
pub async fn poison_is_dead_lettered<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    let _member = member(broker, &consumer, "a", &runs, Duration::ZERO, never).await;
    broker.publish(Some("order-4"), b"amount 10").await;
    drained(broker).await;
    broker.publish(Some("order-4"), b"amount 99999").await;
    drained(broker).await;
    assert_eq!(runs.ran("order-4"), 1);
    let letters = broker.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(&letters[0].payload[..], b"amount 99999");
    assert_eq!(reason(&letters[0]), Some("key-reused"));
}

/// A message without a key cannot be told from a new one on redelivery:
/// dead-lettered, never run.
pub async fn no_key_is_dead_lettered<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    let _member = member(broker, &consumer, "a", &runs, Duration::ZERO, never).await;
    broker.publish(None, b"anonymous").await;
    drained(broker).await;
    assert_eq!(runs.ran(""), 0);
    let letters = broker.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(reason(&letters[0]), Some("no-key"));
}

/// Two copies of a message at two members at once: one runs, the other
/// waits for it and replays (or comes back later); never run twice.
pub async fn twins_at_two_members_run_once<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    let work = Duration::from_millis(300);
    let _a = member(broker, &consumer, "a", &runs, work, never).await;
    let _b = member(broker, &consumer, "b", &runs, work, never).await;
    for i in 0..4 {
        let id = format!("twin-{i}");
        broker.publish(Some(&id), id.as_bytes()).await;
        broker.publish(Some(&id), id.as_bytes()).await;
    }
    drained(broker).await;
    for i in 0..4 {
        assert_eq!(runs.ran(&format!("twin-{i}")), 1, "twin-{i}");
    }
    assert!(broker.dead_letters().await.is_empty());
}

/// The store down: nothing runs and nothing is acknowledged; when it is
/// back, the message runs once and is acknowledged.
pub async fn store_down_holds_messages<B: Broker>(broker: &B) {
    let mut server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let runs = Runs::default();
    let consumer = consumer(Idempotency::new(store));
    let _member = member(broker, &consumer, "a", &runs, Duration::ZERO, never).await;
    server.kill();
    broker.publish(Some("order-5"), b"order 5").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        runs.ran("order-5"),
        0,
        "nothing runs while the store is down"
    );
    assert_eq!(broker.unsettled().await, 1, "nothing is acknowledged");
    server.restart();
    drained(broker).await;
    assert_eq!(runs.ran("order-5"), 1);
    assert!(broker.dead_letters().await.is_empty());
}

/// A consumer stopped by ending its stream (`take`, `take_until` a
/// shutdown signal) settles the deliveries it is still handling: each is
/// acknowledged, none handed back or lost.
pub async fn stopping_settles_what_is_in_flight<B: Broker>(broker: &B) {
    let runs = Runs::default();
    let consumer = consumer(memory());
    for i in 0..12 {
        broker.publish(Some(&format!("stop-{i}")), b"order").await;
    }
    let deliveries = broker.deliveries("a").await;
    let counted = &runs;
    let consumed = consumer
        .consume(deliveries.take(12), |message| async move {
            // Still running when the stream has given its last delivery.
            tokio::time::sleep(Duration::from_millis(200)).await;
            counted.count(&message, true);
            Ok::<_, String>(())
        })
        .await;
    assert_eq!((consumed.ran, consumed.failed), (12, 0), "{consumed:?}");
    drained(broker).await;
    assert!((0..12).all(|i| runs.ran(&format!("stop-{i}")) == 1));
}

/// PostgreSQL's same-transaction mode: the handler's INSERT and the record
/// commit together, then the message is acknowledged. A handler that fails
/// after its INSERT leaves no row; a republished copy replays.
pub async fn same_transaction_commits_effect_and_record<B: Broker>(broker: &B, schema_name: &str) {
    let schema = Schema::create(schema_name).await;
    let store = schema.store().await;
    sqlx::query("CREATE TABLE effects (order_id text NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let consumer = consumer(Idempotency::new(store.clone()));
    let failed_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut deliveries = broker.deliveries("a").await;
    let worker = {
        let (store, failed_once) = (store.clone(), Arc::clone(&failed_once));
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = deliveries.next().await {
                let failed_once = Arc::clone(&failed_once);
                consumer
                    .handle_in_transaction(delivery, &store, move |message, tx| {
                        Box::pin(async move {
                            let id = message.id.clone().unwrap_or_default();
                            sqlx::query("INSERT INTO effects (order_id) VALUES ($1)")
                                .bind(&id)
                                .execute(&mut *tx)
                                .await
                                .map_err(|e| e.to_string())?;
                            if id == "rolled-back"
                                && !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst)
                            {
                                return Err("failed after the INSERT".to_owned());
                            }
                            Ok::<_, String>(())
                        })
                    })
                    .await
                    .unwrap();
            }
        })
    };
    broker.publish(Some("tx-1"), b"tx 1").await;
    broker.publish(Some("tx-1"), b"tx 1").await;
    broker.publish(Some("rolled-back"), b"tx 2").await;
    drained(broker).await;
    worker.abort();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_id, count(*) FROM effects GROUP BY order_id ORDER BY order_id",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert_eq!(
        rows,
        [("rolled-back".to_owned(), 1), ("tx-1".to_owned(), 1)]
    );
    assert!(failed_once.load(std::sync::atomic::Ordering::SeqCst));
}

/// One `#[tokio::test]` per scenario above, so every broker runs them all:
/// `$broker` makes each test's broker from the test's name (an async fn,
/// or a closure returning a future), and the same-transaction scenario
/// uses the PostgreSQL schema `$schema`.
///
/// ```ignore
/// support::semantics::scenarios!(Rabbit::new, "amqp_tx");
/// ```
#[allow(unused_macros)]
macro_rules! scenarios {
    ($broker:expr, $schema:expr) => {
        $crate::support::semantics::scenarios!(@each $broker;
            republished_runs_once,
            redelivery_after_a_crash_replays,
            failures_redeliver_then_dead_letter,
            poison_is_dead_lettered,
            no_key_is_dead_lettered,
            twins_at_two_members_run_once,
            store_down_holds_messages,
            stopping_settles_what_is_in_flight,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn same_transaction_commits_effect_and_record() {
            let broker = ($broker)("same_transaction_commits_effect_and_record").await;
            $crate::support::semantics::same_transaction_commits_effect_and_record(&broker, $schema)
                .await;
        }
    };
    (@each $broker:expr; $($scenario:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $scenario() {
            let broker = ($broker)(stringify!($scenario)).await;
            $crate::support::semantics::$scenario(&broker).await;
        }
    )*};
}
#[allow(unused_imports)]
pub(crate) use scenarios;
