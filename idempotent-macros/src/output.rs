//! What a call stores and replays must own its data: a borrowed type in the
//! `Ok` (or, with `cache_errors`, the `Err`) type is refused at the
//! reference, naming the owned type to write instead.

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Refuses a borrowed type in what is stored and replayed: the `T` of a
/// `Result<T, E>` return type, and its `E` with `cache_errors`. A replay
/// decodes the value from the store, so it must own its data
/// (`DeserializeOwned`); the compiler would only say that "`Deserialize` is
/// not general enough". Return types not spelled `...Result<..>` are left to
/// the compiler.
pub(crate) fn owned_output(output: &syn::Type, cache_errors: bool) -> syn::Result<()> {
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
pub(crate) fn without_groups(mut ty: &syn::Type) -> &syn::Type {
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
