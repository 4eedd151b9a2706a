//! Idempotency keys and the storage keys built from them.

use std::fmt;
use std::sync::Arc;

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1 to 255 visible ASCII characters (`0x21..=0x7E`).
///
/// Keys arrive either as a bare token (`8e03978e-40d5`) or as an RFC 8941
/// sf-string (`"8e03978e-40d5"`, with `\"` and `\\` escapes), the two forms the
/// IETF `Idempotency-Key` draft allows. Both parse to the same key. Parameters
/// after an sf-string (`"8e03978e-40d5";v=1`) are ignored: the draft defines
/// none. A bare token is taken whole, `;` included.
///
/// ```
/// use idempotent_core::IdempotencyKey;
///
/// let bare: IdempotencyKey = "order-42".parse()?;
/// let quoted: IdempotencyKey = "\"order-42\"".parse()?;
/// assert_eq!(bare, quoted);
/// assert!("".parse::<IdempotencyKey>().is_err());
/// assert!("has space".parse::<IdempotencyKey>().is_err());
/// # Ok::<(), idempotent_core::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(Box<str>);

/// Why a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    #[error("the idempotency key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    #[error("the idempotency key is {len} bytes long; at most {MAX_KEY_LEN} are allowed")]
    TooLong {
        /// The length that was given.
        len: usize,
    },
    /// The key holds a character outside visible ASCII (`0x21..=0x7E`).
    #[error(
        "the idempotency key holds {found:?} at byte {position}; only visible ASCII characters (0x21..=0x7E) are allowed"
    )]
    InvalidCharacter {
        /// The offending character.
        found: char,
        /// Its byte offset in the input.
        position: usize,
    },
    /// A quoted key is not a well-formed RFC 8941 sf-string.
    #[error("the idempotency key is not a well-formed quoted string: {reason}")]
    MalformedQuoted {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The store cannot hold the key together with its namespace, scope and
    /// operation (a NUL character, or too many bytes, for PostgreSQL). The
    /// call was refused before anything was stored or run.
    #[error("the idempotency store cannot hold this key: {0}")]
    NotStorable(String),
}

impl IdempotencyKey {
    /// Parses a key given as a bare token or as an RFC 8941 sf-string.
    pub fn parse(input: &str) -> Result<Self, KeyError> {
        match input.strip_prefix('"') {
            Some(rest) => Self::parse_sf_string(rest),
            None => Self::from_token(input),
        }
    }

    /// Validates a bare token; quotes are taken literally.
    pub fn from_token(token: &str) -> Result<Self, KeyError> {
        validate(token)?;
        Ok(Self(token.into()))
    }

    fn parse_sf_string(rest: &str) -> Result<Self, KeyError> {
        let mut out = String::with_capacity(rest.len());
        let mut chars = rest.chars();
        loop {
            match chars.next() {
                None => {
                    return Err(KeyError::MalformedQuoted {
                        reason: "missing closing quote",
                    });
                }
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some(c @ ('"' | '\\')) => out.push(c),
                    _ => {
                        return Err(KeyError::MalformedQuoted {
                            reason: "a backslash may only escape `\"` or `\\`",
                        });
                    }
                },
                Some(c) => out.push(c),
            }
        }
        // An RFC 8941 Item may carry parameters (`"abc";v=1`). The header
        // defines none, so they are ignored, as the RFC asks of unknown ones.
        let rest = chars.as_str();
        if !rest.is_empty() && !valid_parameters(rest) {
            return Err(KeyError::MalformedQuoted {
                reason: "characters after the closing quote that are not `;`-parameters",
            });
        }
        validate(&out)?;
        Ok(Self(out.into_boxed_str()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Runs `f` with an empty per-thread string buffer, so that text built on
/// every call (keys, storage keys) costs one allocation, for the final value,
/// instead of one per growth step plus a copy.
pub(crate) fn with_scratch<R>(f: impl FnOnce(&mut String) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    }
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => {
            scratch.clear();
            let result = f(&mut scratch);
            if scratch.capacity() > 4096 {
                *scratch = String::new(); // don't keep a huge buffer alive
            }
            result
        }
        // Re-entered (a `Display` impl building a key itself): use a fresh one.
        Err(_) => f(&mut String::new()),
    })
}

fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong { len: key.len() });
    }
    match key.bytes().position(|b| !(0x21..=0x7E).contains(&b)) {
        None => Ok(()),
        Some(position) => Err(KeyError::InvalidCharacter {
            found: key[position..].chars().next().unwrap_or('\u{FFFD}'),
            position,
        }),
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = KeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl AsRef<str> for IdempotencyKey {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The key a record is stored under, built from (namespace, scope, operation, key).
///
/// Every component but the last (the key, which ends the string) is written
/// with its length in front, so two different tuples can never produce the
/// same storage key, whatever characters the components hold:
///
/// ```
/// use idempotent_core::IdempotencyKey;
/// use idempotent_core::record::StorageKey;
///
/// let key: IdempotencyKey = "k".parse()?;
/// let a = StorageKey::new("ns", "tenant:a", "op", &key);
/// let b = StorageKey::new("ns", "tenant", "a:op", &key);
/// assert_ne!(a, b);
/// assert_ne!(StorageKey::new("a|0:", "", "op", &key), StorageKey::new("a", "|0:", "op", &key));
/// assert_eq!(a.as_str(), "2:ns|8:tenant:a|2:op|k");
/// # Ok::<(), idempotent_core::KeyError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorageKey(Arc<str>);

impl StorageKey {
    /// Builds the storage key of `key` for `operation`, within `scope` and `namespace`.
    ///
    /// Namespace, scope and operation each carry their length, so any
    /// characters may appear in them.
    pub fn new(namespace: &str, scope: &str, operation: &str, key: &IdempotencyKey) -> Self {
        // Written by hand rather than with `write!`: this runs on every call
        // and formatting machinery costs more than the copies themselves.
        fn push_part(s: &mut String, part: &str) {
            let mut digits = [0u8; 20];
            let mut n = part.len();
            let mut at = digits.len();
            loop {
                at -= 1;
                digits[at] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            for &d in &digits[at..] {
                s.push(char::from(d));
            }
            s.push(':');
            s.push_str(part);
            s.push('|');
        }
        with_scratch(|s| {
            push_part(s, namespace);
            push_part(s, scope);
            push_part(s, operation);
            s.push_str(&key.0);
            Self(Arc::from(s.as_str()))
        })
    }

    /// The storage key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The four parts: namespace, scope, operation and key.
    ///
    /// ```
    /// use idempotent_core::IdempotencyKey;
    /// use idempotent_core::record::StorageKey;
    ///
    /// let key = StorageKey::new("idem", "tenant|1", "shop.charge", &IdempotencyKey::parse("k")?);
    /// assert_eq!(key.parts(), ("idem", "tenant|1", "shop.charge", "k"));
    /// # Ok::<(), idempotent_core::KeyError>(())
    /// ```
    pub fn parts(&self) -> (&str, &str, &str, &str) {
        fn part(s: &str) -> (&str, &str) {
            // Always well-formed: built only by `new`.
            let (len, rest) = s.split_once(':').unwrap_or(("0", s));
            let len: usize = len.parse().unwrap_or(0).min(rest.len());
            let (part, rest) = rest.split_at(len);
            (part, rest.strip_prefix('|').unwrap_or(rest))
        }
        let (namespace, rest) = part(&self.0);
        let (scope, rest) = part(rest);
        let (operation, key) = part(rest);
        (namespace, scope, operation, key)
    }

    /// The storage key `stored` is the text of ([`as_str`](Self::as_str)),
    /// or `None` if it is not one (a key of something else in a store).
    #[cfg(any(feature = "memory", feature = "redis"))]
    pub(crate) fn from_stored(stored: &str) -> Option<Self> {
        let candidate = Self(Arc::from(stored));
        let (namespace, scope, operation, key) = candidate.parts();
        let key = IdempotencyKey::from_token(key).ok()?;
        let rebuilt = Self::new(namespace, scope, operation, &key);
        (rebuilt == candidate).then_some(rebuilt)
    }

    /// The same allocation, as bytes.
    #[cfg(feature = "memory")]
    pub(crate) fn to_bytes(&self) -> Arc<[u8]> {
        Arc::from(Arc::clone(&self.0))
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// RFC 8941 parameters: `;` key [ `=` value ], repeated. Keys are lowercase
/// letters, digits and `_-.*` (starting with a letter or `*`); values are
/// tokens, numbers, booleans or sf-strings without a `;` inside. The values
/// are ignored, so this is only as strict as telling them apart from junk.
fn valid_parameters(mut rest: &str) -> bool {
    while let Some(param) = rest.strip_prefix(';') {
        let param = param.trim_start_matches(' ');
        let end = param.find(';').unwrap_or(param.len());
        let (item, tail) = param.split_at(end);
        let (key, value) = item.split_once('=').unwrap_or((item, "?1"));
        let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*')
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c));
        let value_ok = !value.is_empty() && value.chars().all(|c| c.is_ascii_graphic());
        if !key_ok || !value_ok {
            return false;
        }
        rest = tail;
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_visible_ascii_character() {
        let all: String = (0x21u8..=0x7E).map(char::from).collect();
        assert_eq!(IdempotencyKey::from_token(&all).unwrap().as_str(), all);
    }

    #[test]
    fn length_bounds() {
        assert!(IdempotencyKey::parse(&"a".repeat(255)).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&"a".repeat(256)),
            Err(KeyError::TooLong { len: 256 })
        );
        assert_eq!(IdempotencyKey::parse(""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse("\"\""), Err(KeyError::Empty));
    }

    #[test]
    fn rejects_controls_spaces_and_non_ascii() {
        for bad in ["a b", "a\tb", "a\u{7f}", "é", "a\n", "\0"] {
            assert!(
                matches!(
                    IdempotencyKey::parse(bad),
                    Err(KeyError::InvalidCharacter { .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            IdempotencyKey::parse("ab\u{e9}"),
            Err(KeyError::InvalidCharacter {
                found: 'é',
                position: 2
            })
        );
    }

    #[test]
    fn sf_strings() {
        assert_eq!(
            IdempotencyKey::parse(r#""a\"b\\c""#).unwrap().as_str(),
            r#"a"b\c"#
        );
        for bad in [r#""abc"#, r#""a\nb""#, r#""abc"x"#, r#""a b""#] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad}");
        }
        // Parameters of the Item are allowed and ignored.
        for with_parameters in [
            r#""abc";v=1"#,
            r#""abc";a;b=?0; c_1="x""#,
            r#""abc";*k=tok"#,
        ] {
            let key = IdempotencyKey::parse(with_parameters).unwrap();
            assert_eq!(key.as_str(), "abc", "{with_parameters}");
        }
        for junk in [r#""abc";"#, r#""abc";V=1"#, r#""abc";v="#, r#""abc" ;v=1"#] {
            assert!(IdempotencyKey::parse(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_storage_key_splits_back_into_its_parts() {
        let key = IdempotencyKey::parse("k|1:x").unwrap();
        for (n, s, o) in [("idem", "", "op"), ("a|0:", "t:1|", "x|y"), ("", "", "")] {
            let storage = StorageKey::new(n, s, o, &key);
            assert_eq!(storage.parts(), (n, s, o, "k|1:x"));
        }
    }

    #[cfg(feature = "memory")]
    #[test]
    fn only_a_storage_keys_text_is_read_back_as_one() {
        let quoted = IdempotencyKey::from_token("\"q\"").unwrap();
        for key in [
            StorageKey::new("idem", "t:1|", "op", &IdempotencyKey::parse("k").unwrap()),
            StorageKey::new("", "", "", &quoted),
        ] {
            assert_eq!(StorageKey::from_stored(key.as_str()), Some(key));
        }
        for junk in [
            "",
            "hello",
            "4:idem|0:|2:op|",
            "4:idem|0:|9:op|k",
            "4:idem|0:|2:op|a b",
            "s4:idem|0:|2:op|k",
        ] {
            assert_eq!(StorageKey::from_stored(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn storage_keys_never_collide() {
        let k = |s: &str| IdempotencyKey::parse(s).unwrap();
        let tuples = [
            ("n", "a", "b", "c"),
            ("n", "a|1:b", "c", "d"),
            ("n", "a", "b|c", "d"),
            ("n", "", "ab", "c"),
            ("n", "a", "", "bc"),
            ("n", "1:a", "b", "c"),
            ("n|1:a", "", "b", "c"),
            ("n", "|1:a", "b", "c"),
            ("", "n", "a", "b"),
        ];
        let keys: std::collections::HashSet<_> = tuples
            .iter()
            .map(|(n, s, o, key)| StorageKey::new(n, s, o, &k(key)))
            .collect();
        assert_eq!(keys.len(), tuples.len());
    }
}
