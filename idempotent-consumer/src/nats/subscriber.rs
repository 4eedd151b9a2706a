//! A member of a consumer group: the stream, the dead-letter stream and the
//! group's durable pull consumer declared, and its deliveries.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use futures_util::{Stream, StreamExt as _, stream as streams};
use tokio::sync::watch;

use super::delivery::NatsDelivery;
use super::unreadable;
use super::{
    DEFAULT_ACK_WAIT, DEFAULT_PREFETCH, HEARTBEAT, MIN_DUPLICATE_WINDOW, declare_stream,
    jetstream_at,
};
use crate::error::BrokerError;

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

pub(super) struct Joined {
    pub(super) jetstream: jetstream::Context,
    pub(super) consumer: PullConsumer,
    pub(super) group: String,
    pub(super) source: Arc<str>,
    pub(super) dead_letter_subject: Arc<str>,
    pub(super) prefetch: usize,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("stream", &self.inner.source)
            .field("group", &self.inner.group)
            .field("dead_letter_subject", &self.inner.dead_letter_subject)
            .field("prefetch", &self.inner.prefetch)
            .finish_non_exhaustive()
    }
}

/// Settings of a [`Subscriber`]; see [`Subscriber::builder`].
#[derive(Clone)]
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

impl fmt::Debug for SubscriberBuilder {
    /// Without the URL, which may hold credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberBuilder")
            .field("subject", &self.subject)
            .field("group", &self.group)
            .field("ack_wait", &self.ack_wait)
            .field("prefetch", &self.prefetch)
            .field("dead_letter_subject", &self.dead_letter_subject)
            .field("duplicate_window", &self.duplicate_window)
            .finish_non_exhaustive()
    }
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
        // Each time the connection is back, the group's unsettled messages
        // are looked at for one async-nats could not read (`unreadable`).
        let connected = Arc::new(watch::channel(0).0);
        let mut reconnects = connected.subscribe();
        reconnects.mark_unchanged();
        let options =
            async_nats::ConnectOptions::new().event_callback(unreadable::on_connected(connected));
        let jetstream = jetstream_at(&self.url, options).await?;
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
        let joined = Arc::new(Joined {
            jetstream,
            consumer,
            group: self.group,
            source: stream.into(),
            dead_letter_subject: dead_letter_subject.into(),
            prefetch: self.prefetch,
        });
        unreadable::watch(Arc::downgrade(&joined), reconnects);
        Ok(Subscriber { inner: joined })
    }
}

impl Subscriber {
    /// Connects to `url`, declares the stream capturing `subject` (named
    /// after it) and the group's durable consumer `group` if missing, and
    /// joins the group; with the default settings ([`builder`](Self::builder)
    /// for others).
    pub async fn connect(
        url: impl Into<String>,
        subject: impl Into<String>,
        group: impl Into<String>,
    ) -> Result<Self, BrokerError> {
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

    /// The stream consumed: every message's [`source`](crate::Message::source).
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
                    Ok(message) => Ok(NatsDelivery::new(
                        Arc::clone(&joined.source),
                        Arc::clone(&joined.dead_letter_subject),
                        message,
                    )),
                    Err(error) => Err(BrokerError::new("receive", error)),
                })
                .left_stream(),
            Err(error) => streams::iter([Err(BrokerError::new("pull", error))]).right_stream(),
        })
    }
}
