//! Leases: a body that runs longer than its lease keeps it through renewal;
//! a lease that really runs out is taken over, and the stale owner's
//! completion is refused without overwriting the new owner's result.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, MIN_LEASE, Operation};
use support::bank::Bank;
use support::faulty::{Fault, Faulty};

#[tokio::test(start_paused = true)]
async fn a_body_longer_than_its_lease_keeps_it_through_renewal() {
    let bank = Arc::new(Bank::new());
    let first = {
        let bank = Arc::clone(&bank);
        // Lease 300 ms, body 2 s.
        tokio::spawn(async move {
            bank.charge_slowly("pay-1", 1000, Duration::from_secs(2))
                .await
        })
    };
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let duplicate = bank
            .charge_slowly("pay-1", 1000, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            duplicate.idempotency().is_some_and(Error::is_in_progress),
            "{duplicate:?}"
        );
    }
    let receipt = first.await.unwrap().unwrap();
    assert_eq!(receipt.charge, 1);
    assert_eq!(
        bank.charge_slowly("pay-1", 1000, Duration::ZERO)
            .await
            .unwrap(),
        receipt
    );
    assert_eq!(bank.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_lease_is_taken_over_and_the_stale_owner_cannot_overwrite() {
    let bank = Arc::new(Bank::with(Idempotency::new(Faulty::new(
        Fault::LostRenewals,
    ))));
    let stale = {
        let bank = Arc::clone(&bank);
        tokio::spawn(async move {
            bank.charge_slowly("pay-1", 1000, Duration::from_secs(1))
                .await
        })
    };
    // Past the 300 ms lease: the key is free for a retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let taken_over = bank
        .charge_slowly("pay-1", 1000, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(taken_over.charge, 2);

    let error = stale.await.unwrap().unwrap_err();
    assert!(
        error.idempotency().is_some_and(Error::is_lease_lost),
        "{error:?}"
    );
    // The record is still the new owner's.
    assert_eq!(
        bank.charge_slowly("pay-1", 1000, Duration::ZERO)
            .await
            .unwrap(),
        taken_over
    );
    assert_eq!(bank.runs(), 2);
}

/// Runs `work` under `operation` on `idem`, counting runs.
async fn run(
    idem: &Idempotency,
    operation: &Operation,
    runs: &AtomicUsize,
    work: Duration,
) -> Result<usize, Error> {
    idem.call(operation)
        .key("order-1")
        .payload(&1)
        .run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(work).await;
            Ok::<_, Error>(run)
        })
        .await
        .map(|executed| executed.value)
}

/// Every 100 ms, `count` times, a duplicate of a call running under
/// `operation`: each is told it is in progress, to retry within `lease`.
async fn duplicates_in_progress(
    idem: &Idempotency,
    operation: &Operation,
    runs: &AtomicUsize,
    count: usize,
    lease: Duration,
) {
    for _ in 0..count {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let error = run(idem, operation, runs, Duration::ZERO)
            .await
            .unwrap_err();
        let retry_after = error.retry_after().expect("in progress");
        assert!(
            retry_after <= lease,
            "retry_after {retry_after:?} is within the lease"
        );
    }
}

/// A zero lease would run out before its first renewal: it is
/// `MIN_LEASE`, renewed like any other, and a duplicate never runs.
#[tokio::test(start_paused = true)]
async fn a_zero_lease_is_the_minimum_lease_and_still_holds_the_key() {
    static OP: Operation = Operation::new("lease.zero").lease(Duration::ZERO);
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let owner = run(&idem, &OP, &runs, Duration::from_secs(1));
    let duplicates = duplicates_in_progress(&idem, &OP, &runs, 9, MIN_LEASE);
    let (owner, ()) = tokio::join!(owner, duplicates);
    assert_eq!(owner.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn duplicates_of_a_renewed_call_are_in_progress_and_never_run() {
    static OP: Operation = Operation::new("lease.renewed").lease(Duration::from_millis(300));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let owner = run(&idem, &OP, &runs, Duration::from_secs(2));
    let duplicates = duplicates_in_progress(&idem, &OP, &runs, 19, Duration::from_millis(300));
    let (owner, ()) = tokio::join!(owner, duplicates);
    assert_eq!(owner.unwrap(), 1);
    assert_eq!(run(&idem, &OP, &runs, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn the_runtime_lease_applies_unless_the_operation_sets_one() {
    static DEFAULT: Operation = Operation::new("lease.default");
    static LONG: Operation = Operation::new("lease.long").lease(Duration::from_secs(10));
    // Renewals never land, so each lease runs out after its first length.
    let idem = Idempotency::builder(Faulty::new(Fault::LostRenewals))
        .lease(Duration::from_millis(300))
        .build();
    for (operation, taken_over) in [(&DEFAULT, true), (&LONG, false)] {
        let runs = AtomicUsize::new(0);
        let owner = run(&idem, operation, &runs, Duration::from_secs(1));
        let duplicate = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            run(&idem, operation, &runs, Duration::ZERO).await
        };
        let (owner, duplicate) = tokio::join!(owner, duplicate);
        if taken_over {
            assert_eq!(duplicate.unwrap(), 2, "the 300 ms runtime lease ran out");
            assert!(owner.unwrap_err().is_lease_lost());
        } else {
            assert!(
                duplicate.unwrap_err().is_in_progress(),
                "the 10 s lease holds"
            );
            assert_eq!(owner.unwrap(), 1);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_stale_owner_is_told_which_key_it_lost() {
    static OP: Operation = Operation::new("lease.stale").lease(Duration::from_millis(300));
    let idem = Idempotency::new(Faulty::new(Fault::LostRenewals));
    let runs = AtomicUsize::new(0);
    let stale = run(&idem, &OP, &runs, Duration::from_secs(1));
    let new_owner = async {
        // Takes over at 900 ms and runs until 1.1 s (within its own lease):
        // the stale owner tries to complete at 1 s, while it runs.
        tokio::time::sleep(Duration::from_millis(900)).await;
        run(&idem, &OP, &runs, Duration::from_millis(200)).await
    };
    let (stale, new_owner) = tokio::join!(stale, new_owner);
    match stale {
        Err(Error::LeaseLost { key }) => assert_eq!(key, "order-1"),
        other => panic!("expected LeaseLost, got {other:?}"),
    }
    // The new owner finished after the stale one; its value is the record.
    assert_eq!(new_owner.unwrap(), 2);
    assert_eq!(run(&idem, &OP, &runs, Duration::ZERO).await.unwrap(), 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
