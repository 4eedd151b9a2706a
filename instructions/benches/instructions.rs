//! The paths whose instructions `scripts/instructions` counts under
//! `valgrind --tool=callgrind` (deterministic, unlike wall time on a shared
//! machine): `instructions <path> <n>` sets up `path`, then runs it `n`
//! times inside `measured`, on a single-threaded runtime. The script counts
//! only what runs inside `measured` (`--toggle-collect`), so the set-up
//! (the runtime, the clock's calibration, the store) is left out, and takes
//! the count of `n` runs minus the count of none, divided by `n`.
//!
//! - `fresh`, `replay`: a call of the engine on the memory store, a new
//!   key each time, or the same completed key;
//! - `http-fresh`, `http-replay`: a `POST` through the HTTP layer (an axum
//!   router behind it, called as a tower service, no socket);
//! - `journal`: the client's `FileJournal` recording an intent (a redb
//!   commit), then marking it answered;
//! - `floor-fresh`, `floor-replay`: the floor of `fresh` and `replay`, the
//!   same calls through a hand-written map (`support/map_floor.rs`).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::post;
use idempotent_client::{FileJournal, Intent, Journal};
use idempotent_core::http::IdempotencyLayer;
use idempotent_core::memory::MemoryStore;
use idempotent_core::{Error, Idempotency, Operation};
use tower::ServiceExt as _;

#[path = "../../idempotent-core/benches/support/map_floor.rs"]
mod map_floor;

static CHARGE: Operation = Operation::new("bench.charge");

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        eprintln!(
            "usage: instructions fresh|replay|floor-fresh|floor-replay|http-fresh|http-replay|journal <n>"
        );
        std::process::exit(2);
    };
    let n: u64 = n.parse().expect("a count");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match path.as_str() {
        "fresh" => engine(&runtime, n, false),
        "replay" => engine(&runtime, n, true),
        "floor-fresh" => floor(&runtime, n, false),
        "floor-replay" => floor(&runtime, n, true),
        "http-fresh" => http(&runtime, n, false),
        "http-replay" => http(&runtime, n, true),
        "journal" => journal(&runtime, n),
        other => panic!("unknown path `{other}`"),
    }
}

/// Runs `runs` on `runtime`: the only code whose instructions are counted.
#[inline(never)]
fn measured<F: std::future::Future>(runtime: &tokio::runtime::Runtime, runs: F) -> F::Output {
    runtime.block_on(runs)
}

fn engine(runtime: &tokio::runtime::Runtime, n: u64, replay: bool) {
    let idempotency = Idempotency::new(MemoryStore::new());
    let call = |i: u64| {
        let key = if replay { 0 } else { i + 1 };
        idempotency
            .call(&CHARGE)
            .key(&key)
            .payload(&1000_u64)
            .run(async move { Ok::<_, Error>(format!("receipt {key}")) })
    };
    // Set-up, in every run: the key replays start from.
    runtime.block_on(call(0)).expect("a call");
    measured(runtime, async {
        for i in 1..=n {
            std::hint::black_box(call(i).await.expect("a call"));
        }
    });
}

/// The same calls as [`engine`], through the hand-written floor.
fn floor(runtime: &tokio::runtime::Runtime, n: u64, replay: bool) {
    use std::fmt::Write as _;

    let map = map_floor::MapFloor::new();
    let mut key = String::new();
    let call = |key: &mut String, i: u64| {
        let id = if replay { 0 } else { i + 1 };
        key.clear();
        let _ = write!(key, "4:idem|0:|12:bench.charge|{id}");
        id
    };
    let id = call(&mut key, 0);
    runtime
        .block_on(map.call(&key, &1000_u64, async move { format!("receipt {id}") }))
        .expect("a call");
    measured(runtime, async {
        for i in 1..=n {
            let id = call(&mut key, i);
            let answer = map.call(&key, &1000_u64, async move { format!("receipt {id}") });
            std::hint::black_box(answer.await.expect("a call"));
        }
    });
    let stored = if replay { 1 } else { n as usize + 1 };
    assert_eq!(map.len(), stored, "one record per key");
}

fn http(runtime: &tokio::runtime::Runtime, n: u64, replay: bool) {
    let layer = IdempotencyLayer::builder(Idempotency::new(MemoryStore::new()))
        .single_tenant()
        .build();
    let app = Router::new()
        .route(
            "/payments",
            post(|| async { (axum::http::StatusCode::CREATED, "charged") }),
        )
        .layer(layer);
    let send = |i: u64| {
        let key = if replay { 0 } else { i + 1 };
        let request = Request::post("/payments")
            .header("idempotency-key", format!("key-{key}"))
            .header("content-type", "application/json")
            .body(Body::from(r#"{"amount":1000}"#))
            .expect("a request");
        app.clone().oneshot(request)
    };
    runtime.block_on(send(0)).expect("an answer");
    measured(runtime, async {
        for i in 1..=n {
            let answer = send(i).await.expect("an answer");
            let body = axum::body::to_bytes(answer.into_body(), 1024).await;
            std::hint::black_box(body.expect("a body"));
        }
    });
}

fn journal(runtime: &tokio::runtime::Runtime, n: u64) {
    let dir = std::env::temp_dir().join(format!("instructions-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory");
    let journal =
        FileJournal::open(dir.join("bench.journal"), Duration::from_secs(3600)).expect("a journal");
    let intent = |i: u64| Intent {
        name: format!("order-{i}"),
        key: format!("00000000-0000-4000-8000-{i:012}"),
        method: "POST".to_owned(),
        url: "http://127.0.0.1:3000/payments".to_owned(),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        body: br#"{"amount":1000,"currency":"USD"}"#.to_vec(),
        created_at_ms: 1,
        done: false,
        answered_at_ms: 0,
    };
    runtime.block_on(journal.begin(intent(0))).expect("begin");
    measured(runtime, async {
        for i in 1..=n {
            journal.begin(intent(i)).await.expect("begin");
            journal.finish(&format!("order-{i}")).await.expect("finish");
        }
    });
    drop(journal);
    let _ = std::fs::remove_dir_all(&dir);
}
