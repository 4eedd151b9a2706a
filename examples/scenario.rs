//! The demo's scenario, shared with its test: payments through the retrying
//! client and the fault-injecting proxy to the payments app, protected or
//! not, counted against the server's ledger.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use idempotent_client::{IdempotentClient, MemoryJournal, RetryBudget, RetryPolicy};
use tokio::sync::Semaphore;

use crate::fault_proxy::{self, Faults};
use crate::payments::{Config, LedgerEntry, Payment, StoreChoice, app};

/// What one run counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// Attempts the client made, over every intent.
    pub attempts: u64,
    /// Intents that ended with a 2xx answer the caller could read.
    pub succeeded: u64,
    /// Charges the server executed (its ledger).
    pub charges: usize,
    /// Charges beyond the first for the same key.
    pub duplicates: usize,
    /// Callers holding a receipt that is not their key's one charge.
    pub wrong_receipts: usize,
}

async fn serve(store: StoreChoice, protected: bool) -> SocketAddr {
    let config = Config {
        store,
        work: Duration::from_millis(5),
        protected,
        ..Config::default()
    };
    let router = app(&config).await.expect("the app starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

/// Sends `intents` payments, `concurrency` at a time, through a proxy with
/// `faults`, to the app on the in-memory store, with or without the
/// idempotency layer.
pub async fn run(intents: u64, concurrency: usize, faults: Faults, protected: bool) -> Run {
    let scenario = Scenario {
        intents,
        concurrency,
        faults,
        protected,
        store: StoreChoice::Memory,
        retry_for: Duration::ZERO,
    };
    run_with(scenario, std::future::ready(())).await
}

/// A run's settings, for [`run_with`].
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Payments sent, one intent each.
    pub intents: u64,
    /// How many are in progress at once.
    pub concurrency: usize,
    /// What the proxy does to connections.
    pub faults: Faults,
    /// Whether the routes sit behind the idempotency layer.
    pub protected: bool,
    /// Where idempotency records live.
    pub store: StoreChoice,
    /// How long the client keeps retrying an intent, beyond the default 30
    /// attempts (a run with a store outage needs its intents to outlast it).
    pub retry_for: Duration,
}

/// Runs `scenario`, with `during` running beside the payments (a store
/// outage, say).
pub async fn run_with(scenario: Scenario, during: impl std::future::Future<Output = ()>) -> Run {
    let Scenario {
        intents,
        concurrency,
        faults,
        protected,
        store,
        retry_for,
    } = scenario;
    let server = serve(store, protected).await;
    let (proxy, _) = fault_proxy::start(server, faults)
        .await
        .expect("the proxy starts");
    // aws-lc-rs, as `idempotent_client::default_http_client` installs it.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // One request per connection, so the proxy's faults apply per attempt.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("an HTTP client");
    let client = IdempotentClient::builder()
        .journal(MemoryJournal::new())
        .http_client(http)
        .retry(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(5))
                .max_interval(Duration::from_millis(100))
                // About 50 ms apart on average (full jitter under 100 ms).
                .max_attempts(
                    30_u32.max(u32::try_from(retry_for.as_millis() / 50).unwrap_or(u32::MAX)),
                )
                .jitter_seed(faults.seed)
                .build(),
        )
        // 40% of attempts fail here on purpose: more than the default
        // budget (made to stop retry storms during outages) would allow.
        .retry_budget(RetryBudget::unlimited())
        .attempt_timeout(Duration::from_secs(2))
        .build()
        .expect("the client");
    let permits = Arc::new(Semaphore::new(concurrency));
    let sending = async {
        let mut sends = Vec::new();
        for i in 0..intents {
            let permit = Arc::clone(&permits).acquire_owned().await.expect("open");
            let client = client.clone();
            let url = format!("http://{proxy}/payments");
            sends.push(tokio::spawn(async move {
                let sent = client
                    .post(url)
                    .json(&serde_json::json!({ "amount": 1000 + i, "currency": "USD" }))
                    .intent(format!("payment-{i}"))
                    .send()
                    .await;
                drop(permit);
                sent
            }));
        }
        sends
    };
    let (sends, ()) = tokio::join!(sending, during);
    let mut attempts = 0;
    let mut succeeded = 0;
    let mut receipts: HashMap<String, Payment> = HashMap::new();
    for send in sends {
        let Ok(Ok(sent)) = send.await else { continue };
        attempts += u64::from(sent.attempts);
        if sent.response.status().is_success() {
            let key = sent.key.clone().unwrap_or_default();
            if let Ok(payment) = sent.response.json::<Payment>().await {
                succeeded += 1;
                receipts.insert(key, payment);
            }
        }
    }
    // Charges that were still running when their caller moved on finish.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let ledger: Vec<LedgerEntry> = reqwest::get(format!("http://{server}/payments"))
        .await
        .expect("the ledger")
        .json()
        .await
        .expect("a ledger");
    let mut per_key: HashMap<String, Vec<&Payment>> = HashMap::new();
    for entry in &ledger {
        let key = entry.idempotency_key.clone().unwrap_or_default();
        per_key.entry(key).or_default().push(&entry.payment);
    }
    let duplicates = per_key.values().map(|charges| charges.len() - 1).sum();
    // Every caller must hold the one charge made for its key.
    let wrong_receipts = receipts
        .iter()
        .filter(|(key, payment)| {
            per_key
                .get(*key)
                .is_none_or(|c| c.len() != 1 || c[0] != *payment)
        })
        .count();
    Run {
        attempts,
        succeeded,
        charges: ledger.len(),
        duplicates,
        wrong_receipts,
    }
}
