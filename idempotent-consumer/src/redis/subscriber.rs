//! A member of a consumer group: the stream and the group declared, the
//! member joined, and its deliveries.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::{Script, Value};
use futures_util::Stream;

use super::delivery::RedisDelivery;
use super::reader::{Reader, Shared};
use super::scripts::{CLAIM, DEAD_LETTER, SET_IDLE};
use super::support::{connect, member_name};
use super::{DEFAULT_BLOCK, DEFAULT_CLAIM_IDLE, DEFAULT_COUNT};
use crate::error::BrokerError;

/// Settings of a [`Subscriber`]; see [`Subscriber::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connected"]
pub struct SubscriberBuilder {
    url: String,
    stream: String,
    group: String,
    claim_idle: Duration,
    count: usize,
    block: Duration,
    dead_letter_stream: Option<String>,
}

impl SubscriberBuilder {
    /// How long an entry stays pending with a member that crashed before
    /// another member claims it; [`DEFAULT_CLAIM_IDLE`] by default, at
    /// least 30 ms. Retry delays longer than it are kept by the member,
    /// so a crash brings them back early (see [`RedisDelivery`]).
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(30));
        self
    }

    /// Entries read at a time (`COUNT`, at least 1); [`DEFAULT_COUNT`] by
    /// default.
    pub fn count(mut self, count: usize) -> Self {
        self.count = count.max(1);
        self
    }

    /// How long a read waits for new entries (`BLOCK`, at least 1 ms);
    /// [`DEFAULT_BLOCK`] by default. Entries to claim are looked for
    /// between reads, so it also bounds how late they are seen.
    pub fn block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// The stream dead letters are added to; `<stream>:dead` by default.
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.dead_letter_stream = Some(stream.into());
        self
    }

    /// Connects, declares the stream and the group if they are missing
    /// (a new group starts at the stream's first entry), and joins the
    /// group as a member of a unique name.
    pub async fn connect(self) -> Result<Subscriber, BrokerError> {
        let (client, commands) = connect(&self.url).await?;
        let dead_letter = self
            .dead_letter_stream
            .unwrap_or_else(|| format!("{}:dead", self.stream));
        let shared = Arc::new(Shared {
            stream: self.stream.into(),
            group: self.group,
            member: member_name(),
            dead_letter,
            claim_idle: self.claim_idle,
            count: self.count,
            block: self.block,
            client,
            commands,
            claim: Script::new(CLAIM),
            set_idle: Script::new(SET_IDLE),
            dead_letter_script: Script::new(DEAD_LETTER),
        });
        shared.declare().await?;
        ::redis::cmd("XGROUP")
            .arg("CREATECONSUMER")
            .arg(&*shared.stream)
            .arg(&shared.group)
            .arg(&shared.member)
            .query_async::<Value>(&mut shared.commands.clone())
            .await
            .map_err(|e| BrokerError::new("join the group", e))?;
        Ok(Subscriber { shared })
    }
}

/// One member of a consumer group on a Redis stream; see the [module
/// docs](super).
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_consumer::redis::Subscriber;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let subscriber = Subscriber::builder("redis://127.0.0.1:6379", "orders", "shipping")
///     .claim_idle(Duration::from_secs(10))
///     .dead_letter_stream("orders:failed")
///     .connect()
///     .await?;
/// println!("joined as {}", subscriber.member());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Subscriber {
    shared: Arc<Shared>,
}

impl fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscriber")
            .field("stream", &self.shared.stream)
            .field("group", &self.shared.group)
            .field("member", &self.shared.member)
            .field("dead_letter_stream", &self.shared.dead_letter)
            .field("claim_idle", &self.shared.claim_idle)
            .finish_non_exhaustive()
    }
}

impl Subscriber {
    /// Settings for a member of `group` on the stream `stream` at `url`
    /// (`redis://host:port/db`).
    pub fn builder(
        url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
    ) -> SubscriberBuilder {
        SubscriberBuilder {
            url: url.into(),
            stream: stream.into(),
            group: group.into(),
            claim_idle: DEFAULT_CLAIM_IDLE,
            count: DEFAULT_COUNT,
            block: DEFAULT_BLOCK,
            dead_letter_stream: None,
        }
    }

    /// A member of `group` on `stream` with the default settings; see
    /// [`SubscriberBuilder::connect`].
    pub async fn connect(
        url: impl Into<String>,
        stream: impl Into<String>,
        group: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        Self::builder(url, stream, group).connect().await
    }

    /// The member's name in the group.
    pub fn member(&self) -> &str {
        &self.shared.member
    }

    /// The member's deliveries, for [`Consumer::consume`](crate::Consumer::consume):
    /// the entries pending too long (a crashed member's, retried ones),
    /// claimed, and new entries. The stream does not end; a read that
    /// failed is an `Err` item, and reading goes on after a pause
    /// (declaring the stream and group again if they were deleted).
    ///
    /// While the stream lives, the entries it delivered and that are not
    /// settled yet are kept from being claimed by other members. Dropping
    /// it is a crash: those entries are claimed after the claim idle time.
    pub fn deliveries(
        &self,
    ) -> impl Stream<Item = Result<RedisDelivery, BrokerError>> + Send + Unpin + 'static {
        let reader = Reader {
            shared: Arc::clone(&self.shared),
            held: Arc::default(),
            connection: None,
            buffer: VecDeque::new(),
            cursor: "0-0".to_owned(),
            failures: 0,
            pause: None,
            alive: None,
        };
        Box::pin(futures_util::stream::unfold(
            reader,
            |mut reader| async move {
                let item = reader.next().await;
                Some((item, reader))
            },
        ))
    }
}
