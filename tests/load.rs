//! The load tool (`seance-load`) against a harness on port 0, with rate limits and spirit
//! pacing off as its README section says: a short closed loop on each back-end must lose,
//! duplicate, reorder or misdeliver nothing, and its report must hold real figures.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use seance::config::{Config, VoiceConfig};
use seance_tests::{Backend, spawn_app_configured};
use serde_json::Value;

/// What the README's "Load" section sets through the environment, as fields.
fn no_limits(config: &mut Config) {
    config.message_burst = 1000;
    config.message_interval = Duration::from_secs(1);
    config.rest_burst = 1_000_000;
    config.frame_burst = 1_000_000;
    config.frame_interval = Duration::from_micros(100);
    config.spirit.session_questions_per_hour = 100_000;
    config.spirit.oracle_word_delay = Duration::ZERO;
    config.voice = VoiceConfig::None;
}

async fn closed_loop(backend: Backend) {
    let app = spawn_app_configured(backend, no_limits).await;
    let base = app.base.clone();
    let pid = std::process::id().to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_seance-load"))
            .args(["--url", &base, "--sessions", "6", "--members", "3"])
            .args(["--duration", "2", "--warmup", "1", "--fail-on-loss"])
            .args(["--cpu", &format!("server={pid}")])
            .output()
    })
    .await
    .unwrap()
    .expect("seance-load runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "seance-load failed:\n{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    for lost in [
        "missing",
        "duplicated",
        "reordered",
        "foreign",
        "token_faults",
        "errors",
    ] {
        assert_eq!(report[lost], 0, "{lost}: {report}");
    }
    assert!(report["questions"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["fanout_ms"]["count"].as_u64().unwrap(),
        report["answer_ms"]["count"].as_u64().unwrap() * 3,
        "every member saw every measured question: {report}"
    );
    assert!(
        report["cpu_s"]["server"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(stderr.contains("| 6 × 3 |"), "the table: {stderr}");
}

seance_tests::on_both_backends!(on_postgres_and_redis, embedded: closed_loop);
