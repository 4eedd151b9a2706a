//! A real `MemoryStore` with one call changed: how the tests put a store
//! fault under the engine (a stalled process, a store that goes down while
//! a body runs, a slow network).

use std::time::Duration;

use async_trait::async_trait;
use idempotent_core::{
    ClaimOutcome, Fingerprint, LeaseToken, MemoryStore, StorageKey, Store, StoreError,
};

/// The call that goes wrong.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Lease renewals never arrive, as when a process stalls.
    LostRenewals,
    /// Completions fail as an unreachable server's would (the store went
    /// down while the body ran).
    CompletionFails,
    /// Releases take this long to arrive.
    SlowRelease(Duration),
}

/// A `MemoryStore` with `fault`; every other call is the store's own.
pub struct Faulty {
    store: MemoryStore,
    fault: Fault,
}

impl Faulty {
    pub fn new(fault: Fault) -> Self {
        Self {
            store: MemoryStore::new(),
            fault,
        }
    }
}

/// What an unreachable server's call fails with.
pub fn refused() -> StoreError {
    StoreError::unavailable(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    ))
}

#[async_trait]
impl Store for Faulty {
    async fn claim(
        &self,
        key: &StorageKey,
        fp: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
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
        if let Fault::CompletionFails = self.fault {
            return Err(refused());
        }
        self.store.complete(key, token, fp, response, ttl).await
    }
    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        if let Fault::SlowRelease(delay) = self.fault {
            tokio::time::sleep(delay).await;
        }
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
        self.store.renew(key, token, lease).await
    }
}
