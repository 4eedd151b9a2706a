//! The process-wide runtime: functions without `runtime = ...` use the one
//! installed at start-up, and fail clearly before one is.
//!
//! Everything touching the global runtime lives in this one test (one
//! process), so the order of its steps is the order of the assertions.

use std::sync::atomic::{AtomicUsize, Ordering};

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Call, Error, Idempotency, Operation, idempotent};

static RUNS: AtomicUsize = AtomicUsize::new(0);

#[idempotent(key = id)]
async fn charge(id: u64, amount: u64) -> Result<u64, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(amount)
}

#[idempotent(key = id, runtime = rt, skip(rt))]
async fn charge_on(rt: &Idempotency, id: u64, amount: u64) -> Result<u64, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(amount)
}

static OP: Operation = Operation::new("global.engine");

async fn engine_call(runtime: Option<&Idempotency>, key: &str) -> Result<(usize, bool), Error> {
    let mut call = Call::new(&OP).key(key).payload(&1);
    if let Some(runtime) = runtime {
        call = call.runtime(runtime);
    }
    call.run(async { Ok::<_, Error>(RUNS.fetch_add(1, Ordering::SeqCst) + 1) })
        .await
        .map(|executed| (executed.value, executed.replayed))
}

#[tokio::test]
async fn functions_use_the_runtime_installed_at_start_up() {
    // Before install: no runtime, no run, and a message saying what to do.
    assert!(matches!(Idempotency::global(), Err(Error::NotConfigured)));
    let error = charge(1, 1000).await.unwrap_err();
    assert!(matches!(error, Error::NotConfigured), "{error:?}");
    assert!(
        error.to_string().contains("install"),
        "the message says what to do: {error}"
    );
    assert!(matches!(
        engine_call(None, "k").await,
        Err(Error::NotConfigured)
    ));
    assert_eq!(RUNS.load(Ordering::SeqCst), 0, "no runtime, no run");

    // An explicit runtime needs no global one.
    let local = Idempotency::new(MemoryStore::new());
    assert_eq!(charge_on(&local, 1, 1000).await.unwrap(), 1000);
    assert_eq!(engine_call(Some(&local), "k").await.unwrap(), (2, false));
    assert_eq!(RUNS.load(Ordering::SeqCst), 2);

    // Install once; a second install is refused and hands the runtime back.
    Idempotency::builder(MemoryStore::new())
        .namespace("global")
        .build()
        .install()
        .unwrap();
    let refused = Idempotency::builder(MemoryStore::new())
        .namespace("second")
        .build()
        .install()
        .unwrap_err();
    assert_eq!(refused.namespace(), "second");
    assert_eq!(Idempotency::global().unwrap().namespace(), "global");

    // Functions and calls without a runtime now use the installed one.
    assert_eq!(charge(1, 1000).await.unwrap(), 1000);
    assert_eq!(charge(1, 1000).await.unwrap(), 1000);
    assert_eq!(RUNS.load(Ordering::SeqCst), 3, "the global call ran once");
    assert_eq!(engine_call(None, "k").await.unwrap(), (4, false));
    assert_eq!(engine_call(None, "k").await.unwrap(), (4, true));

    // An explicit runtime still wins over the global one: its own records.
    assert_eq!(engine_call(Some(&local), "k").await.unwrap(), (2, true));
    assert_eq!(engine_call(Some(&local), "k2").await.unwrap(), (5, false));
    assert_eq!(RUNS.load(Ordering::SeqCst), 5);
}
