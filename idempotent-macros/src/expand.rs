//! Generates the code of `#[idempotent]`: the original body, unchanged, run
//! through `idempotent_core::__private`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, PatType, ReturnType};

use crate::attr::{Args, Millis};

/// The entry point: on any error, the user's item is emitted unchanged next
/// to the `compile_error!`, so the rest of the crate still type-checks and
/// rust-analyzer keeps working.
pub(crate) fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let func: ItemFn = match syn::parse2(item.clone()) {
        Ok(func) => func,
        Err(error) => return with_error(item.clone(), not_a_function(item, error)),
    };
    let args = syn::parse2::<Args>(args);
    let expanded = args.and_then(|args| generate(args, &func));
    match expanded {
        Ok(tokens) => tokens,
        Err(error) => with_error(without_tx_markers(func).into_token_stream(), error),
    }
}

/// Why the item is not a function `#[idempotent]` applies to: another kind
/// of item, a trait method without a body, or (syn's own error) a syntax
/// error the compiler reports too.
fn not_a_function(item: TokenStream, error: syn::Error) -> syn::Error {
    if syn::parse2::<syn::TraitItemFn>(item.clone()).is_ok() {
        return syn::Error::new(
            Span::call_site(),
            "`#[idempotent]` needs the function's body: put it on the `async fn` of the trait's implementation (or of a default method), not on the declaration",
        );
    }
    match syn::parse2::<syn::Item>(item) {
        Ok(syn::Item::Fn(_)) | Err(_) => error,
        Ok(_) => syn::Error::new(
            Span::call_site(),
            "`#[idempotent]` applies to an `async fn`: put it on the function that performs the operation",
        ),
    }
}

/// The item with its `#[tx]` markers removed, so that a misuse reports the
/// macro's error alone, not also "cannot find attribute `tx`".
fn without_tx_markers(mut func: ItemFn) -> ItemFn {
    for input in &mut func.sig.inputs {
        if let FnArg::Typed(typed) = input {
            typed.attrs.retain(|attr| !attr.path().is_ident("tx"));
        }
    }
    func
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

fn generate(args: Args, func: &ItemFn) -> syn::Result<TokenStream> {
    let sig = &func.sig;
    let mut errors: Option<syn::Error> = None;
    let mut push = |error: syn::Error| match &mut errors {
        Some(all) => all.combine(error),
        None => errors = Some(error),
    };

    if sig.asyncness.is_none() {
        push(syn::Error::new(
            sig.fn_token.span(),
            "`#[idempotent]` only applies to `async fn`: write `async fn` (in an `#[async_trait]` impl, put `#[idempotent]` on an inherent `async fn` the trait method calls: `#[async_trait]` rewrites the method first)",
        ));
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(ty),
        ReturnType::Default => {
            push(syn::Error::new(
                sig.ident.span(),
                "`#[idempotent]` functions must return `Result<T, E>`: add a return type such as `-> Result<Receipt, MyError>`",
            ));
            None
        }
    };
    if let Some(output) = output
        && let Err(error) = owned_output(output, args.cache_errors.is_some())
    {
        push(error);
    }
    let payload = payload(&args, func).unwrap_or_else(|error| {
        push(error);
        Payload::Arguments(Vec::new())
    });
    let connection = connection_argument(&args, func).unwrap_or_else(|error| {
        push(error);
        None
    });
    if let Some(errors) = errors {
        return Err(errors);
    }
    let Some(output) = output else {
        return Err(syn::Error::new(sig.ident.span(), "missing return type"));
    };

    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::idempotent_core),
    };
    let private = quote!(#krate::__private);

    // The expansion's own locals resolve at the definition site: an argument
    // of the same name neither shadows them nor is shadowed in the body.
    let local = |name: &str| syn::Ident::new(name, Span::mixed_site());
    let (call_var, operation_var) = (local("__idempotent_call"), local("__idempotent_operation"));
    let (store_var, done_var) = (local("__idempotent_store"), local("__idempotent_done"));
    let (tx_var, value_var) = (local("__idempotent_tx"), local("__idempotent_value"));
    let name = operation_name(&args, func, &private);
    let options = duration_options(&args, &private);
    let key = reference_to(&args.key);
    let runtime = match (&args.runtime, &args.transaction) {
        (Some(runtime), _) => {
            let runtime = reference_to(runtime);
            quote!(.runtime(#runtime))
        }
        // `transaction = ...` alone: the installed runtime, else defaults.
        (None, Some(_)) => quote!(.runtime(&#private::transaction_runtime(#store_var))),
        (None, None) => TokenStream::new(),
    };
    let scope = args.scope.as_ref().map(|scope| {
        let scope = reference_to(scope);
        quote!(.scope(#scope))
    });
    // The runner's bounds check the return type, given explicitly so that a
    // type error (not a `Result`, `T` not `Serialize`) points at it.
    let run = if args.cache_errors.is_some() {
        quote_spanned!(output.span()=> <#output as #private::IdempotentOutput>::run_caching_errors)
    } else {
        quote_spanned!(output.span()=> <#output as #private::IdempotentOutput>::run)
    };

    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = func;
    // syn puts a body's inner attributes (`#![allow(..)]`) with the outer
    // ones: each kind goes back where it may stand.
    let (inner_attrs, attrs): (Vec<_>, Vec<_>) = attrs
        .iter()
        .partition(|attr| matches!(attr.style, syn::AttrStyle::Inner(_)));
    // Spanned at the return type from its first token to its last, so that a
    // return type that does not qualify is reported once, there.
    let run_call = quote_spanned!(output.span()=> #run(#call_var, async move #block).await);
    // A default name that holds `Self` is kept per `Self` type: a trait's
    // default method is one function (one `static`) for every implementor.
    let init = quote!(|| #private::Operation::new(#name) #options);
    let get = if args.name.is_none() && func.sig.receiver().is_some() {
        quote!(get_or_init_for(::core::any::type_name::<Self>(), #init))
    } else {
        quote!(get_or_init(#init))
    };
    // Named by its path, which is the function's own (see `operation_name`).
    let site = args.name.is_none().then(|| {
        quote!(
            fn __idempotent_site() {}
        )
    });
    let operation = quote! {
        #site
        static __IDEMPOTENT_OPERATION: #private::OperationCell = #private::OperationCell::new();
        let #operation_var = __IDEMPOTENT_OPERATION.#get;
    };
    let with_payload = payload_call(&payload, &call_var, &private);
    let call = quote! {
        let #call_var = #private::Call::new(#operation_var)
            #runtime
            #scope
            .key(#key);
        let #call_var = #with_payload;
    };
    let (Some(store), Some((position, connection))) = (&args.transaction, connection) else {
        return Ok(quote! {
            #(#attrs)*
            #vis #sig {
                #(#inner_attrs)*
                #operation
                #call
                #run_call
            }
        });
    };
    // Same-transaction mode: the connection argument leaves the signature;
    // the body gets the transaction the store opened in its place.
    let mut sig = sig.clone();
    sig.inputs = sig
        .inputs
        .into_iter()
        .enumerate()
        .filter_map(|(i, input)| (i != position).then_some(input))
        .collect();
    let pattern = &connection.pat;
    let ty = connection_type(&connection.ty, &mut sig, block);
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #(#inner_attrs)*
            #private::require_postgres!();
            #operation
            let #store_var = &(#store);
            #call
            match #private::begin_transaction::<#output>(#store_var, #call_var).await {
                #private::TxStart::Done(#done_var) => #done_var,
                #private::TxStart::Fresh(mut #tx_var) => {
                    let __idempotent_span = #private::transaction_span(&#tx_var);
                    let #value_var: #output = {
                        let #pattern: #ty = #private::connection(&mut #tx_var);
                        #private::in_span(__idempotent_span, async move #block).await
                    };
                    #private::finish_transaction(#tx_var, #value_var).await
                }
            }
        }
    })
}

/// The type the body's `#[tx]` binding gets. The binding borrows the
/// transaction for the body only, so a lifetime the signature named
/// (`&'c mut PgConnection`) is left for the compiler to infer (it would be
/// the caller's, which that borrow cannot meet), and dropped from the
/// generics when nothing else names it (it would be unused once the argument
/// leaves the signature). Looks through `( ... )` and the invisible groups
/// of a `$t:ty` from `macro_rules!`.
fn connection_type(ty: &syn::Type, sig: &mut syn::Signature, block: &syn::Block) -> syn::Type {
    let mut ty = ty.clone();
    let mut inner = &mut ty;
    loop {
        match inner {
            syn::Type::Group(group) => inner = &mut *group.elem,
            syn::Type::Paren(paren) => inner = &mut *paren.elem,
            _ => break,
        }
    }
    let syn::Type::Reference(reference) = inner else {
        return ty;
    };
    let Some(lifetime) = reference.lifetime.take() else {
        return ty;
    };
    let is_it = |param: &syn::GenericParam| matches!(param, syn::GenericParam::Lifetime(p) if p.lifetime.ident == lifetime.ident);
    let mut rest = TokenStream::new();
    for param in sig.generics.params.iter().filter(|param| !is_it(param)) {
        param.to_tokens(&mut rest);
    }
    sig.generics.where_clause.to_tokens(&mut rest);
    sig.inputs.to_tokens(&mut rest);
    sig.output.to_tokens(&mut rest);
    block.to_tokens(&mut rest);
    if !names_lifetime(rest, &lifetime.ident) {
        sig.generics.params = std::mem::take(&mut sig.generics.params)
            .into_iter()
            .filter(|param| !is_it(param))
            .collect();
    }
    ty
}

/// Whether `tokens` name the lifetime `'ident` anywhere.
fn names_lifetime(tokens: TokenStream, ident: &syn::Ident) -> bool {
    let mut tick = false;
    tokens.into_iter().any(|token| {
        let found = match &token {
            proc_macro2::TokenTree::Ident(name) => tick && name == ident,
            proc_macro2::TokenTree::Group(group) => names_lifetime(group.stream(), ident),
            proc_macro2::TokenTree::Punct(_) | proc_macro2::TokenTree::Literal(_) => false,
        };
        tick = matches!(&token, proc_macro2::TokenTree::Punct(p) if p.as_char() == '\'');
        found
    })
}

/// Whether an argument is marked `#[tx]`.
fn is_connection(input: &FnArg) -> bool {
    matches!(input, FnArg::Typed(typed) if typed.attrs.iter().any(|attr| attr.path().is_ident("tx")))
}

/// Where the `#[tx]` of an argument is (its `tx`).
fn tx_marker_span(input: &FnArg) -> Span {
    match input {
        FnArg::Typed(typed) => typed
            .attrs
            .iter()
            .find(|attr| attr.path().is_ident("tx"))
            .map_or_else(|| typed.span(), |attr| attr.path().span()),
        FnArg::Receiver(receiver) => receiver.span(),
    }
}

/// The `#[tx]` argument (its position and itself, without the attribute):
/// required by `transaction = ...`, refused without it.
fn connection_argument(args: &Args, func: &ItemFn) -> syn::Result<Option<(usize, PatType)>> {
    let mut marked = func
        .sig
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, input)| is_connection(input));
    let first = marked.next();
    if let Some((_, second)) = marked.next() {
        return Err(syn::Error::new(
            tx_marker_span(second),
            "only one argument can be marked `#[tx]`: keep it on the `&mut sqlx::PgConnection` that receives the transaction, and remove the others",
        ));
    }
    match (first, &args.transaction) {
        (Some((position, FnArg::Typed(typed))), Some(_)) => {
            let mut typed = typed.clone();
            typed.attrs.retain(|attr| !attr.path().is_ident("tx"));
            Ok(Some((position, typed)))
        }
        (Some((_, input)), None) => Err(syn::Error::new(
            tx_marker_span(input),
            "`#[tx]` marks the argument that receives the transaction; add `transaction = <PostgresStore>` to `#[idempotent(...)]`",
        )),
        (None, Some(store)) => Err(syn::Error::new(
            store.span(),
            "`transaction` needs an argument to receive the transaction: add `#[tx] tx: &mut sqlx::PgConnection` to the function's arguments (callers do not pass it)",
        )),
        _ => Ok(None),
    }
}

/// The operation name: `name = "..."`, else the path where the function is
/// defined (and, for a method that path does not tie to its `Self` type,
/// that type): see `__private::operation_name`.
fn operation_name(args: &Args, func: &ItemFn, private: &TokenStream) -> TokenStream {
    if let Some(name) = &args.name {
        return name.to_token_stream();
    }
    let self_type = if func.sig.receiver().is_some() {
        quote!(::core::option::Option::Some(
            ::core::any::type_name::<Self>()
        ))
    } else {
        quote!(::core::option::Option::None)
    };
    // As the compiler prints it: `r#type` is `type`.
    let function = syn::ext::IdentExt::unraw(&func.sig.ident).to_string();
    quote!(#private::operation_name(
        ::core::module_path!(),
        #function,
        ::core::any::type_name_of_val(&__idempotent_site),
        #self_type,
    ))
}

fn duration_options(args: &Args, private: &TokenStream) -> TokenStream {
    let duration = |millis: &Millis| {
        let value = millis.value;
        quote_spanned!(millis.span=> #private::Duration::from_millis(#value))
    };
    let mut options = TokenStream::new();
    for (method, value) in [
        ("ttl", &args.ttl),
        ("lease", &args.lease),
        ("wait", &args.wait),
    ] {
        if let Some(value) = value {
            let method = syn::Ident::new(method, Span::call_site());
            let value = duration(value);
            options.extend(quote!(.#method(#value)));
        }
    }
    match &args.cache_errors {
        Some(Some(ttl)) => {
            let ttl = duration(ttl);
            options.extend(quote!(.error_ttl(#ttl)));
        }
        Some(None) => {}
        None => {}
    }
    options
}

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
enum Payload<'a> {
    /// `fingerprint = <expr>`.
    Expression(&'a syn::Expr),
    /// These arguments, as a tuple (none: `()`).
    Arguments(Vec<PayloadArgument<'a>>),
}

/// An argument in the payload fingerprint.
struct PayloadArgument<'a> {
    name: &'a syn::Ident,
    ty: &'a syn::Type,
    /// The `#[cfg]`s that compile it in or out.
    cfgs: Vec<TokenStream>,
}

/// What the payload fingerprint covers: `fingerprint = <expr>`, nothing
/// with `skip_all`, else every named argument but the receiver and the
/// `skip`ped ones.
fn payload<'a>(args: &'a Args, func: &'a ItemFn) -> syn::Result<Payload<'a>> {
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
        if is_connection(input) {
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
fn reference_to(expr: &syn::Expr) -> TokenStream {
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
fn payload_call(payload: &Payload<'_>, call: &syn::Ident, private: &TokenStream) -> TokenStream {
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

/// Refuses a borrowed type in what is stored and replayed: the `T` of a
/// `Result<T, E>` return type, and its `E` with `cache_errors`. A replay
/// decodes the value from the store, so it must own its data
/// (`DeserializeOwned`); the compiler would only say that "`Deserialize` is
/// not general enough". Return types not spelled `...Result<..>` are left to
/// the compiler.
fn owned_output(output: &syn::Type, cache_errors: bool) -> syn::Result<()> {
    let Some(arguments) = result_arguments(output) else {
        return Ok(());
    };
    let mut references = Vec::new();
    let stored = if cache_errors { 2 } else { 1 };
    for (position, ty) in arguments.into_iter().take(stored).enumerate() {
        let value = if position == 0 {
            "`#[idempotent]` stores the `Ok` value"
        } else {
            "with `cache_errors`, `#[idempotent]` stores the `Err` value"
        };
        borrowed_parts(ty, &mut |reference| references.push((value, reference)));
    }
    let mut errors: Option<syn::Error> = None;
    for (value, reference) in references {
        let error = syn::Error::new_spanned(
            reference,
            format!(
                "{value} and replays it by decoding it from the store, so it must own its data \
                 (`DeserializeOwned`): write `{}` instead of `{}`",
                owned_text(&reference.elem),
                type_text(&syn::Type::Reference(reference.clone())),
            ),
        );
        match &mut errors {
            Some(all) => all.combine(error),
            None => errors = Some(error),
        }
    }
    errors.map_or(Ok(()), Err)
}

/// The type arguments of a return type spelled `Result<..>` (any path that
/// ends so: `std::io::Result<T>`, `anyhow::Result<T>`).
fn result_arguments(ty: &syn::Type) -> Option<Vec<&syn::Type>> {
    let ty = without_groups(ty);
    let syn::Type::Path(path) = ty else {
        return None;
    };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else {
        return None;
    };
    Some(
        arguments
            .args
            .iter()
            .filter_map(|argument| match argument {
                syn::GenericArgument::Type(ty) => Some(ty),
                _ => None,
            })
            .collect(),
    )
}

/// Looks through `( ... )` and the invisible groups of a `$t:ty` from
/// `macro_rules!`.
fn without_groups(mut ty: &syn::Type) -> &syn::Type {
    loop {
        match ty {
            syn::Type::Group(group) => ty = &group.elem,
            syn::Type::Paren(paren) => ty = &paren.elem,
            _ => return ty,
        }
    }
}

/// Calls `found` with every reference in `ty` that a stored value would
/// hold: at the top, in generic arguments, tuples, arrays and slices; not
/// inside a `PhantomData`, which holds nothing.
fn borrowed_parts<'a>(ty: &'a syn::Type, found: &mut impl FnMut(&'a syn::TypeReference)) {
    match ty {
        syn::Type::Reference(reference) => found(reference),
        syn::Type::Group(syn::TypeGroup { elem, .. })
        | syn::Type::Paren(syn::TypeParen { elem, .. })
        | syn::Type::Array(syn::TypeArray { elem, .. })
        | syn::Type::Slice(syn::TypeSlice { elem, .. }) => borrowed_parts(elem, found),
        syn::Type::Tuple(tuple) => {
            for elem in &tuple.elems {
                borrowed_parts(elem, found);
            }
        }
        syn::Type::Path(path) => {
            for segment in &path.path.segments {
                if segment.ident == "PhantomData" {
                    continue;
                }
                if let syn::PathArguments::AngleBracketed(arguments) = &segment.arguments {
                    for argument in &arguments.args {
                        if let syn::GenericArgument::Type(ty) = argument {
                            borrowed_parts(ty, found);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The owned type to write instead of a reference to `elem`: `String` for
/// `str`, `Vec<T>` for `[T]`, `PathBuf` for `Path`, else `elem` itself.
fn owned_text(elem: &syn::Type) -> String {
    match without_groups(elem) {
        syn::Type::Slice(slice) => format!("Vec<{}>", type_text(&slice.elem)),
        syn::Type::Path(path) if path.qself.is_none() => {
            let owned = path.path.get_ident().and_then(|ident| {
                Some(match ident.to_string().as_str() {
                    "str" => "String",
                    "Path" => "PathBuf",
                    "OsStr" => "OsString",
                    "CStr" => "CString",
                    _ => return None,
                })
            });
            owned.map_or_else(|| type_text(elem), str::to_owned)
        }
        other => type_text(other),
    }
}

/// A type as a user writes it (`&'static str`, `Vec<u8>`), not as tokens
/// print (`& 'static str`, `Vec < u8 >`).
fn type_text(ty: &syn::Type) -> String {
    let mut text = String::new();
    let mut previous: Option<proc_macro2::TokenTree> = None;
    write_tokens(ty.to_token_stream(), &mut text, &mut previous);
    text
}

/// Whether `text` ends with a lifetime (`'a`, `'static`).
fn is_lifetime_end(text: &str) -> bool {
    let word = text.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_');
    word.ends_with('\'')
}

fn write_tokens(
    tokens: TokenStream,
    text: &mut String,
    previous: &mut Option<proc_macro2::TokenTree>,
) {
    use proc_macro2::{Delimiter, TokenTree};
    for token in tokens {
        // A space between two words (`dyn Trait`, `mut T`, `'a T`), after
        // `mut`, `dyn` or a lifetime (`&'a [u8]`), after a comma or a
        // semicolon, and around `=`, `+` and `->`; none elsewhere.
        let after_word = matches!(&*previous, Some(TokenTree::Ident(word))
            if matches!(word.to_string().as_str(), "mut" | "dyn" | "impl") || is_lifetime_end(text));
        let space = match (&*previous, &token) {
            (None, _) => false,
            (Some(TokenTree::Punct(p)), _) if matches!(p.as_char(), ',' | ';') => true,
            (Some(TokenTree::Ident(_)), TokenTree::Group(_) | TokenTree::Punct(_))
                if after_word =>
            {
                !matches!(&token, TokenTree::Punct(p) if matches!(p.as_char(), ',' | '>' | ';'))
            }
            (Some(TokenTree::Punct(p)), _) if matches!(p.as_char(), '=' | '+') => true,
            (_, TokenTree::Punct(p)) if matches!(p.as_char(), '=' | '+') => true,
            (_, TokenTree::Punct(p)) if p.as_char() == '-' => true,
            (Some(TokenTree::Punct(p)), _) if p.as_char() == '>' && text.ends_with("->") => true,
            (Some(TokenTree::Ident(_) | TokenTree::Literal(_)), TokenTree::Ident(_)) => true,
            (Some(TokenTree::Group(_)), TokenTree::Ident(_)) => true,
            _ => false,
        };
        if space {
            text.push(' ');
        }
        match &token {
            TokenTree::Group(group) => {
                let (open, close) = match group.delimiter() {
                    Delimiter::Parenthesis => ("(", ")"),
                    Delimiter::Bracket => ("[", "]"),
                    Delimiter::Brace => ("{", "}"),
                    Delimiter::None => ("", ""),
                };
                text.push_str(open);
                let mut inner = None;
                write_tokens(group.stream(), text, &mut inner);
                text.push_str(close);
            }
            other => text.push_str(&other.to_string()),
        }
        *previous = Some(token);
    }
}

#[cfg(test)]
mod tests {
    use super::{owned_output, owned_text, type_text};

    fn ty(text: &str) -> syn::Type {
        syn::parse_str(text).unwrap()
    }

    #[test]
    fn types_print_as_written() {
        for text in [
            "&'static str",
            "&'a mut [u8]",
            "&mut [u8]",
            "&'a (u8, u8)",
            "Vec<&'static str>",
            "std::collections::HashMap<String, Vec<u8>>",
            "(u8, &str)",
            "[u8; 4]",
            "Box<dyn Fn(u8) -> u8 + Send>",
            "&dyn Trait",
        ] {
            assert_eq!(type_text(&ty(text)), text);
        }
    }

    #[test]
    fn a_reference_suggests_its_owned_type() {
        assert_eq!(owned_text(&ty("str")), "String");
        assert_eq!(owned_text(&ty("[Receipt]")), "Vec<Receipt>");
        assert_eq!(owned_text(&ty("Path")), "PathBuf");
        assert_eq!(owned_text(&ty("Receipt<'a>")), "Receipt<'a>");
    }

    #[test]
    fn borrowed_stored_values_are_refused() {
        let refused = |text: &str, cache_errors| owned_output(&ty(text), cache_errors).is_err();
        assert!(refused("Result<&'static str, E>", false));
        assert!(refused("io::Result<Vec<&str>>", false));
        assert!(refused("Result<(u8, &[u8]), E>", false));
        assert!(refused("Result<u8, &'static str>", true));
        assert!(!refused("Result<u8, &'static str>", false));
        assert!(!refused("Result<Cow<'static, str>, E>", false));
        assert!(!refused("Result<PhantomData<&'static str>, E>", false));
        assert!(!refused("Outcome<&'static str>", false));
    }
}
