//! The client against a real server on loopback: axum behind the real
//! idempotency layer, with routes that fail on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use idempotent_client::{
    ClientError, IdempotentClient, Intent, Journal, JournalError, MemoryJournal, RetryPolicy,
    RetryPolicyBuilder,
};
use idempotent_core::Idempotency;
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;

#[derive(Clone, Default)]
struct Counters {
    charges: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

/// Charges after `x-work-ms`; the first `x-fail-first` calls of the route
/// answer `x-fail-status` (503 by default) with `Retry-After: 0`, also after
/// `x-work-ms`.
async fn charge(State(c): State<Counters>, headers: HeaderMap, body: String) -> Response {
    let call = c.calls.fetch_add(1, Ordering::SeqCst) + 1;
    let number = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
    };
    let work = number("x-work-ms").map(|ms| Duration::from_millis(ms as u64));
    if call <= number("x-fail-first").unwrap_or(0) {
        if let Some(work) = work {
            tokio::time::sleep(work).await;
        }
        let status = StatusCode::from_u16(number("x-fail-status").unwrap_or(503) as u16).unwrap();
        return (status, [("retry-after", "0")], "try again").into_response();
    }
    if let Some(work) = work {
        tokio::time::sleep(work).await;
    }
    let n = c.charges.fetch_add(1, Ordering::SeqCst) + 1;
    (StatusCode::CREATED, format!("charge {n} for {body}")).into_response()
}

async fn server() -> (String, Counters) {
    let counters = Counters::default();
    let app = Router::new()
        .route("/payments", post(charge))
        .with_state(counters.clone())
        .layer(
            IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
                .single_tenant()
                .build(),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/payments"), counters)
}

fn fast() -> RetryPolicyBuilder {
    RetryPolicy::builder()
        .initial_interval(Duration::from_millis(10))
        .max_interval(Duration::from_millis(50))
        .max_attempts(50)
        .jitter_seed(1)
}

fn client(journal: &MemoryJournal) -> IdempotentClient {
    IdempotentClient::builder()
        .journal(journal.clone())
        .retry(fast().build())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_in_progress_is_retried_with_the_same_key_and_gets_the_one_charge() {
    let (url, counters) = server().await;
    let journal = MemoryJournal::new();
    let send = || {
        let (client, url) = (client(&journal), url.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .header("x-work-ms", "200")
                .body("order-1")
                .intent("order-1")
                .send()
                .await
                .unwrap()
        })
    };
    let first = send();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = send().await.unwrap();
    let first = first.await.unwrap();
    assert_eq!(first.key, second.key, "one intent, one key");
    assert!(second.attempts > 1, "the duplicate met 409 and retried");
    assert_eq!(first.response.status(), 201);
    assert_eq!(second.response.status(), 201);
    assert_eq!(
        first.response.text().await.unwrap(),
        second.response.text().await.unwrap()
    );
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn transient_failures_are_retried_with_the_key_honouring_retry_after() {
    let (url, counters) = server().await;
    // Backoff alone would wait 10 s, over the 1 s budget: only the
    // server's `Retry-After: 0` lets the retries happen.
    let slow = RetryPolicy::builder()
        .initial_interval(Duration::from_secs(10))
        .full_jitter(false)
        .max_elapsed(Some(Duration::from_secs(1)))
        .build();
    let journal = MemoryJournal::new();
    let sent = client(&journal)
        .post(&url)
        .header("x-fail-first", "2")
        .header("x-fail-status", "429")
        .body("order-2")
        .intent("order-2")
        .retry(slow)
        .send()
        .await
        .unwrap();
    assert_eq!(sent.response.status(), 201);
    assert_eq!(sent.attempts, 3);
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
    let pending = idempotent_client::Journal::pending(&journal).await.unwrap();
    assert!(pending.is_empty(), "answered for good");
}

#[tokio::test]
async fn without_a_key_a_post_is_never_retried() {
    let no_key_server = Router::new().route(
        "/payments",
        post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "down") }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain = format!("http://{}/payments", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, no_key_server).await });
    let sent = client(&MemoryJournal::new())
        .post(&plain)
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.response.status(), 503);
    assert_eq!(sent.attempts, 1);
    assert!(sent.key.is_none());
}

/// An intent name run again with another body is refused before anything
/// is sent: its key belongs to the first request.
#[tokio::test]
async fn an_intent_sent_again_with_another_body_is_refused_and_nothing_is_sent() {
    let (url, counters) = server().await;
    let journal = MemoryJournal::new();
    let client = client(&journal);
    let first = client
        .post(&url)
        .body("100 USD")
        .intent("order-3")
        .send()
        .await
        .unwrap();
    let changed = client
        .post(&url)
        .body("999 USD")
        .intent("order-3")
        .send()
        .await;
    match changed {
        Err(ClientError::IntentReused { intent, key }) => {
            assert_eq!(intent, "order-3");
            assert_eq!(Some(key), first.key);
        }
        other => panic!("expected IntentReused, got {other:?}"),
    }
    let elsewhere = client
        .post(format!("{url}?another=query"))
        .body("100 USD")
        .intent("order-3")
        .send()
        .await;
    assert!(
        matches!(elsewhere, Err(ClientError::IntentReused { .. })),
        "{elsewhere:?}"
    );
    assert_eq!(
        counters.calls.load(Ordering::SeqCst),
        1,
        "nothing more was sent"
    );
}

/// The server's 422 (a key it holds for another request) is a distinct
/// error, never retried.
#[tokio::test]
async fn a_key_reused_with_another_payload_is_a_distinct_error() {
    let (url, counters) = server().await;
    let client = client(&MemoryJournal::new());
    let send = |body: &'static str| client.post(&url).body(body).key("shared-key-1").send();
    send("100 USD").await.unwrap();
    let reused = send("999 USD").await;
    match reused {
        Err(ClientError::KeyReused { key, response }) => {
            assert_eq!(key, "shared-key-1");
            assert_eq!(response.status(), 422);
        }
        other => panic!("expected KeyReused, got {other:?}"),
    }
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
}

/// A server on a raw socket: the first connection gets the headers of a
/// `201` and half its body, then the connection is cut; later ones get the
/// whole answer, marked replayed. Returns the URL and the key of every
/// request it read.
async fn cut_after_half_a_body() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/payments", listener.local_addr().unwrap());
    let keys = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&keys);
    tokio::spawn(async move {
        let body = "{\"id\":\"pay_1\",\"status\":\"succeeded\"}";
        for connection in 0.. {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buffer).await.unwrap();
                request.extend_from_slice(&buffer[..n]);
            }
            let request = String::from_utf8_lossy(&request).to_lowercase();
            let key = request
                .lines()
                .find_map(|line| line.strip_prefix("idempotency-key: "))
                .unwrap_or("")
                .to_owned();
            seen.lock().unwrap().push(key);
            let head = format!("HTTP/1.1 201 Created\r\ncontent-length: {}\r\n", body.len());
            if connection == 0 {
                let half = &body[..body.len() / 2];
                let answer = format!("{head}\r\n{half}");
                socket.write_all(answer.as_bytes()).await.unwrap();
            } else {
                let answer =
                    format!("{head}idempotent-replayed: true\r\nconnection: close\r\n\r\n{body}");
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
            // Dropped: the first answer is cut half-way through its body.
        }
    });
    (url, keys)
}

/// An answer whose body breaks half-way is retried with the same key, and
/// the caller gets the whole answer: the intent is marked answered only
/// once its answer is in hand, never with one the caller could not read.
#[tokio::test]
async fn an_answer_cut_half_way_through_its_body_is_retried_with_the_same_key() {
    let (url, keys) = cut_after_half_a_body().await;
    let journal = MemoryJournal::new();
    let sent = client(&journal)
        .post(&url)
        .body("order-10")
        .intent("order-10")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.attempts, 2);
    assert_eq!(sent.response.status(), 201);
    assert_eq!(sent.response.headers()["idempotent-replayed"], "true");
    assert!(sent.response.url().as_str().ends_with("/payments"));
    assert!(
        sent.response.remote_addr().is_some(),
        "the rebuilt answer keeps reqwest's extensions"
    );
    assert_eq!(
        sent.response.text().await.unwrap(),
        "{\"id\":\"pay_1\",\"status\":\"succeeded\"}"
    );
    let keys = keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "both attempts carried the intent's key");
    assert_eq!(Some(&keys[0]), sent.key.as_ref());
    assert!(journal.pending().await.unwrap().is_empty(), "answered");
}

/// A final answer over the client's response limit is an error, and the
/// intent is answered all the same: the server has answered for good.
#[tokio::test]
async fn an_answer_over_the_response_limit_is_an_error_and_answered() {
    let (url, counters) = server().await;
    let journal = MemoryJournal::new();
    let client = IdempotentClient::builder()
        .journal(journal.clone())
        .retry(fast().build())
        .response_limit(8)
        .build()
        .unwrap();
    let sent = client
        .post(&url)
        .body("order-11")
        .intent("order-11")
        .send()
        .await;
    match sent {
        Err(ClientError::ResponseTooLarge {
            status,
            headers,
            limit,
            key,
            attempts,
        }) => {
            assert_eq!((status.as_u16(), limit, attempts), (201, 8, 1));
            assert!(headers.contains_key("content-length"));
            assert!(!key.is_empty());
        }
        other => panic!("expected ResponseTooLarge, got {other:?}"),
    }
    assert!(journal.pending().await.unwrap().is_empty(), "answered");
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_restarted_client_reuses_the_journaled_key_and_never_writes_credentials() {
    let (url, counters) = server().await;
    let dir = std::env::temp_dir().join(format!("idempotent-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("payments.journal");
    let send = |url: String, path: std::path::PathBuf| async move {
        let client = IdempotentClient::builder()
            .journal_path(path)
            .retry(fast().build())
            .build()
            .unwrap();
        // Credentials in the URL's userinfo and an API-key header too.
        let url = url.replace("http://", "http://user:SECRET-PASSWORD-456@");
        client
            .post(url)
            .header("authorization", "Bearer SECRET-TOKEN-123")
            .header("x-api-key", "SECRET-KEY-789")
            .body("order-4")
            .intent("order-4")
            .send()
            .await
            .unwrap()
    };
    let first = send(url.clone(), path.clone()).await;
    // A new client, as after a restart of the program, on the same file.
    let again = send(url.clone(), path.clone()).await;
    assert_eq!(first.key, again.key);
    assert_eq!(again.response.headers()["idempotent-replayed"], "true");
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
    let bytes = std::fs::read(&path).unwrap();
    for secret in ["SECRET-TOKEN-123", "SECRET-PASSWORD-456", "SECRET-KEY-789"] {
        assert!(
            !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "credentials must never reach the journal: {secret}"
        );
    }
    assert!(
        bytes.windows(b"127.0.0.1".len()).any(|w| w == b"127.0.0.1"),
        "the URL is journaled, without its userinfo"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A key given as an `Idempotency-Key` header is the key: sent once (the
/// layer answers two with a 400) and journaled as the intent's key. A
/// request that cannot be built is refused before its intent is journaled,
/// so nothing is left pending that would fail the same way on every resume.
#[tokio::test]
async fn a_key_header_is_the_key_and_an_unbuildable_request_journals_nothing() {
    let (url, counters) = server().await;
    let journal = MemoryJournal::new();
    let sent = client(&journal)
        .post(&url)
        .header("Idempotency-Key", "k-9")
        .body("order-9")
        .intent("order-9")
        .send()
        .await
        .unwrap();
    assert_eq!(sent.response.status(), 201);
    assert_eq!(sent.key.as_deref(), Some("k-9"));
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);

    let refused = client(&journal)
        .post(&url)
        .header("x-note", "line one\nline two")
        .body("order-10")
        .intent("order-10")
        .send()
        .await;
    assert!(
        matches!(
            &refused,
            Err(ClientError::InvalidRequest {
                source: Some(_),
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(client(&journal).pending().await.unwrap().is_empty());
    assert_eq!(counters.calls.load(Ordering::SeqCst), 1, "nothing was sent");
}

#[tokio::test]
async fn an_intent_left_pending_is_resumed_with_its_original_key() {
    let (url, counters) = server().await;
    let journal = MemoryJournal::new();
    // The server is failing and the caller gives up after one attempt.
    let gave_up = client(&journal)
        .post(&url)
        .header("x-fail-first", "1")
        .body("order-5")
        .intent("order-5")
        .retry(RetryPolicy::none())
        .send()
        .await
        .unwrap();
    assert_eq!(gave_up.response.status(), 503);
    // Later, maybe in another process: list what is pending and resume it.
    let later = client(&journal);
    let pending = later.pending().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(Some(&pending[0].key), gave_up.key.as_ref());
    let resumed = later.resume(&pending[0]).send().await.unwrap();
    assert_eq!(resumed.response.status(), 201);
    assert_eq!(resumed.key, gave_up.key);
    assert!(later.pending().await.unwrap().is_empty());
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_refused_connection_is_retried_then_reported() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = client(&MemoryJournal::new())
        .post(format!("http://127.0.0.1:{port}/payments"))
        .body("x")
        .intent("order-6")
        .retry(fast().max_attempts(3).build())
        .send()
        .await;
    match result {
        Err(ClientError::Http { attempts, source }) => {
            assert_eq!(attempts, 3);
            assert!(source.is_connect(), "{source}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn the_retry_budget_stops_a_retry_storm() {
    // A server that is down for good answers 503 to everyone.
    let down = Router::new().route(
        "/payments",
        post(|State(calls): State<Arc<AtomicUsize>>| async move {
            calls.fetch_add(1, Ordering::SeqCst);
            StatusCode::SERVICE_UNAVAILABLE
        }),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/payments", listener.local_addr().unwrap());
    tokio::spawn({
        let down = down.with_state(Arc::clone(&calls));
        async move { axum::serve(listener, down).await }
    });
    let client = IdempotentClient::builder()
        .journal(MemoryJournal::new())
        .retry(fast().max_attempts(10).build())
        // Five retries in the bucket, no refill.
        .retry_budget(
            idempotent_client::RetryBudget::builder()
                .capacity(5)
                .per_request(0.0)
                .per_second(0.0)
                .build(),
        )
        .build()
        .unwrap();
    for i in 0..20 {
        let sent = client
            .post(&url)
            .body("x")
            .intent(format!("storm-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(sent.response.status(), 503);
    }
    // Without the budget: 20 × 10 attempts. With it: 20 first attempts and 5 retries.
    assert_eq!(calls.load(Ordering::SeqCst), 25);
    assert_eq!(
        client.pending().await.unwrap().len(),
        20,
        "all left to resume later"
    );
}

#[tokio::test]
async fn the_overall_deadline_counts_the_attempts_time_too() {
    let (url, counters) = server().await;
    // Each attempt takes 100 ms and fails; the delays are 1 ms. Counting
    // only the delays, the 300 ms deadline would allow about 300 attempts;
    // counting the attempts' time too, it allows three or four.
    let policy = RetryPolicy::builder()
        .initial_interval(Duration::from_millis(1))
        .max_interval(Duration::from_millis(1))
        .full_jitter(false)
        .max_attempts(1_000)
        .max_elapsed(Some(Duration::from_millis(300)))
        .build();
    let sent = client(&MemoryJournal::new())
        .post(&url)
        .header("x-fail-first", "1000000")
        .header("x-work-ms", "100")
        .body("x")
        .intent("deadline")
        .retry(policy)
        .send()
        .await;
    // The last attempt ends with its 503, or is cut by the deadline (which
    // bounds the attempt in flight too).
    let attempts = match sent {
        Ok(sent) => {
            assert_eq!(sent.response.status(), 503);
            sent.attempts
        }
        Err(ClientError::Http { attempts, source }) if source.is_timeout() => attempts,
        Err(other) => panic!("{other:?}"),
    };
    assert!((2..=5).contains(&attempts), "{attempts} attempts");
    assert_eq!(counters.charges.load(Ordering::SeqCst), 0);
}

/// A replayed answer is what the server stored for the key: retrying it
/// would only get it again, so it is final whatever its status.
#[tokio::test]
async fn a_replayed_answer_is_final_even_with_a_retryable_status() {
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "0")],
                "slow down",
            )
        }
    };
    // This server stores every status it may (a 429 included).
    let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
        .single_tenant()
        .store_status(|_| true)
        .build();
    let app = Router::new().route("/payments", post(handler)).layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let sent = client(&MemoryJournal::new())
        .post(format!("http://{addr}/payments"))
        .body("order-9")
        .intent("order-9")
        .send()
        .await;
    match sent {
        Err(ClientError::Rejected {
            status,
            headers,
            body,
            attempts,
            ..
        }) => {
            assert_eq!(status, 429);
            assert_eq!(headers["idempotent-replayed"], "true");
            assert_eq!(body, "slow down");
            assert_eq!(attempts, 2, "the first answer, then its replay");
        }
        other => panic!("expected the replayed 429, got {other:?}"),
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A journal that records intents but cannot record their answers (a full
/// disk, say).
#[derive(Clone, Default)]
struct AnswersFail(MemoryJournal);

#[async_trait::async_trait]
impl Journal for AnswersFail {
    async fn begin(&self, intent: Intent) -> Result<Intent, JournalError> {
        self.0.begin(intent).await
    }
    async fn finish(&self, _name: &str) -> Result<(), JournalError> {
        Err(JournalError::new("disk full"))
    }
    async fn pending(&self) -> Result<Vec<Intent>, JournalError> {
        self.0.pending().await
    }
    async fn prune(&self, before: std::time::SystemTime) -> Result<usize, JournalError> {
        self.0.prune(before).await
    }
}

/// The server ran the request: its answer reaches the caller even when
/// the journal cannot record it. The intent stays pending, and sending it
/// again reuses its key, so the server replays instead of charging again.
#[tokio::test]
async fn an_answer_the_journal_cannot_record_is_still_returned() {
    let (url, counters) = server().await;
    let journal = AnswersFail::default();
    let client = IdempotentClient::builder()
        .journal(journal.clone())
        .retry(fast().build())
        .build()
        .unwrap();
    let send = || client.post(&url).body("order-9").intent("order-9").send();
    let first = send()
        .await
        .expect("the server's answer, not a journal error");
    assert_eq!(first.response.status(), 201);
    assert_eq!(journal.pending().await.unwrap().len(), 1, "still pending");
    let again = send().await.unwrap();
    assert_eq!(again.key, first.key, "the pending intent's key");
    assert_eq!(
        again.response.headers()["idempotent-replayed"],
        "true",
        "the server replays its stored answer"
    );
    assert_eq!(counters.charges.load(Ordering::SeqCst), 1);
}

/// One `Content-Type` is sent, as with plain reqwest: the caller's, whether
/// it comes before or after the JSON body, else `application/json`.
#[tokio::test]
async fn a_json_body_and_a_content_type_send_one_content_type() {
    async fn types(headers: HeaderMap) -> String {
        let types: Vec<_> = headers
            .get_all("content-type")
            .iter()
            .map(|value| value.to_str().unwrap().to_owned())
            .collect();
        types.join(" | ")
    }
    let app = Router::new().route("/types", post(types));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/types", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let journal = MemoryJournal::new();
    let client = client(&journal);
    let patch = "application/merge-patch+json";
    let body = serde_json::json!({ "amount": 1 });
    let received = |request: idempotent_client::RequestBuilder| async move {
        request.send().await.unwrap().response.text().await.unwrap()
    };
    let before = client.post(&url).header("content-type", patch).json(&body);
    assert_eq!(received(before).await, patch);
    let after = client.post(&url).json(&body).header("Content-Type", patch);
    assert_eq!(received(after).await, patch);
    assert_eq!(
        received(client.post(&url).json(&body)).await,
        "application/json"
    );
}

/// The overall deadline (`max_elapsed`) bounds the attempt in flight too, not
/// only when a retry may start: against a server that never answers, a 1 s
/// deadline ends the send after about 1 s, not after the 10 s attempt timeout.
#[tokio::test]
async fn the_overall_deadline_cuts_an_attempt_that_outlives_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/payments", listener.local_addr().unwrap());
    // Accepts connections and never answers.
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let client = IdempotentClient::builder()
        .journal(MemoryJournal::new())
        .attempt_timeout(Duration::from_secs(10))
        .retry(fast().max_elapsed(Some(Duration::from_secs(1))).build())
        .build()
        .unwrap();
    let started = std::time::Instant::now();
    let sent = client
        .post(&url)
        .body("x")
        .intent("never-answered")
        .send()
        .await;
    let took = started.elapsed();
    assert!(
        matches!(&sent, Err(ClientError::Http { source, .. }) if source.is_timeout()),
        "{sent:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "ended after {took:?}"
    );
}

/// A `422` that is not the server's key-reused answer (a value the
/// application refuses, here axum's own `Json` rejection, behind the real
/// layer) is `Rejected` with the answer's status and body, not `KeyReused`; a problem
/// of the IETF draft's kind from another server is `KeyReused`.
#[tokio::test]
async fn only_the_key_reused_problem_is_key_reused_not_any_422() {
    #[derive(serde::Deserialize)]
    struct Payment {
        #[allow(dead_code)]
        amount: u64,
    }
    async fn pay(axum::Json(_): axum::Json<Payment>) -> StatusCode {
        StatusCode::CREATED
    }
    async fn other_server() -> Response {
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            [("content-type", "application/problem+json")],
            r#"{"type": "https://developer.example.com/idempotency", "title": "Idempotency-Key is already used"}"#,
        )
            .into_response()
    }
    let app = Router::new()
        .route("/payments", post(pay))
        .layer(
            IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
                .single_tenant()
                .build(),
        )
        .route("/elsewhere", post(other_server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = client(&MemoryJournal::new());

    let refused = client
        .post(format!("{base}/payments"))
        .json(&serde_json::json!({ "amount": -1 }))
        .key("bad-value")
        .send()
        .await;
    match refused {
        Err(ClientError::Rejected {
            status,
            body,
            key,
            attempts,
            ..
        }) => {
            assert_eq!(status, 422);
            assert!(
                String::from_utf8_lossy(&body).contains("amount"),
                "axum's own message: {body:?}"
            );
            assert_eq!(key.as_deref(), Some("bad-value"));
            assert_eq!(attempts, 1, "final: not retried");
        }
        other => panic!("expected the application's 422, got {other:?}"),
    }

    let elsewhere = client
        .post(format!("{base}/elsewhere"))
        .body("x")
        .key("used-elsewhere")
        .send()
        .await;
    assert!(
        matches!(&elsewhere, Err(ClientError::KeyReused { key, .. }) if key == "used-elsewhere"),
        "{elsewhere:?}"
    );
}
