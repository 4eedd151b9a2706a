//! Lease tokens for stores shared by processes (Redis, PostgreSQL): unique
//! across processes, and carrying the time of their claim (record layout 2),
//! which is how the operations of [`admin`](super::admin) tell how long a
//! record has been in progress without a field of its own.
//!
//! ```text
//! bits 127..64: random, per store     bits 63..16: claim time, Unix ms     bits 15..0: a counter
//! ```
//!
//! Two tokens of one store are equal only if 65,536 claims fall in one
//! millisecond; two stores' tokens differ by their random bits.

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::record::LeaseToken;

/// The claim time's bits.
const TIME_MASK: u64 = (1 << 48) - 1;

/// Makes the lease tokens of one store.
#[derive(Debug)]
pub(crate) struct LeaseTokens {
    base: u128,
    next: AtomicU64,
}

impl LeaseTokens {
    pub(crate) fn new() -> Self {
        let random = RandomState::new().hash_one(std::process::id());
        Self {
            base: u128::from(random) << 64,
            next: AtomicU64::new(1),
        }
    }

    /// A new token, claimed now.
    pub(crate) fn next(&self) -> LeaseToken {
        let count = self.next.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        let time = u128::from(now & TIME_MASK) << 16;
        LeaseToken::from_u128(self.base | time | u128::from(count))
    }
}

/// When a token of [`LeaseTokens`] was claimed (by the clock of the process
/// that claimed it).
pub(crate) fn claimed_at(token: LeaseToken) -> SystemTime {
    let millis = (token.as_u128() >> 16) as u64 & TIME_MASK;
    UNIX_EPOCH + Duration::from_millis(millis)
}

/// How long ago `token` was claimed (zero if its claimer's clock is ahead).
pub(crate) fn running_for(token: LeaseToken) -> Duration {
    SystemTime::now()
        .duration_since(claimed_at(token))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_knows_when_it_was_claimed_and_tokens_differ() {
        let tokens = LeaseTokens::new();
        let before = SystemTime::now() - Duration::from_millis(1);
        let (a, b) = (tokens.next(), tokens.next());
        assert_ne!(a, b);
        let claimed = claimed_at(a);
        assert!(
            claimed >= before && claimed <= SystemTime::now(),
            "{claimed:?}"
        );
        assert!(running_for(a) < Duration::from_secs(5));
        assert_ne!(LeaseTokens::new().next(), LeaseTokens::new().next());
    }
}
