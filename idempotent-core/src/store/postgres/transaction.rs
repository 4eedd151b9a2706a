//! The same-transaction mode's hook: the claim, the result and the commit,
//! inside a transaction the caller's own writes share
//! ([`TransactionalStore`]; the engine drives it).

use std::time::Duration;

use async_trait::async_trait;
use sqlx::{Postgres, Row as _, Transaction};

use super::PostgresStore;
use super::layout::{check_storable, claim_statement, corrupt, decode, keyed, millis};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, ClaimDecision, ClaimOutcome};
use crate::store::{StoreError, TransactionClaim, TransactionalStore};

/// How long a duplicate in progress is told to wait before it tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

#[async_trait]
impl TransactionalStore for PostgresStore {
    type Transaction = Transaction<'static, Postgres>;

    /// The record is inserted first, in one statement that also answers a
    /// key completed before (a replay), so a concurrent duplicate blocks on
    /// the unique key until this transaction ends, then replays what it
    /// committed.
    ///
    /// - `wait` is the transaction's `lock_timeout`, so the body's own
    ///   statements share it (a `SET LOCAL lock_timeout` in the body
    ///   changes it for them). Without `wait`, an advisory lock on the key
    ///   tells a duplicate at once.
    /// - Each duplicate waiting on the key holds a pooled connection while
    ///   it waits: give the pool room for them
    ///   ([`from_pool`](PostgresStore::from_pool) takes a pool you sized).
    /// - The retention counts from the start of the transaction.
    /// - The pool's acquire timeout bounds getting a connection; the
    ///   statements themselves are bounded by `wait` (the claim) and by
    ///   your database's `statement_timeout`.
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<TransactionClaim<Self::Transaction>, StoreError> {
        check_storable(key)?;
        let mut tx = match wait {
            // Bounds the wait on a duplicate's uncommitted row; set in the
            // same round trip as BEGIN.
            Some(wait) => self
                .pool()
                .begin_with(format!(
                    "BEGIN; SET LOCAL lock_timeout = '{}ms'",
                    wait.as_millis().clamp(1, i32::MAX as u128)
                ))
                .await
                .map_err(StoreError::unavailable)?,
            None => self.pool().begin().await.map_err(StoreError::unavailable)?,
        };
        let lock_key = wait.is_none().then(|| key.as_str());
        let token = self.next_token();
        let claimed = keyed(TX_CLAIM, key)
            .bind(fingerprint.as_u128().to_be_bytes().as_slice())
            .bind(token.as_u128().to_be_bytes().as_slice())
            .bind(millis(ttl))
            .bind(lock_key)
            .fetch_optional(&mut *tx)
            .await;
        let in_progress = TransactionClaim::Answered(ClaimOutcome::InProgress {
            retry_after: RETRY_AFTER,
        });
        let row = match claimed {
            Ok(Some(row)) => row,
            // No row: a duplicate holds the advisory lock.
            Ok(None) => {
                let _ = end(tx, self.timeout()).await;
                return Ok(in_progress);
            }
            // lock_not_available: the duplicate outlasted the wait.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                let _ = end(tx, self.timeout()).await;
                return Ok(in_progress);
            }
            Err(e) => {
                let _ = end(tx, self.timeout()).await;
                return Err(StoreError::unavailable(e));
            }
        };
        let acquired: bool = match row.try_get("acquired") {
            Ok(acquired) => acquired,
            Err(e) => {
                let _ = end(tx, self.timeout()).await;
                return Err(corrupt(key, e.to_string()));
            }
        };
        if acquired {
            return Ok(TransactionClaim::Acquired(tx));
        }
        // Not ours: the transaction changed nothing. Rolled back before
        // answering, so that a lock it took is free for the next retry.
        let _ = end(tx, self.timeout()).await;
        let current = decode(key, &row)?;
        Ok(match record::decide_claim(Some(&current), fingerprint, 0) {
            ClaimDecision::Answer(
                outcome @ (ClaimOutcome::Completed(_) | ClaimOutcome::KeyReused),
            ) => TransactionClaim::Answered(outcome),
            // A lease-based caller holds the key (the two modes share the table).
            _ => in_progress,
        })
    }

    async fn commit(
        &self,
        mut transaction: Self::Transaction,
        key: &StorageKey,
        response: &[u8],
    ) -> Result<(), StoreError> {
        // No indexed column changes: PostgreSQL can update in place (HOT).
        let completed = keyed(
            "UPDATE idempotency_records SET token = NULL, response = $5
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4",
            key,
        )
        .bind(response)
        .execute(&mut *transaction)
        .await;
        if let Err(error) = completed {
            if let sqlx::Error::Database(e) = &error
                && e.code().as_deref() == Some("25P02")
            {
                tracing::error!(
                    "the body returned Ok, but one of its statements failed and aborted \
                         the transaction (an error it ignored): nothing was committed"
                );
            }
            let _ = end(transaction, self.timeout()).await;
            return Err(StoreError::unavailable(error));
        }
        transaction.commit().await.map_err(StoreError::unavailable)
    }

    async fn rollback(&self, transaction: Self::Transaction) -> Result<(), StoreError> {
        end(transaction, self.timeout()).await
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
/// rollback instead, and the error says so.
async fn end(tx: Transaction<'static, Postgres>, timeout: Duration) -> Result<(), StoreError> {
    match tokio::time::timeout(timeout, tx.rollback()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::debug!(%error, "could not roll back an idempotency transaction");
            Err(StoreError::unavailable(error))
        }
        Err(_) => {
            tracing::debug!("rolling back an idempotency transaction timed out");
            Err(StoreError::unavailable("rolling back timed out"))
        }
    }
}
