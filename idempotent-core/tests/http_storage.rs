//! What is stored: which statuses, up to which sizes, and what stands in
//! for an answer that cannot be stored; a corrupt record, a store that is
//! down.
#![cfg(feature = "http")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Request, Response, StatusCode};
use axum::routing::post;
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::StorageKey;
use idempotent_core::{Fingerprint, Idempotency, IdempotencyKey, Store};
use support::http::{Calls, app, handler, memory, post_with, problem, request, send};

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
