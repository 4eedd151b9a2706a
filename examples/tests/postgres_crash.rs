//! `payments-server --store postgres://...` SIGKILLed at random moments
//! while the retrying client sends 300 payments, restarted each time on the
//! same port: the ledger ends with exactly 300 rows, one per payment, and
//! every caller holds the answer of its own one charge. The charge and its
//! idempotency record commit in one transaction, so a kill either loses both
//! (the retry charges cleanly) or keeps both (the retry replays).

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use examples::payments::{LedgerEntry, Payment};
use idempotent_client::{IdempotentClient, MemoryJournal, RetryBudget, RetryPolicy};
use support::{PgSchema, ServerProcess, http_client};

const PAYMENTS: usize = 300;
const CONCURRENCY: usize = 8;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_at_random_moments_ends_with_one_ledger_row_per_payment() {
    let schema = PgSchema::create("crash").await;
    let store = schema.url();
    let addr = format!("127.0.0.1:{}", free_port());
    let start = {
        let (addr, store) = (addr.clone(), store.clone());
        move || ServerProcess::with_args(&["--addr", &addr, "--store", &store, "--work-ms", "40"])
    };
    let server = start();
    let base = server.base.clone();

    // The killer: SIGKILL at a random moment, restart at once, until the
    // client is done. Seeded, so a failure can be replayed.
    let done = Arc::new(AtomicBool::new(false));
    let killer = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(0x5eed);
            let mut server = server;
            let mut kills = 0;
            while !done.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(rng.u64(150..600))).await;
                if done.load(Ordering::Relaxed) {
                    break;
                }
                server.kill();
                kills += 1;
                server = tokio::task::spawn_blocking(start.clone()).await.unwrap();
            }
            (kills, server)
        })
    };

    // aws-lc-rs, as `idempotent_client::default_http_client` installs it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let client = Arc::new(
        IdempotentClient::builder()
            .journal(MemoryJournal::new())
            .retry(
                RetryPolicy::builder()
                    .initial_interval(Duration::from_millis(20))
                    .max_interval(Duration::from_millis(500))
                    .max_attempts(100)
                    .max_elapsed(Some(Duration::from_secs(120)))
                    .build(),
            )
            // Every request fails together at each kill: no budget here.
            .retry_budget(RetryBudget::unlimited())
            .attempt_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..PAYMENTS {
        let (client, permits, url) = (
            Arc::clone(&client),
            Arc::clone(&permits),
            format!("{base}/payments"),
        );
        sends.spawn(async move {
            let _permit = permits.acquire_owned().await.unwrap();
            let amount = 100 + i as u64;
            let sent = client
                .post(url)
                .json(&serde_json::json!({"amount": amount, "currency": "USD"}))
                .intent(format!("crash-{i}"))
                .send()
                .await
                .unwrap_or_else(|e| panic!("payment {i} failed: {e}"));
            let status = sent.response.status();
            let replayed = sent.response.headers().contains_key("idempotent-replayed");
            assert_eq!(status, 201, "payment {i}");
            let payment: Payment = sent.response.json().await.unwrap();
            assert_eq!(payment.amount, amount, "payment {i} got its own charge");
            let key = sent.key.expect("an intent carries a key");
            (key, payment, replayed, sent.attempts)
        });
    }
    let mut answers = Vec::new();
    while let Some(answer) = sends.join_next().await {
        answers.push(answer.unwrap());
    }
    done.store(true, Ordering::Relaxed);
    let (kills, server) = killer.await.unwrap();

    let ledger: Vec<LedgerEntry> = http_client()
        .get(format!("{}/payments", server.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retried = answers.iter().filter(|a| a.3 > 1).count();
    let replays = answers.iter().filter(|a| a.2).count();
    eprintln!(
        "{kills} kills; {retried} payments retried, {replays} answered by a replay; {} ledger rows",
        ledger.len()
    );
    assert!(kills >= 3, "the server was killed only {kills} times");
    assert!(retried > 0, "no payment was ever retried: the kills missed");
    assert_eq!(ledger.len(), PAYMENTS, "exactly one charge per payment");
    let by_key: HashMap<&str, &LedgerEntry> = ledger
        .iter()
        .map(|entry| (entry.idempotency_key.as_deref().unwrap(), entry))
        .collect();
    assert_eq!(by_key.len(), PAYMENTS, "one ledger row per key");
    for (key, payment, _, _) in &answers {
        let entry = by_key
            .get(key.as_str())
            .unwrap_or_else(|| panic!("no charge for key {key}"));
        assert_eq!(
            &entry.payment, payment,
            "the caller holds its own charge's answer"
        );
    }
    drop(server);
    drop(schema);
}
