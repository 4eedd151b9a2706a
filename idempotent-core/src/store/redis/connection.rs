//! How a call reaches Redis: the connection (standalone or cluster), what
//! a call sends, and the bound on how long it may take.

use std::sync::Arc;
use std::time::Duration;

use redis::Value;

use super::cluster::LazyCluster;
use super::standalone::Standalone;
use crate::store::StoreError;

/// The store's connection: one server, or a cluster.
pub(super) enum Connection {
    Single(Box<Standalone>),
    Cluster(Arc<LazyCluster>),
}

/// What a call sends: a command, or a script by its hash, then (if the
/// server does not know it) by its source.
pub(super) enum Request<'a> {
    Command(&'a redis::Cmd),
    /// The script's command, by hash (`true`) or by source.
    Script(&'a (dyn Fn(bool) -> redis::Cmd + Sync)),
    /// Commands in one round trip (the admin's reads), answered as an array.
    Pipeline(&'a redis::Pipeline),
}

impl Request<'_> {
    /// Sends the request once. A server that does not know a script
    /// (`NOSCRIPT`: restarted or flushed) gets `EVAL` with the source,
    /// which runs it and caches it there.
    pub(super) async fn send(
        &self,
        connection: &mut impl redis::aio::ConnectionLike,
    ) -> redis::RedisResult<Value> {
        match self {
            Self::Command(command) => command.query_async(connection).await,
            Self::Script(command) => match command(true).query_async(connection).await {
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    command(false).query_async(connection).await
                }
                answer => answer,
            },
            Self::Pipeline(pipeline) => pipeline
                .query_async::<Vec<Value>>(connection)
                .await
                .map(Value::Array),
        }
    }
}

/// How a bounded call went, for the standalone connection's bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Heard {
    /// Redis answered: a value, or an error reply of its own.
    Answer,
    /// No answer in time (here, or in redis-rs).
    Nothing,
    /// The call failed otherwise (a refused or dropped connection).
    Failure,
}

/// Bounds a call by the store's timeout and classifies its errors.
pub(super) async fn bounded(
    timeout: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<Value>>,
) -> (Heard, Result<Value, StoreError>) {
    match tokio::time::timeout(timeout, call).await {
        Ok(Ok(value)) => (Heard::Answer, Ok(value)),
        Ok(Err(error)) if error.code() == Some("WRONGTYPE") => (
            Heard::Answer,
            Err(StoreError::Corrupt {
                key: String::new(),
                detail: format!("the key holds another type of value: {error}"),
            }),
        ),
        Ok(Err(error)) => {
            let heard = if error.is_timeout() {
                Heard::Nothing
            } else if error.code().is_some() {
                Heard::Answer
            } else {
                Heard::Failure
            };
            (heard, Err(StoreError::unavailable(error)))
        }
        Err(elapsed) => (
            Heard::Nothing,
            Err(StoreError::unavailable(TimedOut(timeout, elapsed))),
        ),
    }
}

/// A call that did not finish within the store's timeout.
#[derive(Debug, thiserror::Error)]
#[error("no answer from Redis within {0:?}")]
struct TimedOut(Duration, #[source] tokio::time::error::Elapsed);
