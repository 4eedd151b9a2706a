//! The consumer's promises on Redis Streams, each scenario of
//! `support::semantics` on a `redis-server` of its own, plus what is
//! particular to Redis: the publisher's deduplication window, the broker's
//! delivery count, entries that are not well formed, a stream deleted
//! under its members.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use idempotent_consumer::redis::{Publisher, RedisDelivery, Subscriber};
use idempotent_consumer::{BrokerError, DeadLetter, Delivery, Message};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use redis::AsyncCommands as _;
use redis::aio::MultiplexedConnection;
use redis::streams::StreamInfoGroupsReply;
use support::redis_server::RedisServer;
use support::semantics::{self, Broker};

type Deliveries = BoxStream<'static, Result<RedisDelivery, BrokerError>>;

/// The claim's idle time: how soon a crashed member's delivery comes back.
const CLAIM_IDLE: Duration = Duration::from_millis(300);

/// A `redis-server` of the test's own, a stream and a group on it.
struct Streams {
    server: RedisServer,
    stream: String,
    group: String,
    redis: MultiplexedConnection,
}

impl Streams {
    async fn start() -> Self {
        let server = RedisServer::start();
        let redis = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        Self {
            server,
            stream: "orders".to_owned(),
            group: "shipping".to_owned(),
            redis,
        }
    }

    async fn subscriber(&self) -> Subscriber {
        Subscriber::builder(self.server.url(), &self.stream, &self.group)
            .claim_idle(CLAIM_IDLE)
            .block(Duration::from_millis(100))
            .connect()
            .await
            .unwrap()
    }

    /// `order-1` published and delivered to a first member, and a second
    /// member.
    async fn one_delivery_two_members(&self) -> (RedisDelivery, Deliveries, Deliveries) {
        self.publish(Some("order-1"), b"order 1").await;
        let mut first = self.subscriber().await.deliveries().boxed();
        let second = self.subscriber().await.deliveries().boxed();
        let delivery = first.next().await.unwrap().unwrap();
        (delivery, first, second)
    }

    /// `XADD` of raw fields.
    async fn add(&self, fields: &[(&[u8], &[u8])]) {
        let _: String = self
            .redis
            .clone()
            .xadd(&self.stream, "*", fields)
            .await
            .unwrap();
    }

    /// The fields of each entry of `stream`, as they are.
    async fn entries(&self, stream: &str) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let range: Vec<(String, Vec<Vec<u8>>)> =
            self.redis.clone().xrange_all(stream).await.unwrap();
        range
            .into_iter()
            .map(|(_, fields)| {
                fields
                    .chunks(2)
                    .map(|pair| (pair[0].clone(), pair[1].clone()))
                    .collect()
            })
            .collect()
    }

    /// The entries of `stream` as messages: `message_id` the id,
    /// `payload` the payload, the other fields headers (text taken lossily).
    async fn messages(&self, stream: &str) -> Vec<Message> {
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let entries = self.entries(stream).await;
        entries
            .into_iter()
            .map(|fields| {
                let mut message = Message::new(stream, Vec::new());
                for (name, value) in fields {
                    message = match &name[..] {
                        b"message_id" => message.with_id(text(&value)),
                        b"payload" => {
                            message.payload = value.into();
                            message
                        }
                        _ => message.with_header(text(&name), text(&value)),
                    };
                }
                message
            })
            .collect()
    }
}

impl Broker for Streams {
    type Delivery = RedisDelivery;

    async fn publish(&self, id: Option<&str>, payload: &[u8]) {
        // A plain XADD: the publisher's deduplication would drop a repeat.
        match id {
            Some(id) => {
                self.add(&[(b"message_id", id.as_bytes()), (b"payload", payload)])
                    .await
            }
            None => self.add(&[(b"payload", payload)]).await,
        }
    }

    async fn deliveries(&self, _member: &str) -> Deliveries {
        self.subscriber().await.deliveries().boxed()
    }

    async fn dead_letters(&self) -> Vec<Message> {
        self.messages(&format!("{}:dead", self.stream)).await
    }

    async fn unsettled(&self) -> usize {
        let mut redis = self.redis.clone();
        let groups: StreamInfoGroupsReply = redis.xinfo_groups(&self.stream).await.unwrap();
        let group = groups.groups.iter().find(|g| g.name == self.group).unwrap();
        let undelivered: Vec<redis::Value> = redis
            .xrange(&self.stream, format!("({}", group.last_delivered_id), "+")
            .await
            .unwrap();
        group.pending + undelivered.len()
    }
}

// Every shared scenario, each on a server of its own.
support::semantics::scenarios!(|_: &str| Streams::start(), "redis_streams");

/// Many messages, a third of them published twice, shared by three
/// members, one of which crashes halfway: every message runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_at_members_that_crash_run_once() {
    let streams = Streams::start().await;
    let runs = semantics::Runs::default();
    let consumer = semantics::consumer(Idempotency::new(MemoryStore::new()));
    let work = Duration::from_millis(30);
    let redelivered = Arc::new(AtomicBool::new(false));
    let never = {
        let redelivered = Arc::clone(&redelivered);
        move |message: &Message, _| {
            redelivered.fetch_or(message.attempt > 1, Ordering::SeqCst);
            false
        }
    };
    let publish = |orders: std::ops::Range<usize>| {
        let streams = &streams;
        async move {
            for i in orders {
                let id = format!("order-{i}");
                streams.publish(Some(&id), id.as_bytes()).await;
                if i % 3 == 0 {
                    streams.publish(Some(&id), id.as_bytes()).await;
                }
            }
        }
    };
    let a = semantics::member(&streams, &consumer, "a", &runs, work, never.clone()).await;
    let _b = semantics::member(&streams, &consumer, "b", &runs, work, never.clone()).await;
    publish(0..75).await;
    tokio::time::sleep(work / 2).await;
    // A crash with handlers running: their entries go to the others.
    drop(a);
    // Its successor, under another name.
    let _c = semantics::member(&streams, &consumer, "c", &runs, work, never).await;
    publish(75..150).await;
    semantics::drained(&streams).await;
    for i in 0..150 {
        assert_eq!(runs.effects(&format!("order-{i}")), 1, "order-{i}");
    }
    assert!(
        redelivered.load(Ordering::SeqCst),
        "the crashed member's entries were claimed"
    );
    assert!(streams.dead_letters().await.is_empty());
}

/// The same id published twice within the window is one entry; after the
/// window, a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_drops_an_id_published_within_its_window() {
    let streams = Streams::start().await;
    let publisher = Publisher::builder(streams.server.url(), &streams.stream)
        .dedup_window(Duration::from_millis(500))
        .connect()
        .await
        .unwrap();
    let first = publisher.publish("order-1", "order 1").await.unwrap();
    let again = publisher.publish("order-1", "order 1").await.unwrap();
    let other = publisher.publish("order-2", "order 2").await.unwrap();
    assert!(!first.duplicate && again.duplicate && !other.duplicate);
    assert_eq!(again.entry_id, first.entry_id);
    assert_eq!(streams.messages(&streams.stream).await.len(), 2);

    tokio::time::sleep(Duration::from_millis(700)).await;
    let later = publisher.publish("order-1", "order 1").await.unwrap();
    assert!(!later.duplicate);
    assert_ne!(later.entry_id, first.entry_id);
    let messages = streams.messages(&streams.stream).await;
    let ids: Vec<_> = messages.iter().map(|m| m.id.as_deref().unwrap()).collect();
    assert_eq!(ids, ["order-1", "order-2", "order-1"]);
    assert_eq!(&messages[0].payload[..], b"order 1");
}

/// `Message::attempt` is the group's delivery count: a retried entry comes
/// back with one more, as `XPENDING` counts, to the same or another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_is_the_brokers_delivery_count() {
    let streams = Streams::start().await;
    streams.publish(Some("order-1"), b"order 1").await;
    let mut deliveries = streams.subscriber().await.deliveries();
    for attempt in 1..=3 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        assert_eq!(delivery.message().attempt, attempt);
        let pending: redis::streams::StreamPendingCountReply = streams
            .redis
            .clone()
            .xpending_count(&streams.stream, &streams.group, "-", "+", 10)
            .await
            .unwrap();
        assert_eq!(pending.ids[0].times_delivered, attempt as usize);
        delivery.retry(Duration::ZERO).await.unwrap();
    }
    // A crash: another member claims it after the idle time, counted.
    drop(deliveries);
    let mut other = streams.subscriber().await.deliveries();
    let delivery = other.next().await.unwrap().unwrap();
    assert_eq!(delivery.message().attempt, 4);
    delivery.ack().await.unwrap();
    assert_eq!(streams.unsettled().await, 0);
}

/// A retry's delay longer than the claim's idle time is kept by the member:
/// nobody claims the entry before it is due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_retry_delay_is_kept() {
    let streams = Streams::start().await;
    let (delivery, mut first, mut second) = streams.one_delivery_two_members().await;
    let delay = CLAIM_IDLE * 4;
    delivery.retry(delay).await.unwrap();
    let started = tokio::time::Instant::now();
    let again = tokio::select! {
        Some(again) = first.next() => again,
        Some(again) = second.next() => again,
    }
    .unwrap();
    assert!(
        started.elapsed() >= delay - CLAIM_IDLE,
        "back after {:?}",
        started.elapsed()
    );
    assert_eq!(again.message().attempt, 2);
    again.ack().await.unwrap();
}

/// A live member keeps the entries it works on, however long past the
/// claim's idle time: only a crash lets another member claim them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_member_keeps_its_entries() {
    let streams = Streams::start().await;
    let (delivery, working, mut other) = streams.one_delivery_two_members().await;
    let claimed = tokio::time::timeout(CLAIM_IDLE * 5, other.next()).await;
    assert!(claimed.is_err(), "claimed while its member works on it");
    drop((delivery, working));
    let claimed = other.next().await.unwrap().unwrap();
    assert_eq!(
        (claimed.message().id.as_deref(), claimed.message().attempt),
        (Some("order-1"), 2)
    );
}

/// Entries that are not well formed reach the consumer without a panic:
/// fields that are not UTF-8, no `message_id`, no `payload`; the ones
/// without a valid key are dead-lettered with their fields as they were.
///
/// The member handles its deliveries concurrently, so the two dead letters
/// are written in either order (whichever script reaches Redis first):
/// each is found by its reason, not by its place in the dead-letter stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_not_well_formed_are_dead_lettered() {
    let streams = Streams::start().await;
    let runs = semantics::Runs::default();
    let consumer = semantics::consumer(Idempotency::new(MemoryStore::new()));
    let _member = semantics::member(&streams, &consumer, "a", &runs, Duration::ZERO, |_, _| {
        false
    })
    .await;
    streams
        .add(&[(b"message_id", b"\xff\xfe"), (b"payload", b"bad id")])
        .await;
    streams
        .add(&[(b"payload", b"no id"), (b"\xc3(", b"\xff")])
        .await;
    streams.add(&[(b"message_id", b"no-payload")]).await;
    semantics::drained(&streams).await;
    assert_eq!(runs.ran("no-payload"), 1, "an empty payload runs");
    let raw = streams.entries(&format!("{}:dead", streams.stream)).await;
    let reason = |fields: &Vec<(Vec<u8>, Vec<u8>)>| {
        fields
            .iter()
            .find(|(name, _)| name == DeadLetter::REASON_HEADER.as_bytes())
            .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
    };
    let mut reasons: Vec<_> = raw.iter().map(reason).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [Some("invalid-key".to_owned()), Some("no-key".to_owned())]
    );
    let letter = |why: &str| {
        raw.iter()
            .find(|fields| reason(fields).as_deref() == Some(why))
            .unwrap()
    };
    assert_eq!(
        letter("invalid-key")[0],
        (b"message_id".to_vec(), b"\xff\xfe".to_vec()),
        "copied byte for byte"
    );
    assert_eq!(letter("no-key")[1], (b"\xc3(".to_vec(), b"\xff".to_vec()));
}

/// A dead letter is written once: not for an entry another member settled
/// already, and from the delivery's own message when the stream is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_is_written_once() {
    let streams = Streams::start().await;
    let letter = DeadLetter::NoKey;
    streams
        .add(&[(b"payload", b"one"), (b"tenant", b"acme")])
        .await;
    streams.add(&[(b"payload", b"two")]).await;
    let mut deliveries = streams.subscriber().await.deliveries();
    let one = deliveries.next().await.unwrap().unwrap();
    let two = deliveries.next().await.unwrap().unwrap();
    let _: usize = streams
        .redis
        .clone()
        .xack(&streams.stream, &streams.group, &[one.entry_id()])
        .await
        .unwrap();
    one.dead_letter(&letter).await.unwrap();
    assert!(streams.dead_letters().await.is_empty(), "settled elsewhere");
    let _: usize = streams.redis.clone().del(&streams.stream).await.unwrap();
    two.dead_letter(&letter).await.unwrap();
    let letters = streams.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        (
            &letters[0].payload[..],
            letters[0].header(DeadLetter::REASON_HEADER)
        ),
        (&b"two"[..], Some("no-key"))
    );
}

/// The stream deleted under its members: they declare it and the group
/// again, and consume what is published next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_declared_again() {
    let streams = Streams::start().await;
    let mut deliveries = streams.subscriber().await.deliveries();
    streams.publish(Some("order-1"), b"order 1").await;
    deliveries
        .next()
        .await
        .unwrap()
        .unwrap()
        .ack()
        .await
        .unwrap();
    let _: usize = streams.redis.clone().del(&streams.stream).await.unwrap();
    let errors = tokio::time::timeout(Duration::from_secs(10), async {
        let mut errors = 0;
        loop {
            streams.publish(Some("order-2"), b"order 2").await;
            match deliveries.next().await.unwrap() {
                Ok(delivery) => {
                    assert_eq!(delivery.message().id.as_deref(), Some("order-2"));
                    return errors;
                }
                Err(_) => errors += 1,
            }
        }
    })
    .await
    .expect("consumes again");
    assert!(errors >= 1, "the missing group was reported");
}
