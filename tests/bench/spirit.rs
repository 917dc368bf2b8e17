//! Spirit latency benchmark: one client asks, and we time the first `spirit_token` and the
//! `spirit_response`, for the offline oracle (default pacing) and for a local server that
//! streams Gemini's wire format (5 chunks, 30 ms apart). Everything runs on this machine.
//!
//!     cargo run --release -p seance-tests --bin bench-spirit [-- ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use seance::config::{Secret, SpiritProviderConfig};
use seance_tests::mock_llm::{MockLlm, Reply, gemini_stream};
use seance_tests::{spawn_app_with, test_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let mock = MockLlm::start(vec![Reply::Stream {
        events: gemini_stream(
            &["The tide ", "turns ", "at ", "midnight, ", "crew."],
            "STOP",
        ),
        delay: Duration::from_millis(30),
        cut: false,
    }])
    .await;
    println!("spirit latency, {rounds} questions per provider, embedded stores, one client\n");
    println!(
        "| provider | first spirit_token median ms | p95 ms | spirit_response median ms | p95 ms |"
    );
    println!("|---|---:|---:|---:|---:|");
    for provider in ["oracle", "gemini-mock"] {
        let mut config = test_config("sqlite::memory:", None);
        config.message_burst = 1_000_000;
        config.message_interval = Duration::from_millis(1);
        config.spirit.session_questions_per_hour = 1_000_000;
        if provider == "gemini-mock" {
            config.spirit.provider = SpiritProviderConfig::Gemini {
                api_key: Secret::new("bench-key"),
                model: "gemini-flash-latest".into(),
                base_url: mock.base_url.clone(),
            };
        }
        let app = spawn_app_with(config).await;
        let ticket: Value = app
            .post(
                "/api/sessions",
                json!({"name": "bench", "host_name": "Ada", "persona": "captain-hollow"}),
            )
            .await
            .json()
            .await
            .unwrap();
        let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url(&ticket))
            .await
            .unwrap();
        let mut first_token = Vec::new();
        let mut response = Vec::new();
        for round in 0..rounds {
            let question = format!("Tell me about the voyage number {round}");
            let start = Instant::now();
            ws.send(Message::Text(
                json!({"type": "send_message", "content": question})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
            let mut token_at = None;
            loop {
                let frame = tokio::time::timeout(Duration::from_secs(30), ws.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let Message::Text(text) = frame else { continue };
                let event: Value = serde_json::from_str(text.as_str()).unwrap();
                match event["type"].as_str() {
                    Some("spirit_token") if token_at.is_none() => token_at = Some(start.elapsed()),
                    Some("spirit_response") => {
                        response.push(start.elapsed());
                        first_token.push(token_at.unwrap_or_else(|| start.elapsed()));
                        break;
                    }
                    _ => {}
                }
            }
        }
        let (t50, t95) = percentiles(&mut first_token);
        let (r50, r95) = percentiles(&mut response);
        println!("| {provider} | {t50:.1} | {t95:.1} | {r50:.1} | {r95:.1} |");
    }
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    (ms(samples[samples.len() / 2]), ms(p95))
}
