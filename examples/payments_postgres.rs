//! The payments app on PostgreSQL: the ledger is a table, and each charge
//! inserts its ledger row in the same transaction as its idempotency record
//! ([`PostgresStore::begin`]). A crash at any moment leaves either both (a
//! retry replays the charge) or neither (a retry charges once, cleanly).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest as _, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use idempotent_core::http::{
    DEFAULT_BODY_LIMIT, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, error_response, missing_key_response,
    too_large_response,
};
use idempotent_core::{
    Begun, Error, Idempotency, IdempotencyKey, Operation, PostgresStore, PurgeTask, StoreError,
};
use sqlx::Row as _;

use super::{LedgerEntry, NewPayment, Payment, invalid_currency};

/// The ledger: one row per charge actually executed.
const LEDGER: &str = "CREATE TABLE IF NOT EXISTS payments_ledger (
    id BIGSERIAL PRIMARY KEY,
    idempotency_key TEXT,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// One charge per key; no wait: a duplicate in flight gets 409 at once, as
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
    sqlx::query(LEDGER)
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

async fn charge(State(db): State<Db>, request: Request) -> Response {
    // The layer's limit and answer for bodies over it: at once for a
    // declared length (before any of the body is read), else once the
    // reading passes axum's own limit, which is the same 2 MiB.
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|length| length > DEFAULT_BODY_LIMIT as u64) {
        return too_large_response(DEFAULT_BODY_LIMIT);
    }
    let headers = request.headers().clone();
    let new = match Json::<NewPayment>::from_request(request, &()).await {
        Ok(Json(new)) => new,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return too_large_response(DEFAULT_BODY_LIMIT);
        }
        Err(rejection) => return rejection.into_response(),
    };
    if let Some(invalid) = invalid_currency(&new) {
        return invalid;
    }
    if i64::try_from(new.amount).is_err() {
        let problem = serde_json::json!({
            "type": "urn:payments:invalid-amount",
            "title": "Invalid amount",
            "status": 422,
            "detail": format!("amount must be at most {} cents", i64::MAX),
        });
        return (StatusCode::UNPROCESSABLE_ENTITY, Json(problem)).into_response();
    }
    // Lossy: a byte outside ASCII becomes U+FFFD, which the key parser
    // refuses with a clear message.
    let header = headers
        .get(IDEMPOTENCY_KEY)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    if !db.protected {
        return match insert(&db, db.store.pool(), header.as_deref(), &new).await {
            Ok(payment) => charged(payment),
            Err(error) => error_response(&error),
        };
    }
    let key = match header.as_deref().map(IdempotencyKey::parse) {
        Some(Ok(key)) => key,
        Some(Err(error)) => return error_response(&Error::InvalidKey(error)),
        None => return missing_key_response(IDEMPOTENCY_KEY),
    };
    let call = db
        .runtime
        .call(&CHARGE)
        .key(key.as_str())
        .payload(&(new.amount, &new.currency));
    let mut tx = match db.store.begin::<Payment>(call).await {
        Ok(Begun::Fresh(tx)) => tx,
        Ok(Begun::Replayed(payment)) => {
            let mut response = (StatusCode::CREATED, Json(payment)).into_response();
            response
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            return response;
        }
        Err(error) => return error_response(&error),
    };
    let payment = insert(&db, &mut *tx, Some(key.as_str()), &new).await;
    match tx.finish(payment).await {
        Ok(done) => charged(done.value),
        Err(error) => error_response(&error),
    }
}

/// 201 with the charge, counted once it is committed.
fn charged(payment: Payment) -> Response {
    metrics::counter!("payments_charged_total").increment(1);
    (StatusCode::CREATED, Json(payment)).into_response()
}

/// The charge itself: the simulated work, then the ledger row (in the
/// record's transaction when protected).
async fn insert<'c>(
    db: &Db,
    executor: impl sqlx::PgExecutor<'c>,
    key: Option<&str>,
    new: &NewPayment,
) -> Result<Payment, Error> {
    if !db.work.is_zero() {
        tokio::time::sleep(db.work).await;
    }
    // `charge` refused amounts beyond `i64::MAX`.
    let amount = i64::try_from(new.amount).unwrap_or(i64::MAX);
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO payments_ledger (idempotency_key, amount, currency) VALUES ($1, $2, $3) RETURNING id",
    )
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

async fn list(State(db): State<Db>) -> Response {
    let rows = sqlx::query(
        "SELECT id, idempotency_key, amount, currency FROM payments_ledger ORDER BY id",
    )
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
