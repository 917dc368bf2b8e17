//! Fan-out benchmark: N WebSocket clients in one session (spread over the session's 12
//! seats as tabs), one question, and the time from sending it until every client has its
//! `message_received`. The spirit answers each question too; a round starts only after
//! the previous answer has gone out. Runs the harness in-process on port 0; with `BENCH_REDIS_URL` and
//! `BENCH_DATABASE_URL` set it uses Redis and PostgreSQL instead of the embedded stores.
//!
//!     cargo run --release -p seance-tests --bin bench-fanout [-- ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use seance_tests::{spawn_app_with, test_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SIZES: [usize; 4] = [1, 10, 50, 200];

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let database = std::env::var("BENCH_DATABASE_URL").unwrap_or_else(|_| "sqlite::memory:".into());
    let redis = std::env::var("BENCH_REDIS_URL").ok();
    let mut config = test_config(&database, redis.as_deref());
    config.message_burst = 1_000_000;
    config.rest_burst = 1_000_000;
    config.message_interval = Duration::from_millis(1);
    // Every question is answered by the spirit too; keep it quick and never busy, and let
    // each answer finish before the next round (see below).
    config.spirit.oracle_word_delay = Duration::ZERO;
    config.spirit.queue_capacity = 100;
    config.spirit.session_questions_per_hour = 1_000_000;
    let app = spawn_app_with(config).await;
    let stores = if redis.is_some() {
        "Redis"
    } else {
        "in-process"
    };
    println!(
        "fan-out of one message, {rounds} rounds per size, connection store: {stores}, database: {}",
        app.harness.app.store.backend()
    );
    println!();
    println!("| clients | median ms | p95 ms | max ms | per client µs (median) |");
    println!("|---:|---:|---:|---:|---:|");
    let mut medians = Vec::new();
    for n in SIZES {
        let host = {
            let response = app
                .post(
                    "/api/sessions",
                    json!({"name": "bench", "host_name": "host", "max_participants": 12}),
                )
                .await;
            response.json::<Value>().await.unwrap()
        };
        let sid = host["session"]["id"].as_str().unwrap().to_owned();
        let mut tickets = vec![host];
        for i in 1..12 {
            tickets.push(app.join_ticket(&sid, &format!("guest {i}")).await);
        }
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let url = app.ws_url(&tickets[i % tickets.len()]);
            let (stream, _) = tokio_tungstenite::connect_async(url)
                .await
                .expect("connect");
            clients.push(stream);
        }
        // Let the joins' own fan-outs settle, then drain them.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for client in &mut clients {
            while let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(5), client.next()).await
            {}
        }
        let mut samples = Vec::with_capacity(rounds);
        for round in 0..rounds {
            let content = format!("round {round}");
            let start = Instant::now();
            clients[0]
                .send(Message::Text(
                    json!({"type": "send_message", "content": content})
                        .to_string()
                        .into(),
                ))
                .await
                .unwrap();
            let waits = clients.iter_mut().map(|client| {
                let content = content.clone();
                async move {
                    loop {
                        let frame = tokio::time::timeout(Duration::from_secs(10), client.next())
                            .await
                            .expect("message within 10 s")
                            .expect("open")
                            .expect("frame");
                        if let Message::Text(text) = frame {
                            let event: Value = serde_json::from_str(text.as_str()).unwrap();
                            if event["type"] == "message_received"
                                && event["message"]["content"] == content
                            {
                                return;
                            }
                        }
                    }
                }
            });
            futures_util::future::join_all(waits).await;
            samples.push(start.elapsed());
            // Let the spirit's answer to this round go out before the next round starts.
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(10), clients[0].next())
                    .await
                    .expect("answer within 10 s")
                    .expect("open")
                    .expect("frame");
                if let Message::Text(text) = frame
                    && text.as_str().contains("\"spirit_response\"")
                {
                    break;
                }
            }
        }
        samples.sort();
        let median = samples[samples.len() / 2];
        let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
        let max = samples[samples.len() - 1];
        medians.push(median);
        println!(
            "| {n} | {:.2} | {:.2} | {:.2} | {:.0} |",
            ms(median),
            ms(p95),
            ms(max),
            median.as_secs_f64() * 1e6 / n as f64
        );
        for client in clients {
            drop(client);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!();
    println!(
        "fan-out to 50 took {:.1}× a fan-out to 1 (50× would mean one push after another)",
        medians[2].as_secs_f64() / medians[0].as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
