//! PostgreSQL (lease mode) out of reach for a few seconds: a body that ran
//! meanwhile has its result stored once the database is back, so the retry
//! replays; and the first call after the outage succeeds. The link to the
//! server is cut by a proxy, since other tests share the server.
#![cfg(feature = "postgres")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::{Error, Executed, Idempotency, Operation, PostgresStore};
use sqlx::postgres::PgConnectOptions;
use support::blackout::Blackout;
use support::postgres_schema::{Schema, url};
use tokio::net::lookup_host;
use tokio::sync::Notify;

static OP: Operation = Operation::new("pg-outage.charge");
const OUTAGE: Duration = Duration::from_secs(3);

/// A store in `schema` that reaches the server through `proxy`.
async fn store_behind(schema: &Schema) -> (PostgresStore, Blackout) {
    let options: PgConnectOptions = url().parse().unwrap();
    let upstream = lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Blackout::start(upstream).await;
    let options = options
        .host("127.0.0.1")
        .port(proxy.addr().port())
        .options([("search_path", schema.name())]);
    let store = PostgresStore::with_options(options, Duration::from_millis(500));
    store.migrate().await.unwrap();
    (store, proxy)
}

/// Calls `key` again and again while the store is out of reach or the key
/// in progress, as a client's retries would, for up to 20 s.
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
async fn postgres_cut_off_while_a_body_runs_then_back_the_retry_replays() {
    let schema = Schema::create("outage_body").await;
    let (store, proxy) = store_behind(&schema).await;
    let idem = Idempotency::new(store);
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
    proxy.cut();
    tokio::time::sleep(OUTAGE).await;
    let first = first.await.unwrap().unwrap();
    assert_eq!((first.value, first.replayed), (1, false));
    proxy.restore();
    let retry = retried(&idem, "slow-charge", &runs).await;
    assert_eq!(
        (retry.value, retry.replayed),
        (1, true),
        "the retry replays the result stored once PostgreSQL was back"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1, "one charge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_postgres_outage_succeeds() {
    let schema = Schema::create("outage_first").await;
    let (store, proxy) = store_behind(&schema).await;
    let idem = Idempotency::new(store);
    let runs = AtomicUsize::new(0);
    assert!(!retried(&idem, "before", &runs).await.replayed);
    proxy.cut();
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
    proxy.restore();
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
