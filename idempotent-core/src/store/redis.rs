//! The Redis store: several processes and machines share one state.
//!
//! # Layout
//!
//! One Redis string per record, under `<key_prefix>{}<storage key>`, so
//! every operation touches one key (one hash slot) and works unchanged on a
//! cluster. The empty hash tag `{}` makes a cluster hash the whole key: a
//! client that sends `{x}1`, `{x}2`, ... as its keys cannot pin every
//! record to one slot and one master (a tag in the prefix still pins, if
//! that is what you want). Expiry is Redis's own (`PX`): a lease that runs out, or a
//! completed record past its TTL, is simply gone; there is no sweeper.
//!
//! ```text
//! InProgress: 'P' | fingerprint (16 bytes) | lease token (16 bytes) [| 'w']   PX = lease
//! Completed:  'C' | fingerprint (16 bytes) | response bytes           PX = ttl
//! ```
//!
//! Each transition is one atomic round trip:
//!
//! - claim is `SET key <InProgress> NX PX <lease> GET` (Redis 7): it writes
//!   the record only when the key is absent (or expired: a dead lease is
//!   gone), and otherwise returns the record that is there, which
//!   [`record::decide_claim`] answers. No script: a claim, and so every
//!   replay, costs Redis what a plain `SET` does. Only an in-flight answer
//!   asks a second question (the record and its `PTTL`, read together by a
//!   script), for its `retry_after`.
//! - complete, release and renew are Lua scripts (`EVALSHA`; after
//!   `NOSCRIPT`, `EVAL` with the source) that check the lease token and
//!   write in one step.
//!
//! A caller that waits on an in-flight key appends `'w'` to its record (a
//! small script, on that rare path only); completion and release of a
//! marked record are announced on a pub/sub channel, which wakes the
//! waiters. Unmarked records publish nothing, so the common path pays no
//! pub/sub traffic.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use redis::aio::ConnectionManagerConfig;
use redis::{Script, Value};
use tokio::sync::Notify;

use super::{Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{
    self, ClaimDecision, ClaimOutcome, Lease, LeaseToken, Millis, Record, RecordState,
};

#[path = "redis_cluster.rs"]
mod cluster;
#[path = "redis_standalone.rs"]
mod standalone;
use cluster::LazyCluster;
use standalone::Standalone;

/// The default bound on every Redis call, after which it fails closed.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// How often, by default, a caller waiting on an in-flight key re-checks it,
/// in case a completion notice was missed (sent before it subscribed, or lost
/// with a dropped pub/sub connection); see [`RedisStoreBuilder::wait_recheck`].
pub const DEFAULT_WAIT_RECHECK: Duration = Duration::from_millis(200);

/// Shared prefix of the fenced scripts: the live lease must carry ARGV[1].
macro_rules! fenced {
    ($body:literal) => {
        concat!(
            r"
local v = redis.call('GET', KEYS[1])
if not v or string.len(v) < 33 or string.sub(v, 1, 1) ~= 'P' or string.sub(v, 18, 33) ~= ARGV[1] then
  return 0
end
",
            $body,
            "\nreturn 1\n"
        )
    };
}

/// Completes a record: ARGV[1] is the whole in-progress value the claim
/// wrote ('P', fingerprint, token), ARGV[2] the whole completed one ('C',
/// fingerprint, response). Comparing and writing whole values spares Redis
/// the substrings and the concatenation of `fenced!`: 3.5 µs of Redis CPU
/// per completion with a 200-byte response, against 4.0 µs.
///
/// A record that already holds exactly ARGV[2] answers 1 too, whatever
/// token ARGV[1] carries: redis-rs's cluster client, the standalone
/// connection's second sending and a completion retried once Redis is back
/// (see `deferred`) all send a completion again when a connection drops
/// before its answer arrives, and the first sending may have completed the
/// record. (A stale owner, or any token, whose completion is byte for byte
/// the one stored is told it succeeded as well: nothing is overwritten, the
/// TTL is not extended, and its value is the one every retry gets.)
///
/// In a file of its own, so that the Redis bench's `floor` sends this very
/// script.
const COMPLETE: &str = include_str!("redis_complete.lua");

const RELEASE: &str = fenced!(
    r"
redis.call('DEL', KEYS[1])
if string.len(v) > 33 then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end"
);

/// Marks an in-progress record as waited on; answers 1 if it still is in progress.
const MARK_WAITING: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, 1) ~= 'P' or string.len(v) < 33 then
  return 0
end
if string.len(v) == 33 then
  redis.call('SETRANGE', KEYS[1], 33, 'w')
end
return 1
";

/// The record and its remaining time to live, read together: the in-flight
/// answer's `retry_after` must be the lease of the record it saw, not the
/// retention of one completed in between.
const LOOK: &str = r"
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
";

const RENEW: &str = fenced!(
    r"
redis.call('PEXPIRE', KEYS[1], ARGV[2])"
);

/// A [`Store`] on Redis, standalone or cluster.
///
/// - Fails closed: a refused connection or a call that takes longer than
///   [`timeout`](RedisStoreBuilder::timeout) (default 1 s) is
///   [`StoreError::Unavailable`], so the engine never runs a body without a
///   claim. The connection is re-established in the background: when Redis
///   comes back, the store works again without a restart.
/// - A stored value that is not a record this store wrote is
///   [`StoreError::Corrupt`], never a panic and never a re-execution.
/// - Waiting on an in-flight key is woken by a pub/sub notice, with a
///   polling fallback, every 200 ms by default ([`RedisStoreBuilder::wait_recheck`]).
///
/// ```no_run
/// use idempotent_core::{Idempotency, RedisStore};
///
/// # async fn start() -> Result<(), idempotent_core::StoreError> {
/// let store = RedisStore::builder()
///     .url("redis://127.0.0.1:6379")
///     .key_prefix("shop:")
///     .build()
///     .await?;
/// Idempotency::new(store).install().expect("installed once");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    connection: Connection,
    key_prefix: Box<str>,
    channel: Box<str>,
    timeout: Duration,
    wait_recheck: Duration,
    token_base: u128,
    next_token: AtomicU64,
    waiters: Arc<Waiters>,
    notifier: tokio::task::JoinHandle<()>,
    scripts: Scripts,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.notifier.abort();
    }
}

struct Scripts {
    complete: Lua,
    release: Lua,
    renew: Lua,
    mark_waiting: Lua,
    look: Lua,
}

/// A script: its source, and its SHA1 for `EVALSHA`.
struct Lua {
    source: &'static str,
    script: Script,
}

impl Lua {
    fn new(source: &'static str) -> Self {
        Self {
            source,
            script: Script::new(source),
        }
    }
}

enum Connection {
    Single(Box<Standalone>),
    Cluster(Arc<LazyCluster>),
}

/// Callers waiting on in-flight keys, by Redis key: the key's `Notify` and
/// how many callers wait on it.
#[derive(Default)]
struct Waiters(Mutex<HashMap<Vec<u8>, Waiting>>);

type Waiting = (Arc<Notify>, usize);

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "cluster",
                &matches!(self.inner.connection, Connection::Cluster(_)),
            )
            .field("key_prefix", &self.inner.key_prefix)
            .field("timeout", &self.inner.timeout)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RedisStore`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisStoreBuilder {
    url: Option<String>,
    cluster: Vec<String>,
    /// Whether a cluster was asked for (its seed list may still be empty).
    cluster_url: bool,
    key_prefix: String,
    timeout: Option<Duration>,
    wait_recheck: Option<Duration>,
    #[cfg(feature = "redis-tls")]
    tls_root: Option<Vec<u8>>,
}

impl RedisStoreBuilder {
    /// A standalone server: `redis://host:port/db`, or `rediss://host:port/db`
    /// over TLS (with the `redis-tls` feature). A
    /// `redis+cluster://host1:port1,host2:port2` URL means a cluster with
    /// those seed nodes.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        match url.strip_prefix("redis+cluster://") {
            Some(seeds) => {
                self.cluster_url = true;
                self.cluster = seeds
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("redis://{s}"))
                    .collect();
                self.url = None;
            }
            None => {
                self.cluster_url = false;
                self.url = Some(url);
            }
        }
        self
    }

    /// A Redis Cluster, reached through these seed nodes (`redis://host:port`).
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster = nodes.into_iter().map(Into::into).collect();
        self.cluster_url = true;
        self.url = None;
        self
    }

    /// Prepended to every Redis key (default none). A hash tag in it
    /// (`{shop}:`) puts every record on one cluster slot; nothing after the
    /// prefix can (see the module docs). Keep its braces balanced: an open
    /// `{` alone (`app{`) also makes a tag, of the characters up to the `{}`
    /// that follows, and pins every record to one slot.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The bound on every call, including (re)connecting (default 1 s). A
    /// cluster's first connection runs in the background with three times
    /// this, so a slow one still completes for the calls after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a caller waiting on a duplicate in flight (`wait = ...`)
    /// sleeps before it re-checks the key if no completion notice woke it
    /// (default 200 ms, at least 1 ms). Notices normally wake waiters at
    /// once; this bounds what a missed one costs, at the price of one Redis
    /// call per waiter per interval.
    pub fn wait_recheck(mut self, every: Duration) -> Self {
        self.wait_recheck = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Trusts these PEM root certificates for `rediss://` (a private CA),
    /// instead of the system's roots.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// A client for `url`, over TLS with the configured roots if any.
    fn client(&self, url: &str) -> Result<redis::Client, StoreError> {
        if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a `rediss://` URL needs the `redis-tls` feature of idempotent-core",
            )));
        }
        #[cfg(feature = "redis-tls")]
        if let Some(root) = &self.tls_root {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            };
            return redis::Client::build_with_tls(url, certificates)
                .map_err(StoreError::unavailable);
        }
        redis::Client::open(url).map_err(StoreError::unavailable)
    }

    /// Builds the store. It connects lazily, standalone or cluster, so it
    /// can be built while Redis is down: calls fail closed until it is up,
    /// then work without a restart. (A cluster's topology is read from a
    /// seed node on the first call.)
    ///
    /// Must be called within a tokio runtime.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        if self.cluster_url && self.cluster.is_empty() {
            // Never fall back to the default standalone server instead.
            return Err(StoreError::unavailable(
                "a cluster needs at least one seed node (`redis+cluster://host:port,...`)",
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_REDIS_TIMEOUT);
        let (connection, pubsub_clients) = if self.cluster.is_empty() {
            let url = self.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            let client = self.client(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(timeout);
            let standalone =
                Standalone::new(client.clone(), config).map_err(StoreError::unavailable)?;
            (Connection::Single(Box::new(standalone)), vec![client])
        } else {
            let builder =
                redis::cluster::ClusterClientBuilder::new(self.cluster.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
            #[cfg(feature = "redis-tls")]
            let builder = match &self.tls_root {
                Some(root) => builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                }),
                None => builder,
            };
            let client = builder.build().map_err(StoreError::unavailable)?;
            // The first connection reads the layout and reaches every
            // master: it gets three times one call's bound, as it did when
            // `build` made it.
            let lazy = LazyCluster::new(client, timeout.saturating_mul(3));
            // Cluster pub/sub reaches every node: any seed that answers
            // will do, tried in turn.
            let seeds = self.cluster.iter().map(|seed| self.client(seed));
            (Connection::Cluster(lazy), seeds.collect::<Result<_, _>>()?)
        };
        let channel = format!("{}idempotent:done", self.key_prefix);
        let waiters = Arc::new(Waiters::default());
        let notifier = tokio::spawn(notify_waiters(
            pubsub_clients,
            channel.clone(),
            Arc::clone(&waiters),
            timeout,
        ));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                key_prefix: self.key_prefix.into_boxed_str(),
                channel: channel.into_boxed_str(),
                timeout,
                wait_recheck: self.wait_recheck.unwrap_or(DEFAULT_WAIT_RECHECK),
                token_base: u128::from(RandomState::new().hash_one(std::process::id())) << 64,
                next_token: AtomicU64::new(1),
                waiters,
                notifier,
                scripts: Scripts {
                    complete: Lua::new(COMPLETE),
                    release: Lua::new(RELEASE),
                    renew: Lua::new(RENEW),
                    mark_waiting: Lua::new(MARK_WAITING),
                    look: Lua::new(LOOK),
                },
            }),
        })
    }
}

impl RedisStore {
    /// Starts building a store.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects to `url` with the default settings (see [`RedisStoreBuilder::url`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().url(url).build().await
    }

    /// The Redis key of a storage key: `<key_prefix>{}<storage key>`.
    pub fn redis_key(&self, key: &StorageKey) -> String {
        let prefix = &self.inner.key_prefix;
        let mut redis_key = String::with_capacity(prefix.len() + NO_TAG.len() + key.as_str().len());
        redis_key.push_str(prefix);
        redis_key.push_str(NO_TAG);
        redis_key.push_str(key.as_str());
        redis_key
    }

    fn new_token(&self) -> LeaseToken {
        // A random per-store base plus a counter: unique within the store,
        // and across processes with overwhelming probability.
        let n = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        LeaseToken::from_u128(self.inner.token_base | u128::from(n))
    }

    /// `EVALSHA` (or, with `by_hash` false, `EVAL`) of `lua` on one key, in
    /// one buffer: a `ScriptInvocation` would copy each argument into a
    /// vector of its own, then all of them again into its command, on every
    /// completion.
    fn script_command(
        &self,
        lua: &Lua,
        by_hash: bool,
        key: &StorageKey,
        args: &[&[u8]],
    ) -> redis::Cmd {
        let key = key.as_str();
        let bytes = args.iter().map(|a| a.len()).sum::<usize>() + key.len();
        let mut command = redis::Cmd::with_capacity(4 + args.len(), bytes + 64);
        if by_hash {
            command.arg("EVALSHA").arg(lua.script.get_hash());
        } else {
            command.arg("EVAL").arg(lua.source);
        }
        command.arg(1).arg(RedisKey(&self.inner.key_prefix, key));
        for arg in args {
            command.arg(*arg);
        }
        command
    }

    /// Runs `lua` on one key by its hash. A server that does not know the
    /// script (`NOSCRIPT`: restarted or flushed) gets `EVAL` with the source,
    /// which runs it and caches it there. `EVAL` goes to the key's node like
    /// any keyed command, so on a cluster no other node needs to answer (a
    /// `SCRIPT LOAD` would go to every node). Redis 7.4 and later may evict
    /// scripts cached by `EVAL` when many others are (least recently used
    /// first): a call then pays this fallback again, and stays correct.
    async fn invoke(
        &self,
        lua: &Lua,
        key: &StorageKey,
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let command = |by_hash| self.script_command(lua, by_hash, key, args);
        let request = Request::Script(&command);
        match &self.inner.connection {
            Connection::Single(c) => c.call(self.inner.timeout, &request).await,
            Connection::Cluster(c) => {
                bounded(self.inner.timeout, async {
                    request.send(&mut c.get().await?).await
                })
                .await
                .1
            }
        }
    }

    /// The answer to a claim that met a record in progress: how long its
    /// lease has left, read together with the record. The record may have
    /// changed since the claim: completed (answered as such), or gone (the
    /// caller may retry now).
    async fn in_flight(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
    ) -> Result<ClaimOutcome, StoreError> {
        let look = self.invoke(&self.inner.scripts.look, key, &[]);
        let (value, ttl) = match look.await.map_err(|e| with_key(e, key))? {
            Value::Array(answer) => match <[Value; 2]>::try_from(answer) {
                Ok([value, Value::Int(ttl)]) => (value, ttl),
                Ok(other) => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
                Err(other) => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
            },
            other => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
        };
        let current = match value {
            // Gone since the claim (Lua's `false` is a nil on RESP2, a
            // boolean on RESP3).
            Value::Nil | Value::Boolean(false) => {
                return Ok(ClaimOutcome::InFlight {
                    retry_after: Duration::ZERO,
                });
            }
            Value::BulkString(bytes) => decode(key, bytes)?,
            other => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
        };
        match record::decide_claim(Some(&current), fingerprint, 0) {
            // -1: no expiry. This store always sets one, so the record was
            // written or `PERSIST`ed by something else, and would hold the
            // key forever.
            ClaimDecision::Answer(ClaimOutcome::InFlight { .. }) if ttl == -1 => Err(corrupt(
                key,
                "a record in progress without an expiry (it would hold the key forever); \
                 delete the key",
            )),
            ClaimDecision::Answer(ClaimOutcome::InFlight { .. }) => Ok(ClaimOutcome::InFlight {
                retry_after: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
            }),
            ClaimDecision::Answer(answer) => Ok(answer),
            ClaimDecision::Acquire => Ok(ClaimOutcome::InFlight {
                retry_after: Duration::ZERO,
            }),
        }
    }

    async fn query(&self, command: &redis::Cmd) -> Result<Value, StoreError> {
        let request = Request::Command(command);
        match &self.inner.connection {
            Connection::Single(c) => c.call(self.inner.timeout, &request).await,
            Connection::Cluster(c) => {
                bounded(self.inner.timeout, async {
                    request.send(&mut c.get().await?).await
                })
                .await
                .1
            }
        }
    }

    async fn fenced(
        &self,
        lua: &Lua,
        key: &StorageKey,
        token: LeaseToken,
        args: &[&[u8]],
    ) -> Result<(), StoreError> {
        let token = token.as_u128().to_be_bytes();
        let mut all = Vec::with_capacity(args.len() + 1);
        all.push(&token[..]);
        all.extend_from_slice(args);
        self.fenced_answer(lua, key, &all).await
    }

    /// Runs a fenced script, which answers 1 if it held the lease, 0 if not.
    async fn fenced_answer(
        &self,
        lua: &Lua,
        key: &StorageKey,
        args: &[&[u8]],
    ) -> Result<(), StoreError> {
        match self
            .invoke(lua, key, args)
            .await
            .map_err(|e| with_key(e, key))?
        {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(StoreError::LeaseLost),
            other => Err(corrupt(key, format!("unexpected script answer {other:?}"))),
        }
    }
}

/// Between the prefix and the storage key: an empty hash tag, after which a
/// cluster hashes the whole key, whatever braces the client's key holds.
const NO_TAG: &str = "{}";

/// A Redis key, `<key_prefix>{}<storage key>`, written straight into a
/// command as one argument (no `String` of its own).
struct RedisKey<'a>(&'a str, &'a str);

impl redis::ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = arg.write_all(self.0.as_bytes());
        let _ = arg.write_all(NO_TAG.as_bytes());
        let _ = arg.write_all(self.1.as_bytes());
    }
}

/// What a call sends: a command, or a script by its hash, then (if the
/// server does not know it) by its source.
enum Request<'a> {
    Command(&'a redis::Cmd),
    /// The script's command, by hash (`true`) or by source.
    Script(&'a (dyn Fn(bool) -> redis::Cmd + Sync)),
}

impl Request<'_> {
    /// Sends the request once. A server that does not know a script
    /// (`NOSCRIPT`: restarted or flushed) gets `EVAL` with the source,
    /// which runs it and caches it there.
    async fn send(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<Value> {
        match self {
            Self::Command(command) => command.query_async(connection).await,
            Self::Script(command) => match command(true).query_async(connection).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    command(false).query_async(connection).await
                }
                answer => answer,
            },
        }
    }
}

/// How a bounded call went, for the standalone connection's bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Heard {
    /// Redis answered: a value, or an error reply of its own.
    Answer,
    /// No answer in time (here, or in redis-rs).
    Nothing,
    /// The call failed otherwise (a refused or dropped connection).
    Failure,
}

/// Bounds a call by the store's timeout and classifies its errors.
async fn bounded(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<Value>>,
) -> (Heard, Result<Value, StoreError>) {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => (Heard::Answer, Ok(value)),
        Ok(Err(error)) if error.code() == Some("WRONGTYPE") => (
            Heard::Answer,
            Err(StoreError::Corrupt {
                key: String::new(),
                detail: format!("the key holds another type of value: {error}"),
            }),
        ),
        Ok(Err(error)) => {
            let heard = if error.is_timeout() {
                Heard::Nothing
            } else if error.code().is_some() {
                Heard::Answer
            } else {
                Heard::Failure
            };
            (heard, Err(StoreError::unavailable(error)))
        }
        Err(elapsed) => (
            Heard::Nothing,
            Err(StoreError::unavailable(TimedOut(timeout, elapsed))),
        ),
    }
}

/// A call that did not finish within the store's timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer from Redis within {0:?}")]
struct TimedOut(Duration, #[source] tokio::time::error::Elapsed);

fn corrupt(key: &StorageKey, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

fn with_key(error: StoreError, key: &StorageKey) -> StoreError {
    match error {
        StoreError::Corrupt { detail, .. } => corrupt(key, detail),
        other => other,
    }
}

/// `'P'`, fingerprint, token (and a `'w'` when waited on).
const IN_PROGRESS_LEN: usize = 1 + 16 + 16;

/// The value of a record in progress, as a claim writes it.
fn in_progress(fingerprint: [u8; 16], token: LeaseToken) -> [u8; IN_PROGRESS_LEN] {
    let mut value = [0; IN_PROGRESS_LEN];
    value[0] = b'P';
    value[1..17].copy_from_slice(&fingerprint);
    value[17..].copy_from_slice(&token.as_u128().to_be_bytes());
    value
}

/// Whether a stored value is the in-progress value this claim wrote (with
/// or without a waiter's mark).
fn is_own_claim(stored: &[u8], ours: &[u8; IN_PROGRESS_LEN]) -> bool {
    stored
        .strip_prefix(&ours[..])
        .is_some_and(|rest| rest.is_empty() || rest == b"w")
}

/// Decodes a stored value into a [`Record`] whose deadline is "alive" (Redis
/// keeps the expiry itself and only hands out live keys).
pub(crate) fn decode(key: &StorageKey, bytes: Vec<u8>) -> Result<Record, StoreError> {
    let u128_at = |at: usize| {
        let raw: [u8; 16] = bytes[at..at + 16].try_into().unwrap_or_default();
        u128::from_be_bytes(raw)
    };
    let state = match bytes.first() {
        Some(b'P')
            if bytes.len() == IN_PROGRESS_LEN
                || (bytes.len() == IN_PROGRESS_LEN + 1 && bytes.last() == Some(&b'w')) =>
        {
            RecordState::InProgress {
                token: LeaseToken::from_u128(u128_at(17)),
                lease_until: Millis::MAX,
            }
        }
        Some(b'C') if bytes.len() >= 17 => RecordState::Completed {
            response: Arc::from(&bytes[17..]),
            expires_at: Millis::MAX,
        },
        _ => {
            return Err(corrupt(
                key,
                "not an idempotency record (unknown tag, or truncated)",
            ));
        }
    };
    Ok(Record {
        fingerprint: Fingerprint::from_u128(u128_at(1)),
        state,
    })
}

fn millis_arg(duration: Duration) -> String {
    record::millis(duration).to_string()
}

#[async_trait]
impl Store for RedisStore {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        let token = self.new_token();
        let redis_key = RedisKey(&self.inner.key_prefix, key.as_str());
        let value = in_progress(fingerprint.as_u128().to_be_bytes(), token);
        // Sized up front: the command is built on every claim, so on every
        // replay (7 arguments; the lease has at most 20 digits).
        let key_len = self.inner.key_prefix.len() + NO_TAG.len() + key.as_str().len();
        let mut set = redis::Cmd::with_capacity(7, key_len + IN_PROGRESS_LEN + 36);
        set.arg("SET")
            .arg(&redis_key)
            .arg(&value[..])
            .arg("NX")
            .arg("PX")
            .arg(record::millis(lease))
            .arg("GET");
        let current = match self.query(&set).await.map_err(|e| with_key(e, key))? {
            Value::Nil => {
                return Ok(ClaimOutcome::Acquired(Lease {
                    token,
                    duration: lease,
                }));
            }
            // This claim's own record: redis-rs's cluster client sends a
            // command again when its connection drops before the answer
            // arrives, and the first sending may have written it.
            Value::BulkString(bytes) if is_own_claim(&bytes, &value) => {
                return Ok(ClaimOutcome::Acquired(Lease {
                    token,
                    duration: lease,
                }));
            }
            Value::BulkString(bytes) => decode(key, bytes)?,
            other => return Err(corrupt(key, format!("unexpected answer {other:?}"))),
        };
        // Redis only returns live keys: the record's deadline is "later".
        match record::decide_claim(Some(&current), fingerprint, 0) {
            ClaimDecision::Answer(ClaimOutcome::InFlight { .. }) => {
                self.in_flight(key, fingerprint).await
            }
            ClaimDecision::Answer(answer) => Ok(answer),
            // Not reachable for a live record; answered conservatively.
            ClaimDecision::Acquire => Ok(ClaimOutcome::InFlight {
                retry_after: Duration::from_millis(1),
            }),
        }
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let fingerprint = fingerprint.as_u128().to_be_bytes();
        let mut completed = Vec::with_capacity(17 + response.len());
        completed.push(b'C');
        completed.extend_from_slice(&fingerprint);
        completed.extend_from_slice(response);
        let ttl = millis_arg(ttl);
        let args: [&[u8]; 4] = [
            &in_progress(fingerprint, token),
            &completed,
            ttl.as_bytes(),
            self.inner.channel.as_bytes(),
        ];
        self.fenced_answer(&self.inner.scripts.complete, key, &args)
            .await
    }

    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        self.fenced(
            &self.inner.scripts.release,
            key,
            token,
            &[self.inner.channel.as_bytes()],
        )
        .await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = millis_arg(lease);
        self.fenced(&self.inner.scripts.renew, key, token, &[lease.as_bytes()])
            .await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let redis_key = self.redis_key(key);
        // Listen first, then mark: a completion after the mark is announced
        // and heard; one before it leaves no in-progress record to mark.
        // Unregistered when dropped, also when this future is.
        let (notified, _registered) = self.inner.waiters.register(redis_key.as_bytes());
        match self
            .invoke(&self.inner.scripts.mark_waiting, key, &[])
            .await
        {
            Ok(Value::Int(1)) => {
                let _ = tokio::time::timeout(timeout.min(self.inner.wait_recheck), notified).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(error) => Err(with_key(error, key)),
        }
    }
}

/// A caller registered as waiting on a key, until dropped.
struct Registered<'a> {
    waiters: &'a Waiters,
    key: &'a [u8],
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiters.unregister(self.key);
    }
}

impl Waiters {
    /// Registers a waiter on `key`: the notice that wakes it, and the
    /// registration, which ends when it is dropped (so a cancelled wait
    /// leaves nothing behind).
    fn register<'a>(
        &'a self,
        key: &'a [u8],
    ) -> (tokio::sync::futures::OwnedNotified, Registered<'a>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(key.to_vec())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        let notified = Arc::clone(&entry.0).notified_owned();
        (notified, Registered { waiters: self, key })
    }

    fn unregister(&self, key: &[u8]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(key);
            }
        }
    }

    fn wake(&self, key: &[u8]) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((notify, _)) = map.get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter, to look again: after a gap in the subscription,
    /// whose notices are lost.
    fn wake_all(&self) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (notify, _) in map.values() {
            notify.notify_waiters();
        }
    }
}

/// Listens for completion notices and wakes the matching waiters, for the
/// life of the store; reconnects after a lost connection.
async fn notify_waiters(
    clients: Vec<redis::Client>,
    channel: String,
    waiters: Arc<Waiters>,
    timeout: Duration,
) {
    // After a failure or a lost connection, the next client (the next seed
    // node of a cluster) is tried.
    for client in clients.iter().cycle() {
        // Connecting and subscribing are bounded together: a node that
        // accepts the connection and then answers nothing would otherwise
        // hold the notifier on it for good.
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        });
        let subscribed = subscribed.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "pub/sub subscription timed out",
            )))
        });
        match subscribed {
            Ok(pubsub) => listen(pubsub, &waiters, timeout).await,
            Err(error) => tracing::debug!(%error, "completion notices unavailable; waiters poll"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wakes the waiters named by the notices on `pubsub` until its connection
/// ends or goes silent. A connection that goes silent without a reset (its
/// host vanished) ends nothing, and would leave every waiter to its
/// re-checks for good: a `PING` every five timeouts (at least every
/// second), bounded by the timeout, tells.
async fn listen(pubsub: redis::aio::PubSub, waiters: &Waiters, timeout: Duration) {
    // Notices published before this subscription are lost: whoever waited
    // through the gap looks again now.
    waiters.wake_all();
    let (mut sink, mut messages) = pubsub.split();
    let mut health = tokio::time::interval(timeout.saturating_mul(5).max(Duration::from_secs(1)));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => waiters.wake(message.get_payload_bytes()),
                None => return,
            },
            _ = health.tick() => {
                let ping = tokio::time::timeout(timeout, sink.ping::<Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    tracing::debug!("completion notices went silent; subscribing again");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(waiters: &Waiters, key: &[u8]) -> usize {
        let map = waiters.0.lock().unwrap();
        map.get(key).map_or(0, |(_, count)| *count)
    }

    #[test]
    fn a_claim_knows_its_own_record_and_only_it() {
        let ours = in_progress([7; 16], LeaseToken::from_u128(42));
        assert!(is_own_claim(&ours, &ours));
        assert!(
            is_own_claim(&[&ours[..], b"w"].concat(), &ours),
            "marked by a waiter"
        );
        let other_token = in_progress([7; 16], LeaseToken::from_u128(43));
        assert!(!is_own_claim(&other_token, &ours));
        let other_payload = in_progress([8; 16], LeaseToken::from_u128(42));
        assert!(!is_own_claim(&other_payload, &ours));
        assert!(!is_own_claim(&ours[..32], &ours), "truncated");
        assert!(!is_own_claim(&[&ours[..], b"ww"].concat(), &ours));
        let mut completed = ours.to_vec();
        completed[0] = b'C';
        assert!(!is_own_claim(&completed, &ours));
    }

    #[test]
    fn a_waiter_is_unregistered_when_its_registration_drops() {
        let waiters = Waiters::default();
        let first = waiters.register(b"k");
        let second = waiters.register(b"k");
        assert_eq!(waiting(&waiters, b"k"), 2);
        drop(first);
        assert_eq!(waiting(&waiters, b"k"), 1);
        // A cancelled `wait` drops its registration like this.
        drop(second);
        assert!(waiters.0.lock().unwrap().is_empty(), "nothing left behind");
    }
}
