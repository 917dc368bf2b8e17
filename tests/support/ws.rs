//! A real WebSocket client for the tests, with a buffer so a test can wait for one event
//! type while others arrive in between.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous, because a loaded 2-core CI machine runs many harnesses at once; a passing
/// test never waits this long.
pub const WAIT: Duration = Duration::from_secs(15);

pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    buffer: VecDeque<Value>,
    /// The close frame's code, once the server closed the socket.
    pub closed_with: Option<u16>,
}

/// What a refused handshake answered.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self, Refused> {
        Self::connect_with(url.into_client_request().expect("request")).await
    }

    pub async fn connect_with(
        request: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Self, Refused> {
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _response)) => Ok(Self {
                stream,
                buffer: VecDeque::new(),
                closed_with: None,
            }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            }),
            Err(other) => panic!("handshake failed without an HTTP answer: {other}"),
        }
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.expect("send");
    }

    /// The next frame from the server, or `None` on timeout or close. Every protocol
    /// event has a `type`; a frame without one is API Gateway's own (a timeout or an
    /// integration failure), which no protocol route may ever cause: it fails the test
    /// unless the test asked for it with [`expect_gateway_frame`](Self::expect_gateway_frame).
    async fn read(&mut self, wait: Duration) -> Option<Value> {
        let frame = self.read_any(wait).await?;
        assert!(
            frame.get("type").is_some(),
            "API Gateway's own frame reached a client: {frame}"
        );
        Some(frame)
    }

    /// The next frame without a `type` (API Gateway's own), keeping protocol events for
    /// later.
    pub async fn expect_gateway_frame(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self
                .read_any(left)
                .await
                .unwrap_or_else(|| panic!("no frame from API Gateway within {WAIT:?}"));
            if frame.get("type").is_none() {
                return frame;
            }
            self.buffer.push_back(frame);
        }
    }

    async fn read_any(&mut self, wait: Duration) -> Option<Value> {
        loop {
            match tokio::time::timeout(wait, self.stream.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return None,
                Ok(Some(Ok(Message::Text(text)))) => {
                    return Some(
                        serde_json::from_str(text.as_str()).expect("server frames are JSON"),
                    );
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    self.closed_with = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    return None;
                }
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Sends a `ping` and returns every event that came before its `pong` (buffered ones
    /// first). Once the gateway has settled (see [`crate::settle`]), everything earlier
    /// frames caused for this connection is among them: a positive marker, not a clock.
    pub async fn until_pong(&mut self) -> Vec<Value> {
        self.send_json(serde_json::json!({"type": "ping"})).await;
        let mut events = self.collect_until("pong", 1).await;
        events.pop();
        events
    }

    /// The next event, whatever its type (buffered ones first).
    pub async fn next_event(&mut self) -> Value {
        if let Some(event) = self.buffer.pop_front() {
            return event;
        }
        self.read(WAIT)
            .await
            .unwrap_or_else(|| panic!("no event within {WAIT:?}"))
    }

    /// Waits for the first event of `kind`, keeping others for later.
    pub async fn expect(&mut self, kind: &str) -> Value {
        self.try_expect(kind, WAIT)
            .await
            .unwrap_or_else(|| panic!("no `{kind}` event within {WAIT:?}; saw {:?}", self.buffer))
    }

    pub async fn try_expect(&mut self, kind: &str, wait: Duration) -> Option<Value> {
        if let Some(i) = self.buffer.iter().position(|e| e["type"] == kind) {
            return self.buffer.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let event = self.read(left).await?;
            if event["type"] == kind {
                return Some(event);
            }
            self.buffer.push_back(event);
        }
    }

    /// Asserts no event of `kind` arrives within `wait`.
    pub async fn expect_none(&mut self, kind: &str, wait: Duration) {
        if let Some(event) = self.try_expect(kind, wait).await {
            panic!("unexpected `{kind}`: {event}");
        }
    }

    /// Every event that arrives within `wait` (and those buffered).
    pub async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let mut events: Vec<Value> = self.buffer.drain(..).collect();
        while let Some(event) = self.read(wait).await {
            events.push(event);
        }
        events
    }

    /// Every event, in arrival order (buffered ones first), up to and including the
    /// `count`th of `kind`.
    pub async fn collect_until(&mut self, kind: &str, count: usize) -> Vec<Value> {
        let mut events: Vec<Value> = Vec::new();
        let mut seen = 0;
        while let Some(event) = self.buffer.pop_front() {
            seen += usize::from(event["type"] == kind);
            events.push(event);
            if seen == count {
                return events;
            }
        }
        let deadline = tokio::time::Instant::now() + 3 * WAIT;
        while seen < count {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.read(left).await else {
                panic!("only {seen} of {count} `{kind}` events arrived; saw {events:?}");
            };
            seen += usize::from(event["type"] == kind);
            events.push(event);
        }
        events
    }

    /// Waits until the server closes the socket; returns its close code.
    pub async fn expect_closed(&mut self) -> u16 {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.closed_with.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(!left.is_zero(), "the socket was not closed");
            match self.read(left).await {
                Some(event) => self.buffer.push_back(event),
                None if self.closed_with.is_none() => {
                    // Stream ended without a close frame.
                    return 1006;
                }
                None => {}
            }
        }
        self.closed_with.unwrap_or(1006)
    }

    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        // Read until the server acknowledges, so its $disconnect has begun.
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.stream.next()).await {}
    }

    /// Drops the TCP connection without a close frame.
    pub fn kill(self) {
        drop(self.stream);
    }

    /// A sync, answered with `session_state`.
    pub async fn sync(&mut self, after: Option<&str>) -> Value {
        let mut frame = serde_json::json!({"type": "sync"});
        if let Some(after) = after {
            frame["after"] = after.into();
        }
        self.send_json(frame).await;
        self.expect("session_state").await
    }
}
