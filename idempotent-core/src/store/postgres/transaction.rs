//! The same-transaction mode: the record and the caller's own writes commit
//! in one PostgreSQL transaction.

use std::borrow::Cow;
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::{PgConnection, Postgres, Row as _, Transaction};

use super::{PostgresStore, check_storable, claim_statement, corrupt, keyed, millis};
use crate::engine::{
    Call, Codec as _, Executed, Operation, Prepared, ResultCodec, replay, store_error,
};
use crate::error::Error;
use crate::key::{IdempotencyKey, StorageKey};
use crate::record::{self, ClaimDecision, ClaimOutcome};
use crate::runtime::Idempotency;
use crate::store::StoreError;

/// The body of a transactional call: it gets the open transaction.
pub type TxBody<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// What [`PostgresStore::begin`] found under a key.
#[must_use = "a `Fresh` transaction rolls back unless it is finished"]
#[derive(Debug)]
pub enum Begun<'a, T> {
    /// The key completed before: its committed value. No transaction is open.
    Replayed(T),
    /// The key is new (or its record expired): a transaction holding its
    /// record. Write through it, then [`finish`](KeyTransaction::finish) it.
    Fresh(KeyTransaction<'a>),
}

/// An open transaction that holds a key's idempotency record.
///
/// It dereferences to the [`PgConnection`] of the transaction, so the
/// caller's writes go through it (`query.execute(&mut *tx)`).
/// [`finish`](Self::finish) stores an `Ok` value and commits everything in
/// one commit; an `Err`, or dropping the transaction (a panic, a cancelled
/// future, an early `?`), rolls everything back, record included, so a retry
/// runs clean.
///
/// An `Err` is rolled back before `finish` returns. A drop cannot wait: the
/// rollback is sent when the connection is next used, and a statement still
/// running when the future was dropped (a long query under a caller's
/// timeout) runs to its end first, so until then a retry finds the key held
/// (in progress, or a wait).
pub struct KeyTransaction<'a> {
    tx: Transaction<'static, Postgres>,
    /// The store's call bound, for the rollback.
    timeout: Duration,
    operation: &'a Operation,
    runtime: Cow<'a, Idempotency>,
    key: StorageKey,
}

impl std::fmt::Debug for KeyTransaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyTransaction")
            .field("operation", &self.operation.name())
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Deref for KeyTransaction<'_> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.tx
    }
}

impl DerefMut for KeyTransaction<'_> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

impl KeyTransaction<'_> {
    /// Ends the call: an `Ok` value is stored under the key and committed
    /// with the caller's writes (`replayed: false`); an `Err` rolls all of it
    /// back and is returned as it is.
    ///
    /// A failed commit is [`Error::StoreUnavailable`]: whether it landed is
    /// unknown, and a retry either replays it or runs clean.
    pub async fn finish<T, E>(mut self, value: Result<T, E>) -> Result<Executed<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
    {
        let codec = ResultCodec::<false>;
        // The claim gave the row its final deadline.
        let encoded = match codec.encode(&value, self.operation, &self.runtime) {
            Ok(encoded) => encoded,
            Err(error) => {
                end(self.tx, self.timeout).await;
                return Err(error.into());
            }
        };
        let Some((bytes, _ttl)) = encoded else {
            // An `Err`. Rolled back before answering (not left to `Drop`,
            // which rolls back later, from the pool): a retry that follows at
            // once must find the key free, not still locked.
            end(self.tx, self.timeout).await;
            return value.map(|value| Executed {
                value,
                replayed: false,
            });
        };
        let unavailable = |e: sqlx::Error| Error::StoreUnavailable(StoreError::unavailable(e));
        // No indexed column changes: PostgreSQL can update in place (HOT).
        let completed = keyed(
            "UPDATE idempotency_records SET token = NULL, response = $5
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4",
            &self.key,
        )
        .bind(bytes)
        .execute(&mut *self.tx)
        .await;
        if let Err(error) = completed {
            if let sqlx::Error::Database(e) = &error {
                if e.code().as_deref() == Some("25P02") {
                    tracing::error!(
                        operation = self.operation.name(),
                        "the body returned Ok, but one of its statements failed and aborted \
                         the transaction (an error it ignored): nothing was committed"
                    );
                }
            }
            end(self.tx, self.timeout).await;
            return Err(unavailable(error).into());
        }
        self.tx.commit().await.map_err(unavailable)?;
        self.operation.metrics().executed.increment(1);
        value.map(|value| Executed {
            value,
            replayed: false,
        })
    }
}

impl PostgresStore {
    /// Opens a transaction and claims the call's key in it: the building
    /// block of the same-transaction mode, for bodies that borrow from their
    /// caller (see [`run_in_transaction`](Self::run_in_transaction) for the
    /// closure form).
    ///
    /// The record is inserted first, in one statement that also answers a
    /// key completed before (a replay), so a concurrent duplicate blocks on
    /// the unique key until this transaction ends, then replays what it
    /// committed. With a [`wait`](Operation::wait) on the operation, a
    /// duplicate waits up to that long and then gets [`Error::InProgress`];
    /// without one it gets [`Error::InProgress`] at once. A key completed
    /// with another payload is [`Error::KeyReused`]. No lease is involved:
    /// the record lives and dies with the transaction.
    ///
    /// Things to know:
    /// - The `wait` bound is the transaction's `lock_timeout`, so the body's
    ///   own statements share it (a `SET LOCAL lock_timeout` in the body
    ///   changes it for them).
    /// - Each duplicate waiting on the key holds a pooled connection while
    ///   it waits: give the pool room for them
    ///   ([`from_pool`](Self::from_pool) takes a pool you sized).
    /// - The retention (TTL) counts from the start of the transaction.
    /// - A body that ignores a failed statement leaves the transaction
    ///   aborted; [`finish`](KeyTransaction::finish) then commits nothing
    ///   and answers [`Error::StoreUnavailable`] (and logs why).
    /// - The pool's acquire timeout bounds getting a connection; the
    ///   statements themselves are bounded by `wait` (the claim) and by
    ///   your database's `statement_timeout`.
    ///
    /// ```no_run
    /// use idempotent_core::{Error, Idempotency, Operation, StoreError};
    /// use idempotent_core::postgres::{Begun, PostgresStore};
    ///
    /// static CHARGE: Operation = Operation::new("charge").wait(std::time::Duration::from_secs(5));
    ///
    /// async fn charge(store: &PostgresStore, runtime: &Idempotency, order: &str, cents: i64)
    ///     -> Result<i64, Error>
    /// {
    ///     let call = runtime.call(&CHARGE).key(order).payload(&cents);
    ///     let mut tx = match store.begin::<i64>(call).await? {
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
    pub async fn begin<'a, T>(&self, call: Call<'a>) -> Result<Begun<'a, T>, Error>
    where
        T: Serialize + DeserializeOwned,
    {
        let operation = call.operation();
        let Prepared {
            runtime,
            key,
            storage_key,
            fingerprint,
        } = call.prepare()?;
        check_storable(&storage_key).map_err(|error| store_error(operation, error))?;
        let unavailable = |e: sqlx::Error| Error::StoreUnavailable(StoreError::unavailable(e));
        let mut tx = match operation.wait_bound() {
            // Bounds the wait on a duplicate's uncommitted row; set in the
            // same round trip as BEGIN.
            Some(wait) => self
                .pool()
                .begin_with(format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                    wait.as_millis().clamp(1, i32::MAX as u128)
                ))
                .await
                .map_err(unavailable)?,
            None => self.pool().begin().await.map_err(unavailable)?,
        };
        // Without `wait`, the key's advisory lock tells a duplicate in
        // flight at once.
        let lock_key = operation
            .wait_bound()
            .is_none()
            .then(|| storage_key.as_str());
        let token = self.next_token();
        let claimed = keyed(TX_CLAIM, &storage_key)
            .bind(fingerprint.as_u128().to_be_bytes().as_slice())
            .bind(token.as_u128().to_be_bytes().as_slice())
            .bind(millis(operation.ttl_on(&runtime)))
            .bind(lock_key)
            .fetch_optional(&mut *tx)
            .await;
        let row = match claimed {
            Ok(Some(row)) => row,
            // No row: a duplicate holds the advisory lock.
            Ok(None) => {
                end(tx, self.timeout()).await;
                return Err(in_progress(operation, &key));
            }
            // lock_not_available: the duplicate outlasted the wait.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                end(tx, self.timeout()).await;
                return Err(in_progress(operation, &key));
            }
            Err(e) => {
                end(tx, self.timeout()).await;
                return Err(unavailable(e));
            }
        };
        let acquired: bool = match row.try_get("acquired") {
            Ok(acquired) => acquired,
            Err(e) => {
                end(tx, self.timeout()).await;
                return Err(store_error(operation, corrupt(&storage_key, e.to_string())));
            }
        };
        if acquired {
            return Ok(Begun::Fresh(KeyTransaction {
                tx,
                timeout: self.timeout(),
                operation,
                runtime,
                key: storage_key,
            }));
        }
        // Not ours: the transaction changed nothing. Rolled back before
        // answering, so that a lock it took is free for the next retry.
        end(tx, self.timeout()).await;
        let current =
            super::decode(&storage_key, &row).map_err(|error| store_error(operation, error))?;
        match record::decide_claim(Some(&current), fingerprint, 0) {
            ClaimDecision::Answer(ClaimOutcome::Completed(bytes)) => {
                let value: Result<T, Error> = replay(&ResultCodec::<false>, &bytes, operation)?;
                operation.metrics().replayed.increment(1);
                Ok(Begun::Replayed(value?))
            }
            ClaimDecision::Answer(ClaimOutcome::Mismatch) => {
                operation.metrics().mismatch.increment(1);
                Err(Error::KeyReused {
                    operation: operation.name().to_owned(),
                    key: key.to_string(),
                })
            }
            // A lease-based caller holds the key (the two modes share the table).
            _ => Err(in_progress(operation, &key)),
        }
    }

    /// Runs `body` at most once per key **inside one transaction** with the
    /// idempotency record: [`begin`](Self::begin), then the body with the
    /// transaction's connection, then [`finish`](KeyTransaction::finish). A
    /// failing body, a panic or a dropped future rolls everything back, so
    /// a retry starts clean; a crash after the commit leaves both the writes
    /// and the record, so a retry replays.
    ///
    /// The body is a closure returning a boxed future that may borrow the
    /// connection; whatever else it uses it must own (`move`). For a body that
    /// borrows from its caller, use [`begin`](Self::begin) directly.
    ///
    /// ```no_run
    /// use idempotent_core::{Idempotency, Operation};
    /// use idempotent_core::postgres::PostgresStore;
    ///
    /// static CHARGE: Operation = Operation::new("charge")
    ///     .wait(std::time::Duration::from_secs(5));
    ///
    /// # async fn charge(store: PostgresStore, runtime: Idempotency) -> Result<(), idempotent_core::Error> {
    /// let charged = store
    ///     .run_in_transaction(runtime.call(&CHARGE).key("order-42").payload(&4200), |tx| {
    ///         Box::pin(async move {
    ///             let id: i64 = sqlx::query_scalar(
    ///                 "INSERT INTO ledger (amount) VALUES (4200) RETURNING id",
    ///             )
    ///             .fetch_one(&mut *tx)
    ///             .await
    ///             .map_err(|e| idempotent_core::Error::StoreUnavailable(
    ///                 idempotent_core::StoreError::unavailable(e),
    ///             ))?;
    ///             Ok::<_, idempotent_core::Error>(id)
    ///         })
    ///     })
    ///     .await?;
    /// println!("charge {} (replayed: {})", charged.value, charged.replayed);
    /// # Ok(()) }
    /// ```
    pub async fn run_in_transaction<T, E, B>(
        &self,
        call: Call<'_>,
        body: B,
    ) -> Result<Executed<T>, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        B: for<'c> FnOnce(&'c mut PgConnection) -> TxBody<'c, T, E>,
    {
        match self.begin(call).await? {
            Begun::Replayed(value) => Ok(Executed {
                value,
                replayed: true,
            }),
            Begun::Fresh(mut tx) => {
                let value = body(&mut tx).await;
                tx.finish(value).await
            }
        }
    }
}

/// The claim, in the transaction, as one prepared statement (see
/// `claim_statement!`). Only a *completed* live row is answered as it is (a
/// replay: no write, no lock); otherwise our row is inserted with its final
/// deadline (`$7` is the TTL, so completing it changes no indexed column),
/// or an expired row taken over, and a row another transaction holds makes
/// the insert wait for it (bounded by `lock_timeout`). With `$8` (no wait),
/// a transaction holding that advisory lock means no row at all: in
/// progress. The lock's hash is seeded with the table's OID, so stores in two
/// schemas of one database never block each other.
const TX_CLAIM: &str = claim_statement!(
    " AND response IS NOT NULL",
    " AND ($8::text IS NULL OR pg_try_advisory_xact_lock(
          hashtextextended($8::text, 'idempotency_records'::regclass::oid::bigint)))"
);

/// Rolls back a transaction (a claim that was not ours, or a body that
/// failed), so that its locks are free before the caller hears the answer.
/// If that fails or takes longer than `timeout`, dropping it queues the
/// rollback instead.
async fn end(tx: Transaction<'static, Postgres>, timeout: Duration) {
    match tokio::time::timeout(timeout, tx.rollback()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "could not roll back an idempotency transaction"),
        Err(_) => tracing::debug!("rolling back an idempotency transaction timed out"),
    }
}

fn in_progress(operation: &Operation, key: &IdempotencyKey) -> Error {
    operation.metrics().in_flight.increment(1);
    Error::InProgress {
        key: key.to_string(),
        retry_after: Duration::from_secs(1),
    }
}
