//! A completed record is kept for its TTL; after it, the key runs again.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{DEFAULT_TTL, Error, Idempotency, Operation};
use support::bank::Bank;

#[tokio::test(start_paused = true)]
async fn ttl_expiry_allows_a_new_execution() {
    let bank = Bank::new();
    let first = bank.charge_briefly("pay-1", 1000).await.unwrap();
    tokio::time::advance(Duration::from_millis(900)).await;
    assert_eq!(bank.charge_briefly("pay-1", 1000).await.unwrap(), first);
    tokio::time::advance(Duration::from_millis(200)).await;
    let second = bank.charge_briefly("pay-1", 1000).await.unwrap();
    assert_eq!(second.charge, 2);
    // Expired records may even come back with another payload.
    tokio::time::advance(Duration::from_millis(1100)).await;
    assert_eq!(bank.charge_briefly("pay-1", 5).await.unwrap().charge, 3);
}

#[tokio::test(start_paused = true)]
async fn the_runtime_ttl_applies_unless_the_operation_sets_one() {
    static DEFAULT: Operation = Operation::new("ttl.default");
    static LONG: Operation = Operation::new("ttl.long").ttl(Duration::from_secs(3600));
    let idem = Idempotency::builder(MemoryStore::new())
        .ttl(Duration::from_secs(10))
        .build();
    let runs = AtomicUsize::new(0);
    let call = |operation: &'static Operation| {
        idem.call(operation)
            .key("order-1")
            .payload(&1)
            .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
    };
    assert_eq!(call(&DEFAULT).await.unwrap().value, 1);
    assert_eq!(call(&LONG).await.unwrap().value, 2);
    tokio::time::advance(Duration::from_millis(9900)).await;
    assert!(
        call(&DEFAULT).await.unwrap().replayed,
        "within the 10 s runtime TTL"
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    let rerun = call(&DEFAULT).await.unwrap();
    assert_eq!((rerun.value, rerun.replayed), (3, false));
    let kept = call(&LONG).await.unwrap();
    assert_eq!(
        (kept.value, kept.replayed),
        (2, true),
        "the operation's 1 h TTL"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn the_default_ttl_is_a_day() {
    static OP: Operation = Operation::new("ttl.day");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP)
            .key("order-1")
            .payload(&1)
            .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
    };
    call().await.unwrap();
    tokio::time::advance(DEFAULT_TTL - Duration::from_secs(1)).await;
    assert!(call().await.unwrap().replayed);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!call().await.unwrap().replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
