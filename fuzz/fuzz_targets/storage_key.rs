#![no_main]
//! `cargo fuzz run storage_key`: see `idempotent_core::__fuzz::storage_key`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| idempotent_core::__fuzz::storage_key(data));
