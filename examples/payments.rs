//! A payment API: `POST /payments` charges, `GET /payments` lists every
//! charge of the caller's tenant actually executed (the ledger, so
//! duplicates can be counted), and `GET /metrics` serves Prometheus text.
//! With protection on, the routes sit behind [`IdempotencyLayer`] (memory
//! and Redis), or, on PostgreSQL, charge in the same transaction as their
//! idempotency record (`payments_postgres.rs`), with the same answers;
//! with it off, every request charges.
//!
//! The caller's tenant is named by `Authorization: Bearer <token>` (none:
//! the anonymous tenant) and scopes its keys: the same key from two tenants
//! is two payments. Every error answer is an RFC 9457 problem document.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use idempotent_core::http::{Handled, IDEMPOTENCY_KEY, IdempotencyLayer};
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;
use idempotent_core::{Idempotency, StoreError};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

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
    /// The bound on the in-memory store's records (`None`: the library's
    /// default, [`DEFAULT_MAX_ENTRIES`](idempotent_core::memory::DEFAULT_MAX_ENTRIES)).
    pub memory_records: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            store: StoreChoice::Memory,
            work: Duration::ZERO,
            protected: true,
            memory_records: None,
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
    /// The charge's id, unique across restarts.
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

/// The caller's tenant, from `Authorization: Bearer <token>`: the
/// idempotency scope, and whose charges `GET /payments` lists.
///
/// The token names the tenant in this example; a real service would use
/// the authenticated principal's id. The store and the ledger keep a
/// 128-bit XXH3 digest of the token, not the token (a real service that
/// must derive a scope from a secret would use a keyed hash, HMAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

/// The tenant of requests without `Authorization`.
pub const ANONYMOUS: &str = "anonymous";

impl Tenant {
    /// The tenant a request's headers name; `None` for an `Authorization`
    /// that is not a bearer token.
    fn of(headers: &HeaderMap) -> Option<Self> {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Some(Self(ANONYMOUS.to_owned()));
        };
        // The scheme is case-insensitive (RFC 9110, section 11.1).
        let (scheme, token) = value.to_str().ok()?.split_once(' ')?;
        let token = Some(token)
            .filter(|_| scheme.eq_ignore_ascii_case("bearer"))
            .filter(|t| {
                !t.is_empty() && t.len() <= 256 && t.bytes().all(|b| b.is_ascii_graphic())
            })?;
        Some(Self(format!("tenant-{:032x}", xxh3_128(token.as_bytes()))))
    }
}

/// Puts the caller's [`Tenant`] in the request, or answers `401`. Outside
/// the idempotency layer, so a refused caller stores nothing.
async fn authenticate(mut request: Request, next: Next) -> Response {
    match Tenant::of(request.headers()) {
        Some(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        None => problem(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "`Authorization` must be `Bearer <token>` (1 to 256 visible ASCII characters), or absent",
        ),
    }
}

/// An RFC 9457 problem document: the example's own error answers, like the
/// layer's.
pub(crate) fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Response {
    let body = problem_body(status, kind, title, detail);
    (
        status,
        [(CONTENT_TYPE, "application/problem+json")],
        body.to_string(),
    )
        .into_response()
}

fn problem_body(status: StatusCode, kind: &str, title: &str, detail: &str) -> serde_json::Value {
    serde_json::json!({
        "type": format!("urn:payments:problem:{kind}"),
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    })
}

/// The answer to a body the `Json` extractor refused (415, 400 or 422):
/// not marked [`Handled`], so the layer stores nothing and the corrected
/// retry runs.
pub(crate) fn refused(rejection: &JsonRejection) -> Response {
    problem(
        rejection.status(),
        "invalid-request",
        "Invalid request",
        &rejection.body_text(),
    )
}

/// A request that is well formed but cannot be charged: the handler's own
/// 422, stored and replayed like a charge.
pub(crate) fn invalid(new: &NewPayment) -> Option<(StatusCode, serde_json::Value)> {
    let (kind, title, detail) =
        if new.currency.len() != 3 || !new.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            (
                "invalid-currency",
                "Invalid currency",
                "currency must be a three-letter ISO 4217 code such as USD".to_owned(),
            )
        } else if i64::try_from(new.amount).is_err() {
            (
                "invalid-amount",
                "Invalid amount",
                format!("amount must be at most {} cents", i64::MAX),
            )
        } else {
            return None;
        };
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    Some((status, problem_body(status, kind, title, &detail)))
}

#[derive(Clone)]
struct AppState {
    /// Every charge, with the tenant it belongs to.
    ledger: Arc<Mutex<Vec<(Tenant, LedgerEntry)>>>,
    work: Duration,
    metrics: PrometheusHandle,
}

/// Builds the app: connects the store (lazily for Redis: a server that is
/// down answers 503 per request, and the app recovers when it comes back;
/// PostgreSQL must be up at start, to create the tables).
pub async fn app(config: &Config) -> Result<Router, StoreError> {
    let state = AppState {
        ledger: Arc::default(),
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
        StoreChoice::Memory => {
            let store = match config.memory_records {
                Some(records) => MemoryStore::builder().max_entries(records).build(),
                None => MemoryStore::new(),
            };
            payments.route_layer(layer(Idempotency::new(store)))
        }
        StoreChoice::Redis(url) => payments.route_layer(layer(Idempotency::new(
            RedisStore::builder().url(url.clone()).build().await?,
        ))),
    };
    Ok(payments
        .route_layer(axum::middleware::from_fn(authenticate))
        .route("/metrics", get(render_metrics))
        .fallback(not_found)
        .with_state(state))
}

/// The idempotency layer, scoped to the caller's tenant.
fn layer(runtime: Idempotency) -> IdempotencyLayer {
    IdempotencyLayer::builder(runtime)
        .scope(|request| request.extensions.get::<Tenant>().map(|t| t.0.clone()))
        .build()
}

async fn not_found(uri: Uri) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "not-found",
        "Not found",
        &format!("no route for `{}`", uri.path()),
    )
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
    Extension(tenant): Extension<Tenant>,
    headers: HeaderMap,
    new: Result<Json<NewPayment>, JsonRejection>,
) -> Response {
    let new = match new {
        Ok(Json(new)) => new,
        Err(rejection) => return refused(&rejection),
    };
    if let Some((status, problem)) = invalid(&new) {
        let content_type = [(CONTENT_TYPE, "application/problem+json")];
        return (status, Handled, content_type, problem.to_string()).into_response();
    }
    if !state.work.is_zero() {
        tokio::time::sleep(state.work).await;
    }
    let payment = Payment {
        id: format!("pay_{}", uuid::Uuid::new_v4().simple()),
        amount: new.amount,
        currency: new.currency,
        status: "succeeded".to_owned(),
    };
    let idempotency_key = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    state
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push((
            tenant,
            LedgerEntry {
                payment: payment.clone(),
                idempotency_key,
            },
        ));
    metrics::counter!("payments_charged_total").increment(1);
    (StatusCode::CREATED, Json(payment)).into_response()
}

async fn list(
    State(state): State<AppState>,
    Extension(tenant): Extension<Tenant>,
) -> Json<Vec<LedgerEntry>> {
    let ledger = state
        .ledger
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Json(
        ledger
            .iter()
            .filter(|(owner, _)| *owner == tenant)
            .map(|(_, entry)| entry.clone())
            .collect(),
    )
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
