//! The admin router: the operations of [`admin`](crate::admin) as JSON
//! endpoints, for a service to mount **behind its own authentication**
//! (they evict records and can show stored responses, which may hold
//! personal data; nothing here checks who is asking).
//!
//! | request | answers |
//! |---|---|
//! | `GET /record?operation=..&key=..[&namespace=..][&scope=..][&show_body=true]` | `200` the record, `404` none |
//! | `DELETE /record?operation=..&key=..[&namespace=..][&scope=..][&force=true]` | `200` evicted, `404` none, `409` in progress (not forced) |
//! | `GET /stuck[?older_than_ms=30000][&limit=100]` | `200` the records in progress that long, longest first |
//! | `GET /stats` | `200` live records per namespace and operation |
//!
//! Records are the JSON of [`RecordInfo`](crate::admin::RecordInfo) (a
//! response only with `show_body=true`), evictions that of
//! [`Eviction`](crate::admin::Eviction). The namespace defaults to
//! [`DEFAULT_NAMESPACE`](crate::DEFAULT_NAMESPACE), the scope to none; the
//! operation of a record the HTTP layer wrote is the request's method and
//! path (`operation=POST%20/payments`), that of a function its `name`.
//! Errors are `{"error": "..."}`: `400` a bad key or query, `503` the store
//! is unreachable, `500` anything else.
//!
//! ```no_run
//! use axum::Router;
//! use axum::extract::Request;
//! use axum::http::StatusCode;
//! use axum::middleware::{self, Next};
//! use axum::response::Response;
//! use idempotent_core::http::admin;
//! use idempotent_core::memory::MemoryStore;
//!
//! // Your own check: a token, mTLS, a network policy...
//! async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
//!     let authorized = request.headers().get("authorization")
//!         .is_some_and(|value| value == "Bearer ops-secret");
//!     if authorized { Ok(next.run(request).await) } else { Err(StatusCode::UNAUTHORIZED) }
//! }
//!
//! # async fn serve() {
//! let store = MemoryStore::new(); // the store the service's runtime uses
//! let app: Router = Router::new().nest(
//!     "/admin/idempotency",
//!     admin::router(store.clone()).layer(middleware::from_fn(operators_only)),
//! );
//! # let _ = app;
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::admin::{Admin, Eviction};
use crate::key::{IdempotencyKey, StorageKey};
use crate::runtime::DEFAULT_NAMESPACE;
use crate::store::StoreError;

/// The admin endpoints on `store` (any store of this crate, or yours if it
/// implements [`Admin`]), as a router to nest under a path of your choice,
/// behind your own authentication.
pub fn router(store: impl Admin) -> Router {
    let store: Arc<dyn Admin> = Arc::new(store);
    Router::new()
        .route("/record", get(inspect).delete(evict))
        .route("/stuck", get(stuck))
        .route("/stats", get(stats))
        .with_state(store)
}

type Store = State<Arc<dyn Admin>>;

/// The four parts of a record's key, and the options of its operations.
#[derive(Deserialize)]
struct RecordQuery {
    namespace: Option<String>,
    #[serde(default)]
    scope: String,
    operation: String,
    key: String,
    #[serde(default)]
    show_body: bool,
    #[serde(default)]
    force: bool,
}

impl RecordQuery {
    fn storage_key(&self) -> Result<StorageKey, Failure> {
        let key =
            IdempotencyKey::parse(&self.key).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let namespace = self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        Ok(StorageKey::new(
            namespace,
            &self.scope,
            &self.operation,
            &key,
        ))
    }
}

#[derive(Deserialize)]
struct StuckQuery {
    #[serde(default = "default_older_than_ms")]
    older_than_ms: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_older_than_ms() -> u64 {
    30_000
}

fn default_limit() -> usize {
    100
}

/// Why a request was not answered with what it asked for: `{"error": ...}`
/// with its status.
enum Failure {
    BadRequest(String),
    NotFound(String),
    Store(StoreError),
}

impl From<QueryRejection> for Failure {
    fn from(rejection: QueryRejection) -> Self {
        Self::BadRequest(rejection.body_text())
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let (status, error) = match self {
            Self::BadRequest(error) => (StatusCode::BAD_REQUEST, error),
            Self::NotFound(error) => (StatusCode::NOT_FOUND, error),
            Self::Store(error @ StoreError::Unavailable(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            }
            Self::Store(error @ StoreError::KeyRejected { .. }) => {
                (StatusCode::BAD_REQUEST, error.to_string())
            }
            Self::Store(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        };
        json(status, &serde_json::json!({ "error": error }))
    }
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

type Answer = Result<Response, Failure>;

async fn inspect(State(store): Store, query: Result<Query<RecordQuery>, QueryRejection>) -> Answer {
    let Query(request) = query?;
    let key = request.storage_key()?;
    match store.inspect(&key, request.show_body).await? {
        Some(record) => Ok(json(StatusCode::OK, &record)),
        None => Err(Failure::NotFound(format!("no live record for {key}"))),
    }
}

async fn evict(State(store): Store, query: Result<Query<RecordQuery>, QueryRejection>) -> Answer {
    let Query(request) = query?;
    let key = request.storage_key()?;
    let eviction = store.evict(&key, request.force).await?;
    let status = match eviction {
        Eviction::Refused { .. } => StatusCode::CONFLICT,
        Eviction::Absent => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    Ok(json(status, &eviction))
}

async fn stuck(State(store): Store, query: Result<Query<StuckQuery>, QueryRejection>) -> Answer {
    let Query(request) = query?;
    let older_than = Duration::from_millis(request.older_than_ms);
    let records = store.stuck(older_than, request.limit).await?;
    Ok(json(StatusCode::OK, &records))
}

async fn stats(State(store): Store) -> Answer {
    Ok(json(StatusCode::OK, &store.count().await?))
}
