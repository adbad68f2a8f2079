//! Client API request checks: path keys, query strings (list paging),
//! conditional headers, attribute headers and transaction JSON.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kvd::fuzz::request(data));
