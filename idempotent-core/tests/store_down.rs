//! A store that cannot be reached fails closed: the body never runs.

mod support;

use std::error::Error as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idempotent_core::{
    ClaimOutcome, Error, Fingerprint, Idempotency, LeaseToken, MemoryStore, Operation, StorageKey,
    Store, StoreError,
};
use support::bank::Bank;
use support::faulty::{Fault, Faulty, refused};

/// A fault injector: every call fails as an unreachable server's would.
struct FailingStore;

#[async_trait]
impl Store for FailingStore {
    async fn claim(
        &self,
        _: &StorageKey,
        _: Fingerprint,
        _: Duration,
    ) -> Result<ClaimOutcome, StoreError> {
        Err(refused())
    }
    async fn complete(
        &self,
        _: &StorageKey,
        _: LeaseToken,
        _: Fingerprint,
        _: &[u8],
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(refused())
    }
    async fn release(&self, _: &StorageKey, _: LeaseToken) -> Result<(), StoreError> {
        Err(refused())
    }
    async fn renew(&self, _: &StorageKey, _: LeaseToken, _: Duration) -> Result<(), StoreError> {
        Err(refused())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_returns_errors_means_the_body_never_runs() {
    let bank = Bank::with(Idempotency::new(FailingStore));
    for _ in 0..3 {
        let error = bank.charge("pay-1", 1000).await.unwrap_err();
        assert!(
            error.idempotency().is_some_and(Error::is_store_unavailable),
            "{error:?}"
        );
        let error = bank
            .charge_waiting("pay-2", 1000, Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            error.idempotency().is_some_and(Error::is_store_unavailable),
            "{error:?}"
        );
    }
    assert_eq!(bank.runs(), 0);
}

#[tokio::test(start_paused = true)]
async fn through_the_engine_the_caller_gets_store_unavailable_with_its_cause() {
    static PLAIN: Operation = Operation::new("down.plain");
    static WAITING: Operation = Operation::new("down.waiting").wait(Duration::from_secs(5));
    let idem = Idempotency::new(FailingStore);
    let runs = AtomicUsize::new(0);
    let body = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, Error>(())
    };
    for operation in [&PLAIN, &WAITING] {
        let error = idem
            .call(operation)
            .key("order-1")
            .payload(&1)
            .run(body())
            .await
            .unwrap_err();
        assert!(error.is_store_unavailable(), "{error:?}");
        let cause = error.source().expect("the store error").to_string();
        assert!(cause.contains("connection refused"), "{cause}");

        let cached = idem
            .call(operation)
            .key("order-1")
            .payload(&1)
            .run_caching_errors(async { body().await.map_err(StoreDown::from) })
            .await
            .unwrap_err();
        assert!(cached.0.contains("unavailable"), "{cached:?}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

/// A serializable error, for `run_caching_errors`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StoreDown(String);

impl From<Error> for StoreDown {
    fn from(error: Error) -> Self {
        Self(error.to_string())
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_ran_returns_its_value_even_if_the_store_cannot_record_it() {
    static OP: Operation = Operation::new("down.complete").lease(Duration::from_secs(2));
    let idem = Idempotency::new(Faulty::new(Fault::CompletionFails));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP)
            .key("order-1")
            .payload(&1)
            .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
    };
    let first = call().await.unwrap();
    assert_eq!(
        (first.value, first.replayed),
        (1, false),
        "the body ran: its value is real"
    );
    // The key stays held until the lease runs out: no second run meanwhile.
    let retry = call().await.unwrap_err();
    assert!(retry.is_in_progress(), "{retry:?}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(2001)).await;
    assert_eq!(call().await.unwrap().value, 2);
}

#[tokio::test(start_paused = true)]
async fn a_store_full_of_running_calls_refuses_and_the_body_never_runs() {
    static OP: Operation = Operation::new("down.full");
    let idem = Idempotency::new(MemoryStore::builder().shards(1).max_entries(1).build());
    let runs = AtomicUsize::new(0);
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let holder = idem.call(&OP).key("order-1").payload(&1).run(async {
        runs.fetch_add(1, Ordering::SeqCst);
        let _ = gate_rx.await;
        Ok::<_, Error>(())
    });
    let other = async {
        tokio::task::yield_now().await;
        let error = idem
            .call(&OP)
            .key("order-2")
            .payload(&1)
            .run(async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await
            .unwrap_err();
        let _ = gate_tx.send(());
        error
    };
    let (holder, error) = tokio::join!(holder, other);
    holder.unwrap();
    assert!(
        matches!(
            &error,
            Error::StoreUnavailable(StoreError::CapacityExceeded { limit: 1 })
        ),
        "{error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "only the holder ran");
}
