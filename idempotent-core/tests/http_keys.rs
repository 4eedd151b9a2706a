//! Keys: required or not, malformed, reused with another request, and
//! scoped to the route and to the caller's scope.
#![cfg(feature = "http")]

mod support;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use support::http::{app, memory, post_with, problem, request, send};

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
/// sees the request: the key is still scoped to the path the client sent
/// (read from axum's `OriginalUri`, with the `axum` feature).
#[cfg(feature = "axum")]
#[tokio::test]
async fn nested_routes_under_different_prefixes_are_different_routes() {
    use axum::Router;
    use axum::routing::post;
    use support::http::{Calls, handler};

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
