//! The `idempotent` binary against real stores: a Redis server and a
//! 3-master cluster started for the test, and a PostgreSQL schema of its
//! own. Records are made through the store as a service would, then the
//! tool is run as an operator would, and its output is read.

#[path = "../../idempotent-core/tests/support/postgres_schema.rs"]
mod postgres_schema;
#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;

use std::process::{Command, Output};
use std::time::Duration;

use idempotent_core::record::{ClaimOutcome, StorageKey};
use idempotent_core::redis::RedisStore;
use idempotent_core::{Fingerprint, IdempotencyKey, Store};
use serde_json::Value;

const OPERATION: &str = "shop.charge";
const FINGERPRINT: Fingerprint = Fingerprint::from_u128(42);
const BODY: &[u8] = br#"{"card":"4242"}"#;

fn key(id: &str) -> StorageKey {
    StorageKey::new("idem", "", OPERATION, &IdempotencyKey::parse(id).unwrap())
}

/// Runs `idempotent --store <store> <args>`.
fn idempotent(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_idempotent"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the tool, expects success, and returns what it printed.
fn run(store: &str, args: &[&str]) -> String {
    let output = idempotent(store, args);
    assert!(
        output.status.success(),
        "{args:?}: {:?}\n{}\n{}",
        output.status,
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

fn json(store: &str, args: &[&str]) -> Value {
    let args = [args, &["--json"]].concat();
    serde_json::from_str(&run(store, &args)).expect("JSON")
}

/// An operator's session on a store holding a call stuck in progress and
/// a completed one.
async fn session(store: &dyn Store, url: &str) {
    let lease = Duration::from_secs(60);
    let ClaimOutcome::Acquired(stuck) = store
        .claim(&key("order-7"), FINGERPRINT, lease)
        .await
        .unwrap()
    else {
        panic!("acquired");
    };
    let ClaimOutcome::Acquired(done) = store
        .claim(&key("order-8"), FINGERPRINT, lease)
        .await
        .unwrap()
    else {
        panic!("acquired");
    };
    store
        .complete(
            &key("order-8"),
            done.token,
            FINGERPRINT,
            BODY,
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;

    // What is stuck: the call in progress, not the completed one.
    let listed = run(url, &["stuck", "--older-than", "500ms"]);
    assert!(listed.starts_with("RUNNING FOR"), "{listed}");
    assert!(
        listed.contains("shop.charge") && listed.contains("order-7"),
        "{listed}"
    );
    assert!(!listed.contains("order-8"), "{listed}");
    assert_eq!(
        run(url, &["stuck", "--older-than", "1h"]),
        "no record in progress for 1h 0m or more\n"
    );
    let listed = json(url, &["stuck", "--older-than", "500ms"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert!(
        listed[0]["running_for_ms"].as_u64().unwrap() >= 500,
        "{listed}"
    );

    // Its record: the owner is the lease's token.
    let inspected = json(url, &["inspect", "--operation", OPERATION, "order-7"]);
    assert_eq!(inspected["state"], "in_progress");
    assert_eq!(
        inspected["owner"],
        format!("{:032x}", stuck.token.as_u128())
    );
    assert_eq!(inspected["fingerprint"], format!("{:032x}", 42));

    // A completed record: its size, and its body only when asked for.
    let shown = run(url, &["inspect", "--operation", OPERATION, "order-8"]);
    assert!(shown.contains("state        completed"), "{shown}");
    assert!(
        shown.contains("response     15 bytes (not shown"),
        "{shown}"
    );
    assert!(!shown.contains("4242"), "no body unless asked: {shown}");
    let inspected = json(url, &["inspect", "--operation", OPERATION, "order-8"]);
    assert_eq!(inspected["response_bytes"], 15);
    assert!(inspected.get("response").is_none(), "{inspected}");
    let show_body = [
        "inspect",
        "--operation",
        OPERATION,
        "order-8",
        "--show-body",
    ];
    let with_body = run(url, &show_body);
    assert!(
        with_body.ends_with("\n{\"card\":\"4242\"}\n"),
        "{with_body}"
    );
    let inspected = json(url, &show_body);
    assert_eq!(inspected["response"], "{\"card\":\"4242\"}");

    let counted = json(url, &["stats"]);
    assert_eq!(
        counted,
        serde_json::json!([{"namespace": "idem", "operation": OPERATION, "in_progress": 1, "completed": 1}])
    );
    assert!(run(url, &["stats"]).contains("idem       shop.charge  1            1"));

    // Evicting the stuck call: refused without --force, and then its owner is fenced.
    let refused = idempotent(url, &["evict", "--operation", OPERATION, "order-7"]);
    assert_eq!(refused.status.code(), Some(3));
    assert!(
        stdout(&refused)
            .starts_with("not evicted: idem / - / shop.charge / order-7 is in progress")
    );
    let evicted = run(
        url,
        &["evict", "--operation", OPERATION, "order-7", "--force"],
    );
    assert!(evicted.contains("which was in progress"), "{evicted}");
    let late = store
        .complete(&key("order-7"), stuck.token, FINGERPRINT, b"late", lease)
        .await;
    assert!(
        late.unwrap_err().is_lease_lost(),
        "the evicted owner is fenced"
    );
    assert_eq!(
        run(url, &["inspect", "--operation", OPERATION, "order-7"]),
        "no live record for idem / - / shop.charge / order-7\n"
    );
    let evicted = json(url, &["evict", "--operation", OPERATION, "order-8"]);
    assert_eq!(
        evicted,
        serde_json::json!({"outcome": "evicted", "was_in_progress": false})
    );
    let again = json(url, &["evict", "--operation", OPERATION, "order-8"]);
    assert_eq!(again, serde_json::json!({"outcome": "absent"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_session_on_redis() {
    let server = redis_server::RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    session(&store, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_session_on_a_redis_cluster() {
    let cluster = redis_server::RedisCluster::start(3);
    let store = RedisStore::connect(&cluster.url()).await.unwrap();
    session(&store, &cluster.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_session_on_postgres() {
    let schema = postgres_schema::Schema::create("cli").await;
    let store = schema.store().await;
    let url = format!(
        "{}?options[search_path]={}",
        postgres_schema::url(),
        schema.name()
    );
    session(&store, &url).await;
}

/// Bad input is a clear error and a failure status, never a panic.
#[test]
fn bad_input_is_a_clear_error() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--store", "mysql://db", "stats"],
            "unknown store `mysql://db`",
        ),
        (&["stats"], "no store: give --store"),
        (
            &[
                "--store",
                "redis://127.0.0.1:1",
                "inspect",
                "--operation",
                "op",
                "a key",
            ],
            "only visible ASCII characters",
        ),
        (
            &[
                "--store",
                "redis://127.0.0.1:1",
                "stuck",
                "--older-than",
                "soon",
            ],
            "expected a number and a unit",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(env!("CARGO_BIN_EXE_idempotent"))
            .args(args)
            .env_remove("IDEMPOTENT_STORE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}
