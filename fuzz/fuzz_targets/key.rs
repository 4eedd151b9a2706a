#![no_main]
//! `cargo fuzz run key`: see `idempotent_core::__fuzz::key`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::key(data));
