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
//!   header; [`Message::attempt`] is that count plus one. RabbitMQ has no
//!   delayed negative acknowledgement, so [`Delivery::retry`] holds the
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
//!   [`reason`](DeadLetter::reason)) and `Idempotent-Dead-Letter-Detail`;
//!   then the original is acknowledged. A crash between the two delivers
//!   the message again, to be judged again: its dead letter may come twice,
//!   the message is never lost.
//! - **No deduplication.** [`Published::duplicate`] is always `false`: the
//!   broker cannot tell; the consumer drops the duplicates.
//! - **Consumer timeout.** RabbitMQ closes a channel whose delivery stays
//!   unacknowledged longer than its `consumer_timeout` (30 minutes by
//!   default), for instance while the idempotency store is down for that
//!   long: the deliveries go back to the queue and the stream ends.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt as _};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// The header with a dead letter's [`reason`](DeadLetter::reason).
const REASON_HEADER: &str = "Idempotent-Dead-Letter";
/// The header with a dead letter's explanation (its `Display`).
const DETAIL_HEADER: &str = "Idempotent-Dead-Letter-Detail";
/// The header in which quorum queues count a message's earlier deliveries.
const DELIVERY_COUNT_HEADER: &str = "x-delivery-count";
/// Deliveries a member has unacknowledged at once, by default: as many as a
/// [`Consumer`](crate::Consumer) handles at once by default.
pub const DEFAULT_PREFETCH: u16 = 16;
/// Tries of one publish before a [`Publisher`] gives up (waiting 100 ms,
/// then twice as long each time, in between: 1.5 s in all).
const PUBLISH_TRIES: u32 = 5;
/// Persistent delivery mode: the message is written to disk.
const PERSISTENT: u8 = 2;
/// How long a message whose dead letter was not confirmed waits before it
/// is handed back (so a missing dead-letter queue is not a busy loop).
const DEAD_LETTER_PAUSE: Duration = Duration::from_secs(1);
/// A negative acknowledgement that puts the message back in the queue.
const REQUEUE: BasicNackOptions = BasicNackOptions {
    multiple: false,
    requeue: true,
};

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
struct Shared {
    /// The connection, and the channel dead letters are published on.
    link: Link,
    /// The queue's name, every message's source.
    source: Arc<str>,
    topology: Topology,
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
    /// Dropping the stream closes the channel, and RabbitMQ delivers what
    /// the member had not settled to the other members.
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

    /// The consumer's deliveries; the channel lives (and stays open) as
    /// long as the stream.
    fn deliveries(self) -> impl Stream<Item = Result<AmqpDelivery, BrokerError>> + Send + 'static {
        let Self {
            shared,
            channel,
            consumer,
        } = self;
        consumer.map(move |delivery| {
            let _open = &channel;
            delivery
                .map(|delivery| AmqpDelivery::new(&shared, delivery))
                .map_err(|e| BrokerError::new("receive", e))
        })
    }
}

/// One delivery from a RabbitMQ queue, for
/// [`Consumer::handle`](crate::Consumer::handle): see [`Delivery`] for how
/// it is settled, and [the module docs](self) for what each does on
/// RabbitMQ.
///
/// Its [`Message`]: the source is the queue's name; the id is the
/// `message_id` property (none when it is missing or empty); the headers
/// are those with a text form (UTF-8 strings, numbers, booleans, in name
/// order: AMQP tables have none of their own), others are left out; the
/// attempt is 1 on a first delivery (whatever `x-delivery-count` header
/// the producer set), then the quorum queue's `x-delivery-count` plus one.
///
/// A delivery dropped unsettled (its handler panicked, its task was
/// aborted) is handed back to the queue at once, as a `basic.nack` with
/// `requeue`, rather than held until its channel closes.
pub struct AmqpDelivery {
    message: Message,
    /// Taken when the delivery is settled.
    acker: Option<lapin::Acker>,
    properties: BasicProperties,
    shared: Arc<Shared>,
}

impl fmt::Debug for AmqpDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpDelivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl AmqpDelivery {
    fn new(shared: &Arc<Shared>, delivery: lapin::message::Delivery) -> Self {
        let lapin::message::Delivery {
            redelivered,
            properties,
            data,
            acker,
            ..
        } = delivery;
        Self {
            message: message_of(Arc::clone(&shared.source), &properties, data, redelivered),
            acker: Some(acker),
            properties,
            shared: Arc::clone(shared),
        }
    }

    /// The acker, taken: the delivery is being settled.
    fn take(&mut self) -> Result<lapin::Acker, BrokerError> {
        self.acker
            .take()
            .ok_or_else(|| BrokerError::new("settle", "the delivery was settled before"))
    }

    /// Acknowledges it.
    async fn acknowledge(mut self) -> Result<(), BrokerError> {
        let acker = self.take()?;
        Self::settled("ack", acker.ack(BasicAckOptions::default()).await)
    }

    /// Hands it back to the queue, which counts the delivery.
    async fn hand_back(mut self) -> Result<(), BrokerError> {
        let acker = self.take()?;
        Self::settled("nack", acker.nack(REQUEUE).await)
    }

    /// Settles the delivery with `action`; `false` from lapin means the
    /// channel closed first, so the broker delivers it again.
    fn settled(action: &'static str, done: lapin::Result<bool>) -> Result<(), BrokerError> {
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(BrokerError::new(
                action,
                "the channel closed first; the broker delivers the message again",
            )),
            Err(e) => Err(BrokerError::new(action, e)),
        }
    }
}

impl Delivery for AmqpDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.acknowledge().await
    }

    /// Holds the message for `delay`, then hands it back (`basic.nack` with
    /// `requeue`); the quorum queue counts the delivery.
    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        tokio::time::sleep(delay).await;
        self.hand_back().await
    }

    /// Publishes a copy (the payload, the id, the headers but
    /// `x-delivery-count`) with the reason headers to the dead-letter
    /// queue, waits for the broker's confirm, then acknowledges the
    /// original. A
    /// copy the broker did not confirm hands the original back after a
    /// pause, to be dead-lettered on its next delivery.
    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        // The original's headers but the queue's delivery count, which a
        // consumer of the dead letters would take for its own.
        let mut headers: FieldTable = self
            .properties
            .headers()
            .iter()
            .flat_map(|headers| headers.inner().clone())
            .filter(|(name, _)| name.as_str() != DELIVERY_COUNT_HEADER)
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        headers.insert(
            REASON_HEADER.into(),
            AMQPValue::LongString(letter.reason().into()),
        );
        headers.insert(
            DETAIL_HEADER.into(),
            AMQPValue::LongString(letter.to_string().into()),
        );
        let properties = copy(&self.properties).with_headers(headers);
        let published = self
            .shared
            .link
            .publish(
                &self.shared.topology.dead_letter_queue,
                &self.message.payload,
                properties,
            )
            .await;
        if let Err(error) = published {
            tokio::time::sleep(DEAD_LETTER_PAUSE).await;
            if let Err(error) = self.hand_back().await {
                tracing::warn!(%error, "could not hand back a message whose dead letter failed");
            }
            return Err(BrokerError::new("dead-letter", error));
        }
        self.acknowledge().await
    }
}

impl Drop for AmqpDelivery {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        // Outside a runtime, the channel's closing hands it back.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = acker.nack(REQUEUE).await;
            });
        }
    }
}

/// The message a handler sees, from an AMQP delivery: the id from
/// `message_id` (none when missing or empty), the headers that have a text
/// form, and the attempt from the quorum queue's `x-delivery-count` on a
/// redelivery.
fn message_of(
    source: Arc<str>,
    properties: &BasicProperties,
    data: Vec<u8>,
    redelivered: bool,
) -> Message {
    let mut message = Message::new(source, data);
    message.id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty());
    let mut earlier = 0;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers {
            if name.as_str() == DELIVERY_COUNT_HEADER {
                earlier = count(value).unwrap_or(0);
            }
            if let Some(text) = text(value) {
                message.headers.push((name.as_str().to_owned(), text));
            }
        }
    }
    // A first delivery is the first whatever its headers say: RabbitMQ
    // keeps an `x-delivery-count` the producer set (or a copy carried from
    // another queue) until it counts a redelivery itself. A broker that
    // redelivers without counting (a classic queue) still says so.
    message.attempt = if redelivered {
        earlier.saturating_add(1).max(2)
    } else {
        1
    };
    message
}

/// A header value's text: strings that are UTF-8, numbers, booleans;
/// `None` for byte arrays, tables, arrays and the rest.
fn text(value: &AMQPValue) -> Option<String> {
    if let Some(n) = integer(value) {
        return Some(n.to_string());
    }
    Some(match value {
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
}

/// An integer header value as a count (negative is 0, too large saturates).
fn count(value: &AMQPValue) -> Option<u32> {
    integer(value).map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// An integer header value, whatever its width.
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        _ => return None,
    })
}

/// The properties a dead letter keeps from its original: the id, content
/// type and encoding, correlation id, timestamp, type, app id, priority;
/// persistent. Not the expiration (a dead letter is kept), the reply-to,
/// nor the user id (RabbitMQ refuses a publish whose user id is not the
/// connection's).
fn copy(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(id) = original.message_id() {
        copy = copy.with_message_id(id.clone());
    }
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    copy
}

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
    /// `queue`. The queue is declared as [`Subscriber`] declares it by
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

/// Why a publish was not confirmed.
#[derive(Debug, thiserror::Error)]
enum Unconfirmed {
    #[error("no queue took the message (does the queue exist?)")]
    Unroutable,
    #[error("the broker refused the message (negative confirm)")]
    Refused,
    #[error(transparent)]
    Broker(#[from] lapin::Error),
    #[error(transparent)]
    Channel(#[from] BrokerError),
}

/// A connection, connected again when it closed, and a channel on it with
/// publisher confirms, opened again when it closed.
struct Link {
    /// Where to connect (it may hold a password: never printed).
    uri: AMQPUri,
    linked: tokio::sync::Mutex<Linked>,
}

struct Linked {
    connection: Connection,
    confirms: Option<Channel>,
}

impl Link {
    /// Connects to `url`, with `heartbeat` if given.
    async fn connect(url: &str, heartbeat: Option<Duration>) -> Result<Self, BrokerError> {
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e: String| BrokerError::new("parse the AMQP url", e))?;
        if let Some(interval) = heartbeat {
            let seconds = u16::try_from(interval.as_secs().max(1)).unwrap_or(u16::MAX);
            uri.query.heartbeat = Some(seconds);
        }
        let connection = connect(&uri).await?;
        Ok(Self {
            uri,
            linked: tokio::sync::Mutex::new(Linked {
                connection,
                confirms: None,
            }),
        })
    }

    /// The connection, connected again if it closed.
    async fn linked(&self) -> Result<tokio::sync::MutexGuard<'_, Linked>, BrokerError> {
        let mut linked = self.linked.lock().await;
        if !linked.connection.status().connected() {
            linked.connection = connect(&self.uri).await?;
            linked.confirms = None;
        }
        Ok(linked)
    }

    /// A new channel.
    async fn open(&self) -> Result<Channel, BrokerError> {
        self.linked()
            .await?
            .connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::new("open a channel", e))
    }

    /// The channel with publisher confirms, opened again if it closed.
    async fn confirms(&self) -> Result<Channel, BrokerError> {
        let mut linked = self.linked().await?;
        if let Some(channel) = &linked.confirms
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let channel = linked
            .connection
            .create_channel()
            .await
            .map_err(|e| BrokerError::new("open a channel", e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| BrokerError::new("turn publisher confirms on", e))?;
        linked.confirms = Some(channel.clone());
        Ok(channel)
    }

    /// Publishes to `queue` through the default exchange, mandatory (so a
    /// missing queue is an error, not a silent drop), and waits for the
    /// broker's confirm.
    async fn publish(
        &self,
        queue: &ShortString,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), Unconfirmed> {
        let channel = self.confirms().await?;
        let confirmation = channel
            .basic_publish(
                ShortString::default(),
                queue.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                payload,
                properties,
            )
            .await?
            .await?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(Unconfirmed::Unroutable),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(Unconfirmed::Refused),
        }
    }
}

/// A queue and its dead-letter queue, as they are declared.
struct Topology {
    queue: ShortString,
    dead_letter_queue: ShortString,
    delivery_limit: Option<u32>,
}

impl Topology {
    fn new(
        queue: &str,
        dead_letter_queue: Option<&str>,
        delivery_limit: Option<u32>,
    ) -> Result<Self, BrokerError> {
        let name = |name: String| {
            ShortString::try_new(name).map_err(|e| BrokerError::new("name the queue", e))
        };
        Ok(Self {
            queue: name(queue.to_owned())?,
            dead_letter_queue: name(
                dead_letter_queue.map_or_else(|| format!("{queue}.dead"), str::to_owned),
            )?,
            delivery_limit,
        })
    }

    /// Declares both queues, durable quorum queues, the dead-letter one
    /// first; does nothing to queues that exist with the same arguments.
    async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), long_string("quorum"));
        channel
            .queue_declare(self.dead_letter_queue.clone(), durable, quorum.clone())
            .await
            .map_err(|e| BrokerError::new("declare the dead-letter queue", e))?;
        let mut arguments = quorum;
        arguments.insert("x-dead-letter-exchange".into(), long_string(""));
        arguments.insert(
            "x-dead-letter-routing-key".into(),
            long_string(self.dead_letter_queue.as_str()),
        );
        if let Some(limit) = self.delivery_limit {
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(limit.into()),
            );
        }
        channel
            .queue_declare(self.queue.clone(), durable, arguments)
            .await
            .map_err(|e| BrokerError::new("declare the queue", e))?;
        Ok(())
    }
}

fn long_string(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

async fn connect(uri: &AMQPUri) -> Result<Connection, BrokerError> {
    Connection::connect_uri(uri.clone(), ConnectionProperties::default())
        .await
        .map_err(|e| BrokerError::new("connect", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(headers: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_first_delivery_is_attempt_one_with_its_id_and_text_headers() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), long_string("acme"));
        headers.insert("retries".into(), AMQPValue::LongInt(3));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        let properties = properties(headers).with_message_id("order-1".into());
        let message = message_of("orders".into(), &properties, b"body".to_vec(), false);
        assert_eq!(message.id.as_deref(), Some("order-1"));
        assert_eq!(&*message.source, "orders");
        assert_eq!(&message.payload[..], b"body");
        assert_eq!(message.attempt, 1);
        assert_eq!(message.header("tenant"), Some("acme"));
        assert_eq!(message.header("retries"), Some("3"));
        assert_eq!(message.header("flag"), Some("true"));
    }

    #[test]
    fn bad_headers_are_skipped_not_fatal() {
        let mut headers = FieldTable::default();
        headers.insert(
            "binary".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, 0x00])),
        );
        headers.insert("bytes".into(), AMQPValue::ByteArray(vec![1, 2].into()));
        headers.insert("table".into(), AMQPValue::FieldTable(FieldTable::default()));
        headers.insert("nothing".into(), AMQPValue::Void);
        headers.insert("ok".into(), long_string("yes"));
        let message = message_of("q".into(), &properties(headers), Vec::new(), false);
        assert_eq!(message.headers, [("ok".to_owned(), "yes".to_owned())]);
        assert_eq!(message.id, None, "no message_id");
    }

    #[test]
    fn an_empty_message_id_is_no_id() {
        let properties = BasicProperties::default().with_message_id("".into());
        assert_eq!(
            message_of("q".into(), &properties, Vec::new(), false).id,
            None
        );
    }

    #[test]
    fn the_attempt_is_the_delivery_count_plus_one() {
        for (value, redelivered, attempt) in [
            (AMQPValue::LongLongInt(2), true, 3),
            (AMQPValue::LongInt(-5), true, 2),
            (AMQPValue::LongLongInt(i64::MAX), true, u32::MAX),
            (long_string("not a number"), true, 2),
            (AMQPValue::LongLongInt(5), false, 1),
        ] {
            let mut headers = FieldTable::default();
            headers.insert(DELIVERY_COUNT_HEADER.into(), value.clone());
            let message = message_of("q".into(), &properties(headers), Vec::new(), redelivered);
            assert_eq!(message.attempt, attempt, "{value:?}");
        }
        let redelivered = message_of("q".into(), &BasicProperties::default(), Vec::new(), true);
        assert_eq!(redelivered.attempt, 2, "redelivered, uncounted");
    }

    #[test]
    fn a_dead_letter_keeps_the_id_and_drops_what_the_broker_would_refuse() {
        let original = BasicProperties::default()
            .with_message_id("order-1".into())
            .with_user_id("someone-else".into())
            .with_expiration("1000".into())
            .with_content_type("application/json".into());
        let copy = copy(&original);
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("order-1")
        );
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.delivery_mode(), &Some(PERSISTENT));
        assert!(copy.content_type().is_some());
    }
}
