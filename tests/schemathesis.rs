//! Schema-driven REST tests: schemathesis (PyPI; `tests/run` installs it when missing)
//! generates requests from `/openapi.json` of a harness on port 0, with a host's token for
//! the authenticated routes, runs every check it has (no 5xx, every response matching the
//! document, no valid request refused, no invalid one accepted…) for a bounded time, and
//! must find nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use seance_tests::{Backend, spawn_app_configured};

async fn schemathesis_finds_nothing(backend: Backend) {
    // Schemathesis sends thousands of requests from one address: no per-client quota.
    let app = spawn_app_configured(backend, |config| config.rest_burst = 1_000_000).await;
    let created = app.create_session(Some(12)).await;
    let token = created["token"].as_str().unwrap().to_owned();
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("st")
            .arg("run")
            .arg(format!("{base}/openapi.json"))
            .args(["--url", &base])
            .args(["--checks", "all"])
            .args(["--max-examples", "40"])
            // One worker: CPython 3.11's compiler is not safe under schemathesis's threads
            // ("AST constructor recursion depth mismatch").
            .args(["--workers", "1"])
            .args(["--seed", "1891"])
            // Two runs at once must not share Hypothesis's example database on disk.
            .args(["--generation-database", ":memory:"])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .env("NO_COLOR", "1")
            .current_dir(std::env::temp_dir())
            .output()
    })
    .await
    .unwrap()
    .expect("schemathesis (`st`) runs: tests/run installs it with pip");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("passed"), "{stdout}");
}

seance_tests::on_both_backends!(postgres, sqlite: schemathesis_finds_nothing);
