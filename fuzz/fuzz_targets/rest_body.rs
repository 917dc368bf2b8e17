#![no_main]
//! See `fuzz/checks.rs`: the same check the test suite replays over `fuzz/corpus/rest_body`.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::rest_body(data));
