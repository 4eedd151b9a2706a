//! The record state machine, in one place.
//!
//! ```text
//! absent ──claim──▶ InProgress{lease token, lease expiry, fingerprint}
//! InProgress ──complete(token)──▶ Completed{stored response, fingerprint, expiry = now + ttl}
//! InProgress ──release(token)──▶ absent            (body failed with an uncached error, or panicked)
//! InProgress, lease expired ──claim──▶ InProgress{new token}   (owner crashed; takeover)
//! Completed ──ttl elapses──▶ absent
//! ```
//!
//! The functions here are pure: they take the current record (or `None` when
//! the key is absent) and the store's clock, and say what to do. A store
//! applies them as ONE atomic step (under one shard lock in memory, in one
//! script in Redis, in one statement in SQL), so every store implements
//! exactly these rules, and the shared conformance suite checks that they do.
//!
//! Rules a reader might look for:
//! - A record whose deadline has passed (lease expiry for `InProgress`,
//!   retention for `Completed`) is the same as an absent key.
//! - A different payload under a live key is a [`KeyReused`](ClaimOutcome::KeyReused),
//!   whether the first request is still running or finished.
//! - `complete`, `release` and `renew` succeed only for the live lease whose
//!   token they carry; anything else is [`Fenced`].
//!
//! # For people writing their own store
//!
//! A store implements [`Store`](crate::Store) with the types of this module
//! ([`StorageKey`], [`ClaimOutcome`], [`Lease`], [`LeaseToken`]) and the
//! rules of [`decide_claim`] and [`check_fence`], and proves it with the
//! shared conformance suite. Users of the attribute, the engine or the HTTP
//! layer need nothing from here.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::fingerprint::Fingerprint;
pub use crate::key::StorageKey;

/// Milliseconds on a store's clock (its own origin; only differences matter).
pub type Millis = u64;

/// The longest lease or retention a store is asked to keep: a century.
/// Longer durations, up to `Duration::MAX`, are held for a century, which
/// every store can represent (Redis's `PX` and PostgreSQL's timestamps
/// overflow not far beyond `i64` milliseconds, and a failed completion would
/// leave the key to run again).
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Converts a duration to whole milliseconds, at least 1 and at most
/// [`MAX_DURATION`].
pub fn millis(duration: Duration) -> Millis {
    let millis = u64::try_from(duration.min(MAX_DURATION).as_millis()).unwrap_or(u64::MAX);
    millis.max(1)
}

/// The version of the record layout this release writes: how a store lays
/// a record out in its bytes or columns (each backend documents its own).
///
/// A release reads the layout it writes and the one before it, so that a
/// rolling upgrade finds the records of the release it replaces readable.
/// A record in a later layout (written by a newer release) is refused as
/// [`StoreError::Corrupt`](crate::StoreError::Corrupt), naming its version,
/// and the call fails closed: it is never run again for want of a record.
///
/// - Layout 1 (0.1): no version marker.
/// - Layout 2: a version marker in every record (a first byte `2` in Redis,
///   a `layout` column in PostgreSQL), and lease tokens that carry the time
///   of their claim (what [`Admin::stuck`](crate::admin::Admin::stuck) reads).
///
/// ```
/// use idempotent_core::record::{LAYOUT, readable_layout};
///
/// assert!(readable_layout(LAYOUT) && readable_layout(LAYOUT - 1));
/// assert!(!readable_layout(LAYOUT + 1));
/// ```
pub const LAYOUT: u8 = 2;

/// Whether this release reads records in layout `version`: [`LAYOUT`] and
/// the one before it.
pub const fn readable_layout(version: u8) -> bool {
    version == LAYOUT || version == LAYOUT - 1
}

/// Why a record in layout `version` cannot be read, for the detail of a
/// [`StoreError::Corrupt`](crate::StoreError::Corrupt).
pub fn unreadable_layout(version: impl fmt::Display) -> String {
    format!(
        "written in record layout {version}, which this release does not read (it reads \
         layouts {} and {LAYOUT}): a newer release wrote it; upgrade every process to it, \
         or evict the record",
        LAYOUT - 1
    )
}

/// A fencing token: proves that the holder owns the current lease on a key.
///
/// Tokens are unique per claim within a store, so an owner whose lease
/// expired and was taken over can never complete, release or renew the new
/// owner's record.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(u128);

impl LeaseToken {
    /// Builds a token from its raw value (stores choose how to make them unique).
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The raw value (for stores encoding a record).
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({:x})", self.0)
    }
}

/// The lease a successful claim hands to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The fencing token to present to `complete`, `release` and `renew`.
    pub token: LeaseToken,
    /// How long the lease lasts unless renewed.
    pub duration: Duration,
}

/// A stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the payload that created the record.
    pub fingerprint: Fingerprint,
    /// Where the record is in its life.
    pub state: RecordState,
}

/// The two states a present record can be in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// A caller holds the lease and is running the body.
    InProgress {
        /// The current owner's fencing token.
        token: LeaseToken,
        /// When the lease runs out, unless renewed.
        lease_until: Millis,
    },
    /// The body finished; its encoded response is kept until `expires_at`.
    Completed {
        /// The encoded response, replayed to every later claim.
        response: Arc<[u8]>,
        /// When the record is forgotten.
        expires_at: Millis,
    },
}

impl Record {
    /// When this record stops existing, unless something changes it.
    pub fn deadline(&self) -> Millis {
        match self.state {
            RecordState::InProgress { lease_until, .. } => lease_until,
            RecordState::Completed { expires_at, .. } => expires_at,
        }
    }

    /// Whether the record still exists at `now`.
    pub fn is_live(&self, now: Millis) -> bool {
        self.deadline() > now
    }
}

/// What a claim answers.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimOutcome {
    /// The caller owns the key: run the body, then complete or release.
    Acquired(Lease),
    /// Same key, same fingerprint, finished before: replay this response.
    Completed(Arc<[u8]>),
    /// Same key, same fingerprint, running now; try again after `retry_after`.
    InProgress {
        /// How long until the current lease runs out (an upper bound on the wait).
        retry_after: Duration,
    },
    /// Same key, different fingerprint.
    KeyReused,
}

/// What a store must do to answer a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Write `InProgress { token: <new>, lease_until: now + lease }` with the
    /// claim's fingerprint, replacing whatever (dead) record was there, and
    /// answer [`ClaimOutcome::Acquired`].
    Acquire,
    /// Leave the record alone and answer this.
    Answer(ClaimOutcome),
}

/// The claim transition.
pub fn decide_claim(
    current: Option<&Record>,
    fingerprint: Fingerprint,
    now: Millis,
) -> ClaimDecision {
    let Some(record) = current.filter(|r| r.is_live(now)) else {
        return ClaimDecision::Acquire;
    };
    if record.fingerprint != fingerprint {
        return ClaimDecision::Answer(ClaimOutcome::KeyReused);
    }
    ClaimDecision::Answer(match &record.state {
        RecordState::InProgress { lease_until, .. } => ClaimOutcome::InProgress {
            retry_after: Duration::from_millis(lease_until - now),
        },
        RecordState::Completed { response, .. } => ClaimOutcome::Completed(Arc::clone(response)),
    })
}

/// The refusal of `complete`, `release` or `renew` for a lease that is no
/// longer the live one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced;

/// Checks that `token` holds the live lease of `current`; the precondition of
/// the `complete`, `release` and `renew` transitions.
///
/// - complete: on `Ok`, write `Completed { response, expires_at: now + ttl }`.
/// - release: on `Ok`, delete the record.
/// - renew: on `Ok`, set `lease_until = now + lease`.
pub fn check_fence(current: Option<&Record>, token: LeaseToken, now: Millis) -> Result<(), Fenced> {
    match current {
        Some(Record {
            state:
                RecordState::InProgress {
                    token: held,
                    lease_until,
                },
            ..
        }) if *held == token && *lease_until > now => Ok(()),
        _ => Err(Fenced),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = Fingerprint::from_u128(1);
    const OTHER: Fingerprint = Fingerprint::from_u128(2);
    const T1: LeaseToken = LeaseToken::from_u128(1);

    fn in_progress(until: Millis) -> Record {
        Record {
            fingerprint: FP,
            state: RecordState::InProgress {
                token: T1,
                lease_until: until,
            },
        }
    }

    fn completed(until: Millis) -> Record {
        Record {
            fingerprint: FP,
            state: RecordState::Completed {
                response: Arc::from(&b"r"[..]),
                expires_at: until,
            },
        }
    }

    #[test]
    fn claim_transitions() {
        assert_eq!(decide_claim(None, FP, 10), ClaimDecision::Acquire);
        assert_eq!(
            decide_claim(Some(&in_progress(15)), FP, 10),
            ClaimDecision::Answer(ClaimOutcome::InProgress {
                retry_after: Duration::from_millis(5)
            })
        );
        assert_eq!(
            decide_claim(Some(&in_progress(10)), FP, 10),
            ClaimDecision::Acquire
        );
        assert_eq!(
            decide_claim(Some(&in_progress(10)), OTHER, 10),
            ClaimDecision::Acquire
        );
        assert_eq!(
            decide_claim(Some(&in_progress(15)), OTHER, 10),
            ClaimDecision::Answer(ClaimOutcome::KeyReused)
        );
        assert_eq!(
            decide_claim(Some(&completed(15)), FP, 10),
            ClaimDecision::Answer(ClaimOutcome::Completed(Arc::from(&b"r"[..])))
        );
        assert_eq!(
            decide_claim(Some(&completed(15)), OTHER, 10),
            ClaimDecision::Answer(ClaimOutcome::KeyReused)
        );
        assert_eq!(
            decide_claim(Some(&completed(10)), OTHER, 10),
            ClaimDecision::Acquire
        );
    }

    #[test]
    fn fencing() {
        let other = LeaseToken::from_u128(9);
        assert_eq!(check_fence(Some(&in_progress(15)), T1, 10), Ok(()));
        assert_eq!(check_fence(Some(&in_progress(15)), other, 10), Err(Fenced));
        assert_eq!(check_fence(Some(&in_progress(10)), T1, 10), Err(Fenced));
        assert_eq!(check_fence(Some(&completed(15)), T1, 10), Err(Fenced));
        assert_eq!(check_fence(None, T1, 10), Err(Fenced));
    }
}
