//! Publishing with a stable message id, deduplicated within a window.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::Script;
use ::redis::aio::ConnectionManager;
use bytes::Bytes;

use super::DEFAULT_DEDUP_WINDOW;
use super::scripts::PUBLISH;
use super::support::{beside, connect, millis};
use crate::error::BrokerError;

/// Settings of a [`Publisher`]; see [`Publisher::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until connected"]
pub struct PublisherBuilder {
    url: String,
    stream: String,
    window: Duration,
}

impl PublisherBuilder {
    /// How long an id is remembered, so that publishing it again adds
    /// nothing; [`DEFAULT_DEDUP_WINDOW`] by default, at least 1 ms.
    pub fn dedup_window(mut self, window: Duration) -> Self {
        self.window = window.max(Duration::from_millis(1));
        self
    }

    /// Connects.
    pub async fn connect(self) -> Result<Publisher, BrokerError> {
        let (_, commands) = connect(&self.url).await?;
        Ok(Publisher {
            inner: Arc::new(PublisherInner {
                stream: self.stream,
                window: self.window,
                commands,
                script: Script::new(PUBLISH),
            }),
        })
    }
}

/// Adds entries to a Redis stream with a stable message id: an id
/// published again within the deduplication window adds nothing. See the
/// [module docs](super).
///
/// ```no_run
/// use std::time::Duration;
/// use idempotent_consumer::redis::Publisher;
///
/// # async fn run() -> Result<(), idempotent_consumer::BrokerError> {
/// let publisher = Publisher::builder("redis://127.0.0.1:6379", "orders")
///     .dedup_window(Duration::from_secs(600))
///     .connect()
///     .await?;
/// let published = publisher.publish("order-42", "{\"order\":42}").await?;
/// println!("entry {} (duplicate: {})", published.entry_id, published.duplicate);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    stream: String,
    window: Duration,
    commands: ConnectionManager,
    script: Script,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("stream", &self.inner.stream)
            .field("dedup_window", &self.inner.window)
            .finish_non_exhaustive()
    }
}

/// What a [`Publisher::publish`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// The entry's id in the stream: the new entry's, or for a duplicate,
    /// the entry its id was first published as.
    pub entry_id: String,
    /// The id was published within the window: nothing was added.
    pub duplicate: bool,
}

impl Publisher {
    /// Settings for a publisher to the stream `stream` at `url`.
    pub fn builder(url: impl Into<String>, stream: impl Into<String>) -> PublisherBuilder {
        PublisherBuilder {
            url: url.into(),
            stream: stream.into(),
            window: DEFAULT_DEDUP_WINDOW,
        }
    }

    /// A publisher to `stream` with the default window.
    pub async fn connect(
        url: impl Into<String>,
        stream: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        Self::builder(url, stream).connect().await
    }

    /// Adds an entry with the fields `message_id` = `id` and `payload`,
    /// unless `id` was published within the window: then it adds nothing
    /// and says so ([`Published::duplicate`]). The id and the entry are
    /// checked and added in one script; the remembered id is a key beside
    /// the stream, in its hash slot.
    pub async fn publish(
        &self,
        id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        let inner = &*self.inner;
        let payload = payload.into();
        let mut script = inner.script.key(&inner.stream);
        script
            .key(beside(&inner.stream, &format!("dedup:{id}")))
            .arg(millis(inner.window))
            .arg(id)
            .arg(&payload[..]);
        let (entry_id, duplicate): (String, bool) = script
            .invoke_async(&mut inner.commands.clone())
            .await
            .map_err(|e| BrokerError::new("publish", e))?;
        Ok(Published {
            entry_id,
            duplicate,
        })
    }
}
