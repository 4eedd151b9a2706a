//! NATS JetStream, through [async-nats](https://docs.rs/async-nats): a
//! [`Subscriber`] whose deliveries a [`Consumer`](crate::Consumer) handles,
//! and a [`Publisher`] that publishes with a stable message id.
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use idempotent_consumer::Consumer;
//! use idempotent_consumer::nats::{Publisher, Subscriber};
//! use idempotent_core::{Idempotency, memory::MemoryStore};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The producer: a retried publish of `order-42` is not a second message.
//! let publisher = Publisher::connect("nats://127.0.0.1:4222", "orders").await?;
//! let published = publisher.publish("order-42", r#"{"order":42}"#).await?;
//! let again = publisher.publish("order-42", r#"{"order":42}"#).await?;
//! assert!(!published.duplicate && again.duplicate);
//!
//! // A consumer, one member of the group `shipping`: start as many as you
//! // like, each message goes to one of them, and its effect happens once.
//! let subscriber = Subscriber::builder("nats://127.0.0.1:4222", "orders", "shipping")
//!     .ack_wait(std::time::Duration::from_secs(30))
//!     .connect()
//!     .await?;
//! let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship-order").build();
//! let shutdown = tokio::signal::ctrl_c();
//! consumer
//!     .consume(subscriber.deliveries().take_until(shutdown), |message| async move {
//!         println!("shipping {:?}", message.id);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! # What "exactly once" means here
//!
//! JetStream delivers at least once: a message not acknowledged within the
//! consumer's `ack_wait` (a member crashed, or took too long) is delivered
//! again, to whichever member of the group pulls next, and a producer that
//! retries may publish a message twice. The effect of the handler happens
//! once per message id all the same: the key is the `Nats-Msg-Id` header,
//! scoped by the stream; a redelivery or a republished copy replays the
//! recorded result and is acknowledged without running; the message is
//! acknowledged only after its result is recorded. The delivery is not
//! once; the effect is.
//!
//! What the broker's own settings do:
//!
//! - **Redelivery** ([`SubscriberBuilder::ack_wait`]): a delivery left
//!   unsettled by a crashed member comes back after `ack_wait`. Keep it
//!   above the handler's longest run plus the consumer's
//!   [`wait`](crate::ConsumerBuilder::wait), or a slow message is delivered
//!   to a second member meanwhile (which waits for it and replays, but
//!   counts a delivery). A handler error is a negative acknowledgement with
//!   the consumer's growing delay; the count of deliveries is JetStream's
//!   ([`Message::attempt`](crate::Message::attempt)), and after
//!   [`max_attempts`](crate::ConsumerBuilder::max_attempts) of them the
//!   message is dead-lettered. The JetStream consumer's own `max_deliver`
//!   is left unlimited: past it, JetStream drops a message silently.
//! - **Dead letters** ([`SubscriberBuilder::dead_letter_subject`]): a
//!   dead-lettered message is published, with its payload, its headers and
//!   its `Nats-Msg-Id`, plus `Idempotent-Dead-Letter` (the
//!   [reason](crate::DeadLetter::reason)) and `Idempotent-Dead-Letter-Detail`,
//!   to a subject outside the consumed stream (`<stream>-dead-letter` by
//!   default), captured by a stream of its own; then the original is
//!   terminated (`+TERM`), never delivered again. A member that crashes
//!   between the two publishes that dead letter again on the redelivery.
//! - **Deduplication window** ([`SubscriberBuilder::duplicate_window`]):
//!   JetStream itself drops a publish whose `Nats-Msg-Id` it stored within
//!   the stream's window (2 minutes by default), and says so
//!   ([`Published::duplicate`]). Past the window a republished copy is
//!   stored and delivered; the consumer then replays it, for as long as the
//!   record is kept ([`ttl`](crate::ConsumerBuilder::ttl)).
//!
//! A message async-nats cannot read (a header that is not UTF-8, which
//! another client may publish, or a malformed header name) fails the
//! member's connection before any delivery exists, and would come back
//! after each `ack_wait`, failing it again. So each time a member's
//! connection is back, its subscriber reads the group's unsettled messages
//! from the acknowledgement floor on (64 of them, or the
//! [`prefetch`](SubscriberBuilder::prefetch) if more) through JetStream's
//! JSON API, which they cannot break; one async-nats cannot read is
//! dead-lettered with the reason `unreadable` (its headers read
//! leniently) and terminated for the group, never handled. The messages
//! lost with the connection come back after `ack_wait`. This crate's
//! [`Publisher`] cannot publish such a message.

mod delivery;
mod headers;
mod publisher;
mod subscriber;
mod unreadable;

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;

use crate::error::BrokerError;

pub use delivery::NatsDelivery;
pub use publisher::{Published, Publisher};
pub use subscriber::{Subscriber, SubscriberBuilder};

/// How long JetStream waits for a delivery to be settled before it delivers
/// it again (JetStream's own default).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries a member asks JetStream for at once: the consumer's default
/// [`concurrency`](crate::ConsumerBuilder::concurrency).
pub const DEFAULT_PREFETCH: usize = 16;

/// The header JetStream deduplicates by, and the message's id.
const ID: &str = "Nats-Msg-Id";
/// The longest a dead letter's detail header grows.
const MAX_DETAIL: usize = 1024;
/// The shortest duplicate window JetStream accepts (2.9 refuses less), the
/// dead-letter stream's.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// How long a dead letter JetStream took for a duplicate is published again.
const DEAD_LETTER_PATIENCE: Duration = Duration::from_secs(2);
/// Idle heartbeats of a member's pull requests.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// Publishes and waits for the stream to store it (or take it for a
/// duplicate).
async fn store(
    jetstream: &jetstream::Context,
    action: &'static str,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<jetstream::publish::PublishAck, BrokerError> {
    jetstream
        .publish_with_headers(subject.to_owned(), headers, payload)
        .await
        .map_err(|e| BrokerError::new(action, e))?
        .await
        .map_err(|e| BrokerError::new(action, e))
}

/// Publishes a dead letter and waits for the dead-letter stream to store
/// it: one JetStream took for a duplicate (a dead letter of the same id
/// moments before, within the window) is published again once the window
/// is past.
async fn dead_letter_to(
    jetstream: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
) -> Result<(), BrokerError> {
    let deadline = Instant::now() + DEAD_LETTER_PATIENCE;
    loop {
        let ack = store(
            jetstream,
            "dead-letter",
            subject,
            headers.clone(),
            payload.clone(),
        )
        .await?;
        if !ack.duplicate {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(BrokerError::new(
                "dead-letter",
                format!(
                    "the dead-letter stream `{}` keeps taking the dead letter for a duplicate of an earlier one \
                     (the same Nats-Msg-Id within its duplicate window); the message comes back after ack_wait",
                    ack.stream
                ),
            ));
        }
        tokio::time::sleep(MIN_DUPLICATE_WINDOW / 2).await;
    }
}

async fn jetstream_at(
    url: &str,
    options: async_nats::ConnectOptions,
) -> Result<jetstream::Context, BrokerError> {
    let client = options
        .connect(url)
        .await
        .map_err(|e| BrokerError::new("connect", e))?;
    Ok(jetstream::new(client))
}

/// The name of the stream a subscriber or publisher creates for `subject`.
fn stream_name(subject: &str) -> String {
    subject
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | '/' | '\\' => '_',
            c if c.is_whitespace() || c.is_control() => '_',
            c => c,
        })
        .collect()
}

/// The name of the stream capturing `subject`, created (named after it) if
/// none does.
async fn declare_stream(
    jetstream: &jetstream::Context,
    subject: &str,
    duplicate_window: Option<Duration>,
) -> Result<String, BrokerError> {
    if let Some(name) = stream_capturing(jetstream, subject).await? {
        return Ok(name);
    }
    let config = stream::Config {
        name: stream_name(subject),
        subjects: vec![subject.to_owned()],
        duplicate_window: duplicate_window.unwrap_or_default(),
        ..stream::Config::default()
    };
    match jetstream.get_or_create_stream(config).await {
        Ok(mut stream) => Ok(stream
            .info()
            .await
            .map_err(|e| BrokerError::new("declare the stream", e))?
            .config
            .name
            .clone()),
        // Another member created one meanwhile, or the subject is invalid.
        Err(error) => stream_capturing(jetstream, subject)
            .await?
            .ok_or_else(|| BrokerError::new("declare the stream", error)),
    }
}

async fn stream_capturing(
    jetstream: &jetstream::Context,
    subject: &str,
) -> Result<Option<String>, BrokerError> {
    match jetstream.stream_by_subject(subject).await {
        Ok(name) => Ok(Some(name)),
        Err(error) if error.kind() == GetStreamByNameErrorKind::NotFound => Ok(None),
        Err(error) => Err(BrokerError::new("find the stream", error)),
    }
}

#[cfg(test)]
mod tests {
    use super::stream_name;

    #[test]
    fn stream_names_are_valid_for_any_subject() {
        assert_eq!(stream_name("orders"), "orders");
        assert_eq!(stream_name("orders.eu.*"), "orders_eu__");
        assert_eq!(stream_name("a b\t>"), "a_b__");
    }
}
