//! Configuring a [`RedisStore`].

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use super::cluster::LazyCluster;
use super::connection::Connection;
use super::notifier::{Waiters, notify_waiters};
use super::scripts::Scripts;
use super::standalone::Standalone;
use super::{DEFAULT_TIMEOUT, DEFAULT_WAIT_RECHECK, Inner, RedisStore};
use crate::store::StoreError;
use crate::store::lease_tokens::LeaseTokens;

/// Builds a [`RedisStore`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct RedisStoreBuilder {
    url: Option<String>,
    cluster: Vec<String>,
    /// Whether a cluster was asked for (its seed list may still be empty).
    cluster_url: bool,
    key_prefix: String,
    timeout: Option<Duration>,
    wait_recheck: Option<Duration>,
    #[cfg(feature = "redis-tls")]
    tls_root: Option<Vec<u8>>,
}

impl RedisStoreBuilder {
    /// A standalone server: `redis://host:port/db`, or `rediss://host:port/db`
    /// over TLS (with the `redis-tls` feature). A
    /// `redis+cluster://host1:port1,host2:port2` URL means a cluster with
    /// those seed nodes.
    pub fn url(mut self, url: impl Into<String>) -> Self {
        let url = url.into();
        match url.strip_prefix("redis+cluster://") {
            Some(seeds) => {
                self.cluster_url = true;
                self.cluster = seeds
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| format!("redis://{s}"))
                    .collect();
                self.url = None;
            }
            None => {
                self.cluster_url = false;
                self.url = Some(url);
            }
        }
        self
    }

    /// A Redis Cluster, reached through these seed nodes (`redis://host:port`).
    pub fn cluster_nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster = nodes.into_iter().map(Into::into).collect();
        self.cluster_url = true;
        self.url = None;
        self
    }

    /// Prepended to every Redis key (default none). A hash tag in it
    /// (`{shop}:`) puts every record on one cluster slot; nothing after the
    /// prefix can (see the module docs). Keep its braces balanced: an open
    /// `{` alone (`app{`) also makes a tag, of the characters up to the `{}`
    /// that follows, and pins every record to one slot. A prefix whose first
    /// braces are empty (`a{}b:`) makes a cluster hash each key whole: it
    /// cannot put a call's journaled steps in its record's slot, and
    /// recording a step is then [`StoreError::Unsupported`] on a cluster.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// The bound on every call, including (re)connecting (default 1 s). A
    /// cluster's first connection runs in the background with three times
    /// this, so a slow one still completes for the calls after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a caller waiting on a duplicate in progress (`wait = ...`)
    /// sleeps before it re-checks the key if no completion notice woke it
    /// (default 200 ms, at least 1 ms). Notices normally wake waiters at
    /// once; this bounds what a missed one costs, at the price of one Redis
    /// call per waiter per interval.
    pub fn wait_recheck(mut self, every: Duration) -> Self {
        self.wait_recheck = Some(every.max(Duration::from_millis(1)));
        self
    }

    /// Trusts these PEM root certificates for `rediss://` (a private CA),
    /// instead of the system's roots.
    #[cfg(feature = "redis-tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-tls")))]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root = Some(pem.into());
        self
    }

    /// A client for `url`, over TLS with the configured roots if any.
    fn client(&self, url: &str) -> Result<redis::Client, StoreError> {
        if url.starts_with("rediss://") && !cfg!(feature = "redis-tls") {
            return Err(StoreError::unavailable(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a `rediss://` URL needs the `redis-tls` feature of idempotent-core",
            )));
        }
        #[cfg(feature = "redis-tls")]
        if let Some(root) = &self.tls_root {
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root.clone()),
            };
            return redis::Client::build_with_tls(url, certificates)
                .map_err(StoreError::unavailable);
        }
        redis::Client::open(url).map_err(StoreError::unavailable)
    }

    /// Builds the store. It connects lazily, standalone or cluster, so it
    /// can be built while Redis is down: calls fail closed until it is up,
    /// then work without a restart. (A cluster's topology is read from a
    /// seed node on the first call.)
    ///
    /// Must be called within a tokio runtime.
    pub async fn build(self) -> Result<RedisStore, StoreError> {
        if self.cluster_url && self.cluster.is_empty() {
            // Never fall back to the default standalone server instead.
            return Err(StoreError::unavailable(
                "a cluster needs at least one seed node (`redis+cluster://host:port,...`)",
            ));
        }
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        let (connection, pubsub_clients) = if self.cluster.is_empty() {
            let url = self.url.as_deref().unwrap_or("redis://127.0.0.1:6379");
            let client = self.client(url)?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout))
                .set_number_of_retries(1)
                .set_max_delay(timeout);
            let standalone =
                Standalone::new(client.clone(), config).map_err(StoreError::unavailable)?;
            (Connection::Single(Box::new(standalone)), vec![client])
        } else {
            let builder =
                redis::cluster::ClusterClientBuilder::new(self.cluster.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .retries(2);
            #[cfg(feature = "redis-tls")]
            let builder = match &self.tls_root {
                Some(root) => builder.certs(redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root.clone()),
                }),
                None => builder,
            };
            let client = builder.build().map_err(StoreError::unavailable)?;
            // The first connection reads the layout and reaches every
            // master: it gets three times one call's bound, as it did when
            // `build` made it.
            let lazy = LazyCluster::new(client, timeout.saturating_mul(3));
            // Cluster pub/sub reaches every node: any seed that answers
            // will do, tried in turn.
            let seeds = self.cluster.iter().map(|seed| self.client(seed));
            (Connection::Cluster(lazy), seeds.collect::<Result<_, _>>()?)
        };
        let channel = format!("{}idempotent:done", self.key_prefix);
        let waiters = Arc::new(Waiters::default());
        let notifier = tokio::spawn(notify_waiters(
            pubsub_clients,
            channel.clone(),
            Arc::clone(&waiters),
            timeout,
        ));
        Ok(RedisStore {
            inner: Arc::new(Inner {
                connection,
                key_prefix: self.key_prefix.into_boxed_str(),
                channel: channel.into_boxed_str(),
                timeout,
                wait_recheck: self.wait_recheck.unwrap_or(DEFAULT_WAIT_RECHECK),
                tokens: LeaseTokens::new(),
                waiters,
                notifier,
                scripts: Scripts::new(),
            }),
        })
    }
}
