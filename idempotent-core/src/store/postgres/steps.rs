//! Journaled steps on PostgreSQL: one row per step in
//! `idempotency_records_steps`, apart from the call's row in
//! `idempotency_records`.
//!
//! Why a table of their own: steps must outlive the call's row. A release
//! (the body failed) deletes that row, and a lease that runs out lets the
//! next claim take it over; either way the retry must still find the steps
//! the first try recorded, to replay them rather than do their effects
//! again. So a step row is keyed like its record (namespace, scope,
//! operation, key) plus the step's name, with no foreign key to it, and
//! carries its own expiry (`expires_at`, the operation's TTL), which the
//! purge ([`PostgresStore::PURGE_STEPS`]) goes by.
//!
//! Every write of a step refreshes the expiry and the fingerprint of all
//! the call's live step rows in the same statement, so a call's live rows
//! always agree: the log expires as a whole, and [`steps`](crate::Store::steps)
//! treats rows that disagree on the fingerprint as written by something
//! else ([`StoreError::Corrupt`]). An expired row is left out of the log
//! (and is not refreshed: a step recorded after the log expired starts a
//! new one), until the purge deletes it.

use sqlx::Row as _;

use super::PostgresStore;
use super::layout::{check_storable, corrupt, keyed, millis};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::store::{StepLog, StepWrite, StoreError};

/// The most bytes a step's name may take. Its index entry holds the
/// record's key too (at most [`MAX_KEY_BYTES`](super::MAX_KEY_BYTES)),
/// and together they must stay under the 2,704 bytes a btree entry holds.
const MAX_STEP_NAME_BYTES: usize = 512;

/// Records a step, in one statement, under the call's live lease:
///
/// - `renewed` extends the lease of the call's row, only where the token
///   (`$5`) and the fingerprint (`$6`) are the lease's and the lease is
///   live (the `WHERE` of `renew`, plus the fingerprint). It locks the row,
///   so writes of one call's steps take turns.
/// - `kept` gives the call's other live step rows the new expiry (`$10` ms
///   from now) and fingerprint, only if `renewed` found the row: the log
///   expires as a whole. The step being written is left to the `INSERT`:
///   of two changes to one row in one statement, PostgreSQL does not say
///   which takes effect.
/// - The `INSERT` writes the step (`$8` its name, `$9` its value), one row
///   per row renewed (so none when the lease is not live: the caller reads
///   0 rows as the lease lost), or replaces the value of a name recorded
///   before.
///
/// `$7` is the lease in ms. A concurrent write of another step of the same
/// call, committed while this one waited for the row's lock, is not seen
/// by `kept` (its snapshot is older): that row keeps the expiry its own
/// write gave it, at most the wait earlier.
const RECORD_STEP: &str = "
WITH renewed AS (
    UPDATE idempotency_records
    SET deadline = now() + $7 * interval '1 millisecond'
    WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
      AND token = $5 AND deadline > now() AND fingerprint = $6
    RETURNING namespace, scope, operation, key
), kept AS (
    UPDATE idempotency_records_steps
    SET fingerprint = $6, expires_at = now() + $10 * interval '1 millisecond'
    WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
      AND name <> $8 AND expires_at > now() AND EXISTS (SELECT 1 FROM renewed)
)
INSERT INTO idempotency_records_steps
    (namespace, scope, operation, key, name, value, fingerprint, expires_at)
SELECT namespace, scope, operation, key, $8, $9, $6, now() + $10 * interval '1 millisecond'
FROM renewed
ON CONFLICT (namespace, scope, operation, key, name) DO UPDATE SET
    value = excluded.value,
    fingerprint = excluded.fingerprint,
    expires_at = excluded.expires_at";

/// The call's live steps.
const STEPS: &str = "
SELECT name, value, fingerprint FROM idempotency_records_steps
WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4 AND expires_at > now()";

/// The call's steps, live or expired.
const CLEAR_STEPS: &str = "
DELETE FROM idempotency_records_steps
WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4";

impl PostgresStore {
    pub(super) async fn read_steps(&self, key: &StorageKey) -> Result<Option<StepLog>, StoreError> {
        check_storable(key)?;
        let rows = self
            .bounded(async { keyed(STEPS, key).fetch_all(self.pool()).await })
            .await?;
        let mut log: Option<StepLog> = None;
        for row in rows {
            let get = |e: sqlx::Error| corrupt(key, e.to_string());
            let name: String = row.try_get("name").map_err(get)?;
            let value: Vec<u8> = row.try_get("value").map_err(get)?;
            let fingerprint: Vec<u8> = row.try_get("fingerprint").map_err(get)?;
            let fingerprint = <[u8; 16]>::try_from(fingerprint.as_slice())
                .map(|bytes| Fingerprint::from_u128(u128::from_be_bytes(bytes)))
                .map_err(|_| {
                    corrupt(
                        key,
                        format!("step `{name}`: the fingerprint is not 16 bytes"),
                    )
                })?;
            let log = log.get_or_insert_with(|| StepLog {
                fingerprint,
                values: Default::default(),
            });
            if log.fingerprint != fingerprint {
                return Err(corrupt(
                    key,
                    "the live steps of one call disagree on its fingerprint",
                ));
            }
            log.values.insert(name, value);
        }
        Ok(log)
    }

    pub(super) async fn write_step(
        &self,
        key: &StorageKey,
        step: StepWrite<'_>,
    ) -> Result<(), StoreError> {
        check_storable(key)?;
        check_step_name(step.name)?;
        self.fenced(
            keyed(RECORD_STEP, key)
                .bind(step.token.as_u128().to_be_bytes().to_vec())
                .bind(step.fingerprint.as_u128().to_be_bytes().to_vec())
                .bind(millis(step.lease))
                .bind(step.name)
                .bind(step.value)
                .bind(millis(step.ttl)),
        )
        .await
    }

    pub(super) async fn drop_steps(&self, key: &StorageKey) -> Result<(), StoreError> {
        check_storable(key)?;
        self.bounded(async { keyed(CLEAR_STEPS, key).execute(self.pool()).await })
            .await
            .map(|_| ())
    }
}

/// Refuses a step name PostgreSQL cannot hold, as [`check_storable`]
/// refuses a key: a NUL character, or more than [`MAX_STEP_NAME_BYTES`].
fn check_step_name(name: &str) -> Result<(), StoreError> {
    if name.contains('\0') {
        return Err(StoreError::KeyRejected {
            detail: "a step name holds a NUL character, which PostgreSQL text cannot store".into(),
        });
    }
    if name.len() > MAX_STEP_NAME_BYTES {
        return Err(StoreError::KeyRejected {
            detail: format!(
                "a step name takes {} bytes; the PostgreSQL store takes at most {MAX_STEP_NAME_BYTES}",
                name.len()
            ),
        });
    }
    Ok(())
}
