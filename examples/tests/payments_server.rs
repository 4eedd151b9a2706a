//! End-to-end: the `payments-server` program, started as a process on a free
//! loopback port and spoken to over real HTTP: on the memory store, as two
//! processes sharing one real Redis, and on the machine's PostgreSQL.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::collections::HashMap;
use std::time::Duration;

use examples::payments::{LedgerEntry, StoreChoice};
use redis_server::RedisServer;
use support::{PgSchema, ServerProcess, http_client};

/// `payments-server --addr 127.0.0.1:0 ARGS...`, listening.
fn serve(args: &[&str]) -> ServerProcess {
    ServerProcess::with_args(&[&["--addr", "127.0.0.1:0"], args].concat())
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
    fifty_duplicates("memory").await;
}

/// The same on PostgreSQL, where the ledger is a table and each charge
/// commits with its record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_duplicates_on_postgres_make_one_ledger_row() {
    let schema = PgSchema::create("server_dups").await;
    fifty_duplicates(&schema.url()).await;
}

async fn fifty_duplicates(store: &str) {
    let server = serve(&["--store", store, "--work-ms", "50"]);
    let base = server.base.clone();
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
    // A request without a key is the same problem on either store.
    let keyless = client
        .post(format!("{base}/payments"))
        .json(&payment(4200))
        .send()
        .await
        .unwrap();
    assert_eq!(keyless.status(), 400);
    assert_eq!(
        keyless.headers()["content-type"],
        "application/problem+json"
    );
    assert!(keyless.text().await.unwrap().contains("missing-key"));
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
    let server = serve(&["--store", "memory"]);
    let base = server.base.clone();
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

/// A declared 20 MiB body is refused from its head: the 413 comes back
/// before a byte of the body is sent, as a client using `Expect:
/// 100-continue` would see it. (Sending the body regardless races the
/// server's close: a client can get a connection reset instead of the 413,
/// which is how HTTP/1.1 servers treat unread bodies, hyper included.)
#[tokio::test]
async fn a_20_mib_body_gets_413_and_charges_nothing() {
    declared_20_mib_body(&[]).await;
}

/// The same answer on PostgreSQL, where the handler reads the body itself.
#[tokio::test]
async fn a_20_mib_body_gets_413_on_postgres_too() {
    let schema = PgSchema::create("server_413").await;
    declared_20_mib_body(&["--store", &schema.url()]).await;
}

async fn declared_20_mib_body(args: &[&str]) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let server = serve(args);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /payments HTTP/1.1\r\nhost: {addr}\r\nidempotency-key: big\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        20 * 1024 * 1024
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buffer))
            .await
            .expect("the server answers from the head alone")
            .unwrap();
        assert!(n > 0, "closed without an answer: {answer:?}");
        answer.extend_from_slice(&buffer[..n]);
    }
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 413"), "{answer}");
    assert!(
        answer.contains("content-type: application/problem+json"),
        "{answer}"
    );
    drop(socket);
    assert!(ledger(&http_client(), &server.base).await.is_empty());
}

#[tokio::test]
async fn metrics_count_executions_replays_and_charges_in_prometheus_text() {
    let server = serve(&["--store", "memory"]);
    let client = http_client();
    for _ in 0..2 {
        let response = client
            .post(format!("{}/payments", server.base))
            .header("idempotency-key", "metered")
            .json(&payment(100))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
    }
    let response = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    // `name{labels} value` or `name value`, as Prometheus reads it.
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|line| {
                line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
            })
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
    };
    assert_eq!(value("idempotent_executed_total"), 1.0);
    assert_eq!(value("idempotent_replayed_total"), 1.0);
    assert_eq!(
        value("payments_charged_total"),
        1.0,
        "the replay charged nothing"
    );
    assert!(text.contains("idempotent_store_latency_seconds"), "{text}");
}

#[tokio::test]
async fn unprotected_duplicates_charge_twice() {
    // The problem the layer solves, shown on the same routes.
    let server = serve(&["--unprotected"]);
    let base = server.base.clone();
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
