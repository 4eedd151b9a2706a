//! Parses the arguments of `#[idempotent(...)]` into [`Args`].

use proc_macro2::Span;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitStr, Path, Token};

mod kw {
    syn::custom_keyword!(key);
    syn::custom_keyword!(runtime);
    syn::custom_keyword!(scope);
    syn::custom_keyword!(ttl);
    syn::custom_keyword!(lease);
    syn::custom_keyword!(wait);
    syn::custom_keyword!(cache_errors);
    syn::custom_keyword!(skip);
    syn::custom_keyword!(skip_all);
    syn::custom_keyword!(fingerprint);
    syn::custom_keyword!(name);
    syn::custom_keyword!(transaction);
}

/// The options, as listed in error messages.
const OPTIONS: &str = "`key`, `runtime`, `scope`, `ttl`, `lease`, `wait`, `cache_errors`, `skip`, `skip_all`, `fingerprint`, `name`, `transaction`, `crate`";

/// A duration option, in milliseconds, with the span of its literal.
pub(crate) struct Millis {
    pub(crate) value: u64,
    pub(crate) span: Span,
}

/// The parsed, validated options.
pub(crate) struct Args {
    pub(crate) key: Expr,
    pub(crate) runtime: Option<Expr>,
    pub(crate) scope: Option<Expr>,
    pub(crate) ttl: Option<Millis>,
    pub(crate) lease: Option<Millis>,
    pub(crate) wait: Option<Millis>,
    /// `Some(None)`: cache errors with the operation's TTL.
    pub(crate) cache_errors: Option<Option<Millis>>,
    pub(crate) skip: Vec<Ident>,
    /// No argument is fingerprinted: the payload is empty.
    pub(crate) skip_all: bool,
    pub(crate) fingerprint: Option<Expr>,
    pub(crate) name: Option<LitStr>,
    /// The `PostgresStore` whose transaction the body runs in.
    pub(crate) transaction: Option<Expr>,
    pub(crate) krate: Option<Path>,
}

/// Each option with the span of its name, before combinations are checked.
#[derive(Default)]
struct RawArgs {
    key: Option<(Span, Expr)>,
    runtime: Option<(Span, Expr)>,
    scope: Option<(Span, Expr)>,
    ttl: Option<(Span, Millis)>,
    lease: Option<(Span, Millis)>,
    wait: Option<(Span, Millis)>,
    cache_errors: Option<(Span, Option<Millis>)>,
    skip: Option<(Span, Vec<Ident>)>,
    skip_all: Option<(Span, ())>,
    fingerprint: Option<(Span, Expr)>,
    name: Option<(Span, LitStr)>,
    transaction: Option<(Span, Expr)>,
    krate: Option<(Span, Path)>,
}

/// Stores `value` in `slot`, refusing a second occurrence of the option.
fn set_once<T>(
    slot: &mut Option<(Span, T)>,
    span: Span,
    option: &str,
    value: T,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            span,
            format!("`{option}` is given more than once; keep one"),
        ));
    }
    *slot = Some((span, value));
    Ok(())
}

fn parse_value<T: Parse>(input: ParseStream<'_>) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

/// The string literal of `option = "..."`; anything else is refused with
/// what to write (`example`, such as `ttl = "24h"`).
fn parse_string(input: ParseStream<'_>, option: &str, example: &str) -> syn::Result<LitStr> {
    input.parse::<Token![=]>()?;
    if input.peek(LitStr) {
        return input.parse();
    }
    Err(input.error(format!(
        "`{option}` takes a string literal: write `{option} = {example}`"
    )))
}

/// The duration of `option = "..."` (`example` is one for that option).
fn parse_duration(input: ParseStream<'_>, option: &str, example: &str) -> syn::Result<Millis> {
    let lit = parse_string(input, option, example)?;
    let value = duration_millis(&lit.value()).map_err(|why| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {:?}: {why}; write a number and a unit (ms, s, m, h, d), such as \"30s\", \"24h\" or \"1h30m\"",
                lit.value()
            ),
        )
    })?;
    Ok(Millis {
        value,
        span: lit.span(),
    })
}

/// The argument names of `skip(a, b)`.
fn parse_skip(input: ParseStream<'_>) -> syn::Result<Vec<Ident>> {
    if !input.peek(syn::token::Paren) {
        return Err(input.error(
            "`skip` lists the arguments to leave out in parentheses: write `skip(client, state)`, or `skip_all` to leave out every argument",
        ));
    }
    let content;
    syn::parenthesized!(content in input);
    let mut names = Vec::new();
    while !content.is_empty() {
        if content.peek(Token![self]) {
            let receiver: Token![self] = content.parse()?;
            return Err(syn::Error::new(
                receiver.span,
                "`self` is never part of the payload fingerprint: remove it from `skip(...)`",
            ));
        }
        names.push(content.parse::<Ident>()?);
        if content.is_empty() {
            break;
        }
        content.parse::<Token![,]>()?;
    }
    Ok(names)
}

/// Parses `"1h30m"`-style durations into milliseconds.
fn duration_millis(text: &str) -> Result<u64, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("it is empty");
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err("expected a number");
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| "the number is too large")?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" => return Err("a number has no unit"),
            _ => return Err("unknown unit"),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit)
            .and_then(|ms| total.checked_add(ms))
            .ok_or("the duration is too large")?;
    }
    if total == 0 {
        return Err("it must be longer than zero");
    }
    if total > CENTURY_MS {
        return Err("it is longer than a century, the longest the stores keep anything");
    }
    Ok(total)
}

/// `idempotent_core::record::MAX_DURATION`, in milliseconds (this crate cannot
/// depend on the core crate, which re-exports it).
const CENTURY_MS: u64 = 100 * 365 * 24 * 3_600_000;

/// `idempotent_core::MIN_LEASE`, in milliseconds.
const MIN_LEASE_MS: u64 = 50;

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut raw = RawArgs::default();
        while !input.is_empty() {
            let lookahead = input.lookahead1();
            let span = input.span();
            if lookahead.peek(kw::key) {
                input.parse::<kw::key>()?;
                set_once(&mut raw.key, span, "key", parse_value(input)?)?;
            } else if lookahead.peek(kw::runtime) {
                input.parse::<kw::runtime>()?;
                set_once(&mut raw.runtime, span, "runtime", parse_value(input)?)?;
            } else if lookahead.peek(kw::scope) {
                input.parse::<kw::scope>()?;
                set_once(&mut raw.scope, span, "scope", parse_value(input)?)?;
            } else if lookahead.peek(kw::ttl) {
                input.parse::<kw::ttl>()?;
                set_once(
                    &mut raw.ttl,
                    span,
                    "ttl",
                    parse_duration(input, "ttl", "\"24h\"")?,
                )?;
            } else if lookahead.peek(kw::lease) {
                input.parse::<kw::lease>()?;
                let lease = parse_duration(input, "lease", "\"30s\"")?;
                if lease.value < MIN_LEASE_MS {
                    return Err(syn::Error::new(
                        lease.span,
                        format!(
                            "a lease must be at least {MIN_LEASE_MS}ms, or it could run out between \
                             two renewals: write `lease = \"{MIN_LEASE_MS}ms\"` or longer, such as \
                             `lease = \"30s\"`"
                        ),
                    ));
                }
                set_once(&mut raw.lease, span, "lease", lease)?;
            } else if lookahead.peek(kw::wait) {
                input.parse::<kw::wait>()?;
                set_once(
                    &mut raw.wait,
                    span,
                    "wait",
                    parse_duration(input, "wait", "\"5s\"")?,
                )?;
            } else if lookahead.peek(kw::cache_errors) {
                input.parse::<kw::cache_errors>()?;
                let ttl = if input.peek(Token![=]) {
                    Some(parse_duration(input, "cache_errors", "\"5m\"")?)
                } else {
                    None
                };
                set_once(&mut raw.cache_errors, span, "cache_errors", ttl)?;
            } else if lookahead.peek(kw::skip) {
                input.parse::<kw::skip>()?;
                set_once(&mut raw.skip, span, "skip", parse_skip(input)?)?;
            } else if lookahead.peek(kw::skip_all) {
                input.parse::<kw::skip_all>()?;
                set_once(&mut raw.skip_all, span, "skip_all", ())?;
            } else if lookahead.peek(kw::fingerprint) {
                input.parse::<kw::fingerprint>()?;
                set_once(
                    &mut raw.fingerprint,
                    span,
                    "fingerprint",
                    parse_value(input)?,
                )?;
            } else if lookahead.peek(kw::name) {
                input.parse::<kw::name>()?;
                let name = parse_string(input, "name", "\"payments.charge\"")?;
                if name.value().is_empty() {
                    return Err(syn::Error::new(
                        name.span(),
                        "the operation `name` must not be empty: write one such as \
                         `name = \"payments.charge\"`, or remove `name` to use the function's path",
                    ));
                }
                set_once(&mut raw.name, span, "name", name)?;
            } else if lookahead.peek(kw::transaction) {
                input.parse::<kw::transaction>()?;
                set_once(
                    &mut raw.transaction,
                    span,
                    "transaction",
                    parse_value(input)?,
                )?;
            } else if lookahead.peek(Token![crate]) {
                input.parse::<Token![crate]>()?;
                let lit = parse_string(input, "crate", "\"idempotent_core\"")?;
                let path = lit.parse::<Path>().map_err(|_| {
                    syn::Error::new(
                        lit.span(),
                        format!(
                            "`crate = {:?}` is not a path: write the path idempotent-core is \
                             reachable at, such as `crate = \"::my_idempotent\"`",
                            lit.value()
                        ),
                    )
                })?;
                set_once(&mut raw.krate, span, "crate", path)?;
            } else if input.peek(Ident) {
                let unknown: Ident = input.parse()?;
                return Err(syn::Error::new(
                    unknown.span(),
                    format!("unknown option `{unknown}`; expected one of {OPTIONS}"),
                ));
            } else {
                return Err(lookahead.error());
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        raw.build()
    }
}

impl RawArgs {
    /// Checks the combinations, pointing at each offending option: every
    /// conflict is reported at once (`syn::Error::combine`), not the first.
    fn build(self) -> syn::Result<Args> {
        let mut errors: Option<syn::Error> = None;
        let mut refuse = |span: Span, message: &str| {
            let error = syn::Error::new(span, message);
            match &mut errors {
                Some(errors) => errors.combine(error),
                None => errors = Some(error),
            }
        };
        const MISSING_KEY: &str = "missing `key`: write `#[idempotent(key = <expression>)]`, such as `key = request.payment_id`";
        if self.key.is_none() {
            refuse(Span::call_site(), MISSING_KEY);
        }
        if let (Some((span, _)), Some(_)) = (&self.skip, &self.fingerprint) {
            refuse(
                *span,
                "`skip` and `fingerprint` cannot be combined: `fingerprint = <expr>` replaces the arguments in the payload fingerprint; remove `skip(...)`",
            );
        }
        if let (Some((span, _)), Some(_)) = (&self.skip, &self.skip_all) {
            refuse(
                *span,
                "`skip` and `skip_all` cannot be combined: `skip_all` already leaves every argument out of the payload fingerprint; remove `skip(...)`",
            );
        }
        if let (Some((span, _)), Some(_)) = (&self.skip_all, &self.fingerprint) {
            refuse(
                *span,
                "`skip_all` and `fingerprint` cannot be combined: `fingerprint = <expr>` replaces the arguments in the payload fingerprint; remove `skip_all` (or `fingerprint` to fingerprint nothing)",
            );
        }
        if self.transaction.is_some() {
            if let Some((span, _)) = &self.lease {
                refuse(
                    *span,
                    "`lease` has no meaning with `transaction`: the record lives and dies with the transaction; remove it",
                );
            }
            if let Some((span, _)) = &self.cache_errors {
                refuse(
                    *span,
                    "`cache_errors` cannot be combined with `transaction`: an `Err` rolls the transaction back, record included; remove it",
                );
            }
        }
        let key = match (self.key, errors) {
            (Some((_, key)), None) => key,
            (_, Some(errors)) => return Err(errors),
            (None, None) => return Err(syn::Error::new(Span::call_site(), MISSING_KEY)),
        };
        Ok(Args {
            key,
            runtime: self.runtime.map(|(_, v)| v),
            scope: self.scope.map(|(_, v)| v),
            ttl: self.ttl.map(|(_, v)| v),
            lease: self.lease.map(|(_, v)| v),
            wait: self.wait.map(|(_, v)| v),
            cache_errors: self.cache_errors.map(|(_, v)| v),
            skip: self.skip.map(|(_, v)| v).unwrap_or_default(),
            skip_all: self.skip_all.is_some(),
            fingerprint: self.fingerprint.map(|(_, v)| v),
            name: self.name.map(|(_, v)| v),
            transaction: self.transaction.map(|(_, v)| v),
            krate: self.krate.map(|(_, v)| v),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::duration_millis;

    #[test]
    fn durations() {
        assert_eq!(duration_millis("300ms"), Ok(300));
        assert_eq!(duration_millis("30s"), Ok(30_000));
        assert_eq!(duration_millis("1h30m"), Ok(5_400_000));
        assert_eq!(duration_millis("1d"), Ok(86_400_000));
        for bad in ["", "24", "h", "24x", "0s", "1.5h", "99999999999999999999s"] {
            assert!(duration_millis(bad).is_err(), "{bad}");
        }
    }
}
