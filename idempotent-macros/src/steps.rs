//! The `#[steps]` argument: it leaves the signature, and the body gets the
//! call's journaled steps (`idempotent_core::Steps`) in its place.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, PatType};

use crate::attr::Args;

/// Whether an argument is marked `#[steps]`.
pub(crate) fn is_steps(input: &FnArg) -> bool {
    matches!(input, FnArg::Typed(typed) if typed.attrs.iter().any(|attr| attr.path().is_ident("steps")))
}

/// Where the `#[steps]` of an argument is.
fn marker_span(input: &FnArg) -> Span {
    match input {
        FnArg::Typed(typed) => typed
            .attrs
            .iter()
            .find(|attr| attr.path().is_ident("steps"))
            .map_or_else(|| typed.span(), |attr| attr.path().span()),
        FnArg::Receiver(receiver) => receiver.span(),
    }
}

/// The `#[steps]` argument (its position and itself, without the
/// attribute), if there is one: at most one, and not with `transaction`.
pub(crate) fn steps_argument(args: &Args, func: &ItemFn) -> syn::Result<Option<(usize, PatType)>> {
    let mut marked = func
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, input)| is_steps(input));
    let first = marked.next();
    if let Some((_, second)) = marked.next() {
        return Err(syn::Error::new(
            marker_span(second),
            "only one argument can be marked `#[steps]`: the call has one journal of steps",
        ));
    }
    match first {
        Some((_, input)) if args.transaction.is_some() => Err(syn::Error::new(
            marker_span(input),
            "`#[steps]` cannot be combined with `transaction`: a step's effect outside the database cannot roll back with the transaction; run the call in lease mode, or make each effect a write in the transaction",
        )),
        Some((position, FnArg::Typed(typed))) => {
            let mut typed = typed.clone();
            typed.attrs.retain(|attr| !attr.path().is_ident("steps"));
            Ok(Some((position, typed)))
        }
        Some((_, input)) => Err(syn::Error::new(
            marker_span(input),
            "`#[steps]` marks an argument `steps: Steps` (or `&Steps`)",
        )),
        None => Ok(None),
    }
}
