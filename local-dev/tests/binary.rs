//! The `local-dev` binary as a newcomer runs it: on port 0 with embedded defaults, printing
//! its address on one line, answering, and shutting down gracefully on Ctrl-C (SIGINT).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn scratch_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("seance-local-dev-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn serves_on_port_zero_with_embedded_defaults_and_stops_on_ctrl_c() {
    let dir = scratch_dir("serve");
    let mut child = Command::new(env!("CARGO_BIN_EXE_local-dev"))
        .args(["--port", "0"])
        .current_dir(&dir)
        .env_remove("DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("JWT_SECRET")
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("first line names the address: {line}"))
        .to_owned();

    seance::tls::install_crypto_provider();
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["redis"], "embedded");
    assert_eq!(health["database_backend"], "sqlite");
    assert!(
        dir.join(".seance/seance.db").exists(),
        "SQLite file made under .seance/"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "graceful exit on SIGINT, got {exit:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("ephemeral"),
        "warns about the ephemeral secret: {stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn migrate_commands_apply_list_and_revert() {
    let dir = scratch_dir("migrate");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_local-dev"))
            .args(args)
            .current_dir(&dir)
            .env("DATABASE_URL", "sqlite:m.db")
            .env("LOG_LEVEL", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(run(&["migrate", "status"]).contains("0001 pending  init"));
    let up = run(&["migrate", "up"]);
    assert!(
        up.contains("applied 0001") && up.contains("applied 0002"),
        "{up}"
    );
    assert!(run(&["migrate", "up"]).contains("up to date"));
    let status = run(&["migrate", "status"]);
    assert!(status.contains("0001 applied  init"), "{status}");
    assert!(status.contains("0002 applied  spirit turns"), "{status}");
    // Each step back works: the newest first.
    assert!(run(&["migrate", "down"]).contains("reverted 0002"));
    assert!(run(&["migrate", "status"]).contains("0002 pending  spirit turns"));
    assert!(run(&["migrate", "down"]).contains("reverted 0001"));
    assert!(run(&["migrate", "down"]).contains("nothing to revert"));
    assert!(run(&["migrate", "up"]).contains("applied 0002"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_and_configuration_get_a_clear_message() {
    let out = Command::new(env!("CARGO_BIN_EXE_local-dev"))
        .args(["--port", "banana"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--port"));

    let out = Command::new(env!("CARGO_BIN_EXE_local-dev"))
        .env("JWT_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("JWT_SECRET") && stderr.contains("32"),
        "{stderr}"
    );
    assert!(!stderr.contains("short\""), "{stderr}");
}

#[test]
fn a_malformed_persona_file_stops_start_up_naming_file_and_field() {
    let dir = scratch_dir("personas");
    std::fs::write(
        dir.join("broken.md"),
        "---\nid: broken\nname: Broken\ndescription: d\ntemperature: scorching\n---\nbody",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_local-dev"))
        .args(["--port", "0"])
        .current_dir(&dir)
        .env("DATABASE_URL", "sqlite::memory:")
        .env("SPIRIT_STEERING_DIR", &dir)
        .env("LOG_LEVEL", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("broken.md") && stderr.contains("temperature"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
