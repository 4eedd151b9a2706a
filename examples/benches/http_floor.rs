//! The floor of the HTTP layer's benchmarks: `payments-server
//! --unprotected`'s routes behind a hand-written middleware that does what
//! any idempotency middleware must, and nothing else:
//!
//! - read the key and the whole body, fingerprint the method, path and body;
//! - claim the key: leave an in-progress record if it is free, or read what
//!   is there;
//! - a completed record with the same fingerprint is answered from its
//!   stored status, headers and body (a replay); another fingerprint gets a
//!   bare 422, a request in progress a bare 409;
//! - otherwise run the handler, read its whole answer and store status,
//!   headers and body in one buffer, completing the record.
//!
//! The records live in a sharded map in the process (`--store memory`, the
//! default) or in Redis (`--store redis://...`) through raw redis-rs, with
//! the Redis store's own commands: the claim `SET key <in progress> NX PX
//! GET` and the completion script the store sends (`complete.lua`, which
//! checks the lease). No expiry sweep, bound, scope, metrics, tracing or
//! problem bodies. It is not a product: it tells how much of the layer's
//! cost any implementation pays on this machine (`scripts/bench-http` runs
//! it beside `payments-server`).
//!
//! Run: `cargo bench -p examples --bench http_floor -- --addr 127.0.0.1:3001
//! [--store memory|redis://...]` (without an address, as `cargo bench` runs
//! it, it exits at once).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use examples::payments::{Config, app};
use redis::aio::ConnectionManager;
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Locks of their own, so that the two workers rarely meet.
const SHARDS: usize = 64;
/// The layer's default body and response limit.
const LIMIT: usize = 8 << 20;
/// The layer's default lease and TTL, in milliseconds.
const LEASE_MS: u64 = 30_000;
const TTL_MS: u64 = 24 * 3600 * 1000;
/// The Redis store's completion script: the floor sends the same one.
const COMPLETE: &str = include_str!("../../idempotent-core/src/store/redis/complete.lua");

/// What a key holds in the map: a request in progress, or its stored answer.
enum Entry {
    InProgress,
    Done(Bytes),
}

/// Entries by key, in shards, each with its fingerprint.
type Shards = Arc<Vec<Mutex<HashMap<Box<[u8]>, (u128, Entry)>>>>;

/// Where the records live.
#[derive(Clone)]
enum Records {
    /// In this process.
    Map(Shards),
    /// Raw redis-rs, the completion script's SHA, and lease tokens.
    Redis(ConnectionManager, Arc<str>, Arc<AtomicU64>),
}

/// What a claim found.
enum Claim {
    /// The key was free: it is ours, under this in-progress record.
    Acquired(Vec<u8>),
    /// A completed record: its fingerprint and stored answer.
    Done(u128, Bytes),
    /// Someone else holds the key.
    InProgress,
}

impl Records {
    async fn claim(&self, key: &[u8], fingerprint: u128) -> Result<Claim, StatusCode> {
        match self {
            Self::Map(shards) => {
                let mut entries = shards[(xxh3_64(key) % SHARDS as u64) as usize]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                Ok(match entries.get(key) {
                    Some((stored, Entry::Done(answer))) => Claim::Done(*stored, answer.clone()),
                    Some((_, Entry::InProgress)) => Claim::InProgress,
                    None => {
                        entries.insert(key.into(), (fingerprint, Entry::InProgress));
                        Claim::Acquired(Vec::new())
                    }
                })
            }
            Self::Redis(connection, _, tokens) => {
                // 'P', a lease token, the fingerprint; 'C', the fingerprint
                // and the answer once completed.
                let mut record = Vec::with_capacity(33);
                record.push(b'P');
                record.extend_from_slice(&tokens.fetch_add(1, Ordering::Relaxed).to_be_bytes());
                record.extend_from_slice(&fingerprint.to_be_bytes());
                let found: Option<Vec<u8>> = redis::cmd("SET")
                    .arg(key)
                    .arg(&record)
                    .arg("NX")
                    .arg("PX")
                    .arg(LEASE_MS)
                    .arg("GET")
                    .query_async(&mut connection.clone())
                    .await
                    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
                Ok(match found {
                    None => Claim::Acquired(record),
                    Some(found) if found.first() == Some(&b'C') && found.len() >= 17 => {
                        let stored =
                            u128::from_be_bytes(found[1..17].try_into().expect("16 bytes"));
                        Claim::Done(stored, Bytes::from(found).slice(17..))
                    }
                    Some(_) => Claim::InProgress,
                })
            }
        }
    }

    async fn complete(&self, key: &[u8], fingerprint: u128, claimed: Vec<u8>, answer: Vec<u8>) {
        match self {
            Self::Map(shards) => {
                shards[(xxh3_64(key) % SHARDS as u64) as usize]
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(key.into(), (fingerprint, Entry::Done(Bytes::from(answer))));
            }
            Self::Redis(connection, sha, _) => {
                let mut record = Vec::with_capacity(17 + answer.len());
                record.push(b'C');
                record.extend_from_slice(&fingerprint.to_be_bytes());
                record.extend_from_slice(&answer);
                // The answer goes to the client either way; a lost lease
                // (0) leaves the record to whoever holds it now.
                let _: Result<i64, _> = redis::cmd("EVALSHA")
                    .arg(&**sha)
                    .arg(1)
                    .arg(key)
                    .arg(claimed)
                    .arg(record)
                    .arg(TTL_MS)
                    .arg("http-floor:done")
                    .query_async(&mut connection.clone())
                    .await;
            }
        }
    }
}

/// Status, headers and body in one buffer, as a store keeps them.
fn encode(parts: &axum::http::response::Parts, body: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(128 + body.len());
    stored.extend_from_slice(&parts.status.as_u16().to_be_bytes());
    stored.push(parts.headers.len() as u8);
    for (name, value) in &parts.headers {
        stored.push(name.as_str().len() as u8);
        stored.extend_from_slice(name.as_str().as_bytes());
        stored.extend_from_slice(&(value.len() as u16).to_be_bytes());
        stored.extend_from_slice(value.as_bytes());
    }
    stored.extend_from_slice(body);
    stored
}

/// The answer [`encode`] stored.
fn decode(stored: &Bytes) -> Option<Response> {
    let status =
        StatusCode::from_u16(u16::from_be_bytes([*stored.first()?, *stored.get(1)?])).ok()?;
    let mut response = Response::builder().status(status);
    let mut at = 3;
    for _ in 0..*stored.get(2)? {
        let name_len = usize::from(*stored.get(at)?);
        let name = HeaderName::from_bytes(stored.get(at + 1..at + 1 + name_len)?).ok()?;
        at += 1 + name_len;
        let value_len = usize::from(u16::from_be_bytes([*stored.get(at)?, *stored.get(at + 1)?]));
        let value =
            HeaderValue::from_maybe_shared(stored.slice(at + 2..at + 2 + value_len)).ok()?;
        at += 2 + value_len;
        response = response.header(name, value);
    }
    response.body(Body::from(stored.slice(at..))).ok()
}

/// The middleware: a claim before the handler, the answer stored after it.
async fn floor(State(records): State<Records>, request: Request, next: Next) -> Response {
    let key = match request.headers().get("idempotency-key") {
        Some(key) if request.method() == Method::POST => Box::<[u8]>::from(key.as_bytes()),
        _ => return next.run(request).await,
    };
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, LIMIT).await else {
        return StatusCode::PAYLOAD_TOO_LARGE.into_response();
    };
    let mut hasher = Xxh3::new();
    hasher.update(parts.method.as_str().as_bytes());
    hasher.update(parts.uri.path().as_bytes());
    hasher.update(&body);
    let fingerprint = hasher.digest128();
    let claimed = match records.claim(&key, fingerprint).await {
        Ok(Claim::Acquired(claimed)) => claimed,
        Ok(Claim::Done(stored, answer)) if stored == fingerprint => {
            return decode(&answer)
                .unwrap_or_else(|| StatusCode::INTERNAL_SERVER_ERROR.into_response());
        }
        Ok(Claim::Done(..)) => return StatusCode::UNPROCESSABLE_ENTITY.into_response(),
        Ok(Claim::InProgress) => return StatusCode::CONFLICT.into_response(),
        Err(status) => return status.into_response(),
    };
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, LIMIT).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    records
        .complete(&key, fingerprint, claimed, encode(&parts, &body))
        .await;
    Response::from_parts(parts, Body::from(body))
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench with `--bench`: nothing to serve then.
    let args: Vec<String> = std::env::args().collect();
    let after = |flag: &str| args.iter().skip_while(|a| *a != flag).nth(1).cloned();
    let Some(addr) = after("--addr") else {
        return;
    };
    let records = match after("--store").as_deref() {
        None | Some("memory") => {
            Records::Map(Arc::new((0..SHARDS).map(|_| Mutex::default()).collect()))
        }
        Some(url) => {
            let client = redis::Client::open(url).expect("a redis:// URL");
            let mut connection = ConnectionManager::new(client).await.expect("Redis answers");
            let sha: String = redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(COMPLETE)
                .query_async(&mut connection)
                .await
                .expect("SCRIPT LOAD");
            Records::Redis(connection, sha.into(), Arc::new(AtomicU64::new(0)))
        }
    };
    let config = Config {
        protected: false,
        ..Config::default()
    };
    let router = app(&config)
        .await
        .expect("the unprotected app needs no store");
    let router = router.layer(middleware::from_fn_with_state(records, floor));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    // Scripts wait for this line, as for payments-server's.
    println!("http_floor listening on http://{addr}");
    axum::serve(listener, router).await.expect("serve");
}
