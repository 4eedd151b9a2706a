//! Store outages of a few seconds, as scenarios any store's test runs with
//! its own way of taking the store away (`down`) and bringing it back
//! (`up`): stopping a Redis server, cutting a proxy in front of PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::{Done, Error, Idempotency, Operation};
use tokio::sync::Notify;

/// How long the store is away, and how long the slow body works.
pub const OUTAGE: Duration = Duration::from_secs(3);

/// Calls `key` with a body that counts its runs in `runs` and answers its
/// run number, again and again while the store is down or the key in
/// progress, as a client's retries would, for up to 20 s.
pub async fn retried(
    idem: &Idempotency,
    operation: &'static Operation,
    key: &str,
    runs: &AtomicUsize,
) -> Done<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = idem
            .call(operation)
            .key(key)
            .payload(&1)
            .run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
            .await;
        match result {
            Ok(executed) => return executed,
            Err(error) if error.is_store_unavailable() || error.is_in_progress() => {
                assert!(Instant::now() < deadline, "never settled: {error:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("unexpected {error:?}"),
        }
    }
}

/// A body works for [`OUTAGE`]; the store goes down half a second in and
/// comes back after [`OUTAGE`]. The body's caller gets its value, and the
/// retry once the store is back replays it: one run.
pub async fn a_body_across_an_outage_runs_once(
    idem: &Idempotency,
    operation: &'static Operation,
    down: impl FnOnce(),
    up: impl FnOnce(),
) {
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let first = tokio::spawn({
        let (idem, runs, started) = (idem.clone(), Arc::clone(&runs), Arc::clone(&started));
        async move {
            idem.call(operation)
                .key("slow-charge")
                .payload(&1)
                .run(async {
                    started.notify_one();
                    tokio::time::sleep(OUTAGE).await;
                    Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1)
                })
                .await
        }
    });
    started.notified().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(down);
    tokio::time::sleep(OUTAGE).await;
    // The body finished while the store was away: its caller has its value.
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.value, first.replayed), (1, false));
    tokio::task::block_in_place(up);
    let retry = retried(idem, operation, "slow-charge", &runs).await;
    assert_eq!(
        (retry.value, retry.replayed),
        (1, true),
        "the retry replays the result stored once the store was back"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one run");
}

/// The store is away for 2 s and back; 2 s later (nothing called
/// meanwhile), the very first call succeeds.
pub async fn the_first_call_after_an_outage_succeeds(
    idem: &Idempotency,
    operation: &'static Operation,
    down: impl FnOnce(),
    up: impl FnOnce(),
) {
    let runs = AtomicUsize::new(0);
    assert!(!retried(idem, operation, "before", &runs).await.replayed);
    tokio::task::block_in_place(down);
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(2) {
        let during = idem
            .call(operation)
            .key("during")
            .payload(&1)
            .run(async { Ok::<_, Error>(0) })
            .await;
        assert!(
            during.as_ref().is_err_and(Error::is_store_unavailable),
            "{during:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(up);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = idem
        .call(operation)
        .key("after")
        .payload(&1)
        .run(async { Ok::<_, Error>(7) })
        .await;
    assert_eq!(
        after
            .expect("the first call after the outage succeeds")
            .value,
        7
    );
}
