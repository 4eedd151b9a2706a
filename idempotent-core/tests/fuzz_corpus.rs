//! The fuzz targets' committed corpus (`fuzz/corpus/<target>/`), replayed
//! through the same entry points the fuzzer calls (`idempotent_core::__fuzz`):
//! every input that once found new code in a key, header or stored-record
//! decoder is checked on every `cargo test`, so a regression fails here even
//! where cargo-fuzz is not installed. `scripts/test` also fuzzes each target
//! for a while.
#![cfg(all(
    feature = "fuzz",
    feature = "http",
    feature = "redis",
    feature = "postgres"
))]

use std::path::Path;

use idempotent_core::__fuzz;

/// Runs `target` on every file of its corpus; there must be some.
fn replay(name: &str, target: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the corpus {} is missing: {e}", dir.display()));
    let mut inputs = 0;
    for entry in entries {
        let path = entry.expect("a corpus entry").path();
        let data = std::fs::read(&path).expect("a corpus file");
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(
            outcome.is_ok(),
            "{name}: {} broke an invariant",
            path.display()
        );
        inputs += 1;
    }
    assert!(
        inputs >= 3,
        "{name}: only {inputs} inputs in {}",
        dir.display()
    );
}

#[test]
fn key() {
    replay("key", __fuzz::key);
}

#[test]
fn storage_key() {
    replay("storage_key", __fuzz::storage_key);
}

#[test]
fn header() {
    replay("header", __fuzz::header);
}

#[test]
fn http_record() {
    replay("http_record", __fuzz::http_record);
}

#[test]
fn redis_record() {
    replay("redis_record", __fuzz::redis_record);
}

#[test]
fn postgres_record() {
    replay("postgres_record", __fuzz::postgres_record);
}

#[test]
fn result_record() {
    replay("result_record", __fuzz::result_record);
}
