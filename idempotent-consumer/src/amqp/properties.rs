//! An AMQP delivery's properties and headers as a [`Message`], and the
//! properties a dead letter keeps from its original.

use std::sync::Arc;

use lapin::BasicProperties;
use lapin::types::AMQPValue;

use super::{DELIVERY_COUNT_HEADER, PERSISTENT};
use crate::message::Message;

/// The message a handler sees, from an AMQP delivery: the id from
/// `message_id` (none when missing or empty), the headers that have a text
/// form, and the attempt from the quorum queue's `x-delivery-count` on a
/// redelivery.
pub(super) fn message_of(
    source: Arc<str>,
    properties: &BasicProperties,
    data: Vec<u8>,
    redelivered: bool,
) -> Message {
    let mut message = Message::new(source, data);
    message.id = properties
        .message_id()
        .as_ref()
        .map(|id| id.as_str().to_owned())
        .filter(|id| !id.is_empty());
    let mut earlier = 0;
    if let Some(headers) = properties.headers() {
        for (name, value) in headers {
            if name.as_str() == DELIVERY_COUNT_HEADER {
                earlier = count(value).unwrap_or(0);
            }
            if let Some(text) = text(value) {
                message.headers.push((name.as_str().to_owned(), text));
            }
        }
    }
    // A first delivery is the first whatever its headers say: RabbitMQ
    // keeps an `x-delivery-count` the producer set (or a copy carried from
    // another queue) until it counts a redelivery itself. A broker that
    // redelivers without counting (a classic queue) still says so.
    message.attempt = if redelivered {
        earlier.saturating_add(1).max(2)
    } else {
        1
    };
    message
}

/// A header value's text: strings that are UTF-8, numbers, booleans;
/// `None` for byte arrays, tables, arrays and the rest.
fn text(value: &AMQPValue) -> Option<String> {
    if let Some(n) = integer(value) {
        return Some(n.to_string());
    }
    Some(match value {
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        AMQPValue::Float(n) => n.to_string(),
        AMQPValue::Double(n) => n.to_string(),
        _ => return None,
    })
}

/// An integer header value as a count (negative is 0, too large saturates).
fn count(value: &AMQPValue) -> Option<u32> {
    integer(value).map(|n| u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

/// An integer header value, whatever its width.
fn integer(value: &AMQPValue) -> Option<i128> {
    Some(match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        _ => return None,
    })
}

/// The properties a dead letter keeps from its original: the id, content
/// type and encoding, correlation id, timestamp, type, app id, priority;
/// persistent. Not the expiration (a dead letter is kept), the reply-to,
/// nor the user id (RabbitMQ refuses a publish whose user id is not the
/// connection's).
pub(super) fn copy(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(id) = original.message_id() {
        copy = copy.with_message_id(id.clone());
    }
    if let Some(value) = original.content_type() {
        copy = copy.with_content_type(value.clone());
    }
    if let Some(value) = original.content_encoding() {
        copy = copy.with_content_encoding(value.clone());
    }
    if let Some(value) = original.correlation_id() {
        copy = copy.with_correlation_id(value.clone());
    }
    if let Some(value) = original.timestamp() {
        copy = copy.with_timestamp(*value);
    }
    if let Some(value) = original.kind() {
        copy = copy.with_type(value.clone());
    }
    if let Some(value) = original.app_id() {
        copy = copy.with_app_id(value.clone());
    }
    if let Some(value) = original.priority() {
        copy = copy.with_priority(*value);
    }
    copy
}

#[cfg(test)]
mod tests {
    use lapin::types::{FieldTable, LongString, ShortString};

    use super::*;
    use crate::amqp::topology::long_string;

    fn properties(headers: FieldTable) -> BasicProperties {
        BasicProperties::default().with_headers(headers)
    }

    #[test]
    fn a_first_delivery_is_attempt_one_with_its_id_and_text_headers() {
        let mut headers = FieldTable::default();
        headers.insert("tenant".into(), long_string("acme"));
        headers.insert("retries".into(), AMQPValue::LongInt(3));
        headers.insert("flag".into(), AMQPValue::Boolean(true));
        let properties = properties(headers).with_message_id("order-1".into());
        let message = message_of("orders".into(), &properties, b"body".to_vec(), false);
        assert_eq!(message.id.as_deref(), Some("order-1"));
        assert_eq!(&*message.source, "orders");
        assert_eq!(&message.payload[..], b"body");
        assert_eq!(message.attempt, 1);
        assert_eq!(message.header("tenant"), Some("acme"));
        assert_eq!(message.header("retries"), Some("3"));
        assert_eq!(message.header("flag"), Some("true"));
    }

    #[test]
    fn bad_headers_are_skipped_not_fatal() {
        let mut headers = FieldTable::default();
        headers.insert(
            "binary".into(),
            AMQPValue::LongString(LongString::from(vec![0xff, 0xfe, 0x00])),
        );
        headers.insert("bytes".into(), AMQPValue::ByteArray(vec![1, 2].into()));
        headers.insert("table".into(), AMQPValue::FieldTable(FieldTable::default()));
        headers.insert("nothing".into(), AMQPValue::Void);
        headers.insert("ok".into(), long_string("yes"));
        let message = message_of("q".into(), &properties(headers), Vec::new(), false);
        assert_eq!(message.headers, [("ok".to_owned(), "yes".to_owned())]);
        assert_eq!(message.id, None, "no message_id");
    }

    #[test]
    fn an_empty_message_id_is_no_id() {
        let properties = BasicProperties::default().with_message_id("".into());
        assert_eq!(
            message_of("q".into(), &properties, Vec::new(), false).id,
            None
        );
    }

    #[test]
    fn the_attempt_is_the_delivery_count_plus_one() {
        for (value, redelivered, attempt) in [
            (AMQPValue::LongLongInt(2), true, 3),
            (AMQPValue::LongInt(-5), true, 2),
            (AMQPValue::LongLongInt(i64::MAX), true, u32::MAX),
            (long_string("not a number"), true, 2),
            (AMQPValue::LongLongInt(5), false, 1),
        ] {
            let mut headers = FieldTable::default();
            headers.insert(DELIVERY_COUNT_HEADER.into(), value.clone());
            let message = message_of("q".into(), &properties(headers), Vec::new(), redelivered);
            assert_eq!(message.attempt, attempt, "{value:?}");
        }
        let redelivered = message_of("q".into(), &BasicProperties::default(), Vec::new(), true);
        assert_eq!(redelivered.attempt, 2, "redelivered, uncounted");
    }

    #[test]
    fn a_dead_letter_keeps_the_id_and_drops_what_the_broker_would_refuse() {
        let original = BasicProperties::default()
            .with_message_id("order-1".into())
            .with_user_id("someone-else".into())
            .with_expiration("1000".into())
            .with_content_type("application/json".into());
        let copy = copy(&original);
        assert_eq!(
            copy.message_id().as_ref().map(ShortString::as_str),
            Some("order-1")
        );
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.delivery_mode(), &Some(PERSISTENT));
        assert!(copy.content_type().is_some());
    }
}
