//! The floor of the engine on the memory store: the work any idempotent
//! call in one process must do, written by hand with none of our code.
//!
//! A call builds its storage key (the caller does, as a `&str`), fingerprints
//! its payload (XXH3-128 of its JSON, streamed), reads the clock, and takes
//! one shard's lock to look the key up:
//!
//! - a completed, unexpired record with the same fingerprint is copied out
//!   and decoded (a replay);
//! - another fingerprint, or a record in progress, is refused;
//! - otherwise the call leaves a record in progress with a lease token and
//!   deadline, runs its body outside the lock, encodes the value (a tag byte
//!   and the JSON) and takes the lock again to complete its record if it
//!   still holds the lease.
//!
//! It has no bound on records (so no eviction), no expiry sweep (an expired
//! record stays until its key is used again), no waiting for a call in
//! progress, no key checks, spans or metrics: every one of those is ours
//! alone, so ours can only be slower by what they cost.

use std::future::Future;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use hashbrown::HashMap;
use serde::Serialize;
use serde::de::DeserializeOwned;
use xxhash_rust::xxh3::Xxh3;

const SHARDS: usize = 64;
const LEASE_MS: u64 = 30_000;
const TTL_MS: u64 = 24 * 3600 * 1000;

/// Why a call was refused.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The key was used with another payload.
    Mismatch,
    /// Another call holds the key.
    InProgress,
}

pub(crate) struct MapFloor {
    shards: Box<[Mutex<Shard>]>,
    /// Picks the shard; each shard's map hashes with its own.
    hasher: foldhash::fast::FixedState,
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    records: HashMap<String, Record>,
    leases: u64,
}

struct Record {
    fingerprint: u128,
    state: State,
}

enum State {
    InProgress {
        token: u64,
        lease_until: u64,
    },
    Completed {
        expires_at: u64,
        response: Box<[u8]>,
    },
}

/// Streams the payload's JSON into the hasher, with no buffer.
struct HashWriter(Xxh3);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl MapFloor {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: foldhash::fast::FixedState::default(),
            epoch: Instant::now(),
        }
    }

    /// Runs `body` once for `key`, or replays its stored value.
    pub(crate) async fn call<T, F>(
        &self,
        key: &str,
        payload: &impl Serialize,
        body: F,
    ) -> Result<T, Refused>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = T>,
    {
        let mut hasher = HashWriter(Xxh3::new());
        serde_json::to_writer(&mut hasher, payload).expect("the payload encodes");
        let fingerprint = hasher.0.digest128();
        let now = self.epoch.elapsed().as_millis() as u64;
        let shard = &self.shards[self.hasher.hash_one(key) as usize % SHARDS];

        let token = {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            let live = shard.records.get(key).filter(|record| match record.state {
                State::InProgress { lease_until, .. } => lease_until > now,
                State::Completed { expires_at, .. } => expires_at > now,
            });
            if let Some(record) = live {
                if record.fingerprint != fingerprint {
                    return Err(Refused::Mismatch);
                }
                let State::Completed { response, .. } = &record.state else {
                    return Err(Refused::InProgress);
                };
                let response = response.to_vec();
                drop(shard);
                return Ok(serde_json::from_slice(&response[1..]).expect("a stored value decodes"));
            }
            shard.leases += 1;
            let token = shard.leases;
            let record = Record {
                fingerprint,
                state: State::InProgress {
                    token,
                    lease_until: now + LEASE_MS,
                },
            };
            shard.records.insert(key.to_owned(), record);
            token
        };

        let value = body.await;
        let mut response = Vec::with_capacity(64);
        response.push(b'O');
        serde_json::to_writer(&mut response, &value).expect("the value encodes");
        let completed_at = self.epoch.elapsed().as_millis() as u64;
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = shard.records.get_mut(key)
            && matches!(record.state, State::InProgress { token: held, .. } if held == token)
        {
            record.state = State::Completed {
                expires_at: completed_at + TTL_MS,
                response: response.into_boxed_slice(),
            };
        }
        Ok(value)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .records
                    .len()
            })
            .sum()
    }
}
