//! A message as a handler sees it, whichever broker delivered it.

use std::sync::Arc;

use bytes::Bytes;

/// One delivery of a message: its payload, headers and id, where it came
/// from, and how many times the broker has delivered it.
///
/// ```
/// use idempotent_consumer::Message;
///
/// let message = Message::new("orders", "{\"order\":42}")
///     .with_id("order-42")
///     .with_header("Tenant", "acme");
/// assert_eq!(message.header("tenant"), Some("acme"));
/// assert_eq!(message.attempt, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The stream, queue or Redis stream it came from: the scope of its key,
    /// so one id on two streams is two messages.
    pub source: Arc<str>,
    /// The id the producer gave it: JetStream's `Nats-Msg-Id` header, the
    /// AMQP `message_id` property, or a Redis stream entry's `message_id`
    /// field. `None` when the producer set none.
    pub id: Option<String>,
    /// The body.
    pub payload: Bytes,
    /// Header names and values (NATS headers, AMQP string headers, a Redis
    /// entry's other fields), in the order the broker gave them.
    pub headers: Vec<(String, String)>,
    /// Which delivery this is, as the broker counts: 1 the first time.
    pub attempt: u32,
}

impl Message {
    /// A first delivery of `payload` from `source`, without id or headers.
    pub fn new(source: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Self {
        Self {
            source: source.into(),
            id: None,
            payload: payload.into(),
            headers: Vec::new(),
            attempt: 1,
        }
    }

    /// With the producer's message id.
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// With one more header.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// As the broker's `attempt`-th delivery.
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The first value of the header `name`, compared without case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}
