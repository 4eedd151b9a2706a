//! The hook of the same-transaction mode: a store that claims a key inside a
//! transaction, so that the caller's own writes and the record commit
//! together.
//!
//! The engine drives it ([`Call::begin`](crate::Call::begin),
//! [`Call::run_in_transaction`](crate::Call::run_in_transaction)): it opens
//! the transaction with [`begin`](TransactionalStore::begin), answers a
//! completed record, a reused key or a duplicate in progress as it answers
//! any claim, runs the body on the open transaction, then
//! [`commit`](TransactionalStore::commit)s the result or
//! [`rollback`](TransactionalStore::rollback)s. The store only applies the
//! steps.

use std::ops::DerefMut;
use std::time::Duration;

use async_trait::async_trait;

use super::{Store, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::ClaimOutcome;

/// A [`Store`] whose record can live inside a transaction of the caller's
/// own writes: both commit, or neither does. The PostgreSQL store is one.
///
/// No lease is involved: the record lives and dies with the transaction,
/// and a crash rolls back both the writes and the claim.
///
/// A clone is a cheap handle on the same store: an open transaction keeps
/// one, so that the body may borrow whatever held the store.
///
/// Code generic over it runs on any such store, through the engine:
///
/// ```no_run
/// use idempotent_core::{Begun, Error, Idempotency, Operation, TransactionalStore};
///
/// static CHARGE: Operation = Operation::new("charge");
///
/// /// Whether this call replayed an earlier one.
/// async fn charge<S: TransactionalStore>(store: &S, runtime: &Idempotency) -> Result<bool, Error> {
///     match runtime.call(&CHARGE).key("order-42").begin::<u64, _>(store).await? {
///         Begun::Replayed(_) => Ok(true),
///         // Write through `tx` (it dereferences to the store's connection), then:
///         Begun::Fresh(tx) => Ok(tx.finish(Ok::<_, Error>(4200)).await?.replayed),
///     }
/// }
/// ```
#[async_trait]
pub trait TransactionalStore: Store + Clone {
    /// An open transaction holding a key's record. The body writes through
    /// what it dereferences to (for PostgreSQL, a `PgConnection`).
    type Transaction: DerefMut<Target: Send> + Send + 'static;

    /// Opens a transaction and claims `key` in it, in one step: a completed
    /// record is answered as it is (nothing is left open), and otherwise the
    /// record is written in the transaction with its final retention, `ttl`
    /// from now.
    ///
    /// A duplicate whose own transaction holds the key is waited on for
    /// `wait` at most (`None`: not at all), then answered
    /// [`ClaimOutcome::InProgress`]; so is a key a lease-mode caller holds.
    /// Anything but [`TransactionClaim::Acquired`] leaves no transaction
    /// open, and no lock held.
    async fn begin(
        &self,
        key: &StorageKey,
        fingerprint: Fingerprint,
        ttl: Duration,
        wait: Option<Duration>,
    ) -> Result<TransactionClaim<Self::Transaction>, StoreError>;

    /// Stores `response` as `key`'s result in `transaction`, then commits
    /// it with everything the body wrote. On an error nothing is committed
    /// (or, for a commit whose answer was lost, it is unknown whether it
    /// was: a retry then replays it or runs clean).
    async fn commit(
        &self,
        transaction: Self::Transaction,
        key: &StorageKey,
        response: &[u8],
    ) -> Result<(), StoreError>;

    /// Rolls `transaction` back, record included, before answering, so a
    /// retry that follows at once finds the key free. An error says the
    /// rollback could not be confirmed (the transaction still ends: for
    /// PostgreSQL, when its connection is next used); it is counted, not
    /// returned to the caller, whose answer does not depend on it.
    async fn rollback(&self, transaction: Self::Transaction) -> Result<(), StoreError>;
}

/// What [`TransactionalStore::begin`] found under a key.
#[derive(Debug)]
pub enum TransactionClaim<T> {
    /// The key is ours, in this open transaction.
    Acquired(T),
    /// The key is not ours: completed before, reused with another payload,
    /// or in progress elsewhere. No transaction is left open.
    Answered(ClaimOutcome),
}
