//! A consumer's settings, and the builder that takes them.

use std::sync::Arc;
use std::time::Duration;

use idempotent_core::{Idempotency, Operation};

use crate::consumer::{Consumer, Settings};
use crate::key::KeySource;

/// Deliveries of one message that may fail before it is dead-lettered.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// The delay before a failed message comes back the first time; it doubles
/// with each delivery, up to [`DEFAULT_MAX_RETRY_DELAY`].
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);
/// The longest delay before a failed message comes back.
pub const DEFAULT_MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
/// How long a duplicate waits for its twin running elsewhere before it is
/// handed back to the broker.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Settings of a [`Consumer`]; see [`Consumer::builder`].
#[derive(Debug)]
#[must_use = "a builder does nothing until built"]
pub struct ConsumerBuilder {
    runtime: Idempotency,
    name: &'static str,
    key: KeySource,
    max_attempts: u32,
    retry_delay: Duration,
    max_retry_delay: Duration,
    wait: Duration,
    lease: Option<Duration>,
    ttl: Option<Duration>,
    deduplicate: bool,
    concurrency: usize,
}

impl ConsumerBuilder {
    /// Where the key comes from; [`KeySource::MessageId`] by default.
    pub fn key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Deliveries of one message that may fail before it is dead-lettered
    /// (at least 1); [`DEFAULT_MAX_ATTEMPTS`] by default. The broker counts
    /// the deliveries, so a delivery handed back because its duplicate was
    /// running elsewhere counts too.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// The delay before a failed message comes back the first time, and the
    /// longest; it doubles with each delivery in between.
    pub fn retry_delay(mut self, first: Duration, max: Duration) -> Self {
        self.retry_delay = first;
        self.max_retry_delay = max.max(first);
        self
    }

    /// How long a duplicate waits for its twin running elsewhere before it
    /// is handed back to the broker; [`DEFAULT_WAIT`] by default.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How long a running handler holds its key (renewed while it runs);
    /// the runtime's lease by default.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// How long a result is kept, so a duplicate within it is dropped; the
    /// runtime's TTL by default. Keep it longer than the longest a
    /// duplicate can arrive after its twin (the producer's retries, the
    /// broker's redelivery).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// `false` runs the handler on every delivery, as a plain consumer does
    /// (to show the duplicates it lets through); `true` by default.
    pub fn deduplicate(mut self, deduplicate: bool) -> Self {
        self.deduplicate = deduplicate;
        self
    }

    /// Deliveries handled at once by [`Consumer::consume`] (at least 1); 16
    /// by default.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The consumer.
    pub fn build(self) -> Consumer {
        let mut operation = Operation::new(self.name).wait(self.wait);
        if let Some(lease) = self.lease {
            operation = operation.lease(lease);
        }
        if let Some(ttl) = self.ttl {
            operation = operation.ttl(ttl);
        }
        Consumer {
            inner: Arc::new(Settings {
                runtime: self.runtime,
                operation,
                key: self.key,
                max_attempts: self.max_attempts,
                retry_delay: self.retry_delay,
                max_retry_delay: self.max_retry_delay,
                deduplicate: self.deduplicate,
                concurrency: self.concurrency,
            }),
        }
    }
}

impl Consumer {
    /// A consumer named `name` on `runtime`. The name is the operation of
    /// every key (`<namespace>/<stream>/<name>/<key>`): two consumers of one
    /// stream with different names each run every message once.
    pub fn builder(runtime: Idempotency, name: &'static str) -> ConsumerBuilder {
        ConsumerBuilder {
            runtime,
            name,
            key: KeySource::MessageId,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_delay: DEFAULT_RETRY_DELAY,
            max_retry_delay: DEFAULT_MAX_RETRY_DELAY,
            wait: DEFAULT_WAIT,
            lease: None,
            ttl: None,
            deduplicate: true,
            concurrency: 16,
        }
    }
}
