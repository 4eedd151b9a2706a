//! `cargo run --example pay -- --url http://127.0.0.1:3000 [--count N]
//! [--concurrency C] [--journal PATH] [--intent-prefix P]`
//!
//! Sends N payments, C at a time, through the retrying client: one intent
//! each, named `<prefix>-<i>`, so a run killed half-way and started again
//! with the same journal finishes the batch without charging any payment
//! twice. Prints sent, retried, succeeded (and of those, replayed: charged
//! by an earlier attempt or run), failed, and resumed (intents a killed run
//! left pending in the journal).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idempotent_client::IdempotentClient;
use tokio::sync::Semaphore;

/// Sends payments through the retrying client, one intent each, named
/// `<prefix>-<i>`: a run killed half-way and started again with the same
/// journal finishes the batch without charging any payment twice. Prints
/// sent, retried, succeeded (and of those, replayed: charged by an earlier
/// attempt or run), failed, and resumed (intents a killed run left pending
/// in the journal).
#[derive(clap::Parser)]
#[command(name = "pay", version)]
struct Args {
    /// The payments-server to pay, such as http://127.0.0.1:3000.
    #[arg(long, value_parser = http_url)]
    url: String,
    /// How many payments to send.
    #[arg(long, value_name = "N", default_value_t = 100)]
    count: u64,
    /// How many are in flight at once.
    #[arg(long, value_name = "C", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    concurrency: u16,
    /// The journal file: each intent's key, kept across runs.
    #[arg(long, value_name = "PATH", default_value = "pay.journal")]
    journal: String,
    /// Intents are named `<prefix>-<i>`.
    #[arg(long = "intent-prefix", value_name = "P", default_value = "payment")]
    prefix: String,
}

/// An http(s) URL, without a trailing `/`: checked before anything is
/// journaled, since a bad URL would leave every intent pending.
fn http_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {
            Ok(text.trim_end_matches('/').to_owned())
        }
        Ok(url) => Err(format!("`{}` is not an http(s) URL", url.scheme())),
        Err(error) => Err(format!("{error} (say http://host:port)")),
    }
}

/// The amount of payment `i`: the same on every run, so a re-run sends the
/// same request under the same key.
fn amount(i: u64) -> u64 {
    1000 + i
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    retried: AtomicU64,
    succeeded: AtomicU64,
    /// Succeeded with the server's stored answer (`Idempotent-Replayed`):
    /// charged by an earlier attempt or run, not this one.
    replayed: AtomicU64,
    failed: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let client = match IdempotentClient::builder()
        .journal_path(&args.journal)
        .build()
    {
        Ok(client) => client,
        Err(error) => {
            eprintln!("pay: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Intents of this batch a killed run left pending in the journal: this
    // run sends them again with their journaled keys.
    let resumed = match client.pending().await {
        Ok(pending) => {
            let batch = format!("{}-", args.prefix);
            pending
                .iter()
                .filter(|intent| {
                    intent
                        .name
                        .strip_prefix(&batch)
                        .and_then(|i| i.parse::<u64>().ok())
                        .is_some_and(|i| i < args.count)
                })
                .count()
        }
        Err(error) => {
            eprintln!("pay: cannot read the journal: {error}");
            return ExitCode::FAILURE;
        }
    };
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(usize::from(args.concurrency)));
    let url = format!("{}/payments", args.url);
    let mut tasks = Vec::new();
    for i in 0..args.count {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            break;
        };
        let (client, tally, url) = (client.clone(), Arc::clone(&tally), url.clone());
        let intent = format!("{}-{i}", args.prefix);
        tasks.push(tokio::spawn(async move {
            let sent = client
                .post(url)
                .json(&serde_json::json!({ "amount": amount(i), "currency": "USD" }))
                .intent(intent.clone())
                .send()
                .await;
            let attempts = match &sent {
                Ok(sent) => u64::from(sent.attempts),
                Err(idempotent_client::ClientError::Http { attempts, .. }) => u64::from(*attempts),
                Err(_) => 1,
            };
            tally.sent.fetch_add(attempts, Ordering::Relaxed);
            tally
                .retried
                .fetch_add(attempts.saturating_sub(1), Ordering::Relaxed);
            match sent {
                Ok(sent) if sent.response.status().is_success() => {
                    tally.succeeded.fetch_add(1, Ordering::Relaxed);
                    let replayed = sent
                        .response
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|value| value == "true");
                    if replayed {
                        tally.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(sent) => {
                    eprintln!("pay: {intent}: {}", sent.response.status());
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    eprintln!("pay: {intent}: {error}");
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let failed = tally.failed.load(Ordering::Relaxed);
    println!(
        "sent {}  retried {}  succeeded {} (replayed {})  failed {}  resumed {}",
        tally.sent.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
        tally.succeeded.load(Ordering::Relaxed),
        tally.replayed.load(Ordering::Relaxed),
        failed,
        resumed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
