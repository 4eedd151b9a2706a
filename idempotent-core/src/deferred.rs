//! Results the store could not take when their body finished.
//!
//! A body that ran has had its effects, so until its result is stored its
//! key must stay held: freed, or left to a lease that runs out, it would let
//! a retry run the body again. When storing the result fails for a reason
//! that may pass (the store is down, or did not answer in time), the engine
//! hands the result to a [`Deferred`] completion: a task of its own that
//! stores it as soon as the store is back, trying again with backoff, and
//! renews the lease meanwhile whenever the store answers. It gives up only
//! when the store fences it (the lease ran out or was taken over: counted
//! as [`LOST`](crate::telemetry::LOST)), when the store refuses the record
//! for good (corrupt, or a key it cannot hold), or when the process ends.
//!
//! What remains at risk: an outage longer than the lease's remaining time
//! (Redis and PostgreSQL expire the lease on their own clock), or a process
//! that ends before the store is back. Size the lease for the outages the
//! store is expected to have.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::LeaseToken;
use crate::store::{MAX_RETRY_DELAY, Store, StoreError, backoff};
use crate::telemetry::{Handles, StoreCall};

/// A result to store once the store takes it.
pub(crate) struct Deferred {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) key: StorageKey,
    pub(crate) token: LeaseToken,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) bytes: Vec<u8>,
    pub(crate) ttl: Duration,
    /// The lease the key was claimed with, renewed every third of it.
    pub(crate) lease: Duration,
    pub(crate) metrics: Handles,
}

impl Deferred {
    /// Stores the result in a task of its own, in the current span. Outside
    /// a tokio runtime (nothing to run it on), the result is lost.
    pub(crate) fn spawn(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.metrics.pending.increment(1.0);
                handle.spawn(self.run().in_current_span());
            }
            Err(_) => {
                self.metrics.lost.increment(1);
                tracing::error!(
                    "the body ran but its result could not be stored, and there is no runtime \
                     to try again on: a retry after the lease runs out runs the body again"
                );
            }
        }
    }

    async fn run(self) {
        // Often enough that a store back with little of the lease left
        // still gets the result in time: a tenth of the lease, at most a
        // second.
        let max_delay = (self.lease / 10).clamp(Duration::from_millis(5), MAX_RETRY_DELAY);
        let mut delays = backoff(max_delay);
        let renew_every = self.lease / 3;
        let mut renewed = tokio::time::Instant::now();
        let mut tries = 1_u32;
        let outcome = loop {
            tokio::time::sleep(delays.next().unwrap_or(max_delay)).await;
            tries = tries.saturating_add(1);
            let started = quanta::Instant::now();
            let completed = self
                .store
                .complete(
                    &self.key,
                    self.token,
                    self.fingerprint,
                    &self.bytes,
                    self.ttl,
                )
                .await;
            self.metrics
                .store_call(StoreCall::Complete, started.elapsed(), completed.is_ok());
            match completed {
                Ok(()) => break Ok(()),
                Err(error) if !error.is_transient() => break Err(error),
                Err(_) => {}
            }
            // The store may answer other calls while this one keeps failing
            // (a slow write of a large result): keep the key held meanwhile.
            if renewed.elapsed() >= renew_every {
                match self.store.renew(&self.key, self.token, self.lease).await {
                    Ok(()) => renewed = tokio::time::Instant::now(),
                    Err(error) if !error.is_transient() => break Err(error),
                    Err(_) => {}
                }
            }
        };
        self.metrics.pending.decrement(1.0);
        match outcome {
            Ok(()) => tracing::info!(tries, "stored the result of a body once the store was back"),
            Err(StoreError::LeaseLost) => {
                self.metrics.lost.increment(1);
                tracing::error!(
                    tries,
                    "the body ran but its lease ran out before the store was back: its result is \
                     lost, and a retry runs the body again (a longer lease covers longer outages)"
                );
            }
            Err(error) => {
                self.metrics.lost.increment(1);
                tracing::error!(tries, %error, "the body ran but the store refused its result");
            }
        }
    }
}
