//! The WebSocket routes as plain async functions over API Gateway's event types:
//! `$connect`, every message route, and `$disconnect`. The `ws-*` Lambdas call them, and
//! so does the harness, with the events it builds the way API Gateway would.

use std::collections::HashSet;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;
use chrono::{DateTime, TimeZone, Utc};
use http::HeaderValue;
use uuid::Uuid;

use crate::app::App;
use crate::connections::{Connection, Presence};
use crate::domain::{MessageContent, Participant, SessionStatus, TurnState};
use crate::protocol::{ClientFrame, ErrorCode, FrameError, ServerEvent, SpiritState, parse_frame};
use crate::push::Audience;
use crate::ratelimit::{Decision, RateLimit};
use crate::spirit::queue::Ticket;
use crate::store::StoreError;

/// How many messages `session_state` carries without `after`, and at most with it.
pub const STATE_MESSAGES: u32 = 20;
pub const SYNC_PAGE: u32 = 100;

/// The subprotocol a browser offers beside its token: `new WebSocket(url, ["seance", jwt])`.
pub const SUBPROTOCOL: &str = "seance";

fn response(status: i64, body: Option<String>) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse::default();
    response.status_code = status;
    response.body = body.map(Body::Text);
    response
}

fn refuse(status: i64, reason: &str) -> ApiGatewayProxyResponse {
    tracing::info!(status, reason, "connection refused");
    let body = serde_json::json!({"error": {"code": if status == 401 { "unauthorized" } else { "forbidden" }, "message": reason}});
    response(status, Some(body.to_string()))
}

/// Where to reach this event's `@connections` API.
fn endpoint(app: &App, event: &ApiGatewayWebsocketProxyRequest) -> String {
    let ctx = &event.request_context;
    app.push_endpoint(ctx.domain_name.as_deref(), ctx.stage.as_deref())
}

/// The token from `?token=`, or from `Sec-WebSocket-Protocol` for browsers; with the
/// protocol to echo back when the header was used.
fn token_of(event: &ApiGatewayWebsocketProxyRequest) -> (Option<String>, Option<String>) {
    if let Some(token) = event.query_string_parameters.first("token") {
        return (Some(token.to_owned()), None);
    }
    let offered: Vec<String> = event
        .headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect();
    // A JWT has three dot-separated parts; "seance" (or any other name) does not.
    let token = offered.iter().find(|p| p.split('.').count() == 3).cloned();
    let echo = offered
        .iter()
        .find(|p| Some(*p) != token.as_ref())
        .or(token.as_ref())
        .cloned();
    match token {
        Some(token) => (Some(token), echo),
        None => (None, None),
    }
}

/// The harness's `/ws/{session_id}` puts the path in `path`; API Gateway has none.
fn path_session(event: &ApiGatewayWebsocketProxyRequest) -> Option<Option<Uuid>> {
    let path = event.path.as_deref()?;
    let rest = path.strip_prefix("/ws/")?;
    Some(Uuid::parse_str(rest.trim_end_matches('/')).ok())
}

fn connected_at(event: &ApiGatewayWebsocketProxyRequest) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(event.request_context.connected_at)
        .single()
        .filter(|t| t.timestamp() > 0)
        .unwrap_or_else(Utc::now)
}

/// `$connect`: checks the token and the session, records the connection, tells the others.
/// A refusal (401/403) records nothing.
pub async fn handle_connect(
    app: &App,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Some(connection_id) = event.request_context.connection_id.clone() else {
        return response(400, None);
    };
    let (token, protocol) = token_of(&event);
    let Some(token) = token else {
        return refuse(401, "a token is required: ?token=<jwt>");
    };
    let claims = match app.tokens.verify(&token) {
        Ok(claims) => claims,
        Err(err) => return refuse(401, &err.to_string()),
    };
    if let Some(path_sid) = path_session(&event)
        && path_sid != Some(claims.sid)
    {
        return refuse(403, "the token is for another session");
    }
    match app.store.session(claims.sid).await {
        Ok(session) if session.status == SessionStatus::Active => {}
        Ok(_) => return refuse(403, "the session has ended"),
        Err(StoreError::SessionNotFound) => return refuse(403, "the session does not exist"),
        Err(err) => {
            tracing::warn!(%err, "connect: database unavailable");
            return response(503, None);
        }
    }
    let participant = match app.store.participant(claims.sid, claims.sub).await {
        Ok(Some(participant)) => participant,
        Ok(None) => return refuse(403, "the token's participant is not in the session"),
        Err(err) => {
            tracing::warn!(%err, "connect: database unavailable");
            return response(503, None);
        }
    };
    let connection = Connection {
        connection_id: connection_id.clone(),
        session_id: claims.sid,
        participant: participant.clone(),
        connected_at: connected_at(&event),
    };
    let presence = match app.connections.add(&connection).await {
        Ok(presence) => presence,
        Err(err) => {
            tracing::warn!(%err, "connect: connection store unavailable");
            return response(503, None);
        }
    };
    // API Gateway does not order $disconnect after $connect: if this connection's
    // $disconnect already ran (and found nothing to forget), undo the record, or the
    // participant would stay listed as a ghost. $disconnect looks again after leaving
    // its tombstone, so whichever runs second sees the other.
    if app
        .connections
        .is_tombstoned(&connection_id)
        .await
        .unwrap_or(false)
    {
        let _ = app.connections.remove(&connection_id).await;
        tracing::info!(%connection_id, "closed before it was recorded; not announced");
        return response(200, None);
    }
    // The host may have ended the session while this connection was being recorded; the end
    // route closes only the connections it saw, so look again.
    if let Ok(session) = app.store.session(claims.sid).await
        && session.status == SessionStatus::Ended
    {
        let _ = app.connections.remove(&connection_id).await;
        return refuse(403, "the session has ended");
    }
    tracing::info!(%connection_id, session_id = %claims.sid, seat = participant.seat, "connected");
    if presence == Presence::Changed {
        app.broadcaster()
            .broadcast(
                &endpoint(app, &event),
                claims.sid,
                &ServerEvent::UserJoined { participant },
                Audience::AllButConnection(connection_id),
            )
            .await;
    }
    let mut ok = response(200, None);
    if let Some(protocol) = protocol.and_then(|p| HeaderValue::from_str(&p).ok()) {
        ok.headers.insert("sec-websocket-protocol", protocol);
    }
    ok
}

/// `$disconnect`: forgets the connection; `user_left` when it was the participant's last.
pub async fn handle_disconnect(
    app: &App,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Some(connection_id) = event.request_context.connection_id.as_deref() else {
        return response(200, None);
    };
    let mut removed = app.connections.remove(connection_id).await;
    if let Ok(None) = removed {
        // Not recorded (yet): $connect may still be running. Leave a tombstone for it,
        // then look once more in case it recorded the connection in between.
        if let Err(err) = app.connections.tombstone(connection_id).await {
            tracing::warn!(%err, %connection_id, "disconnect: cannot leave a tombstone");
        }
        removed = app.connections.remove(connection_id).await;
    }
    match removed {
        Ok(Some((gone, presence))) => {
            tracing::info!(
                %connection_id,
                session_id = %gone.session_id,
                code = event.request_context.disconnect_status_code,
                "disconnected"
            );
            if presence == Presence::Changed {
                app.broadcaster()
                    .broadcast(
                        &endpoint(app, &event),
                        gone.session_id,
                        &ServerEvent::UserLeft {
                            participant: gone.participant,
                        },
                        Audience::Everyone,
                    )
                    .await;
            }
        }
        Ok(None) => {}
        Err(err) => {
            tracing::warn!(%err, %connection_id, "disconnect: connection store unavailable")
        }
    }
    response(200, None)
}

/// Every message route (`send_message`, `sync`, `typing`, `ping`, `$default`). Answers go
/// out through `@connections`; the integration response itself is empty.
pub async fn handle_message(
    app: &App,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let Some(connection_id) = event.request_context.connection_id.clone() else {
        return response(200, None);
    };
    let endpoint = endpoint(app, &event);
    // A binary frame reaches the route base64-encoded: it is no frame of the protocol.
    let text = match (&event.body, event.is_base64_encoded) {
        (Some(body), false) => body.as_str(),
        _ => "",
    };
    let connection = match app.connections.get(&connection_id).await {
        Ok(Some(connection)) => connection,
        Ok(None) => {
            // Expired or never recorded: the client must reconnect (and authenticate) again.
            tracing::info!(%connection_id, "message from an unknown connection; closing it");
            let _ = app.pusher.close(&endpoint, &connection_id).await;
            return response(200, None);
        }
        Err(err) => {
            // Which session this socket is in lives in the store that is down: say so to
            // the socket itself, with the nil session id, rather than leave it unanswered.
            tracing::warn!(%err, "message: connection store unavailable");
            let refusal = unavailable(frame_type(text).as_deref());
            let _ = app
                .pusher
                .send(
                    &endpoint,
                    &connection_id,
                    &crate::protocol::encode(Uuid::nil(), &refusal.event()),
                )
                .await;
            return response(200, None);
        }
    };
    let handled = async {
        // Every frame costs something (a sync is four queries), so every frame is budgeted.
        frame_budget(app, &connection_id, text).await?;
        let frame = parse_frame(text, app.config.max_frame_bytes)?;
        answer(app, &endpoint, &connection, frame).await
    };
    // A bug in one frame's handling answers that frame with `internal`; it does not fail
    // the invocation (API Gateway would send the client its own non-protocol frame).
    let outcome = futures_util::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(handled))
        .await
        .unwrap_or_else(|_| {
            tracing::error!(%connection_id, "a frame's handler panicked");
            Err(FrameError::new(
                ErrorCode::Internal,
                "the séance could not do that just now; try again",
                frame_type(text).as_deref(),
            ))
        });
    if let Err(err) = outcome {
        tracing::info!(%connection_id, code = ?err.code, "frame refused");
        app.broadcaster()
            .send_to(&endpoint, &connection, &err.event())
            .await;
    }
    response(200, None)
}

fn internal(request_type: &str) -> FrameError {
    FrameError::new(
        ErrorCode::Internal,
        "the séance could not do that just now; try again",
        Some(request_type),
    )
}

/// The database or a store is unreachable: nothing was done; worth trying again soon.
fn unavailable(request_type: Option<&str>) -> FrameError {
    FrameError {
        retry_after_ms: Some(1000),
        ..FrameError::new(
            ErrorCode::Unavailable,
            "the séance cannot reach its storage just now; nothing was done; try again in a moment",
            request_type,
        )
    }
}

fn store_error(err: StoreError, request_type: &str) -> FrameError {
    match err {
        StoreError::SessionEnded => FrameError::new(
            ErrorCode::SessionEnded,
            "the session has ended",
            Some(request_type),
        ),
        StoreError::UnknownMessage => FrameError::new(
            ErrorCode::InvalidMessage,
            "after is not a message of this session",
            Some(request_type),
        ),
        StoreError::Unavailable(err) => {
            tracing::warn!(%err, "database unavailable while answering a frame");
            unavailable(Some(request_type))
        }
        other => {
            tracing::warn!(err = %other, "store error while answering a frame");
            internal(request_type)
        }
    }
}

async fn answer(
    app: &App,
    endpoint: &str,
    connection: &Connection,
    frame: ClientFrame,
) -> Result<(), FrameError> {
    let kind = frame.type_name();
    let session_id = connection.session_id;
    let broadcaster = app.broadcaster();
    match frame {
        ClientFrame::Ping => {
            broadcaster
                .send_to(endpoint, connection, &ServerEvent::Pong {})
                .await;
        }
        ClientFrame::Sync { after } => {
            let state = session_state(app, session_id, after)
                .await
                .map_err(|e| store_error(e, kind))?;
            broadcaster.send_to(endpoint, connection, &state).await;
        }
        ClientFrame::Typing => {
            let key = format!("typing:{session_id}:{}", connection.participant.id);
            match app
                .limiter
                .acquire(&key, RateLimit::typing(&app.config))
                .await
            {
                Ok(Decision::Allowed) => {
                    broadcaster
                        .broadcast(
                            endpoint,
                            session_id,
                            &ServerEvent::UserTyping {
                                participant: connection.participant.clone(),
                            },
                            Audience::AllButParticipant(connection.participant.id),
                        )
                        .await;
                }
                // Throttled typing is dropped quietly: it is a hint, not a request.
                Ok(Decision::RetryAfter(_)) => {}
                Err(err) => tracing::warn!(%err, "typing: rate limiter unavailable"),
            }
        }
        ClientFrame::SendMessage { content } => {
            let content =
                MessageContent::parse(&content, app.config.max_content_chars).map_err(|err| {
                    FrameError::new(ErrorCode::InvalidMessage, err.message, Some(kind))
                })?;
            accept_question(app, endpoint, connection, content, kind).await?;
        }
    }
    Ok(())
}

/// Accepts one question: checks, stores, queues for the spirit and announces it, then
/// returns; the spirit answers in its own function. All of it happens while the store
/// holds the session's lock (see [`crate::store::Acceptance`]), so acceptances in one
/// session take turns: the order questions are stored in, which is the order the spirit
/// answers them in, is the order everyone is told of them. The queue message goes out
/// before the commit, so a question is never stored without one; a worker it reaches
/// early waits for the commit (or finds nothing, if the acceptance failed).
async fn accept_question(
    app: &App,
    endpoint: &str,
    connection: &Connection,
    content: MessageContent,
    kind: &str,
) -> Result<(), FrameError> {
    let mut accepting = app
        .store
        .begin_accept(connection.session_id)
        .await
        .map_err(|e| store_error(e, kind))?;
    if let Err(refused) =
        announce_question(app, endpoint, connection, content, kind, &mut *accepting).await
    {
        // Nothing stored; the connection goes back to the pool rather than being closed.
        if let Err(err) = accepting.rollback().await {
            tracing::warn!(%err, "send_message: rolling back a refused question failed");
        }
        return Err(refused);
    }
    accepting.commit().await.map_err(|err| {
        // Rare: everyone was told of a question that is not stored. The queue message
        // finds nothing to answer; the asker is told it did not go through.
        tracing::error!(%err, "send_message: the question could not be committed");
        internal(kind)
    })
}

/// The checks, the store, the queue message and the announcement of an acceptance, under
/// its lock; an error means nothing is to be committed.
async fn announce_question(
    app: &App,
    endpoint: &str,
    connection: &Connection,
    content: MessageContent,
    kind: &str,
    accepting: &mut dyn crate::store::Acceptance,
) -> Result<(), FrameError> {
    let session_id = connection.session_id;
    if accepting.session().status == SessionStatus::Ended {
        return Err(store_error(StoreError::SessionEnded, kind));
    }
    // A full queue refuses before anything is counted or stored.
    if accepting.unanswered() >= app.config.spirit.queue_capacity {
        return Err(FrameError::new(
            ErrorCode::SpiritBusy,
            "the spirit has too many questions waiting; ask again once it has answered",
            Some(kind),
        ));
    }
    let limits = [
        (
            format!("message:{session_id}:{}", connection.participant.id),
            RateLimit::questions(&app.config),
            "too many questions",
        ),
        (
            format!("session-questions:{session_id}"),
            RateLimit::session_questions(&app.config),
            "this séance has asked all it may this hour",
        ),
    ];
    for (key, limit, why) in limits {
        check_rate(app, &key, limit, kind, why).await?;
    }
    let message = accepting
        .insert_question(
            Uuid::now_v7(),
            &connection.participant,
            content.into_inner(),
        )
        .await
        .map_err(|e| store_error(e, kind))?;
    let ticket = Ticket {
        session_id,
        question_id: message.id,
        endpoint: Some(endpoint.to_owned()),
    };
    if let Err(err) = app.questions.send(&ticket).await {
        // Rolled back by the caller: nothing stored, nothing shown.
        tracing::error!(%err, "send_message: the spirit's queue is unavailable");
        return Err(unavailable(Some(kind)));
    }
    app.broadcaster()
        .broadcast(
            endpoint,
            session_id,
            &ServerEvent::MessageReceived { message },
            Audience::Everyone,
        )
        .await;
    Ok(())
}

/// One action from a rate-limit bucket, or the protocol's `rate_limited` error.
async fn check_rate(
    app: &App,
    key: &str,
    limit: crate::ratelimit::RateLimit,
    kind: &str,
    why: &str,
) -> Result<(), FrameError> {
    match app.limiter.acquire(key, limit).await {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::RetryAfter(wait)) => Err(rate_limited(wait, why, Some(kind))),
        Err(err) => {
            tracing::warn!(%err, "rate limiter unavailable");
            Err(unavailable(Some(kind)))
        }
    }
}

fn rate_limited(wait: std::time::Duration, why: &str, kind: Option<&str>) -> FrameError {
    let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    FrameError {
        retry_after_ms: Some(retry_after_ms),
        ..FrameError::new(
            ErrorCode::RateLimited,
            format!("{why}; wait {retry_after_ms} ms"),
            kind,
        )
    }
}

/// The `type` a frame names, if it is JSON with a string `type`.
fn frame_type(text: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
}

/// One frame from the connection's budget (every frame, whatever its type). A limiter
/// that cannot answer lets the frame through: the budget guards cost, not correctness.
async fn frame_budget(app: &App, connection_id: &str, text: &str) -> Result<(), FrameError> {
    let key = format!("frames:{connection_id}");
    match app
        .limiter
        .acquire(&key, RateLimit::frames(&app.config))
        .await
    {
        Ok(Decision::Allowed) => Ok(()),
        Ok(Decision::RetryAfter(wait)) => {
            let kind = frame_type(text);
            Err(rate_limited(
                wait,
                "too many frames from this connection",
                kind.as_deref(),
            ))
        }
        Err(err) => {
            tracing::warn!(%err, "frame budget: rate limiter unavailable");
            Ok(())
        }
    }
}

/// The most a message pushed through `@connections` may hold (API Gateway's 128 KB), less
/// room for the envelope.
pub const MAX_STATE_BYTES: usize = 128 * 1024 - 512;

/// `session_state`: the session, who is online (each once, by seat), recent messages (or
/// those after `after`), the spirit's state and the board. Cut by size as well as by
/// count, so it always fits one push: after `after`, the newest are left for the next
/// `sync` (`has_more`); without it, the oldest are left to REST's history.
pub async fn session_state(
    app: &App,
    session_id: Uuid,
    after: Option<Uuid>,
) -> Result<ServerEvent, StoreError> {
    let session = app.store.session(session_id).await?;
    let (messages, has_more) = match after {
        None => (
            app.store
                .messages_before(session_id, None, STATE_MESSAGES)
                .await?
                .messages,
            false,
        ),
        Some(after) => {
            let page = app
                .store
                .messages_after(session_id, after, SYNC_PAGE)
                .await?;
            (page.messages, page.has_more)
        }
    };
    let participants = online(
        app.connections
            .in_session(session_id)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?,
    );
    let (messages, has_more) = fit_messages(messages, has_more, after.is_some());
    Ok(ServerEvent::SessionState {
        session,
        participants,
        messages,
        has_more,
        spirit: match app.store.turn_state(session_id).await? {
            None => SpiritState::Idle,
            Some(TurnState::Speaking) => SpiritState::Speaking,
            // Claimed or still waiting: the spirit is thinking about the session.
            Some(_) => SpiritState::Thinking,
        },
        board: (*app.board).clone(),
    })
}

/// Keeps as many messages as fit [`MAX_STATE_BYTES`] with the rest of the state (room for
/// which is kept generously: participants, board and session come to a few KB).
fn fit_messages(
    mut messages: Vec<crate::domain::Message>,
    mut has_more: bool,
    after: bool,
) -> (Vec<crate::domain::Message>, bool) {
    const REST_OF_STATE: usize = 16 * 1024;
    let sizes: Vec<usize> = messages
        .iter()
        .map(|m| serde_json::to_string(m).map_or(usize::MAX / 2, |t| t.len() + 1))
        .collect();
    let mut total: usize = sizes.iter().sum();
    let budget = MAX_STATE_BYTES - REST_OF_STATE;
    if total <= budget {
        return (messages, has_more);
    }
    if after {
        // Oldest first: keep the front, leave the newest for the next sync.
        let mut keep = messages.len();
        while keep > 0 && total > budget {
            keep -= 1;
            total -= sizes[keep];
        }
        messages.truncate(keep);
        has_more = true;
    } else {
        // The latest state: keep the newest.
        let mut drop = 0;
        while drop < messages.len() && total > budget {
            total -= sizes[drop];
            drop += 1;
        }
        messages.drain(..drop);
    }
    (messages, has_more)
}

/// Each online participant once, in seat order.
pub fn online(connections: Vec<Connection>) -> Vec<Participant> {
    let mut seen = HashSet::new();
    let mut participants: Vec<Participant> = connections
        .into_iter()
        .filter(|c| seen.insert(c.participant.id))
        .map(|c| c.participant)
        .collect();
    participants.sort_by_key(|p| p.seat);
    participants
}
