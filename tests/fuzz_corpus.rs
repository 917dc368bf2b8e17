//! Replays the fuzzers' corpus (`fuzz/corpus/<target>/`: the seeds kept in the repository
//! and every crash a fuzzer found, saved there) through the same checks the cargo-fuzz
//! targets run (`fuzz/checks.rs`), on stable Rust as part of the test suite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            (path.display().to_string(), std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{target}: the seed corpus is missing");
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    for (name, data) in corpus(target) {
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            panic!("{name} fails the {target} check");
        }
    }
}

#[test]
fn client_frames() {
    replay("client_frame", checks::client_frame);
}

#[test]
fn tokens() {
    replay("token", checks::token);
}

#[test]
fn rest_bodies() {
    replay("rest_body", checks::rest_body);
}

#[test]
fn websocket_messages() {
    replay("ws_message", checks::ws_message);
}

#[test]
fn websocket_events() {
    // The seeds are real events (a check that skips unparsable input must not skip them).
    let parsed = corpus("ws_event")
        .iter()
        .filter(|(_, data)| {
            serde_json::from_slice::<aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest>(
                data,
            )
            .is_ok()
        })
        .count();
    assert!(parsed >= 7, "only {parsed} seeds are events");
    replay("ws_event", checks::ws_event);
}
