//! A claim and what it answers: a fresh key, a replay of the exact bytes, a
//! key reused with another payload, a call in progress, and the four parts of
//! a storage key kept apart.

use super::*;

/// A claim on a key never seen acquires it, and every claim gets its own token.
pub async fn a_fresh_claim_acquires<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let a = acquire(s, &key(case, "a"), FP, LEASE).await;
    let b = acquire(s, &key(case, "b"), FP, LONG_LEASE).await;
    assert_ne!(a, b, "two claims, two tokens");
}

/// The stored bytes come back exactly, whatever they hold, on every replay.
pub async fn completion_replays_the_exact_bytes<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let large: Vec<u8> = (0..64 * 1024).map(|i: u32| (i * 31 % 251) as u8).collect();
    let responses: [(&str, &[u8]); 5] = [
        ("binary", &binary),
        ("empty", b""),
        ("text", b"{\"receipt\":1}"),
        ("utf8", "reçu № 1".as_bytes()),
        ("large", &large),
    ];
    for (suffix, response) in responses {
        let k = key(case, suffix);
        let token = acquire(s, &k, FP, LONG_LEASE).await;
        s.complete(&k, token, FP, response, TTL)
            .await
            .expect("complete");
        for _ in 0..3 {
            assert_eq!(claim(s, &k, FP).await, completed(response), "{suffix}");
        }
    }
}

/// Another payload under a key in progress is refused, and does not disturb
/// the owner.
pub async fn a_different_payload_is_key_reused_while_in_progress<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    assert_eq!(claim(s, &k, OTHER_FP).await, ClaimOutcome::KeyReused);
    assert_in_progress(&claim(s, &k, FP).await, "the owner keeps the key");
    s.complete(&k, token, FP, b"r", TTL)
        .await
        .expect("the owner completes after a reused key");
    assert_eq!(claim(s, &k, FP).await, completed(b"r"));
}

/// Another payload under a completed key is refused, and the record still
/// replays for the original payload.
pub async fn a_different_payload_is_key_reused_after_completion<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    s.complete(&k, token, FP, b"r", TTL)
        .await
        .expect("complete");
    for _ in 0..2 {
        assert_eq!(claim(s, &k, OTHER_FP).await, ClaimOutcome::KeyReused);
        assert_eq!(claim(s, &k, FP).await, completed(b"r"));
    }
}

/// A duplicate of a running call is told to come back within the lease, and
/// the hint shrinks as the lease runs down.
pub async fn a_running_call_answers_in_progress_within_its_lease<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let lease = Duration::from_millis(400);
    acquire(s, &k, FP, lease).await;
    let retry_after = |outcome: ClaimOutcome| match outcome {
        ClaimOutcome::InProgress { retry_after } => retry_after,
        other => panic!("expected InProgress, got {other:?}"),
    };
    let first = retry_after(claim(s, &k, FP).await);
    assert!(
        first > Duration::ZERO && first <= lease,
        "retry_after {first:?} is not within the {lease:?} lease"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let later = retry_after(claim(s, &k, FP).await);
    assert!(
        later <= lease - Duration::from_millis(100),
        "150 ms later, retry_after {later:?} should be at most 300 ms"
    );
}
