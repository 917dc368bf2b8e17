//! An emulation of the API Gateway WebSocket API, faithful enough that the production
//! handlers run unchanged: each socket gets an API Gateway-shaped connection id; each step
//! becomes the JSON event API Gateway would send, passed through serde as Lambda would;
//! `$connect` can refuse the upgrade; `$disconnect` always fires; and `@connections`
//! answers as the Management API does, so pushes go through the real SDK client.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use futures_util::{SinkExt, StreamExt};
use seance::App;
use seance::push::{PUSH_TIMEOUT, PushError, Pusher, SlowConnections};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// API Gateway's limits: 128 KB per message.
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;
/// The routes of the deployed API besides `$connect`, `$disconnect` and `$default`.
pub const ROUTES: [&str; 4] = ["send_message", "sync", "typing", "ping"];
pub const STAGE: &str = "local";
const API_ID: &str = "localharness";

enum Outbound {
    Text(String),
    Close,
}

struct Socket {
    outbound: mpsc::UnboundedSender<Outbound>,
    connected_at: DateTime<Utc>,
    last_active: Arc<Mutex<DateTime<Utc>>>,
    source_ip: String,
    user_agent: String,
}

/// What a message route invokes: `seance::ws::handle_message`, unless a test swaps in a
/// slow or failing one to see what API Gateway then sends.
pub type MessageHandler = Arc<
    dyn Fn(
            App,
            ApiGatewayWebsocketProxyRequest,
        ) -> futures_util::future::BoxFuture<'static, ApiGatewayProxyResponse>
        + Send
        + Sync,
>;

fn production_handler() -> MessageHandler {
    Arc::new(|app, event| Box::pin(async move { seance::ws::handle_message(&app, event).await }))
}

/// API Gateway's refusals of an `@connections` call other than 410 and 413.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403 `ForbiddenException`: the caller may not manage this API's connections.
    Forbidden,
    /// 429 `LimitExceededException`: throttled.
    Throttled,
}

impl Refusal {
    /// What the direct pusher reports, as the SDK pusher reports the same refusal.
    fn error(self) -> PushError {
        PushError::Other(format!("@connections refused: {self:?}"))
    }

    fn response(self) -> Response {
        let (status, error_type, message) = match self {
            Self::Forbidden => (StatusCode::FORBIDDEN, "ForbiddenException", "Forbidden"),
            Self::Throttled => (
                StatusCode::TOO_MANY_REQUESTS,
                "LimitExceededException",
                "Rate exceeded",
            ),
        };
        let mut response = (status, axum::Json(json!({ "message": message }))).into_response();
        response
            .headers_mut()
            .insert("x-amzn-ErrorType", HeaderValue::from_static(error_type));
        response
    }
}

/// The emulator's state: the app whose handlers it calls, and the open sockets.
pub struct Gateway {
    app: App,
    /// Message-route invocations still running, and a wake-up when one ends.
    running: std::sync::atomic::AtomicUsize,
    ran: tokio::sync::Notify,
    /// Connections whose `@connections` calls never answer (a test's stuck client).
    stalled: Mutex<std::collections::HashSet<String>>,
    /// Connections whose next calls API Gateway refuses, and how many more times.
    refusals: Mutex<HashMap<String, (Refusal, usize)>>,
    message_handler: std::sync::RwLock<MessageHandler>,
    integration_timeout: Duration,
    domain_name: String,
    sockets: Mutex<HashMap<String, Socket>>,
    idle_timeout: Duration,
    max_lifetime: Duration,
    /// Disconnect handlers still running, so shutdown can wait for them.
    in_flight: tokio::sync::Semaphore,
    /// What `@connections` calls are checked against: the key the harness pushes with.
    verifier: crate::sigv4::Verifier,
}

impl Gateway {
    pub fn new(app: App, addr: SocketAddr) -> Arc<Self> {
        let verifier = crate::sigv4::Verifier::for_harness(&app.config.aws_region);
        Arc::new(Self {
            stalled: Mutex::new(std::collections::HashSet::new()),
            refusals: Mutex::new(HashMap::new()),
            running: std::sync::atomic::AtomicUsize::new(0),
            ran: tokio::sync::Notify::new(),
            message_handler: std::sync::RwLock::new(production_handler()),
            integration_timeout: app.config.ws_integration_timeout,
            idle_timeout: app.config.ws_idle_timeout,
            max_lifetime: app.config.ws_max_lifetime,
            app,
            domain_name: addr.to_string(),
            sockets: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            verifier,
        })
    }

    fn sockets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Socket>> {
        self.sockets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces the handler of the message routes (for tests of the gateway itself).
    pub fn replace_message_handler(&self, handler: MessageHandler) {
        *self
            .message_handler
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = handler;
    }

    fn message_handler(&self) -> MessageHandler {
        self.message_handler
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends one frame to a socket, as API Gateway does with its own messages.
    fn send_frame(&self, connection_id: &str, frame: &Value) {
        if let Some(socket) = self.sockets().get(connection_id) {
            let _ = socket.outbound.send(Outbound::Text(frame.to_string()));
        }
    }

    /// From now on, `PostToConnection` for this connection never answers: a connection
    /// that does not answer, for tests of the room going on without it.
    pub fn stall(&self, connection_id: &str) {
        self.stalled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(connection_id.to_owned());
    }

    /// The next `times` `@connections` calls for this connection (either way of pushing)
    /// are refused as API Gateway refuses them, for tests of what the pushers make of it.
    /// Zero times clears what was set.
    pub fn refuse(&self, connection_id: &str, refusal: Refusal, times: usize) {
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if times == 0 {
            refusals.remove(connection_id);
        } else {
            refusals.insert(connection_id.to_owned(), (refusal, times));
        }
    }

    /// Takes one refusal for this connection, if any is left.
    fn take_refusal(&self, connection_id: &str) -> Option<Refusal> {
        let mut refusals = self
            .refusals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (refusal, left) = refusals.get_mut(connection_id)?;
        let refusal = *refusal;
        *left -= 1;
        if *left == 0 {
            refusals.remove(connection_id);
        }
        Some(refusal)
    }

    fn is_stalled(&self, connection_id: &str) -> bool {
        self.stalled
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(connection_id)
    }

    /// Waits until no message-route invocation and no `$disconnect` is running: everything
    /// the frames and closes seen so far caused has been pushed. Tests wait on this
    /// instead of a clock.
    pub async fn settled(&self) {
        loop {
            let ran = self.ran.notified();
            if self.running.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                return;
            }
            ran.await;
        }
    }

    /// How many sockets are open.
    pub fn open_sockets(&self) -> usize {
        self.sockets().len()
    }

    /// Closes every socket (each fires `$disconnect`) and waits for their handlers.
    pub async fn close_all(&self) {
        for socket in self.sockets().values() {
            let _ = socket.outbound.send(Outbound::Close);
        }
        // Woken as each socket's task ends (no polling); bounded, so that a `$disconnect`
        // that hangs cannot keep the harness from stopping. `all_closed` is at the end of
        // the file: cargo-mutants names each mutant by its line, and putting it there kept
        // the names (and the recorded results) of everything else.
        let everything_closed = all_closed(self);
        let _ = tokio::time::timeout(Duration::from_secs(5), everything_closed).await;
    }

    fn request_context(
        &self,
        connection_id: &str,
        route_key: &str,
        event_type: &str,
        connected_at: DateTime<Utc>,
        source_ip: &str,
        user_agent: &str,
    ) -> Value {
        let now = Utc::now();
        json!({
            "routeKey": route_key,
            "eventType": event_type,
            "extendedRequestId": request_id(),
            "requestTime": now.format("%d/%b/%Y:%H:%M:%S %z").to_string(),
            "messageDirection": "IN",
            "stage": STAGE,
            "connectedAt": connected_at.timestamp_millis(),
            "requestTimeEpoch": now.timestamp_millis(),
            "identity": {"sourceIp": source_ip, "userAgent": user_agent},
            "requestId": request_id(),
            "domainName": self.domain_name,
            "connectionId": connection_id,
            "apiId": API_ID,
        })
    }
}

const MAX_IN_FLIGHT: usize = 1 << 20;

/// The event, through JSON text and back, exactly as the Lambda runtime would hand it over.
fn as_lambda_event(event: &Value) -> Option<ApiGatewayWebsocketProxyRequest> {
    let text = serde_json::to_string(event).ok()?;
    match serde_json::from_str(&text) {
        Ok(event) => Some(event),
        Err(err) => {
            tracing::error!(%err, "the emulator built an event the handlers cannot read");
            None
        }
    }
}

/// API Gateway's connection ids: 16 characters ending in `=` (letters and digits before
/// it, so an id is always one path segment of `@connections/{id}`).
pub fn new_connection_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut id: String = bytes[..15]
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect();
    id.push('=');
    id
}

fn request_id() -> String {
    new_connection_id().replace('=', "A")
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    let connections = Router::new()
        .route(
            "/@connections/{connection_id}",
            get(get_connection)
                .post(post_to_connection)
                .delete(delete_connection),
        )
        .route(
            "/{stage}/@connections/{connection_id}",
            get(get_connection_staged)
                .post(post_to_connection_staged)
                .delete(delete_connection_staged),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            gateway.clone(),
            signed_for_this_api,
        ));
    Router::new()
        .route("/ws", get(upgrade))
        .route("/ws/{session_id}", get(upgrade_in_session))
        .merge(connections)
        .layer(DefaultBodyLimit::max(4 * MAX_MESSAGE_BYTES))
        .with_state(gateway)
}

/// Every `@connections` call is checked as API Gateway checks it before anything else:
/// signed with SigV4 for this region's `execute-api`, by the key the harness's own pushes
/// use, recently, and with a signature that matches the request (see [`crate::sigv4`]); or
/// 403 in IAM's words, and the call does nothing. A body over four times the largest
/// message is refused whole (413) before it is read further.
async fn signed_for_this_api(
    State(gateway): State<Arc<Gateway>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 4 * MAX_MESSAGE_BYTES).await else {
        return too_large();
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(parts.uri.path(), |p| p.as_str());
    let checked = gateway.verifier.check(
        parts.method.as_str(),
        path_and_query,
        &parts.headers,
        &body,
        std::time::SystemTime::now(),
    );
    match checked {
        Ok(()) => {
            next.run(axum::extract::Request::from_parts(parts, body.into()))
                .await
        }
        Err(refusal) => {
            tracing::debug!(
                error_type = refusal.error_type,
                "an @connections call was refused"
            );
            let mut response = (
                StatusCode::FORBIDDEN,
                axum::Json(json!({ "message": refusal.message })),
            )
                .into_response();
            response.headers_mut().insert(
                "x-amzn-ErrorType",
                HeaderValue::from_static(refusal.error_type),
            );
            response
        }
    }
}

// ---------------------------------------------------------------------------------------
// The harness's own pushes, without HTTP.

/// Hands the harness's own pushes to its sockets in process, with exactly what its
/// `@connections` endpoint answers: 410 (`Gone`) for a connection that is unknown or whose
/// `$connect` has not returned (it is not among the open sockets until then), 413 over
/// 128 KB, a close for `DeleteConnection`, a stalled connection that never answers (given
/// up after [`PUSH_TIMEOUT`] and skipped for a while, as the SDK pusher does). The SDK
/// path (signing, HTTP to `@connections` and routing again) stays selectable with
/// `HARNESS_PUSH=sdk`, and the endpoint stays for other clients.
#[derive(Debug, Default)]
pub struct DirectPusher {
    gateway: std::sync::OnceLock<std::sync::Weak<Gateway>>,
    slow: SlowConnections,
}

impl DirectPusher {
    /// Connects the pusher to its gateway (made after the app that holds the pusher).
    pub fn attach(&self, gateway: &Arc<Gateway>) {
        let _ = self.gateway.set(Arc::downgrade(gateway));
    }

    fn gateway(&self) -> Result<Arc<Gateway>, PushError> {
        self.gateway
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or_else(|| PushError::Other("the harness has stopped".into()))
    }
}

#[async_trait::async_trait]
impl Pusher for DirectPusher {
    async fn send(
        &self,
        _endpoint: &str,
        connection_id: &str,
        data: &str,
    ) -> Result<(), PushError> {
        if self.slow.recently_slow(connection_id) {
            return Err(PushError::Skipped);
        }
        let gateway = self.gateway()?;
        if data.len() > MAX_MESSAGE_BYTES {
            return Err(PushError::PayloadTooLarge);
        }
        // As the SDK pusher does: a throttled push never reached the connection, so it is
        // tried once more; anything else refused is reported.
        let mut attempts = 0;
        while let Some(refusal) = gateway.take_refusal(connection_id) {
            attempts += 1;
            if refusal != Refusal::Throttled || attempts == 2 {
                return Err(refusal.error());
            }
        }
        if gateway.is_stalled(connection_id) {
            tokio::time::sleep(PUSH_TIMEOUT).await;
            self.slow.mark(connection_id);
            return Err(PushError::Timeout);
        }
        let sockets = gateway.sockets();
        let socket = sockets.get(connection_id).ok_or(PushError::Gone)?;
        socket
            .outbound
            .send(Outbound::Text(data.to_owned()))
            .map_err(|_| PushError::Gone)
    }

    async fn close(&self, _endpoint: &str, connection_id: &str) -> Result<(), PushError> {
        let gateway = self.gateway()?;
        if let Some(refusal) = gateway.take_refusal(connection_id) {
            return Err(refusal.error());
        }
        let sockets = gateway.sockets();
        let socket = sockets.get(connection_id).ok_or(PushError::Gone)?;
        let _ = socket.outbound.send(Outbound::Close);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// The WebSocket side.

async fn upgrade_in_session(
    state: State<Arc<Gateway>>,
    Path(session_id): Path<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    peer: ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    connect(state, Some(session_id), query, headers, peer, ws).await
}

async fn upgrade(
    state: State<Arc<Gateway>>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    peer: ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    connect(state, None, query, headers, peer, ws).await
}

fn lambda_response(response: ApiGatewayProxyResponse) -> Response {
    let status = u16::try_from(response.status_code)
        .ok()
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::BAD_GATEWAY);
    let body = match response.body {
        Some(Body::Text(text)) => text,
        _ => String::new(),
    };
    let mut out = (status, body).into_response();
    out.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    out
}

async fn connect(
    State(gateway): State<Arc<Gateway>>,
    session_id: Option<String>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        let body = json!({"error": {"code": "upgrade_required", "message": "this address takes WebSocket connections only"}});
        return (StatusCode::UPGRADE_REQUIRED, axum::Json(body)).into_response();
    };
    let connection_id = new_connection_id();
    let connected_at = Utc::now();
    let source_ip = peer.ip().to_string();
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let mut header_map = serde_json::Map::new();
    let mut multi_headers = serde_json::Map::new();
    for (name, value) in &headers {
        let Ok(value) = value.to_str() else { continue };
        header_map.insert(name.as_str().to_owned(), json!(value));
        if let Some(list) = multi_headers
            .entry(name.as_str().to_owned())
            .or_insert_with(|| json!([]))
            .as_array_mut()
        {
            list.push(json!(value));
        }
    }
    let query = query.map(|Query(q)| q).unwrap_or_default();
    let mut event = json!({
        "headers": header_map,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": if query.is_empty() { Value::Null } else { json!(query) },
        "multiValueQueryStringParameters": if query.is_empty() { Value::Null } else {
            json!(query.iter().map(|(k, v)| (k.clone(), json!([v]))).collect::<serde_json::Map<_, _>>())
        },
        "requestContext": gateway.request_context(&connection_id, "$connect", "CONNECT", connected_at, &source_ip, &user_agent),
        "isBase64Encoded": false,
    });
    if let Some(session_id) = session_id {
        event["path"] = json!(format!("/ws/{session_id}"));
    }
    let Some(event) = as_lambda_event(&event) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let response = seance::ws::handle_connect(&gateway.app, event).await;
    if !(200..300).contains(&response.status_code) {
        // API Gateway refuses the upgrade with the integration's status; no socket opens.
        return lambda_response(response);
    }
    // tungstenite zeroes a read buffer of this size for every read; axum's default of
    // 128 KiB made that memset a tenth of the harness's CPU under load (perf). Frames are
    // small; longer ones are read in several chunks.
    let mut ws = ws
        .read_buffer_size(8192)
        .max_message_size(4 * MAX_MESSAGE_BYTES)
        .max_frame_size(4 * MAX_MESSAGE_BYTES);
    if let Some(protocol) = response.headers.get("sec-websocket-protocol") {
        ws.set_selected_protocol(protocol.clone());
    }
    let socket_gateway = gateway.clone();
    ws.on_upgrade(move |socket| {
        run_socket(
            socket_gateway,
            socket,
            connection_id,
            connected_at,
            source_ip,
            user_agent,
        )
    })
}

async fn run_socket(
    gateway: Arc<Gateway>,
    socket: WebSocket,
    connection_id: String,
    connected_at: DateTime<Utc>,
    source_ip: String,
    user_agent: String,
) {
    let (outbound, mut outbox) = mpsc::unbounded_channel();
    let last_active = Arc::new(Mutex::new(Utc::now()));
    gateway.sockets().insert(
        connection_id.clone(),
        Socket {
            outbound,
            connected_at,
            last_active: last_active.clone(),
            source_ip: source_ip.clone(),
            user_agent: user_agent.clone(),
        },
    );
    let (mut sink, mut stream) = socket.split();
    let end_of_life = Instant::now() + gateway.max_lifetime;
    let mut idle_deadline = Instant::now() + gateway.idle_timeout;
    // Closed by the client: its code, or 1005 when it gave none; 1006 when the TCP
    // connection just dropped. Closed here: the code we sent.
    // Counts the close as running from before the client can see it until $disconnect has
    // run, so `settled` waits for it.
    let mut closing: Option<Running> = None;
    let (code, reason): (u16, String) = loop {
        let deadline = idle_deadline.min(end_of_life);
        tokio::select! {
            frame = stream.next() => match frame {
                None | Some(Err(_)) => break (1006, "Connection closed abnormally".into()),
                Some(Ok(Message::Text(text))) => {
                    if text.len() > MAX_MESSAGE_BYTES {
                        closing = Some(Running::start(&gateway));
                        let _ = sink.send(close(1009, "Message too big")).await;
                        break (1009, "Message too big".into());
                    }
                    idle_deadline = Instant::now() + gateway.idle_timeout;
                    if let Ok(mut at) = last_active.lock() {
                        *at = Utc::now();
                    }
                    let gateway = gateway.clone();
                    let connection_id = connection_id.clone();
                    let (source_ip, user_agent) = (source_ip.clone(), user_agent.clone());
                    // API Gateway invokes the integration per message, concurrently.
                    tokio::spawn(async move {
                        route_message(gateway, connection_id, text.as_str(), connected_at, &source_ip, &user_agent).await;
                    });
                }
                Some(Ok(Message::Binary(_))) => {
                    closing = Some(Running::start(&gateway));
                    let _ = sink.send(close(1003, "Binary data is not supported")).await;
                    break (1003, "Binary data is not supported".into());
                }
                Some(Ok(Message::Close(frame))) => {
                    break match frame {
                        Some(frame) => (frame.code, frame.reason.as_str().to_owned()),
                        None => (1005, "Client-side close frame status not set".into()),
                    };
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
            out = outbox.recv() => match out {
                Some(Outbound::Text(text)) => {
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break (1006, "Connection closed abnormally".into());
                    }
                }
                Some(Outbound::Close) | None => {
                    closing = Some(Running::start(&gateway));
                    let _ = sink.send(close(1000, "Connection closed by the server")).await;
                    break (1000, "Connection closed by the server".into());
                }
            },
            () = tokio::time::sleep_until(deadline) => {
                let reason = if deadline == end_of_life { "Connection reached its maximum lifetime" } else { "Connection idle" };
                closing = Some(Running::start(&gateway));
                let _ = sink.send(close(1001, reason)).await;
                break (1001, reason.into());
            }
        }
    };
    let _done = closing.unwrap_or_else(|| Running::start(&gateway));
    let _ = sink.close().await;
    let _permit = gateway.in_flight.acquire().await;
    gateway.sockets().remove(&connection_id);
    let mut context = gateway.request_context(
        &connection_id,
        "$disconnect",
        "DISCONNECT",
        connected_at,
        &source_ip,
        &user_agent,
    );
    context["disconnectStatusCode"] = json!(code);
    context["disconnectReason"] = json!(reason);
    let event = json!({
        "headers": {"Host": gateway.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""},
        "multiValueHeaders": {"Host": [gateway.domain_name]},
        "requestContext": context,
        "isBase64Encoded": false,
    });
    if let Some(event) = as_lambda_event(&event) {
        seance::ws::handle_disconnect(&gateway.app, event).await;
    }
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// `$request.body.type` picks the route; anything else goes to `$default`.
pub fn route_key(body: &str) -> &'static str {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .and_then(|t| ROUTES.iter().find(|r| **r == t).copied())
        .unwrap_or("$default")
}

/// One running invocation, counted down however it ends (a panic included).
struct Running(Arc<Gateway>);

impl Running {
    fn start(gateway: &Arc<Gateway>) -> Self {
        gateway
            .running
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(gateway.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .running
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.0.ran.notify_waiters();
    }
}

/// Invokes the message route's integration as API Gateway does: a handler that has not
/// returned within the integration timeout (29 s on AWS, fixed) gets the client API
/// Gateway's own timeout frame while the handler runs on; a handler that fails (here: a
/// panic) gets its `Internal server error` frame. Neither frame is the protocol's.
async fn route_message(
    gateway: Arc<Gateway>,
    connection_id: String,
    body: &str,
    connected_at: DateTime<Utc>,
    source_ip: &str,
    user_agent: &str,
) {
    let mut context = gateway.request_context(
        &connection_id,
        route_key(body),
        "MESSAGE",
        connected_at,
        source_ip,
        user_agent,
    );
    context["messageId"] = json!(request_id());
    let request_id = context["requestId"].clone();
    let event = json!({"requestContext": context, "body": body, "isBase64Encoded": false});
    let Some(event) = as_lambda_event(&event) else {
        return;
    };
    let handler = gateway.message_handler();
    let counted = Running::start(&gateway);
    let invocation = handler(gateway.app.clone(), event);
    // One span per invocation, as the Lambda runtime opens one per event.
    let mut invocation = tokio::spawn(
        async move {
            let _done = counted;
            invocation.await
        }
        .instrument(tracing::info_span!("ws-message")),
    );
    let failure = match tokio::time::timeout(gateway.integration_timeout, &mut invocation).await {
        Ok(Ok(_response)) => return,
        Ok(Err(err)) => {
            tracing::error!(%err, %connection_id, "the message handler failed");
            "Internal server error"
        }
        Err(_) => {
            tracing::warn!(%connection_id, timeout = ?gateway.integration_timeout, "the message handler passed the integration timeout; it runs on");
            "Endpoint request timed out"
        }
    };
    gateway.send_frame(
        &connection_id,
        &json!({"message": failure, "connectionId": connection_id, "requestId": request_id}),
    );
}

// ---------------------------------------------------------------------------------------
// The Management API.

fn gone() -> Response {
    let mut response = (StatusCode::GONE, axum::Json(json!({"message": null}))).into_response();
    response.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static("GoneException"),
    );
    response
}

/// API Gateway's answer to a message over 128 KB.
fn too_large() -> Response {
    let mut response = (
        StatusCode::PAYLOAD_TOO_LARGE,
        axum::Json(json!({"message": "Request entity too large"})),
    )
        .into_response();
    response.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static("PayloadTooLargeException"),
    );
    response
}

async fn post_to_connection(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_MESSAGE_BYTES {
        return too_large();
    }
    if let Some(refusal) = gateway.take_refusal(&connection_id) {
        return refusal.response();
    }
    if gateway.is_stalled(&connection_id) {
        std::future::pending::<()>().await;
    }
    let sockets = gateway.sockets();
    let Some(socket) = sockets.get(&connection_id) else {
        return gone();
    };
    match socket
        .outbound
        .send(Outbound::Text(String::from_utf8_lossy(&body).into_owned()))
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => gone(),
    }
}

async fn get_connection(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
) -> Response {
    let sockets = gateway.sockets();
    let Some(socket) = sockets.get(&connection_id) else {
        return gone();
    };
    let last_active = socket
        .last_active
        .lock()
        .map(|t| *t)
        .unwrap_or(socket.connected_at);
    axum::Json(json!({
        "ConnectedAt": socket.connected_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "Identity": {"SourceIp": socket.source_ip, "UserAgent": socket.user_agent},
        "LastActiveAt": last_active.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }))
    .into_response()
}

async fn delete_connection(
    State(gateway): State<Arc<Gateway>>,
    Path(connection_id): Path<String>,
) -> Response {
    if let Some(refusal) = gateway.take_refusal(&connection_id) {
        return refusal.response();
    }
    let sockets = gateway.sockets();
    let Some(socket) = sockets.get(&connection_id) else {
        return gone();
    };
    let _ = socket.outbound.send(Outbound::Close);
    StatusCode::NO_CONTENT.into_response()
}

async fn post_to_connection_staged(
    state: State<Arc<Gateway>>,
    Path((_stage, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    post_to_connection(state, Path(id), body).await
}

async fn get_connection_staged(
    state: State<Arc<Gateway>>,
    Path((_stage, id)): Path<(String, String)>,
) -> Response {
    get_connection(state, Path(id)).await
}

async fn delete_connection_staged(
    state: State<Arc<Gateway>>,
    Path((_stage, id)): Path<(String, String)>,
) -> Response {
    delete_connection(state, Path(id)).await
}

/// Waits until no socket is open and no `$disconnect` is running (`Gateway::close_all`).
/// Each socket's task takes an `in_flight` permit before it leaves `sockets` and holds it
/// through its `$disconnect`; then its `Running` ends, which wakes this.
async fn all_closed(gateway: &Gateway) {
    loop {
        let ran = gateway.ran.notified();
        if gateway.open_sockets() == 0 && gateway.in_flight.available_permits() == MAX_IN_FLIGHT {
            return;
        }
        ran.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_ids_look_like_api_gateways() {
        for _ in 0..1000 {
            let id = new_connection_id();
            assert_eq!(id.len(), 16);
            assert!(id.ends_with('='));
            assert!(id[..15].chars().all(|c| c.is_ascii_alphanumeric()), "{id}");
            assert_ne!(new_connection_id(), id);
        }
        // Drawn from the whole alphabet, as API Gateway's are.
        let used: std::collections::HashSet<char> = (0..1000)
            .flat_map(|_| new_connection_id().chars().take(15).collect::<Vec<_>>())
            .collect();
        assert!(used.len() > 55, "{} characters used", used.len());
    }

    #[test]
    fn routes_follow_the_body_type() {
        assert_eq!(route_key(r#"{"type":"ping"}"#), "ping");
        assert_eq!(
            route_key(r#"{"type":"send_message","content":"x"}"#),
            "send_message"
        );
        assert_eq!(route_key(r#"{"type":"dance"}"#), "$default");
        assert_eq!(route_key("not json"), "$default");
        assert_eq!(route_key(r#"{"type":5}"#), "$default");
    }
}
