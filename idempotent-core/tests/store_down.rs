//! A store that cannot be reached fails closed: the body never runs.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idempotent_core::{
    ClaimOutcome, Error, Fingerprint, Idempotency, LeaseToken, MemoryStore, Operation, StorageKey,
    Store, StoreError,
};
use support::bank::Bank;
use support::faulty::{Fault, Faulty, Outage, refused};

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

/// Runs `call` until it answers something other than "the store is down"
/// or "in progress", sleeping 100 ms between tries, as a client retries.
async fn settled<F, Fut>(call: F) -> Result<idempotent_core::Executed<usize>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<idempotent_core::Executed<usize>, Error>>,
{
    loop {
        match call().await {
            Err(error) if error.is_store_unavailable() || error.is_in_progress() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_result_the_store_could_not_take_is_stored_when_it_is_back_and_replayed() {
    static OP: Operation = Operation::new("down.complete").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let idem = Idempotency::new(Faulty::new(Fault::Outage(outage.clone())));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            // The store goes down while the body runs.
            outage.start();
            Ok::<_, Error>(run)
        })
    };
    let first = call().await.unwrap();
    assert_eq!(
        (first.value, first.replayed),
        (1, false),
        "the body ran: its value is real"
    );
    // Down for most of the lease; retries meanwhile are refused, never run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = call().await.unwrap_err();
    assert!(during.is_store_unavailable(), "{during:?}");
    outage.end();
    let retry = settled(call).await.unwrap();
    assert_eq!(
        (retry.value, retry.replayed),
        (1, true),
        "stored once the store was back, and replayed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_result_waiting_for_the_store_keeps_the_key_held_past_its_first_lease() {
    static OP: Operation = Operation::new("down.renewed").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let store = Arc::new(Faulty::new(Fault::Outage(outage.clone())));
    let idem = Idempotency::new(Arc::clone(&store));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            outage.start();
            Ok::<_, Error>(run)
        })
    };
    call().await.unwrap();
    // Back for a moment, then down again: long enough for the background
    // completion to fail and renew the lease, never to complete.
    store.fail_completions(true);
    outage.end();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let retry = call().await.unwrap_err();
        assert!(retry.is_in_progress(), "the key stays held: {retry:?}");
    }
    store.fail_completions(false);
    let retry = settled(call).await.unwrap();
    assert_eq!((retry.value, retry.replayed), (1, true));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_the_lease_loses_the_result_and_a_retry_runs_again() {
    // What remains at risk, and what the README says to size the lease for.
    static OP: Operation = Operation::new("down.lost").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let idem = Idempotency::new(Faulty::new(Fault::Outage(outage.clone())));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            outage.start();
            Ok::<_, Error>(run)
        })
    };
    call().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.end();
    let retry = settled(call).await.unwrap();
    assert_eq!((retry.value, retry.replayed), (2, false));
}

#[tokio::test(start_paused = true)]
async fn a_release_the_store_could_not_take_frees_the_key_once_it_is_back() {
    static OP: Operation = Operation::new("down.release").lease(Duration::from_secs(30));
    let outage = Outage::default();
    let idem = Idempotency::new(Faulty::new(Fault::Outage(outage.clone())));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 1 {
                outage.start();
                return Err(Error::NotConfigured);
            }
            Ok::<_, Error>(run)
        })
    };
    assert!(call().await.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    outage.end();
    let started = tokio::time::Instant::now();
    let retry = settled(call).await.unwrap();
    assert_eq!((retry.value, retry.replayed), (2, false));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the retry waited {:?} for a key whose lease is 30 s",
        started.elapsed()
    );
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
