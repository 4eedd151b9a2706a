//! What `#[idempotent]` expands to. Not public API: no stability promise.
//!
//! The macro crate only parses and generates code; every behaviour is here
//! or in the `engine` module, as ordinary, unit-tested Rust.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::engine::{Call, Operation};
pub use crate::fingerprint::Fingerprint;
pub use std::time::Duration;

/// The lazily built [`Operation`] of one annotated function.
///
/// A method's default name holds its `Self` type, and one function can have
/// several: a trait's default method is one function (so one `static`) for
/// every implementor. The cell keeps one operation per `Self` type: the
/// first in a `OnceLock` (the only one, outside default methods), others in
/// a list.
#[derive(Debug)]
pub struct OperationCell {
    first: OnceLock<(&'static str, Operation)>,
    others: Mutex<Vec<(&'static str, &'static Operation)>>,
}

impl OperationCell {
    /// An empty cell, for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self {
            first: OnceLock::new(),
            others: Mutex::new(Vec::new()),
        }
    }

    /// The operation, built by `init` on first use.
    pub fn get_or_init(&self, init: impl FnOnce() -> Operation) -> &Operation {
        self.get_or_init_for("", init)
    }

    /// The operation of the method's `Self` type (`type_name::<Self>()`),
    /// built by `init` on that type's first use.
    pub fn get_or_init_for(
        &self,
        self_type: &'static str,
        init: impl FnOnce() -> Operation,
    ) -> &Operation {
        let mut init = Some(init);
        let (first_type, first) = self.first.get_or_init(|| match init.take() {
            Some(init) => (self_type, init()),
            None => unreachable!("`get_or_init` runs its closure at most once"),
        });
        if *first_type == self_type {
            return first;
        }
        let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, operation)) = others.iter().find(|(t, _)| *t == self_type) {
            return operation;
        }
        let Some(init) = init else {
            unreachable!("the first slot holds another type, so `init` was not used")
        };
        // Leaked: one per (function, `Self` type), for the life of the process.
        let operation: &'static Operation = Box::leak(Box::new(init()));
        others.push((self_type, operation));
        operation
    }
}

/// The operation name of a method: its `Self` type's path without generic
/// arguments, then the method name (`shop::Payments::charge`). Built once
/// per name and kept for the life of the process.
pub fn method_name(self_type: &'static str, method: &'static str) -> &'static str {
    static NAMES: OnceLock<Mutex<HashMap<(&'static str, &'static str), &'static str>>> =
        OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = names.lock().unwrap_or_else(PoisonError::into_inner);
    names.entry((self_type, method)).or_insert_with(|| {
        let base = self_type.split('<').next().unwrap_or(self_type);
        let base = base.trim_start_matches('&').trim_start_matches("mut ");
        Box::leak(format!("{base}::{method}").into_boxed_str())
    })
}

/// The return types `#[idempotent]` accepts: `Result<T, E>` with a
/// serializable `T` and an `E` that the library's errors convert into.
#[diagnostic::on_unimplemented(
    message = "`#[idempotent]` functions must return `Result<T, E>`, not `{Self}`",
    label = "the return type must be `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idempotent_core::Error>`"
)]
pub trait IdempotentOutput: Sized {
    /// The success value, stored and replayed.
    type Ok: Serialize + DeserializeOwned;
    /// The error.
    type Err: From<crate::Error>;
    /// Into a plain `Result`.
    fn into_result(self) -> Result<Self::Ok, Self::Err>;
    /// From a plain `Result`.
    fn from_result(result: Result<Self::Ok, Self::Err>) -> Self;

    /// Runs the body of an annotated function. A method, called on the
    /// return type (`<R as IdempotentOutput>::run`), so that a return type
    /// that does not qualify is one error, at the return type.
    fn run<F: Future<Output = Self>>(call: Call<'_>, body: F) -> impl Future<Output = Self> {
        run(call, body)
    }

    /// [`run`](Self::run) with `cache_errors`.
    fn run_caching_errors<F: Future<Output = Self>>(
        call: Call<'_>,
        body: F,
    ) -> impl Future<Output = Self>
    where
        Self::Err: Serialize + DeserializeOwned,
    {
        run_caching_errors(call, body)
    }
}

impl<T, E> IdempotentOutput for Result<T, E>
where
    T: Serialize + DeserializeOwned,
    E: From<crate::Error>,
{
    type Ok = T;
    type Err = E;

    fn into_result(self) -> Self {
        self
    }

    fn from_result(result: Self) -> Self {
        result
    }
}

/// Runs the body of an annotated function.
pub async fn run<R, F>(call: Call<'_>, body: F) -> R
where
    R: IdempotentOutput,
    F: Future<Output = R>,
{
    let body = async move { body.await.into_result() };
    R::from_result(call.run(body).await.map(|executed| executed.value))
}

/// Runs the body of an annotated function with `cache_errors`.
pub async fn run_caching_errors<R, F>(call: Call<'_>, body: F) -> R
where
    R: IdempotentOutput<Err: Serialize + DeserializeOwned>,
    F: Future<Output = R>,
{
    let body = async move { body.await.into_result() };
    R::from_result(
        call.run_caching_errors(body)
            .await
            .map(|executed| executed.value),
    )
}

#[path = "private_tx.rs"]
mod transaction;
pub use transaction::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_names_drop_generics_and_references() {
        assert_eq!(
            method_name("shop::Svc<shop::Db>", "charge"),
            "shop::Svc::charge"
        );
        assert_eq!(method_name("&shop::Svc", "charge"), "shop::Svc::charge");
        assert_eq!(method_name("shop::Svc", "refund"), "shop::Svc::refund");
        assert!(std::ptr::eq(
            method_name("shop::Svc", "refund"),
            method_name("shop::Svc", "refund")
        ));
    }
}
