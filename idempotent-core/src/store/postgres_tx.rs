//! The same-transaction mode: the record and the caller's own writes commit
//! in one PostgreSQL transaction.

use std::future::Future;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use super::postgres::PostgresStore;
use crate::engine::{Call, Codec as _, Executed, ResultCodec};
use crate::error::Error;
use crate::record::{self, ClaimDecision, ClaimOutcome};
use crate::store::StoreError;

/// The body of a transactional call: it gets the open transaction.
pub type TxBody<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

impl PostgresStore {
    /// Runs `body` at most once per key **inside one transaction** with the
    /// idempotency record: the record is inserted first (a concurrent
    /// duplicate blocks on the unique key until this transaction ends), the
    /// body does its own writes through the connection it is given, and the
    /// encoded `Ok` value is stored in the same commit. A failing body, a
    /// panic or a dropped future rolls everything back, so a retry starts
    /// clean; a crash after the commit leaves both the writes and the record,
    /// so a retry replays. No lease is involved.
    ///
    /// With a [`wait`](crate::Operation::wait) on the operation, a duplicate
    /// waits (up to that long) for the first transaction and then replays its
    /// committed value; without one it gets [`Error::InProgress`] at once.
    ///
    /// ```no_run
    /// use idempotent_core::{Idempotency, Operation, PostgresStore};
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
        let (operation, fingerprint) = call.parts();
        let (runtime, key, storage_key) = call.prepare()?;
        let (namespace, scope, op, id) = storage_key.parts();
        let unavailable = |e: sqlx::Error| Error::StoreUnavailable(StoreError::unavailable(e));
        let in_progress = || -> E {
            Error::InProgress {
                key: key.to_string(),
                retry_after: std::time::Duration::from_secs(1),
            }
            .into()
        };
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
            None => {
                let mut tx = self.pool().begin().await.map_err(unavailable)?;
                let locked: bool =
                    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))")
                        .bind(storage_key.as_str())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(unavailable)?;
                if !locked {
                    return Err(in_progress());
                }
                tx
            }
        };
        let token = self.next_token().as_u128().to_be_bytes();
        // Ours if new, or if the row there has expired; a duplicate running
        // in another transaction makes this wait until that one ends.
        let owned = sqlx::query(
            "INSERT INTO idempotency_records AS r
                 (namespace, scope, operation, key, fingerprint, token, response, deadline)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, now() + interval '1 day')
             ON CONFLICT (namespace, scope, operation, key) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, token = EXCLUDED.token,
                 response = NULL, deadline = EXCLUDED.deadline
             WHERE r.deadline <= now()
             RETURNING 1",
        )
        .bind(namespace)
        .bind(scope)
        .bind(op)
        .bind(id)
        .bind(fingerprint.as_u128().to_be_bytes().as_slice())
        .bind(token.as_slice())
        .fetch_optional(&mut *tx)
        .await;
        let owned = match owned {
            Ok(row) => row.is_some(),
            // lock_not_available: the duplicate outlasted the wait.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Err(in_progress());
            }
            Err(e) => return Err(unavailable(e).into()),
        };
        let codec = ResultCodec::<false>;
        if !owned {
            let row = sqlx::query(
                "SELECT fingerprint, token, response,
                     ceil(extract(epoch FROM (deadline - now())) * 1000)::bigint AS remaining_ms
                 FROM idempotency_records
                 WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4",
            )
            .bind(namespace)
            .bind(scope)
            .bind(op)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            drop(tx);
            // Gone since the insert saw it (a lease released): try again.
            let Some(row) = row else {
                return Err(in_progress());
            };
            let current = super::postgres::decode(&storage_key, &row).map_err(|e| match e {
                StoreError::Corrupt { key, detail } => Error::Codec {
                    action: "decode",
                    operation: operation.name().to_owned(),
                    detail: format!("the record under `{key}` is corrupt: {detail}"),
                },
                other => Error::StoreUnavailable(other),
            })?;
            return match record::decide_claim(Some(&current), fingerprint, 0) {
                ClaimDecision::Answer(ClaimOutcome::Completed(bytes)) => {
                    let value = codec.decode(&bytes, operation)?;
                    value.map(|value| Executed {
                        value,
                        replayed: true,
                    })
                }
                ClaimDecision::Answer(ClaimOutcome::Mismatch) => Err(Error::KeyReused {
                    operation: operation.name().to_owned(),
                    key: key.to_string(),
                }
                .into()),
                _ => Err(in_progress()),
            };
        }
        // Dropping `tx` on any early return below rolls everything back.
        let value = body(&mut tx).await;
        let Some((bytes, ttl)) = codec.encode(&value, operation, &runtime)? else {
            // An `Err`: roll back the record with the body's writes.
            drop(tx);
            return value.map(|value| Executed {
                value,
                replayed: false,
            });
        };
        sqlx::query(
            "UPDATE idempotency_records
             SET token = NULL, response = $5, deadline = now() + $6 * interval '1 millisecond'
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4",
        )
        .bind(namespace)
        .bind(scope)
        .bind(op)
        .bind(id)
        .bind(bytes)
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        value.map(|value| Executed {
            value,
            replayed: false,
        })
    }
}
