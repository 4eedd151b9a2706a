//! Publishing with a stable message id.

use std::fmt;
use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use idempotent_core::IdempotencyKey;

use super::{ID, declare_stream, jetstream_at, store};
use crate::error::BrokerError;

/// Publishes to a JetStream subject with a stable message id, so a retried
/// publish is not a second message: JetStream drops a publish whose
/// `Nats-Msg-Id` the stream stored within its duplicate window.
///
/// Cheap to clone; the clones share the connection.
///
/// ```no_run
/// use idempotent_consumer::nats::Publisher;
///
/// # #[tokio::main] async fn main() -> Result<(), idempotent_consumer::BrokerError> {
/// let publisher = Publisher::connect("nats://127.0.0.1:4222", "orders").await?;
/// for _ in 0..3 {
///     // A producer retrying after a timeout: one message in the stream.
///     let published = publisher.publish("order-42", "order 42").await?;
///     println!("sequence {}, duplicate: {}", published.sequence, published.duplicate);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    jetstream: jetstream::Context,
    subject: Arc<str>,
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// What JetStream said of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// `true`: the stream had stored a message with this id within its
    /// duplicate window, and did not store this one.
    pub duplicate: bool,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in the stream (the earlier message's, for a duplicate).
    pub sequence: u64,
}

impl Publisher {
    /// Connects to `url` to publish to `subject`, and declares the stream
    /// capturing it (named after it, JetStream's default duplicate window)
    /// if none does yet.
    pub async fn connect(
        url: impl Into<String>,
        subject: impl Into<String>,
    ) -> Result<Self, BrokerError> {
        let subject = subject.into();
        let jetstream = jetstream_at(&url.into(), async_nats::ConnectOptions::new()).await?;
        declare_stream(&jetstream, &subject, None).await?;
        Ok(Self {
            jetstream,
            subject: subject.into(),
        })
    }

    /// The subject published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Publishes `payload` with the message id `id` (the `Nats-Msg-Id`
    /// header, the consumers' key) and waits for the stream to store it.
    /// Publish again with the same id after an error or a timeout: within
    /// the stream's duplicate window JetStream stores it once, and says
    /// [`duplicate`](Published::duplicate). `id` must be a valid
    /// idempotency key (visible ASCII, 1 to 255 bytes).
    pub async fn publish(
        &self,
        id: &str,
        payload: impl Into<Bytes>,
    ) -> Result<Published, BrokerError> {
        let id = IdempotencyKey::parse(id).map_err(|e| BrokerError::new("publish", e))?;
        let mut headers = HeaderMap::new();
        headers.insert(ID, id.as_str());
        let ack = store(
            &self.jetstream,
            "publish",
            &self.subject,
            headers,
            payload.into(),
        )
        .await?;
        Ok(Published {
            duplicate: ack.duplicate,
            stream: ack.stream,
            sequence: ack.sequence,
        })
    }
}
