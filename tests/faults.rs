//! Faults mid-séance, on real services this test starts and stops itself: a Redis of its
//! own (restarted with its data, as a managed Redis fails over) and a PostgreSQL cluster of
//! its own (stopped and started). During each outage clients get clear errors; afterwards
//! the service has recovered by itself and every accepted question has exactly one answer,
//! in order, and nothing refused was stored.
//!
//! The other faults of the list have their own tests: the model stalling or failing
//! (`spirit_turns::failures_fall_back_in_character`,
//! `spirit_queue::a_model_slower_than_the_deadline_gets_the_fallback_in_time`), the voice
//! failing (`voice::a_failing_voice_leaves_the_answer_as_it_was`,
//! `voice::a_voice_cut_midway_still_finishes_the_answer`), a worker dying mid-answer
//! (`spirit_queue::a_worker_killed_mid_answer_is_taken_over`,
//! `spirit_queue::a_redelivered_message_is_answered_once`) and a client that stops reading
//! (`spirit_turns::one_stuck_connection_does_not_hold_up_the_room`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use seance_tests::ws::WsClient;
use seance_tests::{TestApp, spawn_app_with, test_config};
use serde_json::{Value, json};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn reachable(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Waits until `port` accepts connections (or stops accepting, with `up == false`).
async fn wait_port(port: u16, up: bool) {
    for _ in 0..200 {
        if reachable(port).await == up {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "port {port} never became {}",
        if up { "reachable" } else { "unreachable" }
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("seance-{name}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A séance with its host and a guest connected and synced.
struct Seated {
    session_id: String,
    /// The host's token.
    token: String,
    /// The guest's join answer.
    joined: Value,
    host: WsClient,
    guest: WsClient,
}

async fn seated(app: &TestApp) -> Seated {
    let created = app.create_session(None).await;
    let session_id = created["session"]["id"].as_str().unwrap().to_owned();
    let token = created["token"].as_str().unwrap().to_owned();
    let joined = app.join_ticket(&session_id, "Bea").await;
    let mut host = WsClient::connect(&app.ws_url(&created)).await.unwrap();
    host.sync(None).await;
    let mut guest = WsClient::connect(&app.ws_url(&joined)).await.unwrap();
    guest.sync(None).await;
    host.expect("user_joined").await;
    Seated {
        session_id,
        token,
        joined,
        host,
        guest,
    }
}

/// A question's round: asks, and returns the events up to its answer.
async fn ask(client: &mut WsClient, listener: &mut WsClient, content: &str) -> String {
    client
        .send_json(json!({"type": "send_message", "content": content}))
        .await;
    let received = listener.expect("message_received").await;
    assert_eq!(received["message"]["content"], content);
    let id = received["message"]["id"].as_str().unwrap().to_owned();
    let events = listener.collect_until("spirit_response", 1).await;
    let response = events.last().unwrap();
    assert_eq!(response["message"]["in_reply_to"], id.as_str());
    client.collect_until("spirit_response", 1).await;
    id
}

/// Every stored question has exactly one answer, questions are `expected` in order, and
/// nothing else was stored.
async fn history_is(app: &TestApp, session_id: &str, token: &str, expected: &[&str]) {
    let page: Value = app
        .get_with_token(
            &format!("/api/sessions/{session_id}/messages?limit=100"),
            token,
        )
        .await
        .json()
        .await
        .unwrap();
    let messages = page["messages"].as_array().unwrap();
    let questions: Vec<&Value> = messages
        .iter()
        .filter(|m| m["kind"] == "question")
        .collect();
    let contents: Vec<&str> = questions
        .iter()
        .map(|q| q["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents, expected, "the stored questions");
    for question in &questions {
        let answers = messages
            .iter()
            .filter(|m| m["kind"] == "spirit" && m["in_reply_to"] == question["id"])
            .count();
        assert_eq!(answers, 1, "one answer to {}", question["content"]);
    }
    assert_eq!(messages.len(), expected.len() * 2);
}

/// Sends `ping` until a `pong` comes back (each refused one answers `unavailable`):
/// the service has recovered by itself.
async fn until_recovered(client: &mut WsClient) -> usize {
    for attempt in 0..100 {
        client.send_json(json!({"type": "ping"})).await;
        let event = client.next_event().await;
        match event["type"].as_str() {
            Some("pong") => return attempt,
            Some("error") => {
                assert_eq!(event["code"], "unavailable", "{event}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => panic!("unexpected {event}"),
        }
    }
    panic!("the service did not recover");
}

// ----------------------------------------------------------------------------------------
// Redis.

struct OwnRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl OwnRedis {
    async fn start(port: u16, dir: &Path) -> Self {
        // Every write reaches the append-only file before it is acknowledged, so a restart
        // keeps the connections as a managed Redis's failover does.
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (tests/run installs it)");
        wait_port(port, true).await;
        Self {
            port,
            dir: dir.to_owned(),
            child: Some(child),
        }
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
        wait_port(self.port, false).await;
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_seance_loses_and_repeats_nothing() {
    let port = free_port();
    let dir = temp_dir("redis");
    let mut redis = OwnRedis::start(port, &dir).await;
    let database = seance_tests::fresh_postgres_url().await;
    let app = spawn_app_with(test_config(
        &database,
        Some(&format!("redis://127.0.0.1:{port}")),
    ))
    .await;
    let Seated {
        session_id,
        token,
        joined,
        mut host,
        mut guest,
    } = seated(&app).await;
    ask(&mut guest, &mut host, "Before the storm?").await;

    redis.stop().await;
    // During the outage: a clear, retryable error for every frame, and nothing stored.
    guest
        .send_json(json!({"type": "send_message", "content": "During the storm?"}))
        .await;
    let refused = guest.expect("error").await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(refused["request_type"], "send_message");
    assert!(refused["retry_after_ms"].as_u64().unwrap() > 0);
    assert_eq!(refused["session_id"], uuid::Uuid::nil().to_string());
    host.send_json(json!({"type": "sync"})).await;
    assert_eq!(host.expect("error").await["code"], "unavailable");
    // A frame without a type gets no `request_type`, as the protocol says.
    host.send_text("not json").await;
    let untyped = host.expect("error").await;
    assert_eq!(untyped["code"], "unavailable");
    assert!(untyped.get("request_type").is_none(), "{untyped}");
    // A new socket cannot be registered meanwhile: its handshake is refused, not left open.
    let refused = WsClient::connect(&app.ws_url(&joined))
        .await
        .err()
        .expect("refused");
    assert!(refused.status >= 500, "{refused:?}");

    redis = OwnRedis::start(port, &dir).await;
    until_recovered(&mut guest).await;
    until_recovered(&mut host).await;
    ask(&mut guest, &mut host, "After the storm?").await;
    history_is(
        &app,
        &session_id,
        &token,
        &["Before the storm?", "After the storm?"],
    )
    .await;
    drop(redis);
}

// ----------------------------------------------------------------------------------------
// PostgreSQL.

fn postgres_bin(tool: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries in /usr/lib/postgresql (tests/run installs them)")
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|bin| bin.join(tool).exists())
        .collect();
    versions.sort();
    versions.pop().expect("an initdb").join(tool)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// PostgreSQL refuses to run as root: run its tools as `postgres` then.
fn pg(tool: &str) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(postgres_bin(tool));
        command
    } else {
        Command::new(postgres_bin(tool))
    }
}

struct OwnPostgres {
    port: u16,
    dir: PathBuf,
}

impl OwnPostgres {
    fn init() -> Self {
        let dir = temp_dir("pg");
        if is_root() {
            assert!(
                Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let status = pg("initdb")
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        Self {
            port: free_port(),
            dir,
        }
    }

    async fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let status = pg("pg_ctl")
            .args(["-w", "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &options, "start"])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl start");
        wait_port(self.port, true).await;
    }

    async fn stop(&self) {
        let status = pg("pg_ctl")
            .args(["-w", "-m", "fast", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl stop");
        wait_port(self.port, false).await;
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = pg("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn health(app: &TestApp) -> u16 {
    app.get("/health").await.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_refuses_clearly_and_recovers() {
    let postgres = OwnPostgres::init();
    postgres.start().await;
    let app = spawn_app_with(test_config(
        &postgres.url(),
        Some(&seance_tests::redis_url()),
    ))
    .await;
    let Seated {
        session_id,
        token,
        mut host,
        mut guest,
        ..
    } = seated(&app).await;
    assert_eq!(health(&app).await, 200);
    ask(&mut guest, &mut host, "Is the cellar dry?").await;

    postgres.stop().await;
    assert_eq!(health(&app).await, 503, "/health says the database is down");
    let (status, body) = seance_tests::status_and_body(
        app.post("/api/sessions", json!({"name": "Down", "host_name": "Ada"}))
            .await,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    guest
        .send_json(json!({"type": "send_message", "content": "Is the cellar flooding?"}))
        .await;
    let refused = guest.expect("error").await;
    assert_eq!(refused["code"], "unavailable", "{refused}");
    assert_eq!(refused["session_id"], session_id.as_str());
    guest.send_json(json!({"type": "sync"})).await;
    assert_eq!(guest.expect("error").await["code"], "unavailable");

    postgres.start().await;
    let mut attempts = 0;
    while health(&app).await != 200 {
        attempts += 1;
        assert!(attempts < 50, "/health never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ask(&mut guest, &mut host, "Is the cellar dry now?").await;
    history_is(
        &app,
        &session_id,
        &token,
        &["Is the cellar dry?", "Is the cellar dry now?"],
    )
    .await;
}
