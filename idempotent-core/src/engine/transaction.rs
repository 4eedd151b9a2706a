//! The same-transaction mode: the body's writes and the key's record commit
//! in one transaction of a [`TransactionalStore`], through the same claim
//! answers, span, metrics and errors as every other call.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument as _;

use super::call::{Call, Done, Prepared};
use super::codec::{Codec as _, ResultCodec};
use super::operation::Operation;
use super::{in_progress, key_reused, record_outcome, replayed, span, store_error, timed};
use crate::error::Error;
use crate::key::StorageKey;
use crate::record::ClaimOutcome;
use crate::runtime::Idempotency;
use crate::store::{TransactionClaim, TransactionalStore};
use crate::telemetry::StoreCall;

/// The body of a transactional call: it gets the open transaction's
/// connection.
pub type TxBody<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// What [`Call::begin`] found under a key.
#[must_use = "a `Fresh` transaction rolls back unless it is finished"]
pub enum Begun<'a, T, S: TransactionalStore> {
    /// The key completed before: its committed value. No transaction is open.
    Replayed(T),
    /// The key is new (or its record expired): a transaction holding its
    /// record. Write through it, then [`finish`](KeyTransaction::finish) it.
    Fresh(KeyTransaction<'a, S>),
}

impl<T: fmt::Debug, S: TransactionalStore> fmt::Debug for Begun<'_, T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Replayed(value) => f.debug_tuple("Replayed").field(value).finish(),
            Self::Fresh(tx) => f.debug_tuple("Fresh").field(tx).finish(),
        }
    }
}

/// An open transaction that holds a key's idempotency record.
///
/// It dereferences to the transaction's connection, so the caller's writes
/// go through it (`query.execute(&mut *tx)`). [`finish`](Self::finish)
/// stores an `Ok` value and commits everything in one commit; an `Err`, or
/// dropping the transaction (a panic, a cancelled future, an early `?`),
/// rolls everything back, record included, so a retry runs clean.
///
/// An `Err` is rolled back before `finish` returns. A drop cannot wait: for
/// PostgreSQL, the rollback is sent when the connection is next used, and a
/// statement still running when the future was dropped (a long query under
/// a caller's timeout) runs to its end first, so until then a retry finds
/// the key held (in progress, or a wait).
pub struct KeyTransaction<'a, S: TransactionalStore> {
    transaction: S::Transaction,
    store: S,
    operation: &'a Operation,
    runtime: Cow<'a, Idempotency>,
    key: StorageKey,
    span: tracing::Span,
}

impl<S: TransactionalStore> fmt::Debug for KeyTransaction<'_, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTransaction")
            .field("operation", &self.operation.name())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<S: TransactionalStore> Deref for KeyTransaction<'_, S> {
    /// What the store's transaction dereferences to, which the body writes
    /// through (for PostgreSQL, a `PgConnection`).
    type Target = <S::Transaction as Deref>::Target;

    fn deref(&self) -> &Self::Target {
        &self.transaction
    }
}

impl<S: TransactionalStore> DerefMut for KeyTransaction<'_, S> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.transaction
    }
}

impl<S: TransactionalStore> KeyTransaction<'_, S> {
    /// The call's `idempotent` span, for its body.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Ends the call: an `Ok` value is stored under the key and committed
    /// with the caller's writes (`replayed: false`); an `Err` rolls all of it
    /// back and is returned as it is.
    ///
    /// A failed commit is [`Error::StoreUnavailable`]: whether it landed is
    /// unknown, and a retry either replays it or runs clean.
    pub async fn finish<T, E>(self, value: Result<T, E>) -> Result<Done<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let span = self.span.clone();
        let finished = self.end(value).instrument(span.clone()).await;
        record_outcome(&span, &finished);
        finished.map_err(E::from).and_then(|executed| {
            let replayed = executed.replayed;
            executed.value.map(|value| Done { value, replayed })
        })
    }

    async fn end<T, E>(self, value: Result<T, E>) -> Result<Done<Result<T, E>>, Error>
    where
        T: Serialize + DeserializeOwned,
    {
        let Self {
            transaction,
            store,
            operation,
            runtime,
            key,
            span: _,
        } = self;
        let store = &store;
        let rollback =
            |transaction| timed(operation, StoreCall::Release, store.rollback(transaction));
        match ResultCodec::<false>.encode(&value, operation, &runtime) {
            // The claim gave the record its retention already.
            Ok(Some((bytes, _ttl))) => {
                let committed = store.commit(transaction, &key, &bytes);
                timed(operation, StoreCall::Complete, committed)
                    .await
                    .map_err(|error| store_error(operation, error))?;
            }
            // An `Err`: rolled back before answering, so that a retry that
            // follows at once finds the key free, not still locked.
            Ok(None) => {
                let _ = rollback(transaction).await;
            }
            Err(error) => {
                let _ = rollback(transaction).await;
                return Err(error);
            }
        }
        Ok(Done {
            value,
            replayed: false,
        })
    }
}

impl<'a> Call<'a> {
    /// Opens a transaction of `store` and claims the call's key in it: the
    /// building block of the same-transaction mode, for bodies that borrow
    /// from their caller (see [`run_in_transaction`](Self::run_in_transaction)
    /// for the closure form, and `#[idempotent(transaction = ...)]`).
    ///
    /// A key completed before is [`Begun::Replayed`] (no transaction is left
    /// open). A duplicate in progress is waited on for the operation's
    /// [`wait`](Operation::wait), if it has one, then answered
    /// [`Error::InProgress`]; a key completed with another payload is
    /// [`Error::KeyReused`]. No lease is involved: the record lives and dies
    /// with the transaction. See the store's
    /// [`begin`](TransactionalStore::begin) for what its wait shares and
    /// holds (for PostgreSQL, the transaction's `lock_timeout` and a pooled
    /// connection per waiting duplicate).
    ///
    #[cfg_attr(feature = "postgres", doc = "```no_run")]
    #[cfg_attr(not(feature = "postgres"), doc = "```ignore")]
    /// use idempotent_core::postgres::{PostgresStore, sqlx};
    /// use idempotent_core::{Begun, Error, Idempotency, Operation, StoreError};
    ///
    /// static CHARGE: Operation = Operation::new("charge").wait(std::time::Duration::from_secs(5));
    ///
    /// async fn charge(store: &PostgresStore, runtime: &Idempotency, order: &str, cents: i64)
    ///     -> Result<i64, Error>
    /// {
    ///     let call = runtime.call(&CHARGE).key(order).payload(&cents);
    ///     let mut tx = match call.begin::<i64, _>(store).await? {
    ///         Begun::Replayed(id) => return Ok(id),
    ///         Begun::Fresh(tx) => tx,
    ///     };
    ///     let id = sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
    ///         .bind(cents)
    ///         .fetch_one(&mut *tx)
    ///         .await
    ///         .map_err(|e| Error::StoreUnavailable(StoreError::unavailable(e)));
    ///     Ok(tx.finish(id).await?.value)
    /// }
    /// ```
    pub async fn begin<T, S>(self, store: &S) -> Result<Begun<'a, T, S>, Error>
    where
        T: Serialize + DeserializeOwned,
        S: TransactionalStore,
    {
        let operation = self.operation();
        if self.has_steps() {
            // The call's record is uncommitted inside the transaction: no
            // step could be fenced by it from outside, and a step recorded
            // inside it would roll back with it while its effect stays.
            return Err(Error::InvalidStep {
                operation: operation.name.to_owned(),
                name: String::new(),
                detail: "steps are not journaled in the same-transaction mode: a step's effect \
                         outside the database cannot roll back with the transaction; run the \
                         call in lease mode (`run`), or make each effect a write in the \
                         transaction"
                    .to_owned(),
            });
        }
        let Prepared {
            runtime,
            key,
            storage_key,
            fingerprint,
        } = self.prepare()?;
        let span = span(operation, &key);
        let ttl = operation.ttl_on(&runtime);
        let claim = store.begin(&storage_key, fingerprint, ttl, operation.wait_bound());
        let claim = timed(operation, StoreCall::Claim, claim)
            .instrument(span.clone())
            .await;
        let claim = match claim {
            Ok(TransactionClaim::Acquired(transaction)) => {
                operation.metrics().executed.increment(1);
                return Ok(Begun::Fresh(KeyTransaction {
                    transaction,
                    store: store.clone(),
                    operation,
                    runtime,
                    key: storage_key,
                    span,
                }));
            }
            Ok(TransactionClaim::Answered(outcome)) => Ok(outcome),
            Err(error) => Err(error),
        };
        let answer: Result<Done<Result<T, Error>>, Error> = span.in_scope(|| match claim {
            Ok(ClaimOutcome::Completed(bytes)) => {
                replayed(&ResultCodec::<false>, &bytes, operation)
            }
            Ok(ClaimOutcome::KeyReused) => Err(key_reused(operation, &key)),
            Ok(ClaimOutcome::InProgress { retry_after }) => {
                operation.metrics().in_progress.increment(1);
                Err(in_progress(&key, retry_after))
            }
            // A lease is no answer of this mode: a store that gives one
            // holds the key for someone else, as far as this call knows.
            Ok(ClaimOutcome::Acquired(_)) => {
                operation.metrics().in_progress.increment(1);
                Err(in_progress(&key, Duration::from_secs(1)))
            }
            Err(error) => Err(store_error(operation, error)),
        });
        record_outcome(&span, &answer);
        answer.and_then(|executed| executed.value.map(Begun::Replayed))
    }

    /// Runs `body` at most once per key **inside one transaction** of
    /// `store` with the idempotency record: [`begin`](Self::begin), then
    /// the body with the transaction's connection, then
    /// [`finish`](KeyTransaction::finish). A failing body, a panic or a
    /// dropped future rolls everything back, so a retry starts clean; a
    /// crash after the commit leaves both the writes and the record, so a
    /// retry replays.
    ///
    /// The body is a closure returning a boxed future that may borrow the
    /// connection; whatever else it uses it must own (`move`). For a body
    /// that borrows from its caller, use [`begin`](Self::begin) directly.
    ///
    #[cfg_attr(feature = "postgres", doc = "```no_run")]
    #[cfg_attr(not(feature = "postgres"), doc = "```ignore")]
    /// use idempotent_core::postgres::{PostgresStore, sqlx};
    /// use idempotent_core::{Error, Idempotency, Operation, StoreError};
    ///
    /// static CHARGE: Operation = Operation::new("charge")
    ///     .wait(std::time::Duration::from_secs(5));
    ///
    /// # async fn charge(store: PostgresStore, runtime: Idempotency) -> Result<(), Error> {
    /// let charged = runtime
    ///     .call(&CHARGE)
    ///     .key("order-42")
    ///     .payload(&4200)
    ///     .run_in_transaction(&store, |tx| {
    ///         Box::pin(async move {
    ///             let id: i64 = sqlx::query_scalar(
    ///                 "INSERT INTO ledger (amount) VALUES (4200) RETURNING id",
    ///             )
    ///             .fetch_one(&mut *tx)
    ///             .await
    ///             .map_err(|e| Error::StoreUnavailable(StoreError::unavailable(e)))?;
    ///             Ok::<_, Error>(id)
    ///         })
    ///     })
    ///     .await?;
    /// println!("charge {} (replayed: {})", charged.value, charged.replayed);
    /// # Ok(()) }
    /// ```
    pub async fn run_in_transaction<S, T, E, B>(self, store: &S, body: B) -> Result<Done<T>, E>
    where
        S: TransactionalStore,
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        B: for<'c> FnOnce(&'c mut <S::Transaction as Deref>::Target) -> TxBody<'c, T, E>,
    {
        match self.begin(store).await? {
            Begun::Replayed(value) => Ok(Done {
                value,
                replayed: true,
            }),
            Begun::Fresh(mut tx) => {
                let span = tx.span().clone();
                let value = body(&mut tx).instrument(span).await;
                tx.finish(value).await
            }
        }
    }
}
