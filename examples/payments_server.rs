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

/// A payment API behind the idempotency layer: `POST /payments` charges
/// once per `Idempotency-Key`, `GET /payments` lists the ledger, `GET
/// /metrics` serves Prometheus text.
#[derive(clap::Parser)]
#[command(name = "payments-server", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// Where idempotency records live: memory, redis://HOST:PORT (or
    /// rediss://, redis+cluster://), or postgres://USER@HOST/DB (the ledger
    /// and the records then commit together).
    #[arg(long, default_value = "memory")]
    store: StoreChoice,
    /// Simulated work per charge, in milliseconds.
    #[arg(long = "work-ms", value_name = "N", default_value_t = 0)]
    work_ms: u64,
    /// Serve the same routes without idempotency, to show the duplicates it
    /// prevents.
    #[arg(long)]
    unprotected: bool,
    /// The most records the memory store keeps.
    #[arg(long = "memory-records", value_name = "N", default_value_t = idempotent_core::memory::DEFAULT_MAX_ENTRIES)]
    memory_records: usize,
}

impl Args {
    fn config(&self) -> Config {
        Config {
            store: self.store.clone(),
            work: Duration::from_millis(self.work_ms),
            protected: !self.unprotected,
            memory_records: Some(self.memory_records),
        }
    }
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
    let args = <Args as clap::Parser>::parse();
    let config = args.config();
    let router = match app(&config).await {
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
        config.store,
        if config.protected {
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
