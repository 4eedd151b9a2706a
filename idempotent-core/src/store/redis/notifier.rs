//! Completion notices: callers waiting on an in-progress key are woken by a
//! pub/sub notice when it completes or is released (see the module docs of
//! [`redis`](super)).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::StreamExt as _;
use redis::Value;
use tokio::sync::Notify;

/// Callers waiting on in-progress keys, by Redis key: the key's `Notify` and
/// how many callers wait on it.
#[derive(Default)]
pub(super) struct Waiters(Mutex<HashMap<Vec<u8>, Waiting>>);

type Waiting = (Arc<Notify>, usize);

/// A caller registered as waiting on a key, until dropped.
pub(super) struct Registered<'a> {
    waiters: &'a Waiters,
    key: &'a [u8],
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.waiters.unregister(self.key);
    }
}

impl Waiters {
    /// Registers a waiter on `key`: the notice that wakes it, and the
    /// registration, which ends when it is dropped (so a cancelled wait
    /// leaves nothing behind).
    pub(super) fn register<'a>(
        &'a self,
        key: &'a [u8],
    ) -> (tokio::sync::futures::OwnedNotified, Registered<'a>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = map
            .entry(key.to_vec())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        entry.1 += 1;
        let notified = Arc::clone(&entry.0).notified_owned();
        (notified, Registered { waiters: self, key })
    }

    fn unregister(&self, key: &[u8]) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(key) {
            entry.1 -= 1;
            if entry.1 == 0 {
                map.remove(key);
            }
        }
    }

    fn wake(&self, key: &[u8]) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((notify, _)) = map.get(key) {
            notify.notify_waiters();
        }
    }

    /// Wakes every waiter, to look again: after a gap in the subscription,
    /// whose notices are lost.
    fn wake_all(&self) {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (notify, _) in map.values() {
            notify.notify_waiters();
        }
    }
}

/// Listens for completion notices and wakes the matching waiters, for the
/// life of the store; reconnects after a lost connection.
pub(super) async fn notify_waiters(
    clients: Vec<redis::Client>,
    channel: String,
    waiters: Arc<Waiters>,
    timeout: Duration,
) {
    // After a failure or a lost connection, the next client (the next seed
    // node of a cluster) is tried.
    for client in clients.iter().cycle() {
        // Connecting and subscribing are bounded together: a node that
        // accepts the connection and then answers nothing would otherwise
        // hold the notifier on it for good.
        let subscribed = tokio::time::timeout(timeout, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        });
        let subscribed = subscribed.await.unwrap_or_else(|_| {
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "pub/sub subscription timed out",
            )))
        });
        match subscribed {
            Ok(pubsub) => listen(pubsub, &waiters, timeout).await,
            Err(error) => tracing::debug!(%error, "completion notices unavailable; waiters poll"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Wakes the waiters named by the notices on `pubsub` until its connection
/// ends or goes silent. A connection that goes silent without a reset (its
/// host vanished) ends nothing, and would leave every waiter to its
/// re-checks for good: a `PING` every five timeouts (at least every
/// second), bounded by the timeout, tells.
async fn listen(pubsub: redis::aio::PubSub, waiters: &Waiters, timeout: Duration) {
    // Notices published before this subscription are lost: whoever waited
    // through the gap looks again now.
    waiters.wake_all();
    let (mut sink, mut messages) = pubsub.split();
    let mut health = tokio::time::interval(timeout.saturating_mul(5).max(Duration::from_secs(1)));
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    health.tick().await;
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => waiters.wake(message.get_payload_bytes()),
                None => return,
            },
            _ = health.tick() => {
                let ping = tokio::time::timeout(timeout, sink.ping::<Value>()).await;
                if !matches!(ping, Ok(Ok(_))) {
                    tracing::debug!("completion notices went silent; subscribing again");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(waiters: &Waiters, key: &[u8]) -> usize {
        let map = waiters.0.lock().unwrap();
        map.get(key).map_or(0, |(_, count)| *count)
    }

    #[test]
    fn a_waiter_is_unregistered_when_its_registration_drops() {
        let waiters = Waiters::default();
        let first = waiters.register(b"k");
        let second = waiters.register(b"k");
        assert_eq!(waiting(&waiters, b"k"), 2);
        drop(first);
        assert_eq!(waiting(&waiters, b"k"), 1);
        // A cancelled `wait` drops its registration like this.
        drop(second);
        assert!(waiters.0.lock().unwrap().is_empty(), "nothing left behind");
    }
}
