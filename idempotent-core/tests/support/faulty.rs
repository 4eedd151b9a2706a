//! A real `MemoryStore` with one call changed: how the tests put a store
//! fault under the engine (a stalled process, a store that goes down while
//! a body runs, a slow network).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, LeaseToken, StorageKey};
use idempotent_core::{Fingerprint, Store, StoreError};

/// The call that goes wrong.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Lease renewals never arrive, as when a process stalls.
    LostRenewals,
    /// While the switch is on, every call fails as an unreachable server's
    /// would (the store is down); the records stay, as a server's that
    /// comes back with its data (Redis with AOF, PostgreSQL).
    Outage(Outage),
    /// Releases take this long to arrive.
    SlowRelease(Duration),
}

/// The switch of a [`Fault::Outage`].
#[derive(Clone, Debug, Default)]
pub struct Outage(Arc<AtomicBool>);

impl Outage {
    /// The store goes down.
    pub fn start(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// The store is back.
    pub fn end(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.0.load(Ordering::SeqCst) {
            return Err(refused());
        }
        Ok(())
    }
}

/// A `MemoryStore` with `fault`; every other call is the store's own.
pub struct Faulty {
    store: MemoryStore,
    fault: Fault,
    completions_fail: AtomicBool,
}

impl Faulty {
    pub fn new(fault: Fault) -> Self {
        Self {
            store: MemoryStore::new(),
            fault,
            completions_fail: AtomicBool::new(false),
        }
    }

    /// Whether completions fail as an unreachable server's would, while
    /// every other call works (a store too slow for a large result, say).
    pub fn fail_completions(&self, fail: bool) {
        self.completions_fail.store(fail, Ordering::SeqCst);
    }
}

/// What an unreachable server's call fails with.
pub fn refused() -> StoreError {
    StoreError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

impl Faulty {
    fn down(&self) -> Result<(), StoreError> {
        match &self.fault {
            Fault::Outage(outage) => outage.check(),
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Store for Faulty {
    async fn claim(
        &self,
        key: &StorageKey,
        fp: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        self.down()?;
        self.store.claim(key, fp, lease).await
    }
    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fp: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.down()?;
        if self.completions_fail.load(Ordering::SeqCst) {
            return Err(refused());
        }
        self.store.complete(key, token, fp, response, ttl).await
    }
    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        if let Fault::SlowRelease(delay) = self.fault {
            tokio::time::sleep(delay).await;
        }
        self.down()?;
        self.store.release(key, token).await
    }
    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        if let Fault::LostRenewals = self.fault {
            return Ok(());
        }
        self.down()?;
        self.store.renew(key, token, lease).await
    }
}
