//! Redis outages of a few seconds, on real servers: a body that ran while
//! Redis was down has its result stored once it is back (the retry replays,
//! never runs again), a key whose release could not be sent is freed once
//! it is back, and the first call after an outage succeeds, standalone and
//! cluster.
#![cfg(feature = "redis")]

mod support;

use std::cell::RefCell;
use std::time::{Duration, Instant};

use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Idempotency, Operation};
use support::outage::{a_body_across_an_outage_runs_once, the_first_call_after_an_outage_succeeds};
use support::redis_server::{RedisCluster, RedisServer};

static OP: Operation = Operation::new("outage.charge");
const TIMEOUT: Duration = Duration::from_millis(300);

async fn idempotency(url: String) -> Idempotency {
    let store = RedisStore::builder()
        .url(url)
        .timeout(TIMEOUT)
        .build()
        .await
        .expect("the store builds before connecting");
    Idempotency::new(store)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_while_a_body_runs_then_back_the_retry_replays() {
    // With AOF, a stopped Redis comes back with its records, the body's
    // lease among them.
    let server = RefCell::new(RedisServer::start_with(&["--appendonly", "yes"]));
    let url = server.borrow().url();
    let idem = idempotency(url).await;
    a_body_across_an_outage_runs_once(
        &idem,
        &OP,
        || server.borrow_mut().shutdown(),
        || server.borrow_mut().restart(),
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_an_outage_succeeds_standalone() {
    let server = RefCell::new(RedisServer::start());
    let url = server.borrow().url();
    let idem = idempotency(url).await;
    the_first_call_after_an_outage_succeeds(
        &idem,
        &OP,
        || server.borrow_mut().kill(),
        || server.borrow_mut().restart(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_an_outage_succeeds_on_a_cluster() {
    let cluster = RefCell::new(RedisCluster::start(3));
    let url = cluster.borrow().url();
    let idem = idempotency(url).await;
    the_first_call_after_an_outage_succeeds(
        &idem,
        &OP,
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
