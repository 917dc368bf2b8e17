//! Cold-start benchmark: starts each function's release binary against a local Lambda
//! Runtime API (this program), and reports the time from process start to its first
//! `GET /runtime/invocation/next` (what Lambda reports as Init Duration), to its first
//! event answered, and the process's peak memory (VmHWM). The events are the ones in
//! `tests/events/`; the functions talk to the local PostgreSQL and Redis, and their pushes
//! come back here and are answered 410.
//!
//!     cargo build --release -p sessions-api -p ws-connect -p ws-message -p ws-disconnect -p migrate
//!     cargo run --release -p seance-tests --bin bench-coldstart [-- RUNS]
//!
//! `BENCH_DATABASE_PARAMS=?sslmode=disable` appends to the database URL (to see the cost of TLS).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

#[derive(Default)]
struct Run {
    event: String,
    first_next: Option<Instant>,
    answered: Option<Instant>,
    answer: String,
    served: bool,
}

type Shared = Arc<Mutex<Run>>;

async fn next(State(run): State<Shared>) -> Response {
    let event = {
        let mut run = run.lock().unwrap();
        run.first_next.get_or_insert_with(Instant::now);
        if run.served {
            None
        } else {
            run.served = true;
            Some(run.event.clone())
        }
    };
    let Some(event) = event else {
        // Later polls wait; the process is killed before this returns.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        return StatusCode::NO_CONTENT.into_response();
    };
    let mut headers = HeaderMap::new();
    let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
    headers.insert(
        "lambda-runtime-aws-request-id",
        HeaderValue::from_static("8476a536-e9f4-11e8-9739-2dfe598c3fcd"),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        HeaderValue::from_str(&deadline.to_string()).unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        HeaderValue::from_static("arn:aws:lambda:us-east-1:123456789012:function:seance-bench"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        HeaderValue::from_static(
            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
        ),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (headers, event).into_response()
}

async fn respond(State(run): State<Shared>, body: Bytes) -> StatusCode {
    let mut run = run.lock().unwrap();
    run.answered.get_or_insert_with(Instant::now);
    run.answer = String::from_utf8_lossy(&body).into_owned();
    StatusCode::ACCEPTED
}

async fn gone() -> Response {
    let mut response = (StatusCode::GONE, "{\"message\":null}").into_response();
    response.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static("GoneException"),
    );
    response
}

fn peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = std::env::var("BENCH_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/release"));
    let database_url = seance_tests::fresh_postgres_url().await
        + &std::env::var("BENCH_DATABASE_PARAMS").unwrap_or_default();
    let redis_url = seance_tests::redis_url();
    {
        let config = seance_tests::test_config(&database_url, None);
        let db = seance::store::Database::connect_lazy(&config).unwrap();
        db.migrate_up().await.unwrap();
        db.close().await;
    }

    let run: Shared = Arc::default();
    let app = Router::new()
        .route("/2018-06-01/runtime/invocation/next", get(next))
        .route(
            "/2018-06-01/runtime/invocation/{id}/response",
            post(respond),
        )
        .route("/2018-06-01/runtime/invocation/{id}/error", post(respond))
        .route("/2018-06-01/runtime/init/error", post(respond))
        .route(
            "/local/@connections/{id}",
            post(gone).delete(gone).get(gone),
        )
        .with_state(run.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let event = |path: &str| std::fs::read_to_string(root.join("tests/events").join(path)).unwrap();
    let functions = [
        (
            "sessions-api",
            event("http/health.json"),
            "GET /health (PostgreSQL and Redis)",
        ),
        (
            "ws-connect",
            event("ws/connect-no-token.json"),
            "$connect without a token (401)",
        ),
        (
            "ws-message",
            event("ws/ping.json").replace("CONNECTION_ID", "BenchConn0000A="),
            "ping from an unknown connection (Redis, then a 410)",
        ),
        (
            "ws-disconnect",
            event("ws/disconnect.json").replace("CONNECTION_ID", "BenchConn0000A="),
            "$disconnect (Redis)",
        ),
        (
            "migrate",
            r#"{"action":"status"}"#.to_owned(),
            "migration status (PostgreSQL)",
        ),
    ];
    println!(
        "cold start on this machine ({runs} starts each, release x86_64 binaries; Lambda runs arm64)\n"
    );
    println!(
        "| function | event | init ms (median) | first event answered ms (median) | peak RSS MiB | binary MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|");
    for (name, event, what) in functions {
        let binary = bin_dir.join(name);
        assert!(
            binary.exists(),
            "build it first: cargo build --release -p {name} ({})",
            binary.display()
        );
        let size = std::fs::metadata(&binary).unwrap().len() as f64 / (1024.0 * 1024.0);
        let (mut inits, mut firsts, mut peaks) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            *run.lock().unwrap() = Run {
                event: event.clone(),
                ..Run::default()
            };
            let started = Instant::now();
            let mut child = Command::new(&binary)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_LAMBDA_LOG_STREAM_NAME", "bench")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", "bench")
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
                .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", &redis_url)
                .env("REDIS_KEY_PREFIX", "seance-bench:")
                .env("JWT_SECRET", seance_tests::TEST_JWT_SECRET)
                .env("PUBLIC_WS_URL", "wss://bench.example/local")
                .env(
                    "SPIRIT_QUEUE_URL",
                    "https://sqs.us-east-1.amazonaws.com/123456789012/seance-spirit.fifo",
                )
                .env("APIGW_MANAGEMENT_ENDPOINT", format!("http://{addr}/local"))
                .env("LOG_LEVEL", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if run.lock().unwrap().answered.is_some() || Instant::now() > deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            let peak = peak_kib(child.id());
            let _ = child.kill();
            let _ = child.wait();
            let run = run.lock().unwrap();
            let (Some(first_next), Some(answered)) = (run.first_next, run.answered) else {
                panic!("{name} did not answer within 20 s");
            };
            assert!(!run.answer.is_empty(), "{name} answered nothing");
            inits.push(first_next.duration_since(started).as_secs_f64() * 1000.0);
            firsts.push(answered.duration_since(started).as_secs_f64() * 1000.0);
            peaks.push(peak as f64 / 1024.0);
        }
        println!(
            "| {name} | {what} | {:.1} | {:.1} | {:.1} | {size:.1} |",
            median(&mut inits),
            median(&mut firsts),
            median(&mut peaks)
        );
    }
}
