//! What `#[idempotent]` expands to. Not public API: no stability promise.
//!
//! The macro crate only parses and generates code; every behaviour is here
//! or in the `engine` module, as ordinary, unit-tested Rust.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::engine::ResultCodec;
pub use crate::engine::{Call, Operation, Steps};
pub use crate::fingerprint::Fingerprint;
pub use std::time::Duration;

/// The lazily built [`Operation`] of one annotated function.
///
/// One function can have several `Self` types, each with an operation of
/// its own: a trait's default method is one function (so one `static`) for
/// every implementor, and a generic impl's method one for every instance.
/// The cell keeps the first in a `OnceLock`, the others in a list read
/// under a read lock.
#[derive(Debug)]
pub struct OperationCell {
    /// The first `Self` type's name and its operation.
    first: OnceLock<(&'static str, Operation)>,
    others: RwLock<Vec<(&'static str, &'static Operation)>>,
}

impl OperationCell {
    /// An empty cell, for a `static`.
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Self {
            first: OnceLock::new(),
            others: RwLock::new(Vec::new()),
        }
    }

    /// The operation, built by `init` on first use.
    pub fn get_or_init(&self, init: impl FnOnce() -> Operation) -> &Operation {
        self.get_or_init_for("", init)
    }

    /// The operation of the method's `Self` type (`type_name::<Self>()`),
    /// built by `init` on the first use of that type.
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
        // Every call pays this comparison: the common case ends here.
        if *first_type == self_type {
            return first;
        }
        let known = |others: &[(&'static str, &'static Operation)]| {
            others
                .iter()
                .find(|(t, _)| *t == self_type)
                .map(|(_, op)| *op)
        };
        let read = self.others.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(operation) = known(&read) {
            return operation;
        }
        drop(read);
        let mut others = self.others.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(operation) = known(&others) {
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

/// The default operation name of an annotated function, from where it is
/// defined: `module` is `module_path!()` and `function` the function's name,
/// both written at expansion; `site` is `type_name_of_val` of an item the
/// macro declares in the function's body
/// (`shop::Payments::charge::__idempotent_site`), and `self_type` is
/// `type_name::<Self>()` for a method.
///
/// A free function is named `module::function`, from the two strings
/// written at expansion: no compiler upgrade can change it. `site` only
/// tells whether the function is free: its path starts with the module and
/// the function's own name, whatever the compiler prints after that.
///
/// A function inside an `impl` (a method, an associated function) is named
/// by its definition's path, which tells apart every two of them: an
/// inherent method (`shop::Payments::charge`) from a trait's
/// (`<shop::Payments as shop::Charge>::charge`), associated functions of
/// two types in one module (`shop::A::create`, `shop::B::create`), and
/// the impls of a trait for `Svc<Cards>` and for `Svc<Transfers>`. Only the
/// compiler knows that path, and `type_name` does not promise to print it
/// the same way across compiler versions: give such an operation an
/// explicit `name` (its current one, to keep its records) where its records
/// must outlive a toolchain upgrade. Generic arguments that are only
/// placeholders are left out (`shop::Svc<_>` is `shop::Svc`): the
/// instances of one generic impl are one function, and share records. A
/// method whose path does not name its `Self` type (a trait's default
/// method, a blanket impl) is one function for several types, so the type
/// is added, whole (`shop::Charge::charge for shop::Desk<shop::Cards>`).
///
/// Built once per name and kept for the life of the process.
pub fn operation_name(
    module: &'static str,
    function: &'static str,
    site: &'static str,
    self_type: Option<&'static str>,
) -> &'static str {
    type Names = HashMap<(&'static str, Option<&'static str>), &'static str>;
    static NAMES: OnceLock<Mutex<Names>> = OnceLock::new();
    let names = NAMES.get_or_init(Default::default);
    let mut names = names.lock().unwrap_or_else(PoisonError::into_inner);
    names.entry((site, self_type)).or_insert_with(|| {
        if is_free(module, function, site) {
            return Box::leak(format!("{module}::{function}").into_boxed_str());
        }
        let path = definition_path(site);
        let name = match self_type {
            Some(ty) if !names_path(&path, type_path(ty)) => format!("{path} for {ty}"),
            _ => path,
        };
        Box::leak(name.into_boxed_str())
    })
}

/// Whether `site` is inside a free function `function` of `module`: its
/// path goes on from the module with the function's name, not with a type
/// or a trait's `<...>` (an `impl`), nor with another function (nested).
fn is_free(module: &str, function: &str, site: &str) -> bool {
    site.strip_prefix(module)
        .and_then(|rest| rest.strip_prefix("::"))
        .and_then(|rest| rest.split("::").next())
        .is_some_and(|first| first == function)
}

/// The path of the function holding `site`: without the site's own name,
/// the `{{closure}}` segments of an `async` body, and generic argument
/// lists that hold only placeholders (`<_>`, `<'_>`, `<_, '_, _>`).
fn definition_path(site: &str) -> String {
    let site = site.strip_suffix("::__idempotent_site").unwrap_or(site);
    // The body of an `async fn` is a closure in the path, printed
    // `{{closure}}` today (and `{{closure}}#1`, `{closure#0}` elsewhere).
    let site = site
        .split("::")
        .filter(|segment| !is_closure(segment))
        .collect::<Vec<_>>()
        .join("::");
    let mut path = String::with_capacity(site.len());
    let mut rest = site.as_str();
    while let Some(open) = rest.find('<') {
        path.push_str(&rest[..open]);
        let inside = &rest[open + 1..];
        match inside.find(|c: char| !matches!(c, '_' | '\'' | ',' | ' ')) {
            Some(end) if end > 0 && inside[end..].starts_with('>') => rest = &inside[end + 1..],
            _ => {
                path.push('<');
                rest = inside;
            }
        }
    }
    path.push_str(rest);
    path
}

/// Whether a path segment is a closure's, in any of the ways rustc prints
/// one.
fn is_closure(segment: &str) -> bool {
    let inner = segment.trim_start_matches('{').trim_end_matches('}');
    inner == "closure" || inner.starts_with("closure#") || segment.starts_with("{{closure}}#")
}

/// Whether `path` holds `ty` as a whole path (not as part of a longer name).
fn names_path(path: &str, ty: &str) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    path.match_indices(ty).any(|(at, _)| {
        let before = path[..at].chars().next_back();
        let after = path[at + ty.len()..].chars().next();
        !before.is_some_and(|c| ident(c) || c == ':') && !after.is_some_and(ident)
    })
}

/// A type's path without generic arguments or a leading reference
/// (`shop::Payments` for `&mut shop::Payments<Card>`).
fn type_path(type_name: &str) -> &str {
    let base = type_name.split('<').next().unwrap_or(type_name);
    base.trim_start_matches('&').trim_start_matches("mut ")
}

/// An argument in the payload fingerprint: any `Serialize` type. `Name` is
/// a type the macro names after the argument, for the message; the macro
/// passes each such argument to a function bounded by this trait, so that
/// one that does not qualify is reported there, at its type.
#[diagnostic::on_unimplemented(
    message = "`{Name}` is part of the payload fingerprint, so its type must implement `Serialize`; leave it out with `skip({Name})` (or `skip_all`, or `fingerprint = ...`)",
    label = "`{Self}` does not implement `Serialize`",
    note = "the payload fingerprint tells a retry from a key reused for another request: it covers what the call asks for, not how it runs (a client, a pool, an app state)"
)]
pub trait PayloadArgument<Name: ?Sized>: Serialize {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized, Name: ?Sized> PayloadArgument<Name> for T {}

/// The value of `fingerprint = <expr>`: any `Serialize` type.
#[diagnostic::on_unimplemented(
    message = "the `fingerprint` value must implement `Serialize`, and `{Self}` does not",
    label = "the payload fingerprint covers this value",
    note = "fingerprint what identifies the request, such as `fingerprint = (order.id, order.amount)`"
)]
pub trait FingerprintValue: Serialize {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + ?Sized> FingerprintValue for T {}

/// The call with the payload of `fingerprint = <expr>`.
#[inline]
pub fn fingerprint<'a, P: FingerprintValue + ?Sized>(call: Call<'a>, value: &P) -> Call<'a> {
    call.payload(value)
}

/// A value `#[idempotent]` stores and replays: the `T` of its `Result<T, E>`
/// (and `E` with `cache_errors`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is stored and replayed, so it must implement `Serialize` and `Deserialize`",
    label = "`#[idempotent]` stores `{Self}` and replays it on a retry",
    note = "derive them (`#[derive(Serialize, Deserialize)]`), or return a type that has them"
)]
pub trait StoredValue: Serialize + DeserializeOwned {}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned> StoredValue for T {}

/// The return types `#[idempotent]` accepts: `Result<T, E>` with a
/// serializable `T` and an `E` that the library's errors convert into.
#[diagnostic::on_unimplemented(
    message = "`#[idempotent]` functions must return `Result<T, E>`, not `{Self}`",
    label = "the return type must be `Result<T, E>` with `T: Serialize + DeserializeOwned` and `E: From<idempotent_core::Error>`"
)]
pub trait IdempotentOutput: Sized {
    /// The success value, stored and replayed.
    type Ok: StoredValue;
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
        Self::Err: StoredValue,
    {
        run_caching_errors(call, body)
    }
}

impl<T, E> IdempotentOutput for Result<T, E>
where
    T: StoredValue,
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

/// Runs the body of an annotated function. Not an `async fn`: the call's
/// own future converts the result, with no layer around it.
pub fn run<R, F>(call: Call<'_>, body: F) -> impl Future<Output = R>
where
    R: IdempotentOutput,
    F: Future<Output = R>,
{
    let body = async move { body.await.into_result() };
    call.run_mapped(ResultCodec::<false>, body, |result| {
        R::from_result(result.map(|executed| executed.value))
    })
}

/// Runs the body of an annotated function with `cache_errors`.
pub fn run_caching_errors<R, F>(call: Call<'_>, body: F) -> impl Future<Output = R>
where
    R: IdempotentOutput<Err: StoredValue>,
    F: Future<Output = R>,
{
    let body = async move { body.await.into_result() };
    call.run_mapped(ResultCodec::<true>, body, |result| {
        R::from_result(result.map(|executed| executed.value))
    })
}

/// What a `#[steps]` argument may be: the call's [`Steps`], owned (a
/// cheap clone) or borrowed.
#[diagnostic::on_unimplemented(
    message = "a `#[steps]` argument is `Steps` or `&Steps`, not `{Self}`",
    label = "the call's journaled steps go here"
)]
pub trait StepsArgument<'a> {
    /// The argument, from the call's steps.
    fn from_steps(steps: &'a Steps) -> Self;
}

impl<'a> StepsArgument<'a> for Steps {
    fn from_steps(steps: &'a Steps) -> Self {
        steps.clone()
    }
}

impl<'a> StepsArgument<'a> for &'a Steps {
    fn from_steps(steps: &'a Steps) -> Self {
        steps
    }
}

mod transaction;
pub use transaction::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_functions_name_is_its_module_and_name_whatever_the_compiler_prints() {
        for site in [
            "shop::orders::charge::{{closure}}::__idempotent_site",
            "shop::orders::charge::{{closure}}#0::__idempotent_site",
            "shop::orders::charge::{closure#0}::__idempotent_site",
            "shop::orders::charge::__idempotent_site",
            "shop::orders::charge::{{something new}}::__idempotent_site",
        ] {
            assert_eq!(
                operation_name("shop::orders", "charge", site, None),
                "shop::orders::charge",
                "{site}"
            );
        }
        // Not free: an associated function, a trait's, a nested function.
        assert_eq!(
            operation_name("shop", "create", "shop::A::create::__idempotent_site", None),
            "shop::A::create"
        );
        assert_eq!(
            operation_name(
                "shop",
                "go",
                "<shop::Svc as shop::Charge>::go::{closure#0}::__idempotent_site",
                Some("shop::Svc")
            ),
            "<shop::Svc as shop::Charge>::go"
        );
        assert_eq!(
            operation_name(
                "shop",
                "inner",
                "shop::outer::inner::__idempotent_site",
                None
            ),
            "shop::outer::inner"
        );
        // A module whose name starts like another's.
        assert!(!is_free(
            "shop::api",
            "create",
            "shop::api_types::X::create::__idempotent_site"
        ));
    }

    #[test]
    fn default_names_follow_the_definition() {
        // The module and function names given are those of the site; a
        // free function's name is built from them alone (see `free_functions`).
        let name = |site: &'static str, self_type| operation_name("shop", "", site, self_type);
        assert_eq!(
            name("shop::charge::{{closure}}::__idempotent_site", None),
            "shop::charge"
        );
        // Associated functions of two types in one module.
        assert_eq!(
            name("shop::A::create::__idempotent_site", None),
            "shop::A::create"
        );
        assert_eq!(
            name("shop::B::create::__idempotent_site", None),
            "shop::B::create"
        );
        // An inherent method, and a trait's method of the same name.
        let svc = Some("shop::Svc");
        assert_eq!(
            name("shop::Svc::charge::__idempotent_site", svc),
            "shop::Svc::charge"
        );
        assert_eq!(
            name(
                "<shop::Svc as shop::Charge>::charge::__idempotent_site",
                svc
            ),
            "<shop::Svc as shop::Charge>::charge"
        );
        // Two impls for two instances of a generic type.
        assert_eq!(
            name(
                "<shop::Svc<shop::Cards> as shop::Handle>::go::__idempotent_site",
                Some("shop::Svc<shop::Cards>")
            ),
            "<shop::Svc<shop::Cards> as shop::Handle>::go"
        );
        // One generic impl: its instances (and references to them) share.
        let generic = "shop::Svc<_>::refund::{{closure}}::__idempotent_site";
        assert_eq!(
            name(generic, Some("shop::Svc<shop::Db>")),
            "shop::Svc::refund"
        );
        assert_eq!(
            name(generic, Some("&shop::Svc<shop::Mock>")),
            "shop::Svc::refund"
        );
        assert_eq!(
            name(
                "shop::Ledger<'_>::post::__idempotent_site",
                Some("shop::Ledger")
            ),
            "shop::Ledger::post"
        );
        // A default method: one function for each implementor, whole.
        let default = "shop::Charge::charge::__idempotent_site";
        assert_eq!(
            name(default, Some("shop::Desk<shop::Cards>")),
            "shop::Charge::charge for shop::Desk<shop::Cards>"
        );
        // Placeholder lists of any length go; others stay.
        assert_eq!(
            name(
                "shop::Svc<_, '_, _>::go::__idempotent_site",
                Some("shop::Svc<u8, u8>")
            ),
            "shop::Svc::go"
        );
        assert_eq!(
            name(
                "<_ as shop::Charge>::go::__idempotent_site",
                Some("shop::A")
            ),
            "<_ as shop::Charge>::go for shop::A"
        );
        assert_eq!(
            name(default, Some("shop::A")),
            "shop::Charge::charge for shop::A"
        );
        assert_eq!(
            name(default, Some("shop::B")),
            "shop::Charge::charge for shop::B"
        );
        // `shop::Charge` is not `shop::Char`.
        assert_eq!(
            name(default, Some("shop::Char")),
            "shop::Charge::charge for shop::Char"
        );
        assert!(std::ptr::eq(
            name(default, Some("shop::A")),
            name(default, Some("shop::A"))
        ));
    }

    fn named(name: &'static str) -> impl FnOnce() -> Operation {
        move || Operation::new(name)
    }

    #[test]
    fn one_operation_per_self_type() {
        let cell = OperationCell::new();
        let a = cell.get_or_init_for("shop::Cards", named("cards"));
        let b = cell.get_or_init_for("shop::Transfers", named("transfers"));
        assert_eq!((a.name(), b.name()), ("cards", "transfers"));
        // Built once per type: later calls do not run `init`.
        let again = cell.get_or_init_for("shop::Transfers", || unreachable!("built once"));
        assert_eq!(again.name(), "transfers");
        let first = cell.get_or_init_for("shop::Cards", || unreachable!("built once"));
        assert_eq!(first.name(), "cards");
        // Two instances of a generic type are two types (their names, given
        // by `operation_name`, may still be one).
        let generic = OperationCell::new();
        let a = generic.get_or_init_for("shop::Svc<shop::A>", named("svc"));
        let b = generic.get_or_init_for("shop::Svc<shop::B>", named("svc"));
        assert!(!std::ptr::eq(a, b));
        assert_eq!(a.name(), b.name());
        // A free function's cell has one operation.
        let free = OperationCell::new();
        assert_eq!(free.get_or_init(named("f")).name(), "f");
        assert_eq!(free.get_or_init(|| unreachable!("built once")).name(), "f");
    }

    #[test]
    fn concurrent_first_uses_build_one_operation_per_type() {
        use std::sync::Arc;
        let cell: &'static OperationCell = Box::leak(Box::new(OperationCell::new()));
        let built = Arc::new(Mutex::new(Vec::new()));
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let built = Arc::clone(&built);
                std::thread::spawn(move || {
                    let (self_type, name) = if i % 2 == 0 {
                        ("T0", "t0")
                    } else {
                        ("T1", "t1")
                    };
                    let op = cell.get_or_init_for(self_type, || {
                        built.lock().unwrap().push(name);
                        Operation::new(name)
                    });
                    (name, op as *const Operation as usize)
                })
            })
            .collect();
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for (name, op) in &results {
            let same: Vec<_> = results.iter().filter(|(n, _)| n == name).collect();
            assert!(
                same.iter().all(|(_, other)| other == op),
                "{name}: one operation"
            );
        }
        let mut built = built.lock().unwrap().clone();
        built.sort_unstable();
        assert_eq!(built, ["t0", "t1"], "each built once");
    }
}
