//! Messages async-nats cannot read: a header that is not UTF-8, or a
//! malformed header name, fails the connection they arrive on, before any
//! delivery exists. Each time a member's connection is back, the messages
//! its group has not settled (from the acknowledgement floor on) are read
//! from the stream's stored copy, through JetStream's JSON API, which
//! breaks nothing; one async-nats could not read is published to the
//! dead-letter subject (its headers read leniently, reason `unreadable`)
//! and terminated for the group, which then goes on.

use std::collections::HashSet;
use std::sync::{Arc, Weak};

use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::RawMessage;
use async_nats::{HeaderMap, HeaderName};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::headers::dead_letter_headers;
use super::subscriber::Joined;
use super::{ID, dead_letter_to};
use crate::error::BrokerError;

/// Unsettled messages looked at, at the least, from the acknowledgement
/// floor on (the member's prefetch if more).
const SPAN: usize = 64;

/// The reason of an unreadable message's dead letter.
pub(super) const UNREADABLE: &str = "unreadable";

/// Sweeps `joined`'s group each time `connected` changes (the connection
/// is back), for as long as the subscriber or one of its streams lives.
pub(super) fn watch(joined: Weak<Joined>, mut connected: watch::Receiver<u64>) {
    tokio::spawn(async move {
        let mut swept = HashSet::new();
        while connected.changed().await.is_ok() {
            let Some(joined) = joined.upgrade() else {
                return;
            };
            if let Err(error) = sweep(&joined, &mut swept).await {
                tracing::warn!(%error, stream = %joined.source, "could not look for unreadable messages");
            }
        }
    });
}

#[derive(Serialize)]
struct Get {
    seq: u64,
}

#[derive(Deserialize)]
struct Got {
    message: RawMessage,
}

/// Dead-letters the unreadable messages among the group's unsettled ones,
/// [`SPAN`] of them (or `prefetch`) from the acknowledgement floor on.
async fn sweep(joined: &Joined, swept: &mut HashSet<u64>) -> Result<(), BrokerError> {
    let stream = joined
        .jetstream
        .get_stream_no_info(&*joined.source)
        .await
        .map_err(|e| BrokerError::new("sweep", e))?;
    let group = stream
        .consumer_info(&joined.group)
        .await
        .map_err(|e| BrokerError::new("sweep", e))?;
    let first = group.ack_floor.stream_sequence.saturating_add(1);
    let span = u64::try_from(joined.prefetch.max(SPAN)).unwrap_or(u64::MAX);
    let last = group
        .delivered
        .stream_sequence
        .min(first.saturating_add(span));
    for sequence in first..=last {
        if swept.contains(&sequence) {
            continue;
        }
        let got: Response<Got> = joined
            .jetstream
            .request(
                format!("STREAM.MSG.GET.{}", joined.source),
                &Get { seq: sequence },
            )
            .await
            .map_err(|e| BrokerError::new("sweep", e))?;
        // Deleted, or of another subject: nothing to do.
        let Response::Ok(Got { message }) = got else {
            continue;
        };
        let headers = message.headers.as_deref().map(base64).unwrap_or_default();
        if readable(&headers) {
            continue;
        }
        dead_letter(joined, sequence, &headers, base64(&message.payload)).await?;
        swept.insert(sequence);
    }
    Ok(())
}

/// Publishes the stored message to the dead-letter subject and terminates
/// it for the group.
async fn dead_letter(
    joined: &Joined,
    sequence: u64,
    raw_headers: &[u8],
    payload: Vec<u8>,
) -> Result<(), BrokerError> {
    let detail = format!(
        "async-nats cannot read the message (a header that is not UTF-8, or a malformed header name); \
         stream `{}`, sequence {sequence}",
        joined.source
    );
    let original = lenient(raw_headers);
    let headers = dead_letter_headers(Some(&original), UNREADABLE, detail);
    dead_letter_to(
        &joined.jetstream,
        &joined.dead_letter_subject,
        headers,
        payload.into(),
    )
    .await?;
    // The ack subject JetStream gave its delivery, but for the counts,
    // which it takes from its own record.
    joined
        .jetstream
        .client()
        .publish(
            format!(
                "$JS.ACK.{}.{}.1.{sequence}.0.0.0",
                joined.source, joined.group
            ),
            "+TERM".into(),
        )
        .await
        .map_err(|e| BrokerError::new("term", e))?;
    tracing::error!(
        stream = %joined.source,
        sequence,
        id = original.get(ID).map_or("", |id| id.as_str()),
        reason = UNREADABLE,
        "a message async-nats cannot read; dead-lettered"
    );
    Ok(())
}

/// Whether async-nats reads this header block (what it refuses: bytes that
/// are not UTF-8, no `NATS/1.0` line, a line without `:`, a bad name).
fn readable(headers: &[u8]) -> bool {
    if headers.is_empty() {
        return true;
    }
    let Ok(text) = std::str::from_utf8(headers) else {
        return false;
    };
    let mut lines = text.lines();
    if !lines
        .next()
        .is_some_and(|line| line.starts_with("NATS/1.0"))
    {
        return false;
    }
    lines
        .filter(|line| !line.is_empty() && !line.starts_with(char::is_whitespace))
        .all(|line| {
            line.split_once(':')
                .is_some_and(|(name, _)| name.parse::<HeaderName>().is_ok())
        })
}

/// The headers that can be read, bytes that are not UTF-8 replaced; lines
/// without a valid name left out.
fn lenient(headers: &[u8]) -> HeaderMap {
    let text = String::from_utf8_lossy(headers);
    let mut map = HeaderMap::new();
    for line in text.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':')
            && let Ok(name) = name.trim().parse::<HeaderName>()
        {
            map.append(name, value.trim());
        }
    }
    map
}

/// Standard base64 (the JSON API's), padding optional; `[]` if malformed.
fn base64(text: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(text.len() / 4 * 3);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for symbol in text.bytes().filter(|&b| b != b'=') {
        let value = match symbol {
            b'A'..=b'Z' => symbol - b'A',
            b'a'..=b'z' => symbol - b'a' + 26,
            b'0'..=b'9' => symbol - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return Vec::new(),
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push(((buffer >> bits) & 0xff) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    bytes
}

/// Tells every sweeper of this connection that it is back: the event
/// callback of the subscriber's connection.
pub(super) fn on_connected(
    connected: Arc<watch::Sender<u64>>,
) -> impl Fn(async_nats::Event) -> std::future::Ready<()> + Send + Sync + 'static {
    move |event| {
        if matches!(event, async_nats::Event::Connected) {
            connected.send_modify(|count| *count += 1);
        }
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(base64("TkFUUy8xLjA="), b"NATS/1.0");
        assert_eq!(base64("YWJj"), b"abc");
        assert_eq!(base64("YQ"), b"a");
        assert_eq!(base64(""), b"");
        assert_eq!(base64("not base64!"), b"");
    }

    #[test]
    fn what_async_nats_cannot_read() {
        assert!(readable(b""));
        assert!(readable(b"NATS/1.0\r\nNats-Msg-Id: a\r\n\r\n"));
        assert!(!readable(b"NATS/1.0\r\nTenant: \xff\r\n\r\n"));
        assert!(!readable(b"NATS/1.0\r\nno colon\r\n\r\n"));
        assert!(!readable(b"HTTP/1.1\r\n\r\n"));
        let headers =
            lenient(b"NATS/1.0\r\nNats-Msg-Id: bad-1\r\nTenant: \xff\r\nbad name: x\r\n\r\n");
        assert_eq!(headers.get(ID).map(|v| v.as_str()), Some("bad-1"));
        assert_eq!(headers.get("Tenant").map(|v| v.as_str()), Some("\u{fffd}"));
        assert_eq!(headers.iter().count(), 2);
    }
}
