//! The execution engine: runs a body at most once per key, whatever the store.
//!
//! [`Call`] is the public entry point (the `#[idempotent]` attribute expands
//! to it); [`execute_call`] is the loop behind it, generic over how a value is
//! encoded for the store, so the HTTP layer reuses it unchanged.
//!
//! The files: `operation` (an operation's settings), `call` (a call, and
//! what it checks), `codec` (how values are stored), this file (the claim
//! and what its answer leads to), `owned` (the body under its lease, then
//! its result stored or its key released), and `deferred` (results stored
//! once the store is back).

mod call;
mod codec;
mod deferred;
mod operation;
mod owned;
mod steps;
mod transaction;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

pub use call::{Call, Done};
pub(crate) use codec::{Codec, ResultCodec, replay};
pub use operation::Operation;
use owned::{LeaseGuard, run_owned};
use steps::Binding;
pub use steps::Steps;
pub use transaction::{Begun, KeyTransaction, TxBody};

use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, KeyError, StorageKey};
use crate::record::ClaimOutcome;
use crate::runtime::Idempotency;
use crate::store::{Store, StoreError};
use crate::telemetry::StoreCall;

/// A checked call, for [`execute_call`]: what it runs, and the steps of its
/// body, if it journals any ([`Steps`]).
pub(crate) struct Claimed<'a> {
    pub(crate) runtime: &'a Idempotency,
    pub(crate) operation: &'a Operation,
    pub(crate) key: &'a IdempotencyKey,
    pub(crate) storage_key: StorageKey,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) steps: Option<&'a Steps>,
}

/// Runs `body` at most once for the call's storage key: claims, then runs
/// and completes, replays, waits, or refuses, as the claim answers.
pub(crate) fn execute_call<'a, V, C, F>(
    call: Claimed<'a>,
    codec: &'a C,
    body: F,
) -> impl Future<Output = Result<Done<V>, Error>> + 'a
where
    C: Codec<V>,
    F: Future<Output = V> + 'a,
    V: 'a,
{
    let span = span(call.operation, call.key);
    // No async block around it: a layer would be copied whole on each move.
    execute_inner(call, codec, body, span.clone()).instrument(span)
}

/// The `idempotent` span of one call; its `outcome` is recorded at the end
/// ([`record_outcome`]).
fn span(operation: &Operation, key: &IdempotencyKey) -> tracing::Span {
    tracing::info_span!(
        "idempotent",
        operation = operation.name,
        key = %key,
        outcome = tracing::field::Empty,
    )
}

fn record_outcome<V>(span: &tracing::Span, result: &Result<Done<V>, Error>) {
    if !span.is_disabled() {
        span.record("outcome", outcome(result));
    }
}

fn outcome<V>(result: &Result<Done<V>, Error>) -> &'static str {
    match result {
        Ok(Done { replayed: true, .. }) => "replayed",
        Ok(Done {
            replayed: false, ..
        }) => "executed",
        Err(Error::InProgress { .. }) => "in_progress",
        Err(Error::KeyReused { .. }) => "key_reused",
        Err(Error::StoreUnavailable(_)) => "store_unavailable",
        Err(_) => "error",
    }
}

/// The shortest pause between two claims of a waiting call.
const MIN_RECHECK: Duration = Duration::from_millis(1);

async fn execute_inner<V, C, F>(
    call: Claimed<'_>,
    codec: &C,
    body: F,
    span: tracing::Span,
) -> Result<Done<V>, Error>
where
    C: Codec<V>,
    F: Future<Output = V>,
{
    let Claimed {
        runtime,
        operation,
        key,
        storage_key,
        fingerprint,
        steps,
    } = call;
    // The trait object itself: called on the `Arc`, every call would go
    // through `impl Store for Arc<S>` as well, one more boxed future each.
    let store: &dyn Store = runtime.store().as_ref();
    let lease = operation
        .lease
        .unwrap_or(runtime.lease())
        .max(crate::MIN_LEASE);
    let wait_until = operation.wait.map(|wait| {
        let now = tokio::time::Instant::now();
        // A bound too far away to represent (`Duration::MAX`) waits as long
        // as the longest lease or TTL.
        now.checked_add(wait)
            .unwrap_or_else(|| now + crate::record::MAX_DURATION)
    });
    // Counted once per call, however many times a waiting call re-checks.
    let mut met_in_progress = false;
    let result = loop {
        let claim = timed(
            operation,
            StoreCall::Claim,
            store.claim(&storage_key, fingerprint, lease),
        )
        .await;
        let claim = match claim {
            Ok(claim) => claim,
            Err(error) => break Err(store_error(operation, error)),
        };
        match claim {
            ClaimOutcome::Acquired(acquired) => {
                let guard = LeaseGuard {
                    store: Arc::clone(runtime.store()),
                    key: storage_key,
                    token: acquired.token,
                    fingerprint,
                    // Read once the claim answered: later than the store
                    // started the lease by a round trip at most, which the
                    // lease's margins cover (renewals at a third of it).
                    renewed: tokio::time::Instant::now(),
                    lease,
                    armed: true,
                };
                if let Some(steps) = steps {
                    let bound = steps.bind(Binding {
                        store: Arc::clone(runtime.store()),
                        key: guard.key.clone(),
                        token: guard.token,
                        fingerprint,
                        lease,
                        ttl: operation.ttl_on(runtime),
                        operation: operation.name,
                    });
                    if let Err(error) = bound {
                        // Dropped armed: the key is released.
                        drop(guard);
                        break Err(error);
                    }
                }
                // Boxed: the running state (body, renewal timer, encoding)
                // is large, and keeping it out of line keeps every caller's
                // future small, so the replay path moves far fewer bytes.
                break Box::pin(run_owned(
                    runtime, operation, key, codec, guard, steps, body,
                ))
                .await;
            }
            ClaimOutcome::Completed(bytes) => break replayed(codec, &bytes, operation),
            ClaimOutcome::InProgress { retry_after } => {
                if !std::mem::replace(&mut met_in_progress, true) {
                    operation.metrics().in_progress.increment(1);
                }
                let now = tokio::time::Instant::now();
                match wait_until {
                    Some(until) if until > now => {
                        // At least a millisecond between re-checks: a store
                        // that answers "in progress, retry now" (a lease that
                        // just ran out) must not make this loop spin.
                        let timeout = retry_after.max(MIN_RECHECK).min(until - now);
                        Box::pin(wait_for(store, &storage_key, timeout)).await;
                    }
                    _ => break Err(in_progress(key, retry_after)),
                }
            }
            ClaimOutcome::KeyReused => break Err(key_reused(operation, key)),
        }
    };
    record_outcome(&span, &result);
    result
}

/// The answer to a call whose key completed before: its stored value.
fn replayed<V>(
    codec: &impl Codec<V>,
    bytes: &[u8],
    operation: &Operation,
) -> Result<Done<V>, Error> {
    operation.metrics().replayed.increment(1);
    replay(codec, bytes, operation).map(|value| Done {
        value,
        replayed: true,
    })
}

/// The answer to a call whose key another caller holds (once its wait, if
/// any, is over).
fn in_progress(key: &IdempotencyKey, retry_after: Duration) -> Error {
    Error::InProgress {
        key: key.to_string(),
        retry_after,
    }
}

/// The answer to a call whose key was used with another payload.
fn key_reused(operation: &Operation, key: &IdempotencyKey) -> Error {
    operation.metrics().key_reused.increment(1);
    tracing::warn!("idempotency key reused with a different payload");
    Error::KeyReused {
        operation: operation.name.to_owned(),
        key: key.to_string(),
    }
}

/// Waits for a duplicate in progress to finish (or for `timeout`).
async fn wait_for(store: &dyn Store, key: &StorageKey, timeout: Duration) {
    if store.wait(key, timeout).await.is_err() {
        // Don't spin on a failing store; the next claim reports it.
        tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
    }
}

/// A failed claim: a record that cannot be decoded is a codec error (so
/// nobody mistakes it for an outage), a key the store cannot hold is an
/// invalid key (the caller's to fix, not worth a retry); anything else
/// means the store is unavailable.
pub(crate) fn store_error(operation: &Operation, error: StoreError) -> Error {
    store_error_named(operation.name, error)
}

/// [`store_error`], for the operation named `operation`.
pub(crate) fn store_error_named(operation: &str, error: StoreError) -> Error {
    match error {
        StoreError::KeyRejected { detail } => Error::InvalidKey(KeyError::NotStorable(detail)),
        // Only the steps' methods answer it: a store without them.
        StoreError::Unsupported { what } => Error::InvalidStep {
            operation: operation.to_owned(),
            name: String::new(),
            detail: format!("the store does not support {what}"),
        },
        StoreError::Corrupt { key, detail } => Error::Codec {
            action: "decode",
            operation: operation.to_owned(),
            detail: format!("the record under `{key}` is corrupt: {detail}"),
        },
        other => Error::StoreUnavailable(other),
    }
}

async fn timed<T>(
    operation: &Operation,
    call: StoreCall,
    future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = quanta::Instant::now();
    let result = future.await;
    operation
        .metrics()
        .store_call(call, started.elapsed(), result.is_ok());
    result
}
