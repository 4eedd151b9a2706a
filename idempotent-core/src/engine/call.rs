//! One call, assembled step by step: its runtime, key, scope and payload,
//! checked before anything reaches the store.

use std::borrow::Cow;
use std::fmt::{self, Display};
use std::future::Future;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec::{Codec, ResultCodec};
use super::operation::Operation;
use super::steps::Steps;
use super::{Claimed, execute_call};
use crate::error::Error;
use crate::fingerprint::Fingerprint;
use crate::key::{IdempotencyKey, StorageKey};
use crate::runtime::Idempotency;

/// The result of an idempotent call, and whether it was replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done<T> {
    /// The body's value, fresh or replayed.
    pub value: T,
    /// `true` when the value came from the store, `false` when the body ran now.
    pub replayed: bool,
}

impl<T> Done<T> {
    /// The value.
    pub fn into_inner(self) -> T {
        self.value
    }
}

/// One idempotent call, assembled step by step and then [`run`](Call::run).
///
/// ```
/// use idempotent_core::{Idempotency, Operation};
/// use idempotent_core::memory::MemoryStore;
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
    /// The journaled steps of the body, if any.
    steps: Option<Steps>,
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
            key: Err(Error::MissingKey {
                operation: operation.name.to_owned(),
            }),
            fingerprint: Ok(Fingerprint::from_u128(0)),
            steps: None,
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

    /// Journals the body's steps with `steps` (see [`Steps`]): a retry of
    /// the call replays the steps an earlier run finished. Not with the
    /// same-transaction mode ([`begin`](Call::begin)): see [`Steps`].
    pub fn steps(mut self, steps: &Steps) -> Self {
        self.steps = Some(steps.clone());
        self
    }

    /// Runs `body` once per key and stores its `Ok` value; an `Err` releases
    /// the key, so a retry runs the body again.
    pub fn run<T, E, F>(self, body: F) -> impl Future<Output = Result<Done<T>, E>>
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
    pub fn run_caching_errors<T, E, F>(self, body: F) -> impl Future<Output = Result<Done<T>, E>>
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
        finish: impl FnOnce(Result<Done<T>, E>) -> O,
    ) -> impl Future<Output = O>
    where
        E: From<Error>,
        F: Future<Output = Result<T, E>>,
        C: Codec<Result<T, E>>,
    {
        let operation = self.operation;
        let steps = self.steps.clone();
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
            let call = Claimed {
                runtime: &runtime,
                operation,
                key: &key,
                storage_key,
                fingerprint,
                steps: steps.as_ref(),
            };
            let executed = execute_call(call, &codec, body).await;
            finish(executed.map_err(E::from).and_then(|executed| {
                let replayed = executed.replayed;
                executed.value.map(|value| Done { value, replayed })
            }))
        }
    }

    /// Whether the call journals steps.
    pub(crate) fn has_steps(&self) -> bool {
        self.steps.is_some()
    }

    /// The call's operation.
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
