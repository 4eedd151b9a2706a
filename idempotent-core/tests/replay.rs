//! One key, many calls: the body runs once and every call gets its value.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Done, Error, Idempotency, Operation, Store, idempotent};
use support::bank::Bank;

#[tokio::test]
async fn sequential_calls_with_one_key_run_the_body_once() {
    let bank = Bank::new();
    let first = bank.charge("pay-1", 1000).await.unwrap();
    for _ in 0..25 {
        assert_eq!(bank.charge("pay-1", 1000).await.unwrap(), first);
    }
    assert_eq!(bank.runs(), 1);
    assert_eq!(first.charge, 1);
}

#[tokio::test]
async fn the_caller_can_tell_a_replay_from_a_fresh_run() {
    static OP: Operation = Operation::new("replay.flag");
    let idem = Idempotency::new(MemoryStore::new());
    let mut flags = Vec::new();
    for _ in 0..3 {
        let executed = idem
            .call(&OP)
            .key("k")
            .payload(&1)
            .run(async { Ok::<_, Error>("value".to_owned()) })
            .await
            .unwrap();
        assert_eq!(executed.value, "value");
        flags.push(executed.replayed);
    }
    assert_eq!(flags, [false, true, true]);
}

#[tokio::test]
async fn a_call_run_without_a_key_is_its_own_error_and_the_body_does_not_run() {
    static OP: Operation = Operation::new("replay.no_key");
    let idem = Idempotency::new(MemoryStore::new());
    let mut ran = false;
    let error = idem
        .call(&OP)
        .payload(&1)
        .run(async {
            ran = true;
            Ok::<_, Error>(1)
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::MissingKey { operation } if operation == "replay.no_key"),
        "{error:?}"
    );
    assert!(error.to_string().contains(".key(...)"), "{error}");
    assert!(!ran, "the body did not run");
}

#[tokio::test]
async fn a_malformed_key_is_refused_and_the_body_does_not_run() {
    let bank = Bank::new();
    for bad in ["", "with space", "naïve", &"k".repeat(256)] {
        let error = bank.charge(bad, 1).await.unwrap_err();
        assert!(
            matches!(error.idempotency(), Some(Error::InvalidKey(_))),
            "{bad:?}: {error:?}"
        );
    }
    assert_eq!(bank.runs(), 0);
}

static CHARGE: Operation = Operation::new("replay.charge");

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Receipt {
    run: usize,
    lines: Vec<(String, Option<u64>)>,
    note: String,
}

async fn charge(idem: &Idempotency, runs: &AtomicUsize, key: &str) -> Done<Receipt> {
    idem.call(&CHARGE)
        .key(key)
        .scope("tenant-1")
        .payload(&("card", 1000))
        .run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Error>(Receipt {
                run,
                lines: vec![
                    ("coffee ☕".to_owned(), Some(350)),
                    ("tip".to_owned(), None),
                ],
                note: "quote \" backslash \\ newline \n".to_owned(),
            })
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn n_sequential_engine_calls_run_the_body_once_and_replay_it_exactly() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let first = charge(&idem, &runs, "order-1").await;
    assert!(!first.replayed);
    for _ in 0..50 {
        let again = charge(&idem, &runs, "order-1").await;
        assert!(again.replayed);
        assert_eq!(
            again.value, first.value,
            "the stored value, field for field"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn every_handle_on_a_shared_store_replays_what_another_ran() {
    // Two services (two processes on one Redis, say) built on one store.
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = Idempotency::builder_shared(Arc::clone(&store)).build();
    let b = Idempotency::builder_shared(store).build();
    let runs = AtomicUsize::new(0);
    let first = charge(&a, &runs, "order-1").await;
    let from_b = charge(&b, &runs, "order-1").await;
    assert!(from_b.replayed);
    assert_eq!(from_b.value, first.value);
    assert_eq!(
        charge(&a.clone(), &runs, "order-1").await.value,
        first.value
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

static FREE_RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = id, runtime = rt, skip(rt))]
async fn free_charge(rt: &Idempotency, id: u64, amount: u64) -> Result<(u64, usize), Error> {
    let run = FREE_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    Ok((amount, run))
}

#[tokio::test]
async fn a_free_function_with_a_runtime_argument_runs_once_per_key() {
    let rt = Idempotency::new(MemoryStore::new());
    let first = free_charge(&rt, 7, 1000).await.unwrap();
    for _ in 0..10 {
        assert_eq!(free_charge(&rt, 7, 1000).await.unwrap(), first);
    }
    let other = free_charge(&rt, 8, 1000).await.unwrap();
    assert_ne!(other, first);
    assert_eq!(FREE_RUNS.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_replayed_float_is_the_fresh_one_to_the_last_bit() {
    // Found by the `result_record` fuzz target: serde_json's default float
    // parser reads `0.9999999929999999` (what it writes for that f64) back
    // as the next f64, `0.999999993`.
    static OP: Operation = Operation::new("replay.float");
    let idem = Idempotency::new(MemoryStore::new());
    for (i, fresh) in [
        0.999_999_992_999_999_9_f64,
        0.999_999_993,
        0.1 + 0.2,
        1e-308,
    ]
    .into_iter()
    .enumerate()
    {
        let call = || {
            idem.call(&OP)
                .key(&format!("k{i}"))
                .run(async { Ok::<_, Error>(fresh) })
        };
        assert!(!call().await.unwrap().replayed);
        let replayed = call().await.unwrap();
        assert!(replayed.replayed);
        assert_eq!(replayed.value.to_bits(), fresh.to_bits(), "{fresh:?}");
    }
}
