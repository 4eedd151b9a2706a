//! The client as a `reqwest_middleware::Middleware`, stacked with others
//! (reqwest-tracing's, and two of the test's own on each side of it), with
//! requests built by reqwest-middleware's own builder, against a real
//! server on loopback behind the real idempotency layer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::Extensions;
use idempotent_client::reqwest_middleware::{
    self, ClientBuilder, ClientWithMiddleware, Middleware, Next,
};
use idempotent_client::{
    ClientError, Delivery, IdempotencyMiddleware, IntentName, Journal, MemoryJournal, RetryPolicy,
};
use idempotent_core::Idempotency;
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;

/// What the server saw.
#[derive(Clone, Default)]
struct Seen {
    /// Charges made (the side effect).
    charges: Arc<AtomicUsize>,
    /// The calls that reached the handler: their key and credential.
    calls: Arc<Mutex<Vec<(String, String)>>>,
    /// How many calls answer 503 first.
    fail_first: Arc<AtomicUsize>,
}

async fn charge(State(seen): State<Seen>, headers: HeaderMap, body: String) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let call = {
        let mut calls = seen.calls.lock().unwrap();
        calls.push((header("idempotency-key"), header("authorization")));
        calls.len()
    };
    if call <= seen.fail_first.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")]).into_response();
    }
    if body.contains("\"amount\":-1") {
        // A bad value: the application's own 422, not a key reused.
        return (StatusCode::UNPROCESSABLE_ENTITY, "amount must be positive").into_response();
    }
    let n = seen.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge {n}")).into_response()
}

async fn server() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new()
        .route("/payments", post(charge))
        .with_state(seen.clone())
        .layer(
            IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
                .single_tenant()
                .build(),
        )
        // The same handler without the layer: a server that takes no keys.
        .route("/open", post(charge))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/payments"), seen)
}

/// A middleware of the user's own: counts the requests it sees, and sets a
/// fresh credential on each (as a token refresher would).
#[derive(Clone, Default)]
struct Counting {
    seen: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Middleware for Counting {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let n = self.seen.fetch_add(1, Ordering::SeqCst) + 1;
        request.headers_mut().insert(
            "authorization",
            format!("Bearer token-{n}").parse().unwrap(),
        );
        next.run(request, extensions).await
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(10))
        .max_interval(Duration::from_millis(50))
        .max_attempts(10)
        .jitter_seed(1)
        .build()
}

fn http() -> reqwest::Client {
    idempotent_client::default_http_client().unwrap()
}

/// The stack: tracing and a counter outside ours (they see the call once),
/// ours, and a counter inside (it sees every attempt).
fn stack(idempotency: IdempotencyMiddleware) -> (ClientWithMiddleware, Counting, Counting) {
    let (outer, inner) = (Counting::default(), Counting::default());
    let client = ClientBuilder::new(http())
        .with(reqwest_tracing::TracingMiddleware::default())
        .with(outer.clone())
        .with(idempotency)
        .with(inner.clone())
        .build();
    (client, outer, inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacked_with_other_middleware_retries_carry_one_journaled_key_and_charge_once() {
    let (url, seen) = server().await;
    seen.fail_first.store(2, Ordering::SeqCst);
    let journal = MemoryJournal::new();
    let idempotency = IdempotencyMiddleware::builder()
        .journal(journal.clone())
        .retry(fast())
        .build()
        .unwrap();
    let (client, outer, inner) = stack(idempotency);

    let response = client
        .post(&url)
        .json(&serde_json::json!({ "amount": 4200 }))
        // UTF-8 in a header is journaled as it is.
        .header("x-customer", "Zoë")
        .with_extension(IntentName::new("order-1"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    let delivery = response.extensions().get::<Delivery>().unwrap().clone();
    assert_eq!(delivery.attempts, 3);
    assert_eq!(response.text().await.unwrap(), "charge 1");
    assert_eq!(seen.charges.load(Ordering::SeqCst), 1);
    // The middleware outside ours saw the call once; the one inside saw
    // each attempt, and set each attempt's credential.
    assert_eq!(outer.seen.load(Ordering::SeqCst), 1);
    assert_eq!(inner.seen.load(Ordering::SeqCst), 3);
    let calls = seen.calls.lock().unwrap().clone();
    let key = delivery.key.unwrap();
    assert_eq!(
        calls,
        (1..=3)
            .map(|n| (key.clone(), format!("Bearer token-{n}")))
            .collect::<Vec<_>>()
    );
    // Journaled before the first attempt, answered after the last; the
    // JSON body's Content-Type kept, the credential never written. (`begin`
    // of a known name returns the journaled intent.)
    assert!(journal.pending().await.unwrap().is_empty());
    let intent = journal
        .begin(idempotent_client::Intent {
            name: "order-1".into(),
            key: "unused".into(),
            method: "POST".into(),
            url: url.clone(),
            headers: vec![],
            body: vec![],
            created_at_ms: 0,
            done: false,
            answered_at_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(intent.key, key);
    assert!(intent.done);
    assert_eq!(
        intent.headers,
        vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-customer".to_owned(), "Zoë".to_owned()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intent_left_pending_by_a_stopped_process_is_sent_again_with_its_key() {
    let (url, seen) = server().await;
    let dir = std::env::temp_dir().join(format!("mw-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("payments.journal");
    let body = serde_json::json!({ "amount": 700 });

    // The first process: the server answers 503 to its one attempt, and
    // the intent stays pending.
    seen.fail_first.store(1, Ordering::SeqCst);
    let first_key = {
        let idempotency = IdempotencyMiddleware::builder()
            .journal_path(&path)
            .retry(RetryPolicy::none())
            .build()
            .unwrap();
        let (client, _, _) = stack(idempotency.clone());
        let response = client
            .post(&url)
            .json(&body)
            .with_extension(IntentName::new("order-7"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let pending = idempotency.pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        pending[0].key.clone()
    };

    // The next process, over the same journal: the same request with the
    // same intent name carries the journaled key, whatever key header the
    // request had.
    let idempotency = IdempotencyMiddleware::builder()
        .journal_path(&path)
        .retry(fast())
        .build()
        .unwrap();
    let (client, _, _) = stack(idempotency.clone());
    for _ in 0..2 {
        let response = client
            .post(&url)
            .json(&body)
            .header("idempotency-key", "a-key-of-the-callers")
            .with_extension(IntentName::new("order-7"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(seen.charges.load(Ordering::SeqCst), 1);
    let keys: Vec<String> = seen
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.0.clone())
        .collect();
    assert_eq!(keys, vec![first_key.clone(), first_key]);
    assert!(idempotency.pending().await.unwrap().is_empty());
    drop(client);
    drop(idempotency);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_librarys_errors_come_out_as_middleware_errors_to_downcast() {
    let (url, seen) = server().await;
    let journal = MemoryJournal::new();
    let idempotency = IdempotencyMiddleware::builder()
        .journal(journal.clone())
        .retry(fast())
        .build()
        .unwrap();
    let (client, _, _) = stack(idempotency);
    let send = |amount: i64, key: &str| {
        client
            .post(&url)
            .json(&serde_json::json!({ "amount": amount }))
            .header("idempotency-key", key)
            .send()
    };

    // The application's own 422 is an answer, not a reused key.
    let bad = send(-1, "key-a").await.unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // The same key with another body: the server's key-reused answer.
    send(100, "key-b").await.unwrap();
    let error = send(200, "key-b").await.unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected this library's error, got {error:?}");
    };
    match error.downcast_ref::<ClientError>() {
        Some(ClientError::KeyReused { key, response }) => {
            assert_eq!(key, "key-b");
            assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(seen.charges.load(Ordering::SeqCst), 1);

    // An intent reused for another request: refused, nothing sent.
    let calls = seen.calls.lock().unwrap().len();
    let with_intent = |amount: i64| {
        client
            .post(&url)
            .json(&serde_json::json!({ "amount": amount }))
            .with_extension(IntentName::new("order-9"))
            .send()
    };
    with_intent(1).await.unwrap();
    let error = with_intent(2).await.unwrap_err();
    assert!(
        matches!(
            error,
            reqwest_middleware::Error::Middleware(ref e)
                if matches!(e.downcast_ref::<ClientError>(), Some(ClientError::IntentReused { .. }))
        ),
        "{error:?}"
    );
    assert_eq!(seen.calls.lock().unwrap().len(), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_may_carry_its_own_retry_policy_and_a_keyless_post_is_sent_once() {
    let (url, seen) = server().await;
    let idempotency = IdempotencyMiddleware::builder()
        .journal(MemoryJournal::new())
        .retry(fast())
        .build()
        .unwrap();
    let (client, _, inner) = stack(idempotency);

    // A POST without a key or an intent: never sent twice.
    seen.fail_first.store(1, Ordering::SeqCst);
    let open = url.replace("/payments", "/open");
    let response = client.post(&open).body("x").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Delivery>().unwrap().attempts, 1);
    assert_eq!(inner.seen.load(Ordering::SeqCst), 1);

    // A policy in the request's extensions replaces the middleware's: no retry.
    seen.fail_first.store(2, Ordering::SeqCst);
    let response = client
        .post(&url)
        .body("y")
        .with_extension(IntentName::new("order-3"))
        .with_extension(RetryPolicy::none())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(inner.seen.load(Ordering::SeqCst), 2);
    assert_eq!(seen.charges.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transport_error_stays_reqwests_and_the_attempts_are_in_the_extensions() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/payments", listener.local_addr().unwrap());
    drop(listener);
    let idempotency = IdempotencyMiddleware::builder()
        .journal(MemoryJournal::new())
        .retry(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(1))
                .max_attempts(3)
                .build(),
        )
        .build()
        .unwrap();
    let client = ClientBuilder::new(http()).with(idempotency.clone()).build();
    let request = client
        .post(&url)
        .body("z")
        .with_extension(IntentName::new("order-5"))
        .build()
        .unwrap();
    let mut extensions = Extensions::new();
    extensions.insert(IntentName::new("order-5"));
    let error = client
        .execute_with_extensions(request, &mut extensions)
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error:?}");
    let delivery = extensions.get::<Delivery>().unwrap();
    assert_eq!(delivery.attempts, 3);
    // Never answered: pending, with the key every attempt carried.
    let pending = idempotency.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(Some(&pending[0].key), delivery.key.as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_with_an_intent_is_refused_before_anything_is_journaled() {
    let (url, seen) = server().await;
    let journal = MemoryJournal::new();
    let idempotency = IdempotencyMiddleware::builder()
        .journal(journal.clone())
        .build()
        .unwrap();
    let client = ClientBuilder::new(http()).with(idempotency).build();
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("a"), Ok("b")]);
    let error = client
        .post(&url)
        .body(reqwest::Body::wrap_stream(chunks))
        .with_extension(IntentName::new("order-s"))
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(error) = error else {
        panic!("expected this library's error, got {error:?}");
    };
    assert!(
        matches!(
            error.downcast_ref::<ClientError>(),
            Some(ClientError::InvalidRequest { reason, .. }) if reason.contains("streaming")
        ),
        "{error:?}"
    );
    assert!(journal.pending().await.unwrap().is_empty());
    assert!(seen.calls.lock().unwrap().is_empty());
}
