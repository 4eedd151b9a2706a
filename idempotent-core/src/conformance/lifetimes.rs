//! How long records live: renewal, retention, and the longest durations.

use super::*;

/// Renewal pushes the lease out from now: the key is still held after the
/// original lease period, and lapses one lease after the last renewal.
pub async fn renewal_extends_the_lease<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    // Longer than `LEASE`: renewals a quarter lease apart must not miss it
    // when a loaded machine (the whole suite runs at once) stalls a task.
    let lease = LEASE * 3;
    let started = Instant::now();
    let token = acquire(s, &k, FP, lease).await;
    while started.elapsed() < lease + lease / 2 {
        tokio::time::sleep(lease / 4).await;
        s.renew(&k, token, lease).await.expect("renew");
    }
    assert_in_progress(&claim(s, &k, FP).await, "held past the original lease");
    assert_eq!(
        claim(s, &k, OTHER_FP).await,
        ClaimOutcome::KeyReused,
        "the record is live, so another payload is refused"
    );
    // No more renewals: the lease runs out one lease later.
    tokio::time::sleep(lease + PAST_LEASE - LEASE).await;
    acquire(s, &k, FP, LEASE).await;
    assert_lease_lost(s.renew(&k, token, lease).await, "renew after takeover");
}

/// A completed record replays for its TTL, then the key is free again.
pub async fn completed_records_expire_after_their_ttl<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LEASE).await;
    s.complete(&k, token, FP, b"r", Duration::from_millis(150))
        .await
        .expect("complete");
    assert_eq!(claim(s, &k, FP).await, completed(b"r"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expired: the same payload runs again, and so could another one.
    let again = acquire(s, &k, FP, LEASE).await;
    assert_ne!(again, token);
}

/// Completion replaces the lease's deadline with the TTL: a record completed
/// under a short lease is kept well past that lease.
pub async fn a_completed_record_outlives_its_lease<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LEASE).await;
    s.complete(&k, token, FP, b"kept", TTL)
        .await
        .expect("complete");
    tokio::time::sleep(PAST_LEASE).await;
    assert_eq!(claim(s, &k, FP).await, completed(b"kept"));
    assert_eq!(claim(s, &k, OTHER_FP).await, ClaimOutcome::KeyReused);
}

/// A lease, renewal or TTL of `Duration::MAX` is held (for a century), never
/// refused: a completion the store refused would leave the key to run again.
pub async fn the_longest_durations_are_held<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, Duration::MAX).await;
    assert_in_progress(&claim(s, &k, FP).await, "held under the longest lease");
    s.renew(&k, token, Duration::MAX).await.expect("renew");
    s.complete(&k, token, FP, b"kept", Duration::MAX)
        .await
        .expect("complete");
    assert_eq!(claim(s, &k, FP).await, completed(b"kept"));
}
