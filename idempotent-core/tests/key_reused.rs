//! A key reused with another payload is refused, whether the first call
//! finished or still runs.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation, idempotent};
use support::bank::Bank;

#[tokio::test]
async fn a_changed_payload_after_completion_is_key_reused() {
    let bank = Bank::new();
    bank.charge("pay-1", 1000).await.unwrap();
    let error = bank.charge("pay-1", 2000).await.unwrap_err();
    assert!(
        error.idempotency().is_some_and(|e| e.is_key_reused()),
        "{error:?}"
    );
    assert_eq!(bank.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_changed_payload_while_in_progress_is_key_reused() {
    let bank = Arc::new(Bank::new());
    let first = {
        let bank = Arc::clone(&bank);
        tokio::spawn(async move {
            bank.charge_waiting("pay-1", 1000, Duration::from_secs(1))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let error = bank
        .charge_waiting("pay-1", 9999, Duration::ZERO)
        .await
        .unwrap_err();
    assert!(
        error.idempotency().is_some_and(|e| e.is_key_reused()),
        "{error:?}"
    );
    assert_eq!(first.await.unwrap().unwrap().amount, 1000);
    assert_eq!(bank.runs(), 1);
}

#[tokio::test]
async fn a_reused_key_runs_nothing_and_the_first_payload_still_replays() {
    static OP: Operation = Operation::new("key_reused.engine");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let call = |amount: u64| {
        idem.call(&OP)
            .key("order-1")
            .payload(&("card", amount))
            .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
    };
    assert_eq!(call(1000).await.unwrap().value, 1);
    for amount in [1001, 0, 999] {
        let error = call(amount).await.unwrap_err();
        match &error {
            Error::KeyReused { operation, key } => {
                assert_eq!(operation, "key_reused.engine");
                assert_eq!(key, "order-1");
            }
            other => panic!("expected KeyReused, got {other:?}"),
        }
    }
    let replay = call(1000).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

struct Shop {
    idem: Idempotency,
    runs: AtomicUsize,
}

impl Shop {
    /// Only the amount is the payload: the note may change between retries.
    #[idempotent(key = id, runtime = self.idem, fingerprint = amount)]
    async fn charge(&self, id: &str, amount: u64, note: &str) -> Result<String, Error> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("run {run}: {amount} ({note})"))
    }

    /// Every argument but `trace_id` is the payload.
    #[idempotent(key = id, runtime = self.idem, skip(trace_id))]
    async fn refund(&self, id: &str, amount: u64, trace_id: u64) -> Result<String, Error> {
        let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(format!("run {run}: -{amount} [{trace_id}]"))
    }
}

#[tokio::test]
async fn only_the_fingerprinted_arguments_are_the_payload() {
    let shop = Shop {
        idem: Idempotency::new(MemoryStore::new()),
        runs: AtomicUsize::new(0),
    };
    let first = shop.charge("pay-1", 1000, "first try").await.unwrap();
    assert_eq!(first, "run 1: 1000 (first try)");
    assert_eq!(
        shop.charge("pay-1", 1000, "a retry").await.unwrap(),
        first,
        "a change outside the fingerprint is still a retry"
    );
    assert!(matches!(
        shop.charge("pay-1", 2000, "first try").await,
        Err(Error::KeyReused { .. })
    ));

    let refund = shop.refund("ref-1", 500, 1).await.unwrap();
    assert_eq!(shop.refund("ref-1", 500, 2).await.unwrap(), refund);
    assert!(matches!(
        shop.refund("ref-1", 501, 1).await,
        Err(Error::KeyReused { .. })
    ));
    assert_eq!(shop.runs.load(Ordering::SeqCst), 2);
}

/// Split amounts keyed by (account, card): JSON object keys must be
/// strings, so this payload cannot be serialized.
type Splits = std::collections::BTreeMap<(u32, u32), u64>;

struct Ledger {
    idem: Idempotency,
    runs: AtomicUsize,
}

impl Ledger {
    #[idempotent(key = id, runtime = self.idem)]
    async fn split(&self, id: &str, splits: Splits) -> Result<u64, Error> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(splits.values().sum())
    }
}

#[tokio::test]
async fn a_payload_that_cannot_be_serialized_is_refused_and_runs_nothing() {
    let ledger = Ledger {
        idem: Idempotency::new(MemoryStore::new()),
        runs: AtomicUsize::new(0),
    };
    // Two different payloads that fail to serialize at the same point: with
    // a fingerprint of what was written before the failure they would
    // collide, and the second would replay the first's answer.
    for amount in [1000, 2000] {
        let splits = Splits::from([((1, 2), amount)]);
        match ledger.split("split-1", splits).await {
            Err(Error::InvalidPayload { operation, detail }) => {
                assert!(operation.ends_with("Ledger::split"), "{operation}");
                assert!(detail.contains("key must be a string"), "{detail}");
            }
            other => panic!("expected InvalidPayload, got {other:?}"),
        }
    }
    assert_eq!(ledger.runs.load(Ordering::SeqCst), 0);

    // Through the engine's API too; the key was never claimed.
    static OP: Operation = Operation::new("key_reused.unserializable");
    let error = ledger
        .idem
        .call(&OP)
        .key("split-1")
        .payload(&Splits::from([((1, 2), 5)]))
        .run(async { Ok::<_, Error>(ledger.runs.fetch_add(1, Ordering::SeqCst)) })
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidPayload { .. }), "{error:?}");
    assert_eq!(ledger.runs.load(Ordering::SeqCst), 0);
    let fresh = ledger
        .idem
        .call(&OP)
        .key("split-1")
        .payload(&5)
        .run(async { Ok::<_, Error>(ledger.runs.fetch_add(1, Ordering::SeqCst)) })
        .await
        .unwrap();
    assert!(!fresh.replayed, "the refused call left nothing behind");
}

/// The argument that is the runtime (`runtime = rt`) is how the call runs,
/// not its payload: it is left out of the fingerprint without `skip`.
#[idempotent(key = id, runtime = rt)]
async fn pay(rt: &Idempotency, id: &str, amount: u64) -> Result<u64, Error> {
    let _ = rt;
    Ok(amount)
}

#[tokio::test]
async fn the_runtime_argument_is_not_part_of_the_payload() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(pay(&idem, "pay-1", 100).await.unwrap(), 100);
    assert_eq!(pay(&idem.clone(), "pay-1", 100).await.unwrap(), 100);
    assert!(matches!(
        pay(&idem, "pay-1", 200).await,
        Err(Error::KeyReused { .. })
    ));
}

/// An argument compiled out by `#[cfg]` is out of the fingerprint too (the
/// fingerprint named it, and did not compile); one compiled in is in it.
#[idempotent(key = id, runtime = rt)]
async fn pay_with_options(
    rt: &Idempotency,
    id: &str,
    #[cfg(not(test))] compiled_out: u64,
    #[cfg_attr(test, cfg(not(test)))] also_compiled_out: u64,
    #[cfg(test)] amount: u64,
) -> Result<u64, Error> {
    let _ = rt;
    Ok(amount)
}

#[tokio::test]
async fn arguments_compiled_out_are_left_out_of_the_payload() {
    let idem = Idempotency::new(MemoryStore::new());
    assert_eq!(pay_with_options(&idem, "pay-1", 100).await.unwrap(), 100);
    assert_eq!(pay_with_options(&idem, "pay-1", 100).await.unwrap(), 100);
    assert!(matches!(
        pay_with_options(&idem, "pay-1", 200).await,
        Err(Error::KeyReused { .. })
    ));
}
