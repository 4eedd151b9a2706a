//! Results the store could not take when their body finished.
//!
//! A body that ran has had its effects, so until its result is stored its
//! key must stay held: freed, or left to a lease that runs out, it would let
//! a retry run the body again. When storing the result fails for a reason
//! that may pass (the store is down, or did not answer in time), the engine
//! hands the result to a [`Deferred`] completion: a task of its own that
//! stores it as soon as the store is back, trying again every
//! [`retry_delay`] at most, and renews the lease whenever a third of it has
//! passed since the last renewal that worked. It gives up when the store
//! fences it (the lease was taken over), when the lease has run out on the
//! store's clock (past the last renewal that worked, by the lease and a
//! margin), when the store refuses the record for good (corrupt, or a key
//! it cannot hold), or when the process ends; each is counted as
//! [`LOST`](crate::telemetry::LOST) and logged.
//!
//! What remains at risk: an outage longer than the lease's remaining time
//! (Redis and PostgreSQL expire the lease on their own clock), or a process
//! that ends before the store is back
//! ([`Idempotency::settled`](crate::Idempotency::settled) waits for them at
//! shutdown). Size the lease for the outages the store is expected to have.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::LeaseToken;
use crate::runtime::{Idempotency, PendingResult};
use crate::store::{MAX_RETRY_DELAY, Store, StoreError, backoff};
use crate::telemetry::{Handles, StoreCall};

/// The longest pause between two tries of a write for a key whose lease is
/// `lease`: a tenth of it (so that a store back with little of the lease
/// left still gets the write in time), at most a second.
pub(crate) fn retry_delay(lease: Duration) -> Duration {
    (lease / 10).clamp(Duration::from_millis(5), MAX_RETRY_DELAY)
}

/// A result to store once the store takes it.
pub(crate) struct Deferred {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) key: StorageKey,
    pub(crate) token: LeaseToken,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) bytes: Vec<u8>,
    pub(crate) ttl: Duration,
    /// The lease the key was claimed with.
    pub(crate) lease: Duration,
    /// When the last renewal that worked (or the claim) was sent.
    pub(crate) renewed: Instant,
    pub(crate) metrics: Handles,
}

/// How a deferred completion ended.
enum Outcome {
    Stored,
    /// Fenced, or the lease ran out first.
    LeaseLost,
    /// The store refused the record for good.
    Refused(StoreError),
}

impl Deferred {
    /// Stores the result in a task of its own, in the current span, counted
    /// by `runtime` until it ends. Outside a tokio runtime (nothing to run
    /// it on), the result is lost.
    pub(crate) fn spawn(self, runtime: &Idempotency) {
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                self.metrics.pending.increment(1.0);
                let task = Task {
                    deferred: self,
                    _pending: runtime.pending_result(),
                    ended: false,
                };
                handle.spawn(task.run().in_current_span());
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

    async fn complete(&self) -> Result<(), StoreError> {
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
        completed
    }

    async fn store(&mut self) -> (Outcome, u32) {
        let max_delay = retry_delay(self.lease);
        let mut delays = backoff(max_delay);
        let renew_every = self.lease / 3;
        let mut tries = 1_u32;
        loop {
            tokio::time::sleep(delays.next().unwrap_or(max_delay)).await;
            tries = tries.saturating_add(1);
            match self.complete().await {
                Ok(()) => return (Outcome::Stored, tries),
                Err(StoreError::LeaseLost) => return (Outcome::LeaseLost, tries),
                Err(error) if !error.is_transient() => return (Outcome::Refused(error), tries),
                Err(_) => {}
            }
            // Past the lease on the store's clock (with a margin for the
            // clocks' difference): the record is gone or anybody's, so no
            // completion can land any more.
            if self.renewed.elapsed() >= self.lease + max_delay {
                return (Outcome::LeaseLost, tries);
            }
            // The store may answer other calls while completions fail (a
            // slow write of a large result): keep the key held meanwhile.
            if self.renewed.elapsed() >= renew_every {
                let sent = Instant::now();
                match self.store.renew(&self.key, self.token, self.lease).await {
                    Ok(()) => self.renewed = sent,
                    // A completion that timed out may have landed after
                    // all: the record is no longer in progress, and a
                    // completion sent again is acknowledged if so.
                    Err(StoreError::LeaseLost) => {
                        tries = tries.saturating_add(1);
                        return match self.complete().await {
                            Ok(()) => (Outcome::Stored, tries),
                            Err(_) => (Outcome::LeaseLost, tries),
                        };
                    }
                    Err(_) => {}
                }
            }
        }
    }
}

/// A deferred completion in its task. Dropped before it ended (the runtime
/// shut down: the process is ending), its result is lost, and said so.
struct Task {
    deferred: Deferred,
    _pending: PendingResult,
    ended: bool,
}

impl Task {
    async fn run(mut self) {
        let (outcome, tries) = self.deferred.store().await;
        self.ended = true;
        let metrics = &self.deferred.metrics;
        match outcome {
            Outcome::Stored => {
                tracing::info!(tries, "stored the result of a body once the store was back");
            }
            Outcome::LeaseLost => {
                metrics.lost.increment(1);
                tracing::error!(
                    tries,
                    "the body ran but its lease ran out before the store took its result: the \
                     result is lost, and a retry runs the body again (a longer lease rides out \
                     longer outages)"
                );
            }
            Outcome::Refused(error) => {
                metrics.lost.increment(1);
                tracing::error!(tries, %error, "the body ran but the store refused its result");
            }
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        self.deferred.metrics.pending.decrement(1.0);
        if !self.ended {
            self.deferred.metrics.lost.increment(1);
            tracing::error!(
                key = %self.deferred.key,
                "a result still waiting for the store was dropped (the runtime shut down): it is \
                 lost, and a retry after the lease runs out runs the body again"
            );
        }
    }
}
