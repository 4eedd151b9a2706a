//! Generates the code of `#[idempotent]`: the original body, unchanged, run
//! through `idempotent_core::__private`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, PatType, ReturnType};

use crate::attr::{Args, Millis};
use crate::output::owned_output;
use crate::payload::{Payload, payload, payload_call, reference_to};
use crate::steps::steps_argument;

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

/// The item with its `#[tx]` and `#[steps]` markers removed, so that a
/// misuse reports the macro's error alone, not also "cannot find attribute
/// `tx`".
fn without_tx_markers(mut func: ItemFn) -> ItemFn {
    for input in &mut func.sig.inputs {
        if let FnArg::Typed(typed) = input {
            typed
                .attrs
                .retain(|attr| !attr.path().is_ident("tx") && !attr.path().is_ident("steps"));
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
    let steps = steps_argument(&args, func).unwrap_or_else(|error| {
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
        // Lease mode; a `#[steps]` argument leaves the signature, and the
        // body gets the call's steps in its place.
        let Some((position, steps)) = steps else {
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
        let sig = without_input(sig, position);
        let (pattern, ty) = (&steps.pat, &steps.ty);
        let steps_var = local("__idempotent_steps");
        // Spanned at the argument's type: a type that is not `Steps` is
        // reported there.
        let bind = quote_spanned!(ty.span()=>
            let #pattern: #ty = <#ty as #private::StepsArgument<'_>>::from_steps(&#steps_var);
        );
        return Ok(quote! {
            #(#attrs)*
            #vis #sig {
                #(#inner_attrs)*
                #operation
                let #steps_var = #private::Steps::new();
                #call
                let #call_var = #call_var.steps(&#steps_var);
                #bind
                #run_call
            }
        });
    };
    // Same-transaction mode: the connection argument leaves the signature;
    // the body gets the transaction the store opened in its place.
    let mut sig = without_input(sig, position);
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

/// `sig` without its argument at `position` (a `#[tx]` or `#[steps]`
/// argument: the macro provides it, callers do not pass it).
fn without_input(sig: &syn::Signature, position: usize) -> syn::Signature {
    let mut sig = sig.clone();
    sig.inputs = sig
        .inputs
        .into_iter()
        .enumerate()
        .filter_map(|(i, input)| (i != position).then_some(input))
        .collect();
    sig
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
pub(crate) fn is_connection(input: &FnArg) -> bool {
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
