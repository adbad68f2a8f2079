//! Peer API messages: Raft RPCs, forwarded writes and their answers.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzz::peer(data));
