//! The standalone connection of a [`RedisStore`](super::RedisStore):
//! redis-rs's `ConnectionManager`, replaced when it stops answering.
//!
//! The manager reconnects when its connection reports an error (a reset, a
//! closed socket). A connection that goes silent instead (the Redis host
//! vanished, or a failover moved its address: no reset ever arrives)
//! reports nothing until the kernel gives up retransmitting, which takes
//! about a quarter of an hour on Linux's defaults, and a timeout alone does
//! not make the manager reconnect. So a call that times out on a
//! connection that has answered before has that connection replaced by a
//! new, lazily connecting manager: at worst one needless reconnection for a
//! Redis that was only slow. A connection that has never answered is left
//! to redis-rs's own reconnecting: replacing it would only restart a
//! connection still being made, once per timeout, against a Redis that may
//! be struggling already.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::Value;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::connection::{Heard, Request, bounded};
use crate::store::StoreError;

pub(super) struct Standalone {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Read on every call without a lock, so that a worker preempted while
    /// holding one cannot stall the other workers' calls.
    current: ArcSwap<Current>,
    /// Serializes replacements of `current`.
    replacing: Mutex<()>,
    /// One more than the generation of the newest connection that has
    /// answered a call, with a value or an error reply (0: none has).
    answered: AtomicU64,
}

struct Current {
    manager: ConnectionManager,
    /// Counts replacements, so that the calls that timed out together on
    /// one connection replace it once.
    generation: u64,
}

impl Standalone {
    pub(super) fn new(
        client: redis::Client,
        config: ConnectionManagerConfig,
    ) -> redis::RedisResult<Self> {
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            client,
            config,
            current: ArcSwap::from_pointee(Current {
                manager,
                generation: 0,
            }),
            replacing: Mutex::new(()),
            answered: AtomicU64::new(0),
        })
    }

    /// The connection to send a call on, and its generation for
    /// [`replace_after`](Self::replace_after).
    fn get(&self) -> (ConnectionManager, u64) {
        let current = self.current.load();
        (current.manager.clone(), current.generation)
    }

    /// Sends one call, bounded by `timeout`.
    ///
    /// A call that fails without an answer (a refused or dropped
    /// connection) is sent once more within what is left of `timeout`:
    /// redis-rs hands every call the outcome of its last connection attempt
    /// until a call fails on it, and only then connects again, so after an
    /// outage the first call would fail with the outage's stale error
    /// although Redis is back. The second sending waits for that new
    /// connection. Every call of the store may be sent twice: a claim finds
    /// its own record (see `is_own_claim`), a completion its own result, and
    /// a release or renewal does nothing more the second time.
    pub(super) async fn call(
        &self,
        timeout: Duration,
        request: &Request<'_>,
    ) -> Result<Value, StoreError> {
        let started = tokio::time::Instant::now();
        let (mut connection, generation) = self.get();
        let mut answer = bounded(timeout, request.send(&mut connection)).await;
        if answer.0 == Heard::Failure {
            let left = timeout.saturating_sub(started.elapsed());
            if !left.is_zero() {
                answer = bounded(left, request.send(&mut connection)).await;
            }
        }
        self.replace_after(generation, answer)
    }

    /// The answer of a call sent on the connection of `generation`, from
    /// `bounded`: if it timed out, that connection is replaced.
    fn replace_after<T>(&self, generation: u64, answer: (Heard, T)) -> T {
        let (heard, answer) = answer;
        match heard {
            Heard::Answer if self.answered.load(Ordering::Relaxed) <= generation => {
                self.answered.fetch_max(generation + 1, Ordering::Relaxed);
            }
            Heard::Nothing => self.timed_out(generation),
            Heard::Answer | Heard::Failure => {}
        }
        answer
    }

    /// A call on the connection of `generation` got no answer in time:
    /// replace that connection, if it has answered before and no other
    /// call replaced it already.
    fn timed_out(&self, generation: u64) {
        let _replacing = self
            .replacing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.current.load();
        let has_answered = self.answered.load(Ordering::Relaxed) > generation;
        if current.generation != generation || !has_answered {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                tracing::warn!("no answer from Redis in time; reconnecting");
                self.current.store(Arc::new(Current {
                    manager,
                    generation: generation + 1,
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "no answer from Redis in time, and no new connection");
            }
        }
    }
}
