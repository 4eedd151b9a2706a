#![no_main]
//! `cargo fuzz run header`: see `idempotent_core::__fuzz::header`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::header(data));
