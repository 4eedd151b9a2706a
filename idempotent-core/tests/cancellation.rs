//! A body that panics, or whose future is dropped (a cancelled request),
//! releases its key at once: a retry runs instead of waiting out the lease.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation};
use support::bank::Bank;
use support::faulty::{Fault, Faulty};
use support::timed_call;

#[tokio::test]
async fn a_panicking_body_releases_the_key() {
    let bank = Arc::new(Bank::new());
    let task = {
        let bank = Arc::clone(&bank);
        tokio::spawn(async move { bank.charge_or_panic("pay-1", 1000, true).await })
    };
    assert!(task.await.unwrap_err().is_panic());
    let receipt = bank.charge_or_panic("pay-1", 1000, false).await.unwrap();
    assert_eq!(
        receipt.charge, 2,
        "the retry ran instead of being told it is in progress"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_future_releases_the_key() {
    let bank = Bank::new();
    let cancelled = tokio::time::timeout(
        Duration::from_millis(10),
        bank.charge_slowly("pay-1", 1000, Duration::from_secs(5)),
    )
    .await;
    assert!(cancelled.is_err(), "the caller gave up");
    // Well within the 300 ms lease: the key is free because it was released.
    let receipt = bank
        .charge_slowly("pay-1", 1000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(receipt.charge, 2);
}

#[tokio::test(start_paused = true)]
async fn an_aborted_owner_hands_the_key_to_a_waiting_duplicate_at_once() {
    // The default lease is 30 s: only the release can free the key quickly.
    static OP: Operation = Operation::new("cancel.abort").wait(Duration::from_secs(60));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |work: Duration| tokio::spawn(timed_call(&idem, &OP, &runs, work));
    let owner = call(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let duplicate = call(Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate waits");

    let aborted_at = tokio::time::Instant::now();
    owner.abort();
    assert!(owner.await.unwrap_err().is_cancelled());
    let executed = duplicate.await.unwrap().unwrap();
    assert_eq!((executed.value, executed.replayed), (2, false));
    assert!(
        aborted_at.elapsed() < Duration::from_secs(1),
        "the waiter ran {:?} after the abort, not when the lease ran out",
        aborted_at.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_after_its_lease_was_renewed_releases_the_key() {
    static OP: Operation = Operation::new("cancel.renewed").lease(Duration::from_millis(300));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |work: Duration| timed_call(&idem, &OP, &runs, work);
    let owner = call(Duration::from_secs(60));
    let duplicate_meanwhile = async {
        // 2 s in, far past the 300 ms lease, renewal still holds the key...
        tokio::time::sleep(Duration::from_secs(2)).await;
        call(Duration::ZERO).await
    };
    // ... and then the owner's future is dropped (`select!` drops the loser).
    let duplicate = tokio::select! {
        biased;
        duplicate = duplicate_meanwhile => duplicate,
        _ = owner => panic!("the owner cannot finish its 60 s body"),
    };
    assert!(duplicate.unwrap_err().is_in_progress());
    let executed = call(Duration::ZERO).await.unwrap();
    assert_eq!(
        (executed.value, executed.replayed),
        (2, false),
        "the dropped owner released its renewed lease at once"
    );
}

#[derive(Debug, thiserror::Error)]
enum Declined {
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Idempotency(#[from] Error),
}

/// A caller that gives up while the key of its failed body is being
/// released (a timeout around the call) still frees the key: the retry
/// runs, instead of being told "in progress" for the whole hour-long lease.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_its_key_is_released_still_frees_the_key() {
    static OP: Operation = Operation::new("cancel.slow_release").lease(Duration::from_secs(3600));
    let idem = Idempotency::new(Faulty::new(Fault::SlowRelease(Duration::from_secs(1))));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("pay-1").run(async {
            runs.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(Declined::Declined)
        })
    };
    let gave_up = tokio::time::timeout(Duration::from_millis(100), call()).await;
    assert!(gave_up.is_err(), "the caller gave up during the release");
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    tokio::time::sleep(Duration::from_secs(2)).await;
    let retried = call().await;
    assert!(matches!(retried, Err(Declined::Declined)), "{retried:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 2, "the retry ran its body");
}
