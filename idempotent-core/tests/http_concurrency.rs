//! Duplicates of a request still running: refused with `409` at once, or
//! waited for and replayed.
#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use idempotent_core::http::InProgress;
use support::http::{app, memory, post_with, problem, send};

/// A request with key `k` whose handler takes `ms` milliseconds.
fn slow(ms: u64) -> Request<Body> {
    post_with(Some("k"))
        .header("x-sleep-ms", ms.to_string())
        .body(Body::from("{}"))
        .unwrap()
}

/// Sends `slow(ms)` in the background and returns 50 ms (paused time) into
/// its handler, with the key in progress.
async fn first_in_progress(
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
async fn a_duplicate_in_progress_gets_409_with_retry_after() {
    let (app, calls) = app(memory().lease(Duration::from_secs(10)));
    let first = first_in_progress(&app, 300).await;
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
async fn in_wait_mode_a_duplicate_in_progress_waits_and_replays() {
    let (app, calls) = app(memory().in_progress(InProgress::Wait(Duration::from_secs(5))));
    let first = first_in_progress(&app, 200).await;
    let (status, headers, body) = send(&app, slow(200)).await;
    let (first_status, _, first_body) = first.await.unwrap();
    assert_eq!(status, first_status);
    assert_eq!(body, first_body);
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(calls.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_a_duplicate_still_running_after_the_wait_gets_409() {
    let (app, calls) = app(memory().in_progress(InProgress::Wait(Duration::from_millis(100))));
    let first = first_in_progress(&app, 2000).await;
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
