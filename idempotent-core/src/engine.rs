//! The execution engine: runs a body at most once per key, whatever the store.
//!
//! [`Call`] is the public entry point (the `#[idempotent]` attribute expands
//! to it); [`execute`] is the loop behind it, generic over how a value is
//! encoded for the store, so the HTTP layer reuses it unchanged.

use std::borrow::Cow;
use std::fmt::{self, Display};
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::deferred::{Deferred, retry_delay};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, KeyError, StorageKey};
use crate::record::{ClaimOutcome, LeaseToken};
use crate::runtime::Idempotency;
use crate::store::{Store, StoreError};
use crate::telemetry::{self, StoreCall};

/// The settings of one idempotent operation (a function, an HTTP route).
///
/// Unset values fall back to the [`Idempotency`] runtime's defaults.
///
/// ```
/// use std::time::Duration;
/// use idempotent_core::Operation;
///
/// static CHARGE: Operation = Operation::new("payments::charge")
///     .ttl(Duration::from_secs(24 * 3600))
///     .wait(Duration::from_secs(5));
/// assert_eq!(CHARGE.name(), "payments::charge");
/// ```
#[derive(Debug, Clone)]
pub struct Operation {
    name: &'static str,
    ttl: Option<Duration>,
    lease: Option<Duration>,
    wait: Option<Duration>,
    error_ttl: Option<Duration>,
    metrics: telemetry::Metrics,
}

impl Operation {
    /// An operation named `name`, with the runtime's defaults.
    ///
    /// The name is part of every storage key: keep it stable across
    /// releases, or earlier records stop being found.
    pub const fn new(name: &'static str) -> Self {
        Self {
            name,
            ttl: None,
            lease: None,
            wait: None,
            error_ttl: None,
            metrics: telemetry::Metrics::new(),
        }
    }

    /// How long a completed record is kept; at most
    /// [`MAX_DURATION`](crate::MAX_DURATION) (a century).
    #[must_use]
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long the lease of a running call lasts before renewal; at least
    /// [`MIN_LEASE`](crate::MIN_LEASE) (50 ms), and at most
    /// [`MAX_DURATION`](crate::MAX_DURATION) (a century).
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Wait up to `wait` for a duplicate in flight to finish, then replay its
    /// response (or run, if it failed), instead of failing at once with
    /// [`Error::InProgress`].
    #[must_use]
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = Some(wait);
        self
    }

    /// Cache errors too, kept for `ttl` (with [`Call::run_caching_errors`]).
    #[must_use]
    pub const fn cache_errors(mut self, ttl: Duration) -> Self {
        self.error_ttl = Some(ttl);
        self
    }

    /// The operation's name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// How long a duplicate in flight is waited for, if at all.
    #[cfg(feature = "postgres")]
    pub(crate) fn wait_bound(&self) -> Option<Duration> {
        self.wait
    }

    pub(crate) fn metrics(&self) -> &telemetry::Handles {
        self.metrics.get(self.name)
    }

    /// The retention of a stored response: the operation's, else the runtime's.
    pub(crate) fn ttl_on(&self, runtime: &Idempotency) -> Duration {
        self.ttl.unwrap_or(runtime.ttl())
    }
}

/// The result of an idempotent call, and whether it was replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed<T> {
    /// The body's value, fresh or replayed.
    pub value: T,
    /// `true` when the value came from the store, `false` when the body ran now.
    pub replayed: bool,
}

impl<T> Executed<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// One idempotent call, assembled step by step and then [`run`](Call::run).
///
/// ```
/// use idempotent_core::{Idempotency, MemoryStore, Operation};
///
/// static CHARGE: Operation = Operation::new("charge");
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), idempotent_core::Error> {
/// let idempotency = Idempotency::new(MemoryStore::new());
/// let mut charges = 0;
/// for _ in 0..3 {
///     let receipt = idempotency
///         .call(&CHARGE)
///         .key("order-42")
///         .payload(&1000)
///         .run(async {
///             charges += 1;
///             Ok::<_, idempotent_core::Error>(format!("receipt #{charges}"))
///         })
///         .await?;
///     assert_eq!(receipt.value, "receipt #1");
/// }
/// assert_eq!(charges, 1);
/// # Ok(()) }
/// ```
#[must_use = "a call does nothing until it is run"]
pub struct Call<'a> {
    runtime: Option<Cow<'a, Idempotency>>,
    operation: &'a Operation,
    scope: Option<String>,
    key: Result<IdempotencyKey, Error>,
    /// The fingerprint, or why the payload could not be serialized.
    fingerprint: Result<Fingerprint, Box<str>>,
}

impl fmt::Debug for Call<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("operation", &self.operation.name)
            .field("scope", &self.scope)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Idempotency {
    /// Starts a call of `operation` on this runtime.
    pub fn call<'a>(&'a self, operation: &'a Operation) -> Call<'a> {
        Call::new(operation).runtime_ref(self)
    }
}

impl<'a> Call<'a> {
    /// Starts a call of `operation` on the process-wide runtime
    /// ([`Idempotency::install`]), unless [`runtime`](Call::runtime) names another.
    pub fn new(operation: &'a Operation) -> Self {
        Self {
            runtime: None,
            operation,
            scope: None,
            key: Err(Error::InvalidKey(KeyError::Empty)),
            fingerprint: Ok(Fingerprint::from_u128(0)),
        }
    }

    /// Runs on `runtime` (cloned: a reference count) instead of the global one.
    pub fn runtime(mut self, runtime: &Idempotency) -> Self {
        self.runtime = Some(Cow::Owned(runtime.clone()));
        self
    }

    fn runtime_ref(mut self, runtime: &'a Idempotency) -> Self {
        self.runtime = Some(Cow::Borrowed(runtime));
        self
    }

    /// The idempotency key: anything that displays as 1 to 255 visible ASCII
    /// characters. A malformed key makes [`run`](Call::run) fail with
    /// [`Error::InvalidKey`] without running the body.
    pub fn key<K: Display + ?Sized>(mut self, key: &K) -> Self {
        self.key = crate::key::with_scratch(|text| {
            use fmt::Write as _;
            // Writing to a String fails only if `Display` itself does; what
            // was written is then validated like any other key.
            let _ = write!(text, "{key}");
            IdempotencyKey::from_token(text)
        })
        .map_err(Error::InvalidKey);
        self
    }

    /// An already validated key.
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.key = Ok(key);
        self
    }

    /// The scope (tenant, principal): the same key in two scopes is two keys.
    pub fn scope<S: Display + ?Sized>(mut self, scope: &S) -> Self {
        self.scope = Some(scope.to_string());
        self
    }

    /// The payload, fingerprinted with [`Fingerprint::try_of`]. A payload
    /// that cannot be serialized makes [`run`](Call::run) fail with
    /// [`Error::InvalidPayload`] without running the body.
    pub fn payload<P: Serialize + ?Sized>(mut self, payload: &P) -> Self {
        self.fingerprint = Fingerprint::try_of(payload).map_err(|e| e.to_string().into());
        self
    }

    /// The payload fingerprint, computed by the caller.
    pub fn fingerprint(mut self, fingerprint: Fingerprint) -> Self {
        self.fingerprint = Ok(fingerprint);
        self
    }

    /// Runs `body` once per key and stores its `Ok` value; an `Err` releases
    /// the key, so a retry runs the body again.
    pub fn run<T, E, F>(self, body: F) -> impl Future<Output = Result<Executed<T>, E>>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
    {
        self.run_mapped(ResultCodec::<false>, body, std::convert::identity)
    }

    /// Like [`run`](Call::run), but an `Err` is stored and replayed too, for
    /// the operation's error TTL (its TTL if it sets none).
    ///
    /// Errors the library itself raises ([`Error`]) are never stored.
    pub fn run_caching_errors<T, E, F>(
        self,
        body: F,
    ) -> impl Future<Output = Result<Executed<T>, E>>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        self.run_mapped(ResultCodec::<true>, body, std::convert::identity)
    }

    // Not an `async fn`: the set-up runs before the future is built, so the
    // future holds only what it needs (each async layer would otherwise keep
    // its own copy of the arguments). `finish` maps the result inside the
    // same future, so a caller that converts it (the macro's runner) adds no
    // layer of its own: every layer is copied whole when it is moved.
    pub(crate) fn run_mapped<T, E, F, C, O>(
        self,
        codec: C,
        body: F,
        finish: impl FnOnce(Result<Executed<T>, E>) -> O,
    ) -> impl Future<Output = O>
    where
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
        C: Codec<Result<T, E>>,
    {
        let operation = self.operation;
        let prepared = self.prepare();
        async move {
            let Prepared {
                runtime,
                key,
                storage_key,
                fingerprint,
            } = match prepared {
                Ok(prepared) => prepared,
                Err(error) => return finish(Err(error.into())),
            };
            let executed = execute(
                &runtime,
                operation,
                &key,
                storage_key,
                fingerprint,
                &codec,
                body,
            )
            .await;
            finish(executed.map_err(E::from).and_then(|executed| {
                let replayed = executed.replayed;
                executed.value.map(|value| Executed { value, replayed })
            }))
        }
    }

    /// The call's operation.
    #[cfg(feature = "postgres")]
    pub(crate) fn operation(&self) -> &'a Operation {
        self.operation
    }

    /// Checks the call: its runtime, key and payload.
    pub(crate) fn prepare(self) -> Result<Prepared<'a>, Error> {
        let runtime = match self.runtime {
            Some(runtime) => runtime,
            None => Cow::Borrowed(Idempotency::global()?),
        };
        let key = self.key?;
        let fingerprint = self.fingerprint.map_err(|detail| Error::InvalidPayload {
            operation: self.operation.name.to_owned(),
            detail: detail.into(),
        })?;
        let storage_key = StorageKey::new(
            runtime.namespace(),
            self.scope.as_deref().unwrap_or(""),
            self.operation.name,
            &key,
        );
        Ok(Prepared {
            runtime,
            key,
            storage_key,
            fingerprint,
        })
    }
}

/// A checked call: what the engine and the stores need to run it.
pub(crate) struct Prepared<'a> {
    pub(crate) runtime: Cow<'a, Idempotency>,
    pub(crate) key: IdempotencyKey,
    pub(crate) storage_key: StorageKey,
    pub(crate) fingerprint: Fingerprint,
}

/// How a body's output is stored and replayed.
pub(crate) trait Codec<V> {
    /// The bytes to store and for how long, or `None` to release the key.
    fn encode(
        &self,
        value: &V,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error>;
    /// Decodes stored bytes.
    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<V, Error>;
    /// How long what is stored for `value` is kept (also when it cannot be
    /// encoded, and a record saying so is stored in its place).
    fn ttl(&self, _value: &V, operation: &Operation, runtime: &Idempotency) -> Duration {
        operation.ttl_on(runtime)
    }
}

/// Stores `Ok` as `b'O'` + JSON and, when `CACHE_ERRORS`, `Err` as `b'E'` + JSON.
pub(crate) struct ResultCodec<const CACHE_ERRORS: bool>;

const OK_TAG: u8 = b'O';
const ERR_TAG: u8 = b'E';
/// A record stored in place of a value that could not be encoded, followed
/// by the encoding error. [`replay`] answers it with [`Error::Codec`],
/// before any codec sees it.
const UNSTORED_TAG: u8 = b'X';

/// The record stored in place of a value that could not be encoded.
fn unstored(error: &Error) -> Vec<u8> {
    let detail = match error {
        Error::Codec { detail, .. } => detail.as_str(),
        _ => "",
    };
    [&[UNSTORED_TAG], detail.as_bytes()].concat()
}

/// The value of a stored record, as `codec` decodes it; an [`unstored`]
/// record, whatever the codec, is the error it holds.
pub(crate) fn replay<V>(
    codec: &impl Codec<V>,
    bytes: &[u8],
    operation: &Operation,
) -> Result<V, Error> {
    match bytes.split_first() {
        Some((&UNSTORED_TAG, detail)) => Err(codec_error(
            "decode",
            operation,
            format_args!(
                "the first call with this key ran, but its result could not be stored ({}); \
                 the body is not run again",
                String::from_utf8_lossy(detail)
            ),
        )),
        _ => codec.decode(bytes, operation),
    }
}

fn encode_json<T: Serialize>(tag: u8, value: &T, operation: &Operation) -> Result<Vec<u8>, Error> {
    let mut bytes = Vec::with_capacity(128);
    bytes.push(tag);
    serde_json::to_writer(&mut bytes, value).map_err(|e| codec_error("encode", operation, e))?;
    Ok(bytes)
}

fn decode_json<T: DeserializeOwned>(bytes: &[u8], operation: &Operation) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| codec_error("decode", operation, e))
}

fn codec_error(action: &'static str, operation: &Operation, detail: impl Display) -> Error {
    Error::Codec {
        action,
        operation: operation.name.to_owned(),
        detail: detail.to_string(),
    }
}

impl<T, E> Codec<Result<T, E>> for ResultCodec<false>
where
    T: Serialize + DeserializeOwned,
{
    fn encode(
        &self,
        value: &Result<T, E>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error> {
        match value {
            Ok(value) => Ok(Some((
                encode_json(OK_TAG, value, operation)?,
                operation.ttl.unwrap_or(runtime.ttl()),
            ))),
            Err(_) => Ok(None),
        }
    }

    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<Result<T, E>, Error> {
        match bytes.split_first() {
            Some((&OK_TAG, json)) => decode_json(json, operation).map(Ok),
            Some((&ERR_TAG, _)) => Err(codec_error(
                "decode",
                operation,
                "the record holds a cached error, but this call does not cache errors",
            )),
            _ => Err(codec_error("decode", operation, "unknown record tag")),
        }
    }
}

impl<T, E> Codec<Result<T, E>> for ResultCodec<true>
where
    T: Serialize + DeserializeOwned,
    E: Serialize + DeserializeOwned,
{
    fn encode(
        &self,
        value: &Result<T, E>,
        operation: &Operation,
        runtime: &Idempotency,
    ) -> Result<Option<(Vec<u8>, Duration)>, Error> {
        let ttl = self.ttl(value, operation, runtime);
        Ok(Some(match value {
            Ok(value) => (encode_json(OK_TAG, value, operation)?, ttl),
            Err(error) => (encode_json(ERR_TAG, error, operation)?, ttl),
        }))
    }

    fn ttl(&self, value: &Result<T, E>, operation: &Operation, runtime: &Idempotency) -> Duration {
        let ttl = operation.ttl_on(runtime);
        match value {
            Ok(_) => ttl,
            Err(_) => operation.error_ttl.unwrap_or(ttl),
        }
    }

    fn decode(&self, bytes: &[u8], operation: &Operation) -> Result<Result<T, E>, Error> {
        match bytes.split_first() {
            Some((&OK_TAG, json)) => decode_json(json, operation).map(Ok),
            Some((&ERR_TAG, json)) => decode_json(json, operation).map(Err),
            _ => Err(codec_error("decode", operation, "unknown record tag")),
        }
    }
}

/// Runs `body` at most once for `storage_key`: claims, then runs and
/// completes, replays, waits, or refuses, as the claim answers.
pub(crate) fn execute<'a, V, C, F>(
    runtime: &'a Idempotency,
    operation: &'a Operation,
    key: &'a IdempotencyKey,
    storage_key: StorageKey,
    fingerprint: Fingerprint,
    codec: &'a C,
    body: F,
) -> impl Future<Output = Result<Executed<V>, Error>> + 'a
where
    C: Codec<V>,
    F: Future<Output = V> + 'a,
    V: 'a,
{
    let span = tracing::info_span!(
        "idempotent",
        operation = operation.name,
        key = %key,
        outcome = tracing::field::Empty,
    );
    // No async block around it: a layer would be copied whole on each move.
    execute_inner(
        runtime,
        operation,
        key,
        storage_key,
        fingerprint,
        codec,
        body,
        span.clone(),
    )
    .instrument(span)
}

fn outcome<V>(result: &Result<Executed<V>, Error>) -> &'static str {
    match result {
        Ok(Executed { replayed: true, .. }) => "replayed",
        Ok(Executed {
            replayed: false, ..
        }) => "executed",
        Err(Error::InProgress { .. }) => "in_progress",
        Err(Error::KeyReused { .. }) => "mismatch",
        Err(Error::StoreUnavailable(_)) => "store_unavailable",
        Err(_) => "error",
    }
}

/// The shortest pause between two claims of a waiting call.
const MIN_RECHECK: Duration = Duration::from_millis(1);

#[expect(
    clippy::too_many_arguments,
    reason = "`execute`'s arguments and its span, for its one call"
)]
async fn execute_inner<V, C, F>(
    runtime: &Idempotency,
    operation: &Operation,
    key: &IdempotencyKey,
    storage_key: StorageKey,
    fingerprint: Fingerprint,
    codec: &C,
    body: F,
    span: tracing::Span,
) -> Result<Executed<V>, Error>
where
    C: Codec<V>,
    F: Future<Output = V>,
{
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
            .unwrap_or_else(|| now + crate::MAX_DURATION)
    });
    // Counted once per call, however many times a waiting call re-checks.
    let mut met_in_flight = false;
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
                // Boxed: the running state (body, renewal timer, encoding)
                // is large, and keeping it out of line keeps every caller's
                // future small, so the replay path moves far fewer bytes.
                break Box::pin(run_owned(
                    runtime, operation, key, codec, guard, lease, body,
                ))
                .await;
            }
            ClaimOutcome::Completed(bytes) => {
                operation.metrics().replayed.increment(1);
                break replay(codec, &bytes, operation).map(|value| Executed {
                    value,
                    replayed: true,
                });
            }
            ClaimOutcome::InFlight { retry_after } => {
                if !std::mem::replace(&mut met_in_flight, true) {
                    operation.metrics().in_flight.increment(1);
                }
                let now = tokio::time::Instant::now();
                match wait_until {
                    Some(until) if until > now => {
                        // At least a millisecond between re-checks: a store
                        // that answers "in flight, retry now" (a lease that
                        // just ran out) must not make this loop spin.
                        let timeout = retry_after.max(MIN_RECHECK).min(until - now);
                        Box::pin(wait_for(store, &storage_key, timeout)).await;
                    }
                    _ => {
                        break Err(Error::InProgress {
                            key: key.to_string(),
                            retry_after,
                        });
                    }
                }
            }
            ClaimOutcome::Mismatch => {
                operation.metrics().mismatch.increment(1);
                tracing::warn!("idempotency key reused with a different payload");
                break Err(Error::KeyReused {
                    operation: operation.name.to_owned(),
                    key: key.to_string(),
                });
            }
        }
    };
    if !span.is_disabled() {
        span.record("outcome", outcome(&result));
    }
    result
}

/// Waits for a duplicate in flight to finish (or for `timeout`).
async fn wait_for(store: &dyn Store, key: &StorageKey, timeout: Duration) {
    if store.wait(key, timeout).await.is_err() {
        // Don't spin on a failing store; the next claim reports it.
        tokio::time::sleep(timeout.min(Duration::from_millis(50))).await;
    }
}

/// The caller owns the key: run the body under a renewed lease, then store
/// its value or release the key.
async fn run_owned<V, C, F>(
    runtime: &Idempotency,
    operation: &Operation,
    key: &IdempotencyKey,
    codec: &C,
    mut guard: LeaseGuard,
    lease: Duration,
    body: F,
) -> Result<Executed<V>, Error>
where
    C: Codec<V>,
    F: Future<Output = V>,
{
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
        Ok(Executed {
            value,
            replayed: false,
        })
    };
    let (bytes, ttl) = match codec.encode(&value, operation, runtime) {
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
        Ok(()) => fresh(value),
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

/// A failed claim: a record that cannot be decoded is a codec error (so
/// nobody mistakes it for an outage), a key the store cannot hold is an
/// invalid key (the caller's to fix, not worth a retry); anything else
/// means the store is unavailable.
pub(crate) fn store_error(operation: &Operation, error: StoreError) -> Error {
    match error {
        StoreError::KeyRejected { detail } => Error::InvalidKey(KeyError::NotStorable(detail)),
        StoreError::Corrupt { key, detail } => codec_error(
            "decode",
            operation,
            format_args!("the record under `{key}` is corrupt: {detail}"),
        ),
        other => Error::StoreUnavailable(other),
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

/// A lease renewal in flight.
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
struct LeaseGuard {
    store: Arc<dyn Store>,
    key: StorageKey,
    token: LeaseToken,
    /// The fingerprint the lease was claimed with, for `complete`.
    fingerprint: Fingerprint,
    /// When the lease was last known to be renewed (or claimed).
    renewed: tokio::time::Instant,
    lease: Duration,
    armed: bool,
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
