//! Journaled steps: recorded only under the call's live lease, kept across
//! a release for the retry, extending the lease, cleared and expired.

use std::collections::HashMap;

use super::*;
use crate::store::{StepLog, StepWrite};

fn write<'a>(token: LeaseToken, name: &'a str, value: &'a [u8]) -> StepWrite<'a> {
    StepWrite {
        token,
        fingerprint: FP,
        name,
        value,
        lease: LONG_LEASE,
        ttl: TTL,
    }
}

fn log(entries: &[(&str, &[u8])]) -> Option<StepLog> {
    Some(StepLog {
        fingerprint: FP,
        values: entries
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.to_vec()))
            .collect::<HashMap<_, _>>(),
    })
}

async fn steps<S: Store + ?Sized>(store: &S, key: &StorageKey) -> Option<StepLog> {
    store.steps(key).await.expect("steps")
}

/// The live lease records steps, each under its name (a name recorded
/// again is replaced), with the call's fingerprint; a call with none has
/// none.
pub async fn steps_are_recorded_under_the_live_lease<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    assert_eq!(steps(s, &k).await, None, "no steps yet");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    assert_eq!(steps(s, &k).await, None, "a claim records no step");
    s.record_step(&k, write(token, "charge", b"ch_1"))
        .await
        .expect("record");
    s.record_step(&k, write(token, "email", b""))
        .await
        .expect("record an empty value");
    s.record_step(&k, write(token, "reserve", &[0, 255, 10]))
        .await
        .expect("record binary");
    s.record_step(&k, write(token, "reserve", b"r-2"))
        .await
        .expect("record again");
    assert_eq!(
        steps(s, &k).await,
        log(&[("charge", b"ch_1"), ("email", b""), ("reserve", b"r-2")])
    );
    // Another call's key has its own steps.
    assert_eq!(steps(s, &key(case, "other")).await, None);
}

/// A token that is not the live lease's records nothing: forged, released,
/// taken over after its lease ran out, or on a completed record.
pub async fn only_the_live_lease_records_a_step<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LEASE).await;
    let forged = LeaseToken::from_u128(token.as_u128() ^ 0xFFFF_0000_FFFF);
    assert_lease_lost(s.record_step(&k, write(forged, "a", b"x")).await, "forged");
    let mut other_fp = write(token, "a", b"x");
    other_fp.fingerprint = OTHER_FP;
    assert_lease_lost(s.record_step(&k, other_fp).await, "another fingerprint");
    assert_eq!(steps(s, &k).await, None, "nothing recorded");

    // Ran out and taken over: the stale owner is fenced.
    tokio::time::sleep(PAST_LEASE).await;
    let next = acquire(s, &k, FP, LONG_LEASE).await;
    assert_lease_lost(
        s.record_step(&k, write(token, "a", b"stale")).await,
        "stale",
    );
    s.record_step(&k, write(next, "a", b"fresh"))
        .await
        .expect("record");
    assert_eq!(steps(s, &k).await, log(&[("a", b"fresh")]));

    // Released, or completed: no lease left to record under.
    let released = key(case, "released");
    let token = acquire(s, &released, FP, LONG_LEASE).await;
    s.release(&released, token).await.expect("release");
    assert_lease_lost(
        s.record_step(&released, write(token, "a", b"x")).await,
        "released",
    );
    let completed_key = key(case, "completed");
    let token = acquire(s, &completed_key, FP, LONG_LEASE).await;
    s.complete(&completed_key, token, FP, b"done", TTL)
        .await
        .expect("complete");
    assert_lease_lost(
        s.record_step(&completed_key, write(token, "a", b"x")).await,
        "completed",
    );
    assert_eq!(steps(s, &released).await, None);
    assert_eq!(steps(s, &completed_key).await, None);
    // A key without a record: nothing to record under.
    let absent = key(case, "absent");
    assert_lease_lost(
        s.record_step(&absent, write(token, "a", b"x")).await,
        "absent",
    );
}

/// Steps outlive the call's release and its lease: the retry that claims
/// the key again reads them, and records more.
pub async fn steps_outlive_a_release_and_a_lapsed_lease<S: Store + ?Sized>(
    store: &Arc<S>,
    case: &str,
) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    s.record_step(&k, write(token, "charge", b"ch_1"))
        .await
        .expect("record");
    s.release(&k, token).await.expect("release");
    assert_eq!(steps(s, &k).await, log(&[("charge", b"ch_1")]));

    let token = acquire(s, &k, FP, LONG_LEASE).await;
    let mut short = write(token, "reserve", b"r_1");
    short.lease = LEASE;
    s.record_step(&k, short).await.expect("record");
    // The lease lapses (a crash): the steps stay.
    tokio::time::sleep(PAST_LEASE).await;
    acquire(s, &k, FP, LONG_LEASE).await;
    assert_eq!(
        steps(s, &k).await,
        log(&[("charge", b"ch_1"), ("reserve", b"r_1")])
    );
}

/// Recording a step extends the call's lease from now, as a renewal does.
pub async fn recording_a_step_extends_the_lease<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LEASE).await;
    let mut longer = write(token, "a", b"x");
    longer.lease = LEASE * 4;
    s.record_step(&k, longer).await.expect("record");
    tokio::time::sleep(PAST_LEASE).await;
    assert_in_progress(&claim(s, &k, FP).await, "held past the claim's lease");
    s.complete(&k, token, FP, b"done", TTL)
        .await
        .expect("the owner completes");
}

/// Cleared steps are gone (clearing none succeeds); steps expire at their TTL.
pub async fn steps_are_cleared_and_expire<S: Store + ?Sized>(store: &Arc<S>, case: &str) {
    let s: &S = store;
    let k = key(case, "k");
    let token = acquire(s, &k, FP, LONG_LEASE).await;
    s.record_step(&k, write(token, "a", b"x"))
        .await
        .expect("record");
    s.complete(&k, token, FP, b"done", TTL)
        .await
        .expect("complete");
    s.clear_steps(&k).await.expect("clear");
    assert_eq!(steps(s, &k).await, None);
    s.clear_steps(&k).await.expect("clear nothing");
    assert_eq!(
        claim(s, &k, FP).await,
        completed(b"done"),
        "the record stays"
    );

    let short = key(case, "short");
    let token = acquire(s, &short, FP, LONG_LEASE).await;
    let mut brief = write(token, "a", b"x");
    brief.ttl = Duration::from_millis(150);
    s.record_step(&short, brief).await.expect("record");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(steps(s, &short).await, None, "expired");
}

/// Runs every steps case concurrently on one shared store, and names the
/// cases that failed. Separate from [`run_all`]: a store of your own may
/// leave steps out ([`StoreError::Unsupported`]); every store of this
/// crate journals them.
pub async fn run_steps<S: Store + ?Sized>(store: Arc<S>) {
    let cases = vec![
        spawn(&store, "steps_are_recorded_under_the_live_lease", |s, c| {
            Box::pin(async move { steps_are_recorded_under_the_live_lease(&s, c).await })
        }),
        spawn(&store, "only_the_live_lease_records_a_step", |s, c| {
            Box::pin(async move { only_the_live_lease_records_a_step(&s, c).await })
        }),
        spawn(
            &store,
            "steps_outlive_a_release_and_a_lapsed_lease",
            |s, c| Box::pin(async move { steps_outlive_a_release_and_a_lapsed_lease(&s, c).await }),
        ),
        spawn(&store, "recording_a_step_extends_the_lease", |s, c| {
            Box::pin(async move { recording_a_step_extends_the_lease(&s, c).await })
        }),
        spawn(&store, "steps_are_cleared_and_expire", |s, c| {
            Box::pin(async move { steps_are_cleared_and_expire(&s, c).await })
        }),
    ];
    report(cases).await;
}

type Case<S> =
    fn(Arc<S>, &'static str) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

fn spawn<S: Store + ?Sized>(
    store: &Arc<S>,
    name: &'static str,
    case: Case<S>,
) -> (&'static str, tokio::task::JoinHandle<()>) {
    (name, tokio::spawn(case(Arc::clone(store), name)))
}
