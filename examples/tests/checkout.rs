//! `checkout`: orders of three side effects each, the worker aborting
//! itself at random points; with journaled steps no effect runs twice, on
//! every store, and without them the same run shows duplicates.

#[path = "../../idempotent-core/tests/support/redis_server.rs"]
mod redis_server;
mod support;

use std::process::Command;

use support::{PgSchema, binary, postgres_url};

/// The counts of a `checkout` run's table.
#[derive(Debug)]
struct Row {
    restarts: u64,
    charges: u64,
    reservations: u64,
    emails: u64,
    duplicates: u64,
}

const ORDERS: u64 = 40;

/// Runs `checkout` on `store`, with steps or without; its table's row.
fn checkout(store: &str, steps: bool) -> Row {
    let mut command = Command::new(binary("checkout"));
    command
        .args(["--store", store, "--orders", &ORDERS.to_string()])
        .args([
            "--crash-rate",
            "0.3",
            "--seed",
            "7",
            "--database",
            &postgres_url(),
        ]);
    if !steps {
        command.arg("--no-steps");
    }
    let output = command.output().expect("run checkout");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().unwrap_or_default();
    let numbers: Vec<u64> = last
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    let [orders, restarts, charges, reservations, emails, duplicates] = numbers[..] else {
        panic!("no row of counts: {stdout}");
    };
    assert_eq!(orders, ORDERS, "{stdout}");
    Row {
        restarts,
        charges,
        reservations,
        emails,
        duplicates,
    }
}

/// With steps: crashes happened, every order has one of each effect.
/// Without: the same crashes repeat effects.
fn problem_and_cure(store: &str) {
    let cure = checkout(store, true);
    assert!(cure.restarts > 0, "{cure:?}");
    assert_eq!(
        (
            cure.charges,
            cure.reservations,
            cure.emails,
            cure.duplicates
        ),
        (ORDERS, ORDERS, ORDERS, 0),
        "{cure:?}"
    );
    let problem = checkout(store, false);
    assert!(problem.restarts > 0, "{problem:?}");
    assert!(problem.duplicates > 0, "{problem:?}");
}

#[test]
fn on_memory_a_crashed_order_task_runs_each_effect_once() {
    problem_and_cure("memory");
}

#[test]
fn on_redis_an_aborted_worker_process_runs_each_effect_once() {
    let server = redis_server::RedisServer::start();
    problem_and_cure(&server.url());
}

#[test]
fn on_postgres_an_aborted_worker_process_runs_each_effect_once() {
    let schema = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(PgSchema::create("checkout"));
    problem_and_cure(&schema.url());
}
