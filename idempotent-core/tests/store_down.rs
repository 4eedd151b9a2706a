//! A store that cannot be reached fails closed: the body never runs.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, LeaseToken, StorageKey};
use idempotent_core::{Error, Fingerprint, Idempotency, Operation, Store, StoreError, telemetry};
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
/// or "in progress", sleeping 100 ms between tries, as a client retries;
/// for at most a minute of the (paused) clock.
async fn settled<F, Fut>(call: F) -> Result<idempotent_core::Done<usize>, Error>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<idempotent_core::Done<usize>, Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match call().await {
            Err(error) if error.is_store_unavailable() || error.is_in_progress() => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never settled: {error:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// The counters and gauges recorded so far, summed over their labels. (A
/// snapshot hands out what changed since the last one.)
struct Recorded {
    snapshotter: metrics_util::debugging::Snapshotter,
    totals: std::cell::RefCell<std::collections::HashMap<String, f64>>,
}

impl Recorded {
    fn get(&self, name: &str) -> f64 {
        use metrics_util::debugging::DebugValue;
        let mut totals = self.totals.borrow_mut();
        for (key, _, _, value) in self.snapshotter.snapshot().into_vec() {
            let change = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => continue,
            };
            *totals.entry(key.key().name().to_owned()).or_default() += change;
        }
        totals.get(name).copied().unwrap_or_default()
    }
}

/// Runs `test` on a paused current-thread runtime, with a metrics recorder
/// of its own.
fn with_metrics<F: std::future::Future<Output = ()>>(test: impl FnOnce(Recorded) -> F) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let recorded = Recorded {
        snapshotter: recorder.snapshotter(),
        totals: Default::default(),
    };
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test(recorded));
    });
}

/// A call of `operation` with the key `order-1` whose body answers its run
/// number; the first run takes the store down (`outage`) as it finishes.
fn first_run_takes_the_store_down<'a>(
    idem: &'a Idempotency,
    operation: &'static Operation,
    runs: &'a AtomicUsize,
    outage: &'a Outage,
) -> impl std::future::Future<Output = Result<idempotent_core::Done<usize>, Error>> + 'a {
    idem.call(operation)
        .key("order-1")
        .payload(&1)
        .run(async move {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 1 {
                outage.start();
            }
            Ok::<_, Error>(run)
        })
}

#[test]
fn a_result_the_store_could_not_take_is_stored_when_it_is_back_and_replayed() {
    with_metrics(a_result_stored_when_the_store_is_back);
}

async fn a_result_stored_when_the_store_is_back(metrics: Recorded) {
    static OP: Operation = Operation::new("down.complete").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let idem = Idempotency::new(Faulty::new(Fault::Outage(outage.clone())));
    let runs = AtomicUsize::new(0);
    let call = || first_run_takes_the_store_down(&idem, &OP, &runs, &outage);
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
    assert_eq!(idem.pending_results(), 1);
    assert_eq!(metrics.get(telemetry::PENDING), 1.0);
    outage.end();
    let retry = settled(call).await.unwrap();
    assert_eq!(
        (retry.value, retry.replayed),
        (1, true),
        "stored once the store was back, and replayed"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    idem.settled().await;
    assert_eq!(idem.pending_results(), 0);
    assert_eq!(metrics.get(telemetry::PENDING), 0.0);
    assert_eq!(metrics.get(telemetry::LOST), 0.0);
}

#[tokio::test(start_paused = true)]
async fn a_result_waiting_for_the_store_keeps_the_key_held_past_its_first_lease() {
    static OP: Operation = Operation::new("down.renewed").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let store = Arc::new(Faulty::new(Fault::Outage(outage.clone())));
    let idem = Idempotency::new(Arc::clone(&store));
    let runs = AtomicUsize::new(0);
    let call = || first_run_takes_the_store_down(&idem, &OP, &runs, &outage);
    call().await.unwrap();
    // Back, but completions keep failing (a result too large to write in
    // time, say) while renewals work: the key stays held.
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

#[test]
fn an_outage_longer_than_the_lease_loses_the_result_and_a_retry_runs_again() {
    with_metrics(an_outage_longer_than_the_lease);
}

async fn an_outage_longer_than_the_lease(metrics: Recorded) {
    // What remains at risk, and what the README says to size the lease for.
    static OP: Operation = Operation::new("down.lost").lease(Duration::from_secs(2));
    let outage = Outage::default();
    let idem = Idempotency::new(Faulty::new(Fault::Outage(outage.clone())));
    let runs = AtomicUsize::new(0);
    let call = || first_run_takes_the_store_down(&idem, &OP, &runs, &outage);
    call().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    outage.end();
    let retry = settled(call).await.unwrap();
    assert_eq!((retry.value, retry.replayed), (2, false));
    idem.settled().await;
    assert_eq!(
        metrics.get(telemetry::LOST),
        1.0,
        "the lost result is counted"
    );
    assert_eq!(metrics.get(telemetry::PENDING), 0.0);
}

#[tokio::test(start_paused = true)]
async fn renewals_resume_as_soon_as_the_store_answers_again() {
    // The store is down for most of the body's run, so the last renewal
    // that worked is old when the body ends; then it answers everything but
    // completions. The lease must be renewed at once, not a third of a
    // lease after the hand-off, or it runs out and a retry runs again.
    static OP: Operation = Operation::new("down.stale").lease(Duration::from_secs(3));
    let outage = Outage::default();
    let store = Arc::new(Faulty::new(Fault::Outage(outage.clone())));
    let idem = Idempotency::new(Arc::clone(&store));
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
            if run == 1 {
                tokio::time::sleep(Duration::from_millis(900)).await;
                outage.start();
                tokio::time::sleep(Duration::from_millis(1600)).await;
                store.fail_completions(true);
            }
            Ok::<_, Error>(run)
        })
    };
    let (first, ()) = tokio::join!(call(), async {
        tokio::time::sleep(Duration::from_millis(2600)).await;
        outage.end();
    });
    let first = first.unwrap();
    assert_eq!(first.value, 1);
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let retry = call().await;
        assert!(
            retry.as_ref().is_err_and(Error::is_in_progress),
            "the key stays held: {retry:?}"
        );
    }
    store.fail_completions(false);
    let retry = settled(call).await.unwrap();
    assert_eq!((retry.value, retry.replayed), (1, true));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
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
