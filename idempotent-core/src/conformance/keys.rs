//! The four parts of a storage key are independent.

use super::*;

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
