//! The error type of every idempotent call.

use std::time::Duration;

use crate::key::KeyError;
use crate::store::StoreError;

/// Why an idempotent call did not run or replay its body.
///
/// Functions under `#[idempotent]` return their own error type `E`, which
/// must implement `From<Error>`; these are the errors the library adds.
///
/// ```
/// use idempotent_core::Error;
///
/// #[derive(Debug, thiserror::Error)]
/// enum PaymentError {
///     #[error("card declined")]
///     Declined,
///     #[error(transparent)]
///     Idempotency(#[from] Error),
/// }
/// # let _ = PaymentError::Declined;
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The idempotency key is malformed, or the store cannot hold it with its
    /// scope and operation ([`KeyError::NotStorable`]); the body was not run.
    #[error("invalid idempotency key: {0}")]
    InvalidKey(#[from] KeyError),
    /// The key was used before with a different payload.
    #[error("idempotency key `{key}` was already used for `{operation}` with a different payload")]
    KeyReused {
        /// The operation.
        operation: String,
        /// The key.
        key: String,
    },
    /// The payload cannot be serialized, so it cannot be fingerprinted (a
    /// map with non-string keys, say); the body was not run. Leave such an
    /// argument out (`skip(...)`) or give `fingerprint = <expr>`.
    #[error("the payload of `{operation}` cannot be fingerprinted: {detail}")]
    InvalidPayload {
        /// The operation.
        operation: String,
        /// Why it cannot be serialized.
        detail: String,
    },
    /// A call with the same key is running now.
    #[error("a call with idempotency key `{key}` is in progress; retry after {retry_after:?}")]
    InProgress {
        /// The key.
        key: String,
        /// When to try again (the time left on the running call's lease).
        retry_after: Duration,
    },
    /// The store could not be reached; the body was not run.
    #[error("the idempotency store is unavailable; the call was not run")]
    StoreUnavailable(#[source] StoreError),
    /// The body ran, but its lease was taken over meanwhile (it outlived its
    /// lease without renewal); its result was not recorded.
    #[error("the lease on idempotency key `{key}` was lost; the result was not recorded")]
    LeaseLost {
        /// The key.
        key: String,
    },
    /// A stored value could not be decoded (`action` is `decode`). A fresh
    /// value that cannot be encoded is not an error for its caller: the body
    /// ran, so the value is returned, and what is stored in its place
    /// answers every retry with this error (the body does not run again);
    /// except in PostgreSQL's same-transaction mode, where it is this error
    /// (`encode`) and the transaction, writes included, rolls back.
    #[error("could not {action} the stored response of `{operation}`: {detail}")]
    Codec {
        /// `encode` or `decode`.
        action: &'static str,
        /// The operation.
        operation: String,
        /// What went wrong.
        detail: String,
    },
    /// The call was run without a key: a [`Call`](crate::Call) needs
    /// [`key`](crate::Call::key) (or
    /// [`idempotency_key`](crate::Call::idempotency_key)) before
    /// [`run`](crate::Call::run). A bug in the caller; the body was not run.
    #[error(
        "the call of `{operation}` has no idempotency key: set one with `.key(...)` before running it"
    )]
    MissingKey {
        /// The operation.
        operation: String,
    },
    /// A journaled step was misused: a name used twice in one call, an
    /// empty name, a [`Steps`](crate::Steps) handle used outside its call,
    /// or steps on a store that does not journal them. A bug in the
    /// caller; the step did not run.
    #[error("step `{name}` of `{operation}`: {detail}")]
    InvalidStep {
        /// The operation (empty when the handle is not bound to a call).
        operation: String,
        /// The step's name.
        name: String,
        /// What is wrong.
        detail: String,
    },
    /// No runtime was given and none was installed at start-up.
    #[error(
        "no idempotency runtime is configured: call `Idempotency::builder(store).build().install()` at start-up, or pass `runtime = ...` to #[idempotent]"
    )]
    NotConfigured,
}

impl Error {
    /// Whether the key was reused with another payload.
    pub fn is_key_reused(&self) -> bool {
        matches!(self, Self::KeyReused { .. })
    }

    /// Whether the payload could not be serialized (the body did not run).
    pub fn is_invalid_payload(&self) -> bool {
        matches!(self, Self::InvalidPayload { .. })
    }

    /// Whether a call with the same key is in progress.
    pub fn is_in_progress(&self) -> bool {
        matches!(self, Self::InProgress { .. })
    }

    /// Whether the store was unavailable (the body did not run).
    pub fn is_store_unavailable(&self) -> bool {
        matches!(self, Self::StoreUnavailable(_))
    }

    /// Whether the lease was lost.
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, Self::LeaseLost { .. })
    }

    /// For [`Error::InProgress`], when to try again.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InProgress { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
