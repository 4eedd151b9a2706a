//! The Redis store against raw redis-rs on the same server, in one run.
//!
//! - fresh: the engine's claim (`SET ... NX PX ... GET`) and complete (one
//!   script) against `SET key v NX PX` followed by `SET key response PX`;
//! - replay: the engine's claim of a completed key (`SET ... NX ... GET`,
//!   then decoding) against `GET`;
//!
//! each with 1, 8 and 64 concurrent tasks on a 2-worker runtime, reported as
//! time per operation (criterion's throughput shows operations per second).
//!
//! A third function, `floor`, sends the store's own commands through raw
//! redis-rs, with no engine: the same `SET ... NX PX ... GET` claim, and for
//! fresh keys the same completion script (`EVALSHA`, the store's own
//! source). It is what the store's protocol costs on this server, so
//! `engine / floor` is the engine's own overhead and `floor / raw` what the
//! fenced protocol costs against the unfenced baseline.
//!
//! Before the groups run, it prints `MEMORY USAGE` of one record holding a
//! 200-byte response.
//!
//! `engine+cache` is the engine behind a `LocalCache`: its replays are of
//! keys it completed itself, so they are served from memory.
//!
//! Run: `cargo bench -p idempotent-core --features redis --bench redis`.
//! It starts its own `redis-server` on a free port.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Fingerprint, Idempotency, LocalCache, Operation, Store};
use redis::aio::ConnectionManager;
use redis_server::RedisServer;

static OP: Operation = Operation::new("bench.charge");
const REPLAY_KEYS: u64 = 10_000;
/// A response of about 200 bytes once encoded.
const RESPONSE: &str = "ch_3Nx8Jk2eZvKYlo2C0x1y2z3a-receipt-0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

struct Setup {
    _server: RedisServer,
    runtime: tokio::runtime::Runtime,
    idem: Idempotency,
    /// The same store behind a `LocalCache` of 64 MiB.
    cached: Idempotency,
    raw: ConnectionManager,
    complete_sha: String,
    next: Arc<AtomicU64>,
}

/// The store's completion script, the one `RedisStore` sends.
const COMPLETE: &str = include_str!("../src/store/redis/complete.lua");
/// What a claim writes: the layout, 'P', a fingerprint and a lease token (34 bytes).
const IN_PROGRESS: [u8; 34] = [b'P'; 34];

fn setup() -> Setup {
    let server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (idem, cached, raw, complete_sha) = runtime.block_on(async {
        let store = RedisStore::connect(&server.url()).await.expect("store");
        let raw = ConnectionManager::new(redis::Client::open(server.url()).expect("client"))
            .await
            .expect("raw connection");
        let idem = Idempotency::new(store.clone());
        let cached = Idempotency::new(LocalCache::new(store.clone(), 64 << 20));
        print_memory_usage(&server, &store).await;
        let complete_sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(COMPLETE)
            .query_async(&mut raw.clone())
            .await
            .expect("SCRIPT LOAD");
        for i in 0..REPLAY_KEYS {
            engine_call(&idem, &format!("replay-{i}")).await;
            // Completed through the cache, so it holds them.
            engine_call(&cached, &format!("cached-replay-{i}")).await;
            let _: () = redis::cmd("SET")
                .arg(format!("raw-replay-{i}"))
                .arg(RESPONSE)
                .query_async(&mut raw.clone())
                .await
                .expect("SET");
            floor_claim(&mut raw.clone(), &floor_key("replay", i)).await;
            floor_complete(&mut raw.clone(), &complete_sha, &floor_key("replay", i)).await;
        }
        (idem, cached, raw, complete_sha)
    });
    Setup {
        _server: server,
        runtime,
        idem,
        cached,
        raw,
        complete_sha,
        next: Arc::new(AtomicU64::new(0)),
    }
}

async fn print_memory_usage(server: &RedisServer, store: &RedisStore) {
    let key = StorageKey::new(
        "idem",
        "",
        "payments.charge",
        &"8e03978e-40d5-43e8-bc93-6894a57f9324".parse().expect("key"),
    );
    let fingerprint = Fingerprint::of(&1);
    let ClaimOutcome::Acquired(lease) = store
        .claim(&key, fingerprint, Duration::from_secs(30))
        .await
        .expect("claim")
    else {
        panic!("fresh key")
    };
    store
        .complete(
            &key,
            lease.token,
            fingerprint,
            &[b'x'; 200],
            Duration::from_secs(86_400),
        )
        .await
        .expect("complete");
    let usage = server
        .command(&["MEMORY", "USAGE", &store.redis_key(&key)])
        .expect("MEMORY USAGE");
    println!(
        "MEMORY USAGE of one record with a 200-byte response (key {} bytes): {}",
        store.redis_key(&key).len(),
        usage.trim()
    );
}

async fn engine_call(idem: &Idempotency, key: &str) {
    idem.call(&OP)
        .key(key)
        .payload(&1000)
        .run(async { Ok::<_, Error>(RESPONSE.to_owned()) })
        .await
        .expect("engine call");
}

/// A Redis key as the store writes one: `{}` and a storage key
/// (namespace, scope and operation, each after its length, then the key).
fn floor_key(path: &str, n: u64) -> String {
    format!("{{}}4:idem|0:|12:bench.charge|floor-{path}-{n}")
}

/// The store's claim: the in-progress record if the key is free, and
/// otherwise the record that is there.
async fn floor_claim(raw: &mut ConnectionManager, key: &str) -> Option<Vec<u8>> {
    redis::cmd("SET")
        .arg(key)
        .arg(&IN_PROGRESS[..])
        .arg("NX")
        .arg("PX")
        .arg(30_000)
        .arg("GET")
        .query_async(raw)
        .await
        .expect("SET NX GET")
}

/// The store's completion: its script, with a record of the size the
/// engine writes (the layout, 'C', a fingerprint, the engine's `O` tag of
/// an `Ok`, the response as JSON).
async fn floor_complete(raw: &mut ConnectionManager, sha: &str, key: &str) {
    let mut completed = Vec::with_capacity(21 + RESPONSE.len());
    completed.extend_from_slice(&[2, b'C']);
    completed.extend_from_slice(&[0; 16]);
    completed.push(b'O');
    completed.push(b'"');
    completed.extend_from_slice(RESPONSE.as_bytes());
    completed.push(b'"');
    let answer: i64 = redis::cmd("EVALSHA")
        .arg(sha)
        .arg(1)
        .arg(key)
        .arg(&IN_PROGRESS[..])
        .arg(completed)
        .arg(86_400_000)
        .arg("idempotent:done")
        .query_async(raw)
        .await
        .expect("EVALSHA");
    assert_eq!(answer, 1, "the floor's completion held its lease");
}

/// Runs `ops` operations on `tasks` tasks; returns the elapsed time. The
/// tasks take operations from one shared counter until `ops` are taken, so
/// every task stays busy to the end: with a fixed share each, a task that
/// fell behind would finish alone, and the run would end at lower
/// concurrency than it claims.
fn run_concurrent<F, Fut>(setup: &Setup, tasks: u64, ops: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::clone(&setup.next);
    setup.runtime.block_on(async move {
        let end = next.load(Ordering::Relaxed) + ops;
        let started = Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let op = op.clone();
                let next = Arc::clone(&next);
                tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= end {
                            break;
                        }
                        op(n).await;
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await.expect("task");
        }
        started.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let setup = setup();
    for path in ["fresh", "replay"] {
        let mut group = c.benchmark_group(format!("redis/{path}"));
        group
            .sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        group.throughput(Throughput::Elements(1));
        for tasks in [1u64, 8, 64] {
            group.bench_with_input(BenchmarkId::new("engine", tasks), &tasks, |b, &tasks| {
                b.iter_custom(|ops| {
                    let idem = setup.idem.clone();
                    run_concurrent(&setup, tasks, ops, move |n| {
                        let idem = idem.clone();
                        async move {
                            let key = if path == "fresh" {
                                format!("fresh-{n}")
                            } else {
                                format!("replay-{}", n % REPLAY_KEYS)
                            };
                            engine_call(&idem, &key).await;
                        }
                    })
                });
            });
            group.bench_with_input(
                BenchmarkId::new("engine+cache", tasks),
                &tasks,
                |b, &tasks| {
                    b.iter_custom(|ops| {
                        let cached = setup.cached.clone();
                        run_concurrent(&setup, tasks, ops, move |n| {
                            let cached = cached.clone();
                            async move {
                                let key = if path == "fresh" {
                                    format!("cached-fresh-{n}")
                                } else {
                                    format!("cached-replay-{}", n % REPLAY_KEYS)
                                };
                                engine_call(&cached, &key).await;
                            }
                        })
                    });
                },
            );
            group.bench_with_input(BenchmarkId::new("raw", tasks), &tasks, |b, &tasks| {
                b.iter_custom(|ops| {
                    let raw = setup.raw.clone();
                    run_concurrent(&setup, tasks, ops, move |n| {
                        let mut raw = raw.clone();
                        async move {
                            if path == "fresh" {
                                let key = format!("raw-fresh-{n}");
                                let _: Option<String> = redis::cmd("SET")
                                    .arg(&key)
                                    .arg("P")
                                    .arg("NX")
                                    .arg("PX")
                                    .arg(30_000)
                                    .query_async(&mut raw)
                                    .await
                                    .expect("SET NX");
                                let _: () = redis::cmd("SET")
                                    .arg(&key)
                                    .arg(RESPONSE)
                                    .arg("PX")
                                    .arg(86_400_000)
                                    .query_async(&mut raw)
                                    .await
                                    .expect("SET");
                            } else {
                                let _: Option<Vec<u8>> = redis::cmd("GET")
                                    .arg(format!("raw-replay-{}", n % REPLAY_KEYS))
                                    .query_async(&mut raw)
                                    .await
                                    .expect("GET");
                            }
                        }
                    })
                });
            });
            group.bench_with_input(BenchmarkId::new("floor", tasks), &tasks, |b, &tasks| {
                b.iter_custom(|ops| {
                    let raw = setup.raw.clone();
                    let sha = setup.complete_sha.clone();
                    run_concurrent(&setup, tasks, ops, move |n| {
                        let mut raw = raw.clone();
                        let sha = sha.clone();
                        async move {
                            if path == "fresh" {
                                let key = floor_key("fresh", n);
                                let claimed = floor_claim(&mut raw, &key).await;
                                assert!(claimed.is_none(), "a fresh key");
                                floor_complete(&mut raw, &sha, &key).await;
                            } else {
                                let key = floor_key("replay", n % REPLAY_KEYS);
                                let record = floor_claim(&mut raw, &key).await;
                                assert!(record.is_some_and(|r| r[1] == b'C'), "a completed record");
                            }
                        }
                    })
                });
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
