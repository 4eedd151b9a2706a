//! `idempotent`: the operations of `idempotent_core::admin` from a shell,
//! against a Redis (standalone or cluster) or PostgreSQL store.
//!
//! ```text
//! idempotent --store redis://127.0.0.1:6379 inspect --operation shop.charge order-1
//! idempotent --store postgres://app@db/shop evict --operation shop.charge order-1 --force
//! idempotent --store redis+cluster://10.0.0.1:7000 stuck --older-than 30s
//! idempotent --store postgres://app@db/shop stats --json
//! ```
//!
//! Output is for people unless `--json`; a stored response is never
//! printed unless `--show-body` (responses can hold personal data). Exit
//! status: 0 done, 1 an error (the store, or bad input), 3 an eviction
//! refused (the record is in progress, and `--force` was not given).

mod args;
mod human;
mod store;

use std::process::ExitCode;

use clap::Parser as _;
use idempotent_core::admin::Eviction;

use args::{Args, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("idempotent: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The exit status of an eviction refused for a live lease.
const REFUSED: u8 = 3;

async fn run(args: Args) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let store = store::open(&args.store).await?;
    let json = args.json;
    match args.command {
        Command::Inspect { record, show_body } => {
            let key = record.storage_key()?;
            let found = store.inspect(&key, show_body).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", human::inspected(&key, found.as_ref(), show_body));
            }
        }
        Command::Evict { record, force } => {
            let key = record.storage_key()?;
            let eviction = store.evict(&key, force).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&eviction)?);
            } else {
                println!("{}", human::eviction(&key, &eviction));
            }
            if matches!(eviction, Eviction::Refused { .. }) {
                return Ok(ExitCode::from(REFUSED));
            }
        }
        Command::Stuck { older_than, limit } => {
            let stuck = store.stuck(older_than.0, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stuck)?);
            } else {
                print!("{}", human::stuck(&stuck, older_than.0));
            }
        }
        Command::Stats => {
            let counts = store.count().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&counts)?);
            } else {
                print!("{}", human::counts(&counts));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
