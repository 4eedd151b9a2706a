//! The consumer's promises on RabbitMQ (the machine's server on
//! 127.0.0.1:5672, guest/guest): every scenario of `support::semantics` on
//! a quorum queue of its own, then what is RabbitMQ's own: the publisher,
//! the broker's delivery count and dead letters, odd headers, a lost
//! connection. A missing server fails the tests and says so; nothing
//! skips.

#[path = "../../idempotent-core/tests/support/blackout.rs"]
#[allow(dead_code, unreachable_pub)]
mod blackout;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use blackout::Blackout;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use idempotent_consumer::amqp::{AmqpDelivery, Publisher, Subscriber};
use idempotent_consumer::{BrokerError, DeadLetter, Delivery, Message, Outcome};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use support::semantics::{self, Broker, Runs};

/// The machine's RabbitMQ.
const UPSTREAM: &str = "127.0.0.1:5672";

fn url() -> String {
    format!("amqp://guest:guest@{UPSTREAM}/%2f")
}

/// A queue of the test's own (and its dead-letter queue), deleted at the
/// end; a subscriber and a publisher on it, and a channel of the fixture's
/// for what the adapter does not do (a publish without id, reading the
/// queues).
///
/// AMQP 0.9.1 has no live count of a queue's unacknowledged messages (a
/// passive declare counts the ready ones only, on quorum queues too, and
/// `rabbitmqctl list_queues` lags by seconds on quorum queues), so the
/// fixture counts the confirmed publishes and the settlements its
/// deliveries made, and asks the broker for the ready ones.
struct Rabbit {
    queue: String,
    subscriber: Subscriber,
    publisher: Publisher,
    connection: Connection,
    admin: Channel,
    published: AtomicUsize,
    settled: Arc<AtomicUsize>,
}

/// An [`AmqpDelivery`] that counts its settlement (an ack, or a dead
/// letter: the original acknowledged after its copy), once it succeeded.
struct Counted {
    delivery: AmqpDelivery,
    settled: Arc<AtomicUsize>,
}

impl Counted {
    fn count<T>(settled: &AtomicUsize, result: Result<T, BrokerError>) -> Result<T, BrokerError> {
        if result.is_ok() {
            settled.fetch_add(1, Ordering::SeqCst);
        }
        result
    }
}

impl Delivery for Counted {
    fn message(&self) -> &Message {
        self.delivery.message()
    }

    async fn ack(self) -> Result<(), BrokerError> {
        Self::count(&self.settled, self.delivery.ack().await)
    }

    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        self.delivery.retry(delay).await
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        Self::count(&self.settled, self.delivery.dead_letter(letter).await)
    }
}

impl Rabbit {
    async fn new(test: &str) -> Self {
        let queue = format!("idempotent-test-{test}-{}", std::process::id());
        let connection = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "RabbitMQ at {} is needed for these tests ({e}); scripts/test installs and starts rabbitmq-server",
                    url()
                )
            });
        // Leftovers of an earlier run that died before cleaning up.
        delete(&connection, &queue).await;
        let subscriber = Subscriber::connect(url(), &queue, "test").await.unwrap();
        let publisher = Publisher::connect(url(), &queue).await.unwrap();
        let admin = connection.create_channel().await.unwrap();
        admin
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self {
            queue,
            subscriber,
            publisher,
            connection,
            admin,
            published: AtomicUsize::new(0),
            settled: Arc::default(),
        }
    }

    /// Publishes to the queue with `properties` as they are (no
    /// `message_id` unless they have one), confirmed.
    async fn publish_raw(&self, payload: &[u8], properties: BasicProperties) {
        let confirmation = self
            .admin
            .basic_publish(
                ShortString::default(),
                self.queue.as_str().into(),
                BasicPublishOptions::default(),
                payload,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirmation.is_ack());
    }

    /// Waits for the dead letter of `id` that RabbitMQ made itself: the
    /// original, without the consumer's reason headers.
    async fn dead_lettered_by_the_broker(&self, id: &str) {
        semantics::eventually(Duration::from_secs(5), "a dead letter", || async {
            !self.dead_letters().await.is_empty()
        })
        .await;
        let letters = self.dead_letters().await;
        assert_eq!(letters[0].id.as_deref(), Some(id));
        assert_eq!(letters[0].header(DeadLetter::REASON_HEADER), None);
    }

    /// The next message ready in `queue`, taken (acknowledged) from it.
    async fn take(&self, queue: &str) -> lapin::message::Delivery {
        let got = self
            .admin
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        got.unwrap_or_else(|| panic!("a message in {queue}"))
            .delivery
    }

    /// The queue's ready messages (a passive declare's count: on a quorum
    /// queue too, it leaves out the unacknowledged ones).
    async fn ready(&self, queue: &str) -> usize {
        let declared = self
            .admin
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        declared.message_count() as usize
    }
}

impl Drop for Rabbit {
    fn drop(&mut self) {
        // The tests' runtime is multi-threaded: this thread may block on it.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(delete(&self.connection, &self.queue));
        });
    }
}

/// Deletes `queue` and its dead-letter queue, if they exist.
async fn delete(connection: &Connection, queue: &str) {
    for name in [queue.to_owned(), format!("{queue}.dead")] {
        if let Ok(channel) = connection.create_channel().await {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

impl Broker for Rabbit {
    type Delivery = Counted;

    async fn publish(&self, id: Option<&str>, payload: &[u8]) {
        match id {
            Some(id) => {
                let published = self.publisher.publish(id, payload.to_vec()).await.unwrap();
                assert!(!published.duplicate);
            }
            None => self.publish_raw(payload, BasicProperties::default()).await,
        }
        self.published.fetch_add(1, Ordering::SeqCst);
    }

    async fn deliveries(&self, _member: &str) -> BoxStream<'static, Result<Counted, BrokerError>> {
        // Each call is a channel of its own: a member of the group.
        let settled = Arc::clone(&self.settled);
        self.subscriber
            .deliveries()
            .map(move |delivery| {
                delivery.map(|delivery| Counted {
                    delivery,
                    settled: Arc::clone(&settled),
                })
            })
            .boxed()
    }

    async fn dead_letters(&self) -> Vec<Message> {
        // Read without acknowledging, on a channel closed afterwards: the
        // dead letters go back to their queue.
        let channel = self.connection.create_channel().await.unwrap();
        let mut letters = Vec::new();
        while let Some(got) = channel
            .basic_get(
                self.subscriber.dead_letter_queue().into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .unwrap()
        {
            letters.push(message(&self.queue, &got.delivery));
        }
        let _ = channel.close(200, "read".into()).await;
        letters
    }

    /// Publishes not settled yet, or the messages ready in the queue if
    /// there are more (a copy nobody published).
    async fn unsettled(&self) -> usize {
        let unsettled = self.published.load(Ordering::SeqCst) - self.settled.load(Ordering::SeqCst);
        unsettled.max(self.ready(&self.queue).await)
    }
}

/// A delivery as the fixture reads it, independently of the adapter.
fn message(queue: &str, delivery: &lapin::message::Delivery) -> Message {
    let mut message = Message::new(queue, delivery.data.clone());
    if let Some(id) = delivery.properties.message_id() {
        message = message.with_id(id.as_str());
    }
    for (name, value) in delivery.properties.headers().iter().flatten() {
        if let AMQPValue::LongString(text) = value {
            message = message.with_header(name.as_str(), String::from_utf8_lossy(text.as_bytes()));
        }
    }
    message
}

// Every shared scenario, each on a queue of its own.
support::semantics::scenarios!(Rabbit::new, "amqp_tx");

/// A publish is confirmed, persistent, and carries its id as `message_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_confirmed_with_its_message_id() {
    let broker = Rabbit::new("publish").await;
    let published = broker
        .publisher
        .publish("order-9", "order 9")
        .await
        .unwrap();
    assert!(!published.duplicate, "RabbitMQ never tells");
    assert_eq!(published.tries, 1);
    assert_eq!(
        broker.ready(&broker.queue).await,
        1,
        "confirmed: in the queue"
    );
    let got = broker.take(&broker.queue).await;
    let read = message(&broker.queue, &got);
    assert_eq!(read.id.as_deref(), Some("order-9"));
    assert_eq!(got.properties.delivery_mode(), &Some(2), "persistent");
    assert_eq!(got.data, b"order 9");
}

/// RabbitMQ does not deduplicate: the same id published twice is two
/// deliveries, and the consumer runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_twice_is_two_deliveries_run_once() {
    let broker = Rabbit::new("same_id").await;
    broker.publish(Some("order-10"), b"order 10").await;
    broker.publish(Some("order-10"), b"order 10").await;
    let consumer = semantics::consumer(Idempotency::new(MemoryStore::new()));
    let runs = Runs::default();
    let mut deliveries = broker.deliveries("a").await;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        assert_eq!(delivery.message().id.as_deref(), Some("order-10"));
        assert_eq!(&*delivery.message().source, broker.queue);
        let runs = runs.clone();
        let outcome = consumer
            .handle(delivery, |message| async move {
                runs.count(&message, true);
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        outcomes.push(outcome);
    }
    assert_eq!(outcomes, [Outcome::Ran, Outcome::Replayed]);
    assert_eq!(runs.ran("order-10"), 1);
    semantics::drained(&broker).await;
}

/// The attempt comes from the broker: a delivery handed back, left
/// unacknowledged by a member that crashes, or dropped unsettled comes
/// again with the quorum queue's `x-delivery-count`, whichever member
/// gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_is_the_brokers_delivery_count() {
    let broker = Rabbit::new("delivery_count").await;
    broker.publish(Some("order-11"), b"order 11").await;
    let mut first = broker.deliveries("a").await;
    let delivery = first.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().attempt, 1);
    delivery.retry(Duration::ZERO).await.unwrap();
    let delivery = first.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().attempt, 2, "handed back once");
    // The member goes with the delivery unsettled: its stream and the
    // delivery dropped, the channel closes once both are gone. (A process
    // that dies closes its connection; `a_member_rejoins_on_a_new_connection`
    // cuts one.) The delivery's nack and the channel's close may both count.
    drop(first);
    drop(delivery);
    let mut second = broker.deliveries("b").await;
    let delivery = second.next().await.unwrap().unwrap();
    let attempt = delivery.message().attempt;
    assert!(attempt >= 3, "the member went: attempt {attempt}");
    let count = (attempt - 1).to_string();
    assert_eq!(
        delivery.message().header("x-delivery-count"),
        Some(count.as_str())
    );
    // Dropped unsettled (a handler that panicked): handed back at once, to
    // the one member left.
    drop(delivery);
    let delivery = second.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().attempt, attempt + 1, "dropped unsettled");
    delivery.ack().await.unwrap();
    semantics::drained(&broker).await;
}

/// A publisher that comes first declares the queue as a subscriber does by
/// default, so the subscriber that comes later finds it as it wants it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_first_declares_the_queue_as_a_subscriber_would() {
    let broker = Rabbit::new("publisher_first").await;
    delete(&broker.connection, &broker.queue).await;
    let publisher = Publisher::connect(url(), &broker.queue).await.unwrap();
    publisher.publish("order-12", "order 12").await.unwrap();
    let subscriber = Subscriber::connect(url(), &broker.queue, "late")
        .await
        .expect("the same arguments");
    assert_eq!(
        subscriber.dead_letter_queue(),
        format!("{}.dead", broker.queue)
    );
    let mut deliveries = subscriber.deliveries();
    let delivery = deliveries.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().id.as_deref(), Some("order-12"));
    delivery.ack().await.unwrap();
}

/// What RabbitMQ dead-letters itself (here a rejection by another client)
/// goes to the same dead-letter queue, without the reason headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_broker_dead_letters_goes_to_the_dead_letter_queue() {
    let broker = Rabbit::new("broker_dead_letters").await;
    broker.publish(Some("order-13"), b"order 13").await;
    let got = broker
        .admin
        .basic_get(
            broker.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
        .expect("the message");
    got.delivery
        .acker
        .reject(lapin::options::BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    broker.dead_lettered_by_the_broker("order-13").await;
}

/// Headers that are not text (bytes that are not UTF-8, numbers, tables),
/// a producer's `x-delivery-count` and a missing `message_id` do not stop a
/// message: the handler sees the text it can, a first delivery is attempt
/// 1, and the dead letter keeps every original header as it was but the
/// delivery count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_headers_and_no_id_reach_the_dead_letter_intact() {
    let broker = Rabbit::new("odd_headers").await;
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::Boolean(true));
    let mut headers = FieldTable::default();
    headers.insert(
        "binary".into(),
        AMQPValue::LongString(vec![0xff, 0xfe, 0x00].into()),
    );
    headers.insert("n".into(), AMQPValue::LongInt(7));
    headers.insert("x-delivery-count".into(), AMQPValue::LongLongInt(5));
    headers.insert("nested".into(), AMQPValue::FieldTable(nested));
    headers.insert("text".into(), AMQPValue::LongString("ok".into()));
    let properties = BasicProperties::default().with_headers(headers.clone());
    broker.publish_raw(b"odd", properties).await;

    let mut deliveries = broker.subscriber.deliveries();
    let delivery = deliveries.next().await.unwrap().unwrap();
    let message = delivery.message();
    assert_eq!(
        (message.id.as_deref(), message.attempt),
        (None, 1),
        "a first delivery, whatever the producer's x-delivery-count"
    );
    assert_eq!(message.header("text"), Some("ok"));
    assert_eq!(message.header("n"), Some("7"));
    assert_eq!(message.header("binary"), None);
    assert_eq!(message.header("nested"), None);
    let consumer = semantics::consumer(Idempotency::new(MemoryStore::new()));
    let outcome = consumer
        .handle(delivery, |_| async { Ok::<_, String>(()) })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::DeadLettered(DeadLetter::NoKey));

    let got = broker.take(broker.subscriber.dead_letter_queue()).await;
    let letter = got.properties.headers().clone().unwrap_or_default();
    for (name, value) in &headers {
        if name.as_str() == "x-delivery-count" {
            // The dead-letter queue counts its own deliveries (RabbitMQ
            // 3.10 says 0 on a first basic.get): the original's stays behind.
            assert_ne!(letter.inner().get(name), Some(value), "{letter:?}");
        } else {
            assert_eq!(letter.inner().get(name), Some(value), "{name}");
        }
    }
    let reason = letter.inner().get(DeadLetter::REASON_HEADER);
    assert_eq!(reason, Some(&AMQPValue::LongString("no-key".into())));
    assert!(letter.contains_key("Idempotent-Dead-Letter-Detail"));
    assert_eq!(got.data, b"odd");
}

/// A publish that is not confirmed (here the connection is cut under it)
/// is sent again, with its id, on a new connection once the broker can be
/// reached again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_publish_is_sent_again_with_its_id() {
    let broker = Rabbit::new("resend").await;
    let proxy = Blackout::start(UPSTREAM.parse().unwrap()).await;
    let publisher = Publisher::connect(through(&proxy), &broker.queue)
        .await
        .unwrap();
    proxy.cut();
    let publish = tokio::spawn(async move { publisher.publish("order-14", "order 14").await });
    tokio::time::sleep(Duration::from_millis(250)).await;
    proxy.restore();
    let published = publish.await.unwrap().unwrap();
    assert!(published.tries > 1, "{published:?}");
    let got = broker.take(&broker.queue).await;
    let read = message(&broker.queue, &got);
    assert_eq!(read.id.as_deref(), Some("order-14"));
}

/// A member whose connection is cut loses its stream; its deliveries go
/// back to the queue, and `deliveries` again joins on a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_rejoins_on_a_new_connection() {
    let broker = Rabbit::new("rejoin").await;
    let proxy = Blackout::start(UPSTREAM.parse().unwrap()).await;
    let subscriber = Subscriber::connect(through(&proxy), &broker.queue, "test")
        .await
        .unwrap();
    broker.publish(Some("order-15"), b"order 15").await;
    let mut deliveries = subscriber.deliveries();
    let held = deliveries.next().await.unwrap().unwrap();
    assert_eq!(held.message().attempt, 1);
    proxy.cut();
    while let Some(Ok(_)) = deliveries.next().await {}
    std::mem::forget(held);
    proxy.restore();
    let mut deliveries = subscriber.deliveries();
    let delivery = deliveries.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().id.as_deref(), Some("order-15"));
    assert_eq!(delivery.message().attempt, 2, "its connection closed");
    delivery.ack().await.unwrap();
}

/// The broker's own delivery limit: past it, RabbitMQ dead-letters the
/// message itself. The limit is the queue's: a subscriber that wants
/// another one is refused, with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delivery_limit_the_broker_dead_letters() {
    let broker = Rabbit::new("delivery_limit").await;
    delete(&broker.connection, &broker.queue).await;
    let limited = Subscriber::builder(url(), &broker.queue, "test")
        .delivery_limit(1)
        .connect()
        .await
        .unwrap();
    let refused = Subscriber::connect(url(), &broker.queue, "test").await;
    assert!(refused.is_err(), "another limit");
    broker.publish(Some("order-16"), b"order 16").await;
    let mut deliveries = limited.deliveries();
    for attempt in 1..=2 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        assert_eq!(delivery.message().attempt, attempt);
        delivery.retry(Duration::ZERO).await.unwrap();
    }
    broker.dead_lettered_by_the_broker("order-16").await;
}

/// The machine's RabbitMQ, through `proxy`.
fn through(proxy: &Blackout) -> String {
    format!("amqp://guest:guest@{}/%2f", proxy.addr())
}
