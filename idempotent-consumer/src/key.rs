//! Where a message's idempotency key comes from.

use std::fmt;
use std::sync::Arc;

use crate::message::Message;

/// How a [`Consumer`](crate::Consumer) finds a message's idempotency key.
/// The key is scoped by the message's [`source`](Message::source), so the
/// same id on two streams is two keys.
///
/// A message without a key is dead-lettered, never run: without a key a
/// redelivery could not be told from a new message.
///
/// ```
/// use idempotent_consumer::{KeySource, Message};
///
/// // The producer's id (the default).
/// let by_id = KeySource::MessageId;
/// // A header of the producer's.
/// let by_header = KeySource::header("Order-Id");
/// // A function of the payload, for producers that set no id.
/// let by_payload = KeySource::derive(|message: &Message| {
///     let order: serde_json::Value = serde_json::from_slice(&message.payload).ok()?;
///     Some(order["order_id"].as_str()?.to_owned())
/// });
///
/// let message = Message::new("orders", r#"{"order_id":"o-7"}"#).with_header("Order-Id", "o-7");
/// assert_eq!(by_id.key_of(&message), None);
/// assert_eq!(by_header.key_of(&message).as_deref(), Some("o-7"));
/// assert_eq!(by_payload.key_of(&message).as_deref(), Some("o-7"));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum KeySource {
    /// The producer's message id ([`Message::id`]).
    #[default]
    MessageId,
    /// The value of a header, compared without case.
    Header(String),
    /// A function of the message (its payload, its headers).
    Derive(Derive),
}

/// A function that finds a message's key ([`KeySource::Derive`]).
pub type Derive = Arc<dyn Fn(&Message) -> Option<String> + Send + Sync>;

impl KeySource {
    /// The value of the header `name`.
    pub fn header(name: impl Into<String>) -> Self {
        Self::Header(name.into())
    }

    /// A function of the message; `None` means the message has no key.
    pub fn derive(derive: impl Fn(&Message) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::Derive(Arc::new(derive))
    }

    /// The key of `message`, if it has one.
    pub fn key_of(&self, message: &Message) -> Option<String> {
        match self {
            Self::MessageId => message.id.clone(),
            Self::Header(name) => message.header(name).map(str::to_owned),
            Self::Derive(derive) => derive(message),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MessageId => f.write_str("MessageId"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Derive(_) => f.write_str("Derive(..)"),
        }
    }
}
