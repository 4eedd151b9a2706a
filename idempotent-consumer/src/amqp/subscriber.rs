//! A consumer group's connection to a queue, its settings, and its
//! members: each a channel of its own consuming the queue.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt as _};
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};

use super::DEFAULT_PREFETCH;
use super::delivery::AmqpDelivery;
use super::link::Link;
use super::topology::Topology;
use crate::error::BrokerError;

/// Members of a group started by this process, for their consumer tags.
static MEMBERS: AtomicU64 = AtomicU64::new(0);

/// A consumer group's connection to a RabbitMQ queue: each
/// [`deliveries`](Self::deliveries) stream is a member of the group, for
/// [`Consumer::consume`](crate::Consumer::consume). Cheap to clone.
///
/// RabbitMQ has no named groups: the consumers of a queue share its
/// messages, each delivered to one of them. The group names the members'
/// consumer tags (`<group>-<pid>-<n>`, as `rabbitmqctl list_consumers`
/// shows them).
///
/// ```no_run
/// use idempotent_consumer::amqp::Subscriber;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let subscriber = Subscriber::connect("amqp://127.0.0.1:5672/%2f", "orders", "shipping").await?;
/// let deliveries = subscriber.deliveries();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscriber {
    shared: Arc<Shared>,
}

/// What a subscriber's members and deliveries share.
pub(super) struct Shared {
    /// The connection, and the channel dead letters are published on.
    pub(super) link: Link,
    /// The queue's name, every message's source.
    pub(super) source: Arc<str>,
    pub(super) topology: Topology,
    group: String,
    prefetch: u16,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("queue", &self.shared.topology.queue.as_str())
            .field(
                "dead_letter_queue",
                &self.shared.topology.dead_letter_queue.as_str(),
            )
            .field("group", &self.shared.group)
            .field("prefetch", &self.shared.prefetch)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Subscriber`]; see [`Subscriber::builder`].
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_consumer::amqp::Subscriber;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let subscriber = Subscriber::builder("amqp://127.0.0.1:5672/%2f", "orders", "shipping")
///     .prefetch(32)
///     .heartbeat(Duration::from_secs(10))
///     .dead_letter_queue("orders.failed")
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until connected"]
pub struct SubscriberBuilder {
    url: String,
    queue: String,
    group: String,
    prefetch: u16,
    heartbeat: Option<Duration>,
    dead_letter_queue: Option<String>,
    delivery_limit: Option<u32>,
}

impl fmt::Debug for SubscriberBuilder {
    /// Without the url, which may hold a password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("queue", &self.queue)
            .field("group", &self.group)
            .field("prefetch", &self.prefetch)
            .field("heartbeat", &self.heartbeat)
            .field("dead_letter_queue", &self.dead_letter_queue)
            .field("delivery_limit", &self.delivery_limit)
            .finish_non_exhaustive()
    }
}

impl SubscriberBuilder {
    /// Deliveries a member holds unacknowledged at once (the channel's
    /// `basic.qos` prefetch, at least 1); [`DEFAULT_PREFETCH`] by default.
    /// Keep it at least the consumer's
    /// [`concurrency`](crate::ConsumerBuilder::concurrency): a delivery
    /// waiting out its retry delay holds one.
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How a member that stops answering gives its deliveries back: what a
    /// member has not settled is delivered to another one when its channel
    /// closes. A process that exits or crashes closes its connection, and
    /// with it its channels, at once; a member that hangs, or is cut off,
    /// is found out when it misses its heartbeats for about twice this
    /// interval (AMQP heartbeats, in whole seconds, at least 1). The
    /// server's proposal (60 s on RabbitMQ) by default.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = Some(interval);
        self
    }

    /// The queue dead letters go to; `<queue>.dead` by default. It is
    /// declared when missing, and the queue dead-letters to it.
    pub fn dead_letter_queue(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter_queue = Some(queue.into());
        self
    }

    /// The broker's own bound on a message's deliveries (`x-delivery-limit`):
    /// past it, RabbitMQ dead-letters the message itself, without the
    /// reason headers. A guard against a message that crashes its consumer
    /// every time, and so never reaches the consumer's
    /// [`max_attempts`](crate::ConsumerBuilder::max_attempts); keep it well
    /// above that, since deliveries handed back while a duplicate runs
    /// elsewhere count too. None by default.
    ///
    /// The limit is a queue argument, fixed when the queue is declared:
    /// RabbitMQ refuses to declare an existing queue with another one.
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = Some(limit);
        self
    }

    /// Connects, and declares the queue and its dead-letter queue if they
    /// are missing.
    ///
    /// Fails if the server cannot be reached, or if the queue exists with
    /// other arguments (a classic queue, another dead-letter queue or
    /// delivery limit): RabbitMQ does not change a queue's arguments.
    pub async fn connect(self) -> Result<Subscriber, BrokerError> {
        let topology = Topology::new(
            &self.queue,
            self.dead_letter_queue.as_deref(),
            self.delivery_limit,
        )?;
        let link = Link::connect(&self.url, self.heartbeat).await?;
        topology.declare(&link.open().await?).await?;
        Ok(Subscriber {
            shared: Arc::new(Shared {
                link,
                source: Arc::from(topology.queue.as_str()),
                topology,
                group: self.group,
                prefetch: self.prefetch,
            }),
        })
    }
}

impl Subscriber {
    /// Connects to `url` (`amqp://user:password@host:port/vhost`), declares
    /// the quorum queue `queue` and its dead-letter queue `<queue>.dead` if
    /// they are missing, and consumes as a member of `group`. See
    /// [`builder`](Self::builder) for the settings.
    pub async fn connect(
        url: impl Into<String>,
        queue: impl Into<String>,
        group: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        Self::builder(url, queue, group).connect().await
    }

    /// The settings of a subscriber to `queue` on `url`, as a member of
    /// `group` (its consumer tags start with it).
    pub fn builder(
        url: impl Into<String>,
        queue: impl Into<String>,
        group: impl Into<String>,
    ) -> SubscriberBuilder {
        SubscriberBuilder {
            url: url.into(),
            queue: queue.into(),
            group: group.into(),
            prefetch: DEFAULT_PREFETCH,
            heartbeat: None,
            dead_letter_queue: None,
            delivery_limit: None,
        }
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        self.shared.topology.queue.as_str()
    }

    /// The queue its dead letters go to.
    pub fn dead_letter_queue(&self) -> &str {
        self.shared.topology.dead_letter_queue.as_str()
    }

    /// The deliveries of a new member of the group: a channel of its own,
    /// with its [`prefetch`](SubscriberBuilder::prefetch), consuming the
    /// queue. The stream ends when the channel or the connection closes
    /// (after an error item): call `deliveries` again to rejoin (on a new
    /// connection if the last one closed).
    ///
    /// Dropping the stream, and the deliveries it gave that are not
    /// settled, closes the channel; RabbitMQ delivers what the member had
    /// not settled to the other members. Deliveries still being handled
    /// when the stream is dropped (a shutdown) keep it open until they are
    /// settled.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use idempotent_consumer::{Consumer, amqp::Subscriber};
    ///
    /// # async fn run(subscriber: Subscriber, consumer: Consumer) {
    /// // A service's loop: it rejoins when its stream ends.
    /// loop {
    ///     consumer
    ///         .consume(subscriber.deliveries(), |message| async move {
    ///             println!("{:?}", message.id);
    ///             Ok::<_, std::io::Error>(())
    ///         })
    ///         .await;
    ///     tokio::time::sleep(Duration::from_secs(1)).await;
    /// }
    /// # }
    /// ```
    pub fn deliveries(
        &self,
    ) -> impl Stream<Item = Result<AmqpDelivery, BrokerError>> + Send + Unpin + 'static {
        let shared = Arc::clone(&self.shared);
        stream::once(async move { Member::join(shared).await })
            .flat_map(|joined| match joined {
                Ok(member) => member.deliveries().left_stream(),
                Err(error) => stream::iter([Err(error)]).right_stream(),
            })
            .boxed()
    }
}

/// One member's channel and its consumer on the queue.
struct Member {
    shared: Arc<Shared>,
    channel: Channel,
    consumer: lapin::Consumer,
}

impl Member {
    async fn join(shared: Arc<Shared>) -> Result<Self, BrokerError> {
        let channel = shared.link.open().await?;
        channel
            .basic_qos(shared.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| BrokerError::new("set the prefetch", e))?;
        let tag = format!(
            "{}-{}-{}",
            shared.group,
            std::process::id(),
            MEMBERS.fetch_add(1, Ordering::Relaxed)
        );
        let tag =
            ShortString::try_new(tag).map_err(|e| BrokerError::new("name the consumer", e))?;
        let consumer = channel
            .basic_consume(
                shared.topology.queue.clone(),
                tag,
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BrokerError::new("consume", e))?;
        Ok(Self {
            shared,
            channel,
            consumer,
        })
    }

    /// The consumer's deliveries; the channel stays open as long as the
    /// stream or one of its deliveries lives.
    fn deliveries(self) -> impl Stream<Item = Result<AmqpDelivery, BrokerError>> + Send + 'static {
        let Self {
            shared,
            channel,
            consumer,
        } = self;
        consumer.map(move |delivery| {
            delivery
                .map(|delivery| AmqpDelivery::new(&shared, &channel, delivery))
                .map_err(|e| BrokerError::new("receive", e))
        })
    }
}
