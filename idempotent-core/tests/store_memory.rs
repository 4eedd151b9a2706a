//! `MemoryStore`: the conformance suite, and what only it promises (the
//! bound on entries, expiry that removes records).

use std::sync::Arc;
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::{Fingerprint, Store, StoreError};

/// Every case at once through `Arc<dyn Store>` (the engine's view of a store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_all_cases_through_a_dyn_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    idempotent_core::conformance::run_all(store).await;
}

/// Every case at once on one store with a single shard and a bound: cases
/// sharing a shard (and its expiry heap) do not disturb each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_all_cases_on_one_shared_single_shard_store() {
    idempotent_core::conformance::run_all(Arc::new(
        MemoryStore::builder().shards(1).max_entries(10_000).build(),
    ))
    .await;
}

/// The journaled steps' cases, on one store with a single shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_steps() {
    idempotent_core::conformance::run_steps(Arc::new(MemoryStore::builder().shards(1).build()))
        .await;
}

/// The admin operations' cases (inspect, evict, stuck work, counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_conformance() {
    idempotent_core::conformance::run_admin(Arc::new(MemoryStore::new())).await;
}

fn key(i: usize) -> StorageKey {
    StorageKey::new("t", "", "op", &format!("k{i}").parse().unwrap())
}

const FP: Fingerprint = Fingerprint::from_u128(1);
const LEASE: Duration = Duration::from_secs(30);

/// A small bound is the store's, not each of 64 shards': ten calls in
/// flight fit in `max_entries(10)` whatever shards their keys hash to.
#[tokio::test(start_paused = true)]
async fn a_small_bound_holds_as_many_calls_as_it_says() {
    for round in 0..20 {
        let store = MemoryStore::builder().max_entries(10).build();
        for i in 0..10 {
            let claimed = store.claim(&key(round * 10 + i), FP, LEASE).await;
            assert!(
                matches!(claimed, Ok(ClaimOutcome::Acquired(_))),
                "{claimed:?}"
            );
        }
        let refused = store.claim(&key(1_000), FP, LEASE).await;
        assert!(
            matches!(refused, Err(StoreError::CapacityExceeded { limit: 10 })),
            "{refused:?}"
        );
    }
}

/// A bound that does not divide evenly among the shards is still never
/// exceeded: 16,385 over 64 shards is 256 or 257 a shard, not 257 each
/// (16,448 in all).
#[tokio::test(start_paused = true)]
async fn a_bound_that_does_not_divide_among_shards_is_never_exceeded() {
    let store = MemoryStore::builder().max_entries(16_385).build();
    for i in 0..25_000 {
        let k = key(i);
        let token = acquire(&store, &k, LEASE).await;
        store.complete(&k, token, FP, b"ok", LEASE).await.unwrap();
    }
    let held = store.len();
    assert!(held <= 16_385, "{held} records held");
    assert!(held > 16_000, "the bound is used: {held}");
}

/// Any shard count given works, the absurd ones included.
#[tokio::test(start_paused = true)]
async fn any_shard_count_builds_a_working_store() {
    for shards in [0, 3, usize::MAX] {
        for store in [
            MemoryStore::builder().shards(shards).build(),
            MemoryStore::builder()
                .shards(shards)
                .max_entries(1_000)
                .build(),
        ] {
            let token = acquire(&store, &key(1), LEASE).await;
            store
                .complete(&key(1), token, FP, b"ok", LEASE)
                .await
                .unwrap();
            assert_eq!(store.len(), 1, "{shards} shards");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_store_of_running_calls_refuses_new_claims() {
    let store = MemoryStore::builder().shards(1).max_entries(10).build();
    for i in 0..10 {
        assert!(matches!(
            store.claim(&key(i), FP, LEASE).await.unwrap(),
            ClaimOutcome::Acquired(_)
        ));
    }
    let refused = store.claim(&key(10), FP, LEASE).await;
    assert!(
        matches!(refused, Err(StoreError::CapacityExceeded { limit: 10 })),
        "{refused:?}"
    );
    // Nothing in progress was evicted: every call still holds its key.
    for i in 0..10 {
        assert!(matches!(
            store.claim(&key(i), FP, LEASE).await.unwrap(),
            ClaimOutcome::InProgress { .. }
        ));
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_store_evicts_the_completed_record_nearest_expiry() {
    let store = MemoryStore::builder().shards(1).max_entries(10).build();
    for i in 0..100 {
        let ClaimOutcome::Acquired(lease) = store.claim(&key(i), FP, LEASE).await.unwrap() else {
            panic!("key {i} acquired")
        };
        store
            .complete(&key(i), lease.token, FP, b"r", Duration::from_secs(3600))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(store.len() <= 10);
    }
    // The ten most recent are kept; the oldest went first.
    assert!(matches!(
        store.claim(&key(99), FP, LEASE).await.unwrap(),
        ClaimOutcome::Completed(_)
    ));
    assert!(matches!(
        store.claim(&key(0), FP, LEASE).await.unwrap(),
        ClaimOutcome::Acquired(_)
    ));
}

#[tokio::test(start_paused = true)]
async fn expired_records_are_removed_progressively() {
    let store = MemoryStore::builder().shards(1).build();
    for i in 0..10_000 {
        let ClaimOutcome::Acquired(lease) = store.claim(&key(i), FP, LEASE).await.unwrap() else {
            panic!("key {i} acquired")
        };
        store
            .complete(&key(i), lease.token, FP, b"r", Duration::from_secs(60))
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 10_000);
    tokio::time::advance(Duration::from_secs(61)).await;
    // Each call removes a bounded batch, so the cleanup is spread out...
    let other = StorageKey::new("t", "", "op", &"other".parse().unwrap());
    store.claim(&other, FP, LEASE).await.unwrap();
    let after_one_call = store.len();
    assert!(
        after_one_call < 10_000 && after_one_call > 1,
        "{after_one_call}"
    );
    // ... and finishes as calls go on.
    for _ in 0..200 {
        store.claim(&other, FP, LEASE).await.unwrap();
    }
    assert_eq!(store.len(), 1);
}

async fn acquire(
    store: &MemoryStore,
    k: &StorageKey,
    lease: Duration,
) -> idempotent_core::record::LeaseToken {
    match store.claim(k, FP, lease).await.unwrap() {
        ClaimOutcome::Acquired(lease) => lease.token,
        other => panic!("{k:?}: expected Acquired, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_bound_evicts_completed_records_and_never_one_in_progress() {
    let store = MemoryStore::builder().shards(1).max_entries(10).build();
    // Five running calls, then five completed records.
    for i in 0..5 {
        acquire(&store, &key(i), LEASE).await;
    }
    for i in 5..10 {
        let token = acquire(&store, &key(i), LEASE).await;
        store
            .complete(&key(i), token, FP, b"r", Duration::from_secs(3600))
            .await
            .unwrap();
    }
    // Five new claims fit, each by evicting a completed record.
    for i in 10..15 {
        acquire(&store, &key(i), LEASE).await;
        assert_eq!(store.len(), 10);
    }
    // Now everything is in progress: the next new key is refused...
    assert!(matches!(
        store.claim(&key(15), FP, LEASE).await,
        Err(StoreError::CapacityExceeded { limit: 10 })
    ));
    // ... and the completed records were the ones to go (a claim of one is a
    // new record, refused too), while every running call still holds its key.
    assert!(matches!(
        store.claim(&key(5), FP, LEASE).await,
        Err(StoreError::CapacityExceeded { .. })
    ));
    for i in (0..5).chain(10..15) {
        assert!(
            matches!(
                store.claim(&key(i), FP, LEASE).await.unwrap(),
                ClaimOutcome::InProgress { .. }
            ),
            "running call {i} was evicted"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_default_store_is_bounded_and_counts_its_evictions() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let store = MemoryStore::new();
    let beyond = 500;
    // The memory store answers at once: polled once, under the recorder
    // (its eviction counter is registered with the recorder installed at
    // the first eviction).
    let now = |claim: std::pin::Pin<&mut dyn std::future::Future<Output = _>>| {
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match metrics::with_local_recorder(&recorder, || claim.poll(&mut context)) {
            std::task::Poll::Ready(answer) => answer,
            std::task::Poll::Pending => panic!("the memory store answers at once"),
        }
    };
    for i in 0..idempotent_core::memory::DEFAULT_MAX_ENTRIES + beyond {
        let key = key(i);
        let claim = store.claim(&key, FP, LEASE);
        let ClaimOutcome::Acquired(lease) = now(std::pin::pin!(claim)).unwrap() else {
            panic!("a new key is acquired");
        };
        store
            .complete(&key, lease.token, FP, b"r", Duration::from_secs(3600))
            .await
            .unwrap();
    }
    // The bound holds per shard: a full shard evicts while others have room.
    let held = store.len();
    assert!(
        held <= idempotent_core::memory::DEFAULT_MAX_ENTRIES,
        "{held}"
    );
    let evicted: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == idempotent_core::telemetry::EVICTED)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            other => panic!("{other:?}"),
        })
        .sum();
    assert!(evicted >= beyond as u64, "{evicted}");
    assert_eq!(
        evicted,
        (idempotent_core::memory::DEFAULT_MAX_ENTRIES + beyond - held) as u64,
        "each eviction is counted"
    );
}

/// Leases are much shorter than retention, so in the deadline order every
/// running call comes before every completed record: eviction must still
/// find the completed one, however many calls are running.
#[tokio::test(start_paused = true)]
async fn the_bound_evicts_a_completed_record_behind_many_running_calls() {
    const BOUND: usize = 1000;
    let store = MemoryStore::builder().shards(1).max_entries(BOUND).build();
    let done = StorageKey::new("t", "", "op", &"done".parse().unwrap());
    let token = acquire(&store, &done, LEASE).await;
    store
        .complete(&done, token, FP, b"r", Duration::from_secs(3600))
        .await
        .unwrap();
    for i in 0..BOUND - 1 {
        acquire(&store, &key(i), LEASE).await;
    }
    assert_eq!(store.len(), BOUND);
    let claimed = store.claim(&key(BOUND), FP, LEASE).await;
    assert!(
        matches!(claimed, Ok(ClaimOutcome::Acquired(_))),
        "one completed record can be evicted, yet the claim got {claimed:?}"
    );
    assert_eq!(store.len(), BOUND);
}

#[tokio::test(start_paused = true)]
async fn expiry_removes_records_once_a_call_touches_their_shard() {
    let store = MemoryStore::builder().shards(1).build();
    let token = acquire(&store, &key(0), LEASE).await;
    store
        .complete(&key(0), token, FP, b"r", Duration::from_secs(1))
        .await
        .unwrap();
    acquire(&store, &key(1), Duration::from_secs(3)).await;
    assert_eq!(store.len(), 2);
    // Any call on the shard (here a refused renewal of an unknown key) purges it.
    let untouched = StorageKey::new("t", "", "op", &"nothing".parse().unwrap());
    let forged = idempotent_core::record::LeaseToken::from_u128(u128::MAX);

    tokio::time::advance(Duration::from_millis(1001)).await;
    assert!(store.renew(&untouched, forged, LEASE).await.is_err());
    assert_eq!(store.len(), 1, "the completed record expired");

    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(store.renew(&untouched, forged, LEASE).await.is_err());
    assert!(store.is_empty(), "the abandoned lease expired");
}

#[tokio::test(start_paused = true)]
async fn a_detached_release_frees_the_key_at_once() {
    let store = Arc::new(MemoryStore::new());
    let token = acquire(&store, &key(0), LEASE).await;
    Arc::clone(&store).release_detached(key(0), token, LEASE);
    // No task, no time: the very next claim acquires.
    acquire(&store, &key(0), LEASE).await;
}

#[tokio::test(start_paused = true)]
async fn wait_returns_when_the_lease_runs_out() {
    let store = MemoryStore::new();
    acquire(&store, &key(0), Duration::from_secs(2)).await;
    let started = tokio::time::Instant::now();
    store
        .wait(&key(0), Duration::from_secs(3600))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(3),
        "waited {waited:?}; the lease ran out after 2 s"
    );
    acquire(&store, &key(0), LEASE).await;
}

#[tokio::test(start_paused = true)]
async fn clones_share_their_records() {
    let store = MemoryStore::new();
    let clone = store.clone();
    let token = acquire(&store, &key(0), LEASE).await;
    clone
        .complete(&key(0), token, FP, b"shared", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        store.claim(&key(0), FP, LEASE).await.unwrap(),
        ClaimOutcome::Completed(b"shared"[..].into())
    );
    assert_eq!(clone.len(), 1);
}

#[tokio::test(start_paused = true)]
async fn responses_of_every_size_replay_exactly_including_after_a_takeover() {
    let store = MemoryStore::builder().shards(1).build();
    for (i, len) in [0usize, 1, 1023, 1024, 1025, 64 * 1024]
        .into_iter()
        .enumerate()
    {
        let response: Vec<u8> = (0..len).map(|b| (b % 251) as u8).collect();
        let k = key(10_000 + i);
        let token = acquire(&store, &k, LEASE).await;
        store
            .complete(&k, token, FP, &response, Duration::from_secs(1))
            .await
            .unwrap();
        let Ok(ClaimOutcome::Completed(stored)) = store.claim(&k, FP, LEASE).await else {
            panic!("length {len}: not completed");
        };
        assert_eq!(&stored[..], &response[..], "length {len}");
    }
    // Past the TTL the keys are taken over, and the new responses (of
    // another size class than the old ones) replay exactly too.
    tokio::time::advance(Duration::from_secs(2)).await;
    for (i, len) in [2000usize, 10, 0, 3000, 5, 1].into_iter().enumerate() {
        let response = vec![b'x'; len];
        let k = key(10_000 + i);
        let token = acquire(&store, &k, LEASE).await;
        store
            .complete(&k, token, FP, &response, Duration::from_secs(60))
            .await
            .unwrap();
        let Ok(ClaimOutcome::Completed(stored)) = store.claim(&k, FP, LEASE).await else {
            panic!("length {len}: not completed");
        };
        assert_eq!(&stored[..], &response[..], "taken over, length {len}");
    }
}

/// A `LocalCache` in front of a store keeps every promise of the store:
/// the whole suite, steps included, through the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_through_a_local_cache() {
    let cached = idempotent_core::LocalCache::new(MemoryStore::new(), 1 << 20);
    idempotent_core::conformance::run_all(Arc::new(cached.clone())).await;
    idempotent_core::conformance::run_steps(Arc::new(cached)).await;
}
