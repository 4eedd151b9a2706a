//! The operations of [`Admin`] on the memory store: under one shard lock
//! for a key, shard by shard for the whole store.

use std::time::Duration;

use async_trait::async_trait;
use hashbrown::hash_table::Entry;

use super::shard::{Slot, SlotState};
use super::{CLAIMED_AT_SHIFT, MemoryStore, lock};
use crate::key::StorageKey;
use crate::record::{LAYOUT, Millis};
use crate::store::StoreError;
use crate::store::admin::{
    Admin, Eviction, OperationCount, RecordInfo, RecordStatus, StuckRecords, Tally,
};

/// A live slot as the admin sees it (its own layout: records never leave
/// the process).
fn info(key: StorageKey, slot: &Slot, now: Millis, with_response: bool) -> RecordInfo {
    let status = match &slot.state {
        SlotState::InProgress { token, lease_until } => {
            let claimed_at = (token.as_u128() >> CLAIMED_AT_SHIFT) as Millis;
            RecordStatus::InProgress {
                owner: *token,
                lease_left: Duration::from_millis(lease_until.saturating_sub(now)),
                running_for: Some(Duration::from_millis(now.saturating_sub(claimed_at))),
            }
        }
        SlotState::Completed { expires_at, large } => {
            let inline = &slot.data[slot.key_len..];
            let response = large.as_deref().unwrap_or(inline);
            RecordStatus::Completed {
                expires_in: Duration::from_millis(expires_at.saturating_sub(now)),
                response_len: response.len(),
                response: with_response.then(|| response.into()),
            }
        }
    };
    RecordInfo::new(key, slot.fingerprint, LAYOUT, status)
}

impl MemoryStore {
    /// Every live record (without its response), one shard locked at a time.
    fn each_live(&self, mut visit: impl FnMut(RecordInfo)) {
        for shard in &self.inner.shards {
            let shard = lock(shard);
            let now = self.now();
            for slot in shard.table.iter().filter(|slot| slot.is_live(now)) {
                let stored = std::str::from_utf8(slot.key()).ok();
                if let Some(key) = stored.and_then(StorageKey::from_stored) {
                    visit(info(key, slot, now, false));
                }
            }
        }
    }
}

#[async_trait]
impl Admin for MemoryStore {
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError> {
        Ok(self.with_shard(key, |shard, hash, now| {
            shard
                .table
                .find(hash, |s| s.key() == key.as_str().as_bytes())
                .filter(|slot| slot.is_live(now))
                .map(|slot| info(key.clone(), slot, now, with_response))
        }))
    }

    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError> {
        Ok(self.with_shard(key, |shard, hash, now| {
            let entry = shard
                .table
                .entry(hash, |s| s.key() == key.as_str().as_bytes(), |s| s.hash);
            let Entry::Occupied(occupied) = entry else {
                return Eviction::Absent;
            };
            let slot = occupied.get();
            if !slot.is_live(now) {
                return Eviction::Absent;
            }
            let in_progress = match slot.state {
                SlotState::InProgress { lease_until, .. } if !force => {
                    return Eviction::Refused {
                        lease_left: Duration::from_millis(lease_until - now),
                    };
                }
                SlotState::InProgress { .. } => true,
                SlotState::Completed { .. } => false,
            };
            // Gone, the lease's token fences its owner: nothing is left
            // for it to complete, release or renew.
            let (slot, _) = occupied.remove();
            if let Some(waiters) = slot.waiters {
                waiters.notify_waiters();
            }
            shard.deadlines.compact(&shard.table);
            Eviction::Evicted { in_progress }
        }))
    }

    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError> {
        let mut stuck = StuckRecords::new(older_than, limit);
        self.each_live(|record| stuck.offer(record));
        Ok(stuck.into_list())
    }

    async fn count(&self) -> Result<Vec<OperationCount>, StoreError> {
        let mut tally = Tally::default();
        self.each_live(|record| tally.add(&record));
        Ok(tally.into_counts())
    }
}
