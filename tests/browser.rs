//! The reference client (`web/`) in real Chromium: the harness on port 0, two pages that
//! join one séance from a shared link, ask, watch the planchette (one page, stalled
//! mid-answer, catches up on every letter), lose their socket and come back, pass an
//! accessibility audit at 375 px, and see the host end it
//! (`tests/browser/e2e.mjs`, driven by playwright-core with Debian's chromium). Also
//! type-checks the client's JavaScript against the generated `web/protocol.d.ts`.
//!
//! Needs Node.js, `tests/browser/node_modules` and `/usr/bin/chromium` (or `CHROMIUM`):
//! `tests/run` installs them when missing. Screenshots land in
//! `target/browser-artifacts/<backend>/`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use seance_tests::{Backend, spawn_app};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn browser_dir() -> PathBuf {
    root().join("tests/browser")
}

/// Fails with what to do when a tool is missing, rather than skipping: the suite claims
/// to cover the browser.
fn require_tools() {
    let modules = browser_dir().join("node_modules");
    assert!(
        modules.join("playwright-core").is_dir() && modules.join("axe-core").is_dir(),
        "{} is missing: run tests/run (it installs Node.js, the npm packages and chromium), \
         or `npm ci --prefix tests/browser`",
        modules.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium} is missing: run tests/run (it installs Debian's chromium), or set CHROMIUM"
    );
}

fn show(output: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn artifacts(label: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("browser-artifacts").join(label)
}

async fn seance_in_chromium(backend: Backend, label: &str) {
    require_tools();
    let app = spawn_app(backend).await;
    let base = app.base.clone();
    let out_dir = artifacts(label);
    // The harness serves on this runtime's workers while node runs on a blocking thread.
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir().join("e2e.mjs"))
            .arg(&base)
            .env("SEANCE_ARTIFACTS", &out_dir)
            .current_dir(browser_dir())
            .output()
    })
    .await
    .expect("join")
    .expect("node runs (Node.js is installed by tests/run)");
    eprintln!("{}", show(&output));
    assert!(
        output.status.success(),
        "the Chromium suite failed:\n{}",
        show(&output)
    );
    let summary = String::from_utf8_lossy(&output.stdout);
    let last = summary.lines().last().unwrap_or_default();
    let report: serde_json::Value = serde_json::from_str(last).expect("a JSON summary line");
    assert_eq!(report["ok"], true);
    assert_eq!(report["messages"], 6, "three questions and three answers");
    assert!(artifacts(label).join("board-mid-answer.png").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seance_in_chromium_on_the_embedded_defaults() {
    seance_in_chromium(Backend::Sqlite, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seance_in_chromium_on_postgres_and_redis() {
    seance_in_chromium(Backend::Postgres, "postgres-redis").await;
}

#[test]
fn the_client_type_checks_against_the_generated_protocol_types() {
    require_tools();
    let tsc = browser_dir().join("node_modules/typescript/bin/tsc");
    let output = Command::new("node")
        .arg(tsc)
        .arg("-p")
        .arg(root().join("web/jsconfig.json"))
        .output()
        .expect("node runs");
    assert!(
        output.status.success(),
        "web/*.js does not type-check against web/protocol.d.ts:\n{}",
        show(&output)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asyncapi_document_passes_the_asyncapi_initiatives_parser() {
    require_tools();
    let app = spawn_app(Backend::Sqlite).await;
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(browser_dir().join("asyncapi-check.mjs"))
            .arg(&base)
            .current_dir(browser_dir())
            .output()
    })
    .await
    .expect("join")
    .expect("node runs");
    assert!(
        output.status.success(),
        "/asyncapi.json is not a valid AsyncAPI document:\n{}",
        show(&output)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("one JSON line");
    assert_eq!(report["version"], "3.0.0");
    assert_eq!(report["warnings"], 0, "{}", show(&output));
}

#[tokio::test]
async fn the_harness_serves_the_client_at_the_root() {
    let app = spawn_app(Backend::Sqlite).await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    // Every file the page loads is served, and nothing comes from another host.
    for reference in html
        .split(['"', '\''])
        .filter(|part| part.starts_with("web/"))
    {
        let asset = app.get(&format!("/{reference}")).await;
        assert_eq!(asset.status(), 200, "{reference}");
        let text = asset.text().await.unwrap();
        assert!(
            !text.contains("https://"),
            "{reference} fetches from the internet"
        );
        for import in text
            .split("from '")
            .skip(1)
            .filter_map(|rest| rest.split('\'').next())
        {
            let name = import.trim_start_matches("./");
            let imported = app.get(&format!("/web/{name}")).await;
            assert_eq!(imported.status(), 200, "{reference} imports {import}");
        }
    }
    assert!(
        !html.contains("https://"),
        "the page fetches from the internet"
    );
    let missing = app.get("/web/nothing.js").await;
    assert_eq!(missing.status(), 404);
    let types = app.get("/web/protocol.d.ts").await;
    assert_eq!(types.status(), 200);
    assert_eq!(
        types.text().await.unwrap(),
        std::fs::read_to_string(root().join("web/protocol.d.ts")).unwrap()
    );
}
