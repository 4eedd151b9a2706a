//! The caller owns the key: the body runs under a renewed lease, then its
//! value is stored (now, or by a [`Deferred`] completion once the store is
//! back) or the key is released; a guard releases it if the body panics or
//! its future is dropped.

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use super::codec::{Codec, unstored};
use super::deferred::{Deferred, retry_delay};
use super::operation::Operation;
use super::steps::Steps;
use super::{Done, timed};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, StorageKey};
use crate::record::LeaseToken;
use crate::runtime::Idempotency;
use crate::store::{Store, StoreError};
use crate::telemetry::StoreCall;

/// The caller owns the key: run the body under a renewed lease, then store
/// its value or release the key.
pub(super) async fn run_owned<V, C, F>(
    runtime: &Idempotency,
    operation: &Operation,
    key: &IdempotencyKey,
    codec: &C,
    mut guard: LeaseGuard,
    steps: Option<&Steps>,
    body: F,
) -> Result<Done<V>, Error>
where
    C: Codec<V>,
    F: Future<Output = V>,
{
    let lease = guard.lease;
    operation.metrics().executed.increment(1);
    let store = runtime.store().as_ref();
    let token = guard.token;
    let storage_key = guard.key.clone();
    let value = with_renewal(
        store,
        &storage_key,
        token,
        lease,
        operation,
        &mut guard.renewed,
        body,
    )
    .await;
    let fresh = |value| {
        Ok(Done {
            value,
            replayed: false,
        })
    };
    // A step that failed in the library (its value could not be recorded,
    // the store was down) leaves the call unfinished: released, not stored,
    // whatever the body made of the error.
    let stored = match steps.is_some_and(Steps::failed) {
        true => {
            tracing::warn!("a step could not be journaled; the call's key is released for a retry");
            Ok(None)
        }
        false => codec.encode(&value, operation, runtime),
    };
    let (bytes, ttl) = match stored {
        Ok(Some(stored)) => stored,
        Ok(None) => {
            // Disarmed only once the release has answered: a caller that
            // drops this future while the release is on its way (a timeout
            // around the call) still frees the key, through the guard.
            release(
                runtime.store(),
                operation,
                &storage_key,
                token,
                guard.lease_left(),
            )
            .await;
            guard.disarm();
            return fresh(value);
        }
        // The body ran, so its effects did: a retry must not run it again.
        // Stored in the value's place, this answers every retry with the
        // error (see `unstored`).
        Err(error) => {
            tracing::error!(
                %error,
                "the body ran but its result could not be encoded; retries get this error \
                 and do not run the body again"
            );
            (unstored(&error), codec.ttl(&value, operation, runtime))
        }
    };
    let completed = timed(
        operation,
        StoreCall::Complete,
        store.complete(&storage_key, token, guard.fingerprint, &bytes, ttl),
    )
    .await;
    guard.disarm();
    match completed {
        Ok(()) => {
            // Completed: the record replays the whole call from now on.
            if let Some(steps) = steps {
                steps.clear().await;
            }
            fresh(value)
        }
        Err(StoreError::LeaseLost) => Err(Error::LeaseLost {
            key: key.to_string(),
        }),
        Err(error) if error.is_transient() => {
            // The body ran: its value is real, so the caller gets it, and
            // the key stays held until the store takes the result.
            tracing::warn!(
                %error,
                "the body ran but its result could not be stored yet; the key stays held \
                 and the result is stored once the store is back"
            );
            Deferred {
                store: Arc::clone(runtime.store()),
                key: storage_key,
                token,
                fingerprint: guard.fingerprint,
                bytes,
                ttl,
                lease,
                renewed: guard.renewed,
                metrics: operation.metrics().clone(),
            }
            .spawn(runtime);
            fresh(value)
        }
        Err(error) => {
            operation.metrics().lost.increment(1);
            tracing::error!(%error, "the body ran but the store refused its result");
            fresh(value)
        }
    }
}

/// Frees the key after a body whose result is not stored. If the store
/// cannot be reached, the release goes on in the background until it can
/// (see [`Store::release_detached`]), so a retry waits for the store, not
/// for the lease to run out.
async fn release(
    store: &Arc<dyn Store>,
    operation: &Operation,
    key: &StorageKey,
    token: LeaseToken,
    lease_left: Duration,
) {
    let released = timed(operation, StoreCall::Release, store.release(key, token)).await;
    match released {
        Ok(()) => {}
        // A release sent twice (the connection dropped before the first
        // answer) finds the key released already.
        Err(StoreError::LeaseLost) => {
            tracing::debug!("the key was no longer held: released already, or its lease ran out");
        }
        Err(error) if error.is_transient() => {
            tracing::warn!(%error, "could not release the key; trying again until the store answers");
            Arc::clone(store).release_detached(key.clone(), token, lease_left);
        }
        Err(error) => {
            tracing::warn!(%error, "could not release the key; it is freed when its lease runs out");
        }
    }
}

/// A lease renewal in progress.
type Renewal<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send + 'a>>;

/// Polls `body` and, once it has had to wait, renews the lease every third
/// of its length, in the same task: no spawn, and nothing at all on the fast
/// path of a body that finishes on its first poll. A renewal that fails is
/// tried again sooner ([`retry_delay`]), and `renewed` is when the last one
/// that worked was sent.
async fn with_renewal<F: Future>(
    store: &dyn Store,
    key: &StorageKey,
    token: LeaseToken,
    lease: Duration,
    operation: &Operation,
    renewed: &mut tokio::time::Instant,
    body: F,
) -> F::Output {
    let mut body = pin!(body);
    let interval = (lease / 3).max(Duration::from_millis(1));
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut renewal: Option<(tokio::time::Instant, Renewal<'_>)> = None;
    let mut lost = false;
    poll_fn(|cx| {
        if let Poll::Ready(value) = body.as_mut().poll(cx) {
            return Poll::Ready(value);
        }
        loop {
            if let Some((sent, pending)) = renewal.as_mut() {
                let Poll::Ready(result) = pending.as_mut().poll(cx) else {
                    return Poll::Pending;
                };
                let sent = *sent;
                renewal = None;
                match result {
                    Ok(()) => *renewed = sent,
                    Err(StoreError::LeaseLost) => {
                        lost = true;
                        tracing::warn!(
                            operation = operation.name,
                            "lease lost while the body runs; its result will not be stored"
                        );
                    }
                    Err(error) => {
                        tracing::warn!(%error, "could not renew the lease; retrying");
                        if let Some(timer) = timer.as_mut() {
                            timer
                                .as_mut()
                                .reset(tokio::time::Instant::now() + retry_delay(lease));
                        }
                    }
                }
            }
            if lost {
                return Poll::Pending;
            }
            let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(interval)));
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            timer.as_mut().reset(now + interval);
            renewal = Some((now, store.renew(key, token, lease)));
        }
    })
    .await
}

/// Releases the lease if the body panics or its future is dropped, so that
/// a cancelled call does not hold the key until its lease runs out.
pub(super) struct LeaseGuard {
    pub(super) store: Arc<dyn Store>,
    pub(super) key: StorageKey,
    pub(super) token: LeaseToken,
    /// The fingerprint the lease was claimed with, for `complete`.
    pub(super) fingerprint: Fingerprint,
    /// When the lease was last known to be renewed (or claimed).
    pub(super) renewed: tokio::time::Instant,
    pub(super) lease: Duration,
    pub(super) armed: bool,
}

impl LeaseGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// How long the lease may still be live on the store.
    fn lease_left(&self) -> Duration {
        (self.renewed + self.lease).saturating_duration_since(tokio::time::Instant::now())
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if self.armed {
            let lease_left = self.lease_left();
            Arc::clone(&self.store).release_detached(self.key.clone(), self.token, lease_left);
        }
    }
}
