//! `cargo run --example grpc-server -- [--addr 127.0.0.1:50051]
//! [--store memory|redis://...] [--work-ms N]`
//!
//! The gRPC payment service (`proto/payments.proto`) behind the idempotency
//! layer (see `examples/grpc.rs`). Call it with any gRPC client, the key in
//! the `idempotency-key` metadata entry, for example with grpcurl:
//!
//! ```sh
//! grpcurl -plaintext -import-path examples/proto -proto payments.proto \
//!   -H 'idempotency-key: order-42' -d '{"amount": 4200, "currency": "USD"}' \
//!   127.0.0.1:50051 payments.v1.Payments/Charge
//! ```
//!
//! Ctrl-C stops it: it takes no more calls, then waits (up to 30 s) for the
//! charges whose callers left to finish and store their replies.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use examples::grpc::{Charges, layer, serve};
use idempotent_core::Idempotency;
use idempotent_core::memory::MemoryStore;
use idempotent_core::redis::RedisStore;

/// The gRPC payment service behind the idempotency layer, the key in the
/// `idempotency-key` metadata entry.
#[derive(clap::Parser)]
#[command(name = "grpc-server", version)]
struct Args {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// Where idempotency records live: memory, or redis://HOST:PORT (or
    /// rediss://).
    #[arg(long, default_value = "memory")]
    store: String,
    /// Simulated work per charge, in milliseconds.
    #[arg(long = "work-ms", value_name = "N", default_value_t = 0)]
    work_ms: u64,
}

async fn runtime(store: &str) -> Result<Idempotency, String> {
    if store == "memory" {
        return Ok(Idempotency::new(MemoryStore::new()));
    }
    if store.starts_with("redis://") || store.starts_with("rediss://") {
        let store = RedisStore::builder()
            .url(store)
            .build()
            .await
            .map_err(|e| e.to_string())?;
        return Ok(Idempotency::new(store));
    }
    Err(format!("unknown store `{store}`"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .init();
    let args = <Args as clap::Parser>::parse();
    let runtime = match runtime(&args.store).await {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("grpc-server: cannot set up the store: {error}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(args.addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("grpc-server: cannot listen on {}: {error}", args.addr);
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(args.addr);
    let layer = layer(runtime);
    let tracker = layer.handler_tracker();
    println!(
        "grpc-server listening on http://{addr} (store: {})",
        args.store
    );
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let served = serve(
        listener,
        Charges::with_work(Duration::from_millis(args.work_ms)),
        layer,
        stop,
    )
    .await;
    // No more calls: the charges whose callers left finish and store their replies.
    let _ = tokio::time::timeout(Duration::from_secs(30), tracker.wait()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("grpc-server: {error}");
            ExitCode::FAILURE
        }
    }
}
