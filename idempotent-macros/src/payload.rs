//! The payload of a call: which arguments the fingerprint covers, and the
//! code that fingerprints them, each checked at its own span.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat};

use crate::attr::Args;
use crate::expand::is_connection;
use crate::output::without_groups;
use crate::steps::is_steps;

/// The argument an option names, when it is just an argument (`rt`, `&rt`,
/// `*rt`).
fn bare_argument(expr: &syn::Expr) -> Option<&syn::Ident> {
    match expr {
        syn::Expr::Path(path) if path.qself.is_none() => path.path.get_ident(),
        syn::Expr::Reference(syn::ExprReference { expr, .. })
        | syn::Expr::Unary(syn::ExprUnary {
            op: syn::UnOp::Deref(_),
            expr,
            ..
        })
        | syn::Expr::Paren(syn::ExprParen { expr, .. }) => bare_argument(expr),
        _ => None,
    }
}

/// The part of an argument's attribute that decides whether it is compiled
/// in: a `#[cfg(..)]`, or the `cfg(..)` of a `#[cfg_attr(pred, cfg(..))]`
/// (an attribute macro sees its input before `cfg_attr` is applied).
fn fingerprint_cfg(attr: &syn::Attribute) -> Option<TokenStream> {
    if attr.path().is_ident("cfg") {
        return Some(quote!(#attr));
    }
    if !attr.path().is_ident("cfg_attr") {
        return None;
    }
    let metas = attr
        .parse_args_with(syn::punctuated::Punctuated::<syn::Meta, syn::Token![,]>::parse_terminated)
        .ok()?;
    let mut metas = metas.into_iter();
    let predicate = metas.next()?;
    let cfgs: Vec<_> = metas.filter(|meta| meta.path().is_ident("cfg")).collect();
    (!cfgs.is_empty()).then(|| quote!(#[cfg_attr(#predicate, #(#cfgs),*)]))
}

/// What the payload fingerprint covers.
pub(crate) enum Payload<'a> {
    /// `fingerprint = <expr>`.
    Expression(&'a syn::Expr),
    /// These arguments, as a tuple (none: `()`).
    Arguments(Vec<PayloadArgument<'a>>),
}

/// An argument in the payload fingerprint.
pub(crate) struct PayloadArgument<'a> {
    name: &'a syn::Ident,
    ty: &'a syn::Type,
    /// The `#[cfg]`s that compile it in or out.
    cfgs: Vec<TokenStream>,
}

/// What the payload fingerprint covers: `fingerprint = <expr>`, nothing
/// with `skip_all`, else every named argument but the receiver and the
/// `skip`ped ones.
pub(crate) fn payload<'a>(args: &'a Args, func: &'a ItemFn) -> syn::Result<Payload<'a>> {
    let mut errors: Option<syn::Error> = None;
    let mut push = |error: syn::Error| match &mut errors {
        Some(all) => all.combine(error),
        None => errors = Some(error),
    };
    let names: Vec<&syn::Ident> = func
        .sig
        .inputs
        .iter()
        .filter_map(|input| match input {
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(pat) => Some(&pat.ident),
                _ => None,
            },
            FnArg::Receiver(_) => None,
        })
        .collect();
    for skipped in &args.skip {
        if !names.contains(&skipped) {
            let expected = if names.is_empty() {
                "the function has no named argument".to_owned()
            } else {
                let names: Vec<String> = names.iter().map(|name| format!("`{name}`")).collect();
                format!("expected one of {}", names.join(", "))
            };
            push(syn::Error::new(
                skipped.span(),
                format!(
                    "`skip` names `{skipped}`, but the function has no argument of that name; {expected}"
                ),
            ));
        }
    }
    if let Some(expr) = &args.fingerprint {
        return errors.map_or(Ok(Payload::Expression(expr)), Err);
    }
    if args.skip_all {
        return errors.map_or(Ok(Payload::Arguments(Vec::new())), Err);
    }
    // An argument that is the runtime or the store (`runtime = rt`) is how
    // the call runs, not what it asks for.
    let plumbing: Vec<&syn::Ident> = [&args.runtime, &args.transaction]
        .into_iter()
        .flatten()
        .filter_map(bare_argument)
        .collect();
    let mut arguments = Vec::new();
    for input in &func.sig.inputs {
        let FnArg::Typed(typed) = input else {
            continue;
        };
        if is_connection(input) || is_steps(input) {
            continue;
        }
        match &*typed.pat {
            Pat::Ident(pat) if args.skip.contains(&pat.ident) || plumbing.contains(&&pat.ident) => {
            }
            Pat::Ident(pat) => arguments.push(PayloadArgument {
                name: &pat.ident,
                ty: &typed.ty,
                // An argument compiled out (`#[cfg(...)] extra: u32`) is
                // left out of the fingerprint the same way.
                cfgs: typed.attrs.iter().filter_map(fingerprint_cfg).collect(),
            }),
            Pat::Wild(_) => {}
            other => push(syn::Error::new(
                other.span(),
                "cannot fingerprint a destructured argument: bind it to a name, leave it out with `skip_all`, or give `fingerprint = <expression>`",
            )),
        }
    }
    errors.map_or(Ok(Payload::Arguments(arguments)), Err)
}

/// The spans of the first and the last token of `tokens`. An expression
/// whose first token has the one and whose last token has the other spans
/// all of `tokens`, and a compiler error about it underlines all of them
/// (stable Rust cannot join two spans).
fn first_and_last(tokens: &impl ToTokens) -> (Span, Span) {
    let mut spans = tokens
        .to_token_stream()
        .into_iter()
        .map(|token| token.span());
    let first = spans.next().unwrap_or_else(Span::call_site);
    (first, spans.last().unwrap_or(first))
}

/// `&(<expr>)`, spanned at the expression, so that a type error (a key
/// that is not `Display`, a value that is not `Serialize`) points at it.
pub(crate) fn reference_to(expr: &syn::Expr) -> TokenStream {
    let (first, last) = first_and_last(expr);
    let mut group =
        proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, expr.to_token_stream());
    group.set_span(last);
    quote_spanned!(first=> &#group)
}

/// The call with its payload fingerprint. An argument is passed on to a
/// function that requires it to be `Serialize` (through
/// `__private::PayloadArgument`, whose message names the argument and how
/// to leave it out), at its type: one error per argument that does not
/// qualify, there, and none for the tuple they make.
pub(crate) fn payload_call(
    payload: &Payload<'_>,
    call: &syn::Ident,
    private: &TokenStream,
) -> TokenStream {
    let arguments = match payload {
        Payload::Expression(expr) => {
            let value = reference_to(expr);
            let (first, _) = first_and_last(expr);
            return quote_spanned!(first=> #private::fingerprint(#call, #value));
        }
        Payload::Arguments(arguments) if arguments.is_empty() => {
            return quote!(#call.payload(&()));
        }
        Payload::Arguments(arguments) => arguments,
    };
    let mut markers = Vec::new();
    let mut params = Vec::new();
    let mut inputs = Vec::new();
    let mut elements = Vec::new();
    let mut values = Vec::new();
    for (i, argument) in arguments.iter().enumerate() {
        let cfgs = &argument.cfgs;
        // A type named as the argument, for the message (`skip(client)`);
        // the block it is declared in holds no code of the user's.
        let mut marker = argument.name.clone();
        marker.set_span(Span::mixed_site());
        markers.push(quote! {
            #(#cfgs)*
            #[allow(non_camel_case_types, dead_code)]
            enum #marker {}
        });
        let param = syn::Ident::new(&format!("__IdempotentArgument{i}"), Span::mixed_site());
        let input = syn::Ident::new(&format!("__idempotent_argument{i}"), Span::mixed_site());
        let (first, last) = first_and_last(argument.ty);
        params.push(quote!(
            #(#cfgs)* #param: ?::core::marker::Sized + #private::PayloadArgument<#marker>
        ));
        inputs.push(quote!(#(#cfgs)* #input: &#param));
        elements.push(quote!(#(#cfgs)* #input));
        // `&name`, from the first token of the argument's type to its
        // last, where the compiler points. It points at the `name` of
        // `&name` when that is itself a reference: then `&*name`.
        let mut name = argument.name.clone();
        name.set_span(name.span().located_at(last));
        let deref = matches!(without_groups(argument.ty), syn::Type::Reference(_))
            .then(|| quote_spanned!(first=> *));
        values.push(quote_spanned!(first=> #(#cfgs)* &#deref #name));
    }
    let function = syn::Ident::new("__idempotent_payload", Span::mixed_site());
    let lifetime = syn::Lifetime::new("'__idempotent_call", Span::mixed_site());
    quote! {
        {
            #(#markers)*
            #[allow(clippy::too_many_arguments)]
            #[inline]
            fn #function<#lifetime, #(#params,)*>(
                call: #private::Call<#lifetime>,
                #(#inputs,)*
            ) -> #private::Call<#lifetime> {
                call.payload(&(#(#elements,)*))
            }
            #function(#call, #(#values,)*)
        }
    }
}
