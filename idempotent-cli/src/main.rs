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
    // The JSON or the text of an answer (both are small: computing the
    // one not printed costs nothing that matters).
    let show = |json: serde_json::Result<String>, text: String| -> serde_json::Result<()> {
        if args.json {
            println!("{}", json?);
        } else {
            print!("{text}");
        }
        Ok(())
    };
    match &args.command {
        Command::Inspect { record, show_body } => {
            let key = record.storage_key()?;
            let found = store.inspect(&key, *show_body).await?;
            let text = human::inspected(&key, found.as_ref(), *show_body);
            show(serde_json::to_string_pretty(&found), text)?;
        }
        Command::Evict { record, force } => {
            let key = record.storage_key()?;
            let eviction = store.evict(&key, *force).await?;
            show(
                serde_json::to_string_pretty(&eviction),
                human::eviction(&key, &eviction),
            )?;
            if matches!(eviction, Eviction::Refused { .. }) {
                return Ok(ExitCode::from(REFUSED));
            }
        }
        Command::Stuck { older_than, limit } => {
            let stuck = store.stuck(older_than.0, *limit).await?;
            show(
                serde_json::to_string_pretty(&stuck),
                human::stuck(&stuck, older_than.0),
            )?;
        }
        Command::Stats => {
            let counts = store.count().await?;
            show(
                serde_json::to_string_pretty(&counts),
                human::counts(&counts),
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
