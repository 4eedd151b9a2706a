//! 1,000 concurrent callers with one key: the body runs exactly once; the
//! others are told it is in progress or, in wait mode, get the same value.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{DEFAULT_LEASE, Done, Error, Idempotency, Operation};
use support::bank::Bank;
use support::timed_call;
use tokio::sync::{Notify, mpsc};

async fn callers(
    bank: &Arc<Bank>,
    waiting: bool,
) -> Vec<Result<support::bank::Receipt, support::bank::PayError>> {
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let bank = Arc::clone(bank);
            tokio::spawn(async move {
                let work = Duration::from_millis(100);
                if waiting {
                    bank.charge_waiting("pay-1", 1000, work).await
                } else {
                    bank.charge_slowly("pay-1", 1000, work).await
                }
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_one_runs_and_the_rest_are_told_it_is_in_progress() {
    let bank = Arc::new(Bank::new());
    let results = callers(&bank, false).await;
    assert_eq!(bank.runs(), 1);
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert!(!ok.is_empty());
    assert!(ok.iter().all(|r| r.charge == 1));
    let mut in_progress = 0;
    for result in &results {
        if let Err(error) = result {
            let error = error.idempotency().expect("an idempotency error");
            assert!(error.is_in_progress(), "{error:?}");
            assert!(error.retry_after().is_some());
            in_progress += 1;
        }
    }
    assert!(
        in_progress > 0,
        "the callers overlapped the 100 ms body, so some were told it is in progress"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wait_mode_everyone_gets_the_one_value() {
    let bank = Arc::new(Bank::new());
    let results = callers(&bank, true).await;
    assert_eq!(bank.runs(), 1);
    for result in results {
        assert_eq!(result.unwrap().charge, 1);
    }
}

#[tokio::test(start_paused = true)]
async fn interleaved_on_one_thread_with_a_paused_clock() {
    let bank = Arc::new(Bank::new());
    let results = callers(&bank, true).await;
    assert_eq!(bank.runs(), 1);
    assert!(results.into_iter().all(|r| r.unwrap().charge == 1));
}

const CALLERS: usize = 1000;

/// `CALLERS` engine calls of one key, spawned together; the body blocks on
/// `gate` until the test opens it, so every duplicate arrives while it runs.
fn spawn_callers(
    idem: &Idempotency,
    operation: &'static Operation,
    runs: &Arc<AtomicUsize>,
    gate: &Arc<Notify>,
) -> mpsc::UnboundedReceiver<Result<Done<usize>, Error>> {
    let (results, received) = mpsc::unbounded_channel();
    for _ in 0..CALLERS {
        let (idem, runs, gate, results) = (
            idem.clone(),
            Arc::clone(runs),
            Arc::clone(gate),
            results.clone(),
        );
        tokio::spawn(async move {
            let result = idem
                .call(operation)
                .key("order-1")
                .payload(&1000)
                .run(async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.notified().await;
                    Ok::<_, Error>(run)
                })
                .await;
            let _ = results.send(result);
        });
    }
    received
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_overlapping_engine_callers_run_the_body_once_the_rest_are_in_progress() {
    static OP: Operation = Operation::new("concurrency.no_wait");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let mut results = spawn_callers(&idem, &OP, &runs, &gate);
    // While the one body is held at the gate, every other caller is answered.
    for _ in 0..CALLERS - 1 {
        let error = results.recv().await.unwrap().unwrap_err();
        assert!(error.is_in_progress(), "{error:?}");
        let retry_after = error.retry_after().unwrap();
        assert!(retry_after > Duration::ZERO && retry_after <= DEFAULT_LEASE);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    gate.notify_one();
    let owner = results.recv().await.unwrap().unwrap();
    assert_eq!(
        owner,
        Done {
            value: 1,
            replayed: false
        }
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_overlapping_engine_callers_in_wait_mode_all_get_the_one_value() {
    static OP: Operation = Operation::new("concurrency.wait").wait(Duration::from_secs(30));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let mut results = spawn_callers(&idem, &OP, &runs, &gate);
    // Let the duplicates pile up behind the running body.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(results.is_empty(), "nobody is answered while the body runs");
    gate.notify_one();
    let mut replayed = 0;
    for _ in 0..CALLERS {
        let executed = results.recv().await.unwrap().unwrap();
        assert_eq!(executed.value, 1);
        replayed += usize::from(executed.replayed);
    }
    assert_eq!(replayed, CALLERS - 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_shorter_than_the_body_ends_in_progress() {
    static OP: Operation = Operation::new("concurrency.short_wait").wait(Duration::from_secs(1));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |work: Duration| timed_call(&idem, &OP, &runs, work);
    let first = tokio::spawn(call(Duration::from_secs(5)));
    tokio::task::yield_now().await;
    let started = tokio::time::Instant::now();
    let error = call(Duration::ZERO).await.unwrap_err();
    assert!(error.is_in_progress(), "{error:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_millis(1100),
        "waited {waited:?} for a 1 s wait"
    );
    first.await.unwrap().unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wait_of_duration_max_waits_for_the_value() {
    static OP: Operation = Operation::new("concurrency.endless_wait").wait(Duration::MAX);
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = || timed_call(&idem, &OP, &runs, Duration::from_secs(5));
    let first = tokio::spawn(call());
    tokio::task::yield_now().await;
    let second = call().await.unwrap();
    assert!(second.replayed);
    assert_eq!(second.value, 1);
    assert_eq!(first.await.unwrap().unwrap().value, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_wait_mode_a_failed_first_call_hands_the_key_to_one_waiter() {
    static OP: Operation = Operation::new("concurrency.handover").wait(Duration::from_secs(30));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(Notify::new());
    let attempt = |fail: bool| {
        let (idem, runs, gate) = (idem.clone(), Arc::clone(&runs), Arc::clone(&gate));
        tokio::spawn(async move {
            idem.call(&OP)
                .key("order-1")
                .payload(&1)
                .run(async move {
                    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    if fail {
                        gate.notified().await;
                        Err(Error::NotConfigured)
                    } else {
                        Ok(run)
                    }
                })
                .await
        })
    };
    let first = attempt(true);
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    let waiters: Vec<_> = (0..20).map(|_| attempt(false)).collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the waiters wait");
    gate.notify_one();
    assert!(matches!(first.await.unwrap(), Err(Error::NotConfigured)));
    let mut fresh = 0;
    for waiter in waiters {
        let executed = waiter.await.unwrap().unwrap();
        assert_eq!(executed.value, 2, "everyone gets the second run's value");
        fresh += usize::from(!executed.replayed);
    }
    assert_eq!(fresh, 1, "exactly one waiter ran the body");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
