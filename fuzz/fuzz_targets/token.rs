#![no_main]
//! See `fuzz/checks.rs`: the same check the test suite replays over `fuzz/corpus/token`.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::token(data));
