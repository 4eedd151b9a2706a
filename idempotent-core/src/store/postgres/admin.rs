//! The operations of [`Admin`] on PostgreSQL, one statement each. A look
//! at a key and an eviction use the primary key; stuck work and counts
//! scan the table (no index covers them: the `deadline` index serves the
//! purge), so run them on a replica, or off-peak on a large table.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row as _;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::layout::{check_layout, check_storable, corrupt, decode_columns, keyed};
use crate::key::{IdempotencyKey, StorageKey};
use crate::record::RecordState;
use crate::store::StoreError;
use crate::store::admin::{
    Admin, Eviction, OperationCount, RecordInfo, RecordStatus, StuckRecords,
};
use crate::store::lease_tokens;

/// The columns [`info`] reads, after the four parts of the key.
const COLUMNS: &str = "fingerprint, token, layout, octet_length(response) AS response_len,
    ceil(extract(epoch FROM (deadline - now())) * 1000)::bigint AS remaining_ms";

/// A live row as the admin sees it; `response` is the column's value if it
/// was selected.
fn info(
    key: &StorageKey,
    row: &PgRow,
    response: Option<Vec<u8>>,
) -> Result<RecordInfo, StoreError> {
    let get = |e: sqlx::Error| corrupt(key, e.to_string());
    let layout: i16 = row.try_get("layout").map_err(get)?;
    check_layout(key, layout)?;
    let remaining_ms: i64 = row.try_get("remaining_ms").map_err(get)?;
    let fingerprint: Vec<u8> = row.try_get("fingerprint").map_err(get)?;
    let token: Option<Vec<u8>> = row.try_get("token").map_err(get)?;
    let response_len: Option<i32> = row.try_get("response_len").map_err(get)?;
    // The state machine's decoder, with an empty response standing in for
    // one not read.
    let stand_in = response_len.map(|_| &[][..]);
    let record = decode_columns(key, &fingerprint, token.as_deref(), stand_in, remaining_ms)?;
    let left = Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0));
    let layout = layout.unsigned_abs() as u8;
    let status = match record.state {
        RecordState::InProgress { token, .. } => RecordStatus::InProgress {
            owner: token,
            lease_left: left,
            running_for: (layout >= 2).then(|| lease_tokens::running_for(token)),
        },
        RecordState::Completed { .. } => RecordStatus::Completed {
            expires_in: left,
            response_len: response_len.map_or(0, |len| len.unsigned_abs() as usize),
            response: response.map(Into::into),
        },
    };
    Ok(RecordInfo::new(
        key.clone(),
        record.fingerprint,
        layout,
        status,
    ))
}

/// The storage key of a row read by a scan.
fn row_key(row: &PgRow) -> Result<StorageKey, StoreError> {
    let get = |e: sqlx::Error| StoreError::unavailable(e);
    let part = |name: &str| row.try_get::<String, _>(name).map_err(get);
    let id = part("key")?;
    let key = IdempotencyKey::from_token(&id).map_err(|e| StoreError::Corrupt {
        key: id.clone(),
        detail: e.to_string(),
    })?;
    Ok(StorageKey::new(
        &part("namespace")?,
        &part("scope")?,
        &part("operation")?,
        &key,
    ))
}

#[async_trait]
impl Admin for PostgresStore {
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError> {
        check_storable(key)?;
        let sql = format!(
            "SELECT {COLUMNS}, CASE WHEN $5 THEN response END AS response
             FROM idempotency_records
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
               AND deadline > now()"
        );
        let query = keyed(&sql, key).bind(with_response);
        let row = self
            .bounded(async { query.fetch_optional(self.pool()).await })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let response: Option<Vec<u8>> = row
            .try_get("response")
            .map_err(|e| corrupt(key, e.to_string()))?;
        info(key, &row, response).map(Some)
    }

    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError> {
        check_storable(key)?;
        // The live row, locked; deleted unless a lease is live on it and the
        // eviction is not forced. Gone, its token fences its owner.
        let query = keyed(
            "WITH target AS (
                SELECT token IS NOT NULL AS in_progress,
                    ceil(extract(epoch FROM (deadline - now())) * 1000)::bigint AS remaining_ms
                FROM idempotency_records
                WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                  AND deadline > now()
                FOR UPDATE
            ), gone AS (
                DELETE FROM idempotency_records
                WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                  AND EXISTS (SELECT 1 FROM target WHERE NOT in_progress OR $5)
                RETURNING 1
            )
            SELECT in_progress, remaining_ms, EXISTS (SELECT 1 FROM gone) AS evicted FROM target",
            key,
        )
        .bind(force);
        let row = self
            .bounded(async { query.fetch_optional(self.pool()).await })
            .await?;
        let Some(row) = row else {
            return Ok(Eviction::Absent);
        };
        let get = |e: sqlx::Error| corrupt(key, e.to_string());
        let in_progress: bool = row.try_get("in_progress").map_err(get)?;
        if row.try_get("evicted").map_err(get)? {
            return Ok(Eviction::Evicted { in_progress });
        }
        let remaining_ms: i64 = row.try_get("remaining_ms").map_err(get)?;
        Ok(Eviction::Refused {
            lease_left: Duration::from_millis(u64::try_from(remaining_ms).unwrap_or(0)),
        })
    }

    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError> {
        // The claim time is in the token (layout 2): filtered here, over
        // the rows in progress, which are as many as the calls running (and
        // those of processes that died, until their leases run out).
        let sql = format!(
            "SELECT namespace, scope, operation, key, {COLUMNS} FROM idempotency_records
             WHERE token IS NOT NULL AND deadline > now()"
        );
        let rows = self
            .bounded(async { sqlx::query(&sql).fetch_all(self.pool()).await })
            .await?;
        let mut stuck = StuckRecords::new(older_than, limit);
        for row in &rows {
            stuck.offer(info(&row_key(row)?, row, None)?);
        }
        Ok(stuck.into_list())
    }

    async fn count(&self) -> Result<Vec<OperationCount>, StoreError> {
        let rows = self
            .bounded(async {
                sqlx::query(
                    "SELECT namespace, operation,
                        count(*) FILTER (WHERE token IS NOT NULL) AS in_progress,
                        count(*) FILTER (WHERE token IS NULL) AS completed
                     FROM idempotency_records WHERE deadline > now()
                     GROUP BY namespace, operation ORDER BY namespace, operation",
                )
                .fetch_all(self.pool())
                .await
            })
            .await?;
        rows.iter()
            .map(|row| {
                let count = |name: &str| {
                    row.try_get::<i64, _>(name)
                        .map(i64::unsigned_abs)
                        .map_err(StoreError::unavailable)
                };
                Ok(OperationCount::new(
                    row.try_get("namespace").map_err(StoreError::unavailable)?,
                    row.try_get("operation").map_err(StoreError::unavailable)?,
                    count("in_progress")?,
                    count("completed")?,
                ))
            })
            .collect()
    }
}
