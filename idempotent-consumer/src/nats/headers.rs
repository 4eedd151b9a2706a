//! NATS headers to a [`Message`]'s and back, for a dead letter.

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;

use super::{ID, MAX_DETAIL};
use crate::dead_letter::DeadLetter;
use crate::message::Message;

/// A delivered message as a handler sees it. Header names come sorted (a
/// NATS header map keeps no order), each name's values in their order.
pub(super) fn message_of(source: Arc<str>, headers: Option<&HeaderMap>, payload: Bytes) -> Message {
    let mut message = Message::new(source, payload);
    if let Some(headers) = headers {
        let mut names: Vec<_> = headers.iter().collect();
        names.sort_by(|a, b| AsRef::<str>::as_ref(a.0).cmp(b.0.as_ref()));
        for (name, values) in names {
            let name: &str = name.as_ref();
            for value in values {
                message = message.with_header(name, value.as_str());
            }
        }
    }
    if let Some(id) = message.header(ID).filter(|id| !id.is_empty()) {
        let id = id.to_owned();
        message = message.with_id(id);
    }
    message
}

/// A dead letter's headers: the original's (its `Nats-Msg-Id` too, but
/// none of JetStream's other publish directives: an expected stream or
/// sequence would refuse it, a rollup purge the dead-letter stream), the
/// reason and its text.
pub(super) fn dead_letter_headers(
    original: Option<&HeaderMap>,
    reason: &str,
    mut detail: String,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, values) in original.into_iter().flat_map(HeaderMap::iter) {
        let text: &str = name.as_ref();
        let directive = text.len() >= 5 && text[..5].eq_ignore_ascii_case("nats-");
        if (directive && !text.eq_ignore_ascii_case(ID))
            || text.eq_ignore_ascii_case(DeadLetter::REASON_HEADER)
            || text.eq_ignore_ascii_case(DeadLetter::DETAIL_HEADER)
        {
            continue;
        }
        for value in values {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(DeadLetter::REASON_HEADER, reason);
    if detail.len() > MAX_DETAIL {
        let mut end = MAX_DETAIL;
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
    }
    headers.insert(DeadLetter::DETAIL_HEADER, detail);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_takes_its_id_and_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("Tenant", "acme");
        headers.insert(ID, "order-7");
        let message = message_of("orders".into(), Some(&headers), Bytes::from_static(b"7"));
        assert_eq!(message.id.as_deref(), Some("order-7"));
        assert_eq!(message.header("tenant"), Some("acme"));
        assert_eq!(&*message.source, "orders");
        let bare = message_of("orders".into(), None, Bytes::new());
        assert_eq!((bare.id, bare.headers.len()), (None, 0));
    }

    #[test]
    fn dead_letters_keep_the_original_headers_but_no_directives() {
        let mut original = HeaderMap::new();
        original.insert(ID, "order-7");
        original.insert("Nats-Expected-Stream", "elsewhere");
        original.insert("Nats-Rollup", "all");
        original.insert(DeadLetter::REASON_HEADER, "forged");
        original.insert("Tenant", "acme");
        let letter = DeadLetter::Failed {
            key: "order-7".into(),
            attempts: 3,
            error: format!("line one\r\nline two {}", "é".repeat(MAX_DETAIL)),
        };
        let headers = dead_letter_headers(Some(&original), letter.reason(), letter.to_string());
        let message = message_of("dead".into(), Some(&headers), Bytes::new());
        assert_eq!(message.id.as_deref(), Some("order-7"));
        assert_eq!(message.header("Tenant"), Some("acme"));
        assert_eq!(message.header(DeadLetter::REASON_HEADER), Some("failed"));
        assert_eq!(message.header("Nats-Expected-Stream"), None);
        assert_eq!(message.header("Nats-Rollup"), None);
        let detail = message.header(DeadLetter::DETAIL_HEADER).unwrap();
        assert!(detail.len() <= MAX_DETAIL && !detail.contains(['\r', '\n']));
    }
}
