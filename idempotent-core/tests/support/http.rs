//! What the HTTP layer's tests share: a real axum router behind the layer,
//! a handler that counts its runs, and helpers to send a request and read
//! a problem document.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use idempotent_core::Idempotency;
use idempotent_core::http::{Handled, IdempotencyLayer, IdempotencyLayerBuilder};
use idempotent_core::memory::MemoryStore;
use tower::ServiceExt;

/// How many times each handler really ran.
#[derive(Clone, Default)]
pub struct Calls(pub Arc<AtomicUsize>);

impl Calls {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }

    /// Counts a run; returns its number.
    pub fn add(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// Answers with the status in the `x-status` request header (default 201),
/// a body naming the call number, a custom header and a `Date`; marked as
/// the handler's own answer (`Handled`) if the request has `x-handled`.
pub async fn handler(
    State(calls): State<Calls>,
    headers: HeaderMap,
    body: String,
) -> Response<Body> {
    let n = calls.add();
    assert!(!headers.contains_key("x-panic"), "the handler panics");
    if let Some(ms) = headers.get("x-sleep-ms") {
        let ms: u64 = ms.to_str().unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let status = headers
        .get("x-status")
        .map_or(201, |s| s.to_str().unwrap().parse().unwrap());
    let mut response = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-charge", n.to_string())
        .header("date", format!("call {n}"))
        .body(Body::from(format!("{{\"call\":{n},\"body\":{body:?}}}")))
        .unwrap();
    if headers.contains_key("x-handled") {
        response.extensions_mut().insert(Handled);
    }
    response
}

/// `/payments` (POST, PATCH and GET) and `/refunds` (POST) served by
/// [`handler`], behind the layer `layer` builds.
pub fn app(layer: IdempotencyLayerBuilder) -> (Router, Calls) {
    let calls = Calls::default();
    let router = Router::new()
        .route("/payments", post(handler).patch(handler).get(handler))
        .route("/refunds", post(handler))
        .with_state(calls.clone())
        .layer(layer.build());
    (router, calls)
}

/// A layer on a fresh memory store, for a single tenant.
pub fn memory() -> IdempotencyLayerBuilder {
    IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant()
}

/// A JSON `POST /payments`, with `key` if given.
pub fn post_with(key: Option<&str>) -> axum::http::request::Builder {
    let mut request = Request::post("/payments").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
}

/// A JSON `POST /payments` of `body`, with `key` if given.
pub fn request(key: Option<&str>, body: &str) -> Request<Body> {
    post_with(key).body(Body::from(body.to_owned())).unwrap()
}

/// Sends `request` to `app`; returns the status, headers and whole body.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

/// Checks an RFC 9457 problem document and returns its `detail`.
pub fn problem(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    expected: StatusCode,
) -> String {
    assert_eq!(status, expected, "{}", String::from_utf8_lossy(body));
    assert_eq!(headers["content-type"], "application/problem+json");
    let doc: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(doc["status"], expected.as_u16());
    assert!(
        doc["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:idempotent:problem:")
    );
    assert!(!doc["title"].as_str().unwrap().is_empty());
    doc["detail"].as_str().unwrap().to_owned()
}
