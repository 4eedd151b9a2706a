//! RabbitMQ (AMQP 0.9.1), through [lapin](https://docs.rs/lapin): a
//! [`Subscriber`] whose deliveries a [`Consumer`](crate::Consumer) handles,
//! and a [`Publisher`] that gives every message a stable id.
//!
//! ```no_run
//! use std::sync::atomic::{AtomicUsize, Ordering};
//!
//! use futures_util::StreamExt as _;
//! use idempotent_consumer::Consumer;
//! use idempotent_consumer::amqp::{Publisher, Subscriber};
//! use idempotent_core::{Idempotency, memory::MemoryStore};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
//!
//! // The producer: a publish it retries keeps its id. RabbitMQ does not
//! // deduplicate, so the queue now holds two copies.
//! let publisher = Publisher::connect(url, "orders").await?;
//! publisher.publish("order-42", r#"{"order":42}"#).await?;
//! publisher.publish("order-42", r#"{"order":42}"#).await?;
//!
//! // The consumer: a member of the group `shipping` on the quorum queue
//! // `orders` (declared if missing, with its dead-letter queue
//! // `orders.dead`). Several processes run it to share the work.
//! let subscriber = Subscriber::connect(url, "orders", "shipping").await?;
//! let consumer = Consumer::builder(Idempotency::new(MemoryStore::new()), "ship-order").build();
//! let shipped = &AtomicUsize::new(0);
//! consumer
//!     // A service consumes until it shuts down (`take_until`); here, the two copies.
//!     .consume(subscriber.deliveries().take(2), |message| async move {
//!         println!("shipping {:?}", message.id);
//!         shipped.fetch_add(1, Ordering::SeqCst);
//!         Ok::<_, std::io::Error>(())
//!     })
//!     .await;
//! assert_eq!(shipped.load(Ordering::SeqCst), 1, "two deliveries, one effect");
//! # Ok(()) }
//! ```
//!
//! # What "exactly once" means on RabbitMQ
//!
//! The effect, not the delivery. RabbitMQ delivers at least once and does
//! not deduplicate: a publish the producer retries is a second message, and
//! a delivery left unacknowledged when its channel closes (its consumer
//! crashed, or its connection missed its heartbeats) is delivered again to
//! another member. The [`Consumer`](crate::Consumer) keys each message by
//! its `message_id` property, scoped by the queue, and runs its handler
//! once per key: a second copy is acknowledged without running.
//!
//! What the broker's own settings do, as [`Subscriber`] declares them:
//!
//! - **Redelivery.** The queue is a quorum queue (`x-queue-type: quorum`),
//!   which counts the deliveries of each message in the `x-delivery-count`
//!   header; [`Message::attempt`](crate::Message::attempt) is that count plus one. RabbitMQ has no
//!   delayed negative acknowledgement, so [`Delivery::retry`](crate::Delivery::retry) holds the
//!   message (unacknowledged) for the delay, then hands it back with
//!   `basic.nack` (`requeue`); other deliveries go on meanwhile.
//! - **Dead letters.** The queue dead-letters to `<queue>.dead` through the
//!   default exchange (`x-dead-letter-exchange: ""`,
//!   `x-dead-letter-routing-key`), so what RabbitMQ dead-letters itself (a
//!   [`delivery limit`](SubscriberBuilder::delivery_limit), a rejection by
//!   another client) lands there too. The consumer's own dead letters carry
//!   their reason, which a broker rejection cannot add: they are published
//!   to that queue, with publisher confirms, with the original payload, id
//!   and headers plus `Idempotent-Dead-Letter` (the
//!   [`reason`](crate::DeadLetter::reason)) and `Idempotent-Dead-Letter-Detail`;
//!   then the original is acknowledged. A crash between the two delivers
//!   the message again, to be judged again: its dead letter may come twice,
//!   the message is never lost.
//! - **No deduplication.** [`Published::duplicate`] is always `false`: the
//!   broker cannot tell; the consumer drops the duplicates.
//! - **Consumer timeout.** RabbitMQ closes a channel whose delivery stays
//!   unacknowledged longer than its `consumer_timeout` (30 minutes by
//!   default), for instance while the idempotency store is down for that
//!   long: the deliveries go back to the queue and the stream ends.

mod delivery;
mod link;
mod properties;
mod publisher;
mod subscriber;
mod topology;

pub use delivery::AmqpDelivery;
pub use publisher::{Published, Publisher};
pub use subscriber::{Subscriber, SubscriberBuilder};

/// Deliveries a member has unacknowledged at once, by default: as many as a
/// [`Consumer`](crate::Consumer) handles at once by default.
pub const DEFAULT_PREFETCH: u16 = 16;
/// The header in which quorum queues count a message's earlier deliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Persistent delivery mode: the message is written to disk.
const PERSISTENT: u8 = 2;
