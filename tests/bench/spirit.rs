//! Spirit latency benchmark: Ada asks, Ada and Bob listen, and we time the first
//! `spirit_token`, the first `spirit_audio` and the `spirit_response`, and count the
//! pushes each question costs. Text from the offline oracle (default pacing) or from a
//! local server streaming Gemini's wire format (5 chunks, 30 ms apart); the voice off, the
//! offline voice, or a local server streaming ElevenLabs' wire format (first piece after
//! 100 ms, then one every 40 ms). The voice cache is off, so every answer is synthesised.
//! Everything runs on this machine.
//!
//!     cargo run --release -p seance-tests --bin bench-spirit [-- ROUNDS]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use seance::config::{Secret, SpiritProviderConfig, VoiceConfig};
use seance_tests::mock_llm::{
    MockLlm, Reply, elevenlabs_alignment, elevenlabs_line, gemini_stream,
};
use seance_tests::{spawn_app_with, test_config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ANSWER: [&str; 5] = ["The tide ", "turns ", "at ", "midnight, ", "crew."];

#[tokio::main]
async fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let model = MockLlm::start(vec![Reply::Stream {
        events: gemini_stream(&ANSWER, "STOP"),
        delay: Duration::from_millis(30),
        cut: false,
    }])
    .await;
    // ElevenLabs-shaped: a piece per word, 4 KB of audio each, aligned to the answer.
    let mut at = 0.0;
    let lines: Vec<String> = ANSWER
        .iter()
        .map(|word| {
            let line = elevenlabs_line(&[0xAB; 4096], Some(elevenlabs_alignment(word, at, 0.07)));
            at += 0.07 * word.chars().count() as f64;
            line
        })
        .collect();
    let voice = MockLlm::start(vec![Reply::Slow(
        Duration::from_millis(100),
        Box::new(Reply::Stream {
            events: lines,
            delay: Duration::from_millis(40),
            cut: false,
        }),
    )])
    .await;
    println!("spirit latency, {rounds} questions per setup, embedded stores, two listeners\n");
    println!(
        "| text | voice | first spirit_token median / p95 ms | first spirit_audio median / p95 ms | spirit_response median / p95 ms | pushes per question | spirit_audio pushes (= listeners × pieces) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (text, spoken) in [
        ("oracle", "none"),
        ("oracle", "offline"),
        ("gemini-mock", "none"),
        ("gemini-mock", "elevenlabs-mock"),
    ] {
        let mut config = test_config("sqlite::memory:", None);
        config.message_burst = 1_000_000;
        config.message_interval = Duration::from_millis(1);
        config.spirit.session_questions_per_hour = 1_000_000;
        config.voice_cache_bytes = 0;
        if text == "gemini-mock" {
            config.spirit.provider = SpiritProviderConfig::Gemini {
                api_key: Secret::new("bench-key"),
                model: "gemini-flash-latest".into(),
                base_url: model.base_url.clone(),
            };
        }
        config.voice = match spoken {
            "offline" => VoiceConfig::Offline,
            "elevenlabs-mock" => VoiceConfig::ElevenLabs {
                api_key: Secret::new("bench-key"),
                base_url: voice.base_url.clone(),
                model: "eleven_flash_v2_5".into(),
                output_format: "mp3_44100_128".into(),
            },
            _ => VoiceConfig::None,
        };
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
        let sid = ticket["session"]["id"].as_str().unwrap().to_owned();
        let guest = app.join_ticket(&sid, "Bob").await;
        let (mut ws, _) = tokio_tungstenite::connect_async(app.ws_url(&ticket))
            .await
            .unwrap();
        let (mut bob, _) = tokio_tungstenite::connect_async(app.ws_url(&guest))
            .await
            .unwrap();
        let (mut first_token, mut first_audio, mut response) = (Vec::new(), Vec::new(), Vec::new());
        let (mut pushes, mut audio_pushes) = (0usize, 0usize);
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
            let (mut token_at, mut audio_at) = (None, None);
            for (listener, socket) in [&mut ws, &mut bob].into_iter().enumerate() {
                loop {
                    let frame = tokio::time::timeout(Duration::from_secs(30), socket.next())
                        .await
                        .unwrap()
                        .unwrap()
                        .unwrap();
                    let Message::Text(text) = frame else { continue };
                    let event: Value = serde_json::from_str(text.as_str()).unwrap();
                    pushes += 1;
                    match event["type"].as_str() {
                        Some("spirit_token") if token_at.is_none() => {
                            token_at = Some(start.elapsed())
                        }
                        Some("spirit_audio") => {
                            audio_pushes += 1;
                            if audio_at.is_none() {
                                audio_at = Some(start.elapsed());
                            }
                        }
                        Some("spirit_response") => {
                            if listener == 0 {
                                response.push(start.elapsed());
                                first_token.push(token_at.unwrap_or_else(|| start.elapsed()));
                                if let Some(at) = audio_at {
                                    first_audio.push(at);
                                }
                            }
                            break;
                        }
                        _ => {}
                    }
                }
            }
        }
        let (t50, t95) = percentiles(&mut first_token);
        let (r50, r95) = percentiles(&mut response);
        let audio = if first_audio.is_empty() {
            "–".to_owned()
        } else {
            let (a50, a95) = percentiles(&mut first_audio);
            format!("{a50:.1} / {a95:.1}")
        };
        println!(
            "| {text} | {spoken} | {t50:.1} / {t95:.1} | {audio} | {r50:.1} / {r95:.1} | {:.1} | {:.1} |",
            pushes as f64 / rounds as f64,
            audio_pushes as f64 / rounds as f64,
        );
    }
}

fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let p95 = samples[(samples.len() * 95 / 100).min(samples.len() - 1)];
    (ms(samples[samples.len() / 2]), ms(p95))
}
