//! Snapshot files, as `kvd restore` and a joining member read them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzz::snapshot(data));
