#![no_main]
//! See `fuzz/checks.rs`: the same check the test suite replays over `fuzz/corpus/ws_event`.

#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| checks::ws_event(data));
