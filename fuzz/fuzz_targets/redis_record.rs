#![no_main]
//! `cargo fuzz run redis_record`: see `idempotent_core::__fuzz::redis_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::redis_record(data));
