#![no_main]
//! `cargo fuzz run http_record`: see `idempotent_core::__fuzz::http_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::http_record(data));
