//! Redis Streams with consumer groups, through redis-rs.
//!
//! A [`Subscriber`] is one member of a consumer group on a stream: its
//! [`deliveries`](Subscriber::deliveries) read new entries with
//! `XREADGROUP` and claim entries left pending too long with
//! `XAUTOCLAIM`, so a crashed member's deliveries and retried ones come
//! back. A [`Publisher`] adds entries with a stable message id and drops a
//! retried publish of the same id within its deduplication window.
//!
//! An entry is a [`Message`] this way: its `message_id` field is the
//! producer's id ([`Message::id`], the key by default; the entry id, such
//! as `1700000000000-0`, changes when a producer retries, so it is not the
//! key), its `payload` field is the payload, its other fields are the
//! headers, and [`Message::attempt`] is the group's delivery count of the
//! entry (1 for a new entry, more for a claimed one).
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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};
use bytes::Bytes;
use futures_util::Stream;

use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

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

const REASON_HEADER: &str = "Idempotent-Dead-Letter";
const DETAIL_HEADER: &str = "Idempotent-Dead-Letter-Detail";
/// How long a command on the shared connection may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest pause after a read that failed.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Claims the entries idle for `ARGV[3]` ms, with their delivery counts.
/// KEYS: the stream; ARGV: the group, the member, the idle time, the
/// cursor, the count. Returns the next cursor, the entries, their counts.
const CLAIM: &str = r"
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local counts = {}
for i, entry in ipairs(claimed[2]) do
  counts[i] = 0
  if type(entry) == 'table' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
    if pending[1] then counts[i] = pending[1][4] end
  end
end
return {claimed[1], claimed[2], counts}
";

/// Sets the idle time of the entries still pending with this member (not
/// claimed by another meanwhile), without counting a delivery.
/// KEYS: the stream; ARGV: the group, the member, the idle time (ms), the
/// entry ids.
const SET_IDLE: &str = r"
local claim = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV do
  local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1, ARGV[2])
  if pending[1] then claim[#claim + 1] = ARGV[i] end
end
if #claim == 5 then return 0 end
claim[#claim + 1] = 'IDLE'
claim[#claim + 1] = ARGV[3]
claim[#claim + 1] = 'JUSTID'
return #redis.call(unpack(claim))
";

/// Acknowledges an entry and copies it to the dead-letter stream with the
/// reason; nothing if another member settled it already. KEYS: the stream,
/// the dead-letter stream; ARGV: the group, the entry id, the reason's and
/// the detail's fields and values, then the fields to copy if the entry is
/// gone (the stream deleted, say).
const DEAD_LETTER: &str = r"
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 and redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
local fields = {}
if entry[1] then
  fields = entry[1][2]
else
  for i = 7, #ARGV do fields[#fields + 1] = ARGV[i] end
end
for i = 3, 6 do fields[#fields + 1] = ARGV[i] end
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
";

/// Adds an entry unless its id was published within the window.
/// KEYS: the stream, the id's deduplication key; ARGV: the window (ms),
/// the id, the payload. Returns the entry id and 1 if it was a duplicate.
const PUBLISH: &str = r"
local existing = redis.call('GET', KEYS[2])
if existing then return {existing, 1} end
local entry = redis.call('XADD', KEYS[1], '*', 'message_id', ARGV[2], 'payload', ARGV[3])
redis.call('SET', KEYS[2], entry, 'PX', ARGV[1])
return {entry, 0}
";

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
/// docs](self).
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

/// What a subscriber and its deliveries share.
struct Shared {
    stream: Arc<str>,
    group: String,
    member: String,
    dead_letter: String,
    claim_idle: Duration,
    count: usize,
    block: Duration,
    client: Client,
    /// Acknowledgements, retries, dead letters and the keeper's resets;
    /// reads and claims go on each stream's own connection.
    commands: ConnectionManager,
    claim: Script,
    set_idle: Script,
    dead_letter_script: Script,
}

impl Shared {
    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM`, an existing group kept.
    async fn declare(&self) -> Result<(), BrokerError> {
        let created = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(&mut self.commands.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => {
                Err(BrokerError::new("declare the group", e))
            }
            _ => Ok(()),
        }
    }

    /// Sets the idle time of `ids`, if still pending with this member.
    async fn set_idle(&self, idle: Duration, ids: &[String]) -> Result<(), RedisError> {
        let mut invocation = self.set_idle.key(&*self.stream);
        invocation
            .arg(&self.group)
            .arg(&self.member)
            .arg(millis(idle))
            .arg(ids);
        invocation
            .invoke_async::<Value>(&mut self.commands.clone())
            .await
            .map(drop)
    }
}

/// The entries a deliveries stream delivered and has not settled: kept
/// from other members by resetting their idle time, running or held
/// until a retry is due.
type Held = Mutex<HashMap<String, Hold>>;

#[derive(Clone, Copy)]
enum Hold {
    /// Delivered, not settled yet.
    Running,
    /// To be claimed again once `Instant` is near.
    Until(Instant),
}

fn release(held: &Held, id: &str) {
    held.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(id);
}

/// One deliveries stream's state.
struct Reader {
    shared: Arc<Shared>,
    held: Arc<Held>,
    /// Its own connection, as `XREADGROUP ... BLOCK` holds it.
    connection: Option<MultiplexedConnection>,
    buffer: VecDeque<RedisDelivery>,
    /// Where `XAUTOCLAIM` goes on.
    cursor: String,
    failures: u32,
    pause: Option<Duration>,
    /// Dropped with the stream, which stops its keeper.
    alive: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Reader {
    async fn next(&mut self) -> Result<RedisDelivery, BrokerError> {
        if self.alive.is_none() {
            let (alive, dead) = tokio::sync::oneshot::channel();
            self.alive = Some(alive);
            tokio::spawn(keep(Arc::clone(&self.shared), Arc::clone(&self.held), dead));
        }
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(delivery);
            }
            if let Some(pause) = self.pause.take() {
                tokio::time::sleep(pause).await;
            }
            if let Err((action, error)) = self.fill().await {
                self.failures = self.failures.saturating_add(1);
                self.pause = Some(
                    Duration::from_millis(100)
                        .saturating_mul(1 << self.failures.min(6))
                        .min(MAX_PAUSE),
                );
                let missing =
                    error.code() == Some("NOGROUP") || error.to_string().contains("NOGROUP");
                if missing {
                    // The stream or the group was deleted under us.
                    if let Err(error) = self.shared.declare().await {
                        tracing::warn!(%error, "could not declare the stream and group again");
                    }
                }
                return Err(BrokerError::new(action, error));
            }
            self.failures = 0;
        }
    }

    /// Claims idle entries, or else reads new ones, into the buffer.
    async fn fill(&mut self) -> Result<(), (&'static str, RedisError)> {
        let shared = Arc::clone(&self.shared);
        // Taken while in use, put back once it answered.
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                // The read waits `block`, and the answer may take a little.
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(shared.block + COMMAND_TIMEOUT));
                shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| ("connect", e))?
            }
        };
        let mut claim = shared.claim.key(&*shared.stream);
        claim
            .arg(&shared.group)
            .arg(&shared.member)
            .arg(millis(shared.claim_idle))
            .arg(&self.cursor)
            .arg(shared.count);
        let claimed = claim
            .invoke_async::<Value>(&mut connection)
            .await
            .map_err(|e| ("claim", e))?;
        let mut claimed = array(claimed).into_iter();
        if let Some(cursor) = claimed.next().and_then(text) {
            self.cursor = cursor;
        }
        let entries = claimed.next().map(array).unwrap_or_default();
        let counts = claimed.next().map(array).unwrap_or_default();
        for (entry, count) in entries.into_iter().zip(counts) {
            let attempt = match count {
                Value::Int(n) => u32::try_from(n).unwrap_or(u32::MAX).max(1),
                _ => 1,
            };
            self.push(entry, attempt);
        }
        if !self.buffer.is_empty() {
            self.connection = Some(connection);
            return Ok(());
        }
        let read = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.member)
            .arg("COUNT")
            .arg(shared.count)
            .arg("BLOCK")
            .arg(millis(shared.block))
            .arg("STREAMS")
            .arg(&*shared.stream)
            .arg(">")
            .query_async::<Value>(&mut connection)
            .await
            .map_err(|e| ("read", e))?;
        self.connection = Some(connection);
        // One stream asked for: `[[name, entries]]`, or a map in RESP3.
        let streams: Vec<Value> = match read {
            Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
            other => array(other)
                .into_iter()
                .filter_map(|stream| array(stream).into_iter().nth(1))
                .collect(),
        };
        for entries in streams {
            for entry in array(entries) {
                self.push(entry, 1);
            }
        }
        Ok(())
    }

    /// Buffers the delivery of an `[id, [field, value, ...]]` entry.
    fn push(&mut self, entry: Value, attempt: u32) {
        let mut entry = array(entry).into_iter();
        let Some(id) = entry.next().and_then(text) else {
            return;
        };
        let fields = entry.next().map(array).unwrap_or_default();
        let message = message(Arc::clone(&self.shared.stream), fields, attempt);
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Hold::Running);
        self.buffer.push_back(RedisDelivery {
            message,
            entry: id,
            shared: Arc::clone(&self.shared),
            held: Arc::clone(&self.held),
            kept: false,
        });
    }
}

/// Keeps the entries of a deliveries stream from other members while it
/// lives: resets the idle time of those running, or held for a retry not
/// due yet, every third of the claim idle time.
async fn keep(shared: Arc<Shared>, held: Arc<Held>, mut dead: tokio::sync::oneshot::Receiver<()>) {
    let tick = (shared.claim_idle / 3).max(Duration::from_millis(10));
    while tokio::time::timeout(tick, &mut dead).await.is_err() {
        let now = Instant::now();
        let mut touch = Vec::new();
        let mut due = Vec::new();
        {
            let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
            held.retain(|id, hold| match *hold {
                Hold::Until(at)
                    if at.saturating_duration_since(now) <= shared.claim_idle + tick =>
                {
                    due.push((id.clone(), at.saturating_duration_since(now)));
                    false
                }
                _ => {
                    touch.push(id.clone());
                    true
                }
            });
        }
        let mut result = Ok(());
        if !touch.is_empty() {
            result = shared.set_idle(Duration::ZERO, &touch).await;
        }
        for (id, left) in due {
            let idle = shared.claim_idle.saturating_sub(left);
            result = result.and(shared.set_idle(idle, &[id]).await);
        }
        if let Err(error) = result {
            tracing::warn!(%error, "could not keep the deliveries in progress; other members may claim them");
        }
    }
}

/// An entry delivered to a [`Subscriber`], to settle once.
///
/// - [`ack`](Delivery::ack): `XACK`.
/// - [`retry`](Delivery::retry): the entry stays pending (no `XACK`), and
///   its idle time is set so that it is claimed again after about the
///   delay, which counts a delivery. A delay longer than the claim idle
///   time is kept by the member until the rest is shorter; if the member
///   crashes meanwhile, the entry comes back after the claim idle time.
/// - [`dead_letter`](Delivery::dead_letter): a copy of the entry's fields
///   with `Idempotent-Dead-Letter` and `Idempotent-Dead-Letter-Detail` is
///   added to the dead-letter stream and the entry acknowledged, in one
///   script.
///
/// Dropped unsettled, the entry is claimed after the claim idle time.
/// [`in_progress`](Delivery::in_progress) does nothing: the member keeps
/// its unsettled entries from other members already.
pub struct RedisDelivery {
    message: Message,
    entry: String,
    shared: Arc<Shared>,
    held: Arc<Held>,
    /// Held for a retry: not to be released when dropped.
    kept: bool,
}

impl fmt::Debug for RedisDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDelivery")
            .field("entry", &self.entry)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl RedisDelivery {
    /// The entry's id in the stream (`1700000000000-0`).
    pub fn entry_id(&self) -> &str {
        &self.entry
    }
}

impl Drop for RedisDelivery {
    fn drop(&mut self) {
        if !self.kept {
            release(&self.held, &self.entry);
        }
    }
}

impl Delivery for RedisDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        ::redis::cmd("XACK")
            .arg(&*self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.entry)
            .query_async::<Value>(&mut self.shared.commands.clone())
            .await
            .map(drop)
            .map_err(|e| BrokerError::new("ack", e))
    }

    async fn retry(mut self, delay: Duration) -> Result<(), BrokerError> {
        if delay > self.shared.claim_idle {
            self.kept = true;
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(self.entry.clone(), Hold::Until(Instant::now() + delay));
            return Ok(());
        }
        release(&self.held, &self.entry);
        let idle = self.shared.claim_idle.saturating_sub(delay);
        self.shared
            .set_idle(idle, std::slice::from_ref(&self.entry))
            .await
            .map_err(|e| BrokerError::new("retry", e))
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        release(&self.held, &self.entry);
        let shared = &self.shared;
        let mut script = shared.dead_letter_script.key(&*shared.stream);
        script
            .key(&shared.dead_letter)
            .arg(&shared.group)
            .arg(&self.entry)
            .arg(REASON_HEADER)
            .arg(letter.reason())
            .arg(DETAIL_HEADER)
            .arg(letter.to_string());
        // The fields to copy if the entry is gone from the stream.
        if let Some(id) = &self.message.id {
            script.arg(ID_FIELD).arg(id);
        }
        script.arg(PAYLOAD_FIELD).arg(&self.message.payload[..]);
        for (name, value) in &self.message.headers {
            script.arg(name).arg(value);
        }
        script
            .invoke_async::<Value>(&mut shared.commands.clone())
            .await
            .map(drop)
            .map_err(|e| BrokerError::new("dead-letter", e))
    }
}

/// The message of an entry's `[field, value, ...]`: the first `message_id`
/// is the id and the first `payload` the payload (empty if missing), the
/// other fields the headers; text that is not UTF-8 is taken lossily (an
/// id that was not is then an invalid key, dead-lettered).
fn message(source: Arc<str>, fields: Vec<Value>, attempt: u32) -> Message {
    let mut message = Message::new(source, Bytes::new()).with_attempt(attempt);
    let mut payload = None;
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = String::from_utf8_lossy(&bytes(name)).into_owned();
        let value = bytes(value);
        if name == ID_FIELD && message.id.is_none() {
            message.id = Some(String::from_utf8_lossy(&value).into_owned());
        } else if name == PAYLOAD_FIELD && payload.is_none() {
            payload = Some(Bytes::from(value));
        } else {
            message
                .headers
                .push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    message.payload = payload.unwrap_or_default();
    message
}

/// The client for `url`, and the shared connection for commands.
async fn connect(url: &str) -> Result<(Client, ConnectionManager), BrokerError> {
    let client = Client::open(url).map_err(|e| BrokerError::new("connect", e))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2);
    let commands = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| BrokerError::new("connect", e))?;
    Ok((client, commands))
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(values) | Value::Set(values) => values,
        _ => Vec::new(),
    }
}

fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `<pid>-<random>`: unique among the group's members.
fn member_name() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}

/// The key `<stream>:<suffix>` in the stream's hash slot: the stream's
/// hash tag kept if it has one, the stream's name made the tag if not.
fn beside(stream: &str, suffix: &str) -> String {
    let tagged = stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tagged || stream.contains('}') {
        format!("{stream}:{suffix}")
    } else {
        format!("{{{stream}}}:{suffix}")
    }
}

/// Settings of a [`Publisher`]; see [`Publisher::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connected"]
pub struct PublisherBuilder {
    url: String,
    stream: String,
    window: Duration,
}

impl PublisherBuilder {
    /// How long an id is remembered, so that publishing it again adds
    /// nothing; [`DEFAULT_DEDUP_WINDOW`] by default, at least 1 ms.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// Connects.
    pub async fn connect(self) -> Result<Publisher, BrokerError> {
        let (_, commands) = connect(&self.url).await?;
        Ok(Publisher {
            inner: Arc::new(PublisherInner {
                stream: self.stream,
                window: self.window,
                commands,
                script: Script::new(PUBLISH),
            }),
        })
    }
}

/// Adds entries to a Redis stream with a stable message id: an id
/// published again within the deduplication window adds nothing. See the
/// [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_consumer::redis::Publisher;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let publisher = Publisher::builder("redis://127.0.0.1:6379", "orders")
///     .dedup_window(Duration::from_secs(600))
///     .connect()
///     .await?;
/// let published = publisher.publish("order-42", "{\"order\":42}").await?;
/// println!("entry {} (duplicate: {})", published.entry_id, published.duplicate);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    stream: String,
    window: Duration,
    commands: ConnectionManager,
    script: Script,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.inner.stream)
            .field("dedup_window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

/// What a [`Publisher::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The entry's id in the stream: the new entry's, or for a duplicate,
    /// the entry its id was first published as.
    pub entry_id: String,
    /// The id was published within the window: nothing was added.
    pub duplicate: bool,
}

impl Publisher {
    /// Settings for a publisher to the stream `stream` at `url`.
    pub fn builder(url: impl Into<String>, stream: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            url: url.into(),
            stream: stream.into(),
            window: DEFAULT_DEDUP_WINDOW,
        }
    }

    /// A publisher to `stream` with the default window.
    pub async fn connect(
        url: impl Into<String>,
        stream: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        Self::builder(url, stream).connect().await
    }

    /// Adds an entry with the fields `message_id` = `id` and `payload`,
    /// unless `id` was published within the window: then it adds nothing
    /// and says so ([`Published::duplicate`]). The id and the entry are
    /// checked and added in one script; the remembered id is a key beside
    /// the stream, in its hash slot.
    pub async fn publish(
        &self,
        id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        let inner = &*self.inner;
        let payload = payload.into();
        let mut script = inner.script.key(&inner.stream);
        script
            .key(beside(&inner.stream, &format!("dedup:{id}")))
            .arg(millis(inner.window))
            .arg(id)
            .arg(&payload[..]);
        let (entry_id, duplicate): (String, bool) = script
            .invoke_async(&mut inner.commands.clone())
            .await
            .map_err(|e| BrokerError::new("publish", e))?;
        Ok(Published {
            entry_id,
            duplicate,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(fields: &[&[u8]]) -> Vec<Value> {
        fields
            .iter()
            .map(|f| Value::BulkString(f.to_vec()))
            .collect()
    }

    #[test]
    fn an_entry_is_a_message() {
        let fields = entry(&[
            b"tenant",
            b"acme",
            b"payload",
            b"{}",
            b"message_id",
            b"order-1",
        ]);
        let message = message("orders".into(), fields, 2);
        assert_eq!(message.id.as_deref(), Some("order-1"));
        assert_eq!(&message.payload[..], b"{}");
        assert_eq!(message.headers, [("tenant".to_owned(), "acme".to_owned())]);
        assert_eq!(message.attempt, 2);
    }

    #[test]
    fn bad_entries_are_messages_too() {
        let fields = entry(&[b"\xff", b"\xfe", b"dangling"]);
        let message = message("orders".into(), fields, 1);
        assert_eq!(message.id, None);
        assert!(message.payload.is_empty());
        assert_eq!(
            message.headers,
            [("\u{fffd}".to_owned(), "\u{fffd}".to_owned())]
        );
        let message = super::message("orders".into(), entry(&[b"message_id", b"\xff"]), 1);
        assert_eq!(message.id.as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn keys_beside_a_stream_share_its_slot() {
        assert_eq!(beside("orders", "dedup:1"), "{orders}:dedup:1");
        assert_eq!(beside("{shop}orders", "dedup:1"), "{shop}orders:dedup:1");
        // No key shares the slot of a name with an empty tag.
        assert_eq!(beside("a{}b", "x"), "a{}b:x");
    }
}
