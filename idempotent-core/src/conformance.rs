//! The store conformance suite: every rule of the [`record`](crate::record)
//! state machine, checked against a real store. Written once, run against
//! every store of this crate, and published (feature `conformance`) so that
//! a store of your own can prove it keeps the same promises.
//!
//! ```
//! use std::sync::Arc;
//! use idempotent_core::memory::MemoryStore;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() {
//! // In a test of your store: every case, on one shared store.
//! idempotent_core::conformance::run_all(Arc::new(MemoryStore::new())).await;
//! # }
//! ```
//!
//! [`run_all`] runs every case at once on one shared store (as a shared
//! server would be used) and panics naming the cases that failed; each case
//! is also a function of its own (`a_fresh_claim_acquires(&store, "name")`),
//! for a test per case. Cases take `&Arc<S>` for any `S: Store + ?Sized`, so
//! they run on a concrete store and on an `Arc<dyn Store>` alike.
//!
//! Time is REAL (a server keeps its own clock): leases and TTLs are a few
//! hundred milliseconds and the suite sleeps with `tokio::time::sleep`, so
//! it must run on an unpaused multi-threaded tokio runtime. Every case works
//! on keys of its own (the case name is part of each key), so cases can
//! share a store and run concurrently.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::{ClaimOutcome, LeaseToken, StorageKey};
use crate::{Fingerprint, IdempotencyKey, Store, StoreError};

/// The short lease of the cases about expiry and in-progress answers. Cases
/// that only need a record completed claim it with [`LONG_LEASE`], so that a
/// loaded machine cannot make the lease lapse before the completion.
const LEASE: Duration = Duration::from_millis(200);
/// Longer than [`LEASE`], with a margin: a lease not renewed for this long has run out.
const PAST_LEASE: Duration = Duration::from_millis(320);
/// A retention long enough never to run out during the suite.
const TTL: Duration = Duration::from_secs(60);
/// A lease long enough never to run out during the suite.
const LONG_LEASE: Duration = Duration::from_secs(30);

const FP: Fingerprint = Fingerprint::from_u128(0xF1);
const OTHER_FP: Fingerprint = Fingerprint::from_u128(0xF2);

/// Calls `$callback! { { $args } case, case, ... }` with every case: the one
/// list of cases.
macro_rules! for_each_case {
    ($callback:ident { $($args:tt)* }) => {
        $callback! {
            { $($args)* }
            a_fresh_claim_acquires,
            completion_replays_the_exact_bytes,
            a_different_payload_is_key_reused_while_in_progress,
            a_different_payload_is_key_reused_after_completion,
            a_running_call_answers_in_progress_within_its_lease,
            a_wrong_token_is_fenced_and_changes_nothing,
            a_completion_with_another_fingerprint_is_refused,
            a_completed_record_fences_every_token,
            release_makes_the_key_claimable_again,
            an_expired_lease_is_taken_over_and_the_stale_owner_is_fenced,
            a_lapsed_lease_cannot_complete_even_without_a_takeover,
            renewal_extends_the_lease,
            completed_records_expire_after_their_ttl,
            a_completed_record_outlives_its_lease,
            the_longest_durations_are_held,
            the_four_parts_of_a_storage_key_are_independent,
            wait_returns_when_the_holder_completes,
            wait_returns_when_the_holder_releases,
            concurrent_claims_acquire_exactly_once,
            concurrent_claims_with_two_payloads_acquire_exactly_once,
            concurrent_takeovers_of_an_expired_lease_acquire_exactly_once,
        }
    };
}

/// Runs every case concurrently on one shared store, and names the cases
/// that failed.
pub async fn run_all<S: Store + ?Sized>(store: Arc<S>) {
    macro_rules! spawn_all {
        ({} $($case:ident),* $(,)?) => {
            vec![$(
                (
                    stringify!($case),
                    tokio::spawn({
                        let store = Arc::clone(&store);
                        async move { $case(&store, stringify!($case)).await }
                    }),
                ),
            )*]
        };
    }
    let cases = for_each_case! { spawn_all {} };
    let mut failed = Vec::new();
    for (name, case) in cases {
        if let Err(error) = case.await {
            eprintln!("conformance case `{name}` failed: {error}");
            failed.push(name);
        }
    }
    assert!(failed.is_empty(), "failed conformance cases: {failed:?}");
}

fn key(case: &str, suffix: &str) -> StorageKey {
    let key: IdempotencyKey = format!("{case}-{suffix}").parse().expect("valid key");
    StorageKey::new("conformance", "tenant", "op", &key)
}

async fn acquire<S: Store + ?Sized>(
    store: &S,
    key: &StorageKey,
    fp: Fingerprint,
    lease: Duration,
) -> LeaseToken {
    match store.claim(key, fp, lease).await.expect("claim") {
        ClaimOutcome::Acquired(acquired) => {
            assert_eq!(
                acquired.duration, lease,
                "the lease granted is the one asked"
            );
            acquired.token
        }
        other => panic!("{key:?}: expected Acquired, got {other:?}"),
    }
}

async fn claim<S: Store + ?Sized>(store: &S, key: &StorageKey, fp: Fingerprint) -> ClaimOutcome {
    store.claim(key, fp, LEASE).await.expect("claim")
}

fn assert_in_progress(outcome: &ClaimOutcome, why: &str) {
    assert!(
        matches!(outcome, ClaimOutcome::InProgress { .. }),
        "{why}: expected InProgress, got {outcome:?}"
    );
}

fn assert_lease_lost(result: Result<(), StoreError>, what: &str) {
    assert!(
        matches!(result, Err(StoreError::LeaseLost)),
        "{what}: expected LeaseLost, got {result:?}"
    );
}

fn completed(bytes: &[u8]) -> ClaimOutcome {
    ClaimOutcome::Completed(bytes.into())
}

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

/// Namespace, scope, operation and key each make a different record.
pub async fn the_four_parts_of_a_storage_key_are_independent<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let id: IdempotencyKey = format!("{case}-k").parse().expect("key");
    let other: IdempotencyKey = format!("{case}-other").parse().expect("key");
    let base = StorageKey::new("ns", "scope", "op", &id);
    let token = acquire(s, &base, FP, LONG_LEASE).await;
    s.complete(&base, token, FP, b"base", TTL)
        .await
        .expect("complete");
    let variants = [
        ("namespace", StorageKey::new("ns2", "scope", "op", &id)),
        ("scope", StorageKey::new("ns", "scope2", "op", &id)),
        ("no scope", StorageKey::new("ns", "", "op", &id)),
        ("operation", StorageKey::new("ns", "scope", "op2", &id)),
        ("key", StorageKey::new("ns", "scope", "op", &other)),
    ];
    for (part, variant) in &variants {
        // Another payload too: a shared record would answer KeyReused.
        let token = match s.claim(variant, OTHER_FP, LONG_LEASE).await.expect("claim") {
            ClaimOutcome::Acquired(lease) => lease.token,
            other => panic!("another {part} must be another record, got {other:?}"),
        };
        s.complete(variant, token, OTHER_FP, part.as_bytes(), TTL)
            .await
            .expect("complete");
    }
    assert_eq!(claim(s, &base, FP).await, completed(b"base"));
    for (part, variant) in &variants {
        assert_eq!(
            claim(s, variant, OTHER_FP).await,
            completed(part.as_bytes())
        );
    }
}

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
