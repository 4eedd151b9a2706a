//! Rolling upgrades: records written by the previous release (record layout
//! 1, no version marker) are read by this one on each store that outlives a
//! process, byte for byte; a record of a later layout is refused with an
//! error naming its version, and nothing runs. The fixtures are the bytes
//! and rows release 0.1 writes, as its layout documents them. (The memory
//! store's records live and die with one process: no layout crosses a
//! release there.)
#![cfg(all(feature = "redis", feature = "postgres"))]

mod support;

use std::time::Duration;

use idempotent_core::record::{ClaimOutcome, LAYOUT, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Fingerprint, IdempotencyKey, Store, StoreError};
use sqlx::Executor as _;
use support::postgres_schema::Schema;
use support::redis_server::RedisServer;

const LEASE: Duration = Duration::from_secs(30);
const FINGERPRINT: Fingerprint = Fingerprint::from_u128(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
const TOKEN: u128 = 0x00ff_00ff_00ff_00ff_0000_0000_0000_0001;

fn key(id: &str) -> StorageKey {
    StorageKey::new(
        "idem",
        "",
        "shop.charge",
        &IdempotencyKey::parse(id).unwrap(),
    )
}

/// What release 0.1 writes in Redis: `'C' | fingerprint | response`, and
/// `'P' | fingerprint | lease token [| 'w']`.
fn redis_v1(tag: u8, tail: &[u8]) -> Vec<u8> {
    [&[tag][..], &FINGERPRINT.as_u128().to_be_bytes(), tail].concat()
}

fn is_layout_error(error: &StoreError, version: u8) -> bool {
    matches!(error, StoreError::Corrupt { detail, .. } if detail.contains(&format!("record layout {version},")))
}

#[tokio::test]
async fn redis_reads_records_of_the_previous_layout_and_refuses_later_ones() {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut raw = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut set = async |id: &str, value: Vec<u8>| {
        let _: () = redis::cmd("SET")
            .arg(store.redis_key(&key(id)))
            .arg(value)
            .arg("PX")
            .arg(60_000)
            .query_async(&mut raw)
            .await
            .unwrap();
    };
    set("done", redis_v1(b'C', b"O{\"receipt\":7}")).await;
    set("running", redis_v1(b'P', &TOKEN.to_be_bytes())).await;
    set(
        "waited-on",
        redis_v1(b'P', &[&TOKEN.to_be_bytes()[..], b"w"].concat()),
    )
    .await;
    let mut future = redis_v1(b'C', b"O1");
    future.insert(0, LAYOUT + 1);
    set("future", future).await;

    assert_eq!(
        store.claim(&key("done"), FINGERPRINT, LEASE).await.unwrap(),
        ClaimOutcome::Completed(b"O{\"receipt\":7}"[..].into()),
        "replayed byte for byte"
    );
    assert_eq!(
        store
            .claim(&key("done"), Fingerprint::from_u128(9), LEASE)
            .await
            .unwrap(),
        ClaimOutcome::KeyReused,
        "its fingerprint is read too"
    );
    for id in ["running", "waited-on"] {
        let outcome = store.claim(&key(id), FINGERPRINT, LEASE).await.unwrap();
        assert!(
            matches!(outcome, ClaimOutcome::InProgress { retry_after } if retry_after > Duration::from_secs(50)),
            "{id}: {outcome:?}"
        );
        // Its owner (a process of the previous release) is not this store.
        let stranger = idempotent_core::record::LeaseToken::from_u128(TOKEN);
        assert!(
            store
                .release(&key(id), stranger)
                .await
                .unwrap_err()
                .is_lease_lost()
        );
    }
    // A waiter marks a record of the previous release where it marks it.
    store
        .wait(&key("running"), Duration::from_millis(10))
        .await
        .unwrap();
    let marked: Vec<u8> = redis::cmd("GET")
        .arg(store.redis_key(&key("running")))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(
        marked,
        redis_v1(b'P', &[&TOKEN.to_be_bytes()[..], b"w"].concat())
    );

    let error = store
        .claim(&key("future"), FINGERPRINT, LEASE)
        .await
        .unwrap_err();
    assert!(is_layout_error(&error, LAYOUT + 1), "{error}");

    // What this release writes starts with its version.
    let ClaimOutcome::Acquired(lease) = store.claim(&key("new"), FINGERPRINT, LEASE).await.unwrap()
    else {
        panic!("a free key is acquired");
    };
    store
        .complete(&key("new"), lease.token, FINGERPRINT, b"O2", LEASE)
        .await
        .unwrap();
    let written: Vec<u8> = redis::cmd("GET")
        .arg(store.redis_key(&key("new")))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(written[..2], [LAYOUT, b'C']);
}

/// Release 0.1's table, as its migration made it (no `layout` column).
const POSTGRES_V1_TABLE: &str = "
CREATE TABLE idempotency_records (
    namespace   TEXT        NOT NULL,
    scope       TEXT        NOT NULL,
    operation   TEXT        NOT NULL,
    key         TEXT        NOT NULL,
    fingerprint BYTEA       NOT NULL,
    token       BYTEA,
    response    BYTEA,
    deadline    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (namespace, scope, operation, key)
);
CREATE INDEX idempotency_records_deadline ON idempotency_records (deadline);";

#[tokio::test]
async fn postgres_reads_rows_of_the_previous_layout_and_refuses_later_ones() {
    let schema = Schema::create("layouts").await;
    let mut connection = schema.connection().await;
    connection.execute(POSTGRES_V1_TABLE).await.unwrap();
    let insert = "INSERT INTO idempotency_records
        (namespace, scope, operation, key, fingerprint, token, response, deadline)
        VALUES ('idem', '', 'shop.charge', $1, $2, $3, $4, now() + interval '1 minute')";
    let fingerprint = FINGERPRINT.as_u128().to_be_bytes().to_vec();
    // (key, lease token, response): in progress holds a token, completed a response.
    type Row<'a> = (&'a str, Option<Vec<u8>>, Option<&'a [u8]>);
    let rows: [Row<'_>; 3] = [
        ("done", None, Some(b"O{\"receipt\":7}")),
        ("running", Some(TOKEN.to_be_bytes().to_vec()), None),
        ("future", None, Some(b"O1")),
    ];
    for (id, token, response) in rows {
        sqlx::query(insert)
            .bind(id)
            .bind(&fingerprint)
            .bind(token)
            .bind(response)
            .execute(&mut connection)
            .await
            .unwrap();
    }

    // The new release's migration adds the column; the rows are layout 1.
    let store = schema.store().await;
    let layouts: Vec<i16> = sqlx::query_scalar("SELECT layout FROM idempotency_records")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(layouts, [1, 1, 1]);
    sqlx::query("UPDATE idempotency_records SET layout = $1 WHERE key = 'future'")
        .bind(i16::from(LAYOUT) + 1)
        .execute(&mut connection)
        .await
        .unwrap();

    assert_eq!(
        store.claim(&key("done"), FINGERPRINT, LEASE).await.unwrap(),
        ClaimOutcome::Completed(b"O{\"receipt\":7}"[..].into())
    );
    let outcome = store
        .claim(&key("running"), FINGERPRINT, LEASE)
        .await
        .unwrap();
    assert!(
        matches!(outcome, ClaimOutcome::InProgress { .. }),
        "{outcome:?}"
    );
    let error = store
        .claim(&key("future"), FINGERPRINT, LEASE)
        .await
        .unwrap_err();
    assert!(is_layout_error(&error, LAYOUT + 1), "{error}");

    // A row this release claims is in its layout, and a second migration
    // changes nothing.
    store.claim(&key("new"), FINGERPRINT, LEASE).await.unwrap();
    store.migrate().await.unwrap();
    let layout: i16 =
        sqlx::query_scalar("SELECT layout FROM idempotency_records WHERE key = 'new'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(layout, i16::from(LAYOUT));
}
