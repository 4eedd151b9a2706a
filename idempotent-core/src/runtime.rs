//! The runtime handle: which store, which defaults, set once at start-up.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::Error;
use crate::store::Store;

/// Default retention of a completed record: 24 hours.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default lease of a running call: 30 seconds (renewed while the body runs).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// The shortest lease a running call gets, whatever it asks for: renewed
/// every third of it, a shorter lease would run out between renewals (a
/// zero lease did at once), and a duplicate would run the body meanwhile.
pub const MIN_LEASE: Duration = Duration::from_millis(50);
/// Default storage-key namespace.
pub const DEFAULT_NAMESPACE: &str = "idem";

static GLOBAL: OnceLock<Idempotency> = OnceLock::new();

/// A store plus the defaults of every operation run through it.
///
/// Install one at start-up for every `#[idempotent]` function, or hand one to
/// a function with its `runtime = ...` option. Cloning is cheap.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::Idempotency;
/// use idempotent_core::memory::MemoryStore;
///
/// let idempotency = Idempotency::builder(MemoryStore::new())
///     .namespace("payments")
///     .ttl(Duration::from_secs(3600))
///     .lease(Duration::from_secs(10))
///     .build();
/// idempotency.install().expect("installed once, at start-up");
/// assert!(Idempotency::global().is_ok());
/// ```
#[derive(Clone)]
pub struct Idempotency {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    namespace: Box<str>,
    ttl: Duration,
    lease: Duration,
    pending: Pending,
}

/// Results of bodies that ran, waiting in tasks of their own for the store
/// to take them (see [`Idempotency::settled`]).
#[derive(Default)]
pub(crate) struct Pending {
    count: AtomicUsize,
    /// Woken when `count` falls to zero.
    settled: Notify,
}

/// One pending result, counted until dropped.
pub(crate) struct PendingResult(Idempotency);

impl Drop for PendingResult {
    fn drop(&mut self) {
        let pending = &self.0.inner.pending;
        if pending.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            pending.settled.notify_waiters();
        }
    }
}

impl fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("namespace", &self.inner.namespace)
            .field("ttl", &self.inner.ttl)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Idempotency`].
#[must_use]
pub struct IdempotencyBuilder {
    store: Arc<dyn Store>,
    namespace: Box<str>,
    ttl: Duration,
    lease: Duration,
}

impl IdempotencyBuilder {
    /// The prefix of every storage key (default `idem`), so that several
    /// applications can share one store.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into().into_boxed_str();
        self
    }

    /// How long a completed record is kept (default 24 h; at most
    /// [`MAX_DURATION`](crate::record::MAX_DURATION)).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a running call's lease lasts before it must be renewed
    /// (default 30 s). The engine renews it every third of this while the
    /// body runs; if the process dies, another caller may take the key over
    /// once it runs out. At least [`MIN_LEASE`](crate::MIN_LEASE) (50 ms).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Builds the runtime.
    pub fn build(self) -> Idempotency {
        // The latency histogram's clock calibrates itself on its first read,
        // once per process: half a millisecond here, at most 200 ms on a
        // noisy machine. Here, at start-up, not in the first call.
        let _ = quanta::Instant::now();
        Idempotency {
            inner: Arc::new(Inner {
                store: self.store,
                namespace: self.namespace,
                ttl: self.ttl,
                lease: self.lease,
                pending: Pending::default(),
            }),
        }
    }
}

impl Idempotency {
    /// A runtime on `store` with the default settings.
    pub fn new(store: impl Store) -> Self {
        Self::builder(store).build()
    }

    /// Starts building a runtime on `store`.
    pub fn builder(store: impl Store) -> IdempotencyBuilder {
        Self::builder_shared(Arc::new(store))
    }

    /// Starts building a runtime on a store shared as a trait object.
    pub fn builder_shared(store: Arc<dyn Store>) -> IdempotencyBuilder {
        IdempotencyBuilder {
            store,
            namespace: DEFAULT_NAMESPACE.into(),
            ttl: DEFAULT_TTL,
            lease: DEFAULT_LEASE,
        }
    }

    /// Makes this the process-wide runtime used by `#[idempotent]` functions
    /// that name none. Call it once, at start-up; a second call fails and
    /// gives the runtime back.
    pub fn install(self) -> Result<(), Idempotency> {
        GLOBAL.set(self)
    }

    /// The process-wide runtime, or [`Error::NotConfigured`].
    pub fn global() -> Result<&'static Idempotency, Error> {
        GLOBAL.get().ok_or(Error::NotConfigured)
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The storage-key namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// The default retention of completed records.
    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// The default lease.
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// How many results of bodies that ran are waiting for the store to
    /// take them (it was down, or slow, when they finished); their keys
    /// stay held meanwhile. See [`settled`](Self::settled).
    pub fn pending_results(&self) -> usize {
        self.inner.pending.count.load(Ordering::Acquire)
    }

    /// Returns once no result of this runtime waits for the store: each was
    /// stored, or given up (its lease ran out first). Call it at shutdown,
    /// once the service takes no more calls (after the HTTP layer's
    /// `handler_tracker().wait()`), under a timeout: while the store is down, it
    /// waits. A result still waiting when the process ends is lost: its key
    /// is freed when its lease runs out, and a retry runs the body again.
    ///
    /// ```
    /// use std::time::Duration;
    /// use idempotent_core::Idempotency;
    /// use idempotent_core::memory::MemoryStore;
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let idempotency = Idempotency::new(MemoryStore::new());
    /// // ... serve, then stop taking calls ...
    /// let settled = tokio::time::timeout(Duration::from_secs(30), idempotency.settled()).await;
    /// assert!(settled.is_ok());
    /// assert_eq!(idempotency.pending_results(), 0);
    /// # }
    /// ```
    pub async fn settled(&self) {
        let pending = &self.inner.pending;
        loop {
            let settled = pending.settled.notified();
            if pending.count.load(Ordering::Acquire) == 0 {
                return;
            }
            settled.await;
        }
    }

    /// Counts a pending result until the returned value is dropped.
    pub(crate) fn pending_result(&self) -> PendingResult {
        self.inner.pending.count.fetch_add(1, Ordering::AcqRel);
        PendingResult(self.clone())
    }
}

impl AsRef<Idempotency> for Idempotency {
    fn as_ref(&self) -> &Idempotency {
        self
    }
}
