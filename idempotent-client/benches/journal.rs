//! The cost of the durable journal: intents per second through
//! `IdempotentClient` with a `FileJournal` (each intent committed to disk
//! before its first attempt) against plain reqwest, same requests, same
//! local server, at 1, 16 and 256 concurrent sends, in one run.
//!
//! Beside them, the **floor**: the same request sent by plain reqwest with
//! an `Idempotency-Key` header, between two hand-written redb commits of
//! its own file (one before the send, the intent's JSON, as `FileJournal`
//! writes it; one after, the same intent marked answered), so the same
//! bytes are written and fsynced per intent, with none of the client's
//! code. Its commits are one per write, each on a blocking thread: no group
//! commit, which is what the client adds with many sends in flight.
//!
//! Run: `cargo bench -p idempotent-client --bench journal`. Prints a
//! Markdown table (BENCHMARKS.md). With `--test` (as `cargo test --benches`
//! passes) it runs a few requests only, to check that it works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use idempotent_client::{IDEMPOTENCY_KEY, IdempotentClient, Intent, RetryBudget};
use redb::ReadableTable as _;
use tokio::sync::Semaphore;

async fn server() -> String {
    let app = Router::new().route("/payments", post(|| async { StatusCode::CREATED }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/payments")
}

/// Sends `total` requests, `concurrency` at a time, and returns requests per second.
async fn measure<F, Fut>(total: usize, concurrency: usize, send: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let permit = Arc::clone(&permits).acquire_owned().await.expect("open");
        let request = send(i);
        tasks.push(tokio::spawn(async move {
            request.await;
            drop(permit);
        }));
    }
    for task in tasks {
        task.await.expect("a request task");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

const INTENTS: redb::TableDefinition<'_, &str, &[u8]> = redb::TableDefinition::new("intents");

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One durable redb commit of `intent`, on a blocking thread: `begin`
/// also reads the name first (an existing intent is kept, as the client's
/// journal does).
async fn floor_commit(db: Arc<redb::Database>, intent: Intent, begin: bool) {
    tokio::task::spawn_blocking(move || {
        let bytes = serde_json::to_vec(&intent).expect("JSON");
        let tx = db.begin_write().expect("a write transaction");
        {
            let mut table = tx.open_table(INTENTS).expect("the table");
            if !begin || table.get(intent.name.as_str()).expect("read").is_none() {
                table
                    .insert(intent.name.as_str(), bytes.as_slice())
                    .expect("insert");
            }
        }
        tx.commit().expect("a durable commit");
    })
    .await
    .expect("the commit's thread");
}

fn main() {
    let test_mode =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let url = server().await;
        let dir = std::env::temp_dir().join(format!("idempotent-journal-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        // aws-lc-rs, as `idempotent_client::default_http_client` installs it.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::new();
        let journaled = IdempotentClient::builder()
            .journal_path(dir.join("bench.journal"))
            .http_client(http.clone())
            .retry_budget(RetryBudget::unlimited())
            .build()
            .expect("the client");
        let floor_db = Arc::new(
            redb::Database::create(dir.join("floor.redb")).expect("the floor's database"),
        );
        println!(
            "| concurrent sends | ours (intents/s) | floor (intents/s) | baseline (req/s) | ours / floor | ours / baseline | floor / baseline |"
        );
        println!("|---|---|---|---|---|---|---|");
        for (round, concurrency) in [1usize, 16, 256].into_iter().enumerate() {
            let total = if test_mode { 20 } else if concurrency == 1 { 2_000 } else { 20_000 };
            let plain = {
                let (http, url) = (http.clone(), url.clone());
                measure(total, concurrency, move |_| {
                    let request = http.post(&url).body("{\"amount\":1000}").send();
                    async move {
                        let response = request.await.expect("a response");
                        assert_eq!(response.status(), 201);
                    }
                })
                .await
            };
            let journal = {
                let (client, url) = (journaled.clone(), url.clone());
                measure(total, concurrency, move |i| {
                    let request = client
                        .post(url.clone())
                        .body("{\"amount\":1000}")
                        .intent(format!("bench-{round}-{i}"))
                        .send();
                    async move {
                        let sent = request.await.expect("sent");
                        assert_eq!(sent.response.status(), 201);
                    }
                })
                .await
            };
            let floor = {
                let (http, url, db) = (http.clone(), url.clone(), Arc::clone(&floor_db));
                measure(total, concurrency, move |i| {
                    let (http, url, db) = (http.clone(), url.clone(), Arc::clone(&db));
                    async move {
                        let mut intent = Intent {
                            name: format!("floor-{round}-{i}"),
                            key: uuid::Uuid::new_v4().to_string(),
                            method: "POST".to_owned(),
                            url: url.clone(),
                            headers: Vec::new(),
                            body: b"{\"amount\":1000}".to_vec(),
                            created_at_ms: now_ms(),
                            done: false,
                            answered_at_ms: 0,
                        };
                        floor_commit(Arc::clone(&db), intent.clone(), true).await;
                        let response = http
                            .post(&url)
                            .header(IDEMPOTENCY_KEY, &intent.key)
                            .body("{\"amount\":1000}")
                            .send()
                            .await
                            .expect("a response");
                        assert_eq!(response.status(), 201);
                        intent.done = true;
                        intent.answered_at_ms = now_ms();
                        floor_commit(db, intent, false).await;
                    }
                })
                .await
            };
            println!(
                "| {concurrency} | {journal:.0} | {floor:.0} | {plain:.0} | {:.0}% | {:.0}% | {:.0}% |",
                100.0 * journal / floor,
                100.0 * journal / plain,
                100.0 * floor / plain
            );
        }
        drop(journaled);
        drop(floor_db);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
