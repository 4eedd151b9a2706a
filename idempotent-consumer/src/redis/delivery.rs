//! One delivered entry, the message it is, and how it is settled.

use std::fmt;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use ::redis::Value;
use bytes::Bytes;

use super::reader::{Held, Hold, Shared, release};
use super::support::bytes;
use super::{ID_FIELD, PAYLOAD_FIELD};
use crate::dead_letter::DeadLetter;
use crate::delivery::Delivery;
use crate::error::BrokerError;
use crate::message::Message;

/// An entry delivered to a [`Subscriber`](super::Subscriber), to settle once.
///
/// - [`ack`](Delivery::ack): `XACK`.
/// - [`retry`](Delivery::retry): the entry stays pending (no `XACK`), and
///   its idle time is set so that it is claimed again after about the
///   delay, which counts a delivery. A delay longer than the claim idle
///   time is kept by the member until the rest is shorter; if the member
///   crashes meanwhile, the entry comes back after the claim idle time.
/// - [`dead_letter`](Delivery::dead_letter): a copy of the entry's fields
///   with `Idempotent-Dead-Letter` and `Idempotent-Dead-Letter-Detail` is
///   added to the dead-letter stream and the entry acknowledged, in one
///   script.
///
/// Dropped unsettled, the entry is claimed after the claim idle time.
/// [`in_progress`](Delivery::in_progress) does nothing: the member keeps
/// its unsettled entries from other members already.
pub struct RedisDelivery {
    pub(super) message: Message,
    pub(super) entry: String,
    pub(super) shared: Arc<Shared>,
    pub(super) held: Arc<Held>,
    /// Held for a retry: not to be released when dropped.
    pub(super) kept: bool,
}

impl fmt::Debug for RedisDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDelivery")
            .field("entry", &self.entry)
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

impl RedisDelivery {
    /// The entry's id in the stream (`1700000000000-0`).
    pub fn entry_id(&self) -> &str {
        &self.entry
    }
}

impl Drop for RedisDelivery {
    fn drop(&mut self) {
        if !self.kept {
            release(&self.held, &self.entry);
        }
    }
}

impl Delivery for RedisDelivery {
    fn message(&self) -> &Message {
        &self.message
    }

    async fn ack(self) -> Result<(), BrokerError> {
        ::redis::cmd("XACK")
            .arg(&*self.shared.stream)
            .arg(&self.shared.group)
            .arg(&self.entry)
            .query_async::<Value>(&mut self.shared.commands.clone())
            .await
            .map(drop)
            .map_err(|e| BrokerError::new("ack", e))
    }

    async fn retry(mut self, delay: Duration) -> Result<(), BrokerError> {
        if delay > self.shared.claim_idle {
            self.kept = true;
            self.held
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(self.entry.clone(), Hold::Until(Instant::now() + delay));
            return Ok(());
        }
        release(&self.held, &self.entry);
        let idle = self.shared.claim_idle.saturating_sub(delay);
        self.shared
            .set_idle(idle, std::slice::from_ref(&self.entry))
            .await
            .map_err(|e| BrokerError::new("retry", e))
    }

    async fn dead_letter(self, letter: &DeadLetter) -> Result<(), BrokerError> {
        release(&self.held, &self.entry);
        let shared = &self.shared;
        let mut script = shared.dead_letter_script.key(&*shared.stream);
        script
            .key(&shared.dead_letter)
            .arg(&shared.group)
            .arg(&self.entry)
            .arg(DeadLetter::REASON_HEADER)
            .arg(letter.reason())
            .arg(DeadLetter::DETAIL_HEADER)
            .arg(letter.to_string());
        // The fields to copy if the entry is gone from the stream.
        if let Some(id) = &self.message.id {
            script.arg(ID_FIELD).arg(id);
        }
        script.arg(PAYLOAD_FIELD).arg(&self.message.payload[..]);
        for (name, value) in &self.message.headers {
            script.arg(name).arg(value);
        }
        script
            .invoke_async::<Value>(&mut shared.commands.clone())
            .await
            .map(drop)
            .map_err(|e| BrokerError::new("dead-letter", e))
    }
}

/// The message of an entry's `[field, value, ...]`: the first `message_id`
/// is the id and the first `payload` the payload (empty if missing), the
/// other fields the headers; text that is not UTF-8 is taken lossily (an
/// id that was not is then an invalid key, dead-lettered).
pub(super) fn message(source: Arc<str>, fields: Vec<Value>, attempt: u32) -> Message {
    let mut message = Message::new(source, Bytes::new()).with_attempt(attempt);
    let mut payload = None;
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let name = String::from_utf8_lossy(&bytes(name)).into_owned();
        let value = bytes(value);
        if name == ID_FIELD && message.id.is_none() {
            message.id = Some(String::from_utf8_lossy(&value).into_owned());
        } else if name == PAYLOAD_FIELD && payload.is_none() {
            payload = Some(Bytes::from(value));
        } else {
            message
                .headers
                .push((name, String::from_utf8_lossy(&value).into_owned()));
        }
    }
    message.payload = payload.unwrap_or_default();
    message
}

#[cfg(test)]
mod tests {
    use ::redis::Value;

    use super::message;

    fn entry(fields: &[&[u8]]) -> Vec<Value> {
        fields
            .iter()
            .map(|f| Value::BulkString(f.to_vec()))
            .collect()
    }

    #[test]
    fn an_entry_is_a_message() {
        let fields = entry(&[
            b"tenant",
            b"acme",
            b"payload",
            b"{}",
            b"message_id",
            b"order-1",
        ]);
        let message = message("orders".into(), fields, 2);
        assert_eq!(message.id.as_deref(), Some("order-1"));
        assert_eq!(&message.payload[..], b"{}");
        assert_eq!(message.headers, [("tenant".to_owned(), "acme".to_owned())]);
        assert_eq!(message.attempt, 2);
    }

    #[test]
    fn bad_entries_are_messages_too() {
        let fields = entry(&[b"\xff", b"\xfe", b"dangling"]);
        let message = message("orders".into(), fields, 1);
        assert_eq!(message.id, None);
        assert!(message.payload.is_empty());
        assert_eq!(
            message.headers,
            [("\u{fffd}".to_owned(), "\u{fffd}".to_owned())]
        );
        let message = super::message("orders".into(), entry(&[b"message_id", b"\xff"]), 1);
        assert_eq!(message.id.as_deref(), Some("\u{fffd}"));
    }
}
