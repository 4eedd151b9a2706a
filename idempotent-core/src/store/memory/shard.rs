//! A shard of the memory store: its records (`Slot`s) in a hash table,
//! and their deadlines in two heaps, for expiry and eviction.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use hashbrown::HashTable;
use tokio::sync::Notify;

use crate::fingerprint::Fingerprint;
use crate::record::{LeaseToken, Millis, Record, RecordState};

#[derive(Default)]
pub(super) struct Shard {
    pub(super) table: HashTable<Slot>,
    pub(super) deadlines: Deadlines,
    /// The next record's [`Slot::id`].
    pub(super) next_id: u64,
    /// How many leases this shard has handed out.
    pub(super) leases: u64,
    /// The journaled steps of this shard's calls.
    pub(super) steps: super::steps::ShardSteps,
}

/// The deadlines of one shard, as two min-heaps: leases of records in
/// progress, and expiries of completed records. Keeping them apart lets an
/// eviction go straight to the completed record closest to expiry, however
/// many calls are running.
#[derive(Default)]
pub(super) struct Deadlines {
    pub(super) leases: BinaryHeap<Reverse<Deadline>>,
    pub(super) expiries: BinaryHeap<Reverse<Deadline>>,
}

/// One record. The key and a small response share one allocation (`data`),
/// so a replay in a large store reads one place in memory for both the key
/// comparison and the response, instead of two.
pub(super) struct Slot {
    pub(super) hash: u64,
    /// Unique in its shard: how deadline-heap entries name the record.
    pub(super) id: u64,
    /// The storage key, then (completed, at most [`INLINE_RESPONSE`](super::INLINE_RESPONSE) bytes)
    /// the response.
    pub(super) data: Arc<[u8]>,
    pub(super) key_len: usize,
    pub(super) fingerprint: Fingerprint,
    pub(super) state: SlotState,
    pub(super) waiters: Option<Arc<Notify>>,
}

/// [`RecordState`] without the response, which lives in [`Slot::data`]
/// unless it is large.
pub(super) enum SlotState {
    InProgress {
        token: LeaseToken,
        lease_until: Millis,
    },
    Completed {
        expires_at: Millis,
        large: Option<Arc<[u8]>>,
    },
}

impl Slot {
    pub(super) fn key(&self) -> &[u8] {
        &self.data[..self.key_len]
    }

    pub(super) fn deadline(&self) -> Millis {
        match self.state {
            SlotState::InProgress { lease_until, .. } => lease_until,
            SlotState::Completed { expires_at, .. } => expires_at,
        }
    }

    pub(super) fn is_live(&self, now: Millis) -> bool {
        self.deadline() > now
    }

    /// The record, for the state machine of [`record`](crate::record).
    pub(super) fn record(&self) -> Record {
        let state = match &self.state {
            SlotState::InProgress { token, lease_until } => RecordState::InProgress {
                token: *token,
                lease_until: *lease_until,
            },
            SlotState::Completed { expires_at, large } => RecordState::Completed {
                response: match large {
                    Some(response) => Arc::clone(response),
                    None => Arc::from(&self.data[self.key_len..]),
                },
                expires_at: *expires_at,
            },
        };
        Record {
            fingerprint: self.fingerprint,
            state,
        }
    }
}

/// A heap entry. It may be stale (the record changed since): it is checked
/// against the record when popped. It names the record by hash and id, not
/// by key, so that the many stale entries (every completed call leaves its
/// lease's entry until the lease would have ended) keep no allocation alive.
pub(super) struct Deadline {
    pub(super) at: Millis,
    pub(super) hash: u64,
    pub(super) id: u64,
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at)
    }
}

impl Shard {
    /// Removes the records whose deadline has passed, popping at most
    /// `budget` heap entries (stale ones count too, so one call never
    /// stalls on a backlog).
    pub(super) fn purge(&mut self, now: Millis, budget: usize) {
        for _ in 0..budget {
            let Some(d) = self.deadlines.pop_due(now) else {
                return;
            };
            if let Ok(slot) = self.table.find_entry(d.hash, |s| s.id == d.id)
                && !slot.get().is_live(now)
            {
                let (slot, _) = slot.remove();
                if let Some(waiters) = slot.waiters {
                    waiters.notify_waiters();
                }
            }
        }
    }

    /// Makes room for one more record, evicting the completed record closest
    /// to expiry. Records in progress are never evicted.
    pub(super) fn make_room(&mut self, limit: usize, now: Millis) -> Room {
        if self.table.len() < limit {
            return Room::Free;
        }
        self.purge(now, usize::MAX);
        if self.table.len() < limit {
            return Room::Free;
        }
        // Every entry popped here is either evicted or stale, so the work is
        // paid for by the pushes that created the entries.
        while let Some(Reverse(d)) = self.deadlines.expiries.pop() {
            let Ok(slot) = self.table.find_entry(d.hash, |s| s.id == d.id) else {
                continue;
            };
            let found = slot.get();
            if matches!(found.state, SlotState::Completed { .. }) && found.deadline() == d.at {
                slot.remove();
                return Room::Evicted;
            }
        }
        Room::Full
    }
}

/// What making room for a record took.
pub(super) enum Room {
    /// There was room.
    Free,
    /// A completed record was evicted.
    Evicted,
    /// Every record is in progress: none may be evicted.
    Full,
}

/// A shard's heaps are rebuilt when they hold more than this many entries
/// per record, plus [`COMPACT_SLACK`].
pub(super) const COMPACT_FACTOR: usize = 4;
pub(super) const COMPACT_SLACK: usize = 1024;

impl Deadlines {
    /// Drops the stale entries once they outnumber the records: every
    /// completion, renewal or release leaves its lease's entry behind until
    /// that lease would have ended, which for a long lease (an hour, or
    /// [`MAX_DURATION`](crate::MAX_DURATION)) is never soon. The heaps stay
    /// within a constant factor of the records held; a rebuild costs
    /// O(entries) and is paid for by the pushes since the last one.
    pub(super) fn compact(&mut self, table: &HashTable<Slot>) {
        if self.leases.len() + self.expiries.len() <= COMPACT_FACTOR * table.len() + COMPACT_SLACK {
            return;
        }
        // Every record keeps the entry at its current deadline, in the heap
        // of its state, which is what `purge` and eviction need.
        let current = |in_progress: bool| {
            move |Reverse(d): &Reverse<Deadline>| {
                table.find(d.hash, |s| s.id == d.id).is_some_and(|s| {
                    s.deadline() == d.at
                        && matches!(s.state, SlotState::InProgress { .. }) == in_progress
                })
            }
        };
        self.leases.retain(current(true));
        self.expiries.retain(current(false));
    }

    pub(super) fn push(&mut self, slot: &Slot) {
        let heap = match slot.state {
            SlotState::InProgress { .. } => &mut self.leases,
            SlotState::Completed { .. } => &mut self.expiries,
        };
        heap.push(Reverse(Deadline {
            at: slot.deadline(),
            hash: slot.hash,
            id: slot.id,
        }));
    }

    /// Pops the earliest entry of either heap if its deadline has passed.
    pub(super) fn pop_due(&mut self, now: Millis) -> Option<Deadline> {
        let due = |heap: &BinaryHeap<Reverse<Deadline>>| {
            heap.peek().map(|Reverse(d)| d.at).filter(|&at| at <= now)
        };
        let heap = match (due(&self.leases), due(&self.expiries)) {
            (None, None) => return None,
            (Some(l), Some(e)) if e < l => &mut self.expiries,
            (Some(_), _) => &mut self.leases,
            (None, Some(_)) => &mut self.expiries,
        };
        heap.pop().map(|Reverse(d)| d)
    }
}
