//! The payments app on PostgreSQL: the ledger is a table, and each charge
//! inserts its ledger row in the same transaction as its idempotency record
//! ([`PostgresStore::begin`]). A crash at any moment leaves either both (a
//! retry replays the charge) or neither (a retry charges once, cleanly).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRequest as _, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use idempotent_core::Begun;
use idempotent_core::http::{
    DEFAULT_BODY_LIMIT, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, error_response, fingerprint,
    missing_key_response, read_body, read_key,
};
use idempotent_core::postgres::{PostgresStore, PurgeTask};
use idempotent_core::{Error, Idempotency, Operation, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::Row as _;

use super::{LedgerEntry, NewPayment, Payment, Tenant, invalid, refused};

/// The ledger: one row per charge actually executed, with its tenant.
const LEDGER: &str = "CREATE TABLE IF NOT EXISTS payments_ledger (
    id BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
ALTER TABLE payments_ledger ADD COLUMN IF NOT EXISTS tenant TEXT NOT NULL DEFAULT 'anonymous'";

/// One charge per key; no wait: a duplicate in progress gets 409 at once, as
/// behind the layer.
static CHARGE: Operation = Operation::new("payments.charge");

#[derive(Clone)]
struct Db {
    store: PostgresStore,
    runtime: Idempotency,
    work: Duration,
    protected: bool,
    /// The purge of expired records runs as long as the routes live.
    _purge: Arc<PurgeTask>,
}

/// The `/payments` routes on PostgreSQL at `url`: migrates the idempotency
/// table, creates the ledger, and starts the purge of expired records.
pub(super) async fn routes<S>(
    url: &str,
    work: Duration,
    protected: bool,
) -> Result<Router<S>, StoreError> {
    let store = PostgresStore::connect(url).await?;
    store.migrate().await?;
    // Two statements: the simple protocol.
    sqlx::raw_sql(LEDGER)
        .execute(store.pool())
        .await
        .map_err(StoreError::unavailable)?;
    let db = Db {
        _purge: Arc::new(store.spawn_purge(Duration::from_secs(60), 1_000)),
        runtime: Idempotency::new(store.clone()),
        store,
        work,
        protected,
    };
    Ok(Router::new()
        .route("/payments", get(list).post(charge))
        .with_state(db))
}

/// What a charge answered: stored with the ledger row in one commit, and
/// replayed as it was, byte for byte (a `201` with the charge, or the
/// handler's own `422`).
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    status: u16,
    body: Box<RawValue>,
}

impl Answer {
    /// A `201` with the charge, its fields in the order the layer's path
    /// writes them.
    fn charged(payment: &Payment) -> Result<Self, Error> {
        Ok(Self {
            status: StatusCode::CREATED.as_u16(),
            body: raw(payment)?,
        })
    }

    /// The handler's own refusal of a payment it cannot charge.
    fn refused(status: StatusCode, problem: &serde_json::Value) -> Result<Self, Error> {
        Ok(Self {
            status: status.as_u16(),
            body: raw(problem)?,
        })
    }

    fn into_response(self, replayed: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let content_type = if status.is_success() {
            "application/json"
        } else {
            "application/problem+json"
        };
        let body = String::from(Box::<str>::from(self.body));
        let mut response = (status, [(CONTENT_TYPE, content_type)], body).into_response();
        if replayed {
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
        }
        response
    }
}

/// Why a transactional charge ended without an answer to store.
enum Unstored {
    /// The body was refused (not stored: the corrected retry runs).
    Refused(Response),
    /// The library's error (answered as the layer would).
    Idempotency(Error),
}

impl From<Error> for Unstored {
    fn from(error: Error) -> Self {
        Self::Idempotency(error)
    }
}

/// `POST /payments`, deciding as the layer does, in its order: the key
/// (missing, repeated or malformed: `400`), the body (`413` over the
/// limit), then the claim, with the fingerprint of the method, path and
/// body bytes (another body under a used key: `422`; in progress: `409`;
/// done: the stored answer, replayed). A body the `Json` extractor refuses
/// is answered like the layer's handler answers it, after the claim, and
/// nothing is stored.
async fn charge(
    State(db): State<Db>,
    Extension(tenant): Extension<Tenant>,
    request: Request,
) -> Response {
    let key = if db.protected {
        match read_key(
            request.headers(),
            &IDEMPOTENCY_KEY.parse().expect("a header name"),
        ) {
            Ok(Some(key)) => Some(key),
            Ok(None) => return missing_key_response(IDEMPOTENCY_KEY),
            Err(refused) => return refused,
        }
    } else {
        None
    };
    let (parts, body) = request.into_parts();
    let body = match read_body(&parts.headers, body, DEFAULT_BODY_LIMIT).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let fingerprint = fingerprint(&parts.method, &parts.uri, &body);
    let idempotency_key = key.as_ref().map(|key| key.as_str().to_owned());
    let read = || async {
        let request = Request::from_parts(parts.clone(), Body::from(body.clone()));
        Json::<NewPayment>::from_request(request, &()).await
    };
    let Some(key) = key else {
        // Unprotected: every request charges.
        let new = match read().await {
            Ok(Json(new)) => new,
            Err(rejection) => return refused(&rejection),
        };
        if let Some((status, problem)) = invalid(&new) {
            return match Answer::refused(status, &problem) {
                Ok(answer) => answer.into_response(false),
                Err(error) => error_response(&error),
            };
        }
        let charged = insert(&db, db.store.pool(), &tenant, None, &new).await;
        return match charged.and_then(|payment| Answer::charged(&payment)) {
            Ok(answer) => {
                metrics::counter!("payments_charged_total").increment(1);
                answer.into_response(false)
            }
            Err(error) => error_response(&error),
        };
    };
    let call = db
        .runtime
        .call(&CHARGE)
        .key(key.as_str())
        .scope(&tenant.0)
        .fingerprint(fingerprint);
    let mut tx = match call.begin::<Answer, _>(&db.store).await {
        Ok(Begun::Fresh(tx)) => tx,
        Ok(Begun::Replayed(answer)) => return answer.into_response(true),
        Err(error) => return error_response(&error),
    };
    let answer = match read().await {
        Err(rejection) => Err(Unstored::Refused(refused(&rejection))),
        Ok(Json(new)) => match invalid(&new) {
            Some((status, problem)) => Answer::refused(status, &problem).map_err(Unstored::from),
            None => insert(&db, &mut *tx, &tenant, idempotency_key.as_deref(), &new)
                .await
                .and_then(|payment| Answer::charged(&payment))
                .map_err(Unstored::from),
        },
    };
    match tx.finish(answer).await {
        Ok(done) => {
            if done.value.status == StatusCode::CREATED.as_u16() {
                metrics::counter!("payments_charged_total").increment(1);
            }
            done.value.into_response(false)
        }
        Err(Unstored::Refused(response)) => response,
        Err(Unstored::Idempotency(error)) => error_response(&error),
    }
}

/// `value` as raw JSON, kept byte for byte.
fn raw(value: &impl Serialize) -> Result<Box<RawValue>, Error> {
    serde_json::value::to_raw_value(value).map_err(|e| Error::Codec {
        action: "encode",
        operation: CHARGE.name().to_owned(),
        detail: e.to_string(),
    })
}

/// The charge itself: the simulated work, then the ledger row (in the
/// record's transaction when protected).
async fn insert<'c>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'c>,
    tenant: &Tenant,
    key: Option<&str>,
    new: &NewPayment,
) -> Result<Payment, Error> {
    if !db.work.is_zero() {
        tokio::time::sleep(db.work).await;
    }
    // `invalid` refused amounts beyond `i64::MAX`.
    let amount = i64::try_from(new.amount).unwrap_or(i64::MAX);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO payments_ledger (tenant, idempotency_key, amount, currency)
         VALUES ($1, $2, $3, $4) RETURNING id",
    )
    .bind(&tenant.0)
    .bind(key)
    .bind(amount)
    .bind(&new.currency)
    .fetch_one(executor)
    .await
    .map_err(|e| Error::StoreUnavailable(StoreError::unavailable(e)))?;
    Ok(Payment {
        id: format!("pay_{id:06}"),
        amount: new.amount,
        currency: new.currency.clone(),
        status: "succeeded".to_owned(),
    })
}

async fn list(State(db): State<Db>, Extension(tenant): Extension<Tenant>) -> Response {
    let rows = sqlx::query(
        "SELECT id, idempotency_key, amount, currency FROM payments_ledger
         WHERE tenant = $1 ORDER BY id",
    )
    .bind(&tenant.0)
    .fetch_all(db.store.pool())
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return error_response(&Error::StoreUnavailable(StoreError::unavailable(e))),
    };
    let ledger: Result<Vec<LedgerEntry>, sqlx::Error> = rows
        .iter()
        .map(|row| {
            Ok(LedgerEntry {
                payment: Payment {
                    id: format!("pay_{:06}", row.try_get::<i64, _>("id")?),
                    amount: u64::try_from(row.try_get::<i64, _>("amount")?).unwrap_or(0),
                    currency: row.try_get("currency")?,
                    status: "succeeded".to_owned(),
                },
                idempotency_key: row.try_get("idempotency_key")?,
            })
        })
        .collect();
    match ledger {
        Ok(ledger) => Json(ledger).into_response(),
        Err(e) => error_response(&Error::StoreUnavailable(StoreError::unavailable(e))),
    }
}
