//! `RedisStore`: the conformance suite (and its journaled steps) on a
//! standalone server and on a 3-master cluster, each started for the test,
//! with the admin operations' cases;
//! records and completion notices on every master of the cluster.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;

use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{
    Error, Fingerprint, Idempotency, IdempotencyKey, Operation, StepWrite, Store, StoreError,
};
use support::redis_server::{RedisCluster, RedisServer};

/// A store on `cluster`, with the default settings.
async fn on_cluster(cluster: &RedisCluster) -> RedisStore {
    RedisStore::builder()
        .url(cluster.url())
        .build()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_standalone_redis() {
    let server = RedisServer::start();
    let store = RedisStore::builder()
        .url(server.url())
        .key_prefix("test:")
        .build()
        .await
        .unwrap();
    let store = Arc::new(store);
    idempotent_core::conformance::run_all(Arc::clone(&store)).await;
    idempotent_core::conformance::run_admin(Arc::clone(&store)).await;
    idempotent_core::conformance::run_steps(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_a_three_master_cluster() {
    let cluster = RedisCluster::start(3);
    let store = Arc::new(on_cluster(&cluster).await);
    idempotent_core::conformance::run_all(Arc::clone(&store)).await;
    // On every master: the walks of `stuck` and `count` visit each.
    idempotent_core::conformance::run_admin(Arc::clone(&store)).await;
    idempotent_core::conformance::run_steps(store).await;
    // A prefix whose first braces are empty makes the cluster hash whole
    // keys: no tag puts a call's steps in its record's slot, and recording
    // one says so instead of sending a script the cluster would refuse.
    let store = RedisStore::builder()
        .url(cluster.url())
        .key_prefix("a{}b:")
        .build()
        .await
        .unwrap();
    let key = StorageKey::new("ns", "", "op", &IdempotencyKey::parse("k").unwrap());
    let fingerprint = Fingerprint::from_u128(1);
    let lease = Duration::from_secs(30);
    let ClaimOutcome::Acquired(acquired) = store.claim(&key, fingerprint, lease).await.unwrap()
    else {
        panic!("the first claim acquires");
    };
    let step = StepWrite {
        token: acquired.token,
        fingerprint,
        name: "a",
        value: b"x",
        lease,
        ttl: lease,
    };
    assert!(
        matches!(
            store.record_step(&key, step).await,
            Err(StoreError::Unsupported { .. })
        ),
        "steps across slots"
    );
}

/// A call's steps are a hash whose field `f` is the fingerprint and whose
/// other fields are `s` and a step's name; anything else under its key is
/// corrupt, never a panic and never an empty log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_this_store_did_not_write_are_corrupt() {
    let (server, store, key) = one_key("steps").await;
    let steps_key = store.steps_key(&key);
    assert!(
        steps_key.starts_with('{') && steps_key.ends_with("}s2:ns|0:|2:op|steps"),
        "{steps_key}"
    );
    let corrupt = |reply: Option<String>| async {
        assert!(reply.is_some_and(|r| !r.starts_with('-')), "written");
        let answer = store.steps(&key).await;
        assert!(
            matches!(answer, Err(StoreError::Corrupt { .. })),
            "{answer:?}"
        );
        server.command(&["DEL", &steps_key]);
    };
    corrupt(server.command(&["HSET", &steps_key, "scharge", "ch_1"])).await;
    corrupt(server.command(&["HSET", &steps_key, "f", "short"])).await;
    corrupt(server.command(&["SET", &steps_key, "a string"])).await;
    assert_eq!(store.steps(&key).await.unwrap(), None);
}

/// A server of its own, a store on it, and the storage key of `key`.
async fn one_key(key: &str) -> (RedisServer, RedisStore, StorageKey) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let key = StorageKey::new("ns", "", "op", &IdempotencyKey::parse(key).unwrap());
    (server, store, key)
}

/// redis-rs's cluster client sends a command again when its connection
/// drops before the answer (a failover, a reset): the completion that runs
/// twice succeeds twice, while any other completion is still refused, and
/// the record keeps the first response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_sent_twice_succeeds_twice() {
    let (_server, store, key) = one_key("twice").await;
    let fingerprint = Fingerprint::from_u128(1);
    let lease = Duration::from_secs(30);
    let ClaimOutcome::Acquired(acquired) = store.claim(&key, fingerprint, lease).await.unwrap()
    else {
        panic!("the first claim acquires");
    };
    let ttl = Duration::from_secs(60);
    let complete =
        |response: &'static [u8]| store.complete(&key, acquired.token, fingerprint, response, ttl);
    complete(b"first").await.expect("completes");
    complete(b"first")
        .await
        .expect("the same completion again: it already landed");
    assert!(
        matches!(complete(b"other").await, Err(StoreError::LeaseLost)),
        "another response is refused"
    );
    match store.claim(&key, fingerprint, lease).await.unwrap() {
        ClaimOutcome::Completed(response) => assert_eq!(&*response, b"first"),
        other => panic!("expected the first response, got {other:?}"),
    }
}

/// A claim that meets a record in progress reports, as its `retry_after`,
/// what is left of that record's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_progress_answer_reports_the_lease_left() {
    let (_server, store, key) = one_key("in-progress").await;
    let fingerprint = Fingerprint::from_u128(1);
    let lease = Duration::from_secs(20);
    let first = store.claim(&key, fingerprint, lease).await.unwrap();
    assert!(matches!(first, ClaimOutcome::Acquired(_)), "{first:?}");
    match store.claim(&key, fingerprint, lease).await.unwrap() {
        ClaimOutcome::InProgress { retry_after } => assert!(
            retry_after <= lease && retry_after > lease - Duration::from_secs(5),
            "{retry_after:?}"
        ),
        other => panic!("expected InProgress, got {other:?}"),
    }
}

/// A server that forgot the store's scripts (restarted, or `SCRIPT FLUSH`)
/// answers `NOSCRIPT`; the store sends the script's source instead, and the
/// completion lands: the next call with the key is a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_forgot_the_scripts_still_completes() {
    static OP: Operation = Operation::new("noscript.charge");
    let server = RedisServer::start();
    let idem = Idempotency::new(RedisStore::connect(&server.url()).await.unwrap());
    let charge = |key: &'static str, value: u64| {
        idem.call(&OP)
            .key(key)
            .payload(&1)
            .run(async move { Ok::<_, Error>(value) })
    };
    assert!(!charge("first", 1).await.unwrap().replayed);
    for round in 0..2 {
        let reply = server.command(&["SCRIPT", "FLUSH"]).unwrap();
        assert!(reply.contains("OK"), "SCRIPT FLUSH: {reply}");
        let key = ["after-flush-0", "after-flush-1"][round];
        assert!(!charge(key, 2).await.unwrap().replayed, "{key}: runs");
        let again = charge(key, 3).await.unwrap();
        assert!(again.replayed, "{key}: its completion landed");
        assert_eq!(again.value, 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_every_master_and_each_stays_on_one() {
    static OP: Operation = Operation::new("cluster.charge");
    let cluster = RedisCluster::start(3);
    let idem = Idempotency::new(on_cluster(&cluster).await);
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

/// Keys are the client's to choose, hash tags included: `{hot}0`, `{hot}1`,
/// ... still spread over every master instead of all landing on the slot of
/// `hot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_tags_in_client_keys_do_not_pin_records_to_one_master() {
    static OP: Operation = Operation::new("cluster.tags");
    let cluster = RedisCluster::start(3);
    let idem = Idempotency::new(on_cluster(&cluster).await);
    for i in 0..60 {
        idem.call(&OP)
            .key(&format!("{{hot}}{i}"))
            .run(async move { Ok::<_, Error>(i) })
            .await
            .unwrap();
    }
    for node in &cluster.nodes {
        let reply = node.command(&["DBSIZE"]).unwrap();
        let keys: usize = reply.trim().trim_start_matches(':').parse().unwrap();
        assert!(keys > 0, "a master holds none of the 60 records: {reply}");
    }
}

/// Wait mode on a cluster: the completion notice of a record on any master
/// reaches a waiter (Redis Cluster broadcasts `PUBLISH` to every node), with
/// re-checks an hour apart so that only the notice can wake it in time. The
/// first seed node given is down and the second silent: notices come
/// through the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_cluster_completion_notices_wake_waiters_for_keys_on_every_master() {
    static OP: Operation = Operation::new("cluster.wait").wait(Duration::from_secs(10));
    let cluster = RedisCluster::start(3);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A seed that accepts connections and never answers (its listener is
    // kept, and never accepts): the subscription through it must time out.
    let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mute_addr = mute.local_addr().unwrap();
    let store = RedisStore::builder()
        .url(cluster.url().replace(
            "redis+cluster://",
            &format!("redis+cluster://{dead},{mute_addr},"),
        ))
        .wait_recheck(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    // The store listens through the third seed once the first refuses and
    // the second stays silent.
    let subscribed = || {
        cluster.nodes.iter().any(|node| {
            node.command(&["PUBSUB", "NUMSUB", "idempotent:done"])
                .is_some_and(|reply| reply.trim_end().ends_with(":1"))
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !subscribed() {
        assert!(
            std::time::Instant::now() < deadline,
            "no node has the store's completion subscription"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idem = Idempotency::new(store);
    // The cluster's first connection tries the seeds in turn, the silent
    // one until its timeout: wait until calls go through.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while let Err(error) = idem
        .call(&OP)
        .key("warm-up")
        .run(async { Ok::<_, Error>(0) })
        .await
    {
        assert!(
            error.is_store_unavailable() && std::time::Instant::now() < deadline,
            "{error:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The body reports its start, so that waiters come only after.
    let call = |key: String, value: i64, started: Option<UnboundedSender<()>>| {
        let idem = idem.clone();
        async move {
            idem.call(&OP)
                .key(&key)
                .payload(&0)
                .run(async move {
                    if let Some(started) = started {
                        let _ = started.send(());
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, Error>(value)
                })
                .await
                .unwrap()
        }
    };
    // Twelve keys: every master holds some (checked below).
    let keys: Vec<String> = (0..12).map(|i| format!("wait-{i}")).collect();
    let (report, mut reports) = tokio::sync::mpsc::unbounded_channel();
    let firsts: Vec<_> = keys
        .iter()
        .map(|key| tokio::spawn(call(key.clone(), 1, Some(report.clone()))))
        .collect();
    for _ in &keys {
        reports.recv().await.expect("a first call started its body");
    }
    let started = std::time::Instant::now();
    let waiters: Vec<_> = keys
        .iter()
        .map(|key| tokio::spawn(call(key.clone(), 2, None)))
        .collect();
    for waiter in waiters {
        let executed = waiter.await.unwrap();
        assert!(executed.replayed);
        assert_eq!(executed.value, 1, "the first call's value");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by notices, not by the 10 s wait running out: {:?}",
        started.elapsed()
    );
    for first in firsts {
        assert!(!first.await.unwrap().replayed);
    }
    for node in &cluster.nodes {
        let reply = node.command(&["DBSIZE"]).unwrap();
        let keys: usize = reply.trim().trim_start_matches(':').parse().unwrap();
        assert!(keys > 0, "a master holds none of the keys: {reply}");
    }
}
