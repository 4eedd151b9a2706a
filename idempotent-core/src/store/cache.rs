//! A local cache of completed records in front of a shared store: a replay
//! whose record this process holds is answered without a round trip.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::admin::{Admin, Eviction, OperationCount, RecordInfo};
use super::{StepLog, StepWrite, Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{ClaimOutcome, LeaseToken};
use crate::telemetry::LOCAL_CACHE as CACHE;

/// A completed record, as the cache keeps it.
#[derive(Clone)]
struct Entry {
    fingerprint: Fingerprint,
    response: Arc<[u8]>,
    /// When the record expires in the store: the entry is never used after.
    expires_at: Instant,
}

/// Weighs an entry by the bytes it holds: its key, its response, and a
/// fixed share for the entry itself.
#[derive(Clone)]
struct Bytes;

impl quick_cache::Weighter<StorageKey, Entry> for Bytes {
    fn weight(&self, key: &StorageKey, entry: &Entry) -> u64 {
        (key.as_str().len() + entry.response.len() + 64) as u64
    }
}

/// Counts the entries evicted to stay within the bound.
#[derive(Clone)]
struct Evictions;

impl quick_cache::Lifecycle<StorageKey, Entry> for Evictions {
    type RequestState = ();

    fn begin_request(&self) -> Self::RequestState {}

    fn on_evict(&self, (): &mut Self::RequestState, _: StorageKey, _: Entry) {
        metrics::counter!(CACHE, "cache" => "evicted").increment(1);
    }
}

/// A [`Store`] that keeps the records this process completed in memory, in
/// front of a shared store (Redis, PostgreSQL), so that a replay of one of
/// them answers at once, without a round trip. Off unless you wrap your
/// store in it; bounded by bytes.
///
/// - Only completed records are kept, never records in progress; an entry
///   is used only until its record's TTL ends (taken from the completion,
///   which this process made), and keeps the record's fingerprint, so a
///   reused key with another payload is still [`ClaimOutcome::KeyReused`].
/// - A record this process did not complete (another instance did) is not
///   kept: its remaining TTL is not known here. A retry that lands on the
///   instance that answered first is the one a cache serves.
/// - Bounded by bytes (key, response and a 64-byte share per entry), with
///   quick_cache's CLOCK-Pro eviction: a concurrent cache made for this, and
///   lighter than moka for a cache whose entries are only inserted once and
///   read (no per-entry timers to keep: expiry is checked on read).
/// - Counted by [`LOCAL_CACHE`](crate::telemetry::LOCAL_CACHE): hits,
///   misses and evictions.
///
/// The one thing it changes: a record deleted from the store by hand still
/// replays from the caches of the processes that completed it, until its
/// TTL ends; [`purge`](LocalCache::purge) or [`clear`](LocalCache::clear)
/// them too (or restart those processes).
///
/// ```
/// use idempotent_core::Idempotency;
/// use idempotent_core::memory::MemoryStore;
/// use idempotent_core::LocalCache;
///
/// // 64 MiB of completed records in front of the shared store.
/// let cached = LocalCache::new(MemoryStore::new(), 64 << 20);
/// let idempotency = Idempotency::new(cached.clone());
/// # let _ = idempotency;
/// ```
#[derive(Clone)]
pub struct LocalCache<S> {
    inner: S,
    entries: Arc<Entries>,
}

/// The cache's entries: bounded by [`Bytes`], evictions counted.
type Entries =
    quick_cache::sync::Cache<StorageKey, Entry, Bytes, quick_cache::DefaultHashBuilder, Evictions>;

impl<S> std::fmt::Debug for LocalCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCache")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .finish_non_exhaustive()
    }
}

impl<S: Store> LocalCache<S> {
    /// `inner` with a cache of at most `bytes` of completed records.
    pub fn new(inner: S, bytes: u64) -> Self {
        let estimated = usize::try_from(bytes / 512).unwrap_or(usize::MAX).max(16);
        Self {
            inner,
            entries: Arc::new(quick_cache::sync::Cache::with(
                estimated,
                bytes.max(1),
                Bytes,
                quick_cache::DefaultHashBuilder::default(),
                Evictions,
            )),
        }
    }

    /// Drops `key`'s entry, if any: after deleting its record from the store
    /// by hand.
    pub fn purge(&self, key: &StorageKey) {
        self.entries.remove(key);
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.entries.clear();
    }

    /// The bytes its entries take, as it weighs them.
    pub fn bytes(&self) -> u64 {
        self.entries.weight()
    }

    /// The store behind the cache.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

#[async_trait]
impl<S: Store> Store for LocalCache<S> {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        if let Some(entry) = self.entries.get(key) {
            if entry.expires_at > Instant::now() {
                metrics::counter!(CACHE, "cache" => "hit").increment(1);
                return Ok(if entry.fingerprint == fingerprint {
                    ClaimOutcome::Completed(entry.response)
                } else {
                    ClaimOutcome::KeyReused
                });
            }
            self.entries.remove(key);
        }
        metrics::counter!(CACHE, "cache" => "miss").increment(1);
        self.inner.claim(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        // Read before the store: the record expires no earlier than this.
        let now = Instant::now();
        self.inner
            .complete(key, token, fingerprint, response, ttl)
            .await?;
        if let Some(expires_at) = now.checked_add(ttl) {
            let entry = Entry {
                fingerprint,
                response: Arc::from(response),
                expires_at,
            };
            self.entries.insert(key.clone(), entry);
        }
        Ok(())
    }

    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.inner.renew(key, token, lease).await
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        self.inner.wait(key, timeout).await
    }

    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        self.inner.steps(key).await
    }

    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        self.inner.record_step(key, step).await
    }

    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        self.inner.clear_steps(key).await
    }
}

/// The admin operations of the store behind the cache; an eviction also
/// drops the key's entry here, so that this process stops replaying it.
/// (Other processes' caches keep their entries until the record's TTL, or
/// until they [`purge`](LocalCache::purge) it.)
#[async_trait]
impl<S: Store + Admin> Admin for LocalCache<S> {
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError> {
        self.inner.inspect(key, with_response).await
    }

    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError> {
        let eviction = self.inner.evict(key, force).await?;
        if !matches!(eviction, Eviction::Refused { .. }) {
            self.purge(key);
        }
        Ok(eviction)
    }

    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError> {
        self.inner.stuck(older_than, limit).await
    }

    async fn count(&self) -> Result<Vec<OperationCount>, StoreError> {
        self.inner.count().await
    }
}
