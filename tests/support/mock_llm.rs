//! A local model server that speaks Gemini's and OpenAI's streaming wire formats byte for
//! byte, errors included, so the real provider code runs against it. Each request takes
//! the next scripted reply (the last one repeats) and is recorded for assertions.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::serve::ListenerExt;
use futures_util::StreamExt;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub enum Reply {
    /// 200 with `text/event-stream`: each string is one raw event (separator included),
    /// sent `delay` apart. With `cut`, the connection breaks after the last one.
    Stream {
        events: Vec<String>,
        delay: Duration,
        cut: bool,
    },
    /// An error status with a JSON body and extra headers.
    Error {
        status: u16,
        body: String,
        headers: Vec<(&'static str, String)>,
    },
    /// Waits, then replies.
    Slow(Duration, Box<Reply>),
    /// 200 with `text/event-stream`: `first` in one write, then, once the test releases
    /// it, `rest`: a model that pauses until the test has seen what it waits for.
    Held {
        first: Vec<String>,
        release: Arc<tokio::sync::Notify>,
        rest: Vec<String>,
    },
}

#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Clone, Default)]
struct Mock {
    script: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
}

pub struct MockLlm {
    pub base_url: String,
    mock: Mock,
    _server: tokio::task::JoinHandle<()>,
}

impl MockLlm {
    pub async fn start(script: Vec<Reply>) -> Self {
        let mock = Mock {
            script: Arc::new(Mutex::new(script.into())),
            requests: Arc::default(),
        };
        let app = Router::new().fallback(handle).with_state(mock.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Each streamed event goes out at once, as the real services' do (without
        // TCP_NODELAY, loopback holds small writes back for the client's delayed ACK).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}"),
            mock,
            _server: server,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.mock.requests.lock().expect("lock").clone()
    }
}

async fn handle(State(mock): State<Mock>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20)
        .await
        .unwrap_or_default();
    mock.requests.lock().expect("lock").push(Recorded {
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let reply = {
        let mut script = mock.script.lock().expect("lock");
        if script.len() > 1 {
            script.pop_front()
        } else {
            script.front().cloned()
        }
    };
    respond(reply.unwrap_or(Reply::Error {
        status: 500,
        body: "{}".into(),
        headers: vec![],
    }))
    .await
}

async fn respond(reply: Reply) -> Response {
    let mut reply = reply;
    while let Reply::Slow(wait, then) = reply {
        tokio::time::sleep(wait).await;
        reply = *then;
    }
    match reply {
        Reply::Stream { events, delay, cut } => {
            let stream = futures_util::stream::unfold(
                (events.into_iter(), true),
                move |(mut events, first)| async move {
                    match events.next() {
                        Some(event) => {
                            if !first {
                                tokio::time::sleep(delay).await;
                            }
                            Some((
                                Ok::<Bytes, std::io::Error>(Bytes::from(event)),
                                (events, false),
                            ))
                        }
                        None if cut => {
                            // Let what was sent reach the client before the break.
                            tokio::time::sleep(delay).await;
                            Some((Err(std::io::Error::other("cut")), (events, false)))
                        }
                        None => None,
                    }
                },
            );
            // With `cut`, the error item after the last event aborts the chunked body.
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
        Reply::Held {
            first,
            release,
            rest,
        } => {
            let first = futures_util::stream::once(async move { first.concat() });
            let rest = futures_util::stream::once(async move {
                release.notified().await;
                rest.concat()
            });
            let stream = first
                .chain(rest)
                .map(|events| Ok::<Bytes, std::io::Error>(Bytes::from(events)));
            Response::builder()
                .status(200)
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(stream))
                .unwrap_or_default()
        }
        Reply::Error {
            status,
            body,
            headers,
        } => {
            let mut builder = Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header("content-type", "application/json; charset=UTF-8");
            for (name, value) in headers {
                builder = builder.header(name, value);
            }
            builder.body(Body::from(body)).unwrap_or_default()
        }
        Reply::Slow(..) => Response::default(),
    }
}

fn usage(prompt: u32, candidates: u32) -> Value {
    json!({"promptTokenCount": prompt, "candidatesTokenCount": candidates, "totalTokenCount": prompt + candidates})
}

/// Gemini's SSE: `data: {compact json}\r\n\r\n`, cumulative `usageMetadata`, and a
/// `finishReason` on the last chunk only.
pub fn gemini_stream(pieces: &[&str], finish: &str) -> Vec<String> {
    let mut events = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let mut candidate =
            json!({"content": {"parts": [{"text": piece}], "role": "model"}, "index": 0});
        if last {
            candidate["finishReason"] = json!(finish);
        }
        let chunk = json!({
            "candidates": [candidate],
            "usageMetadata": usage(42, 3 * (i as u32 + 1)),
            "modelVersion": "gemini-flash-latest",
            "responseId": "mock-response",
        });
        events.push(format!(
            "data: {}\r\n\r\n",
            serde_json::to_string(&chunk).unwrap_or_default()
        ));
    }
    events
}

/// A prompt Gemini blocks: HTTP 200, no candidates, `promptFeedback.blockReason`.
pub fn gemini_blocked() -> Vec<String> {
    let chunk = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage(42, 0), "modelVersion": "gemini-flash-latest"});
    vec![format!("data: {chunk}\r\n\r\n")]
}

/// `MAX_TOKENS` with no text (thinking ate the budget).
pub fn gemini_max_tokens_empty() -> Vec<String> {
    let chunk = json!({
        "candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS", "index": 0}],
        "usageMetadata": usage(42, 0),
        "modelVersion": "gemini-flash-latest",
    });
    vec![format!("data: {chunk}\r\n\r\n")]
}

pub fn gemini_error(status: u16, name: &str, message: &str, details: Value) -> Reply {
    let mut error = json!({"code": status, "message": message, "status": name});
    if !details.is_null() {
        error["details"] = details;
    }
    Reply::Error {
        status,
        body: json!({"error": error}).to_string(),
        headers: vec![],
    }
}

/// OpenAI-compatible SSE: `data: {json}\n\n` chunks with `choices[0].delta.content`,
/// ending with `data: [DONE]`.
pub fn openai_stream(pieces: &[&str]) -> Vec<String> {
    let mut events = Vec::new();
    let chunk = |delta: Value, finish: Value| {
        json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_795_000_000, "model": "mock-model",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    events.push(format!(
        "data: {}\n\n",
        chunk(json!({"role": "assistant", "content": ""}), Value::Null)
    ));
    for piece in pieces {
        events.push(format!(
            "data: {}\n\n",
            chunk(json!({"content": piece}), Value::Null)
        ));
    }
    events.push(format!("data: {}\n\n", chunk(json!({}), json!("stop"))));
    events.push("data: [DONE]\n\n".to_owned());
    events
}

pub fn stream(events: Vec<String>) -> Reply {
    Reply::Stream {
        events,
        delay: Duration::from_millis(20),
        cut: false,
    }
}

/// One line of ElevenLabs' `stream/with-timestamps` answer: a piece of audio and the
/// alignment of the characters it speaks (or null).
pub fn elevenlabs_line(audio: &[u8], alignment: Option<Value>) -> String {
    use base64::Engine;
    let line = json!({
        "audio_base64": base64::engine::general_purpose::STANDARD.encode(audio),
        "alignment": alignment.clone(),
        "normalized_alignment": alignment,
    });
    format!("{line}\n")
}

/// An alignment for `text`, one character every `step` seconds from `start`.
pub fn elevenlabs_alignment(text: &str, start: f64, step: f64) -> Value {
    let chars: Vec<String> = text.chars().map(String::from).collect();
    let starts: Vec<f64> = (0..chars.len()).map(|i| start + step * i as f64).collect();
    let ends: Vec<f64> = starts.iter().map(|s| s + step).collect();
    json!({
        "characters": chars,
        "character_start_times_seconds": starts,
        "character_end_times_seconds": ends,
    })
}

/// ElevenLabs' error bodies: `detail` as an object, or (422) a list.
pub fn elevenlabs_error(status: u16) -> Reply {
    let body = match status {
        401 => json!({"detail": {"status": "invalid_api_key", "message": "Invalid API key"}}),
        422 => {
            json!({"detail": [{"loc": ["body", "text"], "msg": "field required", "type": "value_error.missing"}]})
        }
        429 => {
            json!({"detail": {"status": "too_many_concurrent_requests", "message": "Too many concurrent requests"}})
        }
        _ => json!({"detail": {"status": "internal_error", "message": "Something went wrong"}}),
    };
    Reply::Error {
        status,
        body: body.to_string(),
        headers: vec![],
    }
}
