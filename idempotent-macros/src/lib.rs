//! The `#[idempotent]` attribute. Use it through `idempotent-core`, which
//! re-exports it and documents it; this crate only parses and generates code.

use proc_macro::TokenStream;

mod attr;
mod expand;
mod output;
mod payload;
mod steps;

/// Runs an `async fn` once per idempotency key. See `idempotent_core` for the options.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::idempotent(args.into(), item.into()).into()
}
