//! Fencing: only the live lease's token completes, releases or renews, and a
//! lease that ran out is taken over.

use super::*;

/// `complete`, `release` and `renew` with a token that never held the lease
/// are refused and leave the record as it was.
pub async fn a_wrong_token_is_fenced_and_changes_nothing<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    let forged = LeaseToken::from_u128(token.as_u128() ^ 0xFFFF_0000_FFFF);
    assert_lease_lost(s.complete(&k, forged, FP, b"forged", TTL).await, "complete");
    assert_lease_lost(s.release(&k, forged).await, "release");
    assert_lease_lost(s.renew(&k, forged, LONG_LEASE).await, "renew");
    assert_in_progress(&claim(s, &k, FP).await, "the record is unchanged");
    s.complete(&k, token, FP, b"real", TTL)
        .await
        .expect("the owner still completes");
    assert_eq!(claim(s, &k, FP).await, completed(b"real"));
    // A token on a key that holds no record is refused too.
    let absent = key(case, "absent");
    assert_lease_lost(
        s.complete(&absent, token, FP, b"x", TTL).await,
        "absent complete",
    );
    assert_lease_lost(s.release(&absent, token).await, "absent release");
    assert_lease_lost(s.renew(&absent, token, LEASE).await, "absent renew");
    acquire(s, &absent, FP, LEASE).await;
}

/// Once completed, a record is no lease's: its own token can neither
/// complete it again, release it nor renew it.
pub async fn a_completed_record_fences_every_token<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    s.complete(&k, token, FP, b"first", TTL)
        .await
        .expect("complete");
    assert_lease_lost(
        s.complete(&k, token, FP, b"again", TTL).await,
        "complete twice",
    );
    assert_lease_lost(s.release(&k, token).await, "release after completion");
    assert_lease_lost(s.renew(&k, token, LEASE).await, "renew after completion");
    assert_eq!(claim(s, &k, FP).await, completed(b"first"));
}

/// `complete` with the right token but another fingerprint than the
/// claim's is refused and changes nothing (the Redis store writes the
/// completed record from the fingerprint it is given).
pub async fn a_completion_with_another_fingerprint_is_refused<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    assert_lease_lost(
        s.complete(&k, token, OTHER_FP, b"other", TTL).await,
        "another fingerprint",
    );
    assert_in_progress(&claim(s, &k, FP).await, "the record is unchanged");
    s.complete(&k, token, FP, b"r", TTL)
        .await
        .expect("the claim's fingerprint completes");
    assert_eq!(claim(s, &k, FP).await, completed(b"r"));
}

/// A released key is free at once, for any payload, and its old token is dead.
pub async fn release_makes_the_key_claimable_again<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let first = acquire(s, &k, FP, LONG_LEASE).await;
    s.release(&k, first).await.expect("release");
    assert_lease_lost(s.release(&k, first).await, "release twice");
    let second = acquire(s, &k, OTHER_FP, LONG_LEASE).await;
    assert_ne!(first, second);
    assert_lease_lost(s.complete(&k, first, FP, b"old", TTL).await, "old token");
    assert_eq!(
        claim(s, &k, FP).await,
        ClaimOutcome::KeyReused,
        "the key now belongs to the second payload"
    );
    s.complete(&k, second, OTHER_FP, b"second", TTL)
        .await
        .expect("complete");
    assert_eq!(claim(s, &k, OTHER_FP).await, completed(b"second"));
}

/// An owner whose lease ran out is replaced by the next claim; its stale
/// token can change nothing, and the new owner completes normally.
pub async fn an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let stale = acquire(s, &k, FP, LEASE).await;
    tokio::time::sleep(PAST_LEASE).await;
    let fresh = acquire(s, &k, FP, LONG_LEASE).await;
    assert_ne!(stale, fresh, "a takeover gets a new token");
    assert_lease_lost(
        s.complete(&k, stale, FP, b"stale", TTL).await,
        "stale complete",
    );
    assert_lease_lost(s.renew(&k, stale, LONG_LEASE).await, "stale renew");
    assert_lease_lost(s.release(&k, stale).await, "stale release");
    assert_in_progress(&claim(s, &k, FP).await, "the stale owner changed nothing");
    s.complete(&k, fresh, FP, b"fresh", TTL)
        .await
        .expect("the new owner completes");
    assert_eq!(claim(s, &k, FP).await, completed(b"fresh"));
    assert_lease_lost(
        s.complete(&k, stale, FP, b"stale", TTL).await,
        "stale complete after the new owner's",
    );
    assert_eq!(claim(s, &k, FP).await, completed(b"fresh"));
}

/// A lease that ran out cannot be completed or renewed, even if nobody took
/// the key over: the key is as free as if it were absent.
pub async fn a_lapsed_lease_cannot_complete_even_without_a_takeover<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LEASE).await;
    tokio::time::sleep(PAST_LEASE).await;
    assert_lease_lost(s.renew(&k, token, LONG_LEASE).await, "renew after lapse");
    assert_lease_lost(
        s.complete(&k, token, FP, b"late", TTL).await,
        "complete after lapse",
    );
    // Free for anyone, even another payload: nothing was stored.
    acquire(s, &k, OTHER_FP, LEASE).await;
}
