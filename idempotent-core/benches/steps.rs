//! What a journaled step costs, on the memory store and on Redis, in one run:
//!
//! - floor: the store's bare claim and completion (`Store::claim`, then
//!   `Store::complete`), no engine: what any call must do;
//! - a call of the engine with no step, with 1 step, and with 3 steps.
//!
//! A call's first step reads the call's steps (one store call), each step
//! records its value (one store call: a Lua script on Redis), and the
//! completed call deletes its steps (one store call); so one step costs
//! three store calls and each further step one. Printed as time per call,
//! at 1 and 16 concurrent tasks on a 2-worker runtime.
//!
//! Run: `cargo bench -p idempotent-core --features redis --bench steps`. It
//! starts its own `redis-server` on a free port.

#[path = "../tests/support/redis_server.rs"]
mod redis_server;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::memory::MemoryStore;
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Fingerprint, Idempotency, Operation, Steps, Store};

static OP: Operation = Operation::new("bench.checkout");

/// What one measured call does.
#[derive(Clone, Copy)]
enum Work {
    Floor,
    Steps(usize),
}

/// Runs `calls` calls of `work` on fresh keys, `tasks` at a time; the time
/// per call.
async fn measure(
    store: Arc<dyn Store>,
    runtime: &Idempotency,
    work: Work,
    calls: u64,
    tasks: u64,
) -> Duration {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let (store, runtime) = (store.clone(), runtime.clone());
        handles.push(tokio::spawn(async move {
            for _ in 0..calls / tasks {
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                one(&store, &runtime, work, n).await;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("a bench task");
    }
    started.elapsed() / u32::try_from(calls).expect("calls fit")
}

async fn one(store: &Arc<dyn Store>, runtime: &Idempotency, work: Work, n: u64) {
    let key = format!("k{n}");
    match work {
        Work::Floor => {
            let storage = StorageKey::new("idem", "", OP.name(), &key.parse().expect("a key"));
            let fp = Fingerprint::from_u128(u128::from(n));
            let ClaimOutcome::Acquired(lease) = store
                .claim(&storage, fp, Duration::from_secs(30))
                .await
                .expect("claim")
            else {
                panic!("a fresh key is acquired")
            };
            store
                .complete(
                    &storage,
                    lease.token,
                    fp,
                    b"O\"done\"",
                    Duration::from_secs(600),
                )
                .await
                .expect("complete");
        }
        Work::Steps(count) => {
            let steps = Steps::new();
            let call = runtime.call(&OP).key(&key).payload(&n);
            let call = if count > 0 { call.steps(&steps) } else { call };
            call.run(async {
                for i in 0..count {
                    steps
                        .run(["charge", "reserve", "email"][i % 3], async {
                            Ok::<_, Error>(i as u64)
                        })
                        .await?;
                }
                Ok::<_, Error>(n)
            })
            .await
            .expect("a call");
        }
    }
}

async fn table(name: &str, store: Arc<dyn Store>, calls: u64) {
    let runtime = Idempotency::builder_shared(store.clone()).build();
    for tasks in [1, 16] {
        let mut row = Vec::new();
        for work in [Work::Floor, Work::Steps(0), Work::Steps(1), Work::Steps(3)] {
            // A warm-up, then the measured run.
            measure(store.clone(), &runtime, work, calls / 10, tasks).await;
            row.push(measure(store.clone(), &runtime, work, calls, tasks).await);
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {name} | {tasks} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            us(row[0]),
            us(row[1]),
            us(row[2]),
            us(row[3]),
            us(row[2]) - us(row[1]),
        );
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let server = redis_server::RedisServer::start();
    println!(
        "| store | tasks | floor: claim + complete (µs/call) | call, no step | call, 1 step | \
         call, 3 steps | one step's cost |"
    );
    println!("|---|---|---|---|---|---|---|");
    runtime.block_on(async {
        table(
            "memory",
            Arc::new(MemoryStore::builder().unbounded().build()),
            100_000,
        )
        .await;
        let redis = RedisStore::connect(&server.url()).await.expect("redis");
        table("Redis", Arc::new(redis), 10_000).await;
    });
}
