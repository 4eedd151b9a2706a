//! `payments-server --store redis://... --work-ms 3000`: Redis (with AOF)
//! stops while a charge runs and is back 3 s later. The first request gets
//! its 201, and its retry after Redis is back gets that same charge
//! replayed, never a second one.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::time::{Duration, Instant};

use examples::payments::LedgerEntry;
use redis_server::RedisServer;
use support::{ServerProcess, http_client};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_during_a_charge_then_back_the_retry_replays_it() {
    let mut redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let server = ServerProcess::with_args(&[
        "--addr",
        "127.0.0.1:0",
        "--store",
        &redis.url(),
        "--work-ms",
        "3000",
    ]);
    let client = http_client();
    let url = format!("{}/payments", server.base);
    let post = || {
        client
            .post(&url)
            .header("idempotency-key", "slow-charge")
            .json(&serde_json::json!({"amount": 1500, "currency": "USD"}))
            .send()
    };
    let first = tokio::spawn(post());
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| redis.shutdown());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), 201, "the charge ran: its caller gets it");
    let first: serde_json::Value = first.json().await.unwrap();
    tokio::task::block_in_place(|| redis.restart());

    let deadline = Instant::now() + Duration::from_secs(20);
    let retry = loop {
        let retry = post().await.unwrap();
        match retry.status().as_u16() {
            // Redis still coming back, or the result not stored yet.
            409 | 503 => {
                assert!(Instant::now() < deadline, "never settled");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break retry,
        }
    };
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let retry: serde_json::Value = retry.json().await.unwrap();
    assert_eq!(retry, first, "the same charge, replayed");
    let ledger: Vec<LedgerEntry> = client.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(ledger.len(), 1, "one charge: {ledger:?}");
}
