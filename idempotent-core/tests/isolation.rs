//! Different keys, scopes and operations are independent.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotent_core::memory::MemoryStore;
use idempotent_core::{Done, Error, Idempotency, Operation, Store, idempotent};
use support::bank::Bank;

#[tokio::test]
async fn different_keys_each_run() {
    let bank = Bank::new();
    for i in 0..10 {
        assert_eq!(
            bank.charge(&format!("pay-{i}"), 1000).await.unwrap().charge,
            i + 1
        );
    }
    assert_eq!(bank.runs(), 10);
}

#[tokio::test]
async fn the_same_key_in_two_scopes_is_two_keys() {
    let bank = Bank::new();
    let a = bank.charge_for("tenant-a", "pay-1", 1000).await.unwrap();
    let b = bank.charge_for("tenant-b", "pay-1", 1000).await.unwrap();
    assert_ne!(a, b, "tenant b must not see tenant a's receipt");
    assert_eq!(bank.charge_for("tenant-a", "pay-1", 1000).await.unwrap(), a);
    assert_eq!(bank.charge_for("tenant-b", "pay-1", 1000).await.unwrap(), b);
    assert_eq!(bank.runs(), 2);
}

#[tokio::test]
async fn the_same_key_for_two_operations_is_two_keys() {
    let bank = Bank::new();
    let charge = bank.charge("op-1", 1000).await.unwrap();
    let refund = bank.refund("op-1", 1000).await.unwrap();
    assert_ne!(charge, refund);
    assert_eq!(bank.runs(), 2);
}

static CHARGE: Operation = Operation::new("isolation.charge");
static REFUND: Operation = Operation::new("isolation.refund");

async fn call(
    idem: &Idempotency,
    operation: &Operation,
    scope: Option<&str>,
    key: &str,
    runs: &AtomicUsize,
) -> Done<usize> {
    let mut call = idem.call(operation).key(key).payload(&1000);
    if let Some(scope) = scope {
        call = call.scope(scope);
    }
    call.run(async { Ok::<_, Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) })
        .await
        .unwrap()
}

#[tokio::test]
async fn keys_scopes_and_operations_are_independent_through_the_engine() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = AtomicUsize::new(0);
    let cases: [(&Operation, Option<&str>, &str); 6] = [
        (&CHARGE, None, "k"),
        (&CHARGE, None, "k2"),
        (&CHARGE, Some("tenant-a"), "k"),
        (&CHARGE, Some("tenant-b"), "k"),
        (&REFUND, None, "k"),
        (&REFUND, Some("tenant-a"), "k"),
    ];
    let mut values = Vec::new();
    for (operation, scope, key) in cases {
        let executed = call(&idem, operation, scope, key, &runs).await;
        assert!(!executed.replayed, "{scope:?}/{key} ran on its own");
        values.push(executed.value);
    }
    assert_eq!(values, [1, 2, 3, 4, 5, 6]);
    // Each replays its own value.
    for ((operation, scope, key), value) in cases.into_iter().zip(values) {
        let replay = call(&idem, operation, scope, key, &runs).await;
        assert!(replay.replayed);
        assert_eq!(replay.value, value, "{scope:?}/{key}");
    }
    assert_eq!(runs.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn namespaces_separate_runtimes_that_share_a_store() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let billing = Idempotency::builder_shared(Arc::clone(&store))
        .namespace("billing")
        .build();
    let shipping = Idempotency::builder_shared(Arc::clone(&store))
        .namespace("shipping")
        .build();
    let billing_again = Idempotency::builder_shared(store)
        .namespace("billing")
        .build();
    let runs = AtomicUsize::new(0);
    assert_eq!(call(&billing, &CHARGE, None, "k", &runs).await.value, 1);
    assert_eq!(call(&shipping, &CHARGE, None, "k", &runs).await.value, 2);
    let shared = call(&billing_again, &CHARGE, None, "k", &runs).await;
    assert!(shared.replayed, "the same namespace is the same records");
    assert_eq!(shared.value, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_with_different_keys_all_run() {
    let idem = Idempotency::new(MemoryStore::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let (idem, runs) = (idem.clone(), Arc::clone(&runs));
            tokio::spawn(async move {
                idem.call(&CHARGE)
                    .key(&format!("order-{i}"))
                    .payload(&1000)
                    .run(async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok::<_, Error>(i)
                    })
                    .await
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let executed = task.await.unwrap().unwrap();
        assert_eq!(executed.value, i);
        assert!(!executed.replayed);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 200);
}

/// Two methods given one explicit operation name share their records: the
/// name, not the function, identifies the operation (so a renamed function
/// keeps its records).
struct Renamed {
    idem: Idempotency,
    runs: AtomicUsize,
}

impl Renamed {
    #[idempotent(key = id, runtime = self.idem, name = "billing.charge")]
    async fn charge_v1(&self, id: &str, amount: u64) -> Result<(u64, usize), Error> {
        Ok((amount, self.runs.fetch_add(1, Ordering::SeqCst) + 1))
    }

    #[idempotent(key = id, runtime = self.idem, name = "billing.charge")]
    async fn charge_v2(&self, id: &str, amount: u64) -> Result<(u64, usize), Error> {
        Ok((amount, self.runs.fetch_add(1, Ordering::SeqCst) + 1))
    }

    #[idempotent(key = id, runtime = self.idem)]
    async fn unnamed(&self, id: &str, amount: u64) -> Result<(u64, usize), Error> {
        Ok((amount, self.runs.fetch_add(1, Ordering::SeqCst) + 1))
    }
}

#[tokio::test]
async fn an_explicit_operation_name_is_shared_and_a_derived_one_is_not() {
    let service = Renamed {
        idem: Idempotency::new(MemoryStore::new()),
        runs: AtomicUsize::new(0),
    };
    let v1 = service.charge_v1("pay-1", 1000).await.unwrap();
    assert_eq!(service.charge_v2("pay-1", 1000).await.unwrap(), v1);
    assert_eq!(service.runs.load(Ordering::SeqCst), 1);
    let unnamed = service.unnamed("pay-1", 1000).await.unwrap();
    assert_eq!(unnamed, (1000, 2), "another operation, another record");
}

/// A trait's default method is one function for every implementor: its
/// derived operation name is still each implementor's own, so two types
/// never replay each other's records, whichever is called first.
trait Handler {
    fn runtime(&self) -> &Idempotency;
    fn label(&self) -> &'static str;

    #[idempotent(key = id, runtime = self.runtime())]
    async fn handle(&self, id: &str) -> Result<String, Error> {
        Ok(self.label().to_owned())
    }
}

struct Cards(Idempotency);
struct Transfers(Idempotency);

impl Handler for Cards {
    fn runtime(&self) -> &Idempotency {
        &self.0
    }
    fn label(&self) -> &'static str {
        "cards"
    }
}

impl Handler for Transfers {
    fn runtime(&self) -> &Idempotency {
        &self.0
    }
    fn label(&self) -> &'static str {
        "transfers"
    }
}

#[tokio::test]
async fn a_default_trait_method_keeps_one_operation_per_implementor() {
    let idem = Idempotency::new(MemoryStore::new());
    let (cards, transfers) = (Cards(idem.clone()), Transfers(idem.clone()));
    assert_eq!(cards.handle("k-1").await.unwrap(), "cards");
    assert_eq!(transfers.handle("k-1").await.unwrap(), "transfers");
    // Each replays its own.
    assert_eq!(cards.handle("k-1").await.unwrap(), "cards");
    assert_eq!(transfers.handle("k-1").await.unwrap(), "transfers");
}

/// Arguments named like the expansion's own locals are the caller's, in the
/// key and in the body: the expansion's names are hygienic.
struct Hygiene(Idempotency);

impl Hygiene {
    #[idempotent(key = __idempotent_call, runtime = self.0)]
    async fn charge(
        &self,
        __idempotent_call: u64,
        __idempotent_operation: &str,
    ) -> Result<String, Error> {
        Ok(format!("{__idempotent_call} {__idempotent_operation}"))
    }
}

#[tokio::test]
async fn arguments_named_like_the_expansions_locals_are_the_callers() {
    let service = Hygiene(Idempotency::new(MemoryStore::new()));
    assert_eq!(service.charge(7, "card").await.unwrap(), "7 card");
    assert_eq!(service.charge(8, "card").await.unwrap(), "8 card");
    assert!(
        service.charge(7, "cash").await.is_err(),
        "key 7, another payload"
    );
}

/// Functions are told apart by where they are defined, not only by their
/// names: associated functions of two types in one module, an inherent and
/// a trait method of one name on one type, and the impls of one trait for
/// two instances of a generic type each keep records of their own.
struct Orders;
struct Refunds;

impl Orders {
    #[idempotent(key = id, runtime = rt)]
    async fn create(rt: &Idempotency, id: &str) -> Result<String, Error> {
        Ok("order".to_owned())
    }
}

impl Refunds {
    #[idempotent(key = id, runtime = rt)]
    async fn create(rt: &Idempotency, id: &str) -> Result<String, Error> {
        Ok("refund".to_owned())
    }
}

#[tokio::test]
async fn associated_functions_of_two_types_are_two_operations() {
    let idem = Idempotency::new(MemoryStore::new());
    for _ in 0..2 {
        assert_eq!(Orders::create(&idem, "k").await.unwrap(), "order");
        assert_eq!(Refunds::create(&idem, "k").await.unwrap(), "refund");
    }
}

trait Settle {
    async fn settle(&self, id: &str) -> Result<String, Error>;
}

struct Ledger(Idempotency);

impl Ledger {
    #[idempotent(key = id, runtime = self.0)]
    async fn settle(&self, id: &str) -> Result<String, Error> {
        Ok("inherent".to_owned())
    }
}

impl Settle for Ledger {
    #[idempotent(key = id, runtime = self.0)]
    async fn settle(&self, id: &str) -> Result<String, Error> {
        Ok("trait".to_owned())
    }
}

#[tokio::test]
async fn an_inherent_and_a_trait_method_of_one_name_are_two_operations() {
    let ledger = Ledger(Idempotency::new(MemoryStore::new()));
    for _ in 0..2 {
        assert_eq!(Ledger::settle(&ledger, "k").await.unwrap(), "inherent");
        assert_eq!(Settle::settle(&ledger, "k").await.unwrap(), "trait");
    }
}

struct Desk<Kind>(Idempotency, std::marker::PhantomData<Kind>);
struct CardDesk;
struct TransferDesk;

impl Settle for Desk<CardDesk> {
    #[idempotent(key = id, runtime = self.0)]
    async fn settle(&self, id: &str) -> Result<String, Error> {
        Ok("cards".to_owned())
    }
}

impl Settle for Desk<TransferDesk> {
    #[idempotent(key = id, runtime = self.0)]
    async fn settle(&self, id: &str) -> Result<String, Error> {
        Ok("transfers".to_owned())
    }
}

#[tokio::test]
async fn the_impls_for_two_instances_of_a_generic_type_are_two_operations() {
    let idem = Idempotency::new(MemoryStore::new());
    let cards = Desk::<CardDesk>(idem.clone(), std::marker::PhantomData);
    let transfers = Desk::<TransferDesk>(idem, std::marker::PhantomData);
    for _ in 0..2 {
        assert_eq!(cards.settle("k").await.unwrap(), "cards");
        assert_eq!(transfers.settle("k").await.unwrap(), "transfers");
    }
}
