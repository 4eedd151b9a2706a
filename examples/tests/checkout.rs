//! `checkout`: orders of three side effects each, the worker aborting
//! itself at random points, or killed from outside (SIGKILL) at each point
//! between and inside the steps; with journaled steps no effect runs twice
//! and no journaled value changes, on every store, and without them the
//! same run shows duplicates.

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
    /// Orders whose journaled reference changed between runs.
    changed_references: u64,
}

const ORDERS: u64 = 200;

/// Runs `checkout` on `store` with `args`, with steps or without; its
/// table's row.
fn checkout(store: &str, steps: bool, args: &[&str]) -> Row {
    let mut command = Command::new(binary("checkout"));
    command
        .args([
            "--store",
            store,
            "--seed",
            "7",
            "--database",
            &postgres_url(),
        ])
        .args(args);
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
    let numbers = |line: &str| -> Vec<u64> {
        line.split_whitespace()
            .filter_map(|field| field.parse().ok())
            .collect()
    };
    let row = stdout
        .lines()
        .find(|line| line.starts_with("with"))
        .unwrap_or_default();
    let [_, restarts, charges, reservations, emails, duplicates] = numbers(row)[..] else {
        panic!("no row of counts: {stdout}");
    };
    let changed = stdout
        .lines()
        .find(|line| line.starts_with("orders whose reference"))
        .unwrap_or_default();
    let [changed_references] = numbers(changed)[..] else {
        panic!("no count of changed references: {stdout}");
    };
    Row {
        restarts,
        charges,
        reservations,
        emails,
        duplicates,
        changed_references,
    }
}

/// With steps: crashes happened, every order has one of each effect and
/// one reference. Without: the same crashes repeat effects.
fn problem_and_cure(store: &str) {
    let orders = ORDERS.to_string();
    let args = ["--orders", orders.as_str(), "--crash-rate", "0.2"];
    let cure = checkout(store, true, &args);
    assert!(cure.restarts > 0, "{cure:?}");
    let counts = (
        cure.charges,
        cure.reservations,
        cure.emails,
        cure.duplicates,
    );
    assert_eq!(counts, (ORDERS, ORDERS, ORDERS, 0), "{cure:?}");
    assert_eq!(cure.changed_references, 0, "{cure:?}");
    let problem = checkout(store, false, &args);
    assert!(problem.restarts > 0, "{problem:?}");
    assert!(problem.duplicates > 0, "{problem:?}");
}

/// A worker killed with SIGKILL at each crash point (before, inside and
/// after each step), then run again: each effect once, the same reference.
fn killed_at_every_point(store: &str) {
    for point in 0..7 {
        let point = point.to_string();
        let args = [
            "--orders",
            "3",
            "--crash-rate",
            "0",
            "--sigkill-at",
            point.as_str(),
        ];
        let row = checkout(store, true, &args);
        assert_eq!(row.restarts, 1, "killed at {point}: {row:?}");
        let counts = (row.charges, row.reservations, row.emails, row.duplicates);
        assert_eq!(counts, (3, 3, 3, 0), "killed at {point}: {row:?}");
        assert_eq!(row.changed_references, 0, "killed at {point}: {row:?}");
    }
}

#[test]
fn on_memory_a_crashed_order_task_runs_each_effect_once() {
    problem_and_cure("memory");
}

#[test]
fn on_redis_an_aborted_or_killed_worker_runs_each_effect_once() {
    let server = redis_server::RedisServer::start();
    problem_and_cure(&server.url());
    killed_at_every_point(&server.url());
}

#[test]
fn on_postgres_an_aborted_or_killed_worker_runs_each_effect_once() {
    let schema = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(PgSchema::create("checkout"));
    problem_and_cure(&schema.url());
    killed_at_every_point(&schema.url());
}
