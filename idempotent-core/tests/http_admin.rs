//! The admin router on a real server on loopback, over each store (memory,
//! Redis, PostgreSQL): a record looked at, evicted (refused, then forced),
//! stuck work and counts, and errors as JSON with their status.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use idempotent_core::admin::Admin;
use idempotent_core::http::admin;
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Fingerprint, IdempotencyKey, Store};
use serde_json::{Value, json};
use support::postgres_schema::Schema;
use support::redis_server::RedisServer;

const FINGERPRINT: Fingerprint = Fingerprint::from_u128(7);

fn key(id: &str) -> StorageKey {
    StorageKey::new(
        "idem",
        "tenant-1",
        "shop.charge",
        &IdempotencyKey::parse(id).unwrap(),
    )
}

/// Serves `admin::router(store)` under `/admin` on a free port; its base URL.
async fn serve(store: impl Admin) -> String {
    let app = axum::Router::new().nest("/admin", admin::router(store));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/admin")
}

/// Sends `METHOD url` over a new connection (HTTP/1.1, closed after the
/// answer); the status and the JSON body, whose content type it checks.
async fn call(method: &str, url: &str) -> (StatusCode, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.strip_prefix("http://").unwrap();
    let (address, path) = rest.split_at(rest.find('/').unwrap());
    let mut connection = tokio::net::TcpStream::connect(address).await.unwrap();
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    connection.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    connection.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status: u16 = head[9..12].parse().unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{url}: {head}"
    );
    (
        StatusCode::from_u16(status).unwrap(),
        serde_json::from_str(body).unwrap(),
    )
}

async fn get(url: &str) -> (StatusCode, Value) {
    call("GET", url).await
}

async fn delete(url: &str) -> (StatusCode, Value) {
    call("DELETE", url).await
}

async fn session<S: Store + Admin + Clone>(store: S) {
    let lease = Duration::from_secs(60);
    let ClaimOutcome::Acquired(running) = store
        .claim(&key("order-1"), FINGERPRINT, lease)
        .await
        .unwrap()
    else {
        panic!("acquired");
    };
    let ClaimOutcome::Acquired(done) = store
        .claim(&key("order-2"), FINGERPRINT, lease)
        .await
        .unwrap()
    else {
        panic!("acquired");
    };
    store
        .complete(&key("order-2"), done.token, FINGERPRINT, b"receipt", lease)
        .await
        .unwrap();
    let base = serve(store.clone()).await;
    let record = |id: &str| format!("{base}/record?scope=tenant-1&operation=shop.charge&key={id}");

    let (status, body) = get(&record("order-1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["state"], "in_progress");
    assert_eq!(body["owner"], format!("{:032x}", running.token.as_u128()));
    let (status, body) = get(&record("order-2")).await;
    assert_eq!(
        (status, &body["response_bytes"]),
        (StatusCode::OK, &json!(7))
    );
    assert!(
        body.get("response").is_none(),
        "no body unless asked: {body}"
    );
    let (_, body) = get(&format!("{}&show_body=true", record("order-2"))).await;
    assert_eq!(body["response"], "receipt");
    let (status, body) = get(&record("order-3")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("no live record"),
        "{body}"
    );

    let (status, body) = get(&format!("{base}/stuck?older_than_ms=0")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["key"], "order-1");
    let (_, body) = get(&format!("{base}/stuck?older_than_ms=3600000")).await;
    assert_eq!(body, json!([]));
    let (status, body) = get(&format!("{base}/stats")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!([{"namespace": "idem", "operation": "shop.charge", "in_progress": 1, "completed": 1}])
    );

    let (status, body) = delete(&record("order-1")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["outcome"], "refused");
    let (status, body) = delete(&format!("{}&force=true", record("order-1"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"outcome": "evicted", "was_in_progress": true}));
    let late = store.renew(&key("order-1"), running.token, lease).await;
    assert!(
        late.unwrap_err().is_lease_lost(),
        "the evicted owner is fenced"
    );
    let (status, body) = delete(&record("order-2")).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"outcome": "evicted", "was_in_progress": false})
        )
    );
    let (status, body) = delete(&record("order-2")).await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!({"outcome": "absent"}))
    );

    // Bad input: a clear error, as JSON.
    let (status, body) = get(&format!("{base}/record?operation=shop.charge&key=a%20b")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("visible ASCII"),
        "{body}"
    );
    let (status, body) = get(&format!("{base}/record?key=k")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("operation"),
        "{body}"
    );
    let (status, _) = get(&format!("{base}/stuck?older_than_ms=soon")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_router_on_the_memory_store() {
    session(MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_router_on_redis() {
    let server = RedisServer::start();
    session(RedisStore::connect(&server.url()).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_router_on_postgres() {
    let schema = Schema::create("http_admin").await;
    session(schema.store().await).await;
}

/// A store that cannot be reached answers 503, as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_is_a_503() {
    let store = RedisStore::builder()
        .url("redis://127.0.0.1:1")
        .timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let base = serve(store).await;
    let (status, body) = get(&format!("{base}/stats")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        body["error"].as_str().unwrap().contains("unavailable"),
        "{body}"
    );
}
