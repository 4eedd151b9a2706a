//! `cargo run --example pay -- --url http://127.0.0.1:3000 [--count N]
//! [--concurrency C] [--journal PATH] [--intent-prefix P] [--via client|middleware]`
//!
//! Sends N payments, C at a time, through the retrying client: one intent
//! each, named `<prefix>-<i>`, so a run killed half-way and started again
//! with the same journal finishes the batch without charging any payment
//! twice. Prints sent, retried, succeeded (and of those, replayed: charged
//! by an earlier attempt or run), failed, and resumed (intents a killed run
//! left pending in the journal). `--via middleware` sends through a
//! reqwest-middleware stack instead: reqwest-tracing's middleware, then
//! this library's.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use idempotent_client::reqwest_middleware::{self, ClientWithMiddleware};
use idempotent_client::{
    ClientError, Delivery, IdempotencyMiddleware, IdempotentClient, Intent, IntentName,
    default_http_client,
};
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
    /// How to send: the client, or a reqwest-middleware stack (tracing,
    /// then idempotency) built by hand.
    #[arg(long, value_enum, default_value_t = Via::Client)]
    via: Via,
}

/// What payments are sent through.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Via {
    /// `IdempotentClient`.
    Client,
    /// A reqwest-middleware stack: `reqwest_tracing::TracingMiddleware`,
    /// then `IdempotencyMiddleware`.
    Middleware,
}

/// The sender built for `--via`.
#[derive(Clone)]
enum Sender {
    Client(IdempotentClient),
    Stack {
        http: ClientWithMiddleware,
        idempotency: IdempotencyMiddleware,
    },
}

impl Sender {
    fn new(via: Via, journal: &str) -> Result<Self, ClientError> {
        Ok(match via {
            Via::Client => Self::Client(IdempotentClient::builder().journal_path(journal).build()?),
            Via::Middleware => {
                let idempotency = IdempotencyMiddleware::builder()
                    .journal_path(journal)
                    .build()?;
                let http = reqwest_middleware::ClientBuilder::new(default_http_client()?)
                    .with(reqwest_tracing::TracingMiddleware::default())
                    .with(idempotency.clone())
                    .build();
                Self::Stack { http, idempotency }
            }
        })
    }

    async fn pending(&self) -> Result<Vec<Intent>, ClientError> {
        match self {
            Self::Client(client) => client.pending().await,
            Self::Stack { idempotency, .. } => idempotency.pending().await,
        }
    }

    /// Sends payment `i` as intent `intent`: its answer or error, and the
    /// attempts made.
    async fn pay(
        &self,
        url: &str,
        i: u64,
        intent: String,
    ) -> (Result<reqwest::Response, String>, u64) {
        let body = serde_json::json!({ "amount": amount(i), "currency": "USD" });
        match self {
            Self::Client(client) => {
                let sent = client.post(url).json(&body).intent(intent).send().await;
                match sent {
                    Ok(sent) => (Ok(sent.response), u64::from(sent.attempts)),
                    Err(error @ ClientError::Http { attempts, .. }) => {
                        (Err(error.to_string()), u64::from(attempts))
                    }
                    Err(error) => (Err(error.to_string()), 1),
                }
            }
            Self::Stack { http, .. } => {
                let request = match http.post(url).json(&body).build() {
                    Ok(request) => request,
                    Err(error) => return (Err(error.to_string()), 0),
                };
                let mut extensions = http::Extensions::new();
                extensions.insert(IntentName::new(intent));
                let result = http.execute_with_extensions(request, &mut extensions).await;
                let attempts = extensions.get::<Delivery>().map_or(1, |d| d.attempts);
                (result.map_err(|e| e.to_string()), u64::from(attempts))
            }
        }
    }
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
    let client = match Sender::new(args.via, &args.journal) {
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
            let (sent, attempts) = client.pay(&url, i, intent.clone()).await;
            tally.sent.fetch_add(attempts, Ordering::Relaxed);
            tally
                .retried
                .fetch_add(attempts.saturating_sub(1), Ordering::Relaxed);
            match sent {
                Ok(response) if response.status().is_success() => {
                    tally.succeeded.fetch_add(1, Ordering::Relaxed);
                    let replayed = response
                        .headers()
                        .get("idempotent-replayed")
                        .is_some_and(|value| value == "true");
                    if replayed {
                        tally.replayed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(response) => {
                    eprintln!("pay: {intent}: {}", response.status());
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
