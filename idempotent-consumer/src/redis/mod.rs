//! Redis Streams with consumer groups, through redis-rs.
//!
//! A [`Subscriber`] is one member of a consumer group on a stream: its
//! [`deliveries`](Subscriber::deliveries) read new entries with
//! `XREADGROUP` and claim entries left pending too long with
//! `XAUTOCLAIM`, so a crashed member's deliveries and retried ones come
//! back. A [`Publisher`] adds entries with a stable message id and drops a
//! retried publish of the same id within its deduplication window.
//!
//! An entry is a [`Message`](crate::Message) this way: its `message_id`
//! field is the producer's id ([`Message::id`](crate::Message::id), the key
//! by default; the entry id, such as `1700000000000-0`, changes when a
//! producer retries, so it is not the key), its `payload` field is the
//! payload, its other fields are the headers, and
//! [`Message::attempt`](crate::Message::attempt) is the group's delivery
//! count of the entry (1 for a new entry, more for a claimed one).
//!
//! ```no_run
//! use futures_util::StreamExt as _;
//! use idempotent_consumer::Consumer;
//! use idempotent_consumer::redis::{Publisher, Subscriber};
//! use idempotent_core::{Idempotency, memory::MemoryStore};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // The producer: a retried publish of `order-42` is not a second entry.
//! let publisher = Publisher::connect("redis://127.0.0.1:6379", "orders").await?;
//! let first = publisher.publish("order-42", "{\"order\":42}").await?;
//! let again = publisher.publish("order-42", "{\"order\":42}").await?;
//! assert!(!first.duplicate && again.duplicate);
//!
//! // A consumer: one member of the group `shipping` (start several, in
//! // several processes: each entry goes to one of them).
//! let subscriber = Subscriber::connect("redis://127.0.0.1:6379", "orders", "shipping").await?;
//! let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship-order").build();
//! let deliveries = subscriber.deliveries().take_until(tokio::signal::ctrl_c());
//! consumer
//!     .consume(deliveries, |message| async move {
//!         println!("shipping {:?}", message.id);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await;
//! # Ok(()) }
//! ```
//!
//! # Exactly once on Redis Streams
//!
//! Redis delivers an entry to one member of a group at a time, and again
//! when it is left pending (never acknowledged) past the claim's idle time:
//! at least once. What happens once is the handler's effect: a redelivered
//! entry, or a republished one with the same `message_id` and payload, is
//! acknowledged without running the handler again, because the
//! [`Consumer`](crate::Consumer) recorded its result before acknowledging
//! (`XACK`) it, for as long as the result is kept (the consumer's TTL).
//! The delivery is not once; the effect is.
//!
//! - **Claim idle time** ([`SubscriberBuilder::claim_idle`], 30 s by
//!   default): how long an entry stays pending with a member that crashed
//!   before another member claims it. A live member keeps its entries from
//!   being claimed while their handlers run, however long (it resets their
//!   idle time every third of it), so the setting is the redelivery time of
//!   a crash, not a bound on handlers. A retry's delay shorter than it is
//!   the entry's idle time; a longer one is kept by the member (see
//!   [`RedisDelivery`]).
//! - **Dead-letter stream** ([`SubscriberBuilder::dead_letter_stream`],
//!   `<stream>:dead` by default): where an entry goes when it failed too
//!   often, is a poison message, or has no key: a copy of its fields plus
//!   `Idempotent-Dead-Letter` (the reason) and
//!   `Idempotent-Dead-Letter-Detail`, added and acknowledged in one script.
//! - **Deduplication window** ([`PublisherBuilder::dedup_window`], 2
//!   minutes by default): Redis does not deduplicate on its own, so the
//!   [`Publisher`] remembers each id that long, in a key beside the stream,
//!   and a publish of a remembered id adds nothing. The consumer drops
//!   duplicates anyway (as long as its records last); the window only
//!   keeps the stream free of them.
//!
//! Each member reads with its own connection, since `XREADGROUP ... BLOCK`
//! holds it; acknowledgements, retries and dead letters share another. A
//! standalone Redis only (a `redis://` URL). Acknowledged entries stay in
//! the stream until it is trimmed (`XTRIM`, by length or by id, under the
//! oldest entry still pending); the member names left in the group
//! (`XINFO CONSUMERS`) can be removed with `XGROUP DELCONSUMER` once they
//! have nothing pending.

mod delivery;
mod publisher;
mod reader;
mod scripts;
mod subscriber;
mod support;

use std::time::Duration;

pub use delivery::RedisDelivery;
pub use publisher::{Published, Publisher, PublisherBuilder};
pub use subscriber::{Subscriber, SubscriberBuilder};

/// The field of an entry that holds the producer's message id.
pub const ID_FIELD: &str = "message_id";
/// The field of an entry that holds the payload.
pub const PAYLOAD_FIELD: &str = "payload";
/// How long an entry stays pending with a crashed member before another
/// member claims it.
pub const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
/// Entries read at a time.
pub const DEFAULT_COUNT: usize = 16;
/// How long a read waits for new entries.
pub const DEFAULT_BLOCK: Duration = Duration::from_secs(1);
/// How long a [`Publisher`] remembers an id.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(120);

/// How long a command on the shared connection may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause after a read that failed.
const MAX_PAUSE: Duration = Duration::from_secs(5);
