//! PostgreSQL (lease mode) out of reach for a few seconds: a body that ran
//! meanwhile has its result stored once the database is back, so the retry
//! replays; and the first call after the outage succeeds. The link to the
//! server is cut by a proxy, since other tests share the server.
#![cfg(feature = "postgres")]

mod support;

use std::time::Duration;

use idempotent_core::postgres::PostgresStore;
use idempotent_core::{Idempotency, Operation};
use sqlx::postgres::PgConnectOptions;
use support::blackout::Blackout;
use support::outage::{a_body_across_an_outage_runs_once, the_first_call_after_an_outage_succeeds};
use support::postgres_schema::{Schema, url};
use tokio::net::lookup_host;

static OP: Operation = Operation::new("pg-outage.charge");

/// A runtime on a store in `schema` that reaches the server through the
/// returned proxy.
async fn behind_a_proxy(schema: &Schema) -> (Idempotency, Blackout) {
    let options: PgConnectOptions = url().parse().unwrap();
    let upstream = lookup_host((options.get_host(), options.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Blackout::start(upstream).await;
    let options = options
        .host("127.0.0.1")
        .port(proxy.addr().port())
        .options([("search_path", schema.name())]);
    let store = PostgresStore::with_options(options, Duration::from_millis(500));
    store.migrate().await.unwrap();
    (Idempotency::new(store), proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_while_a_body_runs_then_back_the_retry_replays() {
    let schema = Schema::create("outage_body").await;
    let (idem, proxy) = behind_a_proxy(&schema).await;
    a_body_across_an_outage_runs_once(&idem, &OP, || proxy.cut(), || proxy.restore()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_call_after_a_postgres_outage_succeeds() {
    let schema = Schema::create("outage_first").await;
    let (idem, proxy) = behind_a_proxy(&schema).await;
    the_first_call_after_an_outage_succeeds(&idem, &OP, || proxy.cut(), || proxy.restore()).await;
}
