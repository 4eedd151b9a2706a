//! `PostgresStore`: the conformance suite against the machine's PostgreSQL,
//! in a schema of its own, dropped afterwards.

#[path = "support/postgres_schema.rs"]
mod postgres_schema;

use std::sync::Arc;
use std::time::Duration;

use idempotent_core::postgres::{MAX_KEY_BYTES, PostgresStore};
use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::{
    Error, Fingerprint, Idempotency, KeyError, Operation, StepWrite, Store, StoreError,
};
use postgres_schema::{Schema, with_ledger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_postgres() {
    let schema = Schema::create("conformance").await;
    let store = schema.store().await;
    idempotent_core::conformance::run_all(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_conformance_on_postgres() {
    let schema = Schema::create("steps_conformance").await;
    let store = schema.store().await;
    idempotent_core::conformance::run_steps(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_conformance_on_postgres() {
    let schema = Schema::create("admin_conformance").await;
    let store = schema.store().await;
    idempotent_core::conformance::run_admin(Arc::new(store)).await;
}

/// A claim of `key` (a fresh one) for a lease of a minute; its token.
async fn acquire(store: &PostgresStore, key: &StorageKey) -> idempotent_core::record::LeaseToken {
    match store.claim(key, FP, Duration::from_secs(60)).await.unwrap() {
        ClaimOutcome::Acquired(lease) => lease.token,
        other => panic!("{key}: {other:?}"),
    }
}

const FP: Fingerprint = Fingerprint::from_u128(7);

fn step<'a>(
    token: idempotent_core::record::LeaseToken,
    name: &'a str,
    ttl: Duration,
) -> StepWrite<'a> {
    StepWrite {
        token,
        fingerprint: FP,
        name,
        value: b"v",
        lease: Duration::from_secs(60),
        ttl,
    }
}

fn storage_key(id: &str) -> StorageKey {
    StorageKey::new("idem", "", "op", &id.parse().unwrap())
}

/// Step rows past their TTL are deleted by the purge, in bounded batches,
/// through their own index; live ones, and the records, stay. The
/// background task drains them too, even when the records table has
/// nothing to purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purging_removes_expired_step_rows() {
    let schema = Schema::create("purge_steps").await;
    let store = schema.store().await;
    let (short, long) = (Duration::from_millis(50), Duration::from_secs(3600));
    let brief = storage_key("brief");
    let token = acquire(&store, &brief).await;
    for name in ["a", "b", "c", "d", "e"] {
        store
            .record_step(&brief, step(token, name, short))
            .await
            .unwrap();
    }
    let kept = storage_key("kept");
    let token = acquire(&store, &kept).await;
    store
        .record_step(&kept, step(token, "a", long))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.steps(&brief).await.unwrap(), None, "expired");
    assert_eq!(
        schema.count("idempotency_records_steps").await,
        6,
        "expired rows stay until purged"
    );
    // Both records are in progress, live: only step rows go.
    assert_eq!(store.purge_expired(3).await.unwrap(), 3, "a bounded batch");
    assert_eq!(store.purge_expired(100).await.unwrap(), 2);
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
    assert_eq!(schema.count("idempotency_records_steps").await, 1);
    assert_eq!(schema.count("idempotency_records").await, 2);
    assert!(store.steps(&kept).await.unwrap().is_some(), "the live log");

    // The background task: 9 expired step rows, no expired record, batches
    // of 4, one tick: only the drain-while-full loop empties them.
    let token = acquire(&store, &storage_key("drained")).await;
    let names: Vec<String> = (0..9).map(|i| format!("s{i}")).collect();
    for name in &names {
        store
            .record_step(&storage_key("drained"), step(token, name, short))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let task = store.spawn_purge(Duration::from_secs(3600), 4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while schema.count("idempotency_records_steps").await > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the purge did not drain the expired step rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(task);
    assert!(store.steps(&kept).await.unwrap().is_some(), "the live log");
}

/// The steps purge's plan, as [`the_purge_never_scans_the_table`] checks
/// the records': the `expires_at` index finds the batch, a TID scan
/// deletes it.
#[tokio::test]
async fn the_steps_purge_never_scans_the_table() {
    let schema = Schema::create("purge_steps_plan").await;
    let _store = schema.store().await;
    let mut connection = schema.connection().await;
    let live = (20_000, "live", "now() + interval '1 day'");
    let expired = (100, "expired", "now() - interval '1 day'");
    for (rows, prefix, expires_at) in [live, expired] {
        let fill = format!(
            "INSERT INTO idempotency_records_steps (namespace, scope, operation, key, name, value, fingerprint, expires_at) \
             SELECT 'idem', '', 'op', '{prefix}' || g, 'step', '\\x01', '\\x00', {expires_at} FROM generate_series(1, {rows}) g"
        );
        sqlx::query(&fill).execute(&mut connection).await.unwrap();
    }
    sqlx::query("ANALYZE idempotency_records_steps")
        .execute(&mut connection)
        .await
        .unwrap();
    purges_through_its_index(
        &mut connection,
        PostgresStore::PURGE_STEPS,
        "idempotency_records_steps_expires_at",
    )
    .await;
    assert_eq!(schema.count("idempotency_records_steps").await, 20_000);
}

/// Steps of one call written at once (a body that runs steps
/// concurrently) take turns on the call's row, and all land, each name
/// written again replacing its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_steps_of_one_call_all_land() {
    let schema = Schema::create("steps_concurrent").await;
    let store = schema.store().await;
    let key = storage_key("k");
    let token = acquire(&store, &key).await;
    let writes = (0..40).map(|i| {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move {
            let name = format!("s{}", i % 20);
            store
                .record_step(&key, step(token, &name, Duration::from_secs(60)))
                .await
        })
    });
    for write in writes {
        write.await.unwrap().unwrap();
    }
    let log = store.steps(&key).await.unwrap().unwrap();
    assert_eq!(log.values.len(), 20);
    assert_eq!(log.fingerprint, FP);
}

/// A schema migrated before steps existed (only the records table) gets
/// the steps table from `migrate()`, its records untouched; the SQL of
/// `MIGRATION` runs twice without error.
#[tokio::test]
async fn migrating_a_schema_from_before_steps_adds_the_steps_table() {
    let schema = Schema::create("migrate_steps").await;
    let store = schema.store().await;
    let key = storage_key("k");
    let token = acquire(&store, &key).await;
    store
        .complete(&key, token, FP, b"done", Duration::from_secs(60))
        .await
        .unwrap();
    let mut connection = schema.connection().await;
    sqlx::raw_sql("DROP TABLE idempotency_records_steps")
        .execute(&mut connection)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    for _ in 0..2 {
        sqlx::raw_sql(PostgresStore::MIGRATION)
            .execute(&mut connection)
            .await
            .unwrap();
    }
    assert_eq!(schema.count("idempotency_records_steps").await, 0);
    assert_eq!(
        store
            .claim(&key, FP, Duration::from_secs(60))
            .await
            .unwrap(),
        ClaimOutcome::Completed(b"done"[..].into()),
        "the record stays"
    );
    let fresh = storage_key("fresh");
    let token = acquire(&store, &fresh).await;
    store
        .record_step(&fresh, step(token, "a", Duration::from_secs(60)))
        .await
        .unwrap();
    assert!(store.steps(&fresh).await.unwrap().is_some());
}

/// A step name PostgreSQL cannot hold is refused before any statement, as
/// a key is; rows of one call that disagree on the fingerprint (written by
/// something else: the store's own writes keep them in step) are corrupt.
#[tokio::test]
async fn unstorable_step_names_are_refused_and_disagreeing_rows_are_corrupt() {
    let schema = Schema::create("steps_refused").await;
    let store = schema.store().await;
    let key = storage_key("k");
    let token = acquire(&store, &key).await;
    let long = "n".repeat(513);
    for name in ["a\0b", long.as_str()] {
        let refused = store
            .record_step(&key, step(token, name, Duration::from_secs(60)))
            .await;
        assert!(
            matches!(refused, Err(StoreError::KeyRejected { .. })),
            "{refused:?}"
        );
    }
    let longest = "n".repeat(512);
    for name in ["a", "b", longest.as_str()] {
        store
            .record_step(&key, step(token, name, Duration::from_secs(60)))
            .await
            .unwrap();
    }
    assert_eq!(store.steps(&key).await.unwrap().unwrap().values.len(), 3);
    sqlx::query("UPDATE idempotency_records_steps SET fingerprint = '\\x01' WHERE name = 'b'")
        .execute(&mut schema.connection().await)
        .await
        .unwrap();
    let read = store.steps(&key).await;
    assert!(matches!(read, Err(StoreError::Corrupt { .. })), "{read:?}");
    store.clear_steps(&key).await.unwrap();
    assert_eq!(store.steps(&key).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_twice_is_harmless_and_purging_removes_only_expired_rows() {
    static OP: Operation = Operation::new("pg.purge");
    let schema = Schema::create("purge").await;
    let store = schema.store().await;
    store.migrate().await.unwrap();
    let short = Idempotency::builder(store.clone())
        .ttl(Duration::from_millis(50))
        .build();
    let long = Idempotency::new(store.clone());
    for i in 0..5 {
        short
            .call(&OP)
            .key(&format!("short-{i}"))
            .run(async { Ok::<_, Error>(i) })
            .await
            .unwrap();
    }
    long.call(&OP)
        .key("long")
        .run(async { Ok::<_, Error>(0) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(store.purge_expired(3).await.unwrap(), 3, "a bounded batch");
    assert_eq!(store.purge_expired(100).await.unwrap(), 2);
    assert_eq!(
        store.purge_expired(100).await.unwrap(),
        0,
        "the live record stays"
    );
    let replayed = long
        .call(&OP)
        .key("long")
        .run(async { Ok::<_, Error>(9) })
        .await
        .unwrap();
    assert!(replayed.replayed);
}

/// The purge's plan, custom and generic (a prepared statement switches to
/// the generic one after a few runs), on a table big enough for the planner
/// to care: the `deadline` index finds the batch and a TID scan deletes it.
#[tokio::test]
async fn the_purge_never_scans_the_table() {
    let schema = Schema::create("purge_plan").await;
    let _store = schema.store().await;
    let mut connection = schema.connection().await;
    let live = (20_000, "live", "now() + interval '1 day'");
    let expired = (100, "expired", "now() - interval '1 day'");
    for (rows, prefix, deadline) in [live, expired] {
        let fill = format!(
            "INSERT INTO idempotency_records (namespace, scope, operation, key, fingerprint, response, deadline) \
             SELECT 'idem', '', 'op', '{prefix}' || g, '\\x00', '\\x01', {deadline} FROM generate_series(1, {rows}) g"
        );
        sqlx::query(&fill).execute(&mut connection).await.unwrap();
    }
    sqlx::query("ANALYZE idempotency_records")
        .execute(&mut connection)
        .await
        .unwrap();
    purges_through_its_index(
        &mut connection,
        idempotent_core::postgres::PostgresStore::PURGE,
        "idempotency_records_deadline",
    )
    .await;
    assert_eq!(schema.count("idempotency_records").await, 20_000);
}

/// A takeover that waited on the row's lock longer than its lease still
/// gets its whole lease, counted from when it had the lock: a second
/// claimant right after finds the call in progress, instead of an already
/// expired lease it could take over too (and run the body twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_that_waited_on_the_row_lock_gets_its_whole_lease() {
    const LEASE: Duration = Duration::from_secs(1);
    let schema = Schema::create("takeover_wait").await;
    let store = schema.store().await;
    let key = StorageKey::new("idem", "", "op", &"k".parse().unwrap());
    let fp = Fingerprint::from_u128(7);
    let expired = Duration::from_millis(50);
    assert!(matches!(
        store.claim(&key, fp, expired).await.unwrap(),
        ClaimOutcome::Acquired(_)
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Something holds the expired row's lock for longer than the lease.
    let mut locker = schema.connection().await;
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("SELECT 1 FROM idempotency_records WHERE key = 'k' FOR UPDATE")
        .execute(&mut locker)
        .await
        .unwrap();
    let waiting = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(async move { store.claim(&key, fp, LEASE).await })
    };
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    sqlx::query("COMMIT").execute(&mut locker).await.unwrap();
    let taken = waiting.await.unwrap().unwrap();
    assert!(matches!(taken, ClaimOutcome::Acquired(_)), "{taken:?}");
    let second = store.claim(&key, fp, LEASE).await.unwrap();
    assert!(
        matches!(second, ClaimOutcome::InProgress { .. }),
        "the takeover's lease had already run out: {second:?}"
    );
}

/// A purge never deletes a record a claim is taking over: the expired row
/// the claim has locked (and is giving a new deadline) is skipped, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_skips_a_row_a_claim_is_taking_over() {
    let schema = Schema::create("purge_race").await;
    let store = schema.store().await;
    let mut claimer = schema.connection().await;
    sqlx::query(
        "INSERT INTO idempotency_records (namespace, scope, operation, key, fingerprint, token, deadline) \
         VALUES ('idem', '', 'op', 'taken', '\\x00', '\\x01', now() - interval '1 minute'), \
                ('idem', '', 'op', 'stale', '\\x00', '\\x01', now() - interval '1 minute')",
    )
    .execute(&mut claimer)
    .await
    .unwrap();
    // What a takeover does, left uncommitted: the expired row gets a new
    // owner and deadline under a row lock.
    sqlx::query("BEGIN").execute(&mut claimer).await.unwrap();
    sqlx::query(
        "UPDATE idempotency_records SET token = '\\x02', deadline = now() + interval '1 day' \
         WHERE key = 'taken'",
    )
    .execute(&mut claimer)
    .await
    .unwrap();
    let purged = tokio::time::timeout(Duration::from_secs(5), store.purge_expired(100))
        .await
        .expect("the purge does not wait for the claim")
        .unwrap();
    assert_eq!(purged, 1, "only the row nobody is claiming");
    sqlx::query("COMMIT").execute(&mut claimer).await.unwrap();
    assert_eq!(store.purge_expired(100).await.unwrap(), 0);
    let left: Vec<String> = sqlx::query_scalar("SELECT key FROM idempotency_records")
        .fetch_all(&mut claimer)
        .await
        .unwrap();
    assert_eq!(left, ["taken"], "the taken-over record survives");
}

#[tokio::test]
async fn a_database_that_is_down_fails_closed() {
    static OP: Operation = Operation::new("pg.down");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let store = PostgresStore::connect(&format!("postgres://postgres@127.0.0.1:{port}/test"))
        .await
        .unwrap();
    let mut ran = false;
    let result = Idempotency::new(store)
        .call(&OP)
        .key("k")
        .run(async {
            ran = true;
            Ok::<_, Error>(())
        })
        .await;
    assert!(
        matches!(result, Err(Error::StoreUnavailable(_))),
        "{result:?}"
    );
    assert!(!ran);
}

/// What a transactional body may fail with.
#[derive(Debug, thiserror::Error)]
enum ChargeError {
    #[error(transparent)]
    Idempotency(#[from] Error),
    #[error("declined")]
    Declined,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The body: one ledger row, in the caller's transaction.
fn charge(
    amount: i64,
    fail: bool,
) -> impl for<'c> FnOnce(&'c mut sqlx::PgConnection) -> idempotent_core::TxBody<'c, i64, ChargeError>
{
    charge_taking(amount, fail, Duration::from_millis(20))
}

fn charge_taking(
    amount: i64,
    fail: bool,
    work: Duration,
) -> impl for<'c> FnOnce(&'c mut sqlx::PgConnection) -> idempotent_core::TxBody<'c, i64, ChargeError>
{
    move |tx| {
        Box::pin(async move {
            let id: i64 =
                sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
                    .bind(amount)
                    .fetch_one(&mut *tx)
                    .await?;
            tokio::time::sleep(work).await;
            if fail {
                return Err(ChargeError::Declined);
            }
            Ok(id)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_concurrent_duplicates_in_transactional_mode_make_one_ledger_row() {
    static TX_CHARGE: Operation = Operation::new("pg.tx.charge").wait(Duration::from_secs(20));
    let (schema, store) = with_ledger("tx_concurrent").await;
    let runtime = Idempotency::new(store.clone());
    let calls = (0..100).map(|_| {
        let (store, runtime) = (store.clone(), runtime.clone());
        tokio::spawn(async move {
            runtime
                .call(&TX_CHARGE)
                .key("order-1")
                .payload(&4200)
                .run_in_transaction(&store, charge(4200, false))
                .await
                .unwrap()
        })
    });
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert_eq!(schema.count("ledger").await, 1, "one charge");
    assert_eq!(
        answers.iter().filter(|a| !a.replayed).count(),
        1,
        "one execution"
    );
    assert!(
        answers.iter().all(|a| a.value == answers[0].value),
        "identical answers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_body_leaves_no_row_and_a_retry_runs_clean() {
    static TX_FAIL: Operation = Operation::new("pg.tx.fail").wait(Duration::from_secs(5));
    let (schema, store) = with_ledger("tx_fail").await;
    let runtime = Idempotency::new(store.clone());
    let call = || runtime.call(&TX_FAIL).key("order-2").payload(&100);
    let failed = call().run_in_transaction(&store, charge(100, true)).await;
    assert!(matches!(failed, Err(ChargeError::Declined)), "{failed:?}");
    assert_eq!(
        schema.count("ledger").await,
        0,
        "the body's write was rolled back"
    );
    assert_eq!(
        schema.count("idempotency_records").await,
        0,
        "and so was the record"
    );
    let retried = call()
        .run_in_transaction(&store, charge(100, false))
        .await
        .unwrap();
    assert!(!retried.replayed);
    assert_eq!(schema.count("ledger").await, 1);
    let replayed = call()
        .run_in_transaction(&store, charge(100, false))
        .await
        .unwrap();
    assert!(replayed.replayed);
    assert_eq!(replayed.value, retried.value);
    assert_eq!(schema.count("ledger").await, 1);
}

/// A retry right after a failed body finds the key free: the failed
/// transaction is rolled back before the error is returned, not later from
/// the pool (which left the key locked, and a retry in progress, about one
/// time in ten).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_right_after_a_failed_body_runs_without_wait() {
    static TX_RETRY: Operation = Operation::new("pg.tx.retry_at_once");
    let (schema, store) = with_ledger("tx_retry_at_once").await;
    let runtime = Idempotency::new(store.clone());
    for n in 0..40 {
        let key = format!("order-{n}");
        let call = || runtime.call(&TX_RETRY).key(&key).payload(&100);
        let failed = call()
            .run_in_transaction(&store, charge_taking(100, true, Duration::ZERO))
            .await;
        assert!(matches!(failed, Err(ChargeError::Declined)), "{failed:?}");
        let retried = call()
            .run_in_transaction(&store, charge_taking(100, false, Duration::ZERO))
            .await;
        assert!(
            matches!(&retried, Ok(done) if !done.replayed),
            "{n}: {retried:?}"
        );
    }
    assert_eq!(schema.count("ledger").await, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_a_duplicate_in_progress_gets_in_progress_at_once() {
    static TX_NOWAIT: Operation = Operation::new("pg.tx.nowait");
    let (schema, store) = with_ledger("tx_nowait").await;
    let runtime = Idempotency::new(store.clone());
    let slow = charge_taking(1, false, Duration::from_millis(400));
    let first = {
        let (store, runtime) = (store.clone(), runtime.clone());
        tokio::spawn(async move {
            runtime
                .call(&TX_NOWAIT)
                .key("k")
                .run_in_transaction(&store, slow)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let duplicate = runtime
        .call(&TX_NOWAIT)
        .key("k")
        .run_in_transaction(&store, charge(1, false))
        .await;
    assert!(
        matches!(
            duplicate,
            Err(ChargeError::Idempotency(Error::InProgress { .. }))
        ),
        "{duplicate:?}"
    );
    assert!(!first.await.unwrap().unwrap().replayed);
    assert_eq!(schema.count("ledger").await, 1);
    // Once completed, concurrent retries all replay: a replay takes no lock
    // that could make the next one look in progress.
    let retries = (0..20).map(|_| {
        let (store, runtime) = (store.clone(), runtime.clone());
        tokio::spawn(async move {
            runtime
                .call(&TX_NOWAIT)
                .key("k")
                .run_in_transaction(&store, charge(1, false))
                .await
        })
    });
    for retry in retries {
        let retry = retry.await.unwrap();
        assert!(matches!(&retry, Ok(done) if done.replayed), "{retry:?}");
    }
    assert_eq!(schema.count("ledger").await, 1);
    let replay = runtime
        .call(&TX_NOWAIT)
        .key("k")
        .run_in_transaction(&store, charge(1, false))
        .await
        .unwrap();
    assert!(replay.replayed);
    let locks: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            .fetch_one(&mut schema.connection().await)
            .await
            .unwrap();
    assert_eq!(locks, 0, "a replay leaves no advisory lock behind");
}

/// `begin` lets the body borrow from its caller (here `order`, a local), which
/// the closure form cannot; the transaction commits the ledger row and the
/// record together, and a changed payload is refused without a write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_and_finish_commit_a_body_that_borrows_from_its_caller() {
    use idempotent_core::Begun;
    static BEGIN: Operation = Operation::new("pg.tx.begin").wait(Duration::from_secs(5));
    let (schema, store) = with_ledger("tx_begin").await;
    let runtime = Idempotency::new(store.clone());
    let order = String::from("order-7");
    async fn pay(
        store: &PostgresStore,
        runtime: &Idempotency,
        order: &str,
        amount: i64,
    ) -> Result<(i64, bool), ChargeError> {
        let call = runtime.call(&BEGIN).key(order).payload(&amount);
        let mut tx = match call.begin::<i64, _>(store).await? {
            Begun::Replayed(id) => return Ok((id, true)),
            Begun::Fresh(tx) => tx,
        };
        let id: Result<i64, ChargeError> =
            sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
                .bind(amount)
                .fetch_one(&mut *tx)
                .await
                .map_err(ChargeError::from);
        Ok((tx.finish(id).await?.value, false))
    }
    let (first, replayed) = pay(&store, &runtime, &order, 500).await.unwrap();
    assert!(!replayed);
    let (again, replayed) = pay(&store, &runtime, &order, 500).await.unwrap();
    assert!(replayed, "the second call replays");
    assert_eq!(again, first, "with the committed value");
    let changed = pay(&store, &runtime, &order, 999).await;
    assert!(
        matches!(
            changed,
            Err(ChargeError::Idempotency(Error::KeyReused { .. }))
        ),
        "{changed:?}"
    );
    assert_eq!(schema.count("ledger").await, 1, "one charge in all");

    // A fresh transaction dropped unfinished leaves nothing behind.
    let call = runtime.call(&BEGIN).key("order-8").payload(&1);
    let Begun::Fresh(mut tx) = call.begin::<i64, _>(&store).await.unwrap() else {
        panic!("a new key begins fresh");
    };
    sqlx::query("INSERT INTO ledger (amount) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    let (_, replayed) = pay(&store, &runtime, "order-8", 1).await.unwrap();
    assert!(!replayed, "the key is free");
    assert_eq!(
        schema.count("ledger").await,
        2,
        "the dropped transaction's write never landed: order-7's row and order-8's retry only"
    );
}

/// Waits (up to 10 s, else fails with `why`) until only the live record is left.
async fn until_one_record_left(schema: &Schema, why: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while schema.count("idempotency_records").await > 1 {
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_purge_drains_expired_rows_in_batches_and_stops_when_dropped() {
    static OP: Operation = Operation::new("pg.purge.task");
    let schema = Schema::create("purge_task").await;
    let store = schema.store().await;
    let short = Idempotency::builder(store.clone())
        .ttl(Duration::from_millis(50))
        .build();
    for i in 0..25 {
        short
            .call(&OP)
            .key(&format!("short-{i}"))
            .run(async { Ok::<_, Error>(i) })
            .await
            .unwrap();
    }
    Idempotency::new(store.clone())
        .call(&OP)
        .key("long")
        .run(async { Ok::<_, Error>(0) })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Batches of 4, one tick: only the drain-while-full loop empties 25 rows.
    let task = store.spawn_purge(Duration::from_secs(3600), 4);
    until_one_record_left(&schema, "the purge did not drain the expired rows").await;
    drop(task);
    // Ticking: a task every 20 ms purges rows that expire after it started.
    let later = |prefix: &'static str| {
        let short = short.clone();
        async move {
            for i in 0..3 {
                short
                    .call(&OP)
                    .key(&format!("{prefix}-{i}"))
                    .run(async { Ok::<_, Error>(i) })
                    .await
                    .unwrap();
            }
        }
    };
    let task = store.spawn_purge(Duration::from_millis(20), 100);
    later("later").await;
    until_one_record_left(&schema, "the ticking purge did not run").await;
    drop(task);
    later("after-drop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        schema.count("idempotency_records").await,
        4,
        "the live record stays, and a dropped task purges no more"
    );
}

/// A key PostgreSQL cannot hold (a NUL character, which `TEXT` cannot
/// store, or more bytes than its index takes) is an invalid key, refused
/// before anything runs or is stored, in both modes; the longest key it
/// takes works, and so does every other key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_postgresql_cannot_hold_is_an_invalid_key_and_nothing_runs() {
    static OP: Operation = Operation::new("pg.unstorable");
    static TX_OP: Operation = Operation::new("pg.tx.unstorable").wait(Duration::from_secs(5));
    let (schema, store) = with_ledger("unstorable").await;
    let runtime = Idempotency::new(store.clone());
    let longest = MAX_KEY_BYTES - runtime.namespace().len() - OP.name().len() - "k".len();
    let too_long = "t".repeat(longest + 1);
    for scope in ["tenant\0a", too_long.as_str()] {
        let mut ran = false;
        let result = runtime
            .call(&OP)
            .scope(scope)
            .key("k")
            .run(async {
                ran = true;
                Ok::<_, Error>(())
            })
            .await;
        assert!(
            matches!(&result, Err(Error::InvalidKey(KeyError::NotStorable(_)))),
            "{result:?}"
        );
        assert!(!ran, "the body did not run");
        let result = runtime
            .call(&TX_OP)
            .scope(scope)
            .key("k")
            .payload(&1)
            .run_in_transaction(&store, charge(1, false))
            .await;
        assert!(
            matches!(
                &result,
                Err(ChargeError::Idempotency(Error::InvalidKey(
                    KeyError::NotStorable(_)
                )))
            ),
            "{result:?}"
        );
    }
    assert_eq!(schema.count("ledger").await, 0, "no transactional body ran");
    assert_eq!(schema.count("idempotency_records").await, 0);

    let fits = "t".repeat(longest);
    for _ in 0..2 {
        runtime
            .call(&OP)
            .scope(&fits)
            .key("k")
            .run(async { Ok::<_, Error>(()) })
            .await
            .expect("the longest key the store takes");
    }
    assert_eq!(schema.count("idempotency_records").await, 1);
}

/// Through the HTTP layer, such a key is a 400, not a 503 that a client
/// would retry forever: here a path longer than the store's key bound.
#[cfg(feature = "http")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_http_layer_a_key_postgresql_cannot_hold_is_a_400() {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::ServiceExt as _;

    let (schema, store) = with_ledger("unstorable_http").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let handler = {
        let calls = Arc::clone(&calls);
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            StatusCode::CREATED
        }
    };
    let app = axum::Router::new()
        .route("/accounts/{id}", axum::routing::post(handler))
        .layer(
            idempotent_core::http::IdempotencyLayer::builder(Idempotency::new(store))
                .single_tenant()
                .build(),
        );
    let send = |path: String| {
        let request = Request::post(path)
            .header("idempotency-key", "k-1")
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(request)
    };
    let response = send(format!("/accounts/{}", "a".repeat(MAX_KEY_BYTES)))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("PostgreSQL store takes at most"), "{body}");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler did not run");

    let response = send("/accounts/a".to_owned()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED, "a short path runs");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(schema.count("idempotency_records").await, 1);
}

/// Prepares the purge `statement` on `connection`, checks that its custom
/// and generic plans both go through `index` and the rows' addresses (no
/// table scan), and runs it with a batch of 100: all 100 are expired rows.
async fn purges_through_its_index(
    connection: &mut idempotent_core::postgres::sqlx::PgConnection,
    statement: &str,
    index: &str,
) {
    sqlx::raw_sql(&format!("PREPARE purge(bigint) AS {statement}"))
        .execute(&mut *connection)
        .await
        .unwrap();
    for mode in ["force_custom_plan", "force_generic_plan"] {
        sqlx::raw_sql(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *connection)
            .await
            .unwrap();
        let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE purge(100)")
            .fetch_all(&mut *connection)
            .await
            .unwrap();
        let plan = plan.join("\n");
        assert!(!plan.contains("Seq Scan"), "{mode}: a table scan:\n{plan}");
        assert!(plan.contains(index), "{mode}: no index:\n{plan}");
        assert!(plan.contains("Tid Scan"), "{mode}:\n{plan}");
    }
    let purged = sqlx::query("EXECUTE purge(100)")
        .execute(&mut *connection)
        .await
        .unwrap();
    assert_eq!(
        purged.rows_affected(),
        100,
        "the expired rows, and only them"
    );
}

/// A new instance's `migrate` beside running ones (a rolling deploy): with
/// the schema current it takes no table lock, so a transaction holding
/// rows of the records table (a same-transaction call in flight) does not
/// block it, and it does not block that transaction.
#[tokio::test]
async fn migrating_a_current_schema_waits_for_no_transaction() {
    use sqlx::Executor as _;
    let schema = Schema::create("migrate_beside").await;
    let store = schema.store().await;
    let mut running = store.pool().begin().await.unwrap();
    running
        .execute(
            "INSERT INTO idempotency_records (namespace, scope, operation, key, fingerprint, deadline) \
             VALUES ('n', 's', 'o', 'k', '\\x00', now() + interval '1 minute')",
        )
        .await
        .unwrap();
    let migrated = tokio::time::timeout(std::time::Duration::from_secs(2), store.migrate()).await;
    // Ended before the assertion: a failing run must not leave it holding
    // the schema the test drops.
    running.rollback().await.unwrap();
    migrated
        .expect("migrate waited for the running transaction")
        .unwrap();
}
