//! Journaled steps in a store: the values a call's steps recorded, kept
//! apart from the call's record so that they outlive a release (a retry
//! after an error or a crash replays them), and written only under the
//! call's live lease.

use std::collections::HashMap;
use std::time::Duration;

use crate::fingerprint::Fingerprint;
use crate::record::LeaseToken;

/// The steps one call recorded ([`Store::steps`](super::Store::steps)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepLog {
    /// The payload fingerprint of the call that recorded them: a call with
    /// another payload under the same key must not replay them.
    pub fingerprint: Fingerprint,
    /// Each step's recorded value, by the step's name.
    pub values: HashMap<String, Vec<u8>>,
}

/// One step to record ([`Store::record_step`](super::Store::record_step)).
#[derive(Debug, Clone, Copy)]
pub struct StepWrite<'a> {
    /// The token of the call's lease: the step is recorded only if it is
    /// the live one.
    pub token: LeaseToken,
    /// The fingerprint the call was claimed with.
    pub fingerprint: Fingerprint,
    /// The step's name, unique within the call.
    pub name: &'a str,
    /// The step's encoded value.
    pub value: &'a [u8],
    /// The call's lease is extended to this, from now, with the write.
    pub lease: Duration,
    /// The call's steps are kept this long from now (the operation's TTL).
    pub ttl: Duration,
}
