#![no_main]
//! `cargo fuzz run result_record`: see `idempotent_core::__fuzz::result_record`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::result_record(data));
