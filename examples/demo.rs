//! `cargo run --example demo`: a flaky caller retries payments, with and
//! without `#[idempotent]`, and the ledger counts how often each charge ran.
//!
//! The caller gives up on an attempt when the answer is slow (the charge may
//! still be running) or lost (the charge ran, the response never arrived), and
//! tries again, exactly as a client behind a real network does. The faults are
//! drawn from a seeded generator, so every run shows the same figures.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use idempotent_core::{Idempotency, MemoryStore, idempotent};
use serde::{Deserialize, Serialize};

const PAYMENTS: usize = 200;
const MAX_ATTEMPTS: u32 = 8;
/// The caller's patience per attempt.
const TIMEOUT: Duration = Duration::from_millis(25);
/// One response in this many is lost after the charge ran.
const LOSS_ONE_IN: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Receipt {
    charge_id: u64,
    payment_id: String,
    amount: u64,
}

#[derive(Debug, thiserror::Error)]
enum BankError {
    #[error(transparent)]
    Idempotency(#[from] idempotent_core::Error),
}

struct Bank {
    idempotency: Idempotency,
    ledger: Mutex<Vec<Receipt>>,
}

impl Bank {
    /// The side effect: one ledger line per execution.
    async fn execute(&self, payment_id: &str, amount: u64, work: Duration) -> Receipt {
        tokio::time::sleep(work).await;
        let mut ledger = self.ledger.lock().expect("ledger lock");
        let receipt = Receipt {
            charge_id: ledger.len() as u64 + 1,
            payment_id: payment_id.to_owned(),
            amount,
        };
        ledger.push(receipt.clone());
        receipt
    }

    async fn charge_unprotected(
        &self,
        payment_id: &str,
        amount: u64,
        work: Duration,
    ) -> Result<Receipt, BankError> {
        Ok(self.execute(payment_id, amount, work).await)
    }

    /// The same charge, once per payment id. A retry that arrives while the
    /// first attempt still runs waits for it and gets its receipt.
    #[idempotent(key = payment_id, runtime = self.idempotency, wait = "5s", skip(work))]
    async fn charge(
        &self,
        payment_id: &str,
        amount: u64,
        work: Duration,
    ) -> Result<Receipt, BankError> {
        Ok(self.execute(payment_id, amount, work).await)
    }
}

/// A small deterministic generator (xorshift64*), so runs repeat.
struct Faults(u64);

impl Faults {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[derive(Default)]
struct Tally {
    attempts: u32,
    succeeded: usize,
    receipts: HashMap<String, Receipt>,
}

/// Sends every payment through a flaky link, retrying until an answer arrives.
async fn run(bank: Arc<Bank>, protected: bool, seed: u64) -> Tally {
    let mut faults = Faults(seed);
    let mut tally = Tally::default();
    for i in 0..PAYMENTS {
        let payment_id = format!("payment-{i}");
        let amount = 100 + i as u64;
        for _ in 0..MAX_ATTEMPTS {
            tally.attempts += 1;
            // Most charges are quick; one in four is slower than the caller's patience.
            let work = Duration::from_millis(if faults.next() % 4 == 0 { 40 } else { 2 });
            let lost = faults.next() % LOSS_ONE_IN == 0;
            let bank = Arc::clone(&bank);
            let id = payment_id.clone();
            // Spawned: a charge the caller gave up on keeps running, as on a server.
            let attempt = tokio::spawn(async move {
                if protected {
                    bank.charge(&id, amount, work).await
                } else {
                    bank.charge_unprotected(&id, amount, work).await
                }
            });
            match tokio::time::timeout(TIMEOUT, attempt).await {
                Ok(Ok(Ok(receipt))) if !lost => {
                    tally.succeeded += 1;
                    tally.receipts.insert(payment_id.clone(), receipt);
                    break;
                }
                // Lost response, timeout, or an error: try again.
                _ => continue,
            }
        }
    }
    // Let charges still running after the caller moved on finish.
    tokio::time::sleep(Duration::from_millis(100)).await;
    tally
}

fn new_bank() -> Arc<Bank> {
    Arc::new(Bank {
        idempotency: Idempotency::new(MemoryStore::new()),
        ledger: Mutex::new(Vec::new()),
    })
}

#[tokio::main]
async fn main() {
    println!(
        "{PAYMENTS} payments through a flaky link: 1 response in {LOSS_ONE_IN} lost, \
         1 charge in 4 slower than the caller's {} ms timeout; up to {MAX_ATTEMPTS} attempts each.\n",
        TIMEOUT.as_millis()
    );
    println!(
        "{:<24}{:>8}{:>10}{:>11}{:>12}{:>12}",
        "", "intents", "attempts", "succeeded", "charges", "duplicates"
    );
    let mut duplicates_when_protected = usize::MAX;
    let mut wrong_receipts = 0;
    for (label, protected) in [
        ("without #[idempotent]", false),
        ("with #[idempotent]", true),
    ] {
        let bank = new_bank();
        let tally = run(Arc::clone(&bank), protected, 0x5EED).await;
        let ledger = bank.ledger.lock().expect("ledger lock").clone();
        let charges = ledger.len();
        let mut per_payment: HashMap<&str, usize> = HashMap::new();
        for receipt in &ledger {
            *per_payment.entry(&receipt.payment_id).or_default() += 1;
        }
        let duplicates: usize = per_payment.values().map(|n| n - 1).sum();
        println!(
            "{label:<24}{PAYMENTS:>8}{:>10}{:>11}{charges:>12}{duplicates:>12}",
            tally.attempts, tally.succeeded
        );
        if protected {
            duplicates_when_protected = duplicates;
            // Every caller holds the receipt of its payment's one charge.
            wrong_receipts = tally
                .receipts
                .values()
                .filter(|r| ledger.get(r.charge_id as usize - 1) != Some(r))
                .count();
        }
    }
    if duplicates_when_protected == 0 && wrong_receipts == 0 {
        println!(
            "\nWith the attribute, every retry carried its payment id: each payment was charged \
             once, and every caller holds the receipt of its one charge."
        );
    } else {
        eprintln!("BUG: the protected run charged a payment twice or replayed a wrong receipt");
        std::process::exit(1);
    }
}
