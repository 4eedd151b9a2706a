//! Where records live: the [`Store`] trait and its backends.
//!
//! A store applies the transitions of [`record`](crate::record) atomically;
//! it holds no policy of its own. Every backend passes the same conformance
//! suite ([`conformance`](crate::conformance), feature `conformance`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{ClaimOutcome, LeaseToken};

pub mod admin;
mod cache;
#[cfg(any(feature = "redis", feature = "postgres"))]
mod lease_tokens;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
mod steps;
mod transaction;

pub use cache::LocalCache;
pub use steps::{StepLog, StepWrite};
pub use transaction::{TransactionClaim, TransactionalStore};

// The record decoders, for the fuzz entry points (`crate::__fuzz`).
#[cfg(all(feature = "fuzz", feature = "redis"))]
pub(crate) use self::redis::decode as decode_redis_value;
#[cfg(all(feature = "fuzz", feature = "postgres"))]
pub(crate) use postgres::decode_columns as decode_postgres_columns;

/// A backend holding idempotency records.
///
/// Usable generically (`S: Store`) and as a trait object (`Arc<dyn Store>`).
/// Each method is one atomic step of the state machine in
/// [`record`](crate::record); `complete`, `release` and `renew` are fenced by
/// the lease token and answer [`StoreError::LeaseLost`] when it is not the
/// live one.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use idempotent_core::{Fingerprint, IdempotencyKey, Store};
/// use idempotent_core::record::{ClaimOutcome, StorageKey};
/// use idempotent_core::memory::MemoryStore;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
/// let key = StorageKey::new("idem", "", "charge", &"k1".parse::<IdempotencyKey>()?);
/// let fp = Fingerprint::of(&1000);
/// let ClaimOutcome::Acquired(lease) = store.claim(&key, fp, Duration::from_secs(30)).await? else {
///     unreachable!("a fresh key is acquired")
/// };
/// store.complete(&key, lease.token, fp, b"receipt", Duration::from_secs(3600)).await?;
/// assert_eq!(
///     store.claim(&key, fp, Duration::from_secs(30)).await?,
///     ClaimOutcome::Completed(b"receipt"[..].into())
/// );
/// # Ok(()) }
/// ```
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for a caller whose payload has `fingerprint`, in one atomic step.
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError>;

    /// Stores `response` for `key` and keeps it for `ttl`, if `token` holds the live lease.
    ///
    /// `fingerprint` is the one the lease was claimed with: a store may write
    /// it into the completed record instead of reading it back (the Redis
    /// store does). Another fingerprint is refused as
    /// [`StoreError::LeaseLost`], like another token, and changes nothing.
    ///
    /// A store may acknowledge a completion whose record is already stored
    /// byte for byte (same fingerprint, same response), whatever its token,
    /// instead of refusing it: nothing changes either way, and a completion
    /// sent twice (its first answer lost with a connection) then succeeds
    /// twice. The Redis store does; the model test (`tests/model.rs`) holds
    /// every store to the rest.
    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Deletes the record of `key`, if `token` holds the live lease.
    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError>;

    /// Extends the lease on `key` to `lease` from now, if `token` holds the live lease.
    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError>;

    /// Returns when the record of `key` may have changed (completed, released
    /// or expired), or after `timeout`, whichever comes first. Spurious
    /// returns are allowed: callers claim again afterwards.
    ///
    /// The default sleeps a bounded interval (a polling fallback); stores
    /// with change notifications override it.
    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let _ = key;
        tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
        Ok(())
    }

    /// The steps recorded for the call `key` ([`record_step`](Store::record_step)),
    /// or `None` if it has none (none were recorded, they were
    /// [cleared](Store::clear_steps), or they expired).
    ///
    /// The default answers [`StoreError::Unsupported`]: a store that does
    /// not journal steps. Every store of this crate does.
    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        let _ = key;
        Err(StoreError::Unsupported {
            what: "journaled steps",
        })
    }

    /// Records `step` for the call `key`, in one atomic step, if
    /// `step.token` holds the call's live lease with `step.fingerprint`
    /// ([`StoreError::LeaseLost`] otherwise, and nothing changes). The
    /// same write extends the lease to `step.lease` from now (as
    /// [`renew`](Store::renew) does), and keeps the call's steps for
    /// `step.ttl` from now, whatever happens to the call's record: a
    /// release leaves them for the retry. A name recorded again replaces
    /// its value; the log's fingerprint becomes `step.fingerprint`.
    ///
    /// The default answers [`StoreError::Unsupported`].
    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        let _ = (key, step);
        Err(StoreError::Unsupported {
            what: "journaled steps",
        })
    }

    /// Deletes the steps of the call `key` (once the call completed, its
    /// record replays the whole call, and its steps are no longer needed).
    /// Not fenced: a completed record is no lease's. Deleting steps that do
    /// not exist succeeds.
    ///
    /// The default answers [`StoreError::Unsupported`].
    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        let _ = key;
        Err(StoreError::Unsupported {
            what: "journaled steps",
        })
    }

    /// Releases a lease from synchronous code (a `Drop` impl, when a body
    /// panicked or its future was dropped), without waiting for the answer.
    ///
    /// `lease_left` is how long the lease may still be live: after it, the
    /// store frees the key by itself, and a release is moot.
    ///
    /// The default releases in a task on the current tokio runtime, if there
    /// is one (otherwise the lease simply runs out), and tries again with
    /// backoff while the store cannot be reached, until it answers or the
    /// lease is over, so that a retry finds the key free soon after the
    /// store is back rather than when the lease runs out. Fencing keeps it
    /// safe: a release of a lease that ran out or was taken over is refused
    /// and ends the task. Stores that can release synchronously override it.
    fn release_detached(self: Arc<Self>, key: StorageKey, token: LeaseToken, lease_left: Duration) {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let until = tokio::time::Instant::now() + lease_left;
            handle.spawn(release_until_answered(self, key, token, until));
        }
    }
}

/// Releases `key` for `token`, again and again while the store cannot be
/// reached; ends on any answer from it, or once `until` (the end of the
/// lease) is past.
async fn release_until_answered<S: Store + ?Sized>(
    store: Arc<S>,
    key: StorageKey,
    token: LeaseToken,
    until: tokio::time::Instant,
) {
    let mut delays = backoff(MAX_RETRY_DELAY);
    let mut failures = 0_u32;
    loop {
        match store.release(&key, token).await {
            Ok(()) if failures > 0 => {
                tracing::info!(%key, failures, "released a key once the store was back");
                return;
            }
            Ok(()) => return,
            // Nothing to release: a call dropped while its completion was
            // on the way (it landed), or a lease that ran out.
            Err(StoreError::LeaseLost) => {
                tracing::debug!(%key, "an abandoned lease was no longer held");
                return;
            }
            Err(error) if error.is_transient() => {
                if tokio::time::Instant::now() >= until {
                    tracing::warn!(%key, %error, "could not release a key before its lease ran out");
                    return;
                }
                if failures == 0 {
                    tracing::warn!(%key, %error, "could not release a key; trying again until the store answers");
                }
                failures = failures.saturating_add(1);
            }
            Err(error) => {
                tracing::warn!(%key, %error, "could not release a key; it is freed when its lease runs out");
                return;
            }
        }
        tokio::time::sleep(delays.next().unwrap_or(MAX_RETRY_DELAY)).await;
    }
}

/// The longest pause between two tries of a write the store could not take.
pub(crate) const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The pauses between tries of a write the store could not take (a release,
/// a result to store): from 25 ms (or `max`, if less), doubling, at most
/// `max`, jittered so that the writes of many calls do not all arrive
/// together when it is back.
pub(crate) fn backoff(max: Duration) -> impl Iterator<Item = Duration> + Send {
    use backon::BackoffBuilder as _;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(25).min(max))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Why a store could not answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store could not be reached, or did not answer in time.
    #[error("the idempotency store is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The token does not hold the live lease: it expired, or another caller took it over.
    #[error("the lease is no longer held: it expired or was taken over")]
    LeaseLost,
    /// A stored record could not be decoded (written by something else, or truncated).
    #[error("the stored record for `{key}` is corrupt: {detail}")]
    Corrupt {
        /// The storage key of the record.
        key: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The store cannot hold this key: PostgreSQL's text cannot hold a NUL
    /// character, and its index bounds how long a key may be
    /// (`postgres::MAX_KEY_BYTES`). Nothing was stored; the engine answers it
    /// as [`KeyError::NotStorable`](crate::KeyError::NotStorable).
    #[error("the idempotency store cannot hold this key: {detail}")]
    KeyRejected {
        /// Which part of the key, and why.
        detail: String,
    },
    /// The store does not do `what` (a store of your own without journaled
    /// steps, say).
    #[error("the idempotency store does not support {what}")]
    Unsupported {
        /// What it does not do.
        what: &'static str,
    },
    /// The store is full of records that may not be evicted.
    #[error(
        "the idempotency store is full ({limit} records) and no completed record can be evicted"
    )]
    CapacityExceeded {
        /// The configured bound on the whole store. A store may enforce it
        /// in parts (the memory store gives each shard `limit / shards`),
        /// so a claim can be refused a little before `limit` records exist.
        limit: usize,
    },
}

impl StoreError {
    /// Wraps any error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable(error.into())
    }

    /// Whether this is [`StoreError::LeaseLost`].
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost)
    }

    /// Whether the same call may succeed later: the store was unreachable
    /// or full. A fenced lease, a corrupt record and a key the store
    /// cannot hold stay as they are.
    ///
    /// ```
    /// use idempotent_core::StoreError;
    ///
    /// assert!(StoreError::unavailable("connection refused").is_transient());
    /// assert!(!StoreError::LeaseLost.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::CapacityExceeded { .. })
    }
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        (**self).claim(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        (**self)
            .complete(key, token, fingerprint, response, ttl)
            .await
    }

    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        (**self).release(key, token).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        (**self).renew(key, token, lease).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        (**self).wait(key, timeout).await
    }

    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        (**self).steps(key).await
    }

    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        (**self).record_step(key, step).await
    }

    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        (**self).clear_steps(key).await
    }

    fn release_detached(self: Arc<Self>, key: StorageKey, token: LeaseToken, lease_left: Duration) {
        Arc::clone(&*self).release_detached(key, token, lease_left);
    }
}
