//! What a `#[idempotent(transaction = ...)]` function expands to.
//!
//! Without the `postgres` feature the same names exist as stand-ins, so that
//! such a function fails to build with one clear error (from
//! [`require_postgres!`](crate::__require_postgres)) instead of a list of
//! missing items.

#[cfg(feature = "postgres")]
use super::{Call, IdempotentOutput};

/// Nothing with the `postgres` feature; a compile error without it.
#[cfg(feature = "postgres")]
#[doc(hidden)]
#[macro_export]
macro_rules! __require_postgres {
    () => {};
}

/// Nothing with the `postgres` feature; a compile error without it.
#[cfg(not(feature = "postgres"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __require_postgres {
    () => {
        ::core::compile_error!(
            "`#[idempotent(transaction = ...)]` needs the `postgres` feature of idempotent-core: \
             idempotent-core = { version = \"...\", features = [\"postgres\"] }"
        );
    };
}

pub use crate::__require_postgres as require_postgres;

/// The runtime of a `transaction = ...` call without `runtime = ...`: the
/// process-wide default if one is set (its namespace and TTL), else one on
/// the transaction's own store. Built per call: next to a transaction's round
/// trips, an `Arc` is nothing.
#[cfg(feature = "postgres")]
pub fn transaction_runtime(store: &crate::postgres::PostgresStore) -> crate::Idempotency {
    match crate::Idempotency::global() {
        Ok(global) => global.clone(),
        Err(_) => crate::Idempotency::new(store.clone()),
    }
}

/// How a `transaction = ...` call starts.
#[cfg(feature = "postgres")]
pub enum TxStart<'a, R> {
    /// Answered without running the body: a replay or an error.
    Done(R),
    /// The body runs in this transaction, then [`finish_transaction`].
    Fresh(crate::KeyTransaction<'a, crate::postgres::PostgresStore>),
}

/// Opens the transaction of a `transaction = ...` call.
#[cfg(feature = "postgres")]
pub async fn begin_transaction<'a, R: IdempotentOutput>(
    store: &crate::postgres::PostgresStore,
    call: Call<'a>,
) -> TxStart<'a, R> {
    match call.begin::<R::Ok, _>(store).await {
        Ok(crate::Begun::Fresh(tx)) => TxStart::Fresh(tx),
        Ok(crate::Begun::Replayed(value)) => TxStart::Done(R::from_result(Ok(value))),
        Err(error) => TxStart::Done(R::from_result(Err(error.into()))),
    }
}

/// The `idempotent` span of a `transaction = ...` call, for its body.
#[cfg(feature = "postgres")]
pub fn transaction_span(
    tx: &crate::KeyTransaction<'_, crate::postgres::PostgresStore>,
) -> tracing::Span {
    tx.span().clone()
}

/// The body of a `transaction = ...` call, run in its `idempotent` span
/// like the body of every other call.
#[cfg(feature = "postgres")]
pub fn in_span<F: std::future::Future>(
    span: tracing::Span,
    body: F,
) -> tracing::instrument::Instrumented<F> {
    tracing::Instrument::instrument(body, span)
}

/// The connection the body's `#[tx]` argument is bound to.
#[cfg(feature = "postgres")]
pub fn connection<'t>(
    tx: &'t mut crate::KeyTransaction<'_, crate::postgres::PostgresStore>,
) -> &'t mut sqlx::PgConnection {
    tx
}

/// Commits (an `Ok`) or rolls back (an `Err`) a `transaction = ...` call.
#[cfg(feature = "postgres")]
pub async fn finish_transaction<R: IdempotentOutput>(
    tx: crate::KeyTransaction<'_, crate::postgres::PostgresStore>,
    value: R,
) -> R {
    R::from_result(tx.finish(value.into_result()).await.map(|done| done.value))
}

#[cfg(not(feature = "postgres"))]
pub use stand_ins::*;

/// Stand-ins that type-check any `transaction = ...` expansion; the build
/// fails on `require_postgres!` before any of them could run.
#[cfg(not(feature = "postgres"))]
mod stand_ins {
    use std::marker::PhantomData;

    use super::super::Call;

    /// Stands in for the transaction.
    pub struct NoTransaction<'a>(PhantomData<&'a ()>);

    /// Stands in for the runtime of a transactional call.
    pub fn transaction_runtime(_store: &impl Sized) -> crate::Idempotency {
        unreachable!("`transaction = ...` needs the `postgres` feature")
    }

    /// Stands in for how a transactional call starts.
    pub enum TxStart<'a, R> {
        /// Never built.
        Done(R),
        /// Never built.
        Fresh(NoTransaction<'a>),
    }

    /// Stands in for opening the transaction.
    pub async fn begin_transaction<'a, R>(_store: &impl Sized, _call: Call<'a>) -> TxStart<'a, R> {
        unreachable!("`transaction = ...` needs the `postgres` feature")
    }

    /// Stands in for the call's span.
    pub fn transaction_span(_tx: &NoTransaction<'_>) {}

    /// Stands in for running the body in the span.
    pub fn in_span<F>(_span: (), body: F) -> F {
        body
    }

    /// Stands in for the body's connection.
    pub fn connection<T>(_tx: &mut NoTransaction<'_>) -> T {
        unreachable!("`transaction = ...` needs the `postgres` feature")
    }

    /// Stands in for committing.
    pub async fn finish_transaction<R>(_tx: NoTransaction<'_>, _value: R) -> R {
        unreachable!("`transaction = ...` needs the `postgres` feature")
    }
}
