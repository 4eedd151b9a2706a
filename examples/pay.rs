//! `cargo run --example pay -- --url http://127.0.0.1:3000 [--count N]
//! [--concurrency C] [--journal PATH] [--intent-prefix P]`
//!
//! Sends N payments, C at a time, through the retrying client: one intent
//! each, named `<prefix>-<i>`, so a run killed half-way and started again
//! with the same journal finishes the batch without charging any payment
//! twice. Prints sent, retried, succeeded and failed.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idempotent_client::IdempotentClient;
use tokio::sync::Semaphore;

const USAGE: &str = "usage: pay --url http://HOST:PORT [--count N] [--concurrency C] [--journal PATH] [--intent-prefix P]";

struct Args {
    url: String,
    count: u64,
    concurrency: usize,
    journal: String,
    prefix: String,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut parsed = Args {
        url: String::new(),
        count: 100,
        concurrency: 8,
        journal: "pay.journal".to_owned(),
        prefix: "payment".to_owned(),
    };
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => parsed.url = value()?.trim_end_matches('/').to_owned(),
            "--count" => parsed.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            "--concurrency" => {
                parsed.concurrency = value()?
                    .parse::<usize>()
                    .map_err(|e| format!("--concurrency: {e}"))?
                    .max(1);
            }
            "--journal" => parsed.journal = value()?,
            "--intent-prefix" => parsed.prefix = value()?,
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if parsed.url.is_empty() {
        return Err("--url is required".to_owned());
    }
    // Checked before anything is journaled: a bad URL would otherwise leave
    // every intent pending.
    match reqwest::Url::parse(&parsed.url) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => {}
        Ok(url) => return Err(format!("--url: `{}` is not an http(s) URL", url.scheme())),
        Err(error) => {
            return Err(format!(
                "--url `{}`: {error} (say http://host:port)",
                parsed.url
            ));
        }
    }
    Ok(parsed)
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
    failed: AtomicU64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("pay: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
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
    let tally = Arc::new(Tally::default());
    let permits = Arc::new(Semaphore::new(args.concurrency));
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
        "sent {}  retried {}  succeeded {}  failed {}",
        tally.sent.load(Ordering::Relaxed),
        tally.retried.load(Ordering::Relaxed),
        tally.succeeded.load(Ordering::Relaxed),
        failed
    );
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
