//! Compile tests of `#[idempotent]`: what it accepts, and the errors it gives.
//! (The one that needs idempotent-core without `postgres` is in
//! idempotent-core's `tests/ui_no_postgres.rs`.)

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
