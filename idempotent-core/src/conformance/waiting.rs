//! `wait`: a caller waiting on a key in progress wakes when it completes or
//! is released.

use super::*;

/// Waits on `k`, claiming again after every return (waits may return
/// spuriously, as the engine allows), until the record is no longer in
/// flight; returns how long that took.
async fn wait_until_settled<S: Store + ?Sized>(s: &S, k: &StorageKey) -> Duration {
    const WAIT: Duration = Duration::from_secs(3);
    let started = Instant::now();
    while matches!(claim(s, k, FP).await, ClaimOutcome::InProgress { .. }) {
        assert!(
            started.elapsed() < WAIT * 2,
            "the record never settled after {:?}",
            started.elapsed()
        );
        s.wait(k, WAIT).await.expect("wait");
    }
    started.elapsed()
}

/// A waiter returns soon after the holder completes, well before its timeout.
pub async fn wait_returns_when_the_holder_completes<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let k = key(case, "k");
    let token = acquire(&**store, &k, FP, LONG_LEASE).await;
    let holder = {
        let (store, k) = (Arc::clone(store), k.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.complete(&k, token, FP, b"done", TTL).await
        })
    };
    let waited = wait_until_settled(&**store, &k).await;
    assert!(
        waited < Duration::from_millis(1500),
        "a 3 s wait took {waited:?}: the completion did not wake it"
    );
    holder.await.expect("holder task").expect("complete");
    assert_eq!(claim(&**store, &k, FP).await, completed(b"done"));
}

/// A waiter returns soon after the holder releases, and can then claim.
pub async fn wait_returns_when_the_holder_releases<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let k = key(case, "k");
    let token = acquire(&**store, &k, FP, LONG_LEASE).await;
    let holder = {
        let (store, k) = (Arc::clone(store), k.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            store.release(&k, token).await
        })
    };
    // The first claim after the release acquires the key and ends the loop.
    let waited = wait_until_settled(&**store, &k).await;
    assert!(
        waited < Duration::from_millis(1500),
        "a 3 s wait took {waited:?}: the release did not wake it"
    );
    holder.await.expect("holder task").expect("release");
    assert_in_progress(
        &claim(&**store, &k, FP).await,
        "the waiter now owns the key",
    );
}
