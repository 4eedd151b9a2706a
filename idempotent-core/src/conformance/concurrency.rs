//! Concurrent claims and takeovers: exactly one caller acquires.

use super::*;

/// Claims `k` from `n` tasks started together; `fp(i)` is task `i`'s payload.
async fn claim_concurrently<S: Store + ?Sized>(
    store: &Arc<S>,
    k: &StorageKey,
    n: usize,
    fp: impl Fn(usize) -> Fingerprint,
) -> Vec<(Fingerprint, ClaimOutcome)> {
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (store, k, start, fp) = (Arc::clone(store), k.clone(), Arc::clone(&start), fp(i));
            tokio::spawn(async move {
                start.wait().await;
                (fp, store.claim(&k, fp, LONG_LEASE).await)
            })
        })
        .collect();
    let mut outcomes = Vec::with_capacity(n);
    for task in tasks {
        let (fp, outcome) = task.await.expect("claim task");
        outcomes.push((fp, outcome.expect("claim")));
    }
    outcomes
}

/// 100 simultaneous claims of one fresh key: exactly one acquires it.
pub async fn concurrent_claims_acquire_exactly_once<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let k = key(case, "k");
    let outcomes = claim_concurrently(store, &k, 100, |_| FP).await;
    let acquired = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, ClaimOutcome::Acquired(_)))
        .count();
    assert_eq!(acquired, 1, "{outcomes:?}");
    for (_, outcome) in &outcomes {
        assert!(
            matches!(
                outcome,
                ClaimOutcome::Acquired(_) | ClaimOutcome::InProgress { .. }
            ),
            "{outcome:?}"
        );
    }
}

/// Simultaneous claims with two payloads: one acquires, the same payload is
/// told it is in progress, the other payload is key reused.
pub async fn concurrent_claims_with_two_payloads_acquire_exactly_once<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let k = key(case, "k");
    let outcomes =
        claim_concurrently(store, &k, 60, |i| if i % 2 == 0 { FP } else { OTHER_FP }).await;
    let winners: Vec<Fingerprint> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, ClaimOutcome::Acquired(_)))
        .map(|(fp, _)| *fp)
        .collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    let winner = winners[0];
    for (fp, outcome) in &outcomes {
        match outcome {
            ClaimOutcome::Acquired(_) => {}
            ClaimOutcome::InProgress { .. } => {
                assert_eq!(*fp, winner, "in progress for the winner's payload only")
            }
            ClaimOutcome::KeyReused => {
                assert_ne!(*fp, winner, "key reused for the other payload only")
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Simultaneous claims of a key whose lease ran out: exactly one takes it over.
pub async fn concurrent_takeovers_of_an_expired_lease_acquire_exactly_once<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let k = key(case, "k");
    let stale = acquire(&**store, &k, FP, LEASE).await;
    tokio::time::sleep(PAST_LEASE).await;
    let outcomes = claim_concurrently(store, &k, 50, |_| FP).await;
    let tokens: Vec<LeaseToken> = outcomes
        .iter()
        .filter_map(|(_, o)| match o {
            ClaimOutcome::Acquired(lease) => Some(lease.token),
            _ => None,
        })
        .collect();
    assert_eq!(tokens.len(), 1, "{outcomes:?}");
    assert_ne!(tokens[0], stale);
    assert_lease_lost(
        store.complete(&k, stale, FP, b"stale", TTL).await,
        "stale complete",
    );
    store
        .complete(&k, tokens[0], FP, b"new owner", TTL)
        .await
        .expect("the one new owner completes");
    assert_eq!(claim(&**store, &k, FP).await, completed(b"new owner"));
}
