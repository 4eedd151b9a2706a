//! The cost of the durable journal: intents per second through
//! `IdempotentClient` with a `FileJournal` (each intent committed to disk
//! before its first attempt) against plain reqwest, same requests, same
//! local server, at 1, 16 and 256 concurrent sends, in one run.
//!
//! Run: `cargo bench -p idempotent-client --bench journal`. Prints a
//! Markdown table (BENCHMARKS.md). With `--test` (as `cargo test --benches`
//! passes) it runs a few requests only, to check that it works.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use idempotent_client::{IdempotentClient, RetryBudget};
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
        println!("| concurrent sends | plain reqwest (req/s) | with durable journal (intents/s) | ratio |");
        println!("|---|---|---|---|");
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
            println!(
                "| {concurrency} | {plain:.0} | {journal:.0} | {:.0}% |",
                100.0 * journal / plain
            );
        }
        drop(journaled);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let _ = std::fs::remove_dir_all(&dir);
    });
}
