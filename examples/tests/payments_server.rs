//! End-to-end: the payments app over real HTTP on loopback, in-process and
//! as separate `payments-server` processes sharing one real Redis, and on the
//! machine's PostgreSQL.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use examples::payments::{Config, LedgerEntry, StoreChoice, app};
use redis_server::RedisServer;
use support::{PgSchema, ServerProcess, http_client};

/// Serves the app on a free loopback port, in this process.
async fn serve(config: Config) -> String {
    let router = app(&config).await.expect("the app starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

fn payment(amount: u64) -> serde_json::Value {
    serde_json::json!({ "amount": amount, "currency": "USD" })
}

async fn ledger(client: &reqwest::Client, base: &str) -> Vec<LedgerEntry> {
    client
        .get(format!("{base}/payments"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_charge_once_and_all_get_that_charge() {
    fifty_duplicates(StoreChoice::Memory).await;
}

/// The same on PostgreSQL, where the ledger is a table and each charge
/// commits with its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_on_postgres_make_one_ledger_row() {
    let schema = PgSchema::create("server_dups").await;
    fifty_duplicates(schema.url().parse().unwrap()).await;
}

async fn fifty_duplicates(store: StoreChoice) {
    let base = serve(Config {
        store,
        work: Duration::from_millis(50),
        ..Config::default()
    })
    .await;
    let client = http_client();
    // Wait mode is not on: duplicates that arrive while the first runs get
    // 409 and retry, as a client should.
    let sends = (0..50).map(|_| {
        let (client, base) = (client.clone(), base.clone());
        tokio::spawn(async move {
            loop {
                let response = client
                    .post(format!("{base}/payments"))
                    .header("idempotency-key", "order-42")
                    .json(&payment(4200))
                    .send()
                    .await
                    .unwrap();
                match response.status().as_u16() {
                    409 => tokio::time::sleep(Duration::from_millis(20)).await,
                    201 => return response.json::<serde_json::Value>().await.unwrap(),
                    other => panic!("unexpected status {other}"),
                }
            }
        })
    });
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.unwrap());
    }
    let entries = ledger(&client, &base).await;
    assert_eq!(entries.len(), 1, "one charge: {entries:?}");
    let charged = serde_json::to_value(&entries[0].payment).unwrap();
    assert!(
        answers.iter().all(|a| *a == charged),
        "every caller holds the one charge"
    );
}

#[tokio::test]
async fn a_replay_over_the_wire_is_byte_identical() {
    let base = serve(Config::default()).await;
    let client = http_client();
    let send = || {
        client
            .post(format!("{base}/payments"))
            .header("idempotency-key", "\"sf-string-key\"")
            .json(&payment(100))
            .send()
    };
    let first = send().await.unwrap();
    let (first_status, first_headers) = (first.status(), first.headers().clone());
    assert_eq!(first_status, 201);
    let first_body = first.bytes().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), first_status);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert!(first_headers.get("idempotent-replayed").is_none());
    for (name, value) in &first_headers {
        if name != "date" {
            assert_eq!(again.headers().get(name), Some(value), "header {name}");
        }
    }
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(ledger(&client, &base).await.len(), 1);
}

#[tokio::test]
async fn a_20_mib_body_gets_413_and_charges_nothing() {
    let base = serve(Config::default()).await;
    let client = http_client();
    let huge = vec![b' '; 20 * 1024 * 1024];
    let response = client
        .post(format!("{base}/payments"))
        .header("idempotency-key", "big")
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert!(ledger(&client, &base).await.is_empty());
}

#[tokio::test]
async fn unprotected_duplicates_charge_twice() {
    // The problem the layer solves, shown on the same routes.
    let base = serve(Config {
        protected: false,
        ..Config::default()
    })
    .await;
    let client = http_client();
    for _ in 0..2 {
        let response = client
            .post(format!("{base}/payments"))
            .header("idempotency-key", "k")
            .json(&payment(100))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    assert_eq!(ledger(&client, &base).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_sharing_redis_charge_each_key_once() {
    let redis = RedisServer::start();
    let store = redis.url();
    assert!(matches!(
        store.parse::<StoreChoice>(),
        Ok(StoreChoice::Redis(_))
    ));
    let servers = [ServerProcess::start(&store), ServerProcess::start(&store)];
    let client = http_client();
    const KEYS: usize = 40;
    // Every key goes to both servers at once, several times.
    let mut sends = Vec::new();
    for key in 0..KEYS {
        for _round in 0..3 {
            for server in &servers {
                let (client, base) = (client.clone(), server.base.clone());
                sends.push(tokio::spawn(async move {
                    loop {
                        let response = client
                            .post(format!("{base}/payments"))
                            .header("idempotency-key", format!("key-{key}"))
                            .json(&payment(100 + key as u64))
                            .send()
                            .await
                            .unwrap();
                        match response.status().as_u16() {
                            409 => tokio::time::sleep(Duration::from_millis(10)).await,
                            201 => {
                                return (key, response.json::<serde_json::Value>().await.unwrap());
                            }
                            other => panic!("unexpected status {other}"),
                        }
                    }
                }));
            }
        }
    }
    let mut answers: HashMap<usize, Vec<serde_json::Value>> = HashMap::new();
    for send in sends {
        let (key, answer) = send.await.unwrap();
        answers.entry(key).or_default().push(answer);
    }
    let mut charges: HashMap<String, usize> = HashMap::new();
    for server in &servers {
        for entry in ledger(&client, &server.base).await {
            *charges.entry(entry.idempotency_key.unwrap()).or_default() += 1;
        }
    }
    assert_eq!(charges.len(), KEYS, "every key was charged");
    assert!(
        charges.values().all(|&n| n == 1),
        "one charge per key across both servers: {charges:?}"
    );
    for (key, answers) in answers {
        assert!(
            answers.windows(2).all(|w| w[0] == w[1]),
            "key {key}: every caller holds the same charge"
        );
    }
}
