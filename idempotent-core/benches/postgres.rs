//! The PostgreSQL store against raw SQL on the same database, in one run:
//!
//! - fresh: the engine's claim + complete against a raw
//!   `INSERT ... ON CONFLICT DO NOTHING` then `UPDATE` of the same row;
//! - replay: the engine's claim of a completed key against a raw `SELECT`
//!   (both over 100 stored keys);
//! - transactional: `run_in_transaction` with a ledger insert against the same
//!   business transaction (`BEGIN; INSERT INTO ledger; COMMIT`) without
//!   idempotency;
//!
//! at 1 and 16 concurrent tasks. Prints a Markdown table (BENCHMARKS.md).
//! Run: `cargo bench -p idempotent-core --features postgres --bench postgres`
//! (uses `IDEMPOTENT_TEST_POSTGRES`, default the local server, in a schema
//! of its own, dropped at the end). With `--test` it runs a few operations.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::TxBody;
use idempotent_core::postgres::PostgresStore;
use idempotent_core::{Error, Idempotency, Operation};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection};

static FRESH: Operation = Operation::new("bench.fresh");
static REPLAY: Operation = Operation::new("bench.replay");
static TX: Operation = Operation::new("bench.tx").wait(Duration::from_secs(10));

async fn throughput<F, Fut>(total: u64, tasks: u64, op: F) -> f64
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..tasks)
        .map(|_| {
            let (op, next) = (Arc::clone(&op), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    op(i).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker");
    }
    total as f64 / started.elapsed().as_secs_f64()
}

fn ledger_insert(
    amount: i64,
) -> impl for<'c> FnOnce(&'c mut PgConnection) -> TxBody<'c, i64, Error> {
    move |tx| {
        Box::pin(async move {
            sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
                .bind(amount)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| Error::StoreUnavailable(idempotent_core::StoreError::unavailable(e)))
        })
    }
}

fn main() {
    let test_mode =
        std::env::args().any(|a| a == "--test") || !std::env::args().any(|a| a == "--bench");
    let url = std::env::var("IDEMPOTENT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let schema = format!("idem_bench_{}", std::process::id());
        let admin: PgConnectOptions = url.parse().expect("a PostgreSQL URL");
        let mut connection = PgConnection::connect_with(&admin)
            .await
            .expect("PostgreSQL is needed for this benchmark");
        connection
            .execute(
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
            )
            .await
            .expect("a schema");
        let options = admin.clone().options([("search_path", schema.as_str())]);
        let store = PostgresStore::with_options(options.clone(), Duration::from_secs(5));
        store.migrate().await.expect("migrated");
        let raw: PgPool = PgPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await
            .expect("a pool");
        raw.execute(
            "CREATE TABLE ledger (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL);
             CREATE TABLE raw_records (key TEXT PRIMARY KEY, response BYTEA)",
        )
        .await
        .expect("tables");
        let idem = Idempotency::new(store.clone());
        let total = |tasks: u64| {
            if test_mode {
                20
            } else if tasks == 1 {
                1_000
            } else {
                5_000
            }
        };
        println!("| path | tasks | engine (op/s) | raw baseline (op/s) | engine / baseline |");
        println!("|---|---|---|---|---|");
        for tasks in [1u64, 16] {
            let n = total(tasks);
            let prefix = format!("t{tasks}");
            // Fresh.
            let engine = {
                let (idem, prefix) = (idem.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (idem, key) = (idem.clone(), format!("{prefix}-fresh-{i}"));
                    async move {
                        idem.call(&FRESH)
                            .key(&key)
                            .run(async { Ok::<_, Error>(i) })
                            .await
                            .expect("fresh");
                    }
                })
                .await
            };
            let baseline = {
                let (raw, prefix) = (raw.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (raw, key) = (raw.clone(), format!("{prefix}-fresh-{i}"));
                    async move {
                        sqlx::query(
                            "INSERT INTO raw_records (key) VALUES ($1) ON CONFLICT DO NOTHING",
                        )
                        .bind(&key)
                        .execute(&raw)
                        .await
                        .expect("insert");
                        sqlx::query("UPDATE raw_records SET response = $2 WHERE key = $1")
                            .bind(&key)
                            .bind(b"O1".as_slice())
                            .execute(&raw)
                            .await
                            .expect("update");
                    }
                })
                .await
            };
            println!(
                "| fresh | {tasks} | {engine:.0} | {baseline:.0} | {:.0}% |",
                100.0 * engine / baseline
            );
            // Replay: keys written above.
            let engine = {
                let (idem, prefix) = (idem.clone(), prefix.clone());
                for k in 0..100 {
                    idem.call(&REPLAY)
                        .key(&format!("{prefix}-r{k}"))
                        .run(async { Ok::<_, Error>(0u64) })
                        .await
                        .expect("seed");
                }
                throughput(n, tasks, move |i| {
                    let (idem, key) = (idem.clone(), format!("{prefix}-r{}", i % 100));
                    async move {
                        let done = idem
                            .call(&REPLAY)
                            .key(&key)
                            .run(async { Ok::<_, Error>(0u64) })
                            .await
                            .expect("replay");
                        assert!(done.replayed);
                    }
                })
                .await
            };
            let baseline = {
                let (raw, prefix) = (raw.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (raw, key) = (raw.clone(), format!("{prefix}-fresh-{}", i % 100));
                    async move {
                        let _: Option<Vec<u8>> =
                            sqlx::query_scalar("SELECT response FROM raw_records WHERE key = $1")
                                .bind(&key)
                                .fetch_optional(&raw)
                                .await
                                .expect("select")
                                .flatten();
                    }
                })
                .await
            };
            println!(
                "| replay | {tasks} | {engine:.0} | {baseline:.0} | {:.0}% |",
                100.0 * engine / baseline
            );
            // Transactional.
            let engine = {
                let (idem, store, prefix) = (idem.clone(), store.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (idem, store, key) =
                        (idem.clone(), store.clone(), format!("{prefix}-tx-{i}"));
                    async move {
                        idem.call(&TX)
                            .key(&key)
                            .run_in_transaction(&store, ledger_insert(i as i64))
                            .await
                            .expect("a transactional charge");
                    }
                })
                .await
            };
            let baseline = {
                let raw = raw.clone();
                throughput(n, tasks, move |i| {
                    let raw = raw.clone();
                    async move {
                        let mut tx = raw.begin().await.expect("begin");
                        let _: i64 = sqlx::query_scalar(
                            "INSERT INTO ledger (amount) VALUES ($1) RETURNING id",
                        )
                        .bind(i as i64)
                        .fetch_one(&mut *tx)
                        .await
                        .expect("insert");
                        tx.commit().await.expect("commit");
                    }
                })
                .await
            };
            println!(
                "| transactional | {tasks} | {engine:.0} | {baseline:.0} | {:.0}% |",
                100.0 * engine / baseline
            );
        }
        drop(raw);
        connection
            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await
            .expect("drop the schema");
    });
}
