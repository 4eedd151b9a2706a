//! Small helpers of the subscriber and the publisher: the connection,
//! Redis replies read leniently, durations as arguments, and names.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Client, Value};

use super::COMMAND_TIMEOUT;
use crate::error::BrokerError;

/// The client for `url`, and the shared connection for commands.
pub(super) async fn connect(url: &str) -> Result<(Client, ConnectionManager), BrokerError> {
    let client = Client::open(url).map_err(|e| BrokerError::new("connect", e))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_number_of_retries(2);
    let commands = ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(|e| BrokerError::new("connect", e))?;
    Ok((client, commands))
}

pub(super) fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(values) | Value::Set(values) => values,
        _ => Vec::new(),
    }
}

pub(super) fn bytes(value: Value) -> Vec<u8> {
    match value {
        Value::BulkString(bytes) => bytes,
        Value::SimpleString(text) => text.into_bytes(),
        Value::Int(n) => n.to_string().into_bytes(),
        _ => Vec::new(),
    }
}

pub(super) fn text(value: Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes).ok(),
        Value::SimpleString(text) => Some(text),
        _ => None,
    }
}

pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// `<pid>-<random>`: unique among the group's members.
pub(super) fn member_name() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}

/// The key `<stream>:<suffix>` in the stream's hash slot: the stream's
/// hash tag kept if it has one, the stream's name made the tag if not.
pub(super) fn beside(stream: &str, suffix: &str) -> String {
    let tagged = stream
        .find('{')
        .and_then(|open| stream[open + 1..].find('}'))
        .is_some_and(|len| len > 0);
    if tagged || stream.contains('}') {
        format!("{stream}:{suffix}")
    } else {
        format!("{{{stream}}}:{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::beside;

    #[test]
    fn keys_beside_a_stream_share_its_slot() {
        assert_eq!(beside("orders", "dedup:1"), "{orders}:dedup:1");
        assert_eq!(beside("{shop}orders", "dedup:1"), "{shop}orders:dedup:1");
        // No key shares the slot of a name with an empty tag.
        assert_eq!(beside("a{}b", "x"), "a{}b:x");
    }
}
