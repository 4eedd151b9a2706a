//! Publishing with a stable message id and the broker's confirms.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};

use super::PERSISTENT;
use super::link::{Link, Unconfirmed};
use super::topology::Topology;
use crate::error::BrokerError;

/// Tries of one publish before a [`Publisher`] gives up (waiting 100 ms,
/// then twice as long each time, in between: 1.5 s in all).
const PUBLISH_TRIES: u32 = 5;

/// Publishes messages to a RabbitMQ queue, each with a stable
/// `message_id`, persistent, and waits for the broker's confirms. Cheap to
/// clone.
///
/// ```no_run
/// use idempotent_consumer::amqp::Publisher;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let publisher = Publisher::connect("amqp://127.0.0.1:5672/%2f", "orders").await?;
/// let published = publisher.publish("order-42", "{\"order\":42}").await?;
/// assert!(!published.duplicate); // RabbitMQ never tells
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    shared: Arc<Publishing>,
}

struct Publishing {
    link: Link,
    queue: ShortString,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("queue", &self.shared.queue.as_str())
            .finish_non_exhaustive()
    }
}

/// A publish the broker confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Whether the broker recognised the message as a duplicate of one
    /// published before: always `false` on RabbitMQ, which does not
    /// deduplicate. The consumer drops the duplicates.
    pub duplicate: bool,
    /// The tries it took: more than 1 when a try was not confirmed (a
    /// negative confirm, a lost connection) and the message was sent again
    /// with the same id, so the queue may hold copies (which the consumer
    /// drops).
    pub tries: u32,
}

impl Publisher {
    /// Connects to `url` and opens a channel with publisher confirms for
    /// `queue`. The queue is declared as [`Subscriber`](super::Subscriber) declares it by
    /// default (a quorum queue dead-lettering to `<queue>.dead`) if it is
    /// missing, and left as it is if it exists.
    pub async fn connect(
        url: impl Into<String>,
        queue: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        let topology = Topology::new(&queue.into(), None, None)?;
        let link = Link::connect(&url.into(), None).await?;
        // A passive declare that fails closes its channel: one of its own.
        let probe = link.open().await?;
        if probe
            .queue_declare(
                topology.queue.clone(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .is_err()
        {
            topology.declare(&link.open().await?).await?;
        }
        Ok(Self {
            shared: Arc::new(Publishing {
                link,
                queue: topology.queue,
            }),
        })
    }

    /// The queue it publishes to.
    pub fn queue(&self) -> &str {
        self.shared.queue.as_str()
    }

    /// Publishes `payload` with the message id `id` (persistent), and waits
    /// for the broker's confirm; a publish the broker did not confirm (a
    /// negative confirm, a closed channel or connection, opened again) is
    /// sent again with the same id, five tries in about 1.5 s. Fails if
    /// `id` is longer than 255 bytes, the queue does not exist, or no try
    /// was confirmed.
    pub async fn publish(
        &self,
        id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        let payload = payload.into();
        let id = ShortString::try_new(id).map_err(|e| BrokerError::new("publish", e))?;
        let properties = BasicProperties::default()
            .with_message_id(id)
            .with_delivery_mode(PERSISTENT);
        let mut tries = 0;
        loop {
            tries += 1;
            match self
                .shared
                .link
                .publish(&self.shared.queue, &payload, properties.clone())
                .await
            {
                Ok(()) => {
                    return Ok(Published {
                        duplicate: false,
                        tries,
                    });
                }
                Err(Unconfirmed::Unroutable) => {
                    return Err(BrokerError::new("publish", Unconfirmed::Unroutable));
                }
                Err(error) if tries >= PUBLISH_TRIES => {
                    return Err(BrokerError::new("publish", error));
                }
                Err(error) => {
                    tracing::warn!(%error, tries, "a publish was not confirmed; sent again with the same id");
                    tokio::time::sleep(Duration::from_millis(100) * (1 << (tries - 1))).await;
                }
            }
        }
    }
}
