//! How a record is laid out in Redis: its key, and the bytes of its value
//! (see the module docs of [`redis`](super)).

use std::sync::Arc;
use std::time::Duration;

use super::slots;
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, LeaseToken, Millis, Record, RecordState};
use crate::store::StoreError;

/// Between the prefix and the storage key: an empty hash tag, after which a
/// cluster hashes the whole key, whatever braces the client's key holds.
pub(super) const NO_TAG: &str = "{}";

/// A Redis key, `<key_prefix>{}<storage key>`, written straight into a
/// command as one argument (no `String` of its own).
pub(super) struct RedisKey<'a>(pub(super) &'a str, pub(super) &'a str);

impl redis::ToRedisArgs for RedisKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write as _;
        let mut arg = out.writer_for_next_arg();
        // Writing into the command's own buffer cannot fail.
        let _ = arg.write_all(self.0.as_bytes());
        let _ = arg.write_all(NO_TAG.as_bytes());
        let _ = arg.write_all(self.1.as_bytes());
    }
}

/// A call's steps: a hash under `<key_prefix>{<tag>}s<storage key>`, where
/// `<tag>` is a short number whose slot is the slot of the call's record
/// (see the module docs of [`redis`](super)), so that one script can check
/// the record and write the steps on a cluster too.
///
/// When the prefix holds a `{` itself, the prefix's braces decide both
/// keys' slots, and the steps key is `<key_prefix>{}s<storage key>`:
///
/// - `{shop}:` (a tag of its own): every key with the prefix hashes by
///   `shop`.
/// - `app{` (no `}` after its `{`): both keys hash by the characters from
///   that `{` to the `}` of `{}`, the same in both.
/// - `a{}b:` (an empty pair first): a cluster hashes both keys whole, so
///   they are in different slots ([`StepsKey::in_record_slot`] is false),
///   and the store refuses to record steps on a cluster.
///
/// A steps key is never a record key: after the prefix, a record key has
/// `{}` and then its storage key, which starts with a digit (its
/// namespace's length), where a steps key has `{` and a digit, or `{}s`.
pub(super) fn steps_key(prefix: &str, key: &str) -> StepsKey {
    use std::fmt::Write as _;
    let mut steps = String::with_capacity(prefix.len() + key.len() + 9);
    steps.push_str(prefix);
    let in_record_slot = match prefix_braces(prefix.as_bytes()) {
        PrefixBraces::None => {
            let parts: [&[u8]; 3] = [prefix.as_bytes(), NO_TAG.as_bytes(), key.as_bytes()];
            let tag = slots::tag_for(slots::slot_of_whole(&parts));
            // Writing into a `String` cannot fail.
            let _ = write!(steps, "{{{tag}}}");
            true
        }
        PrefixBraces::Tag | PrefixBraces::Open => {
            steps.push_str(NO_TAG);
            true
        }
        PrefixBraces::Empty => {
            steps.push_str(NO_TAG);
            false
        }
    };
    steps.push_str(STEPS_MARK);
    steps.push_str(key);
    StepsKey {
        key: steps,
        in_record_slot,
    }
}

/// After the hash tag of a steps key, before the storage key.
const STEPS_MARK: &str = "s";

/// The Redis key of a call's steps ([`steps_key`]).
pub(super) struct StepsKey {
    pub(super) key: String,
    /// Whether a cluster puts it in the slot of the call's record (it does
    /// unless the key prefix starts a hash tag with an empty `{}`).
    pub(super) in_record_slot: bool,
}

/// What the braces of a key prefix do to the hash tag of the keys after it
/// (a cluster hashes the characters between a key's first `{` and the
/// first `}` after it, if there are any, and the whole key otherwise).
enum PrefixBraces {
    /// No `{`: the first `{` comes after the prefix.
    None,
    /// A `{` closed within the prefix, with characters between: that tag.
    Tag,
    /// A `{` with no `}` after it within the prefix.
    Open,
    /// A `{` closed right away within the prefix: whole keys are hashed.
    Empty,
}

fn prefix_braces(prefix: &[u8]) -> PrefixBraces {
    let Some(open) = prefix.iter().position(|&b| b == b'{') else {
        return PrefixBraces::None;
    };
    match prefix[open + 1..].iter().position(|&b| b == b'}') {
        None => PrefixBraces::Open,
        Some(0) => PrefixBraces::Empty,
        Some(_) => PrefixBraces::Tag,
    }
}

pub(super) fn corrupt(key: &StorageKey, detail: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.into(),
    }
}

pub(super) fn with_key(error: StoreError, key: &StorageKey) -> StoreError {
    match error {
        StoreError::Corrupt { detail, .. } => corrupt(key, detail),
        other => other,
    }
}

/// The version marker, layout, fingerprint, token (and a `'w'` when waited on).
pub(super) const IN_PROGRESS_LEN: usize = 2 + 16 + 16;

/// The value of a record in progress, as a claim writes it.
pub(super) fn in_progress(fingerprint: [u8; 16], token: LeaseToken) -> [u8; IN_PROGRESS_LEN] {
    let mut value = [0; IN_PROGRESS_LEN];
    value[0] = record::LAYOUT;
    value[1] = b'P';
    value[2..18].copy_from_slice(&fingerprint);
    value[18..].copy_from_slice(&token.as_u128().to_be_bytes());
    value
}

/// The value of a completed record.
pub(super) fn completed(fingerprint: [u8; 16], response: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(18 + response.len());
    value.extend_from_slice(&[record::LAYOUT, b'C']);
    value.extend_from_slice(&fingerprint);
    value.extend_from_slice(response);
    value
}

/// Whether a stored value is the in-progress value this claim wrote (with
/// or without a waiter's mark).
pub(super) fn is_own_claim(stored: &[u8], ours: &[u8; IN_PROGRESS_LEN]) -> bool {
    stored
        .strip_prefix(&ours[..])
        .is_some_and(|rest| rest.is_empty() || rest == b"w")
}

/// A stored value's layout version, and the value after its marker. Layout
/// 1 had no marker: its first byte is the state's tag, `'P'` or `'C'`. A
/// version is a byte below `' '`, never a tag.
fn split_layout(key: &StorageKey, bytes: &[u8]) -> Result<(u8, usize), StoreError> {
    match bytes.first() {
        Some(b'P' | b'C') => Ok((1, 0)),
        Some(&record::LAYOUT) => Ok((record::LAYOUT, 1)),
        Some(&version) if version < b' ' => Err(corrupt(key, record::unreadable_layout(version))),
        _ => Err(corrupt(
            key,
            "not an idempotency record (unknown tag, or truncated)",
        )),
    }
}

/// Decodes a stored value into a [`Record`] whose deadline is "alive" (Redis
/// keeps the expiry itself and only hands out live keys).
pub(crate) fn decode(key: &StorageKey, bytes: Vec<u8>) -> Result<Record, StoreError> {
    decode_versioned(key, &bytes).map(|(_, record)| record)
}

/// [`decode`], with the layout version the value was written in.
pub(super) fn decode_versioned(key: &StorageKey, bytes: &[u8]) -> Result<(u8, Record), StoreError> {
    let (layout, at) = split_layout(key, bytes)?;
    let body = &bytes[at..];
    let u128_at = |at: usize| {
        let raw: [u8; 16] = body[at..at + 16].try_into().unwrap_or_default();
        u128::from_be_bytes(raw)
    };
    // Layout 1's in-progress value and layout 2's after the marker: 33 bytes.
    const BODY_LEN: usize = IN_PROGRESS_LEN - 1;
    let state = match body.first() {
        Some(b'P')
            if body.len() == BODY_LEN
                || (body.len() == BODY_LEN + 1 && body.last() == Some(&b'w')) =>
        {
            RecordState::InProgress {
                token: LeaseToken::from_u128(u128_at(17)),
                lease_until: Millis::MAX,
            }
        }
        Some(b'C') if body.len() >= 17 => RecordState::Completed {
            response: Arc::from(&body[17..]),
            expires_at: Millis::MAX,
        },
        _ => {
            return Err(corrupt(
                key,
                "not an idempotency record (unknown tag, or truncated)",
            ));
        }
    };
    let record = Record {
        fingerprint: Fingerprint::from_u128(u128_at(1)),
        state,
    };
    Ok((layout, record))
}

pub(super) fn millis_arg(duration: Duration) -> String {
    record::millis(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_knows_its_own_record_and_only_it() {
        let ours = in_progress([7; 16], LeaseToken::from_u128(42));
        assert!(is_own_claim(&ours, &ours));
        assert!(
            is_own_claim(&[&ours[..], b"w"].concat(), &ours),
            "marked by a waiter"
        );
        let other_token = in_progress([7; 16], LeaseToken::from_u128(43));
        assert!(!is_own_claim(&other_token, &ours));
        let other_payload = in_progress([8; 16], LeaseToken::from_u128(42));
        assert!(!is_own_claim(&other_payload, &ours));
        assert!(!is_own_claim(&ours[..33], &ours), "truncated");
        assert!(!is_own_claim(&[&ours[..], b"ww"].concat(), &ours));
        let mut completed = ours.to_vec();
        completed[1] = b'C';
        assert!(!is_own_claim(&completed, &ours));
    }

    /// What this release writes decodes to what it wrote; so does the same
    /// record in layout 1 (no version byte); a later version or anything
    /// else is an error naming what it is, never a panic.
    #[test]
    fn both_layouts_decode_and_later_ones_are_refused() {
        let key = StorageKey::new("ns", "", "op", &"k".parse().unwrap());
        let token = LeaseToken::from_u128(42);
        let running = in_progress([7; 16], token);
        let done = completed([7; 16], b"response");
        for (value, layout) in [
            (running.to_vec(), 2),
            ([&running[..], b"w"].concat(), 2),
            (running[1..].to_vec(), 1),
            ([&running[1..], b"w"].concat(), 1),
        ] {
            let (found, record) = decode_versioned(&key, &value).unwrap();
            assert_eq!(found, layout);
            assert_eq!(
                record.fingerprint,
                Fingerprint::from_u128(u128::from_be_bytes([7; 16]))
            );
            assert!(matches!(record.state, RecordState::InProgress { token: t, .. } if t == token));
        }
        for (value, layout) in [(done.clone(), 2), (done[1..].to_vec(), 1)] {
            let (found, record) = decode_versioned(&key, &value).unwrap();
            assert_eq!(found, layout);
            assert!(
                matches!(&record.state, RecordState::Completed { response, .. } if &response[..] == b"response")
            );
        }
        let mut later = done.clone();
        later[0] = record::LAYOUT + 1;
        let error = decode_versioned(&key, &later).unwrap_err();
        assert!(error.to_string().contains("record layout 3,"), "{error}");
        for junk in [
            &b""[..],
            b"\x02",
            b"\x02P",
            b"hello",
            b"\x02X0123456789abcdef0",
        ] {
            assert!(
                matches!(
                    decode_versioned(&key, junk),
                    Err(StoreError::Corrupt { .. })
                ),
                "{junk:?}"
            );
        }
    }

    /// The steps key of a call is in the slot of its record, whatever
    /// braces the storage key holds, and whatever balanced braces (or an
    /// open `{`) the prefix holds.
    #[test]
    fn a_calls_steps_are_in_the_slot_of_its_record() {
        use redis::cluster_routing::Slot;
        let storage_keys = [
            "2:ns|0:|2:op|k",
            "2:ns|0:|2:op|{x}1",
            "2:ns|0:|2:op|{x}2",
            "2:ns|3:{a}|2:op|}{",
            "4:{ns}|0:|4:{}op|{}",
        ];
        for prefix in ["", "test:", "shop:", "{shop}:", "app{", "a{b:", "x}y:"] {
            for key in storage_keys {
                let record = format!("{prefix}{NO_TAG}{key}");
                let steps = steps_key(prefix, key);
                assert!(steps.in_record_slot, "{prefix:?} {key:?}");
                assert_eq!(
                    Slot::for_key(&steps.key),
                    Slot::for_key(&record),
                    "{record:?} and {:?}",
                    steps.key
                );
                assert_ne!(steps.key, record);
                assert!(steps.key.starts_with(prefix) && steps.key.ends_with(key));
            }
        }
        // The tag: a short number, right after the prefix.
        let steps = steps_key("test:", "2:ns|0:|2:op|k").key;
        let tag = steps
            .strip_prefix("test:{")
            .and_then(|rest| rest.strip_suffix("}s2:ns|0:|2:op|k"))
            .expect("<prefix>{<tag>}s<storage key>");
        assert!(
            tag.len() <= 6 && tag.bytes().all(|b| b.is_ascii_digit()),
            "{tag}"
        );
        // With braces in the prefix, the prefix decides.
        assert_eq!(steps_key("app{", "2:k").key, "app{{}s2:k");
        assert_eq!(steps_key("{shop}:", "2:k").key, "{shop}:{}s2:k");
    }

    /// A prefix that starts with an empty `{}` makes a cluster hash keys
    /// whole: no tag can put the steps in the record's slot.
    #[test]
    fn an_empty_pair_of_braces_in_the_prefix_is_reported() {
        assert!(!steps_key("a{}b:", "2:ns|0:|2:op|k").in_record_slot);
        assert!(!steps_key("{}", "2:ns|0:|2:op|k").in_record_slot);
        assert!(steps_key("a{b}{}:", "2:ns|0:|2:op|k").in_record_slot);
    }
}
