//! What a replay gives back (status, headers, body, and what is left out),
//! and what the layer lets through untouched: a real axum router behind
//! the layer, driven request by request.
#![cfg(feature = "http")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, Response, StatusCode};
use axum::routing::post;
use idempotent_core::Idempotency;
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;
use support::http::{Calls, app, memory, post_with, request, send};

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
