//! Operations for the people who run a service: look at the record of a
//! key, evict it, list work that has been in progress too long, and count
//! records per operation.
//!
//! They sit beside [`Store`](crate::Store), in a trait of their own
//! ([`Admin`]), implemented by every store of this crate; the engine never
//! calls them. The command line (`idempotent-cli`) and the HTTP layer's
//! admin router (feature `axum`) are built on them.
//!
//! ```
//! use std::time::Duration;
//! use idempotent_core::admin::{Admin, Eviction, RecordStatus};
//! use idempotent_core::memory::MemoryStore;
//! use idempotent_core::record::{ClaimOutcome, StorageKey};
//! use idempotent_core::{Fingerprint, IdempotencyKey, Store};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = MemoryStore::new();
//! let key = StorageKey::new("idem", "", "shop.charge", &IdempotencyKey::parse("order-1")?);
//! let fingerprint = Fingerprint::of(&1000);
//! let ClaimOutcome::Acquired(lease) = store.claim(&key, fingerprint, Duration::from_secs(30)).await? else {
//!     unreachable!("a fresh key is acquired")
//! };
//!
//! let record = store.inspect(&key, false).await?.expect("in progress");
//! assert!(matches!(record.status, RecordStatus::InProgress { owner, .. } if owner == lease.token));
//!
//! // A live lease is not evicted unless forced; forced, its owner is fenced.
//! assert!(matches!(store.evict(&key, false).await?, Eviction::Refused { .. }));
//! assert_eq!(store.evict(&key, true).await?, Eviction::Evicted { in_progress: true });
//! let late = store.complete(&key, lease.token, fingerprint, b"receipt", Duration::from_secs(60)).await;
//! assert!(late.unwrap_err().is_lease_lost());
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::LeaseToken;
use crate::store::StoreError;

mod serialize;

/// The operations of [`admin`](self) on a store.
///
/// Each store says what each costs: the memory store reads its shards; the
/// PostgreSQL store runs one statement (a scan of the table for
/// [`stuck`](Admin::stuck) and [`count`](Admin::count)); the Redis store
/// walks its keys with `SCAN` for those two (one round trip per 1,000 keys
/// of the whole keyspace and master, plus one pipeline per batch of
/// records), so run them off-peak on a large Redis.
#[async_trait]
pub trait Admin: Send + Sync + 'static {
    /// The live record of `key`, or `None` if there is none. Its stored
    /// response is left out unless `with_response`: responses can hold
    /// personal data, and are large.
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError>;

    /// Deletes the record of `key`: the next call with the key runs again.
    ///
    /// A record in progress (its owner is running the body now) is refused
    /// ([`Eviction::Refused`]) unless `force`. Forced, its owner is fenced:
    /// its later `complete`, `release` and `renew` answer
    /// [`StoreError::LeaseLost`], so it cannot overwrite what a new call
    /// stores. The call's journaled steps are kept: a retry resumes after
    /// the steps that finished.
    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError>;

    /// The records in progress for at least `older_than` (claimed that long
    /// ago, whatever their lease renewals), longest first, at most `limit`.
    /// A record whose claim time is unknown (written by release 0.1, in
    /// record layout 1) is listed too, last.
    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError>;

    /// How many live records each operation has, by namespace and
    /// operation, sorted by them.
    async fn count(&self) -> Result<Vec<OperationCount>, StoreError>;
}

#[async_trait]
impl<A: Admin + ?Sized> Admin for Arc<A> {
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError> {
        (**self).inspect(key, with_response).await
    }

    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError> {
        (**self).evict(key, force).await
    }

    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError> {
        (**self).stuck(older_than, limit).await
    }

    async fn count(&self) -> Result<Vec<OperationCount>, StoreError> {
        (**self).count().await
    }
}

/// A live record, as [`Admin::inspect`] and [`Admin::stuck`] see it.
///
/// Serializes (serde) to one JSON object: `namespace`, `scope`,
/// `operation`, `key`, `state` (`"in_progress"` or `"completed"`),
/// `fingerprint` and `owner` (hex), `layout`, durations in milliseconds
/// (`lease_left_ms`, `running_for_ms`, `expires_in_ms`), `response_bytes`,
/// and `response` only if it was asked for (a string if it is UTF-8, else
/// `response_hex`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecordInfo {
    /// The record's key.
    pub key: StorageKey,
    /// The fingerprint of the payload that created it.
    pub fingerprint: Fingerprint,
    /// The record layout it was written in ([`LAYOUT`](crate::record::LAYOUT)
    /// or the one before).
    pub layout: u8,
    /// In progress or completed, and the details of each.
    pub status: RecordStatus,
}

impl RecordInfo {
    /// A record's description, for a store of your own implementing [`Admin`].
    pub fn new(
        key: StorageKey,
        fingerprint: Fingerprint,
        layout: u8,
        status: RecordStatus,
    ) -> Self {
        Self {
            key,
            fingerprint,
            layout,
            status,
        }
    }
}

/// Where an inspected record is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordStatus {
    /// A caller holds the lease and runs the body.
    InProgress {
        /// The lease's owner: its fencing token.
        owner: LeaseToken,
        /// How long the lease lasts unless renewed.
        lease_left: Duration,
        /// How long ago it was claimed, if the record says (layout 2 does).
        running_for: Option<Duration>,
    },
    /// The body finished; its response is replayed until the record expires.
    Completed {
        /// How long until the record is forgotten.
        expires_in: Duration,
        /// The size of the stored response, in bytes.
        response_len: usize,
        /// The stored response, if it was asked for.
        response: Option<Arc<[u8]>>,
    },
}

/// What [`Admin::evict`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Eviction {
    /// The record was deleted; `in_progress`: it was, under a live lease
    /// (forced), whose owner is now fenced.
    Evicted {
        /// Whether a lease was live on it.
        in_progress: bool,
    },
    /// There was no live record.
    Absent,
    /// The record is in progress and `force` was not given: nothing changed.
    Refused {
        /// How long its lease lasts unless renewed.
        lease_left: Duration,
    },
}

/// The live records of one operation ([`Admin::count`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OperationCount {
    /// The namespace of its records.
    pub namespace: String,
    /// The operation's name.
    pub operation: String,
    /// How many are in progress.
    pub in_progress: u64,
    /// How many are completed.
    pub completed: u64,
}

impl OperationCount {
    /// The count of one operation, for a store of your own implementing [`Admin`].
    pub fn new(namespace: String, operation: String, in_progress: u64, completed: u64) -> Self {
        Self {
            namespace,
            operation,
            in_progress,
            completed,
        }
    }
}

/// Counts records by namespace and operation, sorted (the stores that
/// count record by record share it).
#[cfg(any(feature = "memory", feature = "redis"))]
#[derive(Default)]
pub(crate) struct Tally(std::collections::BTreeMap<(String, String), (u64, u64)>);

#[cfg(any(feature = "memory", feature = "redis"))]
impl Tally {
    pub(crate) fn add(&mut self, record: &RecordInfo) {
        let in_progress = matches!(record.status, RecordStatus::InProgress { .. });
        let (namespace, _, operation, _) = record.key.parts();
        let counts = self
            .0
            .entry((namespace.to_owned(), operation.to_owned()))
            .or_default();
        if in_progress {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    pub(crate) fn into_counts(self) -> Vec<OperationCount> {
        self.0
            .into_iter()
            .map(|((namespace, operation), (in_progress, completed))| {
                OperationCount::new(namespace, operation, in_progress, completed)
            })
            .collect()
    }
}

/// Collects the stuck records among those offered (in progress for at
/// least `older_than`, or for an unknown time): longest first, unknown
/// last, at most `limit` (the stores that look record by record share it).
#[cfg(any(feature = "memory", feature = "redis", feature = "postgres"))]
pub(crate) struct StuckRecords {
    older_than: Duration,
    limit: usize,
    found: Vec<RecordInfo>,
}

#[cfg(any(feature = "memory", feature = "redis", feature = "postgres"))]
impl StuckRecords {
    pub(crate) fn new(older_than: Duration, limit: usize) -> Self {
        Self {
            older_than,
            limit,
            found: Vec::new(),
        }
    }

    pub(crate) fn offer(&mut self, record: RecordInfo) {
        if let RecordStatus::InProgress { running_for, .. } = record.status
            && running_for.is_none_or(|age| age >= self.older_than)
        {
            self.found.push(record);
        }
    }

    pub(crate) fn into_list(mut self) -> Vec<RecordInfo> {
        let running_for = |record: &RecordInfo| match record.status {
            RecordStatus::InProgress { running_for, .. } => running_for,
            RecordStatus::Completed { .. } => None,
        };
        self.found
            .sort_by_key(|record| std::cmp::Reverse(running_for(record)));
        self.found.truncate(self.limit);
        self.found
    }
}
