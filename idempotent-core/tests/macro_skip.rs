//! What the payload fingerprint of an `#[idempotent]` function covers:
//! `skip_all` leaves every argument out (the key alone identifies the call),
//! `skip(...)` the arguments it names; the others are fingerprinted as the
//! tuple of their values, in order.

use std::sync::atomic::{AtomicU32, Ordering};

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation, idempotent};

/// How a call runs, not what it asks for: not `Serialize`.
struct Mailer {
    sent: AtomicU32,
}

impl Mailer {
    fn new() -> Self {
        Self {
            sent: AtomicU32::new(0),
        }
    }

    fn send(&self) -> u32 {
        self.sent.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn sent(&self) -> u32 {
        self.sent.load(Ordering::SeqCst)
    }
}

#[idempotent(key = order, runtime = rt, skip_all, name = "macro_skip.notify")]
async fn notify(
    rt: &Idempotency,
    mailer: &Mailer,
    order: &str,
    text: String,
) -> Result<u32, Error> {
    let _ = text;
    Ok(mailer.send())
}

#[tokio::test]
async fn with_skip_all_the_key_alone_identifies_the_call() {
    let rt = Idempotency::new(MemoryStore::new());
    let mailer = Mailer::new();
    assert_eq!(
        notify(&rt, &mailer, "order-1", "Shipped".into())
            .await
            .unwrap(),
        1
    );
    // Other arguments under the same key: a replay, not a reused key.
    assert_eq!(
        notify(&rt, &mailer, "order-1", "Delivered".into())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        notify(&rt, &mailer, "order-1", String::new())
            .await
            .unwrap(),
        1
    );
    assert_eq!(mailer.sent(), 1, "the body ran once");
    // Another key is another call.
    assert_eq!(
        notify(&rt, &mailer, "order-2", "Shipped".into())
            .await
            .unwrap(),
        2
    );
    assert_eq!(mailer.sent(), 2);
}

#[tokio::test]
async fn with_skip_all_the_payload_is_empty() {
    static NOTIFY: Operation = Operation::new("macro_skip.notify");
    let rt = Idempotency::new(MemoryStore::new());
    let mailer = Mailer::new();
    assert_eq!(
        notify(&rt, &mailer, "order-1", "Shipped".into())
            .await
            .unwrap(),
        1
    );
    // A call of the same operation and key whose payload is `()` replays it.
    let replayed = rt
        .call(&NOTIFY)
        .key("order-1")
        .payload(&())
        .run(async { Ok::<u32, Error>(mailer.send()) })
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!((replayed.value, mailer.sent()), (1, 1));
}

#[idempotent(key = order, runtime = rt, skip(mailer), name = "macro_skip.charge")]
async fn charge(rt: &Idempotency, mailer: &Mailer, order: &str, amount: u64) -> Result<u32, Error> {
    let _ = amount;
    Ok(mailer.send())
}

#[tokio::test]
async fn skipped_arguments_are_left_out_and_the_others_fingerprinted() {
    let rt = Idempotency::new(MemoryStore::new());
    let (first, second) = (Mailer::new(), Mailer::new());
    assert_eq!(charge(&rt, &first, "order-1", 1000).await.unwrap(), 1);
    // Another (skipped) mailer, same amount: a replay.
    assert_eq!(charge(&rt, &second, "order-1", 1000).await.unwrap(), 1);
    // Another amount under the same key: refused.
    let error = charge(&rt, &first, "order-1", 2000).await.unwrap_err();
    assert!(error.is_key_reused(), "{error:?}");
    assert_eq!((first.sent(), second.sent()), (1, 0), "the body ran once");
}

#[tokio::test]
async fn the_payload_is_the_tuple_of_the_fingerprinted_arguments() {
    // Records stored before an upgrade must keep matching: the fingerprint
    // is that of `(order, amount)`, as a call built by hand computes it.
    static CHARGE: Operation = Operation::new("macro_skip.charge");
    let rt = Idempotency::new(MemoryStore::new());
    let mailer = Mailer::new();
    assert_eq!(charge(&rt, &mailer, "order-1", 1000).await.unwrap(), 1);
    let by_hand = |amount: u64| {
        rt.call(&CHARGE)
            .key("order-1")
            .payload(&("order-1", amount))
            .run(async { Ok::<u32, Error>(mailer.send()) })
    };
    let replayed = by_hand(1000).await.unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.value, 1);
    assert!(by_hand(1001).await.unwrap_err().is_key_reused());
    assert_eq!(mailer.sent(), 1);
}

#[idempotent(key = order, runtime = rt, fingerprint = (order, amount), name = "macro_skip.charge")]
async fn charge_explicitly(
    rt: &Idempotency,
    mailer: &Mailer,
    order: &str,
    amount: u64,
) -> Result<u32, Error> {
    let _ = amount;
    Ok(mailer.send())
}

#[tokio::test]
async fn fingerprint_covers_its_value_as_the_arguments_would() {
    let rt = Idempotency::new(MemoryStore::new());
    let mailer = Mailer::new();
    assert_eq!(charge(&rt, &mailer, "order-1", 1000).await.unwrap(), 1);
    // `fingerprint = (order, amount)` is the default payload of `charge`.
    assert_eq!(
        charge_explicitly(&rt, &mailer, "order-1", 1000)
            .await
            .unwrap(),
        1
    );
    let error = charge_explicitly(&rt, &mailer, "order-1", 5)
        .await
        .unwrap_err();
    assert!(error.is_key_reused(), "{error:?}");
    assert_eq!(mailer.sent(), 1);
}
