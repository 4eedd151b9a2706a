//! The HTTP layer at the tower level: a real axum router behind the layer,
//! driven request by request. Every status code of the module docs, every
//! storage-policy choice, and what a replay gives back.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use http_body_util::BodyExt;
use idempotent_core::http::{Handled, IdempotencyLayer, IdempotencyLayerBuilder, InFlight};
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::StorageKey;
use idempotent_core::{Fingerprint, Idempotency, IdempotencyKey, Store};
use tower::ServiceExt;

/// How many times each handler really ran.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Answers with the status in the `x-status` request header (default 201),
/// a body naming the call number, a custom header and a `Date`; marked as
/// the handler's own answer (`Handled`) if the request has `x-handled`.
async fn handler(State(calls): State<Calls>, headers: HeaderMap, body: String) -> Response<Body> {
    let n = calls.0.fetch_add(1, Ordering::SeqCst) + 1;
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

fn app(layer: IdempotencyLayerBuilder) -> (Router, Calls) {
    let calls = Calls::default();
    let router = Router::new()
        .route("/payments", post(handler).patch(handler).get(handler))
        .route("/refunds", post(handler))
        .with_state(calls.clone())
        .layer(layer.build());
    (router, calls)
}

fn memory() -> IdempotencyLayerBuilder {
    IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant()
}

fn post_with(key: Option<&str>) -> axum::http::request::Builder {
    let mut request = Request::post("/payments").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request
}

fn request(key: Option<&str>, body: &str) -> Request<Body> {
    post_with(key).body(Body::from(body.to_owned())).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes().to_vec();
    (parts.status, parts.headers, body)
}

/// Checks an RFC 9457 problem document and returns its `detail`.
fn problem(status: StatusCode, headers: &HeaderMap, body: &[u8], expected: StatusCode) -> String {
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

#[tokio::test]
async fn a_replay_is_byte_identical_and_marked_and_the_first_response_is_not() {
    let (app, calls) = app(memory());
    let (status, first_headers, first) = send(&app, request(Some("k1"), "{\"amount\":100}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(first_headers.get("idempotent-replayed").is_none());
    assert_eq!(
        first_headers["date"], "call 1",
        "the first response is untouched"
    );
    for _ in 0..3 {
        let (status, headers, body) = send(&app, request(Some("k1"), "{\"amount\":100}")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body, first, "byte for byte");
        assert_eq!(headers["idempotent-replayed"], "true");
        assert_eq!(headers["x-charge"], "1");
        assert_eq!(headers["content-type"], "application/json");
        assert!(headers.get("date").is_none(), "Date is not replayed");
    }
    assert_eq!(calls.get(), 1);
}

/// A replay goes to whoever sends the key in the scope: the first caller's
/// cookies are not replayed to it, and the handler cannot mark a first
/// response as a replay.
#[tokio::test]
async fn cookies_are_not_replayed_and_only_a_replay_is_marked() {
    let calls = Calls::default();
    let login = |State(calls): State<Calls>| async move {
        calls.0.fetch_add(1, Ordering::SeqCst);
        Response::builder()
            .status(StatusCode::CREATED)
            .header("set-cookie", "session=secret-of-the-first-caller")
            .header("idempotent-replayed", "true")
            .header("x-kept", "yes")
            .body(Body::from("welcome"))
            .unwrap()
    };
    let app = Router::new()
        .route("/login", post(login))
        .with_state(calls.clone())
        .layer(memory().build());
    let login = || {
        Request::post("/login")
            .header("idempotency-key", "k-1")
            .body(Body::empty())
            .unwrap()
    };
    let (_, first, _) = send(&app, login()).await;
    assert_eq!(first["set-cookie"], "session=secret-of-the-first-caller");
    assert!(first.get("idempotent-replayed").is_none());
    let (status, replay, body) = send(&app, login()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body, b"welcome");
    assert!(replay.get("set-cookie").is_none(), "a cookie was replayed");
    assert_eq!(replay["x-kept"], "yes");
    assert_eq!(replay.get_all("idempotent-replayed").iter().count(), 1);
    assert_eq!(calls.get(), 1);
}

/// The headers a response's `Connection` header names are hop-by-hop too
/// (RFC 9110, section 7.6.1), as is the old `Proxy-Connection`: a proxying
/// handler's connection details are not replayed.
#[tokio::test]
async fn headers_named_in_connection_are_not_replayed() {
    let proxied = || async {
        Response::builder()
            .status(StatusCode::CREATED)
            .header("connection", "X-Upstream-Conn, x-upstream-id")
            .header("x-upstream-conn", "pool-7")
            .header("x-upstream-id", "abc")
            .header("proxy-connection", "keep-alive")
            .header("x-kept", "yes")
            .body(Body::from("done"))
            .unwrap()
    };
    let app = Router::new()
        .route("/proxied", post(proxied))
        .layer(memory().build());
    let request = || {
        Request::post("/proxied")
            .header("idempotency-key", "k-1")
            .body(Body::empty())
            .unwrap()
    };
    let (_, first, _) = send(&app, request()).await;
    assert_eq!(
        first["x-upstream-conn"], "pool-7",
        "the first answer is untouched"
    );
    let (status, replay, body) = send(&app, request()).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::CREATED, &b"done"[..])
    );
    assert_eq!(replay["idempotent-replayed"], "true");
    for name in [
        "connection",
        "x-upstream-conn",
        "x-upstream-id",
        "proxy-connection",
    ] {
        assert!(replay.get(name).is_none(), "{name} was replayed");
    }
    assert_eq!(replay["x-kept"], "yes");
}

#[tokio::test]
async fn a_missing_key_is_400_and_the_handler_does_not_run() {
    let (app, calls) = app(memory());
    let (status, headers, body) = send(&app, request(None, "{}")).await;
    let detail = problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert!(detail.contains("idempotency-key"), "{detail}");
    assert_eq!(calls.get(), 0);
}

#[tokio::test]
async fn without_required_keys_a_request_without_one_passes_through() {
    let (app, calls) = app(memory().required(false));
    for _ in 0..2 {
        let (status, headers, _) = send(&app, request(None, "{}")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn malformed_keys_are_400_and_the_handler_does_not_run() {
    let (app, calls) = app(memory());
    let too_long = "k".repeat(256);
    for bad in ["", "a b", "\"unterminated", too_long.as_str(), "caf\u{e9}"] {
        let request = Request::post("/payments")
            .header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
            )
            .body(Body::from("{}"))
            .unwrap();
        let (status, headers, body) = send(&app, request).await;
        problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    }
    let twice = Request::post("/payments")
        .header("idempotency-key", "a")
        .header("idempotency-key", "b")
        .body(Body::from("{}"))
        .unwrap();
    let (status, headers, body) = send(&app, twice).await;
    problem(status, &headers, &body, StatusCode::BAD_REQUEST);
    assert_eq!(calls.get(), 0);
}

#[tokio::test]
async fn an_sf_string_key_is_the_same_key_as_its_bare_token() {
    let (app, calls) = app(memory());
    send(&app, request(Some("\"order-7\""), "{}")).await;
    let (_, headers, _) = send(&app, request(Some("order-7"), "{}")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn a_key_reused_with_another_body_or_query_is_422() {
    let (app, calls) = app(memory());
    send(&app, request(Some("k"), "{\"amount\":100}")).await;
    let (status, headers, body) = send(&app, request(Some("k"), "{\"amount\":999}")).await;
    problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    let other_query = Request::post("/payments?currency=EUR")
        .header("idempotency-key", "k")
        .body(Body::from("{\"amount\":100}"))
        .unwrap();
    let (status, headers, body) = send(&app, other_query).await;
    problem(status, &headers, &body, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(calls.get(), 1);
}

#[tokio::test]
async fn the_same_key_on_another_route_or_method_is_another_key() {
    let (app, calls) = app(memory());
    send(&app, request(Some("k"), "{}")).await;
    let refund = Request::post("/refunds")
        .header("idempotency-key", "k")
        .body(Body::from("{}"))
        .unwrap();
    let (status, headers, _) = send(&app, refund).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    let patch = Request::patch("/payments")
        .header("idempotency-key", "k")
        .body(Body::from("{}"))
        .unwrap();
    let (_, headers, _) = send(&app, patch).await;
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(calls.get(), 3);
}

/// `Router::nest` strips the prefix before the layer of a nested router
/// sees the request: the key is still scoped to the path the client sent.
#[tokio::test]
async fn nested_routes_under_different_prefixes_are_different_routes() {
    let calls = Calls::default();
    let accounts = Router::new()
        .route("/transfers", post(handler))
        .with_state(calls.clone())
        .layer(memory().build());
    let app = Router::new().nest("/accounts/{account}", accounts);
    let transfer = |account: &str| {
        Request::post(format!("/accounts/{account}/transfers"))
            .header("idempotency-key", "k-1")
            .body(Body::from("{}"))
            .unwrap()
    };
    let (status, alice, first) = send(&app, transfer("alice")).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, bob, second) = send(&app, transfer("bob")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(alice.get("idempotent-replayed").is_none());
    assert!(
        bob.get("idempotent-replayed").is_none(),
        "bob got alice's answer"
    );
    assert_ne!(first, second);
    assert_eq!(calls.get(), 2);
    // And each one still replays its own.
    let (_, again, body) = send(&app, transfer("alice")).await;
    assert_eq!(again.get("idempotent-replayed").unwrap(), "true");
    assert_eq!(body, first);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn two_scopes_never_see_each_others_responses() {
    let builder = memory().scope(|parts| {
        parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let (app, calls) = app(builder);
    let as_tenant = |tenant: &str| {
        post_with(Some("shared-key"))
            .header("x-tenant", tenant)
            .body(Body::from("{}"))
            .unwrap()
    };
    let (_, _, alice) = send(&app, as_tenant("alice")).await;
    let (_, headers, bob) = send(&app, as_tenant("bob")).await;
    assert!(headers.get("idempotent-replayed").is_none());
    assert_ne!(alice, bob);
    let (_, headers, again) = send(&app, as_tenant("alice")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again, alice);
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn safe_methods_pass_through_untouched() {
    let (app, calls) = app(memory());
    for _ in 0..2 {
        let get = Request::get("/payments")
            .header("idempotency-key", "k")
            .body(Body::empty())
            .unwrap();
        let (status, headers, _) = send(&app, get).await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(headers.get("idempotent-replayed").is_none());
        assert_eq!(headers["date"], format!("call {}", calls.get()));
    }
    assert_eq!(calls.get(), 2);
}

/// A response body of unknown size: `chunks` frames of 1 KiB.
struct Chunks(usize);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        if self.0 == 0 {
            return std::task::Poll::Ready(None);
        }
        self.0 -= 1;
        let frame = http_body::Frame::data(bytes::Bytes::from(vec![b'x'; 1024]));
        std::task::Poll::Ready(Some(Ok(frame)))
    }
}

/// The handler ran, so a retry must not run it again: in place of a response
/// too large to store, a 500 problem is stored and replayed. An answer the
/// layer would not store anyway (a 5xx, a 429) is not replaced: its key is
/// released as usual.
#[tokio::test]
async fn responses_over_the_response_limit_are_never_run_twice() {
    let calls = Calls::default();
    let streamed = |State(calls): State<Calls>| async move {
        calls.0.fetch_add(1, Ordering::SeqCst);
        Body::new(Chunks(64))
    };
    let app = Router::new()
        .route("/payments", post(handler))
        .route("/export", post(streamed))
        .with_state(calls.clone())
        .layer(memory().response_limit(4096).build());

    // Under the limit: stored and replayed as always.
    send(&app, request(Some("small"), "{}")).await;
    let (_, headers, _) = send(&app, request(Some("small"), "{}")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 1);

    // A known size over the limit: passed on untouched; a retry gets the
    // stored problem and the handler does not run again.
    let big = "y".repeat(5000);
    let (status, headers, body) = send(&app, request(Some("big"), &big)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(headers.get("idempotent-replayed").is_none());
    assert!(body.len() > 5000, "the whole body came through");
    let (status, headers, body) = send(&app, request(Some("big"), &big)).await;
    let detail = problem(status, &headers, &body, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(detail.contains("4096-byte limit"), "{detail}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 2);

    // A stream (64 KiB, no size up front): reading stops at the limit, and
    // the client gets the problem, first and on every retry.
    let export = || {
        Request::post("/export")
            .header("idempotency-key", "export-1")
            .body(Body::empty())
            .unwrap()
    };
    for replayed in [false, true, true] {
        let (status, headers, body) = send(&app, export()).await;
        let detail = problem(status, &headers, &body, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(detail.contains("4096-byte limit"), "{detail}");
        assert_eq!(headers.get("idempotent-replayed").is_some(), replayed);
    }
    assert_eq!(calls.get(), 3);

    // Too large, but a 503 or a 429: passed on, nothing stored, and a retry
    // runs the handler again.
    for status in ["503", "429"] {
        let big_failure = || {
            post_with(Some(&format!("try-again-{status}")))
                .header("x-status", status)
                .body(Body::from(big.clone()))
                .unwrap()
        };
        for _ in 0..2 {
            let (got, headers, _) = send(&app, big_failure()).await;
            assert_eq!(got.as_str(), status);
            assert!(headers.get("idempotent-replayed").is_none());
        }
    }
    assert_eq!(calls.get(), 7);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_whether_declared_or_not() {
    let (app, calls) = app(memory().body_limit(1024));
    // No Content-Length (a tower-level request has none): the limit is met
    // while the body is read.
    let (status, headers, body) = send(&app, request(Some("k"), &"x".repeat(1025))).await;
    problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    // A declared length over the limit is refused before reading anything.
    let declared = post_with(Some("k2"))
        .header("content-length", "1048576")
        .body(Body::from("x"))
        .unwrap();
    let (status, headers, body) = send(&app, declared).await;
    problem(status, &headers, &body, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _, _) = send(&app, request(Some("k3"), &"x".repeat(1024))).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "a body at the limit is accepted"
    );
    assert_eq!(calls.get(), 1);
}

/// One chunk, then an error: a response body that fails half-way.
struct Broken(bool);

impl http_body::Body for Broken {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let sent = std::mem::replace(&mut self.0, true);
        std::task::Poll::Ready(Some(if sent {
            Err(std::io::Error::other("the upstream went away"))
        } else {
            Ok(http_body::Frame::data(bytes::Bytes::from_static(
                b"{\"id\":",
            )))
        }))
    }
}

/// The handler ran, so a retry must not run it again, even when its
/// response body failed half-way: a 502 problem is stored in its place and
/// replayed. A 503 whose body fails is not stored (the key is released).
#[tokio::test]
async fn a_response_body_that_fails_half_way_is_never_run_twice() {
    let calls = Calls::default();
    let broken = |State(calls): State<Calls>, headers: HeaderMap| async move {
        calls.0.fetch_add(1, Ordering::SeqCst);
        let status = headers
            .get("x-status")
            .map_or("201", |s| s.to_str().unwrap());
        Response::builder()
            .status(status.parse::<u16>().unwrap())
            .body(Body::new(Broken(false)))
            .unwrap()
    };
    let app = Router::new()
        .route("/payments", post(broken))
        .with_state(calls.clone())
        .layer(memory().build());
    for replayed in [false, true, true] {
        let (status, headers, body) = send(&app, request(Some("broken"), "{}")).await;
        let detail = problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
        assert!(detail.contains("the upstream went away"), "{detail}");
        assert_eq!(headers.get("idempotent-replayed").is_some(), replayed);
    }
    assert_eq!(calls.get(), 1);
    let unavailable = || {
        post_with(Some("broken-503"))
            .header("x-status", "503")
            .body(Body::from("{}"))
            .unwrap()
    };
    for _ in 0..2 {
        let (status, headers, body) = send(&app, unavailable()).await;
        let detail = problem(status, &headers, &body, StatusCode::BAD_GATEWAY);
        assert!(detail.contains("a retry runs it again"), "{detail}");
        assert!(headers.get("idempotent-replayed").is_none());
    }
    assert_eq!(calls.get(), 3, "a 503 is never stored: each retry runs");
}

/// A raw HTTP/1.1 request with `key` whose handler sleeps 300 ms.
fn slow_raw_request(key: &str) -> String {
    format!(
        "POST /payments HTTP/1.1\r\nhost: test\r\nidempotency-key: {key}\r\n\
         content-type: application/json\r\nx-sleep-ms: 300\r\ncontent-length: 2\r\n\r\n{{}}"
    )
}

/// Sends `raw` to `addr` and returns the connection once the handler has
/// started (the first call `calls` counts).
async fn start_raw_request(
    addr: std::net::SocketAddr,
    raw: &str,
    calls: &Calls,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client.write_all(raw.as_bytes()).await.unwrap();
    let started = async {
        while calls.get() == 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .expect("the handler starts");
    client
}

/// A client that disconnects while its request runs (a timeout, a dropped
/// connection) does not cancel the handler: it runs to its end on a real
/// server, its answer is stored, and the client's retry is a replay, not a
/// second run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_does_not_cancel_the_handler() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (app, calls) = app(memory());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let raw = slow_raw_request("gone-1");
    let client = start_raw_request(addr, &raw, &calls).await;
    drop(client); // the client gives up, 300 ms before the handler ends

    let mut retry = tokio::net::TcpStream::connect(addr).await.unwrap();
    let raw = raw.replace("HTTP/1.1\r\n", "HTTP/1.1\r\nconnection: close\r\n");
    retry.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = String::new();
    retry.read_to_string(&mut answer).await.unwrap();
    // Sent while the handler may still run: a 409 then. Waits, then asks again.
    while answer.starts_with("HTTP/1.1 409") {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut again = tokio::net::TcpStream::connect(addr).await.unwrap();
        again.write_all(raw.as_bytes()).await.unwrap();
        answer.clear();
        again.read_to_string(&mut answer).await.unwrap();
    }
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    assert!(answer.contains("idempotent-replayed: true"), "{answer}");
    assert_eq!(calls.get(), 1, "the handler ran once");
}

/// A server that shuts down waits for the handlers of callers that left:
/// `Handlers::wait` returns once they have run to their end and stored
/// their answers. The server is stopped right after the caller leaves,
/// without waiting for the handler to move to a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_waits_for_the_handlers_of_callers_that_left() {
    let store = MemoryStore::new(); // clones share their records
    let layer = IdempotencyLayer::builder(Idempotency::new(store.clone()))
        .single_tenant()
        .build();
    let handlers = layer.handlers();
    let calls = Calls::default();
    let app = Router::new()
        .route("/payments", post(handler))
        .with_state(calls.clone())
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let client = start_raw_request(addr, &slow_raw_request("leaving-1"), &calls).await;
    assert_eq!(
        handlers.len(),
        1,
        "the handler counts while its caller waits"
    );
    drop(client); // the caller leaves, 300 ms before the handler ends
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), handlers.wait())
        .await
        .expect("the handler finishes");
    assert!(handlers.is_empty());
    let key: IdempotencyKey = "leaving-1".parse().unwrap();
    let stored = StorageKey::new("idem", "", "POST /payments", &key);
    let fingerprint = Fingerprint::from_parts([&b"POST"[..], b"/payments", b"{}"]);
    let claim = store
        .claim(&stored, fingerprint, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(
        matches!(claim, idempotent_core::record::ClaimOutcome::Completed(_)),
        "the answer was stored before `wait` returned: {claim:?}"
    );
    assert_eq!(calls.get(), 1);
}

/// A timeout layered outside the layer (tower's `Timeout`,
/// `tokio::time::timeout`) drops the request's future: the handler runs on
/// to its end, its answer is stored, and the retry is a replay.
#[tokio::test(start_paused = true)]
async fn a_timeout_around_the_layer_does_not_cancel_the_handler() {
    let (app, calls) = app(memory());
    let slow = || {
        post_with(Some("late-1"))
            .header("x-sleep-ms", "300")
            .body(Body::from("{}"))
            .unwrap()
    };
    let first = tokio::time::timeout(Duration::from_millis(50), app.clone().oneshot(slow())).await;
    assert!(first.is_err(), "the caller gave up");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, headers, _) = send(&app, slow()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 1, "the handler ran once, to its end");
}

/// A handler that panics passes its panic on, as it would without the
/// layer (the connection's task ends), and its key is released: the retry
/// runs the handler again, it does not get a 409 for a call that is gone.
#[tokio::test]
async fn a_handler_that_panics_passes_the_panic_on_and_frees_its_key() {
    let (app, calls) = app(memory());
    let panicking = post_with(Some("boom-1"))
        .header("x-panic", "1")
        .body(Body::from("{}"))
        .unwrap();
    let first = tokio::spawn(app.clone().oneshot(panicking)).await;
    assert!(first.is_err_and(|e| e.is_panic()), "the panic is passed on");
    let (status, headers, _) = send(&app, request(Some("boom-1"), "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(calls.get(), 2, "the retry ran the handler");
}

/// Under `route_layer` (what the README shows), a request to a path no
/// route matches gets axum's own 404, with or without a key, and nothing is
/// stored for it.
#[tokio::test]
async fn under_route_layer_unknown_paths_pass_through_and_store_nothing() {
    let store = MemoryStore::new(); // clones share their records
    let layer = IdempotencyLayer::builder(Idempotency::new(store.clone()))
        .single_tenant()
        .build();
    let app: Router = Router::new()
        .route(
            "/payments",
            axum::routing::get(|| async { "ledger" }).post(|| async { "paid" }),
        )
        .route_layer(layer);
    for key in [None, Some("junk-1")] {
        let unknown = post_with(key).uri("/nope").body(Body::empty()).unwrap();
        assert_eq!(send(&app, unknown).await.0, StatusCode::NOT_FOUND);
    }
    assert!(store.is_empty(), "nothing stored for unknown paths");
    let (status, _, body) = send(&app, request(Some("k"), "{}")).await;
    assert_eq!((status, body.as_slice()), (StatusCode::OK, &b"paid"[..]));
    assert_eq!(store.len(), 1);
}

/// A request with key `k` whose handler takes `ms` milliseconds.
fn slow(ms: u64) -> Request<Body> {
    post_with(Some("k"))
        .header("x-sleep-ms", ms.to_string())
        .body(Body::from("{}"))
        .unwrap()
}

/// Sends `slow(ms)` in the background and returns 50 ms (paused time) into
/// its handler, with the key in flight.
async fn first_in_flight(
    app: &Router,
    ms: u64,
) -> tokio::task::JoinHandle<(StatusCode, HeaderMap, Vec<u8>)> {
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, slow(ms)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    first
}

#[tokio::test(start_paused = true)]
async fn a_duplicate_in_flight_gets_409_with_retry_after() {
    let (app, calls) = app(memory().lease(Duration::from_secs(10)));
    let first = first_in_flight(&app, 300).await;
    let (status, headers, body) = send(&app, slow(300)).await;
    problem(status, &headers, &body, StatusCode::CONFLICT);
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(
        (1..=10).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_a_duplicate_in_flight_waits_and_replays() {
    let (app, calls) = app(memory().in_flight(InFlight::Wait(Duration::from_secs(5))));
    let first = first_in_flight(&app, 200).await;
    let (status, headers, body) = send(&app, slow(200)).await;
    let (first_status, _, first_body) = first.await.unwrap();
    assert_eq!(status, first_status);
    assert_eq!(body, first_body);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_a_duplicate_still_running_after_the_wait_gets_409() {
    let (app, calls) = app(memory().in_flight(InFlight::Wait(Duration::from_millis(100))));
    let first = first_in_flight(&app, 2000).await;
    let started = tokio::time::Instant::now();
    let (status, headers, body) = send(&app, slow(2000)).await;
    problem(status, &headers, &body, StatusCode::CONFLICT);
    assert!(headers.contains_key("retry-after"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < Duration::from_millis(2000),
        "waited {waited:?}: the bound, not the first request's whole run"
    );
    assert_eq!(first.await.unwrap().0, StatusCode::CREATED);
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_stored_response_expires_after_the_ttl_and_the_handler_runs_again() {
    let (app, calls) = app(memory().ttl(Duration::from_secs(60)));
    send(&app, request(Some("k"), "{}")).await;
    tokio::time::advance(Duration::from_secs(59)).await;
    let (_, headers, _) = send(&app, request(Some("k"), "{}")).await;
    assert_eq!(
        headers["idempotent-replayed"], "true",
        "still stored at 59 s"
    );
    assert_eq!(calls.get(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, headers, body) = send(&app, request(Some("k"), "{}")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("idempotent-replayed"));
    assert_eq!(calls.get(), 2, "expired at 61 s: the handler ran again");
    assert!(String::from_utf8(body).unwrap().contains("\"call\":2"));
}

#[tokio::test]
async fn server_errors_are_never_stored_and_a_retry_runs_again() {
    // Even a policy that accepts every status cannot store a 5xx.
    let (app, calls) = app(memory().store_status(|_| true));
    for expected_calls in 1..=2 {
        let failing = post_with(Some("k"))
            .header("x-status", "503")
            .body(Body::from("{}"))
            .unwrap();
        let (status, headers, _) = send(&app, failing).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.get("idempotent-replayed").is_none());
        assert_eq!(calls.get(), expected_calls);
    }
    let (status, _, _) = send(&app, request(Some("k"), "{}")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the key was released each time"
    );
}

#[tokio::test]
async fn the_default_policy_stores_final_client_errors_but_not_try_again_answers() {
    let (app, calls) = app(memory());
    let with_status = |key: &str, status: &str| {
        post_with(Some(key))
            .header("x-status", status)
            .body(Body::from("{}"))
            .unwrap()
    };
    for status in ["408", "409", "425", "429"] {
        let key = format!("retry-{status}");
        send(&app, with_status(&key, status)).await;
        let (_, headers, _) = send(&app, with_status(&key, status)).await;
        assert!(
            headers.get("idempotent-replayed").is_none(),
            "{status} is not stored"
        );
    }
    assert_eq!(calls.get(), 8);
    for status in ["200", "302", "402", "404"] {
        let key = format!("final-{status}");
        send(&app, with_status(&key, status)).await;
        let (got, headers, _) = send(&app, with_status(&key, status)).await;
        assert_eq!(got.as_str(), status);
        assert_eq!(headers["idempotent-replayed"], "true", "{status} is stored");
    }
    assert_eq!(calls.get(), 12);
    // A status a framework also answers is stored when marked the handler's.
    let handled = |key: &str| {
        post_with(Some(key))
            .header("x-status", "400")
            .header("x-handled", "1")
            .body(Body::from("{}"))
            .unwrap()
    };
    send(&app, handled("final-400")).await;
    let (got, headers, _) = send(&app, handled("final-400")).await;
    assert_eq!(got, StatusCode::BAD_REQUEST);
    assert_eq!(
        headers["idempotent-replayed"], "true",
        "a marked 400 is stored"
    );
    assert_eq!(calls.get(), 13);
}

#[tokio::test]
async fn a_custom_policy_decides_which_statuses_are_stored() {
    let (app, calls) = app(memory().store_status(|status| status.is_success()));
    let not_found = || {
        post_with(Some("k"))
            .header("x-status", "404")
            .body(Body::from("{}"))
            .unwrap()
    };
    send(&app, not_found()).await;
    let (status, headers, _) = send(&app, not_found()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(headers.get("idempotent-replayed").is_none());
    assert_eq!(calls.get(), 2);
}

#[tokio::test]
async fn another_header_name_and_other_guarded_methods_can_be_configured() {
    let builder = memory()
        .header(axum::http::HeaderName::from_static("x-request-id"))
        .methods([axum::http::Method::PATCH]);
    let (app, calls) = app(builder);
    // POST is no longer guarded: it runs every time, key or not.
    send(&app, request(None, "{}")).await;
    send(&app, request(None, "{}")).await;
    let patch = || {
        Request::patch("/payments")
            .header("x-request-id", "r1")
            .body(Body::from("{}"))
            .unwrap()
    };
    send(&app, patch()).await;
    let (_, headers, _) = send(&app, patch()).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 3);
}

#[tokio::test]
async fn a_corrupt_stored_response_is_a_500_problem_not_a_panic_or_a_rerun() {
    let store = MemoryStore::new();
    let runtime = Idempotency::new(store.clone());
    let (app, calls) = app(IdempotencyLayer::builder(runtime.clone()).single_tenant());
    // Something else wrote garbage where the layer keeps this request's record.
    let key: IdempotencyKey = "k".parse().unwrap();
    let storage_key = StorageKey::new(runtime.namespace(), "", "POST /payments", &key);
    let fingerprint = Fingerprint::from_parts([&b"POST"[..], b"/payments", b"{}"]);
    let idempotent_core::record::ClaimOutcome::Acquired(lease) = store
        .claim(&storage_key, fingerprint, Duration::from_secs(5))
        .await
        .unwrap()
    else {
        panic!("the key is new");
    };
    store
        .complete(
            &storage_key,
            lease.token,
            fingerprint,
            b"Hgarbage",
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let (status, headers, body) = send(&app, request(Some("k"), "{}")).await;
    problem(status, &headers, &body, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(calls.get(), 0, "never a silent re-execution");
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_store_that_is_down_gives_503_and_the_handler_never_runs() {
    // A real refused connection: nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = idempotent_core::redis::RedisStore::builder()
        .url(format!("redis://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("a lazy connection is built without reaching Redis");
    let (app, calls) = app(IdempotencyLayer::builder(Idempotency::new(store)).single_tenant());
    let (status, headers, body) = send(&app, request(Some("k"), "{}")).await;
    problem(status, &headers, &body, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(calls.get(), 0);
}
