//! The Redis Cluster connection of a [`RedisStore`](super::RedisStore),
//! made on first use rather than when the store is built.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, Shared};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

/// One attempt to connect, shared by every call waiting for it.
type Attempt = Shared<BoxFuture<'static, Result<ClusterConnection, String>>>;

/// A cluster connection made on first use, and again by a later call if an
/// attempt failed: a store built while the cluster is down works once it is
/// up, as a standalone one does. Once made, redis-rs follows the cluster
/// (reconnecting to nodes, refreshing slots) by itself.
pub(super) struct LazyCluster {
    client: ClusterClient,
    /// The bound on one attempt (reading the layout from a seed node and
    /// connecting to every master).
    connect_timeout: Duration,
    connection: OnceLock<ClusterConnection>,
    attempt: Mutex<Option<Attempt>>,
}

impl LazyCluster {
    pub(super) fn new(client: ClusterClient, connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            connect_timeout,
            connection: OnceLock::new(),
            attempt: Mutex::new(None),
        })
    }

    /// The connection, once made; until then, the current attempt's outcome.
    pub(super) async fn get(self: &Arc<Self>) -> redis::RedisResult<ClusterConnection> {
        if let Some(connection) = self.connection.get() {
            return Ok(connection.clone());
        }
        let attempt = self
            .attempt
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(|| self.start())
            .clone();
        let outcome = attempt.clone().await;
        if outcome.is_err() {
            // The next call tries again (unless another already did).
            let mut current = self.attempt.lock().unwrap_or_else(PoisonError::into_inner);
            if current
                .as_ref()
                .is_some_and(|current| current.ptr_eq(&attempt))
            {
                *current = None;
            }
        }
        outcome.map_err(|detail| std::io::Error::other(detail).into())
    }

    /// One attempt, in a task of its own: a call that gives up on it (its
    /// store timeout ran out) does not cancel it, so a first connection that
    /// takes longer than one call's bound still completes for the calls
    /// after it.
    fn start(self: &Arc<Self>) -> Attempt {
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let connecting = this.client.get_async_connection();
            let connection = match tokio::time::timeout(this.connect_timeout, connecting).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(error.to_string()),
                Err(_) => {
                    return Err(format!(
                        "no connection to the cluster within {:?}",
                        this.connect_timeout
                    ));
                }
            };
            let _ = this.connection.set(connection.clone());
            Ok(connection)
        });
        async move { task.await.unwrap_or_else(|error| Err(error.to_string())) }
            .boxed()
            .shared()
    }
}
