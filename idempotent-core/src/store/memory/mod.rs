//! The in-memory store: one process, no set-up.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use hashbrown::hash_table::Entry;
use tokio::time::Instant;

mod admin;
mod shard;
mod steps;

#[cfg(test)]
use shard::{COMPACT_FACTOR, COMPACT_SLACK};
use shard::{Deadlines, Room, Shard, Slot, SlotState};

use super::{StepLog, StepWrite, Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, ClaimDecision, ClaimOutcome, Lease, LeaseToken, Millis};

/// The bound on records of [`MemoryStore::new`]: 100,000, about 40 MB with
/// 200-byte responses (about 400 bytes a record). With the default 24-hour
/// TTL, that holds every key of a day at about one new key a second; size
/// [`max_entries`](MemoryStoreBuilder::max_entries) to your rate of new
/// keys times the TTL.
///
/// ```
/// use idempotent_core::memory::{DEFAULT_MAX_ENTRIES, MemoryStore};
///
/// // Ten new keys a second, kept a day.
/// let store = MemoryStore::builder().max_entries(10 * 24 * 3600).build();
/// assert!(10 * 24 * 3600 > DEFAULT_MAX_ENTRIES);
/// # let _ = store;
/// ```
pub const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Responses up to this size are kept in the same allocation as their key.
const INLINE_RESPONSE: usize = 1024;

/// How many expired records one call removes at most, so that a burst of
/// expiries is spread over several calls instead of stalling one.
const PURGE_BATCH: usize = 64;

/// An in-memory [`Store`]: sharded, one lock per claim, no background task.
///
/// - Each key lives in one of several shards, each behind its own mutex;
///   every operation takes exactly one shard lock once, so a claim is atomic.
/// - Expiry costs O(expired), not a scan: each shard keeps a min-heap of
///   deadlines, and every call first removes the records whose deadline has
///   passed (at most a small batch per call).
/// - Callers waiting on an in-progress key are woken when it completes, is
///   released or is taken over (a [`Notify`](tokio::sync::Notify) per waited-on key, no polling).
/// - A bound on records ([`MemoryStoreBuilder::max_entries`], by default
///   [`DEFAULT_MAX_ENTRIES`]) evicts the completed record closest to
///   expiry; it never evicts a record in progress and refuses the claim
///   instead ([`StoreError::CapacityExceeded`]). Evicting a completed record
///   shortens its deduplication window (a retry of its key runs again), so
///   size the bound for the traffic of one TTL. Each eviction is counted
///   ([`EVICTED`](crate::telemetry::EVICTED)) and logged as a warning, at
///   most once a minute.
///
/// The clock is tokio's, so tests can use `tokio::time::pause`.
/// Cloning is cheap and shares the records.
///
/// ```
/// use idempotent_core::memory::MemoryStore;
///
/// let store = MemoryStore::builder().shards(16).max_entries(1_000_000).build();
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::fast::RandomState,
    epoch: Instant,
    /// The bound on records, if any (shard `i` holds at most
    /// [`MemoryStore::shard_limit`] of them).
    max_entries: Option<usize>,
    evictions: Evictions,
}

/// Completed records evicted to make room: counted, and logged at most once
/// a minute.
struct Evictions {
    /// Registered on the first eviction, with whatever recorder is
    /// installed then.
    counter: std::sync::OnceLock<metrics::Counter>,
    /// Evictions since the last warning.
    unreported: AtomicU64,
    /// When the last warning was logged ([`MemoryStore::now`]), plus one (0: never).
    warned: AtomicU64,
}

/// How often, at most, evictions are logged.
const EVICTION_WARNING_EVERY: Millis = 60_000;

/// The most shards a store has.
const MAX_SHARDS: usize = 1 << 16;
// A lease token is a shard's count shifted past the shard's index.
const _: () = assert!(MAX_SHARDS <= 1 << 16, "the shard index must fit in 16 bits");

/// Where a lease token keeps the time of its claim ([`MemoryStore::now`]),
/// above the shard's count of leases and the shard's index.
const CLAIMED_AT_SHIFT: u32 = 80;

/// With a bound on entries, the fewest records a shard is made to hold.
const MIN_PER_SHARD: usize = 256;

/// Builds a [`MemoryStore`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryStoreBuilder {
    shards: usize,
    max_entries: Option<usize>,
}

impl MemoryStoreBuilder {
    /// The number of shards (rounded up to a power of two, at most 65,536;
    /// default 64; a small [`max_entries`](Self::max_entries) may lower it).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, MAX_SHARDS);
        self
    }

    /// Bounds the number of records kept (default [`DEFAULT_MAX_ENTRIES`]).
    ///
    /// The bound is applied per shard (`max_entries / shards`, the
    /// remainder spread over the first shards, so that the shards' bounds
    /// add up to exactly `max_entries`): a shard can be full a little before
    /// the store is, and the store never holds more than `max_entries`. A small bound
    /// uses fewer shards, so that each holds at least
    /// 256 records (`max_entries(10)` is one shard of 10): with one or two
    /// records per shard, two calls that hash to one shard would be refused
    /// in an almost empty store.
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = Some(max_entries.max(1));
        self
    }

    /// No bound on the number of records: the store grows with the keys of
    /// one TTL, whatever their number.
    ///
    /// ```
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// let store = MemoryStore::builder().unbounded().build();
    /// # let _ = store;
    /// ```
    pub fn unbounded(mut self) -> Self {
        self.max_entries = None;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let mut shards = self.shards.next_power_of_two();
        if let Some(max) = self.max_entries {
            // The largest power of two with at least MIN_PER_SHARD records each.
            let room = (max / MIN_PER_SHARD).max(1);
            shards = shards.min(1 << room.ilog2());
        }
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                hasher: foldhash::fast::RandomState::default(),
                epoch: Instant::now(),
                max_entries: self.max_entries,
                evictions: Evictions {
                    counter: std::sync::OnceLock::new(),
                    unreported: AtomicU64::new(0),
                    warned: AtomicU64::new(0),
                },
            }),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.inner.shards.len())
            .field("len", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store of at most [`DEFAULT_MAX_ENTRIES`] records, in 64 shards.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Starts building a store.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            shards: 64,
            max_entries: Some(DEFAULT_MAX_ENTRIES),
        }
    }

    /// The number of records held, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.inner.shards.iter().map(|s| lock(s).table.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn now(&self) -> Millis {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Locks the shard of `key`, removes what has expired there, and hands
    /// the shard and the key's hash to `f`.
    fn with_shard<R>(&self, key: &StorageKey, f: impl FnOnce(&mut Shard, u64, Millis) -> R) -> R {
        let hash = self.inner.hasher.hash_one(key.as_str());
        let now = self.now();
        let mut shard = lock(&self.inner.shards[self.shard_index(hash)]);
        shard.purge(now, PURGE_BATCH);
        f(&mut shard, hash, now)
    }

    /// The shard of a key's hash. The top bits pick it; hashbrown uses the
    /// low and top-7 bits inside the table, which is fine to share.
    fn shard_index(&self, hash: u64) -> usize {
        (hash >> 32) as usize & (self.inner.shards.len() - 1)
    }

    /// Counts an eviction, and logs the evictions so far if none was logged
    /// in the last minute.
    fn evicted(&self, max: usize, now: Millis) {
        let evictions = &self.inner.evictions;
        evictions
            .counter
            .get_or_init(|| metrics::counter!(crate::telemetry::EVICTED, "store" => "memory"))
            .increment(1);
        evictions.unreported.fetch_add(1, Ordering::Relaxed);
        let warned = evictions.warned.load(Ordering::Relaxed);
        let due = warned == 0 || now.saturating_sub(warned - 1) >= EVICTION_WARNING_EVERY;
        if due
            && evictions
                .warned
                .compare_exchange(warned, now + 1, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let evicted = evictions.unreported.swap(0, Ordering::Relaxed);
            tracing::warn!(
                max_entries = max,
                evicted,
                "the memory store is full: evicted the completed records closest to expiry, \
                 whose keys can now run again; raise `max_entries` to keep a whole TTL"
            );
        }
    }

    /// With a bound on entries, how many records the shard of `hash` may
    /// hold: the shards' bounds add up to `max_entries` exactly.
    fn shard_limit(&self, hash: u64) -> Option<usize> {
        let shards = self.inner.shards.len();
        self.inner
            .max_entries
            .map(|max| max / shards + usize::from(self.shard_index(hash) < max % shards))
    }

    /// Applies `apply` if `token` holds the live lease on `key` (and, given a
    /// fingerprint, if the record was claimed with it).
    fn fenced(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Option<Fingerprint>,
        apply: impl FnOnce(Entry<'_, Slot>, &mut Deadlines, Millis),
    ) -> Result<(), StoreError> {
        self.with_shard(key, |shard, hash, now| {
            let entry = shard
                .table
                .entry(hash, |s| s.key() == key.as_str().as_bytes(), |s| s.hash);
            let current = match &entry {
                // Only a record in progress can pass the fence: don't copy a response out.
                Entry::Occupied(o) if matches!(o.get().state, SlotState::InProgress { .. }) => {
                    Some(o.get().record())
                }
                Entry::Occupied(_) | Entry::Vacant(_) => None,
            };
            record::check_fence(current.as_ref(), token, now).map_err(|_| StoreError::LeaseLost)?;
            if fingerprint.is_some_and(|f| current.is_some_and(|c| c.fingerprint != f)) {
                return Err(StoreError::LeaseLost);
            }
            apply(entry, &mut shard.deadlines, now);
            shard.deadlines.compact(&shard.table);
            Ok(())
        })
    }
}

/// `key` then `response`, in one new allocation, copied whole (collecting
/// a chained iterator copies byte by byte; `concat` then `Arc::from` would
/// allocate twice).
fn concat(key: &[u8], response: &[u8]) -> Arc<[u8]> {
    let mut data: Arc<[u8]> = std::iter::repeat_n(0, key.len() + response.len()).collect();
    let bytes = Arc::get_mut(&mut data).expect("a new allocation has one owner");
    bytes[..key.len()].copy_from_slice(key);
    bytes[key.len()..].copy_from_slice(response);
    data
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // Nothing panics while a shard is locked; if something did, the shard's
    // data is still consistent (every update is a single assignment).
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        self.with_shard(key, |shard, hash, now| {
            let current = shard
                .table
                .find(hash, |s| s.key() == key.as_str().as_bytes())
                .map(Slot::record);
            if let ClaimDecision::Answer(answer) =
                record::decide_claim(current.as_ref(), fingerprint, now)
            {
                return Ok(answer);
            }
            // Unique in the store: the shard's count of leases, then the
            // shard. A counter per shard, under its lock, instead of one the
            // two worker threads of a runtime would bounce between them.
            // Above them, the time of the claim (for `admin`).
            shard.leases += 1;
            let token = LeaseToken::from_u128(
                u128::from(now) << CLAIMED_AT_SHIFT
                    | u128::from(shard.leases) << 16
                    | self.shard_index(hash) as u128,
            );
            let state = SlotState::InProgress {
                token,
                lease_until: now.saturating_add(record::millis(lease)),
            };
            let is_new = current.is_none();
            if is_new
                && let (Some(limit), Some(max)) = (self.shard_limit(hash), self.inner.max_entries)
            {
                match shard.make_room(limit, now) {
                    Room::Free => {}
                    Room::Evicted => self.evicted(max, now),
                    Room::Full => return Err(StoreError::CapacityExceeded { limit: max }),
                }
            }
            let Shard {
                table,
                deadlines,
                next_id,
                ..
            } = shard;
            let slot = match table.entry(hash, |s| s.key() == key.as_str().as_bytes(), |s| s.hash) {
                Entry::Occupied(mut o) => {
                    // A dead record taken over: wake anyone waiting on it.
                    let slot = o.get_mut();
                    slot.fingerprint = fingerprint;
                    slot.state = state;
                    if let Some(waiters) = &slot.waiters {
                        waiters.notify_waiters();
                    }
                    o.into_mut()
                }
                Entry::Vacant(v) => v
                    .insert(Slot {
                        hash,
                        id: std::mem::replace(next_id, *next_id + 1),
                        data: key.to_bytes(),
                        key_len: key.as_str().len(),
                        fingerprint,
                        state,
                        waiters: None,
                    })
                    .into_mut(),
            };
            deadlines.push(slot);
            deadlines.compact(table);
            Ok(ClaimOutcome::Acquired(Lease {
                token,
                duration: lease,
            }))
        })
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(key, token, Some(fingerprint), |entry, deadlines, now| {
            if let Entry::Occupied(mut o) = entry {
                let slot = o.get_mut();
                let expires_at = now.saturating_add(record::millis(ttl));
                let large = if response.len() <= INLINE_RESPONSE {
                    slot.data = concat(&slot.data[..slot.key_len], response);
                    None
                } else {
                    if slot.data.len() > slot.key_len {
                        // A taken-over record still holding an old response.
                        slot.data = Arc::from(&slot.data[..slot.key_len]);
                    }
                    Some(Arc::from(response))
                };
                slot.state = SlotState::Completed { expires_at, large };
                if let Some(waiters) = slot.waiters.take() {
                    waiters.notify_waiters();
                }
                deadlines.push(slot);
            }
        })
    }

    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        self.release_now(key, token)
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(key, token, None, |entry, deadlines, now| {
            if let Entry::Occupied(mut o) = entry {
                let slot = o.get_mut();
                if let SlotState::InProgress { lease_until, .. } = &mut slot.state {
                    *lease_until = now.saturating_add(record::millis(lease));
                }
                deadlines.push(slot);
            }
        })
    }

    async fn wait(&self, key: &StorageKey, timeout: Duration) -> Result<(), StoreError> {
        let waiting = self.with_shard(key, |shard, hash, now| {
            let slot = shard
                .table
                .find_mut(hash, |s| s.key() == key.as_str().as_bytes())?;
            let SlotState::InProgress { lease_until, .. } = slot.state else {
                return None;
            };
            // Created under the shard lock, so a completion that follows
            // cannot be missed (`notify_waiters` wakes every `Notified`
            // created before it).
            let notified = Arc::clone(slot.waiters.get_or_insert_default()).notified_owned();
            Some((
                notified,
                Duration::from_millis(lease_until.saturating_sub(now)),
            ))
        });
        if let Some((notified, lease_left)) = waiting {
            // The lease running out is a change too (the key may be taken over).
            let _ = tokio::time::timeout(timeout.min(lease_left), notified).await;
        }
        Ok(())
    }

    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        Ok(self.read_steps(key))
    }

    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        self.write_step(key, step)
    }

    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        self.drop_steps(key);
        Ok(())
    }

    fn release_detached(self: Arc<Self>, key: StorageKey, token: LeaseToken, _: Duration) {
        // Releasing is synchronous here: no task, no waiting for the lease.
        let _ = self.release_now(&key, token);
    }
}

impl MemoryStore {
    fn release_now(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        self.fenced(key, token, None, |entry, _, _| {
            if let Entry::Occupied(o) = entry {
                let (slot, _) = o.remove();
                if let Some(waiters) = slot.waiters {
                    waiters.notify_waiters();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdempotencyKey;

    fn key(i: usize) -> StorageKey {
        let key: IdempotencyKey = format!("k{i}").parse().expect("a valid key");
        StorageKey::new("t", "", "op", &key)
    }

    fn heap_entries(store: &MemoryStore) -> usize {
        let shards = store.inner.shards.iter().map(lock);
        shards
            .map(|s| s.deadlines.leases.len() + s.deadlines.expiries.len())
            .sum()
    }

    /// Completed and released calls under a long lease leave no growing
    /// backlog of stale deadline entries: the heaps stay within a constant
    /// factor of the records held (they held one entry per call ever made).
    #[tokio::test(start_paused = true)]
    async fn stale_deadlines_do_not_pile_up_under_long_leases() {
        const HOUR: Duration = Duration::from_secs(3600);
        const CALLS: usize = 20_000;
        let fp = Fingerprint::from_u128(1);
        let lease = |outcome| match outcome {
            Ok(ClaimOutcome::Acquired(lease)) => lease.token,
            other => panic!("expected Acquired, got {other:?}"),
        };

        let bounded = MemoryStore::builder().max_entries(1_000).build();
        for i in 0..CALLS {
            let token = lease(bounded.claim(&key(i), fp, HOUR).await);
            bounded
                .complete(&key(i), token, fp, b"ok", HOUR)
                .await
                .unwrap();
        }
        let shards = bounded.inner.shards.len();
        assert!(bounded.len() <= 1_000);
        let entries = heap_entries(&bounded);
        let most = COMPACT_FACTOR * 1_000 + COMPACT_SLACK * shards;
        assert!(
            entries <= most,
            "{entries} deadline entries for 1,000 records"
        );

        let released = MemoryStore::builder().shards(2).build();
        for i in 0..CALLS {
            let token = lease(released.claim(&key(i), fp, HOUR).await);
            released.release(&key(i), token).await.unwrap();
        }
        assert!(released.is_empty());
        let entries = heap_entries(&released);
        let most = COMPACT_SLACK * released.inner.shards.len();
        assert!(entries <= most, "{entries} deadline entries for no record");
    }
}
