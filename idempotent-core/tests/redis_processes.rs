//! Two separate OS processes sharing one Redis race on the same keys: each
//! key's body runs exactly once across both.
//!
//! The test binary runs itself twice as the racing processes (selected by an
//! environment variable). The body's side effect is an `INCR` in Redis, so
//! executions in both processes are counted in one place.
#![cfg(feature = "redis")]

mod support;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idempotent_core::redis::RedisStore;
use idempotent_core::{Error, Idempotency, Operation};
use redis::AsyncCommands as _;
use support::redis_server::RedisServer;

const KEYS: u64 = 300;
const CHILD_URL: &str = "IDEMPOTENT_RACE_URL";
const CHILD_START: &str = "IDEMPOTENT_RACE_START_MS";

static OP: Operation = Operation::new("race.charge").wait(Duration::from_secs(10));

#[test]
fn two_processes_execute_each_key_once() {
    if let Ok(url) = std::env::var(CHILD_URL) {
        let start: u64 = std::env::var(CHILD_START).unwrap().parse().unwrap();
        return race(&url, start);
    }
    let server = RedisServer::start();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let start = now + 1_500; // both children are up by then
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "two_processes_execute_each_key_once",
                    "--exact",
                    "--nocapture",
                ])
                .env(CHILD_URL, server.url())
                .env(CHILD_START, start.to_string())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a racing process failed");
    }
    for key in 0..KEYS {
        let count = server.command(&["GET", &format!("effects:{key}")]).unwrap();
        assert_eq!(count, "$1\r\n1\r\n", "key {key} ran {count:?} times");
    }
    let calls = server.command(&["GET", "calls"]).unwrap();
    assert_eq!(
        calls,
        format!("${}\r\n{}\r\n", (2 * KEYS).to_string().len(), 2 * KEYS)
    );
}

fn race(url: &str, start_ms: u64) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = RedisStore::connect(url).await.unwrap();
        let idem = Idempotency::new(store);
        let client = redis::Client::open(url).unwrap();
        let effects = client.get_multiplexed_async_connection().await.unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        tokio::time::sleep(Duration::from_millis(start_ms.saturating_sub(now))).await;
        let tasks: Vec<_> = (0..16)
            .map(|worker| {
                let idem = idem.clone();
                let mut effects = effects.clone();
                tokio::spawn(async move {
                    for key in (worker..KEYS).step_by(16) {
                        let mut side_effects = effects.clone();
                        let value = idem
                            .call(&OP)
                            .key(&key)
                            .payload(&key)
                            .run(async move {
                                let n: u64 = side_effects
                                    .incr(format!("effects:{key}"), 1)
                                    .await
                                    .unwrap();
                                tokio::time::sleep(Duration::from_millis(2)).await;
                                Ok::<_, Error>(n)
                            })
                            .await
                            .unwrap_or_else(|e| panic!("key {key}: {e}"));
                        assert_eq!(
                            value.value, 1,
                            "every caller sees the one execution's answer"
                        );
                        let _: u64 = effects.incr("calls", 1).await.unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}
