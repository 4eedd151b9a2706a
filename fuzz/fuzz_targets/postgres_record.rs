#![no_main]
//! `cargo fuzz run postgres_record`: see `idempotent_core::__fuzz::postgres_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::postgres_record(data));
