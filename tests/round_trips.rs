//! Database statements and Redis commands per question, counted on PostgreSQL and a Redis
//! of the test's own, so they cannot grow unnoticed: the figures are in the README
//! ("Round trips per question") and the bounds below are those figures.
//!
//! Statements are counted as sqlx reports them (one `sqlx::query` event per statement
//! sent, `BEGIN` and `COMMIT` included: the store's pool sends them as statements, and
//! sends nothing else, not even a ping while connections are busy), by the harness's invocation they ran in (the
//! `ws-message` and `spirit` spans, one per invocation as the Lambda runtime opens them).
//! Redis commands are counted by the server (`INFO commandstats` after `CONFIG RESETSTAT`);
//! a script's own commands count beside the `EVALSHA` that ran them.
//!
//! One test in its own binary: the counting subscriber is the process's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use seance_tests::ws::WsClient;
use seance_tests::{fresh_postgres_url, settle, spawn_app_with, test_config};
use serde_json::json;
use tokio::sync::Notify;
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

static MESSAGE_STATEMENTS: AtomicUsize = AtomicUsize::new(0);
static SPIRIT_STATEMENTS: AtomicUsize = AtomicUsize::new(0);
static OTHER_STATEMENTS: AtomicUsize = AtomicUsize::new(0);
static SPIRIT_INVOCATIONS: AtomicUsize = AtomicUsize::new(0);
static SPIRIT_DONE: Notify = Notify::const_new();
/// Each counted statement's invocation and sqlx's summary of it, for the printout.
static STATEMENTS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Reads sqlx's `summary` field (the statement's first words).
struct Summary(String);

impl tracing::field::Visit for Summary {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "summary" {
            value.clone_into(&mut self.0);
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.0 = format!("{value:?}");
        }
    }
}

/// Counts sqlx's statements by the invocation span they ran in, and finished spirit
/// invocations.
struct Counter;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Counter {
    fn on_event(&self, event: &tracing::Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "sqlx::query" {
            return;
        }
        let invocation = ctx
            .event_scope(event)
            .and_then(|scope| scope.from_root().next().map(|span| span.name()));
        let counter = match invocation {
            Some("ws-message") => &MESSAGE_STATEMENTS,
            Some("spirit") => &SPIRIT_STATEMENTS,
            _ => &OTHER_STATEMENTS,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        let mut summary = Summary(String::new());
        event.record(&mut summary);
        if let Ok(mut statements) = STATEMENTS.lock() {
            statements.push(format!("{}: {}", invocation.unwrap_or("-"), summary.0));
        }
    }

    fn on_close(&self, id: tracing::span::Id, ctx: Context<'_, S>) {
        if ctx.span(&id).is_some_and(|span| span.name() == "spirit") {
            SPIRIT_INVOCATIONS.fetch_add(1, Ordering::SeqCst);
            SPIRIT_DONE.notify_waiters();
        }
    }
}

struct OwnRedis(Child);

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn own_redis() -> (OwnRedis, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let own = OwnRedis(
        Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (tests/run installs it)"),
    );
    let url = format!("redis://127.0.0.1:{port}");
    let client = redis::Client::open(url.as_str()).unwrap();
    for _ in 0..100 {
        if client.get_multiplexed_async_connection().await.is_ok() {
            return (own, url);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("redis-server did not come up on {url}");
}

/// Every command Redis ran since the last `CONFIG RESETSTAT`, by name.
async fn redis_commands(url: &str) -> Vec<(String, u64)> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut counts: Vec<(String, u64)> = info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            // The counting commands themselves.
            (name != "info" && !name.starts_with("config")).then(|| (name.to_owned(), calls))
        })
        .collect();
    counts.sort();
    counts
}

async fn reset_redis_stats(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_redis_commands_per_question_stay_within_their_figures() {
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Counter))
        .expect("the first subscriber of this process");
    let (_redis, redis_url) = own_redis().await;
    let config = test_config(&fresh_postgres_url().await, Some(&redis_url));
    let app = spawn_app_with(config).await;

    let created = app.create_session(None).await;
    let session = created["session"]["id"].as_str().unwrap();
    let mut host = WsClient::connect(&app.ws_url(&created)).await.unwrap();
    host.sync(None).await;
    let guest_ticket = app.join_ticket(session, "Guest").await;
    let mut guest = WsClient::connect(&app.ws_url(&guest_ticket)).await.unwrap();
    guest.sync(None).await;
    settle(&app, &mut [&mut host, &mut guest]).await;
    host.until_pong().await;
    guest.until_pong().await;

    MESSAGE_STATEMENTS.store(0, Ordering::SeqCst);
    SPIRIT_STATEMENTS.store(0, Ordering::SeqCst);
    OTHER_STATEMENTS.store(0, Ordering::SeqCst);
    STATEMENTS.lock().unwrap().clear();
    reset_redis_stats(&redis_url).await;
    let spirit_done = SPIRIT_DONE.notified();
    let invocations_before = SPIRIT_INVOCATIONS.load(Ordering::SeqCst);

    guest
        .send_json(json!({"type": "send_message", "content": "Will the lamp flicker?"}))
        .await;
    host.expect("spirit_response").await;
    guest.expect("spirit_response").await;
    if SPIRIT_INVOCATIONS.load(Ordering::SeqCst) == invocations_before {
        spirit_done.await;
    }
    app.harness.gateway.settled().await;

    let message = MESSAGE_STATEMENTS.load(Ordering::SeqCst);
    let spirit = SPIRIT_STATEMENTS.load(Ordering::SeqCst);
    let other = OTHER_STATEMENTS.load(Ordering::SeqCst);
    let commands = redis_commands(&redis_url).await;
    let redis_total: u64 = commands.iter().map(|(_, calls)| calls).sum();
    eprintln!(
        "per question: send_message {message} statements, the spirit's turn {spirit}, \
         elsewhere {other}; Redis {redis_total} commands: {commands:?}"
    );
    for statement in STATEMENTS.lock().unwrap().iter() {
        eprintln!("  {statement}");
    }
    assert!(
        message > 0 && spirit > 0,
        "nothing counted: {message} {spirit}"
    );
    assert_eq!(other, 0, "every statement runs inside an invocation");
    // The figures measured when this test was written (see the README); lower is fine.
    assert!(
        message <= MESSAGE_STATEMENTS_AT_MOST,
        "send_message: {message} statements"
    );
    assert!(
        spirit <= SPIRIT_STATEMENTS_AT_MOST,
        "the spirit's turn: {spirit} statements"
    );
    assert!(
        redis_total <= REDIS_COMMANDS_AT_MOST,
        "Redis: {redis_total} commands"
    );
}

// Measured on 2026-11-27 (offline spirit, two members): 4, 15 and 28 (3 EVALSHA of the
// rate limits, whose scripts' TIME, GET and SET count too; 12 HVALS, one per fan-out).
// 2026-12-05: the spirit's 14 (the reply one INSERT outside a transaction, the answered
// mark its own UPDATE after the announcement), then 12 (the session read under the
// claim's lock, not by a statement of its own before each claim). 2026-12-06: 10 (after an
// answer, one plain read for another question instead of a locking claim), then 9 (that
// read in the answered mark's own statement). Later: 3 and 6 (PostgreSQL's acceptance
// lock and count, and its whole claim, are each one call to a function of migration 0003;
// the claim no longer needs a transaction of its own, so its BEGIN went too). Then
// send_message's 4 counts its BEGIN, which the store's own pool sends as a statement that
// sqlx reports (sqlx's pool sent it unreported); that pool no longer sends a ping of its
// own with each use, so these are now every round trip to PostgreSQL. Later still:
// send_message's 3 (its BEGIN goes in one simple query with the lock's call). Then the
// spirit's 4 (the history comes with the claim, migration 0004: no read of its own, nor the
// second look a session's first question took).
const MESSAGE_STATEMENTS_AT_MOST: usize = 3;
const SPIRIT_STATEMENTS_AT_MOST: usize = 4;
const REDIS_COMMANDS_AT_MOST: u64 = 28;
