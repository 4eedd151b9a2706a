//! Compile tests that need idempotent-core *without* its `postgres` feature:
//! `cargo test -p idempotent-core --test ui_no_postgres` (the README's test
//! command runs it so; with `--all-features` it is empty).
#![cfg(not(feature = "postgres"))]

#[test]
fn ui_without_postgres() {
    trybuild::TestCases::new().compile_fail("tests/ui/no_postgres/*.rs");
}
