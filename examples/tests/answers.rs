//! `payments-server` answers the same on every store: the layer's status
//! codes on memory and Redis, and the PostgreSQL same-transaction path,
//! which decides keys, bodies and replays through the same functions.
//! Each case runs against all three, over real HTTP.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::time::Duration;

use examples::payments::LedgerEntry;
use redis_server::RedisServer;
use reqwest::StatusCode;
use support::{PgSchema, ServerProcess, http_client};

/// One server per store, with 300 ms of work per charge (long enough to
/// meet a duplicate in progress).
async fn each_store(name: &str, check: impl AsyncFn(&str)) {
    let redis = RedisServer::start();
    let schema = PgSchema::create(&format!("answers_{name}")).await;
    for store in ["memory".to_owned(), redis.url(), schema.url()] {
        let server = ServerProcess::with_args(&[
            "--addr",
            "127.0.0.1:0",
            "--store",
            &store,
            "--work-ms",
            "300",
        ]);
        check(&server.base).await;
    }
}

struct Sent {
    status: StatusCode,
    replayed: bool,
    content_type: String,
    retry_after: Option<String>,
    body: String,
}

impl Sent {
    fn problem_type(&self) -> String {
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        let doc: serde_json::Value = serde_json::from_str(&self.body).unwrap();
        assert_eq!(doc["status"], self.status.as_u16());
        doc["type"].as_str().unwrap().to_owned()
    }
}

/// A `POST /payments` with these headers and body.
async fn post(base: &str, headers: &[(&str, &str)], body: &str) -> Sent {
    let mut request = http_client()
        .post(format!("{base}/payments"))
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    Sent {
        status: response.status(),
        replayed: header("idempotent-replayed").as_deref() == Some("true"),
        content_type: header("content-type").unwrap_or_default(),
        retry_after: header("retry-after"),
        body: response.text().await.unwrap(),
    }
}

async fn ledger(base: &str, token: Option<&str>) -> Vec<LedgerEntry> {
    let mut request = http_client().get(format!("{base}/payments"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

const JSON: (&str, &str) = ("content-type", "application/json");
const PAYMENT: &str = r#"{"amount": 1000, "currency": "USD"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_the_same_on_every_store() {
    each_store("keys", async |base| {
        let missing = post(base, &[JSON], PAYMENT).await;
        assert_eq!(missing.status, 400, "{base}");
        assert_eq!(missing.problem_type(), "urn:idempotent:problem:missing-key");

        let malformed = post(base, &[JSON, ("idempotency-key", "two words")], PAYMENT).await;
        assert_eq!(malformed.status, 400, "{base}");
        assert_eq!(
            malformed.problem_type(),
            "urn:idempotent:problem:malformed-key"
        );

        let twice = post(
            base,
            &[
                JSON,
                ("idempotency-key", "k-twice"),
                ("idempotency-key", "k-twice"),
            ],
            PAYMENT,
        )
        .await;
        assert_eq!(twice.status, 400, "a repeated header is refused on {base}");
        assert_eq!(twice.problem_type(), "urn:idempotent:problem:malformed-key");
        assert!(
            ledger(base, None).await.is_empty(),
            "nothing charged on {base}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_reuse_and_duplicates_in_progress_answer_the_same_on_every_store() {
    each_store("replays", async |base| {
        let key = [JSON, ("idempotency-key", "k-replay")];
        let first = post(base, &key, PAYMENT).await;
        assert_eq!(
            (first.status, first.replayed),
            (StatusCode::CREATED, false),
            "{base}"
        );
        assert!(
            first.body.starts_with(r#"{"id":"#),
            "the same fields in the same order on {base}: {}",
            first.body
        );
        let retry = post(base, &key, PAYMENT).await;
        assert_eq!(
            (retry.status, retry.replayed),
            (StatusCode::CREATED, true),
            "{base}"
        );
        assert_eq!(retry.body, first.body, "a byte-identical replay on {base}");

        let reused = post(base, &key, r#"{"amount": 2000, "currency": "USD"}"#).await;
        assert_eq!(reused.status, 422, "{base}");
        assert_eq!(reused.problem_type(), "urn:idempotent:problem:key-reused");
        // The same values written otherwise are another body, as the layer sees it.
        let respaced = post(base, &key, r#"{"amount":1000,"currency":"USD"}"#).await;
        assert_eq!(respaced.status, 422, "{base}");

        let key = [JSON, ("idempotency-key", "k-in-progress")];
        let (a, b) = tokio::join!(post(base, &key, PAYMENT), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            post(base, &key, PAYMENT).await
        });
        assert_eq!(a.status, 201, "{base}");
        assert_eq!(b.status, 409, "{base}");
        assert_eq!(b.problem_type(), "urn:idempotent:problem:in-progress");
        assert!(b.retry_after.is_some(), "{base}");
        assert_eq!(ledger(base, None).await.len(), 2, "two charges on {base}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_is_not_stored_and_a_business_refusal_is_on_every_store() {
    each_store("refusals", async |base| {
        let refusals = [
            ("text/plain", PAYMENT, 415),
            ("application/json", r#"{"amount": "#, 400),
            (
                "application/json",
                r#"{"amount": -1, "currency": "USD"}"#,
                422,
            ),
        ];
        for (i, (content_type, body, status)) in refusals.into_iter().enumerate() {
            let key = format!("k-refused-{i}");
            let headers = [("content-type", content_type), ("idempotency-key", &key)];
            let refused = post(base, &headers, body).await;
            assert_eq!(
                refused.status.as_u16(),
                status,
                "{content_type} {body} on {base}"
            );
            assert_eq!(
                refused.problem_type(),
                "urn:payments:problem:invalid-request"
            );
            let corrected = post(base, &[JSON, ("idempotency-key", &key)], PAYMENT).await;
            assert_eq!(
                (corrected.status, corrected.replayed),
                (StatusCode::CREATED, false),
                "the corrected retry of {content_type} {body} runs on {base}"
            );
        }

        let key = [JSON, ("idempotency-key", "k-currency")];
        let body = r#"{"amount": 1000, "currency": "usd"}"#;
        let invalid = post(base, &key, body).await;
        assert_eq!(
            (invalid.status, invalid.replayed),
            (StatusCode::UNPROCESSABLE_ENTITY, false)
        );
        assert_eq!(
            invalid.problem_type(),
            "urn:payments:problem:invalid-currency"
        );
        let again = post(base, &key, body).await;
        assert_eq!(
            (again.status, again.replayed),
            (StatusCode::UNPROCESSABLE_ENTITY, true),
            "the handler's own 422 is the answer, replayed on {base}"
        );
        assert_eq!(again.body, invalid.body);
        assert_eq!(ledger(base, None).await.len(), 3, "{base}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_have_keys_and_ledgers_of_their_own_on_every_store() {
    each_store("tenants", async |base| {
        let key = ("idempotency-key", "k-shared");
        let alice = post(
            base,
            &[JSON, key, ("authorization", "Bearer alice")],
            PAYMENT,
        )
        .await;
        let bob = post(base, &[JSON, key, ("authorization", "Bearer bob")], PAYMENT).await;
        let anonymous = post(base, &[JSON, key], PAYMENT).await;
        for sent in [&alice, &bob, &anonymous] {
            assert_eq!(
                (sent.status, sent.replayed),
                (StatusCode::CREATED, false),
                "{base}"
            );
        }
        assert_ne!(alice.body, bob.body, "two tenants, two charges on {base}");
        let again = post(
            base,
            &[JSON, key, ("authorization", "Bearer alice")],
            PAYMENT,
        )
        .await;
        assert_eq!(
            (again.status, again.body),
            (StatusCode::CREATED, alice.body.clone())
        );
        assert!(again.replayed);

        let alices = ledger(base, Some("alice")).await;
        assert_eq!(alices.len(), 1, "{base}");
        let charged: serde_json::Value = serde_json::from_str(&alice.body).unwrap();
        assert_eq!(alices[0].payment.id, charged["id"].as_str().unwrap());
        assert_eq!(ledger(base, Some("bob")).await.len(), 1);
        assert_eq!(ledger(base, None).await.len(), 1);
        assert!(ledger(base, Some("carol")).await.is_empty());

        let basic = post(
            base,
            &[JSON, key, ("authorization", "Basic YWxpY2U6")],
            PAYMENT,
        )
        .await;
        assert_eq!(basic.status, 401, "{base}");
        assert_eq!(basic.problem_type(), "urn:payments:problem:unauthorized");

        let unknown = http_client()
            .get(format!("{base}/nowhere"))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), 404);
        assert_eq!(
            unknown.headers()["content-type"],
            "application/problem+json"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_ids_stay_unique_across_restarts() {
    let mut ids = std::collections::HashSet::new();
    for _ in 0..2 {
        let server = ServerProcess::start("memory");
        for i in 0..3 {
            let key = format!("k-{i}");
            let sent = post(&server.base, &[JSON, ("idempotency-key", &key)], PAYMENT).await;
            let payment: serde_json::Value = serde_json::from_str(&sent.body).unwrap();
            let id = payment["id"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "{id} was given before the restart");
        }
        server.kill();
    }
}
