//! `RedisStore`: the conformance suite on a standalone server and on a
//! 3-master cluster, each started for the test.
#![cfg(feature = "redis")]

mod conformance;
mod support;

use std::sync::Arc;

use idempotent_core::{Error, Idempotency, Operation, RedisStore};
use support::redis_server::{RedisCluster, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_standalone_redis() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .key_prefix("test:")
        .build()
        .await
        .unwrap();
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let store = RedisStore::builder()
        .url(cluster.url())
        .build()
        .await
        .unwrap();
    conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_master_and_each_stays_on_one() {
    static OP: Operation = Operation::new("cluster.charge");
    let cluster = RedisCluster::start(3);
    let store = RedisStore::builder()
        .url(cluster.url())
        .build()
        .await
        .unwrap();
    let idem = Idempotency::new(store);
    for i in 0..300 {
        let value = idem
            .call(&OP)
            .key(&format!("order-{i}"))
            .payload(&i)
            .run(async move { Ok::<_, Error>(i) })
            .await
            .unwrap();
        assert_eq!(value.value, i);
    }
    let mut total = 0;
    for node in &cluster.nodes {
        let reply = node.command(&["DBSIZE"]).unwrap();
        let keys: usize = reply.trim().trim_start_matches(':').parse().unwrap();
        assert!(keys > 0, "a master holds no record: {reply}");
        total += keys;
    }
    assert_eq!(total, 300, "one Redis key per record");
    // Replays work for keys on every node.
    for i in 0..300 {
        let replay = idem
            .call(&OP)
            .key(&format!("order-{i}"))
            .payload(&i)
            .run(async { Ok::<_, Error>(-1) })
            .await
            .unwrap();
        assert!(replay.replayed);
        assert_eq!(replay.value, i);
    }
}
