//! Wait mode on Redis: duplicates that arrive while the first call runs wait
//! for it (woken by its completion notice) and get its value; the body runs
//! once. A release (failed body) wakes them too, and one of them runs.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Idempotency, Operation};
use support::redis_server::RedisServer;

static WAITING: Operation = Operation::new("wait.charge").wait(Duration::from_secs(10));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_wait_for_the_first_call_and_share_its_value() {
    let server = RedisServer::start();
    let idem = Idempotency::new(RedisStore::connect(&server.url()).await.unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let idem = idem.clone();
            let runs = Arc::clone(&runs);
            tokio::spawn(async move {
                idem.call(&WAITING)
                    .key("pay-1")
                    .payload(&500)
                    .run(async move {
                        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, Error>(format!("receipt-{n}"))
                    })
                    .await
            })
        })
        .collect();
    let mut replayed = 0;
    for call in calls {
        let executed = call.await.unwrap().unwrap();
        assert_eq!(executed.value, "receipt-1");
        replayed += usize::from(executed.replayed);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(replayed, 19);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_first_call_lets_a_waiting_duplicate_run() {
    let server = RedisServer::start();
    let idem = Idempotency::new(RedisStore::connect(&server.url()).await.unwrap());
    let runs = Arc::new(AtomicUsize::new(0));
    let attempt = |fail: bool| {
        let idem = idem.clone();
        let runs = Arc::clone(&runs);
        async move {
            idem.call(&WAITING)
                .key("pay-2")
                .payload(&500)
                .run(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if fail {
                        Err(Error::NotConfigured)
                    } else {
                        Ok("receipt".to_owned())
                    }
                })
                .await
        }
    };
    let first = tokio::spawn(attempt(true));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = tokio::spawn(attempt(false));
    assert!(first.await.unwrap().is_err());
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.value, "receipt");
    assert!(
        !second.replayed,
        "the waiter ran the body itself after the release"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// The completion notice, not the re-check, wakes a waiter: with re-checks
/// an hour apart, a waiter still gets the value as soon as the first call
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_completion_notice_wakes_a_waiter_without_polling() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .wait_recheck(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let idem = Idempotency::new(store);
    let body_started = Arc::new(tokio::sync::Notify::new());
    let call = |value: &'static str| {
        let (idem, body_started) = (idem.clone(), Arc::clone(&body_started));
        async move {
            idem.call(&WAITING)
                .key("notice")
                .payload(&1)
                .run(async move {
                    body_started.notify_one();
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Error>(value.to_owned())
                })
                .await
        }
    };
    let first = tokio::spawn(call("first"));
    body_started.notified().await;
    // `WAITING` waits up to 10 s: only a notice can end the wait sooner.
    let started = std::time::Instant::now();
    let waiter = call("second").await.unwrap();
    assert_eq!(waiter.value, "first");
    assert!(waiter.replayed);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the notice, not by the wait running out: {:?}",
        started.elapsed()
    );
    assert!(!first.await.unwrap().unwrap().replayed);
}
