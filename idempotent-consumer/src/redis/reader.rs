//! What a member's deliveries stream does: claims idle entries, reads new
//! ones, and keeps those it delivered from other members while it lives.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};

use super::delivery::{RedisDelivery, message};
use super::support::{array, millis, text};
use super::{COMMAND_TIMEOUT, MAX_PAUSE};
use crate::error::BrokerError;

/// What a subscriber and its deliveries share.
pub(super) struct Shared {
    pub(super) stream: Arc<str>,
    pub(super) group: String,
    pub(super) member: String,
    pub(super) dead_letter: String,
    pub(super) claim_idle: Duration,
    pub(super) count: usize,
    pub(super) block: Duration,
    pub(super) client: Client,
    /// Acknowledgements, retries, dead letters and the keeper's resets;
    /// reads and claims go on each stream's own connection.
    pub(super) commands: ConnectionManager,
    pub(super) claim: Script,
    pub(super) set_idle: Script,
    pub(super) dead_letter_script: Script,
}

impl Shared {
    /// `XGROUP CREATE <stream> <group> 0 MKSTREAM`, an existing group kept.
    pub(super) async fn declare(&self) -> Result<(), BrokerError> {
        let created = ::redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async::<Value>(&mut self.commands.clone())
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => {
                Err(BrokerError::new("declare the group", e))
            }
            _ => Ok(()),
        }
    }

    /// Sets the idle time of `ids`, if still pending with this member.
    pub(super) async fn set_idle(&self, idle: Duration, ids: &[String]) -> Result<(), RedisError> {
        let mut invocation = self.set_idle.key(&*self.stream);
        invocation
            .arg(&self.group)
            .arg(&self.member)
            .arg(millis(idle))
            .arg(ids);
        invocation
            .invoke_async::<Value>(&mut self.commands.clone())
            .await
            .map(drop)
    }
}

/// The entries a deliveries stream delivered and has not settled: kept
/// from other members by resetting their idle time, running or held
/// until a retry is due.
pub(super) type Held = Mutex<HashMap<String, Hold>>;

#[derive(Clone, Copy)]
pub(super) enum Hold {
    /// Delivered, not settled yet.
    Running,
    /// To be claimed again once `Instant` is near.
    Until(Instant),
}

pub(super) fn release(held: &Held, id: &str) {
    held.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(id);
}

/// One deliveries stream's state.
pub(super) struct Reader {
    pub(super) shared: Arc<Shared>,
    pub(super) held: Arc<Held>,
    /// Its own connection, as `XREADGROUP ... BLOCK` holds it.
    pub(super) connection: Option<MultiplexedConnection>,
    pub(super) buffer: VecDeque<RedisDelivery>,
    /// Where `XAUTOCLAIM` goes on.
    pub(super) cursor: String,
    pub(super) failures: u32,
    pub(super) pause: Option<Duration>,
    /// Dropped with the stream, which stops its keeper.
    pub(super) alive: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Reader {
    pub(super) async fn next(&mut self) -> Result<RedisDelivery, BrokerError> {
        if self.alive.is_none() {
            let (alive, dead) = tokio::sync::oneshot::channel();
            self.alive = Some(alive);
            tokio::spawn(keep(Arc::clone(&self.shared), Arc::clone(&self.held), dead));
        }
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(delivery);
            }
            if let Some(pause) = self.pause.take() {
                tokio::time::sleep(pause).await;
            }
            if let Err((action, error)) = self.fill().await {
                self.failures = self.failures.saturating_add(1);
                self.pause = Some(
                    Duration::from_millis(100)
                        .saturating_mul(1 << self.failures.min(6))
                        .min(MAX_PAUSE),
                );
                let missing =
                    error.code() == Some("NOGROUP") || error.to_string().contains("NOGROUP");
                if missing {
                    // The stream or the group was deleted under us.
                    if let Err(error) = self.shared.declare().await {
                        tracing::warn!(%error, "could not declare the stream and group again");
                    }
                }
                return Err(BrokerError::new(action, error));
            }
            self.failures = 0;
        }
    }

    /// Claims idle entries, or else reads new ones, into the buffer.
    async fn fill(&mut self) -> Result<(), (&'static str, RedisError)> {
        let shared = Arc::clone(&self.shared);
        // Taken while in use, put back once it answered.
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => {
                // The read waits `block`, and the answer may take a little.
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(Some(shared.block + COMMAND_TIMEOUT));
                shared
                    .client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| ("connect", e))?
            }
        };
        let mut claim = shared.claim.key(&*shared.stream);
        claim
            .arg(&shared.group)
            .arg(&shared.member)
            .arg(millis(shared.claim_idle))
            .arg(&self.cursor)
            .arg(shared.count);
        let claimed = claim
            .invoke_async::<Value>(&mut connection)
            .await
            .map_err(|e| ("claim", e))?;
        let mut claimed = array(claimed).into_iter();
        if let Some(cursor) = claimed.next().and_then(text) {
            self.cursor = cursor;
        }
        let entries = claimed.next().map(array).unwrap_or_default();
        let counts = claimed.next().map(array).unwrap_or_default();
        for (entry, count) in entries.into_iter().zip(counts) {
            let attempt = match count {
                Value::Int(n) => u32::try_from(n).unwrap_or(u32::MAX).max(1),
                _ => 1,
            };
            self.push(entry, attempt);
        }
        if !self.buffer.is_empty() {
            self.connection = Some(connection);
            return Ok(());
        }
        let read = ::redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&shared.group)
            .arg(&shared.member)
            .arg("COUNT")
            .arg(shared.count)
            .arg("BLOCK")
            .arg(millis(shared.block))
            .arg("STREAMS")
            .arg(&*shared.stream)
            .arg(">")
            .query_async::<Value>(&mut connection)
            .await
            .map_err(|e| ("read", e))?;
        self.connection = Some(connection);
        // One stream asked for: `[[name, entries]]`, or a map in RESP3.
        let streams: Vec<Value> = match read {
            Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
            other => array(other)
                .into_iter()
                .filter_map(|stream| array(stream).into_iter().nth(1))
                .collect(),
        };
        for entries in streams {
            for entry in array(entries) {
                self.push(entry, 1);
            }
        }
        Ok(())
    }

    /// Buffers the delivery of an `[id, [field, value, ...]]` entry.
    fn push(&mut self, entry: Value, attempt: u32) {
        let mut entry = array(entry).into_iter();
        let Some(id) = entry.next().and_then(text) else {
            return;
        };
        let fields = entry.next().map(array).unwrap_or_default();
        let message = message(Arc::clone(&self.shared.stream), fields, attempt);
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Hold::Running);
        self.buffer.push_back(RedisDelivery {
            message,
            entry: id,
            shared: Arc::clone(&self.shared),
            held: Arc::clone(&self.held),
            kept: false,
        });
    }
}

/// Keeps the entries of a deliveries stream from other members while it
/// lives: resets the idle time of those running, or held for a retry not
/// due yet, every third of the claim idle time.
async fn keep(shared: Arc<Shared>, held: Arc<Held>, mut dead: tokio::sync::oneshot::Receiver<()>) {
    let tick = (shared.claim_idle / 3).max(Duration::from_millis(10));
    while tokio::time::timeout(tick, &mut dead).await.is_err() {
        let now = Instant::now();
        let mut touch = Vec::new();
        let mut due = Vec::new();
        {
            let mut held = held.lock().unwrap_or_else(PoisonError::into_inner);
            held.retain(|id, hold| match *hold {
                Hold::Until(at)
                    if at.saturating_duration_since(now) <= shared.claim_idle + tick =>
                {
                    due.push((id.clone(), at.saturating_duration_since(now)));
                    false
                }
                _ => {
                    touch.push(id.clone());
                    true
                }
            });
        }
        let mut result = Ok(());
        if !touch.is_empty() {
            result = shared.set_idle(Duration::ZERO, &touch).await;
        }
        for (id, left) in due {
            let idle = shared.claim_idle.saturating_sub(left);
            result = result.and(shared.set_idle(idle, &[id]).await);
        }
        if let Err(error) = result {
            tracing::warn!(%error, "could not keep the deliveries in progress; other members may claim them");
        }
    }
}
