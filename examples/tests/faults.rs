//! Through a real fault-injecting proxy: 500 intents, 30% of responses
//! dropped after the server handled them, 10% of connections reset; and 300
//! intents on Redis while Redis stops for 3 s.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use examples::fault_proxy::Faults;
use examples::payments::StoreChoice;
use examples::scenario::{Scenario, run, run_with};
use redis_server::RedisServer;

const FAULTS: Faults = Faults {
    drop_response: 0.30,
    reset: 0.10,
    max_delay: Duration::from_millis(5),
    seed: 42,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_intents_through_faults_charge_exactly_five_hundred_times() {
    let run = run(500, 16, FAULTS, true).await;
    assert_eq!(run.succeeded, 500, "{run:?}");
    assert_eq!(run.charges, 500, "{run:?}");
    assert_eq!(run.duplicates, 0, "{run:?}");
    assert_eq!(
        run.wrong_receipts, 0,
        "every caller holds its one charge: {run:?}"
    );
    assert!(
        run.attempts > 500,
        "the faults made the client retry: {run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_faults_without_idempotency_charge_twice() {
    // The control: the faults are real, and they do cause duplicates.
    let run = run(200, 16, FAULTS, false).await;
    assert!(run.duplicates > 0, "{run:?}");
    assert!(run.charges > 200, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_intents_through_faults_and_a_redis_stop_charge_exactly_three_hundred_times()
{
    // Redis keeps its data on disk (AOF), as a production Redis would, and
    // is stopped for 3 s while payments are in progress: results that ran
    // meanwhile are stored once it is back, so no retry charges again.
    let mut redis = RedisServer::start_with(&["--appendonly", "yes"]);
    let scenario = Scenario {
        intents: 300,
        concurrency: 16,
        faults: FAULTS,
        protected: true,
        store: StoreChoice::Redis(redis.url()),
        retry_for: Duration::from_secs(15),
    };
    let outage = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        tokio::task::block_in_place(|| redis.shutdown());
        tokio::time::sleep(Duration::from_secs(3)).await;
        tokio::task::block_in_place(|| redis.restart());
    };
    let run = run_with(scenario, outage).await;
    assert_eq!(run.succeeded, 300, "{run:?}");
    assert_eq!(run.charges, 300, "{run:?}");
    assert_eq!(run.duplicates, 0, "{run:?}");
    assert_eq!(run.wrong_receipts, 0, "{run:?}");
}
