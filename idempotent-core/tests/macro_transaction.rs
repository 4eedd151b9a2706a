//! `#[idempotent(transaction = ...)]`: the body's own writes and the record
//! commit in one PostgreSQL transaction; callers do not pass the connection.

#[path = "support/postgres_schema.rs"]
mod postgres_schema;

use std::time::Duration;

use idempotent_core::postgres::PostgresStore;
use idempotent_core::{Error, idempotent};
use postgres_schema::with_ledger;

#[derive(Debug, thiserror::Error)]
enum ChargeError {
    #[error(transparent)]
    Idempotency(#[from] Error),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("declined")]
    Declined,
}

struct Payments {
    db: PostgresStore,
}

impl Payments {
    /// Writes a ledger row, then fails if asked to: the row must roll back.
    #[idempotent(key = order, transaction = self.db, wait = "10s", skip(decline))]
    async fn charge(
        &self,
        #[tx] tx: &mut sqlx::PgConnection,
        order: &str,
        amount: i64,
        decline: bool,
    ) -> Result<i64, ChargeError> {
        let id: i64 = sqlx::query_scalar("INSERT INTO ledger (amount) VALUES ($1) RETURNING id")
            .bind(amount)
            .fetch_one(&mut *tx)
            .await?;
        tokio::time::sleep(Duration::from_millis(30)).await;
        if decline {
            return Err(ChargeError::Declined);
        }
        Ok(id)
    }
}

/// A free function, with the connection last and the store an argument
/// (skipped: it is not part of the request). The connection's lifetime is
/// named, as generic code often does.
#[idempotent(key = order, transaction = *db, name = "free.refund", skip(db))]
async fn refund<'c>(
    db: &PostgresStore,
    order: String,
    #[tx] conn: &'c mut sqlx::PgConnection,
) -> Result<i64, ChargeError> {
    Ok(
        sqlx::query_scalar("INSERT INTO ledger (amount) VALUES (-1) RETURNING id")
            .fetch_one(conn)
            .await?,
    )
}

/// A `&mut self` method: the body may use `self` mutably, and a replay does
/// not run it.
struct Counter {
    db: PostgresStore,
    runs: u32,
}

impl Counter {
    #[idempotent(key = key, transaction = self.db, wait = "5s")]
    async fn bump(
        &mut self,
        key: String,
        #[tx] tx: &mut sqlx::PgConnection,
    ) -> Result<u32, ChargeError> {
        self.runs += 1;
        sqlx::query("INSERT INTO ledger (amount) VALUES (1)")
            .execute(&mut *tx)
            .await?;
        Ok(self.runs)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mut_self_method_runs_once_per_key() {
    let (schema, db) = with_ledger("macro_tx_mut").await;
    let mut counter = Counter { db, runs: 0 };
    assert_eq!(counter.bump("b-1".to_owned()).await.unwrap(), 1);
    assert_eq!(counter.bump("b-1".to_owned()).await.unwrap(), 1, "replayed");
    assert_eq!(counter.runs, 1, "the body ran once");
    assert_eq!(counter.bump("b-2".to_owned()).await.unwrap(), 2);
    assert_eq!(schema.count("ledger").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_commit_one_row_and_all_get_its_answer() {
    let (schema, db) = with_ledger("macro_tx").await;
    let payments = std::sync::Arc::new(Payments { db });
    let calls = (0..50).map(|_| {
        let payments = std::sync::Arc::clone(&payments);
        tokio::spawn(async move { payments.charge("order-1", 4200, false).await.unwrap() })
    });
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap());
    }
    assert_eq!(schema.count("ledger").await, 1, "one charge");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "identical answers: {ids:?}"
    );

    let changed = payments.charge("order-1", 1, false).await;
    assert!(
        matches!(
            changed,
            Err(ChargeError::Idempotency(Error::KeyReused { .. }))
        ),
        "{changed:?}"
    );
    assert_eq!(schema.count("ledger").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_body_rolls_back_its_writes_and_the_record() {
    let (schema, db) = with_ledger("macro_tx_fail").await;
    let payments = Payments { db };
    let declined = payments.charge("order-2", 100, true).await;
    assert!(
        matches!(declined, Err(ChargeError::Declined)),
        "{declined:?}"
    );
    assert_eq!(schema.count("ledger").await, 0, "the row rolled back");
    assert_eq!(
        schema.count("idempotency_records").await,
        0,
        "and the record"
    );
    // `decline` is skipped from the fingerprint: the retry is the same call.
    let id = payments.charge("order-2", 100, false).await.unwrap();
    assert_eq!(payments.charge("order-2", 100, false).await.unwrap(), id);
    assert_eq!(schema.count("ledger").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_free_function_runs_once_per_key() {
    let (schema, db) = with_ledger("macro_tx_free").await;
    let first = refund(&db, "r-1".to_owned()).await.unwrap();
    let again = refund(&db, "r-1".to_owned()).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(schema.count("ledger").await, 1);
}

/// Told when `slow_refund`'s body runs, so that its duplicate comes after.
static SLOW_REFUND_STARTED: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

/// No `wait`: a duplicate of a call still in its transaction is refused at
/// once rather than queued behind it.
#[idempotent(key = order, transaction = *db, name = "free.slow_refund", skip(db))]
async fn slow_refund(
    db: &PostgresStore,
    order: String,
    #[tx] conn: &mut sqlx::PgConnection,
) -> Result<i64, ChargeError> {
    let id = sqlx::query_scalar("INSERT INTO ledger (amount) VALUES (-2) RETURNING id")
        .fetch_one(&mut *conn)
        .await?;
    SLOW_REFUND_STARTED.notify_one();
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_wait_a_duplicate_in_progress_is_refused_at_once() {
    let (schema, db) = with_ledger("macro_tx_nowait").await;
    let first = tokio::spawn({
        let db = db.clone();
        async move { slow_refund(&db, "r-9".to_owned()).await }
    });
    SLOW_REFUND_STARTED.notified().await;
    let started = std::time::Instant::now();
    let duplicate = slow_refund(&db, "r-9".to_owned()).await;
    assert!(
        matches!(
            duplicate,
            Err(ChargeError::Idempotency(Error::InProgress { .. }))
        ),
        "{duplicate:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "refused at once, not after the first call's 2 s: {:?}",
        started.elapsed()
    );
    let id = first.await.unwrap().unwrap();
    assert_eq!(
        slow_refund(&db, "r-9".to_owned()).await.unwrap(),
        id,
        "then a replay"
    );
    assert_eq!(schema.count("ledger").await, 1);
}

/// The connection's type from a `macro_rules!` `$t:ty` (an invisible group
/// around it), with a named lifetime.
macro_rules! refund_through {
    ($connection:ty) => {
        #[idempotent(key = order, transaction = *db, name = "free.macro_refund", skip(db))]
        async fn macro_refund<'c>(
            db: &PostgresStore,
            order: String,
            #[tx] conn: $connection,
        ) -> Result<i64, ChargeError> {
            Ok(
                sqlx::query_scalar("INSERT INTO ledger (amount) VALUES (-3) RETURNING id")
                    .fetch_one(conn)
                    .await?,
            )
        }
    };
}
refund_through!(&'c mut sqlx::PgConnection);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_type_from_a_declarative_macro_works() {
    let (schema, db) = with_ledger("macro_tx_rules").await;
    let first = macro_refund(&db, "m-1".to_owned()).await.unwrap();
    assert_eq!(macro_refund(&db, "m-1".to_owned()).await.unwrap(), first);
    assert_eq!(schema.count("ledger").await, 1);
}
