//! `PostgresStore`: the conformance suite against the machine's PostgreSQL,
//! in a schema of its own, dropped afterwards.

mod conformance;

use std::sync::Arc;
use std::time::Duration;

use idempotent_core::{Error, Idempotency, Operation, PostgresStore};
use sqlx::Executor as _;
use sqlx::postgres::PgConnectOptions;

/// The database the tests use: `IDEMPOTENT_TEST_POSTGRES`, or the local
/// server with trust auth.
fn url() -> String {
    std::env::var("IDEMPOTENT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema made for one test, dropped (with everything in it) on drop.
struct Schema(String);

impl Schema {
    async fn create(name: &str) -> Self {
        let schema = format!("idem_{name}_{}", std::process::id());
        let mut connection = sqlx::PgConnection::connect_with(&url().parse::<PgConnectOptions>().unwrap())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed for these tests ({e}); scripts/test checks it is running", url()));
        connection
            .execute(
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}").as_str(),
            )
            .await
            .unwrap();
        Self(schema)
    }

    async fn store(&self) -> PostgresStore {
        let options = url()
            .parse::<PgConnectOptions>()
            .unwrap()
            .options([("search_path", self.0.as_str())]);
        let store = PostgresStore::with_options(options, Duration::from_secs(2));
        store.migrate().await.unwrap();
        store
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let schema = self.0.clone();
        // A fresh runtime on a thread of its own: this may run inside one.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(options) = url().parse::<PgConnectOptions>() {
                    if let Ok(mut connection) = sqlx::PgConnection::connect_with(&options).await {
                        let _ = connection
                            .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                            .await;
                    }
                }
            });
        })
        .join();
    }
}

use sqlx::Connection as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_postgres() {
    let schema = Schema::create("conformance").await;
    let store = schema.store().await;
    conformance::run_all(Arc::new(store)).await;
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
