//! A floor for the HTTP layer's fresh-key benchmark: `payments-server
//! --unprotected`'s routes behind a hand-written middleware that does only
//! what any idempotency middleware must do for a fresh key, and nothing else:
//! read the key and the whole body, fingerprint the method, path and body,
//! insert an in-progress entry in a sharded map, run the handler, read its
//! whole answer, and store it. No expiry, lease, scope, metrics, tracing or
//! problem bodies; a duplicate gets a bare 409, and a replay (not what it
//! measures) gets the stored bytes as a 200's body, with no fingerprint
//! check. It is not a product:
//! it tells how much of the layer's cost any implementation would pay on
//! this machine (`scripts/bench-http` runs it beside the two servers).
//!
//! Run: `cargo bench -p examples --bench http_floor -- --addr 127.0.0.1:3001`
//! (without an address, as `cargo bench` runs it, it exits at once).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use examples::payments::{Config, app};
use xxhash_rust::xxh3::{Xxh3, xxh3_64};

/// Locks of their own, so that the two workers rarely meet.
const SHARDS: usize = 64;
/// The layer's default body and response limit.
const LIMIT: usize = 8 << 20;

/// What a key holds: a request in progress, or its stored answer.
enum Entry {
    InProgress,
    Done(Bytes),
}

/// Entries by key, in shards; each with its fingerprint.
type Map = Arc<Vec<Mutex<HashMap<Box<[u8]>, (u128, Entry)>>>>;

/// The middleware: a claim before the handler, the answer stored after it.
async fn floor(State(map): State<Map>, request: Request, next: Next) -> Response {
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
    let shard = &map[(xxh3_64(&key) % SHARDS as u64) as usize];
    {
        let mut entries = shard.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(&key) {
            Some((_, Entry::Done(stored))) => return stored.clone().into_response(),
            Some((_, Entry::InProgress)) => return StatusCode::CONFLICT.into_response(),
            None => {
                entries.insert(key.clone(), (fingerprint, Entry::InProgress));
            }
        }
    }
    let response = next.run(Request::from_parts(parts, Body::from(body))).await;
    let (parts, body) = response.into_parts();
    let Ok(body) = axum::body::to_bytes(body, LIMIT).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    // Status, headers and body in one buffer, as a store would keep them.
    let mut stored = Vec::with_capacity(128 + body.len());
    stored.extend_from_slice(&parts.status.as_u16().to_be_bytes());
    for (name, value) in &parts.headers {
        stored.extend_from_slice(name.as_str().as_bytes());
        stored.push(b':');
        stored.extend_from_slice(value.as_bytes());
        stored.push(b'\n');
    }
    stored.extend_from_slice(&body);
    shard
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, (fingerprint, Entry::Done(Bytes::from(stored))));
    Response::from_parts(parts, Body::from(body))
}

#[tokio::main]
async fn main() {
    // `cargo bench` runs every bench with `--bench`: nothing to serve then.
    let mut args = std::env::args().skip_while(|a| a != "--addr").skip(1);
    let Some(addr) = args.next() else {
        return;
    };
    let map: Map = Arc::new((0..SHARDS).map(|_| Mutex::default()).collect());
    let config = Config {
        protected: false,
        ..Config::default()
    };
    let router = app(&config)
        .await
        .expect("the unprotected app needs no store");
    let router = router.layer(middleware::from_fn_with_state(map, floor));
    let listener = tokio::net::TcpListener::bind(&addr).await.expect("bind");
    // Scripts wait for this line, as for payments-server's.
    println!("http_floor listening on http://{addr}");
    axum::serve(listener, router).await.expect("serve");
}
