//! Our stores beside the `idempotent` 0.3 crate's (the peer), in one run:
//! fresh keys (a claim, then the completion with a 200-byte response) and
//! replays (a claim of one of 10,000 completed keys), at 1, 8 and 64
//! concurrent tasks on a 2-worker runtime, on memory and on Redis.
//!
//! - **floor**: on memory, a hand-written `Mutex<HashMap<String, Vec<u8>>>`
//!   (a claim inserts an in-progress entry if the key is free, a completion
//!   replaces it with the response, a replay copies the response out); on
//!   Redis, our store's own commands through raw redis-rs (the claim's
//!   `SET key NX PX GET`, the completion's `EVALSHA` of its script).
//! - **baseline** (Redis only): raw redis-rs, fresh `SET NX PX` then `SET`,
//!   replay a `GET`.
//! - **ours, store**: `Store::claim` then `Store::complete` on our
//!   `MemoryStore` and `RedisStore`, the same two calls as the peer's.
//! - **ours, engine**: `Idempotency::call(..).payload(..).run(..)` on the
//!   same stores (a fingerprint of the payload, the response encoded and
//!   decoded, a span): what the peer leaves to its caller.
//! - **peer**: the peer's `MemoryStore` and `ValkeyStore`: `try_insert`
//!   then `complete`; a replay is a `try_insert` answered `Exists`.
//!
//! Each cell runs for a fixed time (1 s; `PEER_BENCH_SECONDS` to change),
//! the cells of one path and task count one after another, the whole table
//! `rounds` times (default 3; the first argument), then the median of each
//! cell. A fresh cell starts on an empty memory store of its own.
//!
//! Outside the workspace (its own `Cargo.lock`), so CI never builds the peer.
//! Run: `cd benches-peer && cargo bench --bench peer -- 3`. It starts its own
//! `redis-server` (Debian's 7.0 here) on a free port; `-- --test` runs each
//! cell briefly, once.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use idempotent::fingerprint::{DefaultFingerprintStrategy, FingerprintStrategy};
use idempotent::store::IdempotencyStore;
use idempotent::store::InsertResult;
use idempotent::store::valkey::ValkeyStore;
use idempotent::{CachedResponse, IdempotencyEntry, Metadata};
use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Fingerprint, Idempotency, IdempotencyKey, Operation, Store};
use redis::aio::ConnectionManager;
use redis_server::RedisServer;

static OP: Operation = Operation::new("bench.charge");
const REPLAY_KEYS: u64 = 10_000;
const TASKS: [u64; 3] = [1, 8, 64];
/// A response of 200 bytes.
const RESPONSE: &[u8; 200] = &[b'r'; 200];
/// The same as the engine's value: a string (its JSON, 202 bytes, is stored).
fn response_string() -> String {
    String::from_utf8(RESPONSE.to_vec()).expect("ASCII")
}
const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(86_400);
/// Our Redis store's completion script.
const COMPLETE: &str = include_str!("../../idempotent-core/src/store/redis/complete.lua");
/// What our Redis claim writes: 34 bytes (layout, 'P', fingerprint, token).
const IN_PROGRESS: [u8; 34] = [b'P'; 34];

/// Runs `op(n)` on `tasks` tasks, each taking the next `n`, for `seconds`;
/// returns operations per second.
async fn throughput<F, Fut>(seconds: f64, tasks: u64, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (op, next, stop) = (Arc::clone(&op), Arc::clone(&next), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    op(n).await;
                    done += 1;
                    if done.is_multiple_of(16) && Instant::now() >= deadline {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
                done
            })
        })
        .collect();
    let mut done = 0;
    for worker in workers {
        done += worker.await.expect("a worker");
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn storage_key(key: &str) -> StorageKey {
    StorageKey::new(
        "idem",
        "",
        OP.name(),
        &IdempotencyKey::from_token(key).expect("a key"),
    )
}

fn peer_key(key: &str) -> idempotent::IdempotencyKey {
    idempotent::IdempotencyKey::new(key).expect("a key")
}

/// The fingerprint every call sends (ours: of the payload; the peer's: its
/// default strategy over the operation and the same body).
fn fingerprints() -> (Fingerprint, idempotent::Fingerprint) {
    (
        Fingerprint::of(&1000),
        DefaultFingerprintStrategy.compute(OP.name(), b"1000"),
    )
}

/// Our store, at the store level: a claim, then (fresh) the completion.
async fn ours_store(store: &impl Store, key: &str, fresh: bool) {
    let (fingerprint, _) = fingerprints();
    let key = storage_key(key);
    match store
        .claim(&key, fingerprint, LEASE)
        .await
        .expect("a claim")
    {
        ClaimOutcome::Acquired(lease) => {
            assert!(fresh, "a completed key");
            store
                .complete(&key, lease.token, fingerprint, RESPONSE, TTL)
                .await
                .expect("completed");
        }
        ClaimOutcome::Completed(response) => {
            assert!(!fresh && response.len() == RESPONSE.len(), "a fresh key");
        }
        other => panic!("unexpected claim: {other:?}"),
    }
}

/// Our engine: a call with a payload returning the response.
async fn ours_engine(idem: &Idempotency, key: &str) {
    let done = idem
        .call(&OP)
        .key(key)
        .payload(&1000)
        .run(async { Ok::<_, Error>(response_string()) })
        .await
        .expect("an engine call");
    assert_eq!(done.value.len(), RESPONSE.len());
}

/// The peer: `try_insert`, then (fresh) `complete`.
async fn peer<S: IdempotencyStore>(store: &S, key: &str, fresh: bool) {
    let (_, fingerprint) = fingerprints();
    let key = peer_key(key);
    let entry = IdempotencyEntry::new(fingerprint, TTL);
    match store
        .try_insert(&key, entry.clone())
        .await
        .expect("an insert")
    {
        InsertResult::Claimed { fencing_token } => {
            assert!(fresh, "a completed key");
            let response = CachedResponse {
                status_code: 201,
                metadata: Metadata::default(),
                body: bytes::Bytes::from_static(RESPONSE),
            };
            store
                .complete(&key, entry.complete(response), fencing_token)
                .await
                .expect("completed");
        }
        InsertResult::Exists(existing) => {
            assert!(!fresh, "a fresh key");
            match existing {
                idempotent::entry::ExistingEntry::Completed(entry) => {
                    assert_eq!(entry.response().body.len(), RESPONSE.len());
                }
                idempotent::entry::ExistingEntry::Processing(_) => panic!("in progress"),
            }
        }
    }
}

/// The memory floor: in-progress entries are empty vectors.
#[derive(Default)]
struct MapFloor(Mutex<HashMap<String, Vec<u8>>>);

impl MapFloor {
    fn call(&self, key: &str, fresh: bool) {
        let key = format!("4:idem|0:|12:bench.charge|{key}");
        let mut map = self.0.lock().expect("not poisoned");
        match map.get(&key) {
            Some(response) => {
                let response = response.clone();
                drop(map);
                assert!(!fresh && response.len() == RESPONSE.len(), "a fresh key");
            }
            None => {
                assert!(fresh, "a completed key");
                map.insert(key.clone(), Vec::new());
                drop(map);
                let response = RESPONSE.to_vec();
                *self
                    .0
                    .lock()
                    .expect("not poisoned")
                    .get_mut(&key)
                    .expect("claimed") = response;
            }
        }
    }
}

/// The Redis floor: our store's commands by hand.
async fn redis_floor(raw: &mut ConnectionManager, sha: &str, key: &str, fresh: bool) {
    let key = format!("{{}}4:idem|0:|12:bench.charge|floor-{key}");
    let existing: Option<Vec<u8>> = redis::cmd("SET")
        .arg(&key)
        .arg(&IN_PROGRESS[..])
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .arg("GET")
        .query_async(raw)
        .await
        .expect("SET NX GET");
    if !fresh {
        assert!(existing.is_some_and(|r| r[1] == b'C'), "a completed record");
        return;
    }
    assert!(existing.is_none(), "a fresh key");
    let mut completed = Vec::with_capacity(21 + RESPONSE.len());
    completed.extend_from_slice(&[2, b'C']);
    completed.extend_from_slice(&[0; 16]);
    completed.extend_from_slice(RESPONSE);
    let answer: i64 = redis::cmd("EVALSHA")
        .arg(sha)
        .arg(1)
        .arg(&key)
        .arg(&IN_PROGRESS[..])
        .arg(completed)
        .arg(86_400_000)
        .arg("idempotent:done")
        .query_async(raw)
        .await
        .expect("EVALSHA");
    assert_eq!(answer, 1, "the floor held its lease");
}

/// The Redis baseline: no protocol.
async fn redis_raw(raw: &mut ConnectionManager, key: &str, fresh: bool) {
    let key = format!("raw-{key}");
    if fresh {
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg("P")
            .arg("NX")
            .arg("PX")
            .arg(30_000)
            .query_async(raw)
            .await
            .expect("SET NX");
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&RESPONSE[..])
            .arg("PX")
            .arg(86_400_000)
            .query_async(raw)
            .await
            .expect("SET");
    } else {
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&key)
            .query_async(raw)
            .await
            .expect("GET");
        assert!(value.is_some(), "a stored value");
    }
}

/// The cells' names, in the order they run and print.
const MEMORY: [&str; 4] = ["floor", "ours, store", "ours, engine", "peer"];
const REDIS: [&str; 5] = ["floor", "baseline", "ours, store", "ours, engine", "peer"];

/// `results[(store, path, tasks, cell)]`: one figure a round.
type Results = HashMap<(&'static str, &'static str, u64, &'static str), Vec<f64>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let test_mode = args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench");
    let rounds: usize = if test_mode {
        1
    } else {
        args.iter().find_map(|a| a.parse().ok()).unwrap_or(3)
    };
    let seconds: f64 = if test_mode {
        0.05
    } else {
        std::env::var("PEER_BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1.0)
    };
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut results = Results::new();
    runtime.block_on(async {
        let url = server.url();
        let client = redis::Client::open(url.as_str()).expect("a client");
        let raw = ConnectionManager::new(client.clone())
            .await
            .expect("a connection");
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(COMPLETE)
            .query_async(&mut raw.clone())
            .await
            .expect("SCRIPT LOAD");
        let ours_redis = RedisStore::connect(&url).await.expect("our Redis store");
        let ours_redis_engine = Idempotency::new(ours_redis.clone());
        let peer_redis = Arc::new(
            ValkeyStore::with_prefix(client.clone(), Some("peer"))
                .await
                .expect("the peer's Valkey store"),
        );
        // The replayed keys, on every side.
        let memory_floor = Arc::new(MapFloor::default());
        let ours_memory = MemoryStore::builder().unbounded().build();
        let ours_memory_engine = Idempotency::new(ours_memory.clone());
        let peer_memory = Arc::new(idempotent::store::memory::MemoryStore::new(
            1024,
            Duration::from_secs(3600),
        ));
        for i in 0..REPLAY_KEYS {
            let (store_key, engine_key) = (format!("replay-{i}"), format!("engine-replay-{i}"));
            memory_floor.call(&store_key, true);
            ours_store(&ours_memory, &store_key, true).await;
            ours_engine(&ours_memory_engine, &engine_key).await;
            peer(&*peer_memory, &store_key, true).await;
            redis_floor(&mut raw.clone(), &sha, &store_key, true).await;
            redis_raw(&mut raw.clone(), &store_key, true).await;
            ours_store(&ours_redis, &store_key, true).await;
            ours_engine(&ours_redis_engine, &engine_key).await;
            peer(&*peer_redis, &store_key, true).await;
        }
        for round in 0..rounds {
            for path in ["fresh", "replay"] {
                let fresh = path == "fresh";
                for tasks in TASKS {
                    // Fresh keys: unique per round, path, task count and cell.
                    let key = move |cell: &str, n: u64| {
                        if fresh {
                            format!("{cell}-{round}-{tasks}-{n}")
                        } else {
                            format!("replay-{}", n % REPLAY_KEYS)
                        }
                    };
                    let engine_key = move |cell: &str, n: u64| {
                        if fresh {
                            key(cell, n)
                        } else {
                            format!("engine-replay-{}", n % REPLAY_KEYS)
                        }
                    };
                    // Memory: a fresh cell on empty stores of its own.
                    let (floor, store, engine, peer_store) = if fresh {
                        let store = MemoryStore::builder().unbounded().build();
                        (
                            Arc::new(MapFloor::default()),
                            store.clone(),
                            Idempotency::new(store),
                            Arc::new(idempotent::store::memory::MemoryStore::new(
                                1024,
                                Duration::from_secs(3600),
                            )),
                        )
                    } else {
                        (
                            Arc::clone(&memory_floor),
                            ours_memory.clone(),
                            ours_memory_engine.clone(),
                            Arc::clone(&peer_memory),
                        )
                    };
                    let mut figures = Vec::new();
                    figures.push(
                        throughput(seconds, tasks, move |n| {
                            floor.call(&key("mf", n), fresh);
                            std::future::ready(())
                        })
                        .await,
                    );
                    figures.push(
                        throughput(seconds, tasks, move |n| {
                            let store = store.clone();
                            async move { ours_store(&store, &key("ms", n), fresh).await }
                        })
                        .await,
                    );
                    figures.push(
                        throughput(seconds, tasks, move |n| {
                            let engine = engine.clone();
                            async move { ours_engine(&engine, &engine_key("me", n)).await }
                        })
                        .await,
                    );
                    figures.push(
                        throughput(seconds, tasks, move |n| {
                            let peer_store = Arc::clone(&peer_store);
                            async move { peer(&*peer_store, &key("mp", n), fresh).await }
                        })
                        .await,
                    );
                    for (cell, figure) in MEMORY.into_iter().zip(figures) {
                        results
                            .entry(("memory", path, tasks, cell))
                            .or_default()
                            .push(figure);
                    }
                    // Redis.
                    let mut figures = Vec::new();
                    figures.push({
                        let (raw, sha) = (raw.clone(), sha.clone());
                        throughput(seconds, tasks, move |n| {
                            let (mut raw, sha) = (raw.clone(), sha.clone());
                            async move { redis_floor(&mut raw, &sha, &key("rf", n), fresh).await }
                        })
                        .await
                    });
                    figures.push({
                        let raw = raw.clone();
                        throughput(seconds, tasks, move |n| {
                            let mut raw = raw.clone();
                            async move { redis_raw(&mut raw, &key("rr", n), fresh).await }
                        })
                        .await
                    });
                    figures.push({
                        let store = ours_redis.clone();
                        throughput(seconds, tasks, move |n| {
                            let store = store.clone();
                            async move { ours_store(&store, &key("rs", n), fresh).await }
                        })
                        .await
                    });
                    figures.push({
                        let engine = ours_redis_engine.clone();
                        throughput(seconds, tasks, move |n| {
                            let engine = engine.clone();
                            async move { ours_engine(&engine, &engine_key("re", n)).await }
                        })
                        .await
                    });
                    figures.push({
                        let store = Arc::clone(&peer_redis);
                        throughput(seconds, tasks, move |n| {
                            let store = Arc::clone(&store);
                            async move { peer(&*store, &key("rp", n), fresh).await }
                        })
                        .await
                    });
                    for (cell, figure) in REDIS.into_iter().zip(figures) {
                        results
                            .entry(("redis", path, tasks, cell))
                            .or_default()
                            .push(figure);
                    }
                }
            }
            eprintln!("round {} of {rounds} done", round + 1);
        }
    });
    print_tables(&results, rounds);
}

fn median(figures: &[f64]) -> f64 {
    let mut sorted = figures.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn print_tables(results: &Results, rounds: usize) {
    let figure = |key| median(&results[&key]);
    println!("Median of {rounds} round(s), operations per second:\n");
    println!(
        "| path | tasks | floor (map) | ours, store | ours, engine | peer | ours, store / floor | ours, store / peer | ours, engine / peer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for path in ["fresh", "replay"] {
        for tasks in TASKS {
            let cells: Vec<f64> = MEMORY
                .iter()
                .map(|cell| figure(("memory", path, tasks, *cell)))
                .collect();
            println!(
                "| {path} | {tasks} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.2}x | {:.2}x |",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                100.0 * cells[1] / cells[0],
                cells[1] / cells[3],
                cells[2] / cells[3]
            );
        }
    }
    println!();
    println!(
        "| path | tasks | floor (our commands) | baseline (raw) | ours, store | ours, engine | peer | ours, store / floor | ours, engine / floor | ours, store / peer | ours, engine / peer |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for path in ["fresh", "replay"] {
        for tasks in TASKS {
            let cells: Vec<f64> = REDIS
                .iter()
                .map(|cell| figure(("redis", path, tasks, *cell)))
                .collect();
            println!(
                "| {path} | {tasks} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0}% | {:.0}% | {:.2}x | {:.2}x |",
                cells[0],
                cells[1],
                cells[2],
                cells[3],
                cells[4],
                100.0 * cells[2] / cells[0],
                100.0 * cells[3] / cells[0],
                cells[2] / cells[4],
                cells[3] / cells[4]
            );
        }
    }
    if rounds > 1 {
        println!("\nEach round (operations per second):\n");
        let mut keys: Vec<_> = results.keys().collect();
        keys.sort_by_key(|(store, path, tasks, cell)| (*store, *path, *tasks, *cell));
        for key in keys {
            let rounds: Vec<String> = results[key].iter().map(|f| format!("{f:.0}")).collect();
            println!(
                "- {} {} {} tasks, {}: {}",
                key.0,
                key.1,
                key.2,
                key.3,
                rounds.join(", ")
            );
        }
    }
}
