//! Key validation, prefixes, and keys escaped in request paths.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kv_client::fuzz::key(data));
