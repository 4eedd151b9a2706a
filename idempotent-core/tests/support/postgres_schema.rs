//! A PostgreSQL schema of one test's own, on the machine's server (or
//! `IDEMPOTENT_TEST_POSTGRES`), dropped with everything in it afterwards.
//! A missing server fails the test and says so; nothing skips.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use idempotent_core::postgres::PostgresStore;
use sqlx::Connection as _;
use sqlx::Executor as _;
use sqlx::postgres::PgConnectOptions;

/// The database the tests use: `IDEMPOTENT_TEST_POSTGRES`, or the local
/// server with trust auth.
pub fn url() -> String {
    std::env::var("IDEMPOTENT_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A schema made for one test, dropped (with everything in it) on drop.
pub struct Schema(String);

impl Schema {
    pub async fn create(name: &str) -> Self {
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

    pub async fn store(&self) -> PostgresStore {
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
                if let Ok(options) = url().parse::<PgConnectOptions>()
                    && let Ok(mut connection) = sqlx::PgConnection::connect_with(&options).await
                {
                    let _ = connection
                        .execute(format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

impl Schema {
    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.0
    }

    /// A plain connection in this schema, for the test's own queries.
    pub async fn connection(&self) -> sqlx::PgConnection {
        let options = url()
            .parse::<PgConnectOptions>()
            .unwrap()
            .options([("search_path", self.0.as_str())]);
        sqlx::PgConnection::connect_with(&options).await.unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&mut self.connection().await)
            .await
            .unwrap()
    }
}

/// A schema with the store's table and a `ledger (id, amount)` table.
pub async fn with_ledger(name: &str) -> (Schema, PostgresStore) {
    let schema = Schema::create(name).await;
    let store = schema.store().await;
    schema
        .connection()
        .await
        .execute("CREATE TABLE ledger (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL)")
        .await
        .unwrap();
    (schema, store)
}
