//! The operations of [`Admin`]: a look at a record, eviction (and the
//! fencing of a forced one), stuck work and counts, run by [`run_admin`].
//! Each case works in a namespace of its own, `admin-<case>`, and looks at
//! the results of the whole-store operations in it only.

use super::*;
use crate::admin::{Admin, Eviction, RecordInfo, RecordStatus};

/// Runs every admin case concurrently on one shared store, and names the
/// cases that failed.
///
/// ```
/// use std::sync::Arc;
/// use idempotent_core::memory::MemoryStore;
///
/// # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
/// idempotent_core::conformance::run_admin(Arc::new(MemoryStore::new())).await;
/// # }
/// ```
pub async fn run_admin<S: Store + Admin + ?Sized>(store: Arc<S>) {
    report(spawn_cases! {
        { store }
        inspect_shows_a_record_in_progress_then_completed,
        evicting_a_completed_record_lets_its_key_run_again,
        a_live_lease_is_evicted_only_when_forced_and_its_owner_is_fenced,
        stuck_lists_calls_in_progress_longer_than_the_bound,
        count_tallies_live_records_per_operation,
    })
    .await;
}

fn admin_key(case: &str, operation: &str, id: &str) -> StorageKey {
    let id: IdempotencyKey = id.parse().expect("valid key");
    StorageKey::new(&format!("admin-{case}"), "tenant", operation, &id)
}

/// `inspect` of a key: nothing, then the record in progress (its owner,
/// its lease, how long it has run), then completed (its expiry, the size
/// of its response, and the response only when asked for).
pub async fn inspect_shows_a_record_in_progress_then_completed<S: Store + Admin + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = admin_key(case, "op", "k");
    assert_eq!(s.inspect(&k, true).await.expect("inspect"), None, "absent");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    let running = s
        .inspect(&k, true)
        .await
        .expect("inspect")
        .expect("present");
    assert_eq!((&running.key, running.fingerprint), (&k, FP));
    assert_eq!(running.layout, crate::record::LAYOUT);
    match running.status {
        RecordStatus::InProgress {
            owner,
            lease_left,
            running_for,
        } => {
            assert_eq!(owner, token, "the owner is the lease's token");
            assert!(
                lease_left > LONG_LEASE / 2 && lease_left <= LONG_LEASE,
                "{lease_left:?}"
            );
            let running_for = running_for.expect("a claim of this release has a claim time");
            assert!(running_for < Duration::from_secs(10), "{running_for:?}");
        }
        other => panic!("expected in progress, got {other:?}"),
    }
    s.complete(&k, token, FP, b"the response", TTL)
        .await
        .expect("complete");
    let completed_without = s
        .inspect(&k, false)
        .await
        .expect("inspect")
        .expect("present");
    match completed_without.status {
        RecordStatus::Completed {
            expires_in,
            response_len,
            response,
        } => {
            assert!(expires_in > TTL / 2 && expires_in <= TTL, "{expires_in:?}");
            assert_eq!(response_len, b"the response".len());
            assert_eq!(response, None, "not asked for");
        }
        other => panic!("expected completed, got {other:?}"),
    }
    let with = s
        .inspect(&k, true)
        .await
        .expect("inspect")
        .expect("present");
    assert!(
        matches!(&with.status, RecordStatus::Completed { response: Some(r), .. } if &r[..] == b"the response"),
        "{with:?}"
    );
}

/// A completed record evicted is gone: the next claim of its key acquires.
pub async fn evicting_a_completed_record_lets_its_key_run_again<S: Store + Admin + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = admin_key(case, "op", "k");
    assert_eq!(s.evict(&k, false).await.expect("evict"), Eviction::Absent);
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    s.complete(&k, token, FP, b"bad", TTL)
        .await
        .expect("complete");
    assert_eq!(
        s.evict(&k, false).await.expect("evict"),
        Eviction::Evicted { in_progress: false }
    );
    assert_eq!(s.inspect(&k, false).await.expect("inspect"), None);
    assert_eq!(s.evict(&k, false).await.expect("evict"), Eviction::Absent);
    acquire(s, &k, FP, LEASE).await;
}

/// A record in progress is not evicted unless forced; forced, its owner can
/// no longer complete, renew or release, and the key runs again.
pub async fn a_live_lease_is_evicted_only_when_forced_and_its_owner_is_fenced<
    S: Store + Admin + ?Sized,
>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = admin_key(case, "op", "k");
    let owner = acquire(s, &k, FP, LONG_LEASE).await;
    match s.evict(&k, false).await.expect("evict") {
        Eviction::Refused { lease_left } => {
            assert!(
                lease_left > Duration::ZERO && lease_left <= LONG_LEASE,
                "{lease_left:?}"
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_in_progress(
        &claim(s, &k, FP).await,
        "a refused eviction changes nothing",
    );
    assert_eq!(
        s.evict(&k, true).await.expect("evict"),
        Eviction::Evicted { in_progress: true }
    );
    assert_lease_lost(s.renew(&k, owner, LONG_LEASE).await, "renew after eviction");
    let retry = acquire(s, &k, FP, LONG_LEASE).await;
    assert_lease_lost(
        s.complete(&k, owner, FP, b"stale", TTL).await,
        "the evicted owner's completion",
    );
    assert_lease_lost(s.release(&k, owner).await, "the evicted owner's release");
    s.complete(&k, retry, FP, b"fresh", TTL)
        .await
        .expect("the new owner completes");
    assert_eq!(claim(s, &k, FP).await, completed(b"fresh"));
}

fn in_namespace(records: Vec<RecordInfo>, case: &str) -> Vec<StorageKey> {
    let namespace = format!("admin-{case}");
    records
        .into_iter()
        .filter(|record| record.key.parts().0 == namespace)
        .map(|record| record.key)
        .collect()
}

/// `stuck` lists the records in progress claimed at least the bound ago,
/// longest first, at most `limit`; not completed ones, nor younger ones.
pub async fn stuck_lists_calls_in_progress_longer_than_the_bound<S: Store + Admin + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let (oldest, old, young, done) = (
        admin_key(case, "op", "oldest"),
        admin_key(case, "op", "old"),
        admin_key(case, "op", "young"),
        admin_key(case, "op", "done"),
    );
    acquire(s, &oldest, FP, LONG_LEASE).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    acquire(s, &old, FP, LONG_LEASE).await;
    let token = acquire(s, &done, FP, LONG_LEASE).await;
    s.complete(&done, token, FP, b"ok", TTL)
        .await
        .expect("complete");
    tokio::time::sleep(Duration::from_millis(300)).await;
    acquire(s, &young, FP, LONG_LEASE).await;

    let stuck = s
        .stuck(Duration::from_millis(250), 1_000)
        .await
        .expect("stuck");
    assert_eq!(
        in_namespace(stuck, case),
        [oldest.clone(), old],
        "longest first"
    );
    let all = s.stuck(Duration::ZERO, 1_000).await.expect("stuck");
    assert_eq!(in_namespace(all, case).len(), 3, "every call in progress");
    let none = s
        .stuck(Duration::from_secs(3600), 1_000)
        .await
        .expect("stuck");
    assert_eq!(in_namespace(none, case), Vec::<StorageKey>::new());
    let first = s.stuck(Duration::ZERO, 1).await.expect("stuck");
    assert_eq!(first.len(), 1, "at most the limit");
}

/// `count` tallies the live records of each operation, in progress and
/// completed, apart.
pub async fn count_tallies_live_records_per_operation<S: Store + Admin + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    for id in ["a", "b", "c"] {
        let k = admin_key(case, "charge", id);
        let token = acquire(s, &k, FP, LONG_LEASE).await;
        if id != "c" {
            s.complete(&k, token, FP, b"ok", TTL)
                .await
                .expect("complete");
        }
    }
    acquire(s, &admin_key(case, "refund", "a"), FP, LONG_LEASE).await;
    let expired = admin_key(case, "refund", "gone");
    acquire(s, &expired, FP, Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;

    let namespace = format!("admin-{case}");
    let counts: Vec<(String, u64, u64)> = s
        .count()
        .await
        .expect("count")
        .into_iter()
        .filter(|count| count.namespace == namespace)
        .map(|count| (count.operation, count.in_progress, count.completed))
        .collect();
    assert_eq!(
        counts,
        [("charge".to_owned(), 1, 2), ("refund".to_owned(), 1, 0)],
        "an expired lease is not counted"
    );
}
