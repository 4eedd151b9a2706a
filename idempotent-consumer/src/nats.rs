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
//!   ([`Message::attempt`]), and after
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
//! One message async-nats cannot read stalls its consumers: a header that
//! is not UTF-8 (another client published it) or a malformed header name
//! fails async-nats' connection before this module sees the message, and
//! the messages read with it are lost with it. JetStream delivers them
//! again after `ack_wait`, the unreadable one first, and again: the member
//! makes no progress. Remove such a message from the stream (`nats stream
//! rmm`); this crate's [`Publisher`] cannot publish one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, AckKind, stream};
use bytes::Bytes;
use futures_util::{Stream, StreamExt as _, stream as streams};
use idempotent_core::IdempotencyKey;

use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// How long JetStream waits for a delivery to be settled before it delivers
/// it again (JetStream's own default).
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries a member asks JetStream for at once: the consumer's default
/// [`concurrency`](crate::ConsumerBuilder::concurrency).
pub const DEFAULT_PREFETCH: usize = 16;

/// The header JetStream deduplicates by, and the message's id.
const ID: &str = "Nats-Msg-Id";
/// The dead letter's reason.
const REASON: &str = "Idempotent-Dead-Letter";
/// The dead letter's reason, as text.
const DETAIL: &str = "Idempotent-Dead-Letter-Detail";
/// The longest a dead letter's detail header grows.
const MAX_DETAIL: usize = 1024;
/// The shortest duplicate window JetStream accepts (2.9 refuses less), the
/// dead-letter stream's.
const MIN_DUPLICATE_WINDOW: Duration = Duration::from_millis(100);
/// How long a dead letter JetStream took for a duplicate is published again.
const DEAD_LETTER_PATIENCE: Duration = Duration::from_secs(2);
/// Idle heartbeats of a member's pull requests.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// A member of a consumer group on a JetStream stream: its
/// [`deliveries`](Subscriber::deliveries) go to a
/// [`Consumer`](crate::Consumer). Every member of the group `group` shares
/// one durable pull consumer, so each message goes to one member at a time.
///
/// Cheap to clone; the clones share the connection.
///
/// ```no_run
/// use std::time::Duration;
///
/// use futures_util::StreamExt as _;
/// use idempotent_consumer::Delivery as _;
/// use idempotent_consumer::nats::Subscriber;
///
/// # #[tokio::main] async fn main() -> Result<(), idempotent_consumer::BrokerError> {
/// let subscriber = Subscriber::builder("nats://127.0.0.1:4222", "orders", "shipping")
///     .ack_wait(Duration::from_secs(60))
///     .prefetch(32)
///     .dead_letter_subject("orders-rejected")
///     .connect()
///     .await?;
/// let mut deliveries = subscriber.deliveries();
/// while let Some(delivery) = deliveries.next().await {
///     // Usually `Consumer::consume` takes the stream; by hand:
///     let delivery = delivery?;
///     println!("{:?}, delivery {}", delivery.message().id, delivery.message().attempt);
///     delivery.ack().await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Joined>,
}

struct Joined {
    consumer: PullConsumer,
    source: Arc<str>,
    dead_letter_subject: Arc<str>,
    prefetch: usize,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("stream", &self.inner.source)
            .field("group", &self.inner.consumer.cached_info().name)
            .field("dead_letter_subject", &self.inner.dead_letter_subject)
            .field("prefetch", &self.inner.prefetch)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Subscriber`]; see [`Subscriber::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connected"]
pub struct SubscriberBuilder {
    url: String,
    subject: String,
    group: String,
    ack_wait: Duration,
    prefetch: usize,
    dead_letter_subject: Option<String>,
    duplicate_window: Option<Duration>,
}

impl SubscriberBuilder {
    /// How long JetStream waits for a delivery to be settled before it
    /// delivers it again, to any member: the redelivery time of a crashed
    /// member's deliveries; [`DEFAULT_ACK_WAIT`] by default. Applied to the
    /// group's JetStream consumer when it is created or updated.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Deliveries this member asks for at once (at least 1), each held
    /// until settled; [`DEFAULT_PREFETCH`] by default. More than the
    /// consumer's concurrency only lets deliveries wait here, their
    /// `ack_wait` running, while other members are idle.
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The subject dead letters are published to;
    /// `<stream>-dead-letter` by default. Unless a stream captures it
    /// already, a stream of the same name (`.` `*` `>` and spaces made
    /// `_`) is created for it. It must not be captured by the stream
    /// consumed: [`connect`](Self::connect) refuses that.
    pub fn dead_letter_subject(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter_subject = Some(subject.into());
        self
    }

    /// The duplicate window of the stream, when the subscriber creates it:
    /// a second publish of one `Nats-Msg-Id` within it is dropped by
    /// JetStream. 2 minutes (JetStream's default) unless set; JetStream
    /// accepts no less than 100 ms. An existing stream keeps its own.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = Some(window);
        self
    }

    /// Connects, declares what is missing (the stream capturing the
    /// subject, the dead-letter stream, the group's durable consumer) and
    /// joins the group. Declaring is idempotent: members may start at once.
    pub async fn connect(self) -> Result<Subscriber, BrokerError> {
        let jetstream = jetstream_at(&self.url).await?;
        let stream = declare_stream(&jetstream, &self.subject, self.duplicate_window).await?;
        let dead_letter_subject = self
            .dead_letter_subject
            .unwrap_or_else(|| format!("{stream}-dead-letter"));
        let dead_letters =
            declare_stream(&jetstream, &dead_letter_subject, Some(MIN_DUPLICATE_WINDOW)).await?;
        if dead_letters == stream {
            return Err(BrokerError::new(
                "connect",
                format!(
                    "the dead-letter subject `{dead_letter_subject}` is captured by the stream `{stream}` \
                     the subscriber consumes: dead letters would come back; choose another subject"
                ),
            ));
        }
        let consumer = jetstream
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(self.group.clone()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: self.ack_wait,
                    filter_subject: self.subject.clone(),
                    ..pull::Config::default()
                },
                &stream,
            )
            .await
            .map_err(|e| BrokerError::new("join the group", e))?;
        Ok(Subscriber {
            inner: Arc::new(Joined {
                consumer,
                source: stream.into(),
                dead_letter_subject: dead_letter_subject.into(),
                prefetch: self.prefetch,
            }),
        })
    }
}

impl Subscriber {
    /// Connects to `url`, declares the stream capturing `subject` (named
    /// after it) and the group's durable consumer `group` if missing, and
    /// joins the group; with the default settings ([`builder`](Self::builder)
    /// for others).
    pub async fn connect(url: &str, subject: &str, group: &str) -> Result<Self, BrokerError> {
        Self::builder(url, subject, group).connect().await
    }

    /// The settings of a member of `group` consuming `subject` at `url`.
    pub fn builder(
        url: impl Into<String>,
        subject: impl Into<String>,
        group: impl Into<String>,
    ) -> SubscriberBuilder {
        SubscriberBuilder {
            url: url.into(),
            subject: subject.into(),
            group: group.into(),
            ack_wait: DEFAULT_ACK_WAIT,
            prefetch: DEFAULT_PREFETCH,
            dead_letter_subject: None,
            duplicate_window: None,
        }
    }

    /// The stream consumed: every message's [`source`](Message::source).
    pub fn stream(&self) -> &str {
        &self.inner.source
    }

    /// The subject dead letters are published to.
    pub fn dead_letter_subject(&self) -> &str {
        &self.inner.dead_letter_subject
    }

    /// This member's deliveries, pulled [`prefetch`](SubscriberBuilder::prefetch)
    /// at a time, for [`Consumer::consume`](crate::Consumer::consume). Each
    /// call is a new pull of the same group. Dropping the stream leaves
    /// what it had not settled to JetStream, which delivers it again after
    /// `ack_wait`. A pull JetStream refuses (the group's consumer was
    /// deleted, say) is one error, and the end of the stream.
    pub fn deliveries(
        &self,
    ) -> impl Stream<Item = Result<NatsDelivery, BrokerError>> + Send + Unpin + 'static {
        let joined = Arc::clone(&self.inner);
        streams::once(Box::pin(async move {
            let pulled = joined
                .consumer
                .stream()
                .max_messages_per_batch(joined.prefetch)
                .heartbeat(HEARTBEAT)
                .messages()
                .await;
            (joined, pulled)
        }))
        .flat_map(|(joined, pulled)| match pulled {
            Ok(messages) => messages
                .map(move |message| match message {
                    Ok(message) => Ok(NatsDelivery::new(&joined, message)),
                    Err(error) => Err(BrokerError::new("receive", error)),
                })
                .left_stream(),
            Err(error) => streams::iter([Err(BrokerError::new("pull", error))]).right_stream(),
        })
    }
}

/// One JetStream delivery, for [`Consumer::handle`](crate::Consumer::handle).
///
/// | [`Delivery`] | JetStream |
/// |---|---|
/// | [`ack`](Delivery::ack) | `+ACK` |
/// | [`retry`](Delivery::retry)`(delay)` | `-NAK` with the delay |
/// | [`dead_letter`](Delivery::dead_letter) | a publish to the dead-letter subject, then `+TERM` |
/// | [`in_progress`](Delivery::in_progress) | `+WPI`: `ack_wait` starts again |
pub struct NatsDelivery {
    message: Message,
    delivery: jetstream::Message,
    dead_letter_subject: Arc<str>,
}

impl fmt::Debug for NatsDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsDelivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl NatsDelivery {
    fn new(joined: &Joined, delivery: jetstream::Message) -> Self {
        let attempt = match delivery.info() {
            Ok(info) => u32::try_from(info.delivered.max(1)).unwrap_or(u32::MAX),
            Err(error) => {
                tracing::warn!(%error, "a delivery without JetStream's delivery count; taken as the first");
                1
            }
        };
        let message = message_of(
            Arc::clone(&joined.source),
            delivery.headers.as_ref(),
            delivery.payload.clone(),
        )
        .with_attempt(attempt);
        Self {
            message,
            delivery,
            dead_letter_subject: Arc::clone(&joined.dead_letter_subject),
        }
    }

    async fn settle(&self, action: &'static str, kind: AckKind) -> Result<(), BrokerError> {
        self.delivery
            .ack_with(kind)
            .await
            .map_err(|e| BrokerError::new(action, e))
    }

    /// Publishes the dead letter and waits for the dead-letter stream to
    /// store it: one JetStream took for a duplicate (a dead letter of the
    /// same id moments before) is published again once the window is past.
    async fn publish_dead_letter(&self, letter: &DeadLetter) -> Result<(), BrokerError> {
        let headers = dead_letter_headers(self.delivery.headers.as_ref(), letter);
        let context = &self.delivery.context;
        let deadline = Instant::now() + DEAD_LETTER_PATIENCE;
        loop {
            let ack = store(
                context,
                "dead-letter",
                &self.dead_letter_subject,
                headers.clone(),
                self.delivery.payload.clone(),
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
            self.in_progress().await?;
            tokio::time::sleep(MIN_DUPLICATE_WINDOW / 2).await;
        }
    }
}

impl Delivery for NatsDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        self.settle("ack", AckKind::Ack).await
    }

    async fn retry(self, delay: Duration) -> Result<(), BrokerError> {
        self.settle("nak", AckKind::Nak(Some(delay))).await
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        self.publish_dead_letter(letter).await?;
        self.settle("term", AckKind::Term).await
    }

    async fn in_progress(&self) -> Result<(), BrokerError> {
        self.settle("in progress", AckKind::Progress).await
    }
}

/// Publishes to a JetStream subject with a stable message id, so a retried
/// publish is not a second message: JetStream drops a publish whose
/// `Nats-Msg-Id` the stream stored within its duplicate window.
///
/// Cheap to clone; the clones share the connection.
///
/// ```no_run
/// use idempotent_consumer::nats::Publisher;
///
/// # #[tokio::main] async fn main() -> Result<(), idempotent_consumer::BrokerError> {
/// let publisher = Publisher::connect("nats://127.0.0.1:4222", "orders").await?;
/// for _ in 0..3 {
///     // A producer retrying after a timeout: one message in the stream.
///     let published = publisher.publish("order-42", "order 42").await?;
///     println!("sequence {}, duplicate: {}", published.sequence, published.duplicate);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    jetstream: jetstream::Context,
    subject: Arc<str>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// What JetStream said of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// `true`: the stream had stored a message with this id within its
    /// duplicate window, and did not store this one.
    pub duplicate: bool,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream (the earlier message's, for a duplicate).
    pub sequence: u64,
}

impl Publisher {
    /// Connects to `url` to publish to `subject`, and declares the stream
    /// capturing it (named after it, JetStream's default duplicate window)
    /// if none does yet.
    pub async fn connect(url: &str, subject: &str) -> Result<Self, BrokerError> {
        let jetstream = jetstream_at(url).await?;
        declare_stream(&jetstream, subject, None).await?;
        Ok(Self {
            jetstream,
            subject: subject.into(),
        })
    }

    /// The subject published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Publishes `payload` with the message id `id` (the `Nats-Msg-Id`
    /// header, the consumers' key) and waits for the stream to store it.
    /// Publish again with the same id after an error or a timeout: within
    /// the stream's duplicate window JetStream stores it once, and says
    /// [`duplicate`](Published::duplicate). `id` must be a valid
    /// idempotency key (visible ASCII, 1 to 255 bytes).
    pub async fn publish(
        &self,
        id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        let id = IdempotencyKey::parse(id).map_err(|e| BrokerError::new("publish", e))?;
        let mut headers = HeaderMap::new();
        headers.insert(ID, id.as_str());
        let ack = store(
            &self.jetstream,
            "publish",
            &self.subject,
            headers,
            payload.into(),
        )
        .await?;
        Ok(Published {
            duplicate: ack.duplicate,
            stream: ack.stream,
            sequence: ack.sequence,
        })
    }
}

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

async fn jetstream_at(url: &str) -> Result<jetstream::Context, BrokerError> {
    let client = async_nats::connect(url)
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

/// A delivered message as a handler sees it. Header names come sorted (a
/// NATS header map keeps no order), each name's values in their order.
fn message_of(source: Arc<str>, headers: Option<&HeaderMap>, payload: Bytes) -> Message {
    let mut message = Message::new(source, payload);
    if let Some(headers) = headers {
        let mut names: Vec<_> = headers.iter().collect();
        names.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(b.0.as_ref()));
        for (name, values) in names {
            let name: &str = name.as_ref();
            for value in values {
                message = message.with_header(name, value.as_str());
            }
        }
    }
    if let Some(id) = message.header(ID).filter(|id| !id.is_empty()) {
        let id = id.to_owned();
        message = message.with_id(id);
    }
    message
}

/// The dead letter's headers: the original's (its `Nats-Msg-Id` too, but
/// none of JetStream's other publish directives: an expected stream or
/// sequence would refuse it, a rollup purge the dead-letter stream), the
/// reason and its text.
fn dead_letter_headers(original: Option<&HeaderMap>, letter: &DeadLetter) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let text: &str = name.as_ref();
        let directive = text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-");
        if (directive && !text.eq_ignore_ascii_case(ID))
            || text.eq_ignore_ascii_case(REASON)
            || text.eq_ignore_ascii_case(DETAIL)
        {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(REASON, letter.reason());
    let mut detail = letter.to_string();
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    headers.insert(DETAIL, detail);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_are_valid_for_any_subject() {
        assert_eq!(stream_name("orders"), "orders");
        assert_eq!(stream_name("orders.eu.*"), "orders_eu__");
        assert_eq!(stream_name("a b\t>"), "a_b__");
    }

    #[test]
    fn a_message_takes_its_id_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("Tenant", "acme");
        headers.insert(ID, "order-7");
        let message = message_of("orders".into(), Some(&headers), Bytes::from_static(b"7"));
        assert_eq!(message.id.as_deref(), Some("order-7"));
        assert_eq!(message.header("tenant"), Some("acme"));
        assert_eq!(&*message.source, "orders");
        let bare = message_of("orders".into(), None, Bytes::new());
        assert_eq!((bare.id, bare.headers.len()), (None, 0));
    }

    #[test]
    fn dead_letters_keep_the_original_headers_but_no_directives() {
        let mut original = HeaderMap::new();
        original.insert(ID, "order-7");
        original.insert("Nats-Expected-Stream", "elsewhere");
        original.insert("Nats-Rollup", "all");
        original.insert(REASON, "forged");
        original.insert("Tenant", "acme");
        let letter = DeadLetter::Failed {
            key: "order-7".into(),
            attempts: 3,
            error: format!("line one\r\nline two {}", "é".repeat(MAX_DETAIL)),
        };
        let headers = dead_letter_headers(Some(&original), &letter);
        let message = message_of("dead".into(), Some(&headers), Bytes::new());
        assert_eq!(message.id.as_deref(), Some("order-7"));
        assert_eq!(message.header("Tenant"), Some("acme"));
        assert_eq!(message.header(REASON), Some("failed"));
        assert_eq!(message.header("Nats-Expected-Stream"), None);
        assert_eq!(message.header("Nats-Rollup"), None);
        let detail = message.header(DETAIL).unwrap();
        assert!(detail.len() <= MAX_DETAIL && !detail.contains(['\r', '\n']));
    }
}
