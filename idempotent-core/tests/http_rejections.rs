//! A request the framework refuses before any handler runs (axum's
//! extractor rejections) is not stored: the corrected retry with the same
//! key runs. An answer the handler gives itself stays under the storage
//! policy, once marked `Handled` where its status is one a framework uses.
#![cfg(feature = "http")]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use http_body_util::BodyExt;
use idempotent_core::Idempotency;
use idempotent_core::http::{Handled, IdempotencyLayer, IdempotencyLayerBuilder};
use idempotent_core::memory::MemoryStore;
use serde::Deserialize;
use tower::ServiceExt;

#[derive(Deserialize)]
struct Transfer {
    amount: u64,
}

/// Runs of the handler's body (past its extractors).
type Runs = Arc<AtomicUsize>;

/// 201, or the handler's own 422 for an amount over 1000: marked `Handled`
/// on `/marked`, not on `/unmarked`.
async fn transfer(
    State(runs): State<Runs>,
    marked: bool,
    Json(transfer): Json<Transfer>,
) -> axum::response::Response {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if transfer.amount > 1000 {
        let refusal = (
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("refused in run {run}"),
        );
        return match marked {
            true => (Handled, refusal).into_response(),
            false => refusal.into_response(),
        };
    }
    (StatusCode::CREATED, format!("transferred in run {run}")).into_response()
}

fn app(layer: IdempotencyLayerBuilder) -> (Router, Runs) {
    let runs = Runs::default();
    let router = Router::new()
        .route("/marked", post(|state, json| transfer(state, true, json)))
        .route(
            "/unmarked",
            post(|state, json| transfer(state, false, json)),
        )
        .with_state(Arc::clone(&runs))
        .layer(layer.build());
    (router, runs)
}

fn layer() -> IdempotencyLayerBuilder {
    IdempotencyLayer::builder(Idempotency::new(MemoryStore::new())).single_tenant()
}

async fn send(
    app: &Router,
    path: &str,
    content_type: &str,
    body: &str,
) -> (StatusCode, String, bool) {
    let request = Request::post(path)
        .header("idempotency-key", "k1")
        .header("content-type", content_type)
        .body(Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8_lossy(&body).into_owned(),
        replayed,
    )
}

#[tokio::test]
async fn a_refused_request_is_not_stored_and_the_corrected_retry_runs() {
    // Each first attempt is refused by axum's `Json` extractor, before the
    // handler runs; the corrected retry with the same key must run.
    let refusals = [
        (
            "text/plain",
            r#"{"amount": 5}"#,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "application/json",
            r#"{"amount": "#,
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            r#"{"amount": -5}"#,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
    ];
    for (content_type, body, refused) in refusals {
        let (app, runs) = app(layer());
        let (status, _, replayed) = send(&app, "/marked", content_type, body).await;
        assert_eq!(status, refused, "{content_type} {body}");
        assert!(!replayed);
        assert_eq!(runs.load(Ordering::SeqCst), 0, "refused before the handler");
        // The same refusal again is refused again, not replayed.
        let (status, _, replayed) = send(&app, "/marked", content_type, body).await;
        assert_eq!((status, replayed), (refused, false));

        let (status, body, replayed) =
            send(&app, "/marked", "application/json", r#"{"amount": 5}"#).await;
        assert_eq!(
            (status, body.as_str(), replayed),
            (StatusCode::CREATED, "transferred in run 1", false),
            "the corrected retry runs"
        );
        let (status, body, replayed) =
            send(&app, "/marked", "application/json", r#"{"amount": 5}"#).await;
        assert_eq!(
            (status, body.as_str(), replayed),
            (StatusCode::CREATED, "transferred in run 1", true)
        );
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn a_handler_refusal_marked_handled_is_stored_and_replayed() {
    let (app, runs) = app(layer());
    let refused = send(&app, "/marked", "application/json", r#"{"amount": 5000}"#).await;
    assert_eq!(
        refused,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused in run 1".to_owned(),
            false
        )
    );
    let retry = send(&app, "/marked", "application/json", r#"{"amount": 5000}"#).await;
    assert_eq!(
        retry,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused in run 1".to_owned(),
            true
        ),
        "the business 422 is the request's answer, replayed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_unmarked_handler_answer_with_a_rejection_status_is_not_stored() {
    let (app, runs) = app(layer());
    send(&app, "/unmarked", "application/json", r#"{"amount": 5000}"#).await;
    let retry = send(&app, "/unmarked", "application/json", r#"{"amount": 5000}"#).await;
    assert_eq!(
        retry,
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "refused in run 2".to_owned(),
            false
        ),
        "without the mark, the layer cannot tell it from a refusal"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn no_rejection_statuses_store_every_answer_the_policy_allows() {
    let (app, runs) = app(layer().rejection_status(|_| false));
    let (status, _, _) = send(&app, "/unmarked", "text/plain", r#"{"amount": 5}"#).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, replayed) =
        send(&app, "/unmarked", "application/json", r#"{"amount": 5}"#).await;
    assert_eq!(
        (status, replayed),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, true),
        "the refusal was stored: the corrected retry (same body) gets it back"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}
