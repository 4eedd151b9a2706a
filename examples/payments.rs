//! A payment API: `POST /payments` charges, `GET /payments` lists every
//! charge actually executed (the ledger, so duplicates can be counted), and
//! `GET /metrics` serves Prometheus text. With protection on, the routes sit
//! behind [`IdempotencyLayer`] (memory and Redis), or, on PostgreSQL, charge
//! in the same transaction as their idempotency record
//! (`payments_postgres.rs`); with it off, every request charges.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::{Idempotency, MemoryStore, RedisStore, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};

#[path = "payments_postgres.rs"]
mod postgres;

/// Where idempotency records live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// In this process (the default).
    Memory,
    /// A Redis URL: `redis://`, `rediss://` or `redis+cluster://`.
    Redis(String),
    /// A PostgreSQL URL: the ledger is a table there too, and each charge
    /// commits with its idempotency record.
    Postgres(String),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "memory" => Ok(Self::Memory),
            url if url.starts_with("redis://")
                || url.starts_with("rediss://")
                || url.starts_with("redis+cluster://") =>
            {
                Ok(Self::Redis(url.to_owned()))
            }
            url if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            other => Err(format!(
                "unknown store `{other}`: expected `memory`, `redis://HOST:PORT` or `postgres://...`"
            )),
        }
    }
}

/// How the app runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where idempotency records live.
    pub store: StoreChoice,
    /// Simulated work per charge.
    pub work: Duration,
    /// `false`: the same routes without idempotency, to show the problem.
    pub protected: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: StoreChoice::Memory,
            work: Duration::ZERO,
            protected: true,
        }
    }
}

/// What `POST /payments` takes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPayment {
    /// In cents.
    pub amount: u64,
    /// An ISO 4217 code such as `USD`.
    pub currency: String,
}

/// A charge: the answer to `POST /payments`, and a ledger line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// The charge's id, unique in this process.
    pub id: String,
    /// In cents.
    pub amount: u64,
    /// The currency.
    pub currency: String,
    /// Always `succeeded` here.
    pub status: String,
}

/// One line of `GET /payments`: a charge and the key it was sent with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// The charge.
    #[serde(flatten)]
    pub payment: Payment,
    /// The request's `Idempotency-Key`, if it had one.
    pub idempotency_key: Option<String>,
}

#[derive(Clone)]
struct AppState {
    ledger: Arc<Mutex<Vec<LedgerEntry>>>,
    next_id: Arc<AtomicU64>,
    work: Duration,
    metrics: PrometheusHandle,
}

/// Builds the app: connects the store (lazily for Redis: a server that is
/// down answers 503 per request, and the app recovers when it comes back;
/// PostgreSQL must be up at start, to create the tables).
pub async fn app(config: &Config) -> Result<Router, StoreError> {
    let state = AppState {
        ledger: Arc::default(),
        next_id: Arc::new(AtomicU64::new(1)),
        work: config.work,
        metrics: metrics_handle(),
    };
    // The exporter keeps histogram samples until upkeep folds them in:
    // without it, a server nobody scrapes would grow without bound.
    let upkeep = state.metrics.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let payments = Router::new().route("/payments", get(list).post(charge));
    let payments = match &config.store {
        StoreChoice::Postgres(url) => postgres::routes(url, config.work, config.protected).await?,
        _ if !config.protected => payments,
        StoreChoice::Memory => payments.route_layer(
            IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
                .single_tenant()
                .build(),
        ),
        StoreChoice::Redis(url) => payments.route_layer(
            IdempotencyLayer::builder(Idempotency::new(
                RedisStore::builder().url(url.clone()).build().await?,
            ))
            .single_tenant()
            .build(),
        ),
    };
    Ok(payments
        .route("/metrics", get(render_metrics))
        .with_state(state))
}

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may be installed already (a host program's):
            // then this one only serves what it records, which is nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

async fn charge(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(new): Json<NewPayment>,
) -> Response {
    if let Some(invalid) = invalid_currency(&new) {
        return invalid;
    }
    if !state.work.is_zero() {
        tokio::time::sleep(state.work).await;
    }
    let payment = Payment {
        id: format!("pay_{:06}", state.next_id.fetch_add(1, Ordering::Relaxed)),
        amount: new.amount,
        currency: new.currency,
        status: "succeeded".to_owned(),
    };
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(LedgerEntry {
            payment: payment.clone(),
            idempotency_key,
        });
    metrics::counter!("payments_charged_total").increment(1);
    (StatusCode::CREATED, Json(payment)).into_response()
}

/// 422 for a currency that is not three capital letters.
fn invalid_currency(new: &NewPayment) -> Option<Response> {
    if new.currency.len() == 3 && new.currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let problem = serde_json::json!({
        "type": "urn:payments:invalid-currency",
        "title": "Invalid currency",
        "status": 422,
        "detail": "currency must be a three-letter ISO 4217 code such as USD",
    });
    Some((StatusCode::UNPROCESSABLE_ENTITY, Json(problem)).into_response())
}

async fn list(State(state): State<AppState>) -> Json<Vec<LedgerEntry>> {
    let ledger = state
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(ledger.clone())
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
