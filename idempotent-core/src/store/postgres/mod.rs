//! The PostgreSQL store: one row per record, a unique key on
//! (namespace, scope, operation, key), the database's clock for leases.
//!
//! Two tables, both created by [`PostgresStore::MIGRATION`] in the schema
//! the connections' `search_path` names:
//!
//! - `idempotency_records`: one row per record (namespace, scope,
//!   operation, key; the payload's fingerprint; the lease token while in
//!   progress, or the response once completed; the `deadline`, the end of
//!   the lease or of the retention; the `layout` version the row was
//!   written in, [`record::LAYOUT`]), indexed on `deadline` for the purge.
//! - `idempotency_records_steps`: one row per journaled step of a call
//!   (the record's four parts and the step's name; its value, the call's
//!   fingerprint, and `expires_at`), indexed on `expires_at` for the purge.
//!   A table of its own because the steps must outlive the call's row: a
//!   release deletes the row, and the retry must find the steps
//!   (`steps.rs`).
//!
//! This file is the store used like Redis (claim, then complete or release,
//! with leases). The same-transaction mode, where the record commits together
//! with the caller's own writes, is `transaction.rs`: the store's
//! [`TransactionalStore`](crate::TransactionalStore) hook, which the engine
//! drives ([`Call::begin`](crate::Call::begin),
//! [`Call::run_in_transaction`](crate::Call::run_in_transaction), or
//! `#[idempotent(transaction = ...)]`).
//!
//! `sqlx` is re-exported: use `idempotent_core::postgres::sqlx` rather than
//! a `sqlx` dependency of your own, whose version could differ from ours.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Executor as _, Row as _};

mod admin;
mod layout;
mod steps;
mod transaction;

#[cfg(feature = "fuzz")]
pub(crate) use layout::decode_columns;
use layout::{PgQuery, check_storable, claim_statement, corrupt, decode, keyed, millis};

pub use sqlx;

use super::lease_tokens::LeaseTokens;
use super::{StepLog, StepWrite, Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, ClaimDecision, ClaimOutcome, Lease, LeaseToken};

/// Every call is bounded by this, by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// The most bytes a record's namespace, scope, operation and key may take
/// together. A btree index entry holds at most 2,704 bytes on PostgreSQL's
/// 8 KiB pages: past that the `INSERT` fails. Checking a smaller bound
/// before the claim refuses such a key with [`StoreError::KeyRejected`]
/// (an invalid key for the caller, a 400 through the HTTP layer) instead
/// of a database error that reads as an outage.
pub const MAX_KEY_BYTES: usize = 2_048;

/// A [`Store`] on PostgreSQL.
///
/// - One row per record; the primary key (namespace, scope, operation, key)
///   is the unique constraint that makes a claim atomic.
/// - A claim is one statement: a live row is answered as it is (a replay
///   only reads); otherwise an `INSERT ... ON CONFLICT DO UPDATE ...
///   RETURNING` inserts the in-progress row, takes over one whose deadline
///   passed, or returns the row a concurrent claim just committed. Leases
///   and retention use the database's clock (`now()`), so every machine
///   agrees.
/// - Complete, release and renew are single statements that check the
///   lease token and that the lease is live.
/// - Journaled steps ([`Store::record_step`]) are rows of a second table,
///   keyed by the record's key and the step's name, which outlive the
///   record's row (a release deletes it; the retry reads the steps). A
///   step is recorded in one statement that also extends the call's lease,
///   only under the live lease, and refreshes the expiry of the call's
///   other steps, so the log expires as a whole.
/// - Expired rows, of records and of steps, are deleted in bounded batches
///   by [`purge_expired`](Self::purge_expired), through the indexes on
///   `deadline` and `expires_at` (no table scan).
/// - Every [`Store`] call (claim, complete, release, renew, and those of
///   steps) and every purge is bounded by the timeout (default 1 s); a
///   database that cannot be reached is [`StoreError::Unavailable`]. The
///   same-transaction mode
///   ([`TransactionalStore::begin`](crate::TransactionalStore::begin)) is
///   bounded differently: see there.
/// - A key it cannot hold (a NUL character in any part, or more than
///   [`MAX_KEY_BYTES`] in all) is refused before any statement:
///   [`StoreError::KeyRejected`], an invalid key for the caller. So is a
///   step name with a NUL character or of more than 512 bytes.
///
/// ```no_run
/// use idempotent_core::Idempotency;
/// use idempotent_core::postgres::PostgresStore;
///
/// # async fn start() -> Result<(), idempotent_core::StoreError> {
/// let store = PostgresStore::connect("postgres://app@127.0.0.1/shop").await?;
/// store.migrate().await?;
/// Idempotency::new(store).install().expect("installed once");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    timeout: Duration,
    tokens: std::sync::Arc<LeaseTokens>,
}

impl PostgresStore {
    /// One batch of [`purge_expired`](Self::purge_expired), `$1` rows at most: the
    /// oldest expired rows, found through the `deadline` index and deleted by
    /// their row address (a TID scan), so a purge never scans the table
    /// (`store_postgres.rs` checks the plan). The batch is locked as it is
    /// chosen (`FOR UPDATE SKIP LOCKED`): a row a claim is taking over is
    /// skipped, or re-checked and kept if the claim committed first, and
    /// concurrent purges take disjoint batches. For a job of your own (pg_cron,
    /// say), run it with `$1` replaced by a batch size.
    pub const PURGE: &str = "DELETE FROM idempotency_records WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_records WHERE deadline <= now()
    ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED))";

    /// [`PURGE`](Self::PURGE) for the steps table: one batch of `$1` step
    /// rows at most whose `expires_at` has passed, found through its index
    /// and deleted by row address, locked as chosen (`FOR UPDATE SKIP
    /// LOCKED`): a step a call is writing is skipped, or re-checked and kept
    /// if its write committed first. [`purge_expired`](Self::purge_expired)
    /// runs both; a job of your own should run both too.
    pub const PURGE_STEPS: &str = "DELETE FROM idempotency_records_steps WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM idempotency_records_steps WHERE expires_at <= now()
    ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED))";

    /// The tables, created by [`migrate`](Self::migrate). For your own migration
    /// tool, run this SQL (idempotent) once per schema.
    ///
    /// `idempotency_records` holds one row per record. The steps of a call
    /// ([`Store::record_step`]) are rows of `idempotency_records_steps`, a
    /// table of their own because they must outlive the call's row: a
    /// release deletes the row, and the retry must still find the steps.
    /// Hence no foreign key to the record, and an expiry of their own
    /// (`expires_at`, purged by [`PURGE_STEPS`](Self::PURGE_STEPS)).
    ///
    /// The `layout` column is the version of the record layout a row was
    /// written in ([`record::LAYOUT`]); a table made by release 0.1 gains
    /// it, with the version 1 of its rows (a constant default: no rewrite of
    /// the table). The previous release ignores the column, so run the
    /// migration before the new release starts, and both run side by side.
    pub const MIGRATION: &str = "
CREATE TABLE IF NOT EXISTS idempotency_records (
    namespace   TEXT        NOT NULL,
    scope       TEXT        NOT NULL,
    operation   TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint BYTEA       NOT NULL,
    token       BYTEA,
    response    BYTEA,
    deadline    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, scope, operation, key)
);
CREATE INDEX IF NOT EXISTS idempotency_records_deadline ON idempotency_records (deadline);
ALTER TABLE idempotency_records ADD COLUMN IF NOT EXISTS layout SMALLINT NOT NULL DEFAULT 1;
CREATE TABLE IF NOT EXISTS idempotency_records_steps (
    namespace   TEXT        NOT NULL,
    scope       TEXT        NOT NULL,
    operation   TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    name        TEXT        NOT NULL,
    value       BYTEA       NOT NULL,
    fingerprint BYTEA       NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, scope, operation, key, name)
);
CREATE INDEX IF NOT EXISTS idempotency_records_steps_expires_at
    ON idempotency_records_steps (expires_at);
";

    /// A store on `url` with the default timeout. Connections are made
    /// lazily, so this succeeds while the database is down.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(StoreError::unavailable)?;
        Ok(Self::with_options(options, DEFAULT_TIMEOUT))
    }

    /// A store with explicit connection options (a `search_path`, say) and
    /// call timeout, on a pool of up to 16 connections.
    pub fn with_options(options: PgConnectOptions, timeout: Duration) -> Self {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(timeout)
            .connect_lazy_with(options);
        Self::from_pool(pool, timeout)
    }

    /// A store on a pool you built (its size, its timeouts, shared with
    /// your application's own queries), with this call timeout.
    pub fn from_pool(pool: PgPool, timeout: Duration) -> Self {
        Self {
            pool,
            timeout,
            tokens: std::sync::Arc::new(LeaseTokens::new()),
        }
    }

    /// Creates the tables and their indexes if they are missing ([`MIGRATION`](Self::MIGRATION)),
    /// under an advisory lock so concurrent starts do not race.
    ///
    /// A schema that is already current is only read: no DDL runs, so no
    /// table lock is taken, and an instance starting beside running ones
    /// (a rolling deploy) neither blocks their transactions nor deadlocks
    /// with them (`ALTER TABLE ... IF NOT EXISTS` takes its lock first).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let current: bool = sqlx::query_scalar(Self::CURRENT)
                .fetch_one(&self.pool)
                .await?;
            if current {
                return Ok(());
            }
            let mut tx = self.pool.begin().await?;
            tx.execute("SELECT pg_advisory_xact_lock(7171001)").await?;
            // Another instance may have migrated while this one waited for
            // the lock, and be running calls already.
            let current: bool = sqlx::query_scalar(Self::CURRENT)
                .fetch_one(&mut *tx)
                .await?;
            if !current {
                tx.execute(Self::MIGRATION).await?;
            }
            tx.commit().await
        })
        .await
    }

    /// Whether everything [`MIGRATION`](Self::MIGRATION) makes is there
    /// (its last index, and the `layout` column it adds), on the
    /// connection's `search_path`.
    const CURRENT: &str = "
SELECT to_regclass('idempotency_records_steps_expires_at') IS NOT NULL
   AND to_regclass('idempotency_records_deadline') IS NOT NULL
   AND EXISTS (SELECT 1 FROM pg_attribute
               WHERE attrelid = to_regclass('idempotency_records')
                 AND attname = 'layout' AND NOT attisdropped)";

    /// Deletes up to `batch` records whose deadline has passed, and up to
    /// `batch` step rows whose expiry has passed; returns how many rows in
    /// all. Call it periodically (it uses the `deadline` and `expires_at`
    /// indexes).
    pub async fn purge_expired(&self, batch: i64) -> Result<u64, StoreError> {
        let (records, steps) = self.purge_batches(batch).await?;
        Ok(records + steps)
    }

    /// One batch of [`PURGE`](Self::PURGE) then one of
    /// [`PURGE_STEPS`](Self::PURGE_STEPS), bounded together by the timeout:
    /// how many records, and how many step rows, were deleted.
    async fn purge_batches(&self, batch: i64) -> Result<(u64, u64), StoreError> {
        self.bounded(async {
            let records = sqlx::query(Self::PURGE)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            let steps = sqlx::query(Self::PURGE_STEPS)
                .bind(batch)
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok((records, steps))
        })
        .await
    }

    /// Starts a background task that purges expired rows (records and
    /// steps) every `every` (at least 1 ms), in batches of `batch` (at least
    /// 1; a full batch of either is followed at once by the next, so a
    /// backlog drains without waiting).
    /// Errors are logged and retried at the next tick. The task stops when
    /// the returned handle is dropped.
    ///
    /// Needs a tokio runtime.
    pub fn spawn_purge(&self, every: Duration, batch: i64) -> PurgeTask {
        let (every, batch) = (every.max(Duration::from_millis(1)), batch.max(1));
        let store = self.clone();
        let task = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                loop {
                    match store.purge_batches(batch).await {
                        Ok((records, steps)) if records.max(steps) >= batch.unsigned_abs() => {}
                        Ok((records, steps)) => {
                            tracing::debug!(
                                purged = records,
                                steps,
                                "purged expired idempotency records"
                            );
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not purge expired idempotency records");
                            break;
                        }
                    }
                }
            }
        });
        PurgeTask(task.abort_handle())
    }

    /// The store's connection pool, to share it with the application's own
    /// queries (the table of the same-transaction mode's writes, say).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The bound on each call.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    pub(crate) fn next_token(&self) -> LeaseToken {
        self.tokens.next()
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(StoreError::unavailable),
            Err(elapsed) => Err(StoreError::unavailable(elapsed)),
        }
    }

    /// Runs a fenced statement: exactly one row changed, or the lease is lost.
    async fn fenced(&self, query: PgQuery<'_>) -> Result<(), StoreError> {
        let changed = self
            .bounded(async { query.execute(&self.pool).await.map(|d| d.rows_affected()) })
            .await?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::LeaseLost)
        }
    }
}

/// The background purge of [`PostgresStore::spawn_purge`]; dropping it
/// stops the task.
#[derive(Debug)]
#[must_use = "the purge task stops when this handle is dropped"]
pub struct PurgeTask(tokio::task::AbortHandle);

impl Drop for PurgeTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The lease mode's claim: any live row is answered.
const CLAIM: &str = claim_statement!("", "");

#[async_trait]
impl Store for PostgresStore {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        check_storable(key)?;
        let token = self.tokens.next();
        let row = self
            .bounded(
                keyed(CLAIM, key)
                    .bind(fingerprint.as_u128().to_be_bytes().as_slice())
                    .bind(token.as_u128().to_be_bytes().as_slice())
                    .bind(millis(lease))
                    .fetch_one(&self.pool),
            )
            .await?;
        let acquired: bool = row
            .try_get("acquired")
            .map_err(|e| corrupt(key, e.to_string()))?;
        if acquired {
            return Ok(ClaimOutcome::Acquired(Lease {
                token,
                duration: lease,
            }));
        }
        let current = decode(key, &row)?;
        match record::decide_claim(Some(&current), fingerprint, 0) {
            ClaimDecision::Answer(answer) => Ok(answer),
            // The statement takes over expired rows itself.
            ClaimDecision::Acquire => Err(corrupt(key, "a live row was reported expired")),
        }
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let completed = self
            .fenced(
                keyed(
                    "UPDATE idempotency_records
                     SET token = NULL, response = $6, deadline = now() + $7 * interval '1 millisecond'
                     WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                       AND token = $5 AND deadline > now() AND fingerprint = $8",
                    key,
                )
                .bind(token.as_u128().to_be_bytes().to_vec())
                .bind(response.to_vec())
                .bind(millis(ttl))
                .bind(fingerprint.as_u128().to_be_bytes().to_vec()),
            )
            .await;
        if !matches!(completed, Err(StoreError::LeaseLost)) {
            return completed;
        }
        // A completion sent again after its answer was lost (a timeout) finds
        // its own record completed: acknowledged, as the `Store` trait
        // allows, and nothing changes. Only on this rare path: a completion
        // that lands pays nothing for it.
        let identical = keyed(
            "SELECT 1 FROM idempotency_records
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
               AND token IS NULL AND deadline > now() AND fingerprint = $5 AND response = $6",
            key,
        )
        .bind(fingerprint.as_u128().to_be_bytes().to_vec())
        .bind(response.to_vec());
        let found = self
            .bounded(async { identical.fetch_optional(&self.pool).await })
            .await?;
        match found {
            Some(_) => Ok(()),
            None => Err(StoreError::LeaseLost),
        }
    }

    async fn release(&self, key: &StorageKey, token: LeaseToken) -> Result<(), StoreError> {
        self.fenced(
            keyed(
                "DELETE FROM idempotency_records
                 WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                   AND token = $5 AND deadline > now()",
                key,
            )
            .bind(token.as_u128().to_be_bytes().to_vec()),
        )
        .await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.fenced(
            keyed(
                "UPDATE idempotency_records
                 SET deadline = now() + $6 * interval '1 millisecond'
                 WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                   AND token = $5 AND deadline > now()",
                key,
            )
            .bind(token.as_u128().to_be_bytes().to_vec())
            .bind(millis(lease)),
        )
        .await
    }

    async fn steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        self.read_steps(key).await
    }

    async fn record_step(&self, key: &StorageKey, step: StepWrite<'_>) -> Result<(), StoreError> {
        self.write_step(key, step).await
    }

    async fn clear_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        self.drop_steps(key).await
    }
}
