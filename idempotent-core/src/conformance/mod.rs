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
//!
//! The cases, by concern: `claims` (what a claim answers), `keys` (the four
//! parts of a storage key), `fencing` (only the live lease writes),
//! `lifetimes` (renewal and retention), `waiting` and `concurrency`, and
//! `steps` (journaled steps, run by [`run_steps`]), and `admin` (the
//! operations of [`Admin`](crate::admin::Admin), run by [`run_admin`]); this
//! file holds the list of cases, [`run_all`] and the helpers they share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::record::{ClaimOutcome, LeaseToken, StorageKey};
use crate::{Fingerprint, IdempotencyKey, Store, StoreError};

mod admin;
mod claims;
mod concurrency;
mod fencing;
mod keys;
mod lifetimes;
mod steps;
mod waiting;

pub use admin::*;
pub use claims::*;
pub use concurrency::*;
pub use fencing::*;
pub use keys::*;
pub use lifetimes::*;
pub use steps::*;
pub use waiting::*;

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

/// `spawn_cases! { { store } case, case, ... }`: each case in a task of its
/// own on `store`, named, for [`report`].
macro_rules! spawn_cases {
    ({ $store:ident } $($case:ident),* $(,)?) => {
        vec![$(
            (
                stringify!($case),
                tokio::spawn({
                    let store = Arc::clone(&$store);
                    async move { $case(&store, stringify!($case)).await }
                }),
            ),
        )*]
    };
}
use spawn_cases;

/// Runs every case concurrently on one shared store, and names the cases
/// that failed.
pub async fn run_all<S: Store + ?Sized>(store: Arc<S>) {
    report(for_each_case! { spawn_cases { store } }).await;
}

/// Waits for every case, and panics naming those that failed.
async fn report(cases: Vec<(&'static str, tokio::task::JoinHandle<()>)>) {
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
