//! Callers that leave (a disconnect, a timeout outside the layer) never
//! cancel a handler: it runs to its end and its answer is stored; a server
//! waits for such handlers at shutdown with the layer's `HandlerTracker`.
//! A handler that panics frees its key.
#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use axum::routing::post;
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::StorageKey;
use idempotent_core::{Fingerprint, Idempotency, IdempotencyKey, Store};
use support::http::{Calls, app, handler, memory, post_with, request, send};
use tower::ServiceExt;

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
/// `HandlerTracker::wait` returns once they have run to their end and stored
/// their answers. The server is stopped right after the caller leaves,
/// without waiting for the handler to move to a task of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_down_waits_for_the_handlers_of_callers_that_left() {
    let store = MemoryStore::new(); // clones share their records
    let layer = IdempotencyLayer::builder(Idempotency::new(store.clone()))
        .single_tenant()
        .build();
    let tracker = layer.handler_tracker();
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
        tracker.running(),
        1,
        "the handler counts while its caller waits"
    );
    drop(client); // the caller leaves, 300 ms before the handler ends
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(10), tracker.wait())
        .await
        .expect("the handler finishes");
    assert!(tracker.is_idle());
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
