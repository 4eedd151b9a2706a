//! Run a function once per idempotency key, however often it is called.
//!
//! Networks lose responses, clients retry, and a non-idempotent operation
//! (charge a card, create an order, send an email) runs twice. This crate
//! records each key with the result of its first execution and replays that
//! result for every later call with the same key.
//!
//! ```
//! use idempotent_core::{idempotent, Idempotency};
//! use idempotent_core::memory::MemoryStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Receipt { id: u64, amount: u64 }
//!
//! #[derive(Debug, thiserror::Error)]
//! enum PaymentError {
//!     #[error(transparent)]
//!     Idempotency(#[from] idempotent_core::Error),
//! }
//!
//! static CHARGES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
//!
//! #[idempotent(key = payment_id, ttl = "24h")]
//! async fn charge(payment_id: &str, amount: u64) -> Result<Receipt, PaymentError> {
//!     let id = CHARGES.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
//!     Ok(Receipt { id, amount })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), PaymentError> {
//! Idempotency::new(MemoryStore::new()).install().expect("installed once");
//! let first = charge("pay-1", 1000).await?;
//! let retry = charge("pay-1", 1000).await?;
//! assert_eq!(first, retry);
//! assert_eq!(CHARGES.load(std::sync::atomic::Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! # Where things are
//!
//! - Once per key: the [`idempotent`] attribute, or a [`Call`] of an
//!   [`Operation`] on an [`Idempotency`] runtime; its answer is an
//!   [`Done`] value or an [`Error`].
//! - Stores: [`memory`] (the default, one process), [`redis`] (standalone,
//!   cluster, TLS) and [`postgres`] (with its same-transaction mode).
//! - HTTP: [`http`], a tower layer for axum and any tower service.
//! - Metric and span names: [`telemetry`].
//! - Operations (inspect, evict, stuck work, counts): [`admin`].
//! - For people writing their own store: [`Store`] (and
//!   [`TransactionalStore`] for the same-transaction mode), [`StoreError`],
//!   the [`record`] state machine, and the conformance suite (feature
//!   `conformance`) to prove the store keeps its promises.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod engine;
mod error;
mod fingerprint;
#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;
mod key;
pub mod record;
mod runtime;
mod store;
pub mod telemetry;

#[doc(hidden)]
pub mod __private;

#[cfg(feature = "fuzz")]
#[doc(hidden)]
pub mod __fuzz;

/// Runs an `async fn` once per idempotency key; see the crate documentation.
///
/// Options, all but `key` optional:
///
/// - `key = <expr>`: the idempotency key, any `Display` value of 1 to 255
///   visible ASCII characters.
/// - `runtime = <expr>`: the [`Idempotency`] to use; else the installed one.
/// - `scope = <expr>`: a tenant or principal; one key in two scopes is two keys.
/// - `ttl = "24h"`, `lease = "30s"`: retention (at most [`MAX_DURATION`](record::MAX_DURATION)),
///   and how long a running call holds the key (renewed while the body
///   runs; at least [`MIN_LEASE`]).
/// - `wait = "5s"`: a duplicate in progress waits this long for the result
///   instead of failing with [`Error::InProgress`].
/// - `cache_errors` or `cache_errors = "5m"`: store `Err` results too.
/// - `skip(a, b)`, `skip_all` or `fingerprint = <expr>`: what the payload
///   fingerprint leaves out, or covers instead of the arguments. The payload
///   is every argument but `self`, the `#[tx]` connection and an argument
///   that `runtime = ...` or `transaction = ...` names; each must be
///   `Serialize` (skip a client, a pool or an app state: it is how the call
///   runs, not what it asks for), and one that fails to serialize at run
///   time makes the call [`Error::InvalidPayload`]. With `skip_all` the
///   payload is empty: the key alone identifies the call. Use one of the
///   three at most.
/// - `name = "..."`: the operation name, part of every storage key.
/// - `transaction = <PostgresStore>` (feature `postgres`): the body runs in a
///   transaction the store opened, with the record; the argument marked
///   `#[tx]` (a `&mut sqlx::PgConnection`) receives it and leaves the
///   signature, so callers do not pass it. The namespace and TTL come from
///   `runtime = ...`, else the installed runtime, else the defaults
///   ([`DEFAULT_NAMESPACE`], [`DEFAULT_TTL`]). See [`Call::begin`].
/// - `crate = "..."`: where `idempotent_core` is, if renamed.
#[doc(inline)]
pub use idempotent_macros::idempotent;

pub use engine::{Begun, Call, Done, KeyTransaction, Operation, Steps, TxBody};
pub use error::Error;
pub use fingerprint::{Fingerprint, PayloadError};
pub use key::{IdempotencyKey, KeyError, MAX_KEY_LEN};
pub use runtime::{
    DEFAULT_LEASE, DEFAULT_NAMESPACE, DEFAULT_TTL, Idempotency, IdempotencyBuilder, MIN_LEASE,
};
pub use store::admin;
#[cfg(feature = "memory")]
pub use store::memory;
#[cfg(feature = "postgres")]
pub use store::postgres;
#[cfg(feature = "redis")]
pub use store::redis;
pub use store::{
    LocalCache, StepLog, StepWrite, Store, StoreError, TransactionClaim, TransactionalStore,
};

// The guides' examples in docs/ use every store, the HTTP layer and the
// client: each file's snippets are doctested here. The README's, which also
// use the consumers, are doctested in idempotent-consumer (a dev-dependency
// here would build the brokers' clients into every compile-fail test).

#[cfg(all(doctest, feature = "http", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/function.md")]
struct FunctionGuideDoctests;

#[cfg(all(doctest, feature = "http", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/stores.md")]
struct StoresGuideDoctests;

#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/http.md")]
struct HttpGuideDoctests;

#[cfg(all(doctest, feature = "http", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/client.md")]
struct ClientGuideDoctests;

#[cfg(all(doctest, feature = "http", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/failure-modes.md")]
struct FailureModesGuideDoctests;

#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../../docs/operations.md")]
struct OperationsGuideDoctests;
