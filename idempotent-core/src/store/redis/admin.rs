//! The operations of [`Admin`] on Redis: one script for an eviction, one
//! for a look at a key, and a walk of the keyspace with `SCAN` for stuck
//! work and counts, on every master of a cluster.
//!
//! The walk costs one `SCAN ... COUNT 1000` round trip per 1,000 keys of
//! the whole keyspace (records, steps, and whatever else the server
//! holds: `MATCH` filters after the walk), on each master, and one
//! pipeline per batch of records found (`GETRANGE` of their first 35
//! bytes, `STRLEN`, `PTTL`: no response body crosses the network). Each
//! round trip is bounded by the store's timeout; the walk is not a
//! snapshot (a record written or gone while it runs may be counted or
//! not), which is what `SCAN` guarantees.

use std::time::Duration;

use async_trait::async_trait;
use redis::Value;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};

use super::RedisStore;
use super::connection::{Connection, Request, bounded};
use super::layout::{IN_PROGRESS_LEN, NO_TAG, corrupt, decode_versioned, with_key};
use crate::key::StorageKey;
use crate::record::{Record, RecordState};
use crate::store::StoreError;
use crate::store::admin::{
    Admin, Eviction, OperationCount, RecordInfo, RecordStatus, StuckRecords, Tally,
};
use crate::store::lease_tokens;

/// Keys asked for per `SCAN` round trip.
const SCAN_BATCH: usize = 1_000;

/// The bytes of a value read while walking: a whole record in progress
/// (with a waiter's mark), or the head of a completed one.
const HEAD: usize = IN_PROGRESS_LEN + 1;

/// Where a walk sends its commands: the server, or one master of a cluster.
enum Node {
    Standalone,
    Primary { host: String, port: u16 },
}

/// The bytes before the response of a completed record, by layout.
fn header_len(layout: u8) -> usize {
    if layout == 1 { 17 } else { 18 }
}

/// What a record, its length and its `PTTL` say, for the admin.
fn info(
    key: StorageKey,
    (layout, record): (u8, Record),
    value_len: usize,
    pttl: i64,
    with_response: bool,
) -> RecordInfo {
    // -1: no expiry (written or `PERSIST`ed by something else).
    let left = u64::try_from(pttl).map_or(Duration::MAX, Duration::from_millis);
    let status = match record.state {
        RecordState::InProgress { token, .. } => RecordStatus::InProgress {
            owner: token,
            lease_left: left,
            running_for: (layout >= 2).then(|| lease_tokens::running_for(token)),
        },
        RecordState::Completed { response, .. } => RecordStatus::Completed {
            expires_in: left,
            response_len: value_len.saturating_sub(header_len(layout)),
            response: with_response.then_some(response),
        },
    };
    RecordInfo::new(key, record.fingerprint, layout, status)
}

/// `text` as a `SCAN MATCH` pattern that matches only itself.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        _ => None,
    }
}

fn unexpected(what: &str, answer: &Value) -> StoreError {
    StoreError::unavailable(format!("unexpected answer to {what}: {answer:?}"))
}

/// The masters of a cluster, from `CLUSTER NODES` (`<id> <host:port@bus> <flags> ...`).
fn masters(nodes: &str) -> Vec<Node> {
    nodes
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let address = fields.nth(1)?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master") || flags.iter().any(|f| f.starts_with("fail")) {
                return None;
            }
            let address = address.split(['@', ',']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            Some(Node::Primary {
                host: host.trim_matches(['[', ']']).to_owned(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

impl RedisStore {
    async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        let Connection::Cluster(cluster) = &self.inner.connection else {
            return Ok(vec![Node::Standalone]);
        };
        let answer = bounded(self.inner.timeout, async {
            let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random);
            let mut command = redis::cmd("CLUSTER");
            command.arg("NODES");
            cluster.get().await?.route_command(command, route).await
        })
        .await
        .1?;
        let text = match &answer {
            Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            Value::VerbatimString { text, .. } => text.clone(),
            other => return Err(unexpected("CLUSTER NODES", other)),
        };
        Ok(masters(&text))
    }

    /// Sends `request` (a command or a pipeline) to `node`.
    async fn send_to(&self, node: &Node, request: Request<'_>) -> Result<Value, StoreError> {
        let (Node::Primary { host, port }, Connection::Cluster(cluster)) =
            (node, &self.inner.connection)
        else {
            return self.send(&request).await;
        };
        let route = SingleNodeRoutingInfo::ByAddress {
            host: host.clone(),
            port: *port,
        };
        bounded(self.inner.timeout, async {
            let mut connection = cluster.get().await?;
            match request {
                Request::Pipeline(pipeline) => connection
                    .route_pipeline(pipeline.clone(), 0, pipeline.len(), route)
                    .await
                    .map(Value::Array),
                Request::Command(command) => {
                    let route = RoutingInfo::SingleNode(route);
                    connection.route_command(command.clone(), route).await
                }
                Request::Script(command) => {
                    let route = RoutingInfo::SingleNode(route);
                    connection.route_command(command(false), route).await
                }
            }
        })
        .await
        .1
    }

    /// Every record of this store's prefix, as `visit` sees it (without
    /// its response), master by master.
    async fn walk(&self, mut visit: impl FnMut(RecordInfo)) -> Result<(), StoreError> {
        let prefix = format!("{}{NO_TAG}", self.inner.key_prefix);
        let pattern = format!("{}*", glob_escape(&prefix));
        for node in self.nodes().await? {
            let mut cursor = String::from("0");
            loop {
                let mut scan = redis::cmd("SCAN");
                scan.arg(&cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH);
                let answer = self.send_to(&node, Request::Command(&scan)).await?;
                let Value::Array(mut parts) = answer else {
                    return Err(unexpected("SCAN", &answer));
                };
                let (Some(Value::Array(keys)), Some(Value::BulkString(next))) =
                    (parts.pop(), parts.pop())
                else {
                    return Err(StoreError::unavailable("unexpected answer to SCAN"));
                };
                self.read_heads(&node, &prefix, keys, &mut visit).await?;
                cursor = String::from_utf8_lossy(&next).into_owned();
                if cursor == "0" {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Reads the records among `keys` (others, a call's steps say, are
    /// skipped) in one pipeline, and hands each to `visit`.
    async fn read_heads(
        &self,
        node: &Node,
        prefix: &str,
        keys: Vec<Value>,
        visit: &mut impl FnMut(RecordInfo),
    ) -> Result<(), StoreError> {
        let mut pipeline = redis::pipe();
        let mut records = Vec::with_capacity(keys.len());
        for key in keys {
            let Value::BulkString(key) = key else {
                continue;
            };
            let stored = std::str::from_utf8(&key).ok();
            let storage_key = stored
                .and_then(|key| key.strip_prefix(prefix))
                .and_then(StorageKey::from_stored);
            if let Some(storage_key) = storage_key {
                pipeline.cmd("GETRANGE").arg(&key).arg(0).arg(HEAD - 1);
                pipeline.cmd("STRLEN").arg(&key);
                pipeline.cmd("PTTL").arg(&key);
                records.push(storage_key);
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let answer = self.send_to(node, Request::Pipeline(&pipeline)).await?;
        let Value::Array(answers) = answer else {
            return Err(unexpected("a pipeline", &answer));
        };
        for (key, answer) in records.into_iter().zip(answers.chunks(3)) {
            let [Value::BulkString(head), len, pttl] = answer else {
                continue; // gone since the SCAN
            };
            let (Some(len), Some(pttl)) = (int(len), int(pttl)) else {
                continue;
            };
            if pttl == -2 || head.is_empty() {
                continue;
            }
            // A value that is not a record is skipped here: `inspect` says why.
            if let Ok(decoded) = decode_versioned(&key, head) {
                visit(info(
                    key,
                    decoded,
                    usize::try_from(len).unwrap_or(0),
                    pttl,
                    false,
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Admin for RedisStore {
    async fn inspect(
        &self,
        key: &StorageKey,
        with_response: bool,
    ) -> Result<Option<RecordInfo>, StoreError> {
        let look = self.invoke(&self.inner.scripts.look, key, &[]);
        let answer = look.await.map_err(|e| with_key(e, key))?;
        let Value::Array(answer) = answer else {
            return Err(corrupt(key, format!("unexpected answer {answer:?}")));
        };
        match <[Value; 2]>::try_from(answer) {
            Ok([Value::BulkString(bytes), Value::Int(pttl)]) => {
                let decoded = decode_versioned(key, &bytes)?;
                Ok(Some(info(
                    key.clone(),
                    decoded,
                    bytes.len(),
                    pttl,
                    with_response,
                )))
            }
            // Lua's `false` for a missing key: a nil on RESP2, a boolean on RESP3.
            Ok([Value::Nil | Value::Boolean(false), _]) => Ok(None),
            other => Err(corrupt(key, format!("unexpected answer {other:?}"))),
        }
    }

    async fn evict(&self, key: &StorageKey, force: bool) -> Result<Eviction, StoreError> {
        let force: &[u8] = if force { b"1" } else { b"0" };
        let channel = self.inner.channel.as_bytes();
        let answer = self
            .invoke(&self.inner.scripts.evict, key, &[force, channel])
            .await
            .map_err(|e| with_key(e, key))?;
        let Value::Array(answer) = answer else {
            return Err(corrupt(key, format!("unexpected answer {answer:?}")));
        };
        match answer
            .iter()
            .map(int)
            .collect::<Option<Vec<_>>>()
            .as_deref()
        {
            Some([0]) => Ok(Eviction::Absent),
            Some([1]) => Ok(Eviction::Evicted { in_progress: false }),
            Some([2]) => Ok(Eviction::Evicted { in_progress: true }),
            Some([3, pttl]) => Ok(Eviction::Refused {
                lease_left: u64::try_from(*pttl).map_or(Duration::MAX, Duration::from_millis),
            }),
            _ => Err(corrupt(key, format!("unexpected answer {answer:?}"))),
        }
    }

    async fn stuck(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<RecordInfo>, StoreError> {
        let mut stuck = StuckRecords::new(older_than, limit);
        self.walk(|record| stuck.offer(record)).await?;
        Ok(stuck.into_list())
    }

    async fn count(&self) -> Result<Vec<OperationCount>, StoreError> {
        let mut tally = Tally::default();
        self.walk(|record| tally.add(&record)).await?;
        Ok(tally.into_counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_masters_of_a_cluster_are_read_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001,host.example master - 0 0 2 connected 5461-10922
c3 127.0.0.1:7003@17003 slave a1 0 0 1 connected
d4 [::1]:7002@17002 master,fail? - 0 0 3 connected 10923-16383
e5 [::1]:7004@17004 master - 0 0 3 connected
";
        let found: Vec<(String, u16)> = masters(nodes)
            .into_iter()
            .filter_map(|node| match node {
                Node::Primary { host, port } => Some((host, port)),
                Node::Standalone => None,
            })
            .collect();
        assert_eq!(
            found,
            [
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("::1".to_owned(), 7004)
            ]
        );
    }

    #[test]
    fn a_prefix_matches_only_itself() {
        assert_eq!(glob_escape("a*b?[c]\\{}"), "a\\*b\\?\\[c\\]\\\\{}");
    }
}
