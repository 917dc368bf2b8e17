//! The spirit's voice: the ElevenLabs client against a local server speaking its exact
//! wire format (streamed NDJSON pieces with and without alignment, each error shape, a
//! cut stream), and end to end on the harness: audio in frame-sized pieces, the same bytes
//! for every listener with a pan track of their own, the planchette reaching each letter
//! as it is heard, a failing voice leaving the text answer as it would be without one,
//! and identical answers synthesised once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine;
use seance::board::Board;
use seance::config::{Secret, SpiritProviderConfig, VoiceConfig};
use seance::spirit::planchette::{self, Pace};
use seance::voice::elevenlabs::ElevenLabs;
use seance::voice::{VoiceError, VoiceProvider};
use seance_tests::mock_llm::{
    MockLlm, Reply, elevenlabs_alignment, elevenlabs_error, elevenlabs_line, gemini_stream, stream,
};
use seance_tests::turns::{Table, ask, check_transcript, table};
use seance_tests::{Backend, TestApp, spawn_app_configured};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const MODEL: &str = "eleven_flash_v2_5";
const FORMAT: &str = "mp3_44100_128";

fn provider(mock: &MockLlm) -> ElevenLabs {
    ElevenLabs::new(
        {
            seance::tls::install_crypto_provider();
            reqwest::Client::new()
        },
        mock.base_url.clone(),
        Secret::new("xi-test-key"),
        MODEL.into(),
        FORMAT.into(),
    )
}

async fn speak(
    voice: &ElevenLabs,
    text: &str,
) -> (Result<(), VoiceError>, Vec<seance::voice::SpeechPiece>) {
    let (tx, mut rx) = mpsc::channel(64);
    let outcome = voice.speak("voice-123", text, tx).await;
    let mut pieces = Vec::new();
    while let Some(piece) = rx.recv().await {
        pieces.push(piece);
    }
    (outcome, pieces)
}

fn ndjson(pieces: &[(&[u8], Option<Value>)], cut: bool) -> Reply {
    Reply::Stream {
        events: pieces
            .iter()
            .map(|(audio, alignment)| elevenlabs_line(audio, alignment.clone()))
            .collect(),
        delay: Duration::from_millis(10),
        cut,
    }
}

#[tokio::test]
async fn elevenlabs_streams_pieces_with_and_without_alignment() {
    let pieces: [(&[u8], Option<Value>); 3] = [
        (
            b"\xff\xfbframe-one",
            Some(elevenlabs_alignment("The ", 0.0, 0.1)),
        ),
        (b"\xff\xfbframe-two", None),
        (
            b"\xff\xfbframe-three",
            Some(elevenlabs_alignment("veil", 0.4, 0.1)),
        ),
    ];
    let mock = MockLlm::start(vec![ndjson(&pieces, false)]).await;
    let (outcome, got) = speak(&provider(&mock), "The veil").await;
    assert_eq!(outcome, Ok(()));
    let sent: Vec<u8> = pieces.iter().flat_map(|(a, _)| a.to_vec()).collect();
    let received: Vec<u8> = got.iter().flat_map(|p| p.audio.clone()).collect();
    assert_eq!(received, sent, "the bytes that arrive are the bytes sent");
    assert_eq!(got.len(), 3);
    assert!(got[1].alignment.is_none());
    let first = got[0].alignment.as_ref().unwrap();
    assert_eq!(first.characters.concat(), "The ");
    assert_eq!(
        got[2]
            .alignment
            .as_ref()
            .unwrap()
            .character_start_times_seconds[0],
        0.4
    );

    let request = &mock.requests()[0];
    assert_eq!(
        request.path,
        "/v1/text-to-speech/voice-123/stream/with-timestamps"
    );
    assert_eq!(request.query, format!("output_format={FORMAT}"));
    assert_eq!(request.headers["xi-api-key"], "xi-test-key");
    assert_eq!(request.body, json!({"text": "The veil", "model_id": MODEL}));
}

#[tokio::test]
async fn elevenlabs_errors_are_read_from_detail() {
    for (status, expected) in [
        (
            401,
            VoiceError::Unauthorized("invalid_api_key: Invalid API key".into()),
        ),
        (422, VoiceError::Invalid("body.text: field required".into())),
        (
            429,
            VoiceError::RateLimited(
                "too_many_concurrent_requests: Too many concurrent requests".into(),
            ),
        ),
        (
            500,
            VoiceError::Upstream {
                status: 500,
                message: "internal_error: Something went wrong".into(),
            },
        ),
    ] {
        let mock = MockLlm::start(vec![elevenlabs_error(status)]).await;
        let (outcome, pieces) = speak(&provider(&mock), "Hello").await;
        assert_eq!(outcome, Err(expected), "{status}");
        assert!(pieces.is_empty());
    }
    // A stream that breaks off: what came is kept, and the end is reported.
    let mock = MockLlm::start(vec![ndjson(
        &[(b"\xff\xfbpart", Some(elevenlabs_alignment("Hel", 0.0, 0.1)))],
        true,
    )])
    .await;
    let (outcome, pieces) = speak(&provider(&mock), "Hello").await;
    assert!(matches!(outcome, Err(VoiceError::Cut(_))), "{outcome:?}");
    assert_eq!(pieces.len(), 1);
}

// ---------------------------------------------------------------------------------------
// End to end.

fn audio_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "spirit_audio")
        .collect()
}

/// Checks one listener's audio for one answer and returns its bytes and pan track.
fn reassemble(events: &[Value], response: &Value) -> (Vec<u8>, Vec<Value>) {
    let audio = audio_events(events);
    assert!(!audio.is_empty(), "the answer was spoken");
    let mut bytes = Vec::new();
    let mut track = Vec::new();
    for (i, piece) in audio.iter().enumerate() {
        assert!(
            piece.to_string().len() <= 32 * 1024,
            "each spirit_audio fits one 32 KB frame"
        );
        assert_eq!(piece["seq"], i as u64);
        assert_eq!(piece["last"], i + 1 == audio.len());
        assert_eq!(piece["message_id"], response["message"]["id"]);
        assert_eq!(piece["question_id"], response["message"]["in_reply_to"]);
        bytes.extend(
            base64::engine::general_purpose::STANDARD
                .decode(piece["audio_base64"].as_str().unwrap())
                .unwrap(),
        );
        for point in piece["pan_track"].as_array().unwrap() {
            let (pan, gain) = (
                point["pan"].as_f64().unwrap(),
                point["gain"].as_f64().unwrap(),
            );
            assert!((-1.0..=1.0).contains(&pan) && (0.0..=1.0).contains(&gain));
            track.push(point.clone());
        }
    }
    (bytes, track)
}

fn response_of(events: &[Value]) -> Value {
    events
        .iter()
        .find(|e| e["type"] == "spirit_response")
        .unwrap()
        .clone()
}

/// Two listeners at different seats hear the same audio with their own pans, and the
/// planchette reaches each letter when the offline voice hums it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_voice_speaks_for_every_seat() {
    let app = spawn_app_configured(Backend::Sqlite, |config| {
        assert_eq!(
            config.voice,
            VoiceConfig::Offline,
            "the harness hums by default"
        );
        config.spirit.oracle_word_delay = Duration::from_millis(10);
    })
    .await;
    let mut table = table(app, "madame-veyra", &["Ada", "Bob", "Cy"]).await;
    table.clients[0]
        .send_json(ask("Tell me of the old house"))
        .await;
    let ada = table.clients[0].collect_until("spirit_response", 1).await;
    let cy = table.clients[2].collect_until("spirit_response", 1).await;
    let response = response_of(&ada);
    let content = response["message"]["content"].as_str().unwrap();
    assert_eq!(
        check_transcript(&ada).len(),
        1,
        "tokens add up to the answer and its path"
    );

    let (ada_bytes, ada_track) = reassemble(&ada, &response);
    let (cy_bytes, cy_track) = reassemble(&cy, &response_of(&cy));
    assert_eq!(ada_bytes, cy_bytes, "the same audio for everyone");
    let (expected, alignment) = seance::voice::offline::synthesise("EXAVITQu4vr4xnSDxMaL", content);
    assert_eq!(ada_bytes, expected, "the persona's voice, whole");
    assert_eq!(&ada_bytes[..4], b"RIFF");
    assert_eq!(audio_events(&ada)[0]["format"], "wav_11025_16");
    assert_ne!(
        ada_track, cy_track,
        "seats 0 and 2 of 8 hear it differently"
    );

    // The planchette reaches each letter when it is heard.
    let path = response["planchette"].as_array().unwrap();
    let heard: Vec<(char, u64)> = alignment
        .characters
        .iter()
        .zip(&alignment.character_start_times_seconds)
        .map(|(c, s)| (c.chars().next().unwrap(), (s * 1000.0).round() as u64))
        .filter(|(c, _)| c.is_ascii_alphanumeric())
        .collect();
    let letters: Vec<(char, u64)> = path
        .iter()
        .filter(|p| p["symbol"] != "REST")
        .map(|p| {
            (
                p["symbol"].as_str().unwrap().chars().next().unwrap(),
                p["at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let upper: Vec<(char, u64)> = heard
        .iter()
        .map(|(c, t)| (c.to_ascii_uppercase(), *t))
        .collect();
    assert_eq!(letters, upper);
    // Each listener's track follows the planchette's moments.
    let moments: Vec<u64> = path.iter().map(|p| p["at_ms"].as_u64().unwrap()).collect();
    let track_moments: Vec<u64> = ada_track
        .iter()
        .map(|p| p["at_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(track_moments, moments);
}

/// A Gemini-shaped model for the text, an ElevenLabs-shaped server for the voice.
async fn spoken_app(model: &MockLlm, voice: &MockLlm) -> TestApp {
    spoken_app_on(Backend::Sqlite, model, voice).await
}

async fn spoken_app_on(backend: Backend, model: &MockLlm, voice: &MockLlm) -> TestApp {
    let (model_url, voice_url) = (model.base_url.clone(), voice.base_url.clone());
    spawn_app_configured(backend, move |config| {
        config.spirit.provider = SpiritProviderConfig::Gemini {
            api_key: Secret::new("test-key"),
            model: "gemini-test".into(),
            base_url: model_url,
        };
        config.voice = VoiceConfig::ElevenLabs {
            api_key: Secret::new("xi-test-key"),
            base_url: voice_url,
            model: MODEL.into(),
            output_format: FORMAT.into(),
        };
    })
    .await
}

async fn one_answer(table: &mut Table, question: &str) -> Vec<Value> {
    table.clients[0].send_json(ask(question)).await;
    table.clients[0].collect_until("spirit_response", 1).await
}

fn pace() -> Pace {
    let config = seance::Config::harness_defaults();
    Pace {
        symbol_ms: config.spirit.planchette_symbol_ms,
        gap_ms: config.spirit.planchette_gap_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elevenlabs_speech_drives_the_board() {
    let model = MockLlm::start(vec![stream(gemini_stream(&["The veil ", "lifts"], "STOP"))]).await;
    let pieces: [(&[u8], Option<Value>); 3] = [
        (b"\xff\xfbone", Some(elevenlabs_alignment("The ", 0.0, 0.1))),
        (
            b"\xff\xfbtwo",
            Some(elevenlabs_alignment("veil ", 0.4, 0.1)),
        ),
        (
            b"\xff\xfbthree",
            Some(elevenlabs_alignment("lifts", 0.9, 0.1)),
        ),
    ];
    let voice = MockLlm::start(vec![ndjson(&pieces, false)]).await;
    let app = spoken_app(&model, &voice).await;
    // Captain Hollow's steering file names his ElevenLabs voice.
    let mut table = table(app, "captain-hollow", &["Ada", "Bob"]).await;
    let events = one_answer(&mut table, "What lies beyond?").await;
    let response = response_of(&events);
    assert_eq!(response["message"]["content"], "The veil lifts");
    assert_eq!(response["fallback"], false);
    check_transcript(&events);
    let (bytes, _) = reassemble(&events, &response);
    let sent: Vec<u8> = pieces.iter().flat_map(|(a, _)| a.to_vec()).collect();
    assert_eq!(bytes, sent);
    assert_eq!(audio_events(&events)[0]["format"], FORMAT);
    assert_eq!(
        voice.requests()[0].path,
        "/v1/text-to-speech/pNInz6obpgDQGcFmaJgB/stream/with-timestamps"
    );
    let timed: Vec<(String, u64)> = response["planchette"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["symbol"].as_str().unwrap().to_owned(),
                p["at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("T", 0),
        ("H", 100),
        ("E", 200),
        ("REST", 300),
        ("V", 400),
        ("E", 500),
        ("I", 600),
        ("L", 700),
        ("REST", 800),
        ("L", 900),
        ("I", 1000),
        ("F", 1100),
        ("T", 1200),
        ("S", 1300),
    ]
    .iter()
    .map(|(s, t)| ((*s).to_owned(), *t))
    .collect();
    assert_eq!(timed, expected, "each letter when it is heard");
    // Each word's token carries its letters, after the pause before it.
    let per_token: Vec<Vec<&str>> = events
        .iter()
        .filter(|e| e["type"] == "spirit_token")
        .map(|t| {
            t["planchette"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["symbol"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(
        per_token,
        [
            vec!["T", "H", "E"],
            vec!["REST", "V", "E", "I", "L"],
            vec!["REST", "L", "I", "F", "T", "S"]
        ]
    );
    // Audio goes out as it is produced: the first piece before the last token.
    let first_audio = events
        .iter()
        .position(|e| e["type"] == "spirit_audio")
        .unwrap();
    let last_token = events
        .iter()
        .rposition(|e| e["type"] == "spirit_token")
        .unwrap();
    assert!(first_audio < last_token, "interleaved with the tokens");
}

/// Audio goes out in as few messages as fit API Gateway's 32 KB frame: the piece that
/// carries a long answer's pan track in smaller parts, so the track fits beside them, and
/// a piece without one in parts of 18 KiB (24 KB of base64); every message fits a frame
/// for every seat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_answers_and_long_audio_fill_frames_without_overflowing_them() {
    let answer = "Remember lighthouse keepers daughters waiting beside freezing harbours \
                  stones whilst northern thunderstorms gathering beyond forgotten treacherous \
                  reefs tonight whispering ancient secrets across moonless waters towards";
    assert_eq!(
        answer.split_whitespace().count(),
        25,
        "Madame Veyra's limit"
    );
    let model = MockLlm::start(vec![stream(gemini_stream(&[answer], "STOP"))]).await;
    // All of it heard in the first piece, so its whole pan track rides on that piece.
    let spoken: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    let trailing: Vec<u8> = (0..40_000u32).map(|i| (i % 241) as u8).collect();
    let pieces: [(&[u8], Option<Value>); 2] = [
        (&spoken, Some(elevenlabs_alignment(answer, 0.0, 0.05))),
        (&trailing, None),
    ];
    let voice = MockLlm::start(vec![ndjson(&pieces, false)]).await;
    let app = spoken_app(&model, &voice).await;
    let mut table = table(app, "madame-veyra", &["Ada", "Bob", "Cy"]).await;
    let events = one_answer(&mut table, "Who waits by the sea?").await;
    let bob = table.clients[1].collect_until("spirit_response", 1).await;
    let response = response_of(&events);
    assert_eq!(response["message"]["content"], answer);
    let (bytes, track) = reassemble(&events, &response);
    assert_eq!(bytes, [spoken.clone(), trailing.clone()].concat());
    let (bob_bytes, _) = reassemble(&bob, &response_of(&bob));
    assert_eq!(bob_bytes, bytes);
    let track_bytes = serde_json::to_string(&track).unwrap().len();
    assert!(track_bytes > 7 * 1024, "a long track: {track_bytes} bytes");

    let sizes: Vec<usize> = audio_events(&events)
        .iter()
        .map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["audio_base64"].as_str().unwrap())
                .unwrap()
                .len()
        })
        .collect();
    // The first piece's parts, then the trailing piece's.
    let mut sum = 0;
    let split = sizes
        .iter()
        .position(|n| {
            sum += n;
            sum == spoken.len()
        })
        .unwrap()
        + 1;
    let (first, second) = sizes.split_at(split);
    assert!(
        first[..first.len() - 1].iter().all(|n| *n == first[0]),
        "{first:?}"
    );
    assert_eq!(second, [18 * 1024, 18 * 1024, 40_000 - 36 * 1024]);
    // The message with the track is filled close to the frame, for every listener.
    for listener in [&events, &bob] {
        let with_track = audio_events(listener)[0].to_string().len();
        assert!(
            (26 * 1024..=32 * 1024).contains(&with_track),
            "{with_track} bytes"
        );
    }
}

/// A spoken answer is collected whole before it is spoken and cut at the persona's word
/// limit on a word boundary: a model that streams the last allowed word in two pieces
/// gets that word whole, and nothing after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_answer_is_cut_at_the_word_limit_with_its_last_word_whole() {
    // Captain Hollow's limit is 12 words; the 12th arrives as "light" + "house".
    let model = MockLlm::start(vec![stream(gemini_stream(
        &[
            "Steer north past the reef and the wreck to the old light",
            "house then home",
        ],
        "STOP",
    ))])
    .await;
    let voice = MockLlm::start(vec![ndjson(&[(b"\xff\xfbwaves", None)], false)]).await;
    let app = spoken_app(&model, &voice).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    let events = one_answer(&mut table, "Which way?").await;
    let response = response_of(&events);
    assert_eq!(
        response["message"]["content"],
        "Steer north past the reef and the wreck to the old lighthouse"
    );
    assert_eq!(
        voice.requests()[0].body["text"],
        "Steer north past the reef and the wreck to the old lighthouse",
        "the voice speaks what is stored"
    );
    check_transcript(&events);
}

/// A voice whose last piece carries no audio (only the timing of the last letters): the
/// answer's audio still ends with a `last` message, an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_piece_without_audio_still_ends_the_audio() {
    let model = MockLlm::start(vec![stream(gemini_stream(&["Hush ", "now"], "STOP"))]).await;
    let voice = MockLlm::start(vec![ndjson(
        &[
            (
                b"\xff\xfbhush",
                Some(elevenlabs_alignment("Hush ", 0.0, 0.1)),
            ),
            (b"", Some(elevenlabs_alignment("now", 0.5, 0.1))),
        ],
        false,
    )])
    .await;
    let app = spoken_app(&model, &voice).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    let events = one_answer(&mut table, "Shall we speak?").await;
    let response = response_of(&events);
    assert_eq!(response["message"]["content"], "Hush now");
    check_transcript(&events);
    let (bytes, _) = reassemble(&events, &response);
    assert_eq!(bytes, b"\xff\xfbhush");
    let audio = audio_events(&events);
    let end = audio.last().unwrap();
    assert_eq!(
        (end["last"].clone(), end["audio_base64"].clone()),
        (json!(true), json!(""))
    );
}

/// 401, 429, 500 or a stream cut before any audio: the text answer and the planchette are
/// exactly what they are without a voice, and no audio goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_voice_leaves_the_answer_as_it_was() {
    let failures = vec![
        elevenlabs_error(401),
        elevenlabs_error(429),
        elevenlabs_error(500),
        Reply::Stream {
            events: vec![],
            delay: Duration::ZERO,
            cut: true,
        },
    ];
    for failure in failures {
        let model = MockLlm::start(vec![stream(gemini_stream(
            &["Heavy seas ", "ahead"],
            "STOP",
        ))])
        .await;
        let voice = MockLlm::start(vec![failure.clone()]).await;
        let app = spoken_app(&model, &voice).await;
        let mut table = table(app, "captain-hollow", &["Ada"]).await;
        let events = one_answer(&mut table, "Will we sail?").await;
        let response = response_of(&events);
        assert_eq!(
            response["message"]["content"], "Heavy seas ahead",
            "{failure:?}"
        );
        assert_eq!(response["fallback"], false);
        let expected = planchette::path(&Board::classic(), pace(), "Heavy seas ahead");
        assert_eq!(
            response["planchette"],
            serde_json::to_value(&expected).unwrap(),
            "{failure:?}"
        );
        check_transcript(&events);
        assert!(audio_events(&events).is_empty(), "{failure:?}");
        assert_eq!(voice.requests().len(), 1);
    }
}

/// A stream cut after its first piece: the answer is whole, its path spells it, and the
/// audio that came is closed with `last`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_cut_midway_still_finishes_the_answer() {
    let model = MockLlm::start(vec![stream(gemini_stream(
        &["Heavy seas ", "ahead"],
        "STOP",
    ))])
    .await;
    let voice = MockLlm::start(vec![ndjson(
        &[(
            b"\xff\xfbheavy",
            Some(elevenlabs_alignment("Heavy ", 0.0, 0.1)),
        )],
        true,
    )])
    .await;
    let app = spoken_app(&model, &voice).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    let events = one_answer(&mut table, "Will we sail?").await;
    let response = response_of(&events);
    assert_eq!(response["message"]["content"], "Heavy seas ahead");
    check_transcript(&events);
    let (bytes, _) = reassemble(&events, &response);
    assert_eq!(bytes, b"\xff\xfbheavy");
}

/// The same answer in the same voice is synthesised once: in process, and in Redis.
async fn identical_answers_are_synthesised_once(backend: Backend) {
    let model = MockLlm::start(vec![stream(gemini_stream(&["YES"], "STOP"))]).await;
    let voice = MockLlm::start(vec![ndjson(
        &[(b"\xff\xfbyes", Some(elevenlabs_alignment("YES", 0.0, 0.2)))],
        false,
    )])
    .await;
    let app = spoken_app_on(backend, &model, &voice).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    let first = one_answer(&mut table, "Is the tide turning?").await;
    let second = one_answer(&mut table, "Is the wind rising?").await;
    // A third: the cache still holds the audio after serving it once.
    let third = one_answer(&mut table, "Is the moon full?").await;
    for events in [&first, &second, &third] {
        let response = response_of(events);
        assert_eq!(response["message"]["content"], "YES");
        assert_eq!(response["planchette"][0]["symbol"], "YES");
        let (bytes, _) = reassemble(events, &response);
        assert_eq!(bytes, b"\xff\xfbyes");
    }
    assert_eq!(voice.requests().len(), 1, "the others came from the cache");
}

/// A voice that answers without any audio leaves nothing in the cache: the same answer
/// later is synthesised again, and spoken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_that_gave_no_audio_is_asked_again() {
    let model = MockLlm::start(vec![stream(gemini_stream(&["NO"], "STOP"))]).await;
    let voice = MockLlm::start(vec![
        ndjson(&[], false),
        ndjson(
            &[(b"\xff\xfbno", Some(elevenlabs_alignment("NO", 0.0, 0.2)))],
            false,
        ),
    ])
    .await;
    let app = spoken_app(&model, &voice).await;
    let mut table = table(app, "captain-hollow", &["Ada"]).await;
    let silent = one_answer(&mut table, "Will the storm pass?").await;
    assert!(audio_events(&silent).is_empty());
    assert_eq!(response_of(&silent)["message"]["content"], "NO");
    let spoken = one_answer(&mut table, "Will the mast hold?").await;
    let (bytes, _) = reassemble(&spoken, &response_of(&spoken));
    assert_eq!(bytes, b"\xff\xfbno");
    assert_eq!(
        voice.requests().len(),
        2,
        "nothing was cached the first time"
    );
}

seance_tests::on_both_backends!(
    redis, in_process:
    identical_answers_are_synthesised_once,
);
