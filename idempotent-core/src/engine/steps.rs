//! Journaled steps: the side effects of one idempotent call, each recorded
//! under the call's lease when it finishes, so that a retry of the call
//! (after a crash, an error or a lost lease) replays the finished ones and
//! runs only the rest.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::LeaseToken;
use crate::store::{MAX_RETRY_DELAY, StepWrite, Store, StoreError, backoff};
use crate::telemetry::{STEPS_RECORDED, STEPS_REPLAYED};

/// The journaled steps of one idempotent call: give it to the call with
/// [`Call::steps`](crate::Call::steps) (or mark an argument `#[steps]` under
/// `#[idempotent]`), and wrap each side effect of the body in
/// [`run`](Steps::run).
///
/// - A finished step's value is recorded under the call's key and the
///   step's name, under the call's live lease (a caller whose lease was
///   taken over records nothing: [`Error::LeaseLost`]). A retry of the call,
///   after a crash, an error or a lost lease, replays each recorded step's
///   value without running it, and runs only the steps that had not
///   finished.
/// - Names are the caller's, and must be unique within a call: a step in a
///   loop is named for its item (`format!("email-{i}")`). A name used twice
///   in one run of the body is [`Error::InvalidStep`]. Names, not the order
///   of the steps, tie a recorded value to its step: a step skipped on a
///   retry, or moved, cannot replay another step's value.
/// - A step's `Err` is returned to the body and not recorded (the step runs
///   again on the retry), unless it runs with
///   [`run_caching_errors`](Steps::run_caching_errors).
/// - Values that change on every run ([`uuid`](Steps::uuid),
///   [`now`](Steps::now), [`random`](Steps::random)) are journaled like
///   steps, and a downstream idempotency key ([`key`](Steps::key)) is
///   derived from the call's key, the same on every retry.
/// - When the call completes, its record replays the whole call, and its
///   steps are deleted; steps of a call that never completes expire at
///   the operation's TTL from the last one recorded.
///
/// ```
/// use idempotent_core::{Error, Idempotency, Operation, Steps};
/// use idempotent_core::memory::MemoryStore;
///
/// static CHECKOUT: Operation = Operation::new("checkout");
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Error> {
/// let idempotency = Idempotency::new(MemoryStore::new());
/// let (mut charges, mut emails) = (0, 0);
/// for attempt in 0..2 {
///     let steps = Steps::new();
///     let result = idempotency
///         .call(&CHECKOUT)
///         .key("order-42")
///         .steps(&steps)
///         .run(async {
///             let charge: String = steps.run("charge", async {
///                 charges += 1;
///                 Ok::<_, Error>("ch_1".to_owned())
///             }).await?;
///             steps.run("email", async {
///                 emails += 1;
///                 // The first attempt fails after the charge.
///                 if attempt == 0 { Err(Error::NotConfigured) } else { Ok(()) }
///             }).await?;
///             Ok::<_, Error>(charge)
///         })
///         .await;
///     if attempt == 1 {
///         assert_eq!(result?.value, "ch_1");
///     }
/// }
/// assert_eq!((charges, emails), (1, 2), "the retry replayed the charge");
/// # Ok(()) }
/// ```
#[derive(Clone, Default)]
pub struct Steps {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps")
            .field("bound", &self.shared.binding.get().map(|b| &b.key))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Shared {
    /// The call's lease, once the call holds its key.
    binding: OnceLock<Binding>,
    /// The values recorded by earlier runs of the call, read at the first step.
    recorded: tokio::sync::OnceCell<HashMap<String, Vec<u8>>>,
    /// The names used in this run of the body.
    names: Mutex<HashSet<String>>,
    /// Whether a step returned one of the library's own errors: the call's
    /// result is then not stored (see [`Steps::failed`]).
    failed: AtomicBool,
}

/// What a step needs of the call that holds its key.
pub(crate) struct Binding {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) key: StorageKey,
    pub(crate) token: LeaseToken,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) lease: Duration,
    pub(crate) ttl: Duration,
    pub(crate) operation: &'static str,
}

/// The longest step name, in bytes: every store holds it.
const MAX_NAME_BYTES: usize = 255;

/// A recorded `Ok` value, then its JSON.
const OK_TAG: u8 = b'O';
/// A recorded `Err` value ([`Steps::run_caching_errors`]), then its JSON.
const ERR_TAG: u8 = b'E';

impl Steps {
    /// A handle for one call; give it to the call with
    /// [`Call::steps`](crate::Call::steps) before running it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs the step `name` once for this call: its recorded value if an
    /// earlier run of the call finished it, otherwise `body`, whose `Ok`
    /// value is recorded before it is returned. An `Err` is returned and
    /// not recorded.
    pub async fn run<T, E, F>(&self, name: &str, body: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
    {
        self.run_coded(name, body, None).await
    }

    /// Like [`run`](Steps::run), but an `Err` is recorded and replayed
    /// too: a step whose failure is final (a card declined), which a retry
    /// must not try again.
    pub async fn run_caching_errors<T, E, F>(&self, name: &str, body: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error> + Serialize + DeserializeOwned,
        F: Future<Output = Result<T, E>>,
    {
        let errors = ErrorCodec {
            encode: |error: &E| serde_json::to_vec(error),
            decode: |json: &[u8]| serde_json::from_slice(json),
        };
        self.run_coded(name, body, Some(errors)).await
    }

    /// A random UUID (version 4), the same on every run of the call: an id
    /// for something the call creates.
    pub async fn uuid(&self, name: &str) -> Result<uuid::Uuid, Error> {
        self.run(name, async { Ok(uuid::Uuid::new_v4()) }).await
    }

    /// The time of the first run of the call to reach this step, the same
    /// on every run after it.
    pub async fn now(&self, name: &str) -> Result<SystemTime, Error> {
        self.run(name, async { Ok(SystemTime::now()) }).await
    }

    /// A random number, the same on every run of the call.
    pub async fn random(&self, name: &str) -> Result<u64, Error> {
        self.run(name, async { Ok(fastrand::u64(..)) }).await
    }

    /// An idempotency key for a call to another service, derived from this
    /// call's key and `name`: the same on every retry of this call, so the
    /// downstream call is safe even when the step around it did not get
    /// to record its value. 32 hexadecimal characters. No store round trip.
    pub fn key(&self, name: &str) -> Result<String, Error> {
        let binding = self.binding()?;
        let mut input = Vec::with_capacity(binding.key.as_str().len() + 1 + name.len());
        input.extend_from_slice(binding.key.as_str().as_bytes());
        input.push(0);
        input.extend_from_slice(name.as_bytes());
        Ok(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&input)))
    }

    /// Binds the handle to the call that now holds its key.
    pub(crate) fn bind(&self, binding: Binding) -> Result<(), Error> {
        self.shared
            .binding
            .set(binding)
            .map_err(|binding| invalid(binding.operation, "", "a Steps handle serves one call"))
    }

    /// Whether any step was run or replayed.
    pub(crate) fn used(&self) -> bool {
        self.shared.recorded.initialized()
    }

    /// Deletes the steps of a call that completed: its record replays it
    /// whole. A failure leaves them to expire at their TTL.
    pub(crate) async fn clear(&self) {
        if let (Some(binding), true) = (self.shared.binding.get(), self.used())
            && let Err(error) = binding.store.clear_steps(&binding.key).await
        {
            tracing::warn!(%error, "could not delete a completed call's steps; they expire at their TTL");
        }
    }

    fn binding(&self) -> Result<&Binding, Error> {
        self.shared.binding.get().ok_or_else(|| {
            invalid(
                "",
                "",
                "this Steps handle is not part of a running call: give it to the call with \
                 `.steps(&steps)` and use it inside the call's body",
            )
        })
    }

    /// [`run_step`](Self::run_step) in a `step` span, named for the step.
    async fn run_coded<T, E, F>(
        &self,
        name: &str,
        body: F,
        errors: Option<ErrorCodec<E>>,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
    {
        let span = tracing::info_span!("step", step = name, replayed = tracing::field::Empty);
        self.run_step(name, body, errors, span.clone())
            .instrument(span)
            .await
    }

    async fn run_step<T, E, F>(
        &self,
        name: &str,
        body: F,
        errors: Option<ErrorCodec<E>>,
        span: tracing::Span,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
    {
        let binding = self.binding()?;
        self.claim_name(binding, name).map_err(|e| self.fail(e))?;
        let recorded = match self.recorded(binding).await {
            Ok(recorded) => recorded,
            Err(error) => {
                self.release_name(name);
                return Err(self.fail(error).into());
            }
        };
        if let Some(bytes) = recorded.get(name) {
            span.record("replayed", true);
            metrics::counter!(STEPS_REPLAYED, "operation" => binding.operation).increment(1);
            return decode(binding, name, bytes, errors.as_ref()).map_err(|e| self.fail(e))?;
        }
        span.record("replayed", false);
        let value = body.await;
        let encoded = match (&value, &errors) {
            (Ok(ok), _) => Some(encode(binding, name, OK_TAG, |out| {
                serde_json::to_writer(out, ok)
            })),
            (Err(error), Some(errors)) => Some(encode(binding, name, ERR_TAG, |out| {
                (errors.encode)(error).map(|json| out.extend_from_slice(&json))
            })),
            (Err(_), None) => None,
        };
        match encoded {
            Some(bytes) => {
                let bytes = bytes.map_err(|e| self.fail(e))?;
                record(binding, name, &bytes)
                    .await
                    .map_err(|e| self.fail(e))?;
                metrics::counter!(STEPS_RECORDED, "operation" => binding.operation).increment(1);
            }
            // Not recorded: the step may run again, in this run too.
            None => self.release_name(name),
        }
        value
    }

    /// Notes that a step returned the library's own `error`: the call's
    /// result is not stored, so that a retry of the call runs again (a
    /// caching call would otherwise store an outage as its answer).
    fn fail(&self, error: Error) -> Error {
        self.shared.failed.store(true, Ordering::Relaxed);
        error
    }

    /// Whether a step returned one of the library's own errors in this run.
    pub(crate) fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Relaxed)
    }

    fn release_name(&self, name: &str) {
        let mut names = self
            .shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        names.remove(name);
    }

    /// Takes `name` for this run of the body: a name used twice is an error.
    fn claim_name(&self, binding: &Binding, name: &str) -> Result<(), Error> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.contains('\0') {
            return Err(invalid(
                binding.operation,
                name,
                "a step's name is 1 to 255 bytes, without a NUL character",
            ));
        }
        let mut names = self
            .shared
            .names
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !names.insert(name.to_owned()) {
            return Err(invalid(
                binding.operation,
                name,
                "the name is used twice in one call: name each step for what it does \
                 (`format!(\"email-{i}\")` in a loop)",
            ));
        }
        Ok(())
    }

    /// The values earlier runs recorded, read once per run of the body.
    async fn recorded(&self, binding: &Binding) -> Result<&HashMap<String, Vec<u8>>, Error> {
        self.shared
            .recorded
            .get_or_try_init(|| async {
                match binding.store.steps(&binding.key).await {
                    Ok(None) => Ok(HashMap::new()),
                    Ok(Some(log)) if log.fingerprint == binding.fingerprint => Ok(log.values),
                    // Recorded for another payload under this key, which a
                    // release let this one claim: its effects are not ours.
                    Ok(Some(_)) => Err(Error::KeyReused {
                        operation: binding.operation.to_owned(),
                        key: binding.key.to_string(),
                    }),
                    Err(error) => Err(crate::engine::store_error_named(binding.operation, error)),
                }
            })
            .await
    }
}

/// Records step `name`'s `bytes` under the call's lease, trying again while
/// the store cannot be reached, for as long as the lease lasts.
async fn record(binding: &Binding, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let started = tokio::time::Instant::now();
    let mut delays = backoff(MAX_RETRY_DELAY);
    loop {
        let step = StepWrite {
            token: binding.token,
            fingerprint: binding.fingerprint,
            name,
            value: bytes,
            lease: binding.lease,
            ttl: binding.ttl,
        };
        match binding.store.record_step(&binding.key, step).await {
            Ok(()) => return Ok(()),
            Err(StoreError::LeaseLost) => {
                return Err(Error::LeaseLost {
                    key: binding.key.to_string(),
                });
            }
            Err(error) if error.is_transient() && started.elapsed() < binding.lease => {
                tracing::warn!(step = name, %error, "could not record a step; trying again");
                tokio::time::sleep(delays.next().unwrap_or(MAX_RETRY_DELAY)).await;
            }
            Err(error) => return Err(crate::engine::store_error_named(binding.operation, error)),
        }
    }
}

/// How [`Steps::run_caching_errors`] records and replays an error.
struct ErrorCodec<E> {
    encode: fn(&E) -> serde_json::Result<Vec<u8>>,
    decode: fn(&[u8]) -> serde_json::Result<E>,
}

fn encode(
    binding: &Binding,
    name: &str,
    tag: u8,
    write: impl FnOnce(&mut Vec<u8>) -> serde_json::Result<()>,
) -> Result<Vec<u8>, Error> {
    let mut bytes = vec![tag];
    write(&mut bytes).map_err(|e| codec_error(binding, "encode", name, e))?;
    Ok(bytes)
}

fn decode<T: DeserializeOwned, E>(
    binding: &Binding,
    name: &str,
    bytes: &[u8],
    errors: Option<&ErrorCodec<E>>,
) -> Result<Result<T, E>, Error> {
    match (bytes.split_first(), errors) {
        (Some((&OK_TAG, json)), _) => serde_json::from_slice(json)
            .map(Ok)
            .map_err(|e| codec_error(binding, "decode", name, e)),
        (Some((&ERR_TAG, json)), Some(errors)) => (errors.decode)(json)
            .map(Err)
            .map_err(|e| codec_error(binding, "decode", name, e)),
        (Some((&ERR_TAG, _)), None) => Err(codec_error(
            binding,
            "decode",
            name,
            "an error was recorded for this step: run it with `run_caching_errors`",
        )),
        _ => Err(codec_error(binding, "decode", name, "not a recorded step")),
    }
}

fn codec_error(
    binding: &Binding,
    action: &'static str,
    name: &str,
    detail: impl std::fmt::Display,
) -> Error {
    Error::Codec {
        action,
        operation: binding.operation.to_owned(),
        detail: format!("step `{name}`: {detail}"),
    }
}

fn invalid(operation: &str, name: &str, detail: &str) -> Error {
    Error::InvalidStep {
        operation: operation.to_owned(),
        name: name.to_owned(),
        detail: detail.to_owned(),
    }
}
