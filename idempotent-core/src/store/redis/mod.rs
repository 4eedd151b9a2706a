//! The Redis store: several processes and machines share one state.
//!
//! # Layout
//!
//! One Redis string per record, under `<key_prefix>{}<storage key>`, so
//! every operation touches one key (one hash slot; recording a step also
//! touches the call's steps, in the same slot: see [Steps](#steps)) and
//! works unchanged on a cluster. The empty hash tag `{}` makes a cluster
//! hash the whole key: a client that sends `{x}1`, `{x}2`, ... as its keys
//! cannot pin every record to one slot and one master (a tag in the prefix
//! still pins, if that is what you want). Expiry is Redis's own (`PX`): a lease that runs out, or a
//! completed record past its TTL, is simply gone; there is no sweeper.
//!
//! ```text
//! InProgress: 0x02 | 'P' | fingerprint (16 bytes) | lease token (16 bytes) [| 'w']   PX = lease
//! Completed:  0x02 | 'C' | fingerprint (16 bytes) | response bytes           PX = ttl
//! ```
//!
//! The first byte is the record layout's version ([`record::LAYOUT`]).
//! Layout 1 (release 0.1) had none: its values start at the tag, `'P'` or
//! `'C'`, and are read as they are (a version is a byte below `' '`, never
//! a tag). A value of a later layout is [`StoreError::Corrupt`], naming its
//! version. Lease tokens carry the time of their claim (bits 63 to 16, Unix
//! milliseconds), which tells how long a record has been in progress.
//!
//! Each transition is one atomic round trip:
//!
//! - claim is `SET key <InProgress> NX PX <lease> GET` (Redis 7): it writes
//!   the record only when the key is absent (or expired: a dead lease is
//!   gone), and otherwise returns the record that is there, which
//!   [`record::decide_claim`] answers. No script: a claim, and so every
//!   replay, costs Redis what a plain `SET` does. Only an in-progress answer
//!   asks a second question (the record and its `PTTL`, read together by a
//!   script), for its `retry_after`.
//! - complete, release and renew are Lua scripts (`EVALSHA`; after
//!   `NOSCRIPT`, `EVAL` with the source) that check the lease token and
//!   write in one step.
//!
//! A caller that waits on an in-progress key appends `'w'` to its record (a
//! small script, on that rare path only); completion and release of a
//! marked record are announced on a pub/sub channel, which wakes the
//! waiters. Unmarked records publish nothing, so the common path pays no
//! pub/sub traffic.
//!
//! # Steps
//!
//! A call's journaled steps ([`Store::record_step`]) are one Redis hash
//! per call, apart from its record so that they outlive a release:
//!
//! ```text
//! <key_prefix>{<tag>}s<storage key>        PX = ttl (of the last step recorded)
//!   'f'          -> fingerprint (16 bytes) of the call that recorded them
//!   's' <name>   -> the step's value bytes, one field per step
//! ```
//!
//! Every step's field is `s` and its name, so no name (not even an empty
//! one) can take the fingerprint's field `f`. A hash without `f`, with a
//! fingerprint that is not 16 bytes, or with any other field is corrupt.
//!
//! `<tag>` is the smallest decimal number whose cluster slot is the slot of
//! the call's record (CRC16 of the whole record key, as its empty tag asks;
//! a table of one tag per slot is built once per process), so that the
//! script recording a step can check the record's lease, extend it and
//! write the step in one atomic round trip on a cluster too. The same key
//! is used on a standalone server. It can never be a record's key: after
//! the prefix, a record key has the empty tag `{}`. When the prefix holds a
//! `{` itself, its braces decide both keys' slots, and the steps key is
//! `<key_prefix>{}s<storage key>` (never a record's key either: a storage
//! key starts with a digit). A prefix whose first braces are empty
//! (`a{}b:`) makes a cluster hash both keys whole, into different slots:
//! there, recording a step is [`StoreError::Unsupported`].
//!
//! - record_step is a Lua script on both keys (`record_step.lua`): if the
//!   record is this lease's in-progress value (with or without a waiter's
//!   `'w'`, which stays), `HSET` of the fingerprint and the step, `PEXPIRE`
//!   of the hash to the TTL and of the record to the lease; otherwise it
//!   answers 0, [`StoreError::LeaseLost`], and writes nothing.
//! - steps is `HGETALL` of the hash (none: no steps); clear_steps is `DEL`.
//!
//! # Files
//!
//! `builder` (the settings), `layout` (a record's key and bytes, and the
//! key of a call's steps), `slots` (cluster slots, and a tag per slot),
//! `scripts` (the Lua, and `complete.lua` and `record_step.lua`),
//! `connection` (what a call sends and how long it may take, over
//! `standalone` or `cluster`), `notifier` (completion notices for waiters)
//! and `steps` (journaled steps); this file holds the store itself.

mod admin;
mod builder;
mod cluster;
mod connection;
mod layout;
mod notifier;
mod scripts;
mod slots;
mod standalone;
mod steps;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Value;

pub use builder::RedisStoreBuilder;
use connection::{Connection, Request, bounded};
pub(crate) use layout::decode;
use layout::{
    IN_PROGRESS_LEN, NO_TAG, RedisKey, completed, corrupt, in_progress, is_own_claim, millis_arg,
    with_key,
};
use notifier::Waiters;
use scripts::{Lua, Scripts};

use super::lease_tokens::LeaseTokens;
use super::{StepLog, StepWrite, Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, ClaimDecision, ClaimOutcome, Lease, LeaseToken};

/// The default bound on every Redis call, after which it fails closed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// How often, by default, a caller waiting on an in-progress key re-checks it,
/// in case a completion notice was missed (sent before it subscribed, or lost
/// with a dropped pub/sub connection); see [`RedisStoreBuilder::wait_recheck`].
pub const DEFAULT_WAIT_RECHECK: Duration = Duration::from_millis(200);

/// A [`Store`] on Redis, standalone or cluster.
///
/// - Fails closed: a refused connection or a call that takes longer than
///   [`timeout`](RedisStoreBuilder::timeout) (default 1 s) is
///   [`StoreError::Unavailable`], so the engine never runs a body without a
///   claim. The connection is re-established in the background: when Redis
///   comes back, the store works again without a restart.
/// - A stored value that is not a record this store wrote is
///   [`StoreError::Corrupt`], never a panic and never a re-execution.
/// - Waiting on an in-progress key is woken by a pub/sub notice, with a
///   polling fallback, every 200 ms by default ([`RedisStoreBuilder::wait_recheck`]).
///
/// ```no_run
/// use idempotent_core::Idempotency;
/// use idempotent_core::redis::RedisStore;
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
    tokens: LeaseTokens,
    waiters: Arc<Waiters>,
    notifier: tokio::task::JoinHandle<()>,
    scripts: Scripts,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.notifier.abort();
    }
}

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

impl RedisStore {
    /// Starts building a store.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects to `url` with the default settings (see [`RedisStoreBuilder::url`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().url(url).build().await
    }

    /// The Redis key of a storage key's record: `<key_prefix>{}<storage key>`.
    pub fn redis_key(&self, key: &StorageKey) -> String {
        let prefix = &self.inner.key_prefix;
        let mut redis_key = String::with_capacity(prefix.len() + NO_TAG.len() + key.as_str().len());
        redis_key.push_str(prefix);
        redis_key.push_str(NO_TAG);
        redis_key.push_str(key.as_str());
        redis_key
    }

    fn new_token(&self) -> LeaseToken {
        self.inner.tokens.next()
    }

    /// `EVALSHA` (or, with `by_hash` false, `EVAL`) of `lua` on the record
    /// of `key` (`KEYS[1]`, by which a cluster routes it) and `more_keys`,
    /// in one buffer: a `ScriptInvocation` would copy each argument into a
    /// vector of its own, then all of them again into its command, on every
    /// completion.
    fn script_command(
        &self,
        lua: &Lua,
        by_hash: bool,
        key: &StorageKey,
        more_keys: &[&str],
        args: &[&[u8]],
    ) -> redis::Cmd {
        let key = key.as_str();
        let bytes = args.iter().map(|a| a.len()).sum::<usize>()
            + more_keys.iter().map(|k| k.len()).sum::<usize>()
            + key.len();
        let mut command = redis::Cmd::with_capacity(4 + more_keys.len() + args.len(), bytes + 64);
        if by_hash {
            command.arg("EVALSHA").arg(lua.script.get_hash());
        } else {
            command.arg("EVAL").arg(lua.source);
        }
        command
            .arg(1 + more_keys.len())
            .arg(RedisKey(&self.inner.key_prefix, key));
        for more in more_keys {
            command.arg(*more);
        }
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
        self.invoke_keys(lua, key, &[], args).await
    }

    /// [`invoke`](Self::invoke), with keys after the record's (in its slot).
    async fn invoke_keys(
        &self,
        lua: &Lua,
        key: &StorageKey,
        more_keys: &[&str],
        args: &[&[u8]],
    ) -> Result<Value, StoreError> {
        let command = |by_hash| self.script_command(lua, by_hash, key, more_keys, args);
        self.send(&Request::Script(&command)).await
    }

    /// The answer to a claim that met a record in progress: how long its
    /// lease has left, read together with the record. The record may have
    /// changed since the claim: completed (answered as such), or gone (the
    /// caller may retry now).
    async fn in_progress(
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
                return Ok(ClaimOutcome::InProgress {
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
            ClaimDecision::Answer(ClaimOutcome::InProgress { .. }) if ttl == -1 => Err(corrupt(
                key,
                "a record in progress without an expiry (it would hold the key forever); \
                 delete the key",
            )),
            ClaimDecision::Answer(ClaimOutcome::InProgress { .. }) => {
                Ok(ClaimOutcome::InProgress {
                    retry_after: Duration::from_millis(u64::try_from(ttl).unwrap_or(0)),
                })
            }
            ClaimDecision::Answer(answer) => Ok(answer),
            ClaimDecision::Acquire => Ok(ClaimOutcome::InProgress {
                retry_after: Duration::ZERO,
            }),
        }
    }

    async fn query(&self, command: &redis::Cmd) -> Result<Value, StoreError> {
        self.send(&Request::Command(command)).await
    }

    /// Sends `request` on the store's connection, bounded by its timeout.
    async fn send(&self, request: &Request<'_>) -> Result<Value, StoreError> {
        match &self.inner.connection {
            Connection::Single(c) => c.call(self.inner.timeout, request).await,
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
        self.fenced_answer(lua, key, &[], &all).await
    }

    /// Runs a fenced script, which answers 1 if it held the lease, 0 if not.
    async fn fenced_answer(
        &self,
        lua: &Lua,
        key: &StorageKey,
        more_keys: &[&str],
        args: &[&[u8]],
    ) -> Result<(), StoreError> {
        match self
            .invoke_keys(lua, key, more_keys, args)
            .await
            .map_err(|e| with_key(e, key))?
        {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(StoreError::LeaseLost),
            other => Err(corrupt(key, format!("unexpected script answer {other:?}"))),
        }
    }
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
            ClaimDecision::Answer(ClaimOutcome::InProgress { .. }) => {
                self.in_progress(key, fingerprint).await
            }
            ClaimDecision::Answer(answer) => Ok(answer),
            // Not reachable for a live record; answered conservatively.
            ClaimDecision::Acquire => Ok(ClaimOutcome::InProgress {
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
        let completed = completed(fingerprint, response);
        let ttl = millis_arg(ttl);
        let args: [&[u8]; 4] = [
            &in_progress(fingerprint, token),
            &completed,
            ttl.as_bytes(),
            self.inner.channel.as_bytes(),
        ];
        self.fenced_answer(&self.inner.scripts.complete, key, &[], &args)
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

    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        self.read_steps(key).await
    }

    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        self.write_step(key, step).await
    }

    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        self.drop_steps(key).await
    }
}
