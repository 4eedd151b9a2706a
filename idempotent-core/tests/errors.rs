//! Errors: by default a failed body releases its key; with `cache_errors`,
//! the error is stored and replayed for its TTL.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Done, Error, Idempotency, Operation, idempotent};
use serde::{Deserialize, Serialize};
use support::bank::{Bank, PayError, StoredError};

#[tokio::test]
async fn a_failed_body_releases_the_key_and_a_retry_runs_again() {
    let bank = Bank::new();
    assert!(matches!(
        bank.charge_or_decline("pay-1", 1000, true).await,
        Err(PayError::Declined)
    ));
    let receipt = bank.charge_or_decline("pay-1", 1000, false).await.unwrap();
    assert_eq!(receipt.charge, 2);
    assert_eq!(bank.runs(), 2);
    // Now completed: replayed, even if the body would decline.
    assert_eq!(
        bank.charge_or_decline("pay-1", 1000, true).await.unwrap(),
        receipt
    );
    assert_eq!(bank.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn cached_errors_replay_until_their_ttl() {
    let bank = Bank::new();
    for _ in 0..3 {
        let error = bank
            .charge_caching_errors("pay-1", 1000, true)
            .await
            .unwrap_err();
        assert_eq!(error, StoredError::Declined(1));
    }
    // The error is replayed even though the body would now succeed.
    assert_eq!(
        bank.charge_caching_errors("pay-1", 1000, false)
            .await
            .unwrap_err(),
        StoredError::Declined(1)
    );
    assert_eq!(bank.runs(), 1);

    tokio::time::advance(Duration::from_secs(61)).await;
    let receipt = bank
        .charge_caching_errors("pay-1", 1000, false)
        .await
        .unwrap();
    assert_eq!(receipt.charge, 2);
}

#[derive(Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
enum ChargeError {
    #[error("declined on run {0}")]
    Declined(usize),
    #[error("{0}")]
    Idempotency(String),
}

impl From<Error> for ChargeError {
    fn from(error: Error) -> Self {
        Self::Idempotency(error.to_string())
    }
}

/// A call whose body declines on the runs listed in `declines`.
async fn charge(
    idem: &Idempotency,
    operation: &Operation,
    runs: &AtomicUsize,
    declines: &[usize],
    cache_errors: bool,
) -> Result<Done<usize>, ChargeError> {
    let call = idem.call(operation).key("order-1").payload(&1000);
    let body = async {
        let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
        if declines.contains(&run) {
            Err(ChargeError::Declined(run))
        } else {
            Ok(run)
        }
    };
    if cache_errors {
        call.run_caching_errors(body).await
    } else {
        call.run(body).await
    }
}

#[tokio::test]
async fn an_engine_error_reaches_the_caller_and_releases_the_key() {
    static OP: Operation = Operation::new("errors.release");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    for run in 1..=3 {
        assert_eq!(
            charge(&idem, &OP, &runs, &[1, 2, 3], false).await,
            Err(ChargeError::Declined(run)),
            "each retry runs the body again and gets its own error"
        );
    }
    let ok = charge(&idem, &OP, &runs, &[], false).await.unwrap();
    assert_eq!((ok.value, ok.replayed), (4, false));
    let replay = charge(&idem, &OP, &runs, &[5], false).await.unwrap();
    assert_eq!((replay.value, replay.replayed), (4, true));
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test(start_paused = true)]
async fn a_cached_error_is_kept_for_its_own_ttl() {
    static OP: Operation = Operation::new("errors.cached")
        .ttl(Duration::from_secs(3600))
        .error_ttl(Duration::from_secs(10));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    for _ in 0..3 {
        assert_eq!(
            charge(&idem, &OP, &runs, &[1], true).await,
            Err(ChargeError::Declined(1))
        );
    }
    tokio::time::advance(Duration::from_millis(9900)).await;
    assert_eq!(
        charge(&idem, &OP, &runs, &[], true).await,
        Err(ChargeError::Declined(1)),
        "still cached just before its 10 s"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_millis(200)).await;
    let ok = charge(&idem, &OP, &runs, &[], true).await.unwrap();
    assert_eq!((ok.value, ok.replayed), (2, false));
    // A success is kept for the operation's TTL, far beyond the error TTL.
    tokio::time::advance(Duration::from_secs(600)).await;
    let replay = charge(&idem, &OP, &runs, &[3], true).await.unwrap();
    assert_eq!((replay.value, replay.replayed), (2, true));
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn without_an_error_ttl_a_cached_error_is_kept_for_the_ttl() {
    static OP: Operation = Operation::new("errors.cached_ttl").ttl(Duration::from_secs(5));
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    assert!(charge(&idem, &OP, &runs, &[1], true).await.is_err());
    tokio::time::advance(Duration::from_millis(4900)).await;
    assert_eq!(
        charge(&idem, &OP, &runs, &[], true).await,
        Err(ChargeError::Declined(1))
    );
    tokio::time::advance(Duration::from_millis(200)).await;
    assert_eq!(charge(&idem, &OP, &runs, &[], true).await.unwrap().value, 2);
}

#[tokio::test]
async fn a_cached_error_is_never_re_executed_by_a_call_that_does_not_cache_errors() {
    static OP: Operation = Operation::new("errors.mixed");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    assert!(charge(&idem, &OP, &runs, &[1], true).await.is_err());
    let error = charge(&idem, &OP, &runs, &[], false).await.unwrap_err();
    assert!(
        matches!(&error, ChargeError::Idempotency(message) if message.contains("cached error")),
        "{error:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// The body ran, so its effects did: its value is returned even though it
/// cannot be stored, and every retry gets a codec error instead of running
/// the body again.
#[tokio::test]
async fn a_value_that_cannot_be_stored_is_returned_once_and_never_run_again() {
    static OP: Operation = Operation::new("errors.unencodable");
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let call = || {
        idem.call(&OP).key("order-1").payload(&1).run(async {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            // JSON maps need string keys: this value cannot be encoded.
            Ok::<_, Error>(HashMap::from([((n, n), n)]))
        })
    };
    let first = call().await.unwrap();
    assert_eq!(first.value, HashMap::from([((1, 1), 1)]));
    assert!(!first.replayed);
    for _ in 0..2 {
        let error = call().await.unwrap_err();
        assert!(
            matches!(&error, Error::Codec { action: "decode", detail, .. }
                if detail.contains("could not be stored") && detail.contains("key must be a string")),
            "{error:?}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the body ran once");
    // Another key is not affected.
    let other = idem.call(&OP).key("order-2").payload(&1);
    let value = other.run(async { Ok::<_, Error>(7) }).await.unwrap();
    assert_eq!(value.value, 7);
}

#[tokio::test]
async fn a_macro_body_error_with_bare_cache_errors_is_replayed() {
    struct Service {
        idem: Idempotency,
        runs: AtomicUsize,
    }
    impl Service {
        #[idempotent(key = id, runtime = self.idem, cache_errors)]
        async fn charge(&self, id: u64) -> Result<u64, ChargeError> {
            let run = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
            Err(ChargeError::Declined(run))
        }
    }
    let service = Service {
        idem: Idempotency::new(MemoryStore::new()),
        runs: AtomicUsize::new(0),
    };
    for _ in 0..3 {
        assert_eq!(service.charge(1).await, Err(ChargeError::Declined(1)));
    }
    assert_eq!(service.runs.load(Ordering::SeqCst), 1);
}
