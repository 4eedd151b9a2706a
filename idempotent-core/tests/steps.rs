//! Journaled steps through the engine: a retry of a call replays the steps
//! an earlier run finished and runs only the rest, on each store (memory
//! here; Redis and PostgreSQL run the same cases in their own files).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::record::StorageKey;
use idempotent_core::{Error, Idempotency, Operation, Steps, Store};

/// Waits for a duplicate in progress: a dropped call's release reaches a
/// shared store a moment after the drop.
static CHECKOUT: Operation = Operation::new("checkout").wait(Duration::from_secs(5));
static SHORT: Operation = Operation::new("short-lease").lease(Duration::from_millis(300));

/// Side effects, counted.
#[derive(Clone, Default)]
struct Effects {
    charges: Arc<AtomicUsize>,
    reservations: Arc<AtomicUsize>,
    emails: Arc<AtomicUsize>,
}

impl Effects {
    fn counts(&self) -> (usize, usize, usize) {
        (
            self.charges.load(Ordering::SeqCst),
            self.reservations.load(Ordering::SeqCst),
            self.emails.load(Ordering::SeqCst),
        )
    }
}

/// Where a run of the checkout fails, after its earlier steps.
#[derive(Clone, Copy, PartialEq)]
enum FailAt {
    Nowhere,
    Reserve,
    Email,
}

/// A checkout of three steps; it fails at `fail_at` (after the earlier
/// steps ran and were recorded).
async fn checkout(
    runtime: &Idempotency,
    order: &str,
    amount: u64,
    effects: &Effects,
    fail_at: FailAt,
) -> Result<String, Error> {
    let steps = Steps::new();
    let done = runtime
        .call(&CHECKOUT)
        .key(order)
        .payload(&amount)
        .steps(&steps)
        .run(async {
            let charge: String = steps
                .run("charge", async {
                    let n = effects.charges.fetch_add(1, Ordering::SeqCst) + 1;
                    Ok::<_, Error>(format!("ch_{n}"))
                })
                .await?;
            let reservation: u64 = steps
                .run("reserve", async {
                    if fail_at == FailAt::Reserve {
                        return Err(Error::NotConfigured);
                    }
                    Ok(effects.reservations.fetch_add(1, Ordering::SeqCst) as u64 + 100)
                })
                .await?;
            steps
                .run("email", async {
                    if fail_at == FailAt::Email {
                        return Err(Error::NotConfigured);
                    }
                    effects.emails.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                })
                .await?;
            Ok::<_, Error>(format!("{charge}/{reservation}"))
        })
        .await?;
    Ok(done.value)
}

fn storage_key(order: &str) -> StorageKey {
    StorageKey::new("idem", "", CHECKOUT.name(), &order.parse().unwrap())
}

/// Each retry after an error replays the finished steps and runs the rest;
/// the completed call is then replayed whole, and its steps are deleted.
pub async fn a_retry_after_an_error_runs_only_the_unfinished_steps(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store.clone());
    let effects = Effects::default();
    let order = format!("order-{}", fastrand::u64(..));

    let failed = checkout(&runtime, &order, 100, &effects, FailAt::Reserve).await;
    assert!(matches!(failed, Err(Error::NotConfigured)), "{failed:?}");
    assert_eq!(effects.counts(), (1, 0, 0));
    let failed = checkout(&runtime, &order, 100, &effects, FailAt::Email).await;
    assert!(matches!(failed, Err(Error::NotConfigured)), "{failed:?}");
    assert_eq!(
        effects.counts(),
        (1, 1, 0),
        "the charge replayed, the reservation ran"
    );
    let receipt = checkout(&runtime, &order, 100, &effects, FailAt::Nowhere)
        .await
        .unwrap();
    assert_eq!(receipt, "ch_1/100", "the recorded values, not new ones");
    assert_eq!(effects.counts(), (1, 1, 1));
    assert_eq!(
        store.steps(&storage_key(&order)).await.unwrap(),
        None,
        "deleted"
    );

    // Replayed whole: no step runs.
    let again = checkout(&runtime, &order, 100, &effects, FailAt::Reserve)
        .await
        .unwrap();
    assert_eq!(again, "ch_1/100");
    assert_eq!(effects.counts(), (1, 1, 1));
}

/// A call dropped half-way (its task aborted, as a crash would leave it)
/// leaves its finished steps; the retry replays them.
pub async fn a_call_dropped_half_way_leaves_its_finished_steps(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store.clone());
    let effects = Effects::default();
    let order = format!("order-{}", fastrand::u64(..));
    let charged = Arc::new(tokio::sync::Notify::new());
    let task = {
        let (runtime, effects, order, charged) = (
            runtime.clone(),
            effects.clone(),
            order.clone(),
            charged.clone(),
        );
        tokio::spawn(async move {
            let steps = Steps::new();
            runtime
                .call(&CHECKOUT)
                .key(&order)
                .payload(&100_u64)
                .steps(&steps)
                .run(async {
                    steps
                        .run("charge", async {
                            effects.charges.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Error>("ch_1".to_owned())
                        })
                        .await?;
                    charged.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, Error>(String::new())
                })
                .await
        })
    };
    charged.notified().await;
    task.abort();
    let _ = task.await;
    // The dropped call released its key; the retry replays the charge.
    let receipt = checkout(&runtime, &order, 100, &effects, FailAt::Nowhere)
        .await
        .unwrap();
    assert_eq!(receipt, "ch_1/100");
    assert_eq!(effects.counts(), (1, 1, 1));
}

/// A caller whose lease ran out (its step blocked the thread past it) and
/// was taken over cannot record its step: it gets `LeaseLost`, and the new
/// owner's value is the one recorded.
pub async fn a_caller_whose_lease_was_taken_over_records_no_step(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store.clone());
    let order = format!("order-{}", fastrand::u64(..));
    let run = |label: &'static str, block: Duration| {
        let (runtime, order) = (runtime.clone(), order.clone());
        tokio::spawn(async move {
            let steps = Steps::new();
            runtime
                .call(&SHORT)
                .key(&order)
                .steps(&steps)
                .run(async {
                    let value: String = steps
                        .run("charge", async {
                            // Blocks its thread: no renewal runs meanwhile.
                            std::thread::sleep(block);
                            Ok::<_, Error>(label.to_owned())
                        })
                        .await?;
                    Ok::<_, Error>(value)
                })
                .await
        })
    };
    let stale = run("stale", Duration::from_millis(900));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = run("fresh", Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(fresh.value, "fresh");
    let stale = stale.await.unwrap();
    assert!(matches!(stale, Err(Error::LeaseLost { .. })), "{stale:?}");
}

/// Names: a name used twice in one call is refused (the step does not
/// run); names made in a loop are distinct and stable.
pub async fn step_names_are_unique_within_a_call(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store);
    let sent = Arc::new(AtomicUsize::new(0));
    let order = format!("order-{}", fastrand::u64(..));
    for attempt in 0..2 {
        let steps = Steps::new();
        let result = runtime
            .call(&CHECKOUT)
            .key(&order)
            .steps(&steps)
            .run(async {
                for i in 0..3 {
                    steps
                        .run(&format!("email-{i}"), async {
                            sent.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Error>(())
                        })
                        .await?;
                }
                if attempt == 0 {
                    return Err(Error::NotConfigured);
                }
                Ok::<_, Error>(())
            })
            .await;
        assert_eq!(result.is_ok(), attempt == 1, "{result:?}");
    }
    assert_eq!(sent.load(Ordering::SeqCst), 3, "each email once");

    let steps = Steps::new();
    let twice = runtime
        .call(&CHECKOUT)
        .key(&format!("{order}-twice"))
        .steps(&steps)
        .run(async {
            steps.run("email", async { Ok::<_, Error>(1) }).await?;
            steps.run("email", async { Ok::<_, Error>(2) }).await
        })
        .await;
    assert!(
        matches!(&twice, Err(Error::InvalidStep { name, .. }) if name == "email"),
        "{twice:?}"
    );
}

/// A step's error is returned and not recorded, unless the step caches
/// errors: then the retry gets the same error without running the step.
pub async fn a_step_may_record_its_error(store: Arc<dyn Store>) {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Declined {
        Card(String),
        Engine(String),
    }
    impl From<Error> for Declined {
        fn from(error: Error) -> Self {
            Self::Engine(error.to_string())
        }
    }
    let runtime = Idempotency::new(store);
    let tries = Arc::new(AtomicUsize::new(0));
    let order = format!("order-{}", fastrand::u64(..));
    for _ in 0..3 {
        let steps = Steps::new();
        let result = runtime
            .call(&CHECKOUT)
            .key(&order)
            .steps(&steps)
            .run(async {
                let charge: Result<String, Declined> = steps
                    .run_caching_errors("charge", async {
                        tries.fetch_add(1, Ordering::SeqCst);
                        Err(Declined::Card("insufficient funds".into()))
                    })
                    .await;
                // The call itself fails (and so is retried) on the decline.
                charge.map_err(|d| Error::InvalidPayload {
                    operation: "checkout".into(),
                    detail: format!("{d:?}"),
                })
            })
            .await;
        assert!(result.is_err());
    }
    assert_eq!(tries.load(Ordering::SeqCst), 1, "the decline was recorded");
}

/// `uuid`, `now` and `random` are the same on every run of a call; a
/// derived key is stable for the call and differs per name and per call.
pub async fn values_and_derived_keys_are_the_same_on_every_run(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store);
    let order = format!("order-{}", fastrand::u64(..));
    let mut seen = Vec::new();
    for attempt in 0..2 {
        let steps = Steps::new();
        let mut values = None;
        let _ = runtime
            .call(&CHECKOUT)
            .key(&order)
            .steps(&steps)
            .run(async {
                values = Some((
                    steps.uuid("order-id").await?,
                    steps.now("placed-at").await?,
                    steps.random("coupon").await?,
                    steps.key("stripe")?,
                    steps.key("mail")?,
                ));
                if attempt == 0 {
                    return Err(Error::NotConfigured);
                }
                Ok::<_, Error>(())
            })
            .await;
        seen.push(values.unwrap());
    }
    assert_eq!(seen[0], seen[1]);
    let (_, _, _, stripe, mail) = &seen[0];
    assert_ne!(stripe, mail);
    assert_eq!(stripe.len(), 32);

    let steps = Steps::new();
    let mut other = None;
    runtime
        .call(&CHECKOUT)
        .key(&format!("{order}-other"))
        .steps(&steps)
        .run(async {
            other = Some(steps.key("stripe")?);
            Ok::<_, Error>(())
        })
        .await
        .unwrap();
    assert_ne!(other.as_ref(), Some(stripe), "another call, another key");
}

/// Steps recorded for one payload are not replayed to another payload
/// under the same key (a release let it claim the key): `KeyReused`.
pub async fn steps_of_another_payload_are_key_reused(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store);
    let effects = Effects::default();
    let order = format!("order-{}", fastrand::u64(..));
    let _ = checkout(&runtime, &order, 100, &effects, FailAt::Reserve).await;
    let other = checkout(&runtime, &order, 999, &effects, FailAt::Nowhere).await;
    assert!(matches!(other, Err(Error::KeyReused { .. })), "{other:?}");
    assert_eq!(
        effects.counts(),
        (1, 0, 0),
        "nothing ran for the other payload"
    );
}

/// A handle used outside a call, or for a second call, is refused.
pub async fn a_handle_serves_one_running_call(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store);
    let steps = Steps::new();
    let outside = steps.run("x", async { Ok::<_, Error>(1) }).await;
    assert!(
        matches!(outside, Err(Error::InvalidStep { .. })),
        "{outside:?}"
    );
    assert!(steps.key("x").is_err());

    let order = format!("order-{}", fastrand::u64(..));
    runtime
        .call(&CHECKOUT)
        .key(&order)
        .steps(&steps)
        .run(async { Ok::<_, Error>(()) })
        .await
        .unwrap();
    let ran = AtomicUsize::new(0);
    let second = runtime
        .call(&CHECKOUT)
        .key(&format!("{order}-2"))
        .steps(&steps)
        .run(async {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(second, Err(Error::InvalidStep { .. })),
        "{second:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // Its key was released: a call with a new handle runs.
    runtime
        .call(&CHECKOUT)
        .key(&format!("{order}-2"))
        .steps(&Steps::new())
        .run(async { Ok::<_, Error>(()) })
        .await
        .unwrap();
}

/// A step whose `Err` was not recorded may run again under its name in
/// the same run (a loop that retries it).
pub async fn a_failed_step_may_be_tried_again_in_the_same_run(store: Arc<dyn Store>) {
    let runtime = Idempotency::new(store);
    let tries = AtomicUsize::new(0);
    let order = format!("order-{}", fastrand::u64(..));
    let steps = Steps::new();
    let done = runtime
        .call(&CHECKOUT)
        .key(&order)
        .steps(&steps)
        .run(async {
            loop {
                let charged = steps
                    .run("charge", async {
                        match tries.fetch_add(1, Ordering::SeqCst) {
                            0 => Err(Error::NotConfigured),
                            n => Ok(n),
                        }
                    })
                    .await;
                if let Ok(n) = charged {
                    return Ok::<_, Error>(n);
                }
            }
        })
        .await
        .unwrap();
    assert_eq!(done.value, 1);
}

/// Every case above, on `store`.
pub async fn all_cases(store: Arc<dyn Store>) {
    a_retry_after_an_error_runs_only_the_unfinished_steps(store.clone()).await;
    a_call_dropped_half_way_leaves_its_finished_steps(store.clone()).await;
    a_caller_whose_lease_was_taken_over_records_no_step(store.clone()).await;
    step_names_are_unique_within_a_call(store.clone()).await;
    a_step_may_record_its_error(store.clone()).await;
    values_and_derived_keys_are_the_same_on_every_run(store.clone()).await;
    steps_of_another_payload_are_key_reused(store.clone()).await;
    a_handle_serves_one_running_call(store.clone()).await;
    a_failed_step_may_be_tried_again_in_the_same_run(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_on_the_memory_store() {
    all_cases(Arc::new(MemoryStore::new())).await;
}

mod with_the_macro {
    use super::*;
    use idempotent_core::idempotent;

    /// A checkout through `#[idempotent]`, its steps from a `#[steps]`
    /// argument (which callers do not pass, and which is not fingerprinted).
    #[idempotent(key = order, runtime = runtime, wait = "1s", skip(effects, fail))]
    async fn checkout(
        runtime: &Idempotency,
        order: &str,
        amount: u64,
        #[steps] steps: Steps,
        effects: &Effects,
        fail: bool,
    ) -> Result<String, Error> {
        let charge: String = steps
            .run("charge", async {
                let n = effects.charges.fetch_add(1, Ordering::SeqCst) + 1;
                Ok::<_, Error>(format!("ch_{n}_{amount}"))
            })
            .await?;
        if fail {
            return Err(Error::NotConfigured);
        }
        steps
            .run("email", async {
                effects.emails.fetch_add(1, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await?;
        Ok(charge)
    }

    /// The same with a borrowed handle.
    #[idempotent(key = order, runtime = runtime, skip(effects))]
    async fn reserve(
        runtime: &Idempotency,
        order: &str,
        #[steps] steps: &Steps,
        effects: &Effects,
    ) -> Result<u64, Error> {
        steps
            .run("reserve", async {
                Ok::<_, Error>(effects.reservations.fetch_add(1, Ordering::SeqCst) as u64)
            })
            .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steps_argument_journals_the_steps_of_the_function() {
        let runtime = Idempotency::new(MemoryStore::new());
        let effects = Effects::default();
        let failed = checkout(&runtime, "o-1", 5, &effects, true).await;
        assert!(failed.is_err());
        let receipt = checkout(&runtime, "o-1", 5, &effects, false).await.unwrap();
        assert_eq!(receipt, "ch_1_5", "the charge replayed");
        assert_eq!(effects.counts(), (1, 0, 1));
        // Another amount under the same key: refused, nothing runs.
        let other = checkout(&runtime, "o-1", 6, &effects, false).await;
        assert!(matches!(other, Err(Error::KeyReused { .. })), "{other:?}");
        assert_eq!(effects.counts(), (1, 0, 1));
        assert_eq!(reserve(&runtime, "o-3", &effects).await.unwrap(), 0);
        assert_eq!(reserve(&runtime, "o-3", &effects).await.unwrap(), 0);
        assert_eq!(effects.counts(), (1, 1, 1));
    }
}

/// A store of one's own without journaled steps: the trait's defaults.
struct WithoutSteps(MemoryStore);

#[async_trait::async_trait]
impl Store for WithoutSteps {
    async fn claim(
        &self,
        key: &StorageKey,
        fingerprint: idempotent_core::Fingerprint,
        lease: Duration,
    ) -> Result<idempotent_core::record::ClaimOutcome, idempotent_core::StoreError> {
        self.0.claim(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StorageKey,
        token: idempotent_core::record::LeaseToken,
        fingerprint: idempotent_core::Fingerprint,
        response: &[u8],
        ttl: Duration,
    ) -> Result<(), idempotent_core::StoreError> {
        self.0
            .complete(key, token, fingerprint, response, ttl)
            .await
    }

    async fn release(
        &self,
        key: &StorageKey,
        token: idempotent_core::record::LeaseToken,
    ) -> Result<(), idempotent_core::StoreError> {
        self.0.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StorageKey,
        token: idempotent_core::record::LeaseToken,
        lease: Duration,
    ) -> Result<(), idempotent_core::StoreError> {
        self.0.renew(key, token, lease).await
    }
}

/// On a store without steps, a step is `InvalidStep` (not an outage), and
/// a call caching its errors does not store that error: the library's own
/// errors are never stored, so the retry runs the body again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_the_store_cannot_journal_is_never_stored_as_the_answer() {
    /// An application error that stores the library's errors as text.
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    enum ShopError {
        Engine(String),
    }
    impl From<Error> for ShopError {
        fn from(error: Error) -> Self {
            Self::Engine(error.to_string())
        }
    }
    let runtime = Idempotency::new(WithoutSteps(MemoryStore::new()));
    let runs = AtomicUsize::new(0);
    for _ in 0..2 {
        let steps = Steps::new();
        let result = runtime
            .call(&CHECKOUT)
            .key("no-steps-here")
            .steps(&steps)
            .run_caching_errors(async {
                runs.fetch_add(1, Ordering::SeqCst);
                steps.run("charge", async { Ok::<_, ShopError>(1) }).await
            })
            .await;
        assert!(
            matches!(&result, Err(ShopError::Engine(detail)) if detail.contains("does not support")),
            "{result:?}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "not stored: the body ran again"
    );
}

#[cfg(feature = "redis")]
#[path = "support/redis_server.rs"]
mod redis_server;

/// The same cases on Redis: a standalone server and a 3-master cluster.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_on_redis_standalone_and_cluster() {
    use idempotent_core::redis::RedisStore;
    let server = redis_server::RedisServer::start();
    all_cases(Arc::new(RedisStore::connect(&server.url()).await.unwrap())).await;
    let cluster = redis_server::RedisCluster::start(3);
    let store = RedisStore::builder()
        .url(cluster.url())
        .build()
        .await
        .unwrap();
    all_cases(Arc::new(store)).await;
}

#[cfg(feature = "postgres")]
#[path = "support/postgres_schema.rs"]
mod postgres_schema;

/// The same cases on PostgreSQL (lease mode), in a schema of their own; and
/// the same-transaction mode refuses steps, before anything runs.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_on_postgres_and_not_in_the_same_transaction() {
    let schema = postgres_schema::Schema::create("engine_steps").await;
    let store = schema.store().await;
    all_cases(Arc::new(store.clone())).await;

    let runtime = Idempotency::new(store.clone());
    let steps = Steps::new();
    let ran = AtomicUsize::new(0);
    let refused = runtime
        .call(&CHECKOUT)
        .key("in-a-transaction")
        .steps(&steps)
        .run_in_transaction(&store, |_tx| {
            ran.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok::<_, Error>(1_u64) })
        })
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidStep { .. })),
        "{refused:?}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}
