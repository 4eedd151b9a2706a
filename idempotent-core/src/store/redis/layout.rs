//! How a record is laid out in Redis: its key, and the bytes of its value
//! (see the module docs of [`redis`](super)).

use std::sync::Arc;
use std::time::Duration;

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

/// `'P'`, fingerprint, token (and a `'w'` when waited on).
pub(super) const IN_PROGRESS_LEN: usize = 1 + 16 + 16;

/// The value of a record in progress, as a claim writes it.
pub(super) fn in_progress(fingerprint: [u8; 16], token: LeaseToken) -> [u8; IN_PROGRESS_LEN] {
    let mut value = [0; IN_PROGRESS_LEN];
    value[0] = b'P';
    value[1..17].copy_from_slice(&fingerprint);
    value[17..].copy_from_slice(&token.as_u128().to_be_bytes());
    value
}

/// Whether a stored value is the in-progress value this claim wrote (with
/// or without a waiter's mark).
pub(super) fn is_own_claim(stored: &[u8], ours: &[u8; IN_PROGRESS_LEN]) -> bool {
    stored
        .strip_prefix(&ours[..])
        .is_some_and(|rest| rest.is_empty() || rest == b"w")
}

/// Decodes a stored value into a [`Record`] whose deadline is "alive" (Redis
/// keeps the expiry itself and only hands out live keys).
pub(crate) fn decode(key: &StorageKey, bytes: Vec<u8>) -> Result<Record, StoreError> {
    let u128_at = |at: usize| {
        let raw: [u8; 16] = bytes[at..at + 16].try_into().unwrap_or_default();
        u128::from_be_bytes(raw)
    };
    let state = match bytes.first() {
        Some(b'P')
            if bytes.len() == IN_PROGRESS_LEN
                || (bytes.len() == IN_PROGRESS_LEN + 1 && bytes.last() == Some(&b'w')) =>
        {
            RecordState::InProgress {
                token: LeaseToken::from_u128(u128_at(17)),
                lease_until: Millis::MAX,
            }
        }
        Some(b'C') if bytes.len() >= 17 => RecordState::Completed {
            response: Arc::from(&bytes[17..]),
            expires_at: Millis::MAX,
        },
        _ => {
            return Err(corrupt(
                key,
                "not an idempotency record (unknown tag, or truncated)",
            ));
        }
    };
    Ok(Record {
        fingerprint: Fingerprint::from_u128(u128_at(1)),
        state,
    })
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
        assert!(!is_own_claim(&ours[..32], &ours), "truncated");
        assert!(!is_own_claim(&[&ours[..], b"ww"].concat(), &ours));
        let mut completed = ours.to_vec();
        completed[0] = b'C';
        assert!(!is_own_claim(&completed, &ours));
    }
}
