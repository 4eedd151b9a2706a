//! The consumer's promises on NATS JetStream: every scenario of
//! `support::semantics` against a real `nats-server -js` this process
//! starts, one stream per test; then what is JetStream's own (the
//! publisher's deduplication, the broker's delivery count).

mod support;

use std::io::Read as _;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt as _;
use futures_util::stream::BoxStream;
use idempotent_consumer::nats::{NatsDelivery, Publisher, Subscriber, SubscriberBuilder};
use idempotent_consumer::{BrokerError, DeadLetter, Delivery, Message};
use support::nats_server::{NatsServer, server};
use support::semantics::{self, Broker};

/// The group every member joins.
const GROUP: &str = "ship";
/// The redelivery time of a crashed member's deliveries.
const ACK_WAIT: Duration = Duration::from_secs(1);

/// A stream of one test's own (named after the test), its group `ship`
/// and its dead-letter stream, on the shared server.
struct Nats {
    subject: String,
    stream: String,
    dead_letter_stream: String,
    publisher: Publisher,
    jetstream: jetstream::Context,
    server: Arc<NatsServer>,
}

impl Nats {
    async fn new(subject: &str) -> Self {
        let server = server();
        // The first member declares the stream and the group, so what is
        // published before any member pulls is counted as unsettled.
        let subscriber = Self::member(&server, subject).connect().await.unwrap();
        let publisher = Publisher::connect(&server.url, subject).await.unwrap();
        let jetstream = jetstream::new(async_nats::connect(&server.url).await.unwrap());
        Self {
            subject: subject.to_owned(),
            stream: subscriber.stream().to_owned(),
            dead_letter_stream: jetstream
                .stream_by_subject(subscriber.dead_letter_subject())
                .await
                .unwrap(),
            publisher,
            jetstream,
            server,
        }
    }

    /// A member: a redelivery time of a second, and JetStream's
    /// deduplication as good as off (its shortest window, 100 ms; the
    /// fixture's publish waits it out), since the scenarios test the
    /// consumer's.
    fn member(server: &NatsServer, subject: &str) -> SubscriberBuilder {
        Subscriber::builder(&server.url, subject, GROUP)
            .ack_wait(ACK_WAIT)
            .duplicate_window(Duration::from_millis(100))
    }

    async fn group(&self) -> jetstream::consumer::Info {
        self.jetstream
            .get_stream(&self.stream)
            .await
            .unwrap()
            .consumer_info(GROUP)
            .await
            .unwrap()
    }
}

impl Broker for Nats {
    type Delivery = NatsDelivery;

    async fn publish(&self, id: Option<&str>, payload: &[u8]) {
        let payload = bytes::Bytes::copy_from_slice(payload);
        let Some(id) = id else {
            self.jetstream
                .publish(self.subject.clone(), payload)
                .await
                .unwrap()
                .await
                .unwrap();
            return;
        };
        // JetStream drops an id it stored within the window: publish again
        // once it is past, so every publish reaches the consumers.
        while self
            .publisher
            .publish(id, payload.clone())
            .await
            .unwrap()
            .duplicate
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn deliveries(
        &self,
        _member: &str,
    ) -> BoxStream<'static, Result<NatsDelivery, BrokerError>> {
        Self::member(&self.server, &self.subject)
            .connect()
            .await
            .unwrap()
            .deliveries()
            .boxed()
    }

    async fn dead_letters(&self) -> Vec<Message> {
        let mut stream = self
            .jetstream
            .get_stream(&self.dead_letter_stream)
            .await
            .unwrap();
        let state = stream.info().await.unwrap().state.clone();
        let mut letters = Vec::new();
        for sequence in state.first_sequence..=state.last_sequence {
            if sequence == 0 {
                continue;
            }
            let stored = stream.get_raw_message(sequence).await.unwrap();
            let mut letter = Message::new(self.dead_letter_stream.as_str(), stored.payload);
            let mut headers: Vec<_> = stored.headers.iter().collect();
            headers.sort_by_key(|(name, _)| name.to_string());
            for (name, values) in headers {
                for value in values {
                    letter = letter.with_header(name.to_string(), value.as_str());
                }
            }
            if let Some(id) = letter.header("Nats-Msg-Id").map(str::to_owned) {
                letter = letter.with_id(id);
            }
            letters.push(letter);
        }
        letters
    }

    async fn unsettled(&self) -> usize {
        let group = self.group().await;
        group.num_ack_pending + usize::try_from(group.num_pending).unwrap()
    }
}

// Every shared scenario, each on a stream of its own (named after it).
support::semantics::scenarios!(Nats::new, "nats_tx");

/// JetStream's own deduplication: a second publish of one id within the
/// window is not stored, and the publisher says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publisher_s_retry_is_one_message() {
    let server = server();
    // The publisher declares the stream: JetStream's 2-minute window.
    let publisher = Publisher::connect(&server.url, "retried").await.unwrap();
    let first = publisher.publish("order-1", "order 1").await.unwrap();
    let retry = publisher.publish("order-1", "order 1").await.unwrap();
    let other = publisher.publish("order-2", "order 2").await.unwrap();
    assert!(!first.duplicate && retry.duplicate && !other.duplicate);
    assert_eq!(retry.sequence, first.sequence);
    assert!(publisher.publish("", "no id").await.is_err(), "an empty id");
    let jetstream = jetstream::new(async_nats::connect(&server.url).await.unwrap());
    let mut stream = jetstream.get_stream(&first.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 2);
}

/// A delivery as the consumer sees it: JetStream's stream, id, payload and
/// headers, and JetStream's count of its deliveries; settled only by ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_count_is_jetstream_s() {
    let broker = Nats::new("counted").await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "order-9");
    headers.insert("Tenant", "acme");
    broker
        .jetstream
        .publish_with_headers("counted", headers, "order 9".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut deliveries = broker.deliveries("a").await;
    for attempt in 1..=3 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        let message = delivery.message();
        assert_eq!(message.attempt, attempt);
        assert_eq!(&*message.source, "counted");
        assert_eq!(message.id.as_deref(), Some("order-9"));
        assert_eq!(&message.payload[..], b"order 9");
        assert_eq!(message.header("tenant"), Some("acme"));
        delivery.in_progress().await.unwrap();
        if attempt < 3 {
            delivery.retry(Duration::from_millis(50)).await.unwrap();
        } else {
            assert_eq!(broker.unsettled().await, 1);
            delivery.ack().await.unwrap();
        }
    }
    semantics::drained(&broker).await;
    assert!(broker.dead_letters().await.is_empty());
}

/// A dead letter keeps the original's headers and id, not JetStream's
/// publish directives, and is not taken for a duplicate of an earlier one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_one_id_are_each_kept() {
    let broker = Nats::new("lettered").await;
    let mut deliveries = broker.deliveries("a").await;
    for payload in ["first", "second"] {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "order-1");
        headers.insert("Nats-Expected-Stream", "lettered");
        headers.insert("Tenant", "acme");
        broker
            .jetstream
            .publish_with_headers("lettered", headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    for _ in 0..2 {
        let delivery = deliveries.next().await.unwrap().unwrap();
        let letter = DeadLetter::KeyReused {
            key: "order-1".to_owned(),
        };
        delivery.dead_letter(&letter).await.unwrap();
    }
    semantics::drained(&broker).await;
    let letters = broker.dead_letters().await;
    let payloads: Vec<_> = letters.iter().map(|l| &l.payload[..]).collect();
    assert_eq!(payloads, [&b"first"[..], &b"second"[..]]);
    for letter in &letters {
        assert_eq!(letter.id.as_deref(), Some("order-1"));
        assert_eq!(letter.header("Tenant"), Some("acme"));
        assert_eq!(letter.header("Nats-Expected-Stream"), None);
        assert_eq!(letter.header(DeadLetter::REASON_HEADER), Some("key-reused"));
        assert!(
            letter
                .header(DeadLetter::DETAIL_HEADER)
                .unwrap()
                .contains("order-1")
        );
    }
}

/// A dead-letter subject the consumed stream captures would send dead
/// letters back to the consumers: refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_subject_inside_the_stream_is_refused() {
    let server = server();
    let error = Subscriber::builder(&server.url, "looped", GROUP)
        .dead_letter_subject("looped")
        .connect()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("captured"), "{error}");
}

/// `+WPI` holds a delivery: while the first member says it is in
/// progress, past `ack_wait`, no other member gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_holds_the_delivery() {
    let broker = Nats::new("held").await;
    broker.publish(Some("order-1"), b"order 1").await;
    let mut first = broker.deliveries("a").await;
    let delivery = first.next().await.unwrap().unwrap();
    let mut second = broker.deliveries("b").await;
    let held = async {
        for _ in 0..6 {
            delivery.in_progress().await.unwrap();
            tokio::time::sleep(ACK_WAIT / 2).await;
        }
    };
    tokio::select! {
        () = held => {}
        other = second.next() => panic!("delivered to a second member while in progress: {other:?}"),
    }
    delivery.ack().await.unwrap();
    semantics::drained(&broker).await;
}

/// A message async-nats cannot read (a header that is not UTF-8, from
/// another client) fails the connection it arrives on; once the connection
/// is back it is found, dead-lettered (`unreadable`) and terminated, and
/// the group goes on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_message_is_dead_lettered() {
    use std::io::Write as _;
    let broker = Nats::new("unreadable").await;
    let runs = semantics::Runs::default();
    let consumer = semantics::consumer(idempotent_core::Idempotency::new(
        idempotent_core::memory::MemoryStore::new(),
    ));
    let _member =
        semantics::member(&broker, &consumer, "a", &runs, Duration::ZERO, |_, _| false).await;
    // Published as another client may: raw, with a byte that is not UTF-8.
    let address = broker.server.url.trim_start_matches("nats://").to_owned();
    let mut raw = std::net::TcpStream::connect(address).unwrap();
    let mut reply = [0; 4096];
    let _ = raw.read(&mut reply).unwrap();
    let header = b"NATS/1.0\r\nNats-Msg-Id: bad-1\r\nTenant: \xff\r\n\r\n";
    let mut frame = format!(
        "CONNECT {{\"headers\":true,\"verbose\":false}}\r\nHPUB unreadable {} {}\r\n",
        header.len(),
        header.len() + 3
    )
    .into_bytes();
    frame.extend_from_slice(header);
    frame.extend_from_slice(b"bad\r\nPING\r\n");
    raw.write_all(&frame).unwrap();
    let _ = raw.read(&mut reply).unwrap();
    broker.publish(Some("good-1"), b"good").await;
    semantics::drained(&broker).await;
    assert_eq!((runs.ran("bad-1"), runs.ran("good-1")), (0, 1));
    let letters = broker.dead_letters().await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(
        letters[0].header(DeadLetter::REASON_HEADER),
        Some("unreadable")
    );
    assert_eq!(letters[0].id.as_deref(), Some("bad-1"));
    assert_eq!(letters[0].header("Tenant"), Some("\u{fffd}"));
    assert_eq!(&letters[0].payload[..], b"bad");
}

/// Members that start at once all join: declaring is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_starting_at_once_all_join() {
    let server = server();
    let joins = (0..4).map(|_| Subscriber::connect(&server.url, "crowd", GROUP));
    let members = futures_util::future::try_join_all(joins).await.unwrap();
    assert!(members.iter().all(|m| m.stream() == "crowd"));
    assert!(
        members
            .iter()
            .all(|m| m.dead_letter_subject() == "crowd-dead-letter")
    );
}

/// A stream of the user's that captures the subject is the one consumed
/// (and the key's scope), not a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_stream_is_used() {
    let server = server();
    let jetstream = jetstream::new(async_nats::connect(&server.url).await.unwrap());
    jetstream
        .create_stream(jetstream::stream::Config {
            name: "SHOP".to_owned(),
            subjects: vec!["shop.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    let subscriber = Subscriber::connect(&server.url, "shop.orders", GROUP)
        .await
        .unwrap();
    assert_eq!(subscriber.stream(), "SHOP");
    assert_eq!(subscriber.dead_letter_subject(), "SHOP-dead-letter");
    let publisher = Publisher::connect(&server.url, "shop.orders")
        .await
        .unwrap();
    assert_eq!(
        publisher.publish("order-1", "1").await.unwrap().stream,
        "SHOP"
    );
    // Another subject of the stream is not this group's.
    jetstream
        .publish("shop.refunds", "r".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let mut deliveries = subscriber.deliveries();
    let delivery = deliveries.next().await.unwrap().unwrap();
    assert_eq!(&*delivery.message().source, "SHOP");
    assert_eq!(delivery.message().id.as_deref(), Some("order-1"));
    delivery.ack().await.unwrap();
    let stream = jetstream.get_stream("SHOP").await.unwrap();
    semantics::eventually(Duration::from_secs(5), "the order acknowledged", || async {
        let group = stream.consumer_info(GROUP).await.unwrap();
        group.num_ack_pending == 0 && group.num_pending == 0
    })
    .await;
}
