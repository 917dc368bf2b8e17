//! Cold-start benchmark: starts each function's release binary against a local Lambda
//! Runtime API (this program), and reports the time from process start to its first
//! `GET /runtime/invocation/next` (what Lambda reports as Init Duration), to its first
//! event answered, and the process's peak memory (VmHWM). The events are the ones in
//! `tests/events/`; the functions talk to the local PostgreSQL and Redis, and their pushes
//! come back here and are answered 410.
//!
//! Each start is paired with a start of `bench-hello-lambda` (a hello-world
//! `lambda_runtime` function built with the same profile) fed the same event, the two in
//! alternating order, and the ratio function / hello world is reported as the geometric
//! mean of the pairs' ratios with its 95 % confidence interval (t interval on the logs).
//!
//!     RUSTFLAGS="-C relocation-model=static" cargo build --release --target x86_64-unknown-linux-gnu -p sessions-api -p ws-connect -p ws-message -p ws-disconnect -p spirit -p migrate
//!     cargo build --release -p seance-tests --bin bench-coldstart
//!     ./target/release/bench-coldstart [RUNS]
//!
//! The bench builds its baseline itself, before measuring, with the same command's profile
//! and flags (`cargo build --release --target x86_64-unknown-linux-gnu -p seance-tests --bin
//! bench-hello-lambda`, `RUSTFLAGS="-C relocation-model=static"`). The functions and the
//! hello world are linked as position-dependent executables, as `.cargo/config.toml` has
//! the arm64 build that `sam build` deploys linked (with `--target`, `RUSTFLAGS` reaches the
//! binaries but not the build scripts and proc macros). Two builds, not one: built together
//! with `seance-tests`, the functions would get the features Cargo unifies across the
//! packages (the tests' SQLite) and be larger than what `sam build` deploys.
//! `BENCH_BIN_DIR` points at other builds of the functions (default
//! `target/x86_64-unknown-linux-gnu/release`); `BENCH_FUNCTIONS=ws-connect,ws-message`
//! measures only those. The functions run a single-threaded tokio runtime; the hello world
//! keeps the multi-threaded one of the usual template (`#[tokio::main]`), and
//! `BENCH_HELLO=bench-hello-lambda-current-thread` compares against one that does not.
//!
//! `BENCH_DATABASE_PARAMS=?sslmode=disable` appends to the database URL (to see the cost of TLS).
//! `AWS_TLS_ROOTS` and `SSL_CERT_FILE`, when set, are passed on to the functions (their
//! environment is otherwise cleared). With `AWS_TLS_ROOTS=system` the SDK's HTTP client reads
//! the platform's root certificates, as it did before the built-in Amazon ones; with
//! `SSL_CERT_FILE` too, it reads that one bundle instead of every file of the system's
//! certificate directories. Unset it (`env -u SSL_CERT_FILE`) to start the functions as
//! Lambda does.
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

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

/// The geometric mean of `ours[i] / baseline[i]` and its 95 % confidence interval: a
/// Student t interval on the logs of the ratios, so it is multiplicative and the pairing
/// cancels what the two starts share (the machine's load at that moment).
fn paired_ratio(ours: &[f64], baseline: &[f64]) -> (f64, f64, f64) {
    let logs: Vec<f64> = ours
        .iter()
        .zip(baseline)
        .map(|(a, b)| (a / b).ln())
        .collect();
    let n = logs.len() as f64;
    let mean = logs.iter().sum::<f64>() / n;
    let variance = logs.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    let half = t_975(logs.len().saturating_sub(1)) * (variance / n).sqrt();
    (mean.exp(), (mean - half).exp(), (mean + half).exp())
}

/// The 97.5th percentile of Student's t with `df` degrees of freedom.
fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => TABLE[df - 1],
        31..=60 => 2.00,
        _ => 1.96,
    }
}

/// A Runtime API (and `@connections`) of its own for one start: a killed process's last
/// poll, still in flight, can then never take the next start's event.
async fn runtime_api() -> (Shared, SocketAddr, tokio::task::JoinHandle<()>) {
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
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (run, addr, server)
}

/// One start: (init ms, first event answered ms, peak RSS MiB).
async fn start_once(
    binary: &std::path::Path,
    name: &str,
    event: &str,
    env: &[(&str, String)],
) -> (f64, f64, f64) {
    let (run, addr, server) = runtime_api().await;
    run.lock().unwrap().event = event.to_owned();
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("AWS_LAMBDA_FUNCTION_NAME", name)
        .env("AWS_LAMBDA_RUNTIME_API", addr.to_string())
        .env("APIGW_MANAGEMENT_ENDPOINT", format!("http://{addr}/local"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
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
    server.abort();
    let run = run.lock().unwrap();
    let (Some(first_next), Some(answered)) = (run.first_next, run.answered) else {
        panic!("{name} did not answer within 20 s");
    };
    assert!(!run.answer.is_empty(), "{name} answered nothing");
    (
        first_next.duration_since(started).as_secs_f64() * 1000.0,
        answered.duration_since(started).as_secs_f64() * 1000.0,
        peak as f64 / 1024.0,
    )
}

/// The target and flags every measured binary is built with (this file's header).
const TARGET: &str = "x86_64-unknown-linux-gnu";
const RUSTFLAGS: &str = "-C relocation-model=static";

/// Builds the baseline the way the functions are built (the release profile, x86_64,
/// position-dependent: this file's header) and returns its path, so every run compares
/// against a hello world of this checkout's profile and flags, not whatever binary lies
/// about. Cargo does nothing when it is up to date.
fn build_hello_world(root: &std::path::Path, name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args = [
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        "seance-tests",
        "--bin",
        name,
    ];
    eprintln!(
        "building the baseline: RUSTFLAGS=\"{RUSTFLAGS}\" cargo {}",
        args.join(" ")
    );
    let output = Command::new(cargo)
        .current_dir(root)
        .env("RUSTFLAGS", RUSTFLAGS)
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs");
    assert!(output.status.success(), "building {name} failed");
    // The artifact message of the binary names its path (the target directory may be
    // anywhere: CARGO_TARGET_DIR, a config file).
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .find_map(|message| {
            let executable = message["executable"].as_str()?;
            (message["target"]["name"] == name).then(|| PathBuf::from(executable))
        })
        .unwrap_or_else(|| panic!("cargo built no {name}"))
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
        .unwrap_or_else(|_| root.join("target").join(TARGET).join("release"));
    let database_url = seance_tests::fresh_postgres_url().await
        + &std::env::var("BENCH_DATABASE_PARAMS").unwrap_or_default();
    let redis_url = seance_tests::redis_url();
    {
        let config = seance_tests::test_config(&database_url, None);
        let db = seance::store::Database::connect_lazy(&config).unwrap();
        db.migrate_up().await.unwrap();
        db.close().await;
    }

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
            "spirit",
            event("sqs/question.json"),
            "a ticket for an unknown session (PostgreSQL)",
        ),
        (
            "migrate",
            r#"{"action":"status"}"#.to_owned(),
            "migration status (PostgreSQL)",
        ),
    ];
    let mut env: Vec<(&str, String)> = vec![
        ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".into()),
        ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256".into()),
        ("AWS_LAMBDA_LOG_STREAM_NAME", "bench".into()),
        ("AWS_LAMBDA_LOG_GROUP_NAME", "bench".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "AKIDBENCH".into()),
        ("AWS_SECRET_ACCESS_KEY", "bench-secret".into()),
        ("DATABASE_URL", database_url.clone()),
        ("REDIS_URL", redis_url.clone()),
        ("REDIS_KEY_PREFIX", "seance-bench:".into()),
        ("JWT_SECRET", seance_tests::TEST_JWT_SECRET.into()),
        ("PUBLIC_WS_URL", "wss://bench.example/local".into()),
        (
            "SPIRIT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/seance-spirit.fifo".into(),
        ),
        ("LOG_LEVEL", "warn".into()),
    ];
    for passed_on in ["SSL_CERT_FILE", "AWS_TLS_ROOTS"] {
        if let Ok(value) = std::env::var(passed_on) {
            env.push((passed_on, value));
        }
    }
    let hello_name = std::env::var("BENCH_HELLO").unwrap_or_else(|_| "bench-hello-lambda".into());
    let hello = build_hello_world(&root, &hello_name);
    let mib =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().len() as f64 / (1024.0 * 1024.0);
    println!(
        "cold start on this machine ({runs} paired starts each, release x86_64 binaries; Lambda runs arm64);\n\
         ratios are function / hello world, geometric mean of the pairs [95 % CI]\n"
    );
    println!(
        "| function | event | init ms (median): function / hello | init ratio [95 % CI] | first event answered ms (median): function / hello | first event ratio [95 % CI] | peak RSS MiB: function / hello | binary MiB: function / hello |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    // `BENCH_FUNCTIONS=ws-connect,ws-message` measures only those.
    let only: Option<Vec<String>> = std::env::var("BENCH_FUNCTIONS")
        .ok()
        .map(|list| list.split(',').map(|name| name.trim().to_owned()).collect());
    for (name, event, what) in functions {
        if only
            .as_ref()
            .is_some_and(|only| !only.iter().any(|wanted| wanted == name))
        {
            continue;
        }
        let binary = bin_dir.join(name);
        assert!(
            binary.exists(),
            "build it first (see this file's header): RUSTFLAGS=\"{RUSTFLAGS}\" cargo build --release --target {TARGET} -p {name} ({})",
            binary.display()
        );
        let (mut ours, mut base) = (Vec::new(), Vec::new());
        for i in 0..runs {
            // Alternate who goes first, so neither always starts on a warmer cache.
            let (a, b) = if i % 2 == 0 {
                let b = start_once(&hello, "hello", &event, &env).await;
                (start_once(&binary, name, &event, &env).await, b)
            } else {
                let a = start_once(&binary, name, &event, &env).await;
                (a, start_once(&hello, "hello", &event, &env).await)
            };
            ours.push(a);
            base.push(b);
        }
        let column = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| -> Vec<f64> {
            v.iter().map(f).collect()
        };
        let (init, init_base) = (column(&ours, |r| r.0), column(&base, |r| r.0));
        let (first, first_base) = (column(&ours, |r| r.1), column(&base, |r| r.1));
        let (peak, peak_base) = (column(&ours, |r| r.2), column(&base, |r| r.2));
        let (ri, ri_lo, ri_hi) = paired_ratio(&init, &init_base);
        let (rf, rf_lo, rf_hi) = paired_ratio(&first, &first_base);
        println!(
            "| {name} | {what} | {:.2} / {:.2} | {ri:.2}× [{ri_lo:.2}, {ri_hi:.2}] | {:.2} / {:.2} | {rf:.2}× [{rf_lo:.2}, {rf_hi:.2}] | {:.1} / {:.1} | {:.1} / {:.1} |",
            median(&init),
            median(&init_base),
            median(&first),
            median(&first_base),
            median(&peak),
            median(&peak_base),
            mib(&binary),
            mib(&hello),
        );
    }
}
