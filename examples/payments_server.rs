//! `cargo run --example payments-server -- [--addr 127.0.0.1:3000]
//! [--store memory|redis://...|postgres://...] [--work-ms N] [--unprotected]
//! [--memory-records N]`
//!
//! A payment API behind the idempotency layer (see `examples/payments.rs`).
//! With a `postgres://` store the ledger is a table in that database and
//! each charge commits in one transaction with its idempotency record (see
//! `examples/payments_postgres.rs`); `options[search_path]=SCHEMA` in the
//! URL picks a schema.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use examples::payments::{Config, StoreChoice, app};

const USAGE: &str = "usage: payments-server [--addr 127.0.0.1:3000] [--store memory|redis://HOST:PORT|postgres://USER@HOST/DB] [--work-ms N] [--unprotected] [--memory-records N (default 100000)]";

struct Args {
    addr: SocketAddr,
    config: Config,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut addr: SocketAddr = ([127, 0, 0, 1], 3000).into();
    let mut config = Config::default();
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => addr = value()?.parse().map_err(|e| format!("--addr: {e}"))?,
            "--store" => config.store = value()?.parse::<StoreChoice>()?,
            "--work-ms" => {
                let ms = value()?.parse().map_err(|e| format!("--work-ms: {e}"))?;
                config.work = Duration::from_millis(ms);
            }
            "--unprotected" => config.protected = false,
            "--memory-records" => {
                let records = value()?
                    .parse()
                    .map_err(|e| format!("--memory-records: {e}"))?;
                config.memory_records = Some(records);
            }
            "--help" | "-h" => return Err(String::new()),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(Args { addr, config })
}

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings and errors on stderr: a store that cannot be reached, a
    // corrupt record.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_max_level(tracing::Level::WARN)
        .init();
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("payments-server: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let router = match app(&args.config).await {
        Ok(router) => router,
        Err(error) => {
            eprintln!("payments-server: cannot set up the store: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("payments-server: cannot listen on {}: {error}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.addr);
    // Tests and scripts wait for this line.
    println!(
        "payments-server listening on http://{addr} (store: {:?}, {})",
        args.config.store,
        if args.config.protected {
            "protected"
        } else {
            "UNPROTECTED"
        }
    );
    match axum::serve(listener, router).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("payments-server: {error}");
            ExitCode::FAILURE
        }
    }
}
