//! `cargo run --example demo`: one process, no set-up. The payments server
//! runs on the in-memory store behind a fault-injecting proxy that drops
//! responses after the server handled them, resets connections and adds
//! delays. The same payments go through the retrying client twice: to the
//! routes without idempotency, then with the idempotency layer. The table
//! counts the charges each executed. The faults are seeded, so runs repeat
//! (up to the scheduling of concurrent requests).

use std::process::ExitCode;
use std::time::Duration;

use examples::fault_proxy::Faults;
use examples::scenario::run;

const INTENTS: u64 = 200;
const CONCURRENCY: usize = 16;
const FAULTS: Faults = Faults {
    drop_response: 0.30,
    reset: 0.10,
    max_delay: Duration::from_millis(20),
    seed: 0x5EED,
};

#[tokio::main]
async fn main() -> ExitCode {
    println!(
        "{INTENTS} payments, {CONCURRENCY} at a time, through a proxy that drops {:.0}% of \
         responses after the server handled them, resets {:.0}% of connections and delays \
         the rest by up to {} ms. The client retries with the same key each time.\n",
        FAULTS.drop_response * 100.0,
        FAULTS.reset * 100.0,
        FAULTS.max_delay.as_millis()
    );
    println!(
        "{:<26}{:>8}{:>10}{:>11}{:>10}{:>12}",
        "", "intents", "attempts", "succeeded", "charges", "duplicates"
    );
    let mut protected_ok = false;
    for (label, protected) in [
        ("without idempotency", false),
        ("with IdempotencyLayer", true),
    ] {
        let run = run(INTENTS, CONCURRENCY, FAULTS, protected).await;
        println!(
            "{label:<26}{INTENTS:>8}{:>10}{:>11}{:>10}{:>12}",
            run.attempts, run.succeeded, run.charges, run.duplicates
        );
        if protected {
            protected_ok = run.duplicates == 0
                && run.wrong_receipts == 0
                && run.succeeded == INTENTS
                && run.charges == INTENTS as usize;
        }
    }
    if protected_ok {
        println!(
            "\nWith the layer, every retry carried its intent's key: each payment was charged \
             once, and every caller holds the receipt of its one charge."
        );
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "BUG: the protected run charged a payment twice, missed one, or replayed a wrong receipt"
        );
        ExitCode::FAILURE
    }
}
