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
//! and, beside each, the **floor**: the store's own SQL (its claim, its
//! fenced completion, the same-transaction mode's statements) sent through
//! raw sqlx on a pool of the same size, with no engine and no store code.
//! The statements are copies; the bench checks at start that the store's
//! source still holds each of them verbatim, so a change there fails it.
//!
//! at 1, 16 and 64 concurrent tasks (16 pooled connections a side). Prints
//! a Markdown table (BENCHMARKS.md).
//! Run: `cargo bench -p idempotent-core --features postgres --bench postgres`
//! (uses `IDEMPOTENT_TEST_POSTGRES`, default the local server, in a schema
//! of its own, dropped at the end). With `--test` it runs a few operations.

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use idempotent_core::TxBody;
use idempotent_core::postgres::PostgresStore;
use idempotent_core::{Error, Idempotency, Operation};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, PgConnection, Row as _};

static FRESH: Operation = Operation::new("bench.fresh");
static REPLAY: Operation = Operation::new("bench.replay");
static TX: Operation = Operation::new("bench.tx").wait(Duration::from_secs(10));

// The store's SQL, copied: `claim_statement!` in `src/store/postgres/layout.rs`
// (its three literals), the filters `TX_CLAIM` passes it in
// `transaction.rs`, the completions in `mod.rs` and `transaction.rs`.
const CLAIM_HEAD: &str = "
WITH live AS (
    SELECT fingerprint, token, response, deadline, layout FROM idempotency_records
    WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4 AND deadline > now()";
const CLAIM_MIDDLE: &str = "
), claimed AS (
    INSERT INTO idempotency_records AS r
        (namespace, scope, operation, key, fingerprint, token, response, deadline, layout)
    SELECT $1, $2, $3, $4, $5, $6, NULL, now() + $7 * interval '1 millisecond', 2
    WHERE NOT EXISTS (SELECT 1 FROM live)";
const CLAIM_TAIL: &str = "
    ON CONFLICT (namespace, scope, operation, key) DO UPDATE SET
        fingerprint = CASE WHEN r.deadline <= now() THEN EXCLUDED.fingerprint ELSE r.fingerprint END,
        token       = CASE WHEN r.deadline <= now() THEN EXCLUDED.token ELSE r.token END,
        response    = CASE WHEN r.deadline <= now() THEN NULL ELSE r.response END,
        deadline    = CASE WHEN r.deadline <= now()
            THEN clock_timestamp() + $7 * interval '1 millisecond' ELSE r.deadline END,
        layout      = CASE WHEN r.deadline <= now() THEN EXCLUDED.layout ELSE r.layout END
    RETURNING fingerprint, token, response, deadline, layout
)
SELECT fingerprint, token, response, layout,
    (token IS NOT DISTINCT FROM $6) AS acquired,
    ceil(extract(epoch FROM (deadline - now())) * 1000)::bigint AS remaining_ms
FROM (SELECT * FROM claimed UNION ALL SELECT * FROM live) AS row
LIMIT 1";
const TX_LIVE_FILTER: &str = " AND response IS NOT NULL";
const TX_INSERT_FILTER: &str = " AND ($8::text IS NULL OR pg_try_advisory_xact_lock(
          hashtextextended($8::text, 'idempotency_records'::regclass::oid::bigint)))";
const COMPLETE: &str = "UPDATE idempotency_records
                     SET token = NULL, response = $6, deadline = now() + $7 * interval '1 millisecond'
                     WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4
                       AND token = $5 AND deadline > now() AND fingerprint = $8";
const TX_COMPLETE: &str = "UPDATE idempotency_records SET token = NULL, response = $5
             WHERE namespace = $1 AND scope = $2 AND operation = $3 AND key = $4";
/// What the engine sends with `BEGIN` for an operation with a 10 s `wait`.
const TX_BEGIN: &str = "BEGIN; SET LOCAL lock_timeout = '10000ms'";

/// Fails if the store's source no longer holds the statements copied above.
fn check_copies() {
    let sources = [
        include_str!("../src/store/postgres/layout.rs"),
        include_str!("../src/store/postgres/mod.rs"),
        include_str!("../src/store/postgres/transaction.rs"),
    ]
    .concat();
    for sql in [
        CLAIM_HEAD,
        CLAIM_MIDDLE,
        CLAIM_TAIL,
        TX_LIVE_FILTER,
        TX_INSERT_FILTER,
        COMPLETE,
        TX_COMPLETE,
        "BEGIN; SET LOCAL lock_timeout = '{}ms'",
    ] {
        assert!(
            sources.contains(sql),
            "the store's SQL changed; update the floor's copy:\n{sql}"
        );
    }
}

/// The lease mode's claim and the same-transaction mode's, as the store
/// builds them.
fn claims() -> &'static (String, String) {
    static CLAIMS: OnceLock<(String, String)> = OnceLock::new();
    CLAIMS.get_or_init(|| {
        (
            [CLAIM_HEAD, CLAIM_MIDDLE, CLAIM_TAIL].concat(),
            [
                CLAIM_HEAD,
                TX_LIVE_FILTER,
                CLAIM_MIDDLE,
                TX_INSERT_FILTER,
                CLAIM_TAIL,
            ]
            .concat(),
        )
    })
}

/// The floor's fingerprint and a new lease token (16 bytes each, as the store's).
const FINGERPRINT: [u8; 16] = [7; 16];
fn token() -> [u8; 16] {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    u128::from(NEXT.fetch_add(1, Ordering::Relaxed)).to_be_bytes()
}

/// The floor of a fresh call: the store's claim, then its fenced completion.
async fn floor_fresh(pool: &PgPool, operation: &str, key: &str, response: &[u8]) {
    let token = token();
    let row = sqlx::query(&claims().0)
        .bind("idem")
        .bind("")
        .bind(operation)
        .bind(key)
        .bind(FINGERPRINT.as_slice())
        .bind(token.as_slice())
        .bind(30_000i64)
        .fetch_one(pool)
        .await
        .expect("the floor's claim");
    assert!(row.get::<bool, _>("acquired"), "a fresh key");
    let done = sqlx::query(COMPLETE)
        .bind("idem")
        .bind("")
        .bind(operation)
        .bind(key)
        .bind(token.to_vec())
        .bind(response.to_vec())
        .bind(86_400_000i64)
        .bind(FINGERPRINT.to_vec())
        .execute(pool)
        .await
        .expect("the floor's completion");
    assert_eq!(done.rows_affected(), 1, "the floor held its lease");
}

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
    check_copies();
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
        // The baseline's pool and the floor's, each of the store's size.
        let pool = || {
            PgPoolOptions::new()
                .max_connections(16)
                .connect_with(options.clone())
        };
        let raw: PgPool = pool().await.expect("a pool");
        let floor: PgPool = pool().await.expect("a pool");
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
        println!(
            "| path | tasks | ours (op/s) | floor (op/s) | baseline (op/s) | ours / floor | ours / baseline | floor / baseline |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        let row = |path: &str, tasks: u64, ours: f64, floor: f64, baseline: f64| {
            println!(
                "| {path} | {tasks} | {ours:.0} | {floor:.0} | {baseline:.0} | {:.0}% | {:.0}% | {:.0}% |",
                100.0 * ours / floor,
                100.0 * ours / baseline,
                100.0 * floor / baseline
            );
        };
        for tasks in [1u64, 16, 64] {
            let n = total(tasks);
            let prefix = format!("t{tasks}");
            // Fresh.
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
            let floor_ops = {
                let (floor, prefix) = (floor.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (floor, key) = (floor.clone(), format!("{prefix}-fresh-{i}"));
                    async move {
                        floor_fresh(&floor, "floor.fresh", &key, format!("O{i}").as_bytes())
                            .await;
                    }
                })
                .await
            };
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
            row("fresh", tasks, engine, floor_ops, baseline);
            // Replay: keys written above (the baseline's), or 100 completed
            // keys of ours and of the floor's.
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
            for k in 0..100 {
                floor_fresh(&floor, "floor.replay", &format!("{prefix}-r{k}"), b"O0").await;
            }
            let floor_ops = {
                let (floor, prefix) = (floor.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (floor, key) = (floor.clone(), format!("{prefix}-r{}", i % 100));
                    async move {
                        let row = sqlx::query(&claims().0)
                            .bind("idem")
                            .bind("")
                            .bind("floor.replay")
                            .bind(&key)
                            .bind(FINGERPRINT.as_slice())
                            .bind(token().as_slice())
                            .bind(30_000i64)
                            .fetch_one(&floor)
                            .await
                            .expect("the floor's claim");
                        assert!(!row.get::<bool, _>("acquired"), "a completed key");
                        let response: Option<Vec<u8>> = row.get("response");
                        assert!(response.is_some(), "a completed key");
                    }
                })
                .await
            };
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
            row("replay", tasks, engine, floor_ops, baseline);
            // Transactional.
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
            let floor_ops = {
                let (floor, prefix) = (floor.clone(), prefix.clone());
                throughput(n, tasks, move |i| {
                    let (floor, key) = (floor.clone(), format!("{prefix}-tx-{i}"));
                    async move {
                        let mut tx = floor.begin_with(TX_BEGIN).await.expect("begin");
                        let row = sqlx::query(&claims().1)
                            .bind("idem")
                            .bind("")
                            .bind("floor.tx")
                            .bind(&key)
                            .bind(FINGERPRINT.as_slice())
                            .bind(token().as_slice())
                            .bind(86_400_000i64)
                            .bind(None::<&str>)
                            .fetch_optional(&mut *tx)
                            .await
                            .expect("the floor's claim")
                            .expect("a row");
                        assert!(row.get::<bool, _>("acquired"), "a fresh key");
                        let id: i64 = sqlx::query_scalar(
                            "INSERT INTO ledger (amount) VALUES ($1) RETURNING id",
                        )
                        .bind(i as i64)
                        .fetch_one(&mut *tx)
                        .await
                        .expect("insert");
                        let response = format!("O{id}");
                        sqlx::query(TX_COMPLETE)
                            .bind("idem")
                            .bind("")
                            .bind("floor.tx")
                            .bind(&key)
                            .bind(response.as_bytes())
                            .execute(&mut *tx)
                            .await
                            .expect("the floor's completion");
                        tx.commit().await.expect("commit");
                    }
                })
                .await
            };
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
            row("transactional", tasks, engine, floor_ops, baseline);
        }
        drop(raw);
        drop(floor);
        connection
            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
            .await
            .expect("drop the schema");
    });
}
