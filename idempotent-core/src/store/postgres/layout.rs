//! A record as a row: the table's key bound to a statement, the columns
//! decoded into a [`Record`], the keys the table cannot hold, and the claim
//! statement both modes share.

use std::time::Duration;

use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::MAX_KEY_BYTES;
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, LeaseToken, Record, RecordState};
use crate::store::StoreError;

/// Refuses a key PostgreSQL cannot hold: a NUL character in any part
/// (`TEXT` cannot store one), or more than [`MAX_KEY_BYTES`].
pub(super) fn check_storable(key: &StorageKey) -> Result<(), StoreError> {
    let (namespace, scope, operation, id) = key.parts();
    let parts = [
        ("namespace", namespace),
        ("scope", scope),
        ("operation", operation),
        ("key", id),
    ];
    if let Some((name, _)) = parts.iter().find(|(_, part)| part.contains('\0')) {
        return Err(StoreError::KeyRejected {
            detail: format!("its {name} holds a NUL character, which PostgreSQL text cannot store"),
        });
    }
    let len: usize = parts.iter().map(|(_, part)| part.len()).sum();
    if len > MAX_KEY_BYTES {
        return Err(StoreError::KeyRejected {
            detail: format!(
                "its namespace, scope, operation and key take {len} bytes together; \
                 the PostgreSQL store takes at most {MAX_KEY_BYTES}"
            ),
        });
    }
    Ok(())
}

/// A statement whose `$1` to `$4` are the record's namespace, scope,
/// operation and key: the table's unique key, in one place.
pub(super) fn keyed<'q>(sql: &'q str, key: &'q StorageKey) -> PgQuery<'q> {
    let (namespace, scope, operation, id) = key.parts();
    sqlx::query(sql)
        .bind(namespace)
        .bind(scope)
        .bind(operation)
        .bind(id)
}

pub(super) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

pub(super) fn millis(duration: Duration) -> i64 {
    // At most a century (`record::MAX_DURATION`), so `now() + interval` fits.
    i64::try_from(record::millis(duration)).unwrap_or(i64::MAX)
}

pub(super) fn corrupt(key: &StorageKey, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

/// The row a claim returned, as the state machine's record (its deadline
/// relative to "now" = 0).
pub(super) fn decode(key: &StorageKey, row: &PgRow) -> Result<Record, StoreError> {
    let get = |e: sqlx::Error| corrupt(key, e.to_string());
    check_layout(key, row.try_get("layout").map_err(get)?)?;
    decode_columns(
        key,
        &row.try_get::<Vec<u8>, _>("fingerprint").map_err(get)?,
        row.try_get::<Option<Vec<u8>>, _>("token")
            .map_err(get)?
            .as_deref(),
        row.try_get::<Option<Vec<u8>>, _>("response")
            .map_err(get)?
            .as_deref(),
        row.try_get("remaining_ms").map_err(get)?,
    )
}

/// Refuses a row of a layout this release does not read (a newer
/// release's).
pub(super) fn check_layout(key: &StorageKey, layout: i16) -> Result<(), StoreError> {
    match u8::try_from(layout) {
        Ok(version) if record::readable_layout(version) => Ok(()),
        _ => Err(corrupt(key, record::unreadable_layout(layout))),
    }
}

/// A record from the columns of its row: whatever they hold, a record or
/// [`StoreError::Corrupt`], never a panic.
pub(crate) fn decode_columns(
    key: &StorageKey,
    fingerprint: &[u8],
    token: Option<&[u8]>,
    response: Option<&[u8]>,
    remaining_ms: i64,
) -> Result<Record, StoreError> {
    let fingerprint = <[u8; 16]>::try_from(fingerprint)
        .map_err(|_| corrupt(key, "the fingerprint is not 16 bytes"))?;
    let deadline = u64::try_from(remaining_ms.max(1)).unwrap_or(1);
    let state = match (token, response) {
        (Some(token), None) => RecordState::InProgress {
            token: LeaseToken::from_u128(u128::from_be_bytes(
                <[u8; 16]>::try_from(token)
                    .map_err(|_| corrupt(key, "the lease token is not 16 bytes"))?,
            )),
            lease_until: deadline,
        },
        (None, Some(response)) => RecordState::Completed {
            response: response.into(),
            expires_at: deadline,
        },
        _ => {
            return Err(corrupt(
                key,
                "a row must hold either a lease token or a response",
            ));
        }
    };
    Ok(Record {
        fingerprint: Fingerprint::from_u128(u128::from_be_bytes(fingerprint)),
        state,
    })
}

/// The claim, one statement, shared by the lease mode ([`CLAIM`]) and the
/// same-transaction mode: `claim_statement!(live_filter, insert_filter)`.
/// A live row visible in the statement's snapshot (narrowed by
/// `live_filter`) is answered as it is, without writing (a replay reads, it
/// does not lock). Otherwise the in-progress row is inserted (if
/// `insert_filter` allows), or an expired row taken over; a row a concurrent
/// claim committed meanwhile is returned by the `DO UPDATE`, which sees and
/// locks the latest version (the snapshot alone could miss it). `now()` is
/// one value for the whole statement, so every CASE agrees; a takeover's
/// new deadline counts from `clock_timestamp()` instead, the moment the row
/// lock was had: a takeover that waited on that lock (a purge batch, a
/// transaction holding the row) longer than a short lease would otherwise
/// hand out a lease that had already run out, free for a second takeover.
/// (An insert that waited out a concurrent insert of the key, which then
/// rolled back, still counts from the statement's start: its row was built
/// before the wait. With the default 30 s lease and the store's 1 s bound,
/// that wait cannot use up the lease.) `$1` to `$4` are
/// the key, `$5` the fingerprint, `$6` the token, `$7` the deadline in ms.
macro_rules! claim_statement {
    ($live_filter:literal, $insert_filter:literal) => {
        concat!(
            "
WITH live AS (
    SELECT fingerprint, token, response, deadline, layout FROM idempotency_records
    WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4 AND deadline > now()",
            $live_filter,
            "
), claimed AS (
    INSERT INTO idempotency_records AS r
        (namespace, scope, operation, key, fingerprint, token, response, deadline, layout)
    SELECT $1, $2, $3, $4, $5, $6, NULL, now() + $7 * interval '1 millisecond', 2
    WHERE NOT EXISTS (SELECT 1 FROM live)",
            $insert_filter,
            "
    ON CONFLICT (namespace, scope, operation, key) DO UPDATE SET
        fingerprint = CASE WHEN r.deadline <= now() THEN EXCLUDED.fingerprint ELSE r.fingerprint END,
        token       = CASE WHEN r.deadline <= now() THEN EXCLUDED.token ELSE r.token END,
        response    = CASE WHEN r.deadline <= now() THEN NULL ELSE r.response END,
        deadline    = CASE WHEN r.deadline <= now()
            THEN clock_timestamp() + $7 * interval '1 millisecond' ELSE r.deadline END,
        layout      = CASE WHEN r.deadline <= now() THEN EXCLUDED.layout ELSE r.layout END
    RETURNING fingerprint, token, response, deadline, layout
)
SELECT fingerprint, token, response, layout,
    (token IS NOT DISTINCT FROM $6) AS acquired,
    ceil(extract(epoch FROM (deadline - now())) * 1000)::bigint AS remaining_ms
FROM (SELECT * FROM claimed UNION ALL SELECT * FROM live) AS row
LIMIT 1"
        )
    };
}
pub(super) use claim_statement;

#[cfg(test)]
mod tests {
    /// The claim writes rows in this release's layout.
    #[test]
    fn the_claim_writes_the_current_layout() {
        let claim = claim_statement!("", "");
        let written = format!("interval '1 millisecond', {}\n", crate::record::LAYOUT);
        assert!(claim.contains(&written), "{claim}");
    }
}
