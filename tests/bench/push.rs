//! Push cost: the CPU one `PostToConnection` costs through the real Management API client
//! (`seance::push::ManagementApi`: SDK, SigV4 signing, HTTP) against a local HTTP endpoint
//! that answers 200 as `@connections` does, per push and per question (30 pushes: 5
//! members × received, thinking, tokens, response); and the wall time of fanning one event
//! out to 1, 10, 50 and 200 connections through `Broadcaster::broadcast`.
//!
//!     cargo run --release -p seance-tests --bin bench-push [-- PUSHES]
//!
//! `BENCH_ENDPOINT_DELAY_MS=N` makes the endpoint answer each push after N ms, as a
//! distant `@connections` would: the fan-out is then bound by waiting, not by CPU.
//!
//! CPU is this process's (client and endpoint together, from /proc/self/stat), so the
//! per-push figure is an upper bound on the client's share.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use chrono::Utc;
use seance::connections::{Connection, ConnectionStore, InProcessConnections};
use seance::domain::{Participant, Role};
use seance::protocol::ServerEvent;
use seance::push::{Audience, AwsCredentials, Broadcaster, ManagementApi, Pusher};
use uuid::Uuid;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let pushes: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let delay = Duration::from_millis(
        std::env::var("BENCH_ENDPOINT_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    // The endpoint: 200 for every PostToConnection, as @connections answers a live one.
    let app = Router::new().route(
        "/{stage}/@connections/{id}",
        post(move || async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            ""
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/bench", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let sdk: Arc<dyn Pusher> = Arc::new(ManagementApi::new(
        "us-east-1",
        AwsCredentials::Static,
        seance::tls::AwsTlsRoots::Amazon,
    ));
    let frame = seance::protocol::encode(
        Uuid::now_v7(),
        &ServerEvent::SpiritThinking {
            question_id: Uuid::now_v7(),
        },
    );
    // Warm the client's connection pool.
    for _ in 0..100 {
        sdk.send(&endpoint, "warm=", &frame).await.unwrap();
    }
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    for _ in 0..pushes {
        sdk.send(&endpoint, "bench=", &frame).await.unwrap();
    }
    let per_push_cpu_us = (cpu_seconds() - cpu) * 1e6 / pushes as f64;
    let per_push_wall_us = wall.elapsed().as_secs_f64() * 1e6 / pushes as f64;
    println!(
        "PostToConnection through the SDK to a local endpoint answering after {delay:?}, {pushes} pushes, one at a time:"
    );
    println!(
        "  CPU {per_push_cpu_us:.0} µs a push (client + endpoint), {:.1} ms a question of 30 pushes; wall {per_push_wall_us:.0} µs a push",
        per_push_cpu_us * 30.0 / 1000.0
    );

    // Fan-out of one event to N connections (FANOUT_CONCURRENCY pushes in flight at a time).
    println!();
    println!("| connections | fan-out median ms | × one |");
    println!("|---:|---:|---:|");
    let mut one = 0.0;
    for n in [1usize, 10, 50, 200] {
        let store = Arc::new(InProcessConnections::new(Duration::from_secs(3600)));
        let session_id = Uuid::now_v7();
        for i in 0..n {
            let connection = Connection {
                connection_id: format!("c{i}="),
                session_id,
                participant: Participant {
                    id: Uuid::now_v7(),
                    display_name: format!("p{i}"),
                    role: Role::Participant,
                    seat: 0,
                },
                connected_at: Utc::now() - chrono::Duration::minutes(5),
            };
            store.add(&connection).await.unwrap();
        }
        let broadcaster = Broadcaster {
            connections: store,
            pusher: sdk.clone(),
        };
        let event = ServerEvent::SpiritThinking {
            question_id: Uuid::now_v7(),
        };
        let mut times = Vec::new();
        for _ in 0..30 {
            let started = Instant::now();
            let report = broadcaster
                .broadcast(&endpoint, session_id, &event, Audience::Everyone)
                .await;
            assert_eq!(report.delivered, n);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let m = median(times);
        if n == 1 {
            one = m;
        }
        println!("| {n} | {m:.2} | {:.1} |", m / one);
    }
}
