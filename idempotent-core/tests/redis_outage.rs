//! Redis outages of a few seconds, on real servers: a body that ran while
//! Redis was down has its result stored once it is back (the retry replays,
//! never runs again), a key whose release could not be sent is freed once
//! it is back, and the first call after an outage succeeds.
#![cfg(feature = "redis")]

mod support;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::{Error, Executed, Idempotency, Operation, RedisStore};
use support::redis_server::{RedisCluster, RedisServer};
use tokio::sync::Notify;

static OP: Operation = Operation::new("outage.charge");
const TIMEOUT: Duration = Duration::from_millis(300);
const OUTAGE: Duration = Duration::from_secs(3);

async fn idempotency(url: String) -> Idempotency {
    let store = RedisStore::builder()
        .url(url)
        .timeout(TIMEOUT)
        .build()
        .await
        .expect("the store builds before connecting");
    Idempotency::new(store)
}

/// Calls `key` with a body that counts its runs in `runs` and answers `n`,
/// again and again while the store is down or the key in progress, as a
/// client's retries would, for up to 20 s.
async fn retried(idem: &Idempotency, key: &str, runs: &AtomicUsize) -> Executed<usize> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let result = idem
            .call(&OP)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_while_a_body_runs_then_back_the_retry_replays() {
    let mut server = RedisServer::start_with(&["--appendonly", "yes"]);
    let idem = idempotency(server.url()).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Notify::new());
    let first = tokio::spawn({
        let (idem, runs, started) = (idem.clone(), Arc::clone(&runs), Arc::clone(&started));
        async move {
            idem.call(&OP)
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
    server.shutdown();
    tokio::time::sleep(OUTAGE).await;
    // The body finished while Redis was down: its caller has its value.
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.value, first.replayed), (1, false));
    server.restart();
    let retry = retried(&idem, "slow-charge", &runs).await;
    assert_eq!(
        (retry.value, retry.replayed),
        (1, true),
        "the retry replays the result stored once Redis was back"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one charge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_released_while_redis_is_down_is_free_soon_after_it_is_back() {
    static HELD: Operation = Operation::new("outage.release").lease(Duration::from_secs(60));
    let mut server = RedisServer::start_with(&["--appendonly", "yes"]);
    let idem = idempotency(server.url()).await;
    let failed = idem
        .call(&HELD)
        .key("declined")
        .payload(&1)
        .run(async {
            // The store goes down before the failed body releases its key.
            tokio::task::block_in_place(|| server.shutdown());
            Err::<(), _>(Error::NotConfigured)
        })
        .await;
    assert!(failed.is_err());
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(20);
    loop {
        let result = idem
            .call(&HELD)
            .key("declined")
            .payload(&1)
            .run(async { Ok::<_, Error>(()) })
            .await;
        match result {
            Ok(executed) => {
                assert!(!executed.replayed);
                break;
            }
            Err(error) if error.is_in_progress() || error.is_store_unavailable() => {
                assert!(Instant::now() < deadline, "never freed: {error:?}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => panic!("unexpected {error:?}"),
        }
    }
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "the retry waited {:?} for a key whose lease is 60 s",
        back.elapsed()
    );
}

/// Redis down for 2 s and back; 2 s later (nothing called meanwhile), the
/// very first call succeeds.
async fn first_call_after_an_outage(idem: &Idempotency, down: impl FnOnce(), up: impl FnOnce()) {
    let runs = AtomicUsize::new(0);
    assert!(!retried(idem, "before", &runs).await.replayed);
    down();
    let outage = Instant::now();
    while outage.elapsed() < Duration::from_secs(2) {
        let during = idem
            .call(&OP)
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
    up();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = idem
        .call(&OP)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_an_outage_succeeds() {
    let server = RefCell::new(RedisServer::start());
    let url = server.borrow().url();
    let idem = idempotency(url).await;
    first_call_after_an_outage(
        &idem,
        || server.borrow_mut().kill(),
        || server.borrow_mut().restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_cluster_outage_succeeds() {
    let cluster = RefCell::new(RedisCluster::start(3));
    let url = cluster.borrow().url();
    let idem = idempotency(url).await;
    first_call_after_an_outage(
        &idem,
        || {
            cluster
                .borrow_mut()
                .nodes
                .iter_mut()
                .for_each(RedisServer::kill)
        },
        || cluster.borrow_mut().restart(),
    )
    .await;
}
