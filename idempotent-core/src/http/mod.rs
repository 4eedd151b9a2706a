//! The HTTP layer: any tower service (axum first, tonic too) becomes safe
//! to retry.
//!
//! [`IdempotencyLayer`] guards the unsafe methods (POST and PATCH by default)
//! with the semantics of the IETF "Idempotency-Key HTTP Header Field" draft
//! and Stripe's replay behaviour:
//!
//! | situation | answer |
//! |---|---|
//! | first request with a key | the handler's response, stored (see below) |
//! | refused before any handler ran (400, 413, 415 or 422 without the [`Handled`] mark: axum's extractor rejections) | passed on untouched and not stored, so the corrected retry with the same key runs |
//! | same key, same request, completed | the stored response, byte for byte (trailers too), plus `Idempotent-Replayed: true` |
//! | same key, same request, still running | `409 Conflict` with `Retry-After` (or wait and replay, see [`InProgress`]) |
//! | same key, same route, different query or body | `422 Unprocessable Content` |
//! | same key on another method or path | a key of its own: keys are scoped to the route, so one endpoint never replays another's response |
//! | key required but missing | `400 Bad Request` |
//! | malformed key (not 1 to 255 visible ASCII characters, or a bad sf-string) | `400 Bad Request` |
//! | body over the limit | `413 Content Too Large` |
//! | store unavailable | `503 Service Unavailable` with `Retry-After`, and the handler does not run |
//! | request body unreadable (the connection failed half-way) | `400 Bad Request` |
//! | a stored response that cannot be decoded, or a handler that outlived its lease | `500 Internal Server Error` (nothing is stored) |
//! | the caller leaves while the handler runs (a disconnect, a timeout outside the layer) | the handler runs on to its end, in a task of its own, and its answer is stored, so the retry replays it; wait for such handlers at shutdown with the layer's [`HandlerTracker`] |
//! | the handler's response body fails half-way | `502 Bad Gateway`; if its status is one the layer stores, this `502` problem is stored in its place, so a retry gets it and never runs the handler again (else the key is released) |
//! | the handler's response body is over the [response limit](IdempotencyLayerBuilder::response_limit) (8 MiB by default) | passed on as it is when its size is known up front, else `500 Internal Server Error`; if its status is one the layer stores, a `500` problem is stored in its place, so a retry gets that and never runs the handler again |
//!
//! Error answers are RFC 9457 `application/problem+json` documents with
//! `type`, `title`, `status` and `detail` (a gRPC caller gets gRPC
//! statuses, see [gRPC](#grpc)). Safe methods (GET, HEAD, ...) pass
//! through untouched.
//!
//! **What is stored**: the first response's status, its headers minus the
//! hop-by-hop ones (those `Connection` names included), `Date` and
//! `Set-Cookie` (a replay may go to another caller of the same scope), its
//! body and its trailers, for the TTL; by default only statuses 200 to 499 except 408,
//! 409, 425 and 429 (answers that say "try again"), and never a handler's
//! 5xx: an unstored answer releases the key, so a retry runs the handler
//! again.
//!
//! **Refused, or answered?** A framework refuses some requests before any
//! handler runs: axum's `Json` extractor answers a wrong `Content-Type` with
//! 415, JSON that does not parse with 400, JSON that does not fit the
//! handler's type with 422, a body over its limit with 413. Such a request
//! never started, so nothing is stored (Stripe's rule) and the corrected
//! retry with the same key runs. The layer tells a refusal from a handler's
//! own answer by a mark: a response with one of those statuses is stored
//! only if the handler put [`Handled`] in it (a business 422, say); every
//! other status needs no mark. The statuses are
//! [`rejection_status`](IdempotencyLayerBuilder::rejection_status)'s to
//! change.
//!
//! **Keys and scope**: the fingerprint covers the method, the path and
//! query, and the body bytes; the key is scoped to the method and path and
//! to the [scope](IdempotencyLayerBuilder::scope) of the request, so a key
//! sent to one endpoint, or by one tenant, never replays another's
//! response. The builder asks for the scope before it builds: the caller's
//! identity, or [`single_tenant`](IdempotencyLayerBuilder::single_tenant).
//! The path is the one the client sent, also for a layer inside axum 0.8's
//! `Router::nest`, which strips the prefix before the nested routes see the
//! request (with the `axum` feature, the layer reads axum's `OriginalUri`;
//! other middleware that rewrites the path should sit inside the layer).
//! The scope function gets the request as the layer's service does, prefix
//! stripped: read `OriginalUri` from its extensions for the full path. Other request
//! headers are not part of the request: `Vary` is not consulted, and an
//! answer about a header (a `401`) is stored like any other 4xx; put
//! authentication outside the layer, or leave such statuses out with
//! [`store_status`](IdempotencyLayerBuilder::store_status).
//!
//! ```
//! use axum::{Router, routing::post};
//! use idempotent_core::{Idempotency, http::IdempotencyLayer};
//! use idempotent_core::memory::MemoryStore;
//!
//! async fn create_payment(body: String) -> String {
//!     format!("charged for {body}")
//! }
//!
//! let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
//!     // Two tenants never see each other's responses.
//!     .scope(|request| {
//!         request
//!             .headers
//!             .get("x-tenant")
//!             .and_then(|v| v.to_str().ok())
//!             .map(str::to_owned)
//!     })
//!     .build();
//! let app: Router = Router::new()
//!     .route("/payments", post(create_payment))
//!     .layer(layer);
//! # let _ = app;
//! ```
//!
//! # Any tower service
//!
//! The layer's service takes requests of any body type (any
//! [`http_body::Body`]) and answers with a [`ResponseBody`] around the inner
//! service's body, as tower-http's layers do. A guarded request's body is
//! read whole (the fingerprint covers it) and handed to the inner service as
//! a [`RequestBody`], trailers included; a request that passes through (a
//! safe method, no key where none is required) keeps its body as it
//! streams. A response is read whole to be stored, its trailers with it, and
//! a replay gives back status, headers, body and trailers. axum's
//! `Router::layer` and `route_layer` take the layer as it is, and so does
//! tonic's `Server::builder().layer(..)`.
//!
//! With axum, turn on the crate's `axum` feature: the layer then reads the
//! path a request had before `Router::nest` stripped its prefix (without
//! it, two routes nested under different prefixes share their keys), and
//! [`Handled`] is a response part.
//!
//! # gRPC
//!
//! A request whose `content-type` is `application/grpc` (`+proto`, `-web`,
//! ...) is a gRPC call: guarded like any `POST`, with its key in the
//! `idempotency-key` metadata entry, and answered with gRPC statuses rather
//! than problem documents. Such an answer is "trailers-only" (HTTP `200`,
//! `grpc-status` and `grpc-message` in the headers), and its
//! `grpc-status-details-bin` is a `google.rpc.Status` whose details hold a
//! `google.rpc.ErrorInfo` (domain `idempotent`, reason the problem's name in
//! capitals: `KEY_REUSED`, `IN_PROGRESS`, ...) and, when the caller should
//! come back, a `google.rpc.RetryInfo`, also given as
//! `grpc-retry-pushback-ms`. The codes follow gRPC's status semantics and
//! Google's AIP-193:
//!
//! | situation | HTTP | gRPC |
//! |---|---|---|
//! | key required but missing, malformed key | `400` | `INVALID_ARGUMENT` |
//! | same key, different request | `422` | `FAILED_PRECONDITION`: the key is bound to another request, so the same call fails until the client uses a new key |
//! | same key, still running | `409` + `Retry-After` | `ABORTED` + `RetryInfo` (a concurrency conflict: gRPC's counterpart of `409`) |
//! | store unavailable | `503` + `Retry-After` | `UNAVAILABLE` + `RetryInfo` |
//! | body over the limit | `413` | `RESOURCE_EXHAUSTED` (as gRPC servers answer a message over their limit) |
//! | request body unreadable | `400` | `INVALID_ARGUMENT` |
//! | response too large to store, response failed half-way, corrupt record, lease lost | `500` / `502` | `INTERNAL` |
//!
//! A replay is the first answer as it was: its message, and its trailers
//! (`grpc-status`, `grpc-message`, custom trailing metadata), plus the
//! `idempotent-replayed: true` metadata entry. Which gRPC answers are
//! stored is decided by their status, the counterpart of the HTTP rule
//! (only final answers): `OK`, `INVALID_ARGUMENT`, `NOT_FOUND`,
//! `ALREADY_EXISTS`, `PERMISSION_DENIED`, `FAILED_PRECONDITION`,
//! `OUT_OF_RANGE` and `UNAUTHENTICATED` are stored; `CANCELLED`, `UNKNOWN`,
//! `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `ABORTED`, `INTERNAL`,
//! `UNAVAILABLE` and `DATA_LOSS` are not (a retry runs the handler again),
//! nor is `UNIMPLEMENTED`, what a gRPC server answers for a method it does
//! not have. [`store_status`](IdempotencyLayerBuilder::store_status) applies
//! to answers without a `grpc-status`. The layer reads a response whole
//! before it answers: put it in front of unary methods (a server with
//! streaming methods guards those with keys not required, or not at all);
//! `examples/grpc.rs` serves a tonic service behind it.

pub(crate) mod codec;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod admin;
mod body;
mod config;
mod future;
mod grpc;
mod handled;
mod header;
mod layer;
mod problem;
mod request;
mod service;
mod tracker;

pub use body::{RequestBody, ResponseBody};
pub use future::ResponseFuture;
pub use handled::Handled;
pub use header::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};
pub use layer::{
    DEFAULT_BODY_LIMIT, DEFAULT_RESPONSE_LIMIT, IdempotencyLayer, IdempotencyLayerBuilder,
    InProgress, Scope, ScopeChosen, ScopeUnchosen,
};
pub use request::{fingerprint, read_body, read_key};
pub use service::IdempotencyService;
pub use tracker::HandlerTracker;

use grpc::Protocol;

/// The answer [`IdempotencyLayer`] gives for an engine error, for handlers
/// that run the engine themselves (the PostgreSQL same-transaction mode,
/// say): 400 for a malformed key, 422 for a key reused with another request,
/// 409 with `Retry-After` for a duplicate in progress, 503 with `Retry-After`
/// when the store is unavailable, 500 otherwise (the details go to the log,
/// not to the client). The body is an RFC 9457 problem document.
///
/// ```
/// use idempotent_core::{Error, http::error_response};
///
/// let error = Error::InProgress { key: "k".into(), retry_after: std::time::Duration::from_secs(5) };
/// let response: http::Response<Vec<u8>> = error_response(&error);
/// assert_eq!(response.status(), 409);
/// assert_eq!(response.headers()["retry-after"], "1");
/// ```
pub fn error_response<B: From<bytes::Bytes>>(error: &crate::Error) -> ::http::Response<B> {
    problem::from_error(error).into_response(Protocol::Http)
}

/// The answer [`IdempotencyLayer`] gives a guarded request without the key
/// `header` when keys are required: 400 with a `missing-key` problem
/// document, for handlers that check the header themselves.
///
/// ```
/// use idempotent_core::http::{IDEMPOTENCY_KEY, missing_key_response};
///
/// let response: http::Response<Vec<u8>> = missing_key_response(IDEMPOTENCY_KEY);
/// assert_eq!(response.status(), 400);
/// assert!(String::from_utf8_lossy(response.body()).contains("missing-key"));
/// ```
pub fn missing_key_response<B: From<bytes::Bytes>>(header: &str) -> ::http::Response<B> {
    problem::missing_key(header).into_response(Protocol::Http)
}

/// The answer [`IdempotencyLayer`] gives a body over its `limit` (bytes):
/// 413 with a `body-too-large` problem document, for handlers that read
/// bodies themselves.
///
/// ```
/// use idempotent_core::http::{DEFAULT_BODY_LIMIT, too_large_response};
///
/// let response: http::Response<Vec<u8>> = too_large_response(DEFAULT_BODY_LIMIT);
/// assert_eq!(response.status(), 413);
/// assert_eq!(response.headers()["content-type"], "application/problem+json");
/// ```
pub fn too_large_response<B: From<bytes::Bytes>>(limit: usize) -> ::http::Response<B> {
    problem::too_large(limit).into_response(Protocol::Http)
}
