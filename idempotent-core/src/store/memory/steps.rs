//! Journaled steps in the memory store: each call's steps in the shard of
//! its record, so that checking the lease and writing a step take one lock.

use std::collections::HashMap;

use super::shard::{Shard, Slot, SlotState};
use super::{MemoryStore, StoreError};
use crate::fingerprint::Fingerprint;
use crate::key::StorageKey;
use crate::record::{self, Millis};
use crate::store::{StepLog, StepWrite};

/// The steps of one call.
pub(super) struct Steps {
    fingerprint: Fingerprint,
    values: HashMap<String, Vec<u8>>,
    expires_at: Millis,
}

/// The steps of a shard's calls, by storage key, with what it takes to drop
/// the expired ones without a scan per call.
#[derive(Default)]
pub(super) struct ShardSteps {
    calls: HashMap<Box<str>, Steps>,
    /// How many calls were held after the last sweep of expired steps.
    swept: usize,
}

/// A shard sweeps its expired steps when it holds this many more calls'
/// steps than after its last sweep (and twice as many), so that steps of
/// calls never retried nor completed do not pile up.
const SWEEP_AFTER: usize = 64;

impl MemoryStore {
    pub(super) fn read_steps(&self, key: &StorageKey) -> Option<StepLog> {
        self.with_shard(key, |shard, _, now| {
            let steps = shard.steps.calls.get(key.as_str())?;
            (steps.expires_at > now).then(|| StepLog {
                fingerprint: steps.fingerprint,
                values: steps.values.clone(),
            })
        })
    }

    pub(super) fn write_step(
        &self,
        key: &StorageKey,
        step: StepWrite<'_>,
    ) -> Result<(), StoreError> {
        self.with_shard(key, |shard, hash, now| {
            let Shard {
                table,
                deadlines,
                steps,
                ..
            } = shard;
            let slot = table.find_mut(hash, |s| s.key() == key.as_str().as_bytes());
            let Some(slot) = slot.filter(|s| matches!(s.state, SlotState::InProgress { .. }))
            else {
                return Err(StoreError::LeaseLost);
            };
            record::check_fence(Some(&slot.record()), step.token, now)
                .map_err(|_| StoreError::LeaseLost)?;
            if slot.fingerprint != step.fingerprint {
                return Err(StoreError::LeaseLost);
            }
            renew(slot, now, step);
            deadlines.push(slot);
            deadlines.compact(table);
            steps.record(key, step, now);
            Ok(())
        })
    }

    pub(super) fn drop_steps(&self, key: &StorageKey) {
        self.with_shard(key, |shard, _, _| {
            shard.steps.calls.remove(key.as_str());
        });
    }
}

/// Extends the lease of `slot` (in progress) to `step.lease` from `now`.
fn renew(slot: &mut Slot, now: Millis, step: StepWrite<'_>) {
    if let SlotState::InProgress { lease_until, .. } = &mut slot.state {
        *lease_until = now.saturating_add(record::millis(step.lease));
    }
}

impl ShardSteps {
    fn record(&mut self, key: &StorageKey, step: StepWrite<'_>, now: Millis) {
        let expires_at = now.saturating_add(record::millis(step.ttl));
        match self.calls.get_mut(key.as_str()) {
            Some(steps) => {
                if steps.expires_at <= now {
                    steps.values.clear();
                }
                steps.fingerprint = step.fingerprint;
                steps.expires_at = expires_at;
                steps
                    .values
                    .insert(step.name.to_owned(), step.value.to_vec());
            }
            None => {
                if self.calls.len() >= (self.swept * 2).max(SWEEP_AFTER) {
                    self.calls.retain(|_, steps| steps.expires_at > now);
                    self.swept = self.calls.len();
                }
                let values = HashMap::from([(step.name.to_owned(), step.value.to_vec())]);
                self.calls.insert(
                    key.as_str().into(),
                    Steps {
                        fingerprint: step.fingerprint,
                        values,
                        expires_at,
                    },
                );
            }
        }
    }
}
