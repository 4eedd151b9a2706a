//! `LocalCache` in front of a real Redis: a replay of a record this process
//! completed is answered without a round trip (Redis is stopped to prove
//! it), a reused key is still refused, an entry ends with its record's
//! TTL, the bound holds, and a purged entry is gone, as is an evicted one.
#![cfg(feature = "redis")]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Idempotency, LocalCache, Operation};
use support::redis_server::RedisServer;

static CHARGE: Operation = Operation::new("cache.charge");
static BRIEF: Operation = Operation::new("cache.brief").ttl(Duration::from_millis(400));

async fn cached(server: &RedisServer, bytes: u64) -> LocalCache<RedisStore> {
    let store = RedisStore::builder()
        .url(server.url())
        .timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    LocalCache::new(store, bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_record_replays_from_the_cache_with_the_store_down() {
    let mut server = RedisServer::start();
    let cache = cached(&server, 1 << 20).await;
    let idempotency = Idempotency::new(cache.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |key: &'static str, amount: u64| {
        let (idempotency, runs) = (idempotency.clone(), runs.clone());
        async move {
            idempotency
                .call(&CHARGE)
                .key(key)
                .payload(&amount)
                .run(async move {
                    let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok::<_, Error>(format!("receipt {n}"))
                })
                .await
        }
    };
    assert_eq!(call("k1", 100).await.unwrap().value, "receipt 1");
    assert_eq!(call("k2", 100).await.unwrap().value, "receipt 2");

    tokio::task::block_in_place(|| server.shutdown());
    let replay = call("k1", 100).await.unwrap();
    assert!(replay.replayed);
    assert_eq!(replay.value, "receipt 1");
    let reused = call("k1", 999).await;
    assert!(matches!(reused, Err(Error::KeyReused { .. })), "{reused:?}");
    // A key the cache does not hold goes to the store, which is down.
    let unknown = call("k3", 100).await;
    assert!(
        matches!(unknown, Err(Error::StoreUnavailable(_))),
        "{unknown:?}"
    );
    // Purged: its replay needs the store too.
    cache.purge(&idempotent_core::record::StorageKey::new(
        "idem",
        "",
        CHARGE.name(),
        &"k2".parse().unwrap(),
    ));
    let purged = call("k2", 100).await;
    assert!(
        matches!(purged, Err(Error::StoreUnavailable(_))),
        "{purged:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_ends_with_its_records_ttl_and_the_bound_holds() {
    let server = RedisServer::start();
    let cache = cached(&server, 4_000).await;
    let idempotency = Idempotency::new(cache.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = |operation: &'static Operation, key: String| {
        let (idempotency, runs) = (idempotency.clone(), runs.clone());
        async move {
            idempotency
                .call(operation)
                .key(&key)
                .run(async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, Error>("x".repeat(200))
                })
                .await
        }
    };
    assert!(!call(&BRIEF, "b".into()).await.unwrap().replayed);
    assert!(call(&BRIEF, "b".into()).await.unwrap().replayed);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The record expired in Redis, and the entry with it: the body runs.
    assert!(!call(&BRIEF, "b".into()).await.unwrap().replayed);
    assert_eq!(runs.load(Ordering::SeqCst), 2);

    for i in 0..100 {
        call(&CHARGE, format!("many-{i}")).await.unwrap();
    }
    assert!(cache.bytes() <= 4_000, "{} bytes", cache.bytes());
    // Evicted entries still replay, from the store.
    let first = call(&CHARGE, "many-0".into()).await.unwrap();
    assert!(first.replayed);
}

/// An eviction through the cache drops its entry too: the next call with
/// the key runs again, instead of replaying what this process remembered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_record_is_not_replayed_from_the_cache() {
    use idempotent_core::admin::{Admin, Eviction};

    let server = RedisServer::start();
    let cache = cached(&server, 1 << 20).await;
    let idempotency = Idempotency::new(cache.clone());
    let runs = Arc::new(AtomicUsize::new(0));
    let call = || {
        let (idempotency, runs) = (idempotency.clone(), runs.clone());
        async move {
            idempotency
                .call(&CHARGE)
                .key("k1")
                .payload(&100)
                .run(async move { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
                .await
                .unwrap()
        }
    };
    assert_eq!(call().await.value, 1);
    assert!(call().await.replayed);
    let key =
        idempotent_core::record::StorageKey::new("idem", "", CHARGE.name(), &"k1".parse().unwrap());
    assert_eq!(
        cache.evict(&key, false).await.unwrap(),
        Eviction::Evicted { in_progress: false }
    );
    let again = call().await;
    assert!(!again.replayed);
    assert_eq!(again.value, 2, "the body ran again");
}
