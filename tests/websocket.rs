//! The WebSocket protocol end to end: real clients against the harness's API Gateway
//! emulator, which calls the production handlers and pushes through the real Management
//! API client. Every test runs twice: in-process stores (SQLite), and Redis (PostgreSQL).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use chrono::Utc;
use seance::auth::{Claims, TokenKeys};
use seance::config::{JwtSecret, Secret};
use seance::connections::Connection;
use seance::domain::Participant;
use seance_tests::ws::WsClient;
use seance_tests::{
    Backend, TEST_JWT_SECRET, TestApp, keys, message_ids, seed_questions, settle, spawn_app,
    spawn_app_configured,
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

const QUIET: Duration = Duration::from_millis(300);

fn test_keys() -> TokenKeys {
    TokenKeys::new(
        &JwtSecret::Configured(Secret::new(TEST_JWT_SECRET)),
        Duration::from_secs(3600),
    )
}

/// A session with a connected, synced host.
struct Room {
    app: TestApp,
    ticket: Value,
    sid: String,
    host: WsClient,
}

async fn room(app: TestApp) -> Room {
    let ticket = app.create_session(None).await;
    let sid = ticket["session"]["id"].as_str().unwrap().to_owned();
    let mut host = WsClient::connect(&app.ws_url(&ticket)).await.unwrap();
    host.sync(None).await;
    Room {
        app,
        ticket,
        sid,
        host,
    }
}

impl Room {
    async fn guest(&self, name: &str) -> (Value, WsClient) {
        let ticket = self.app.join_ticket(&self.sid, name).await;
        let mut client = WsClient::connect(&self.app.ws_url(&ticket)).await.unwrap();
        client.sync(None).await;
        (ticket, client)
    }
}

fn names(participants: &Value) -> Vec<String> {
    participants
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["display_name"].as_str().unwrap().to_owned())
        .collect()
}

async fn sync_answers_with_the_whole_state(backend: Backend) {
    let Room {
        app,
        ticket,
        sid,
        mut host,
    } = room(spawn_app(backend).await).await;
    host.send_json(json!({"type": "sync"})).await;
    let state = host.expect("session_state").await;
    assert_eq!(
        keys(&state),
        [
            "board",
            "has_more",
            "messages",
            "participants",
            "session",
            "session_id",
            "spirit",
            "timestamp",
            "type"
        ]
    );
    assert_eq!(state["session_id"], sid);
    assert!(chrono::DateTime::parse_from_rfc3339(state["timestamp"].as_str().unwrap()).is_ok());
    assert_eq!(state["session"], ticket["session"]);
    assert_eq!(state["participants"], json!([ticket["participant"]]));
    assert_eq!(state["messages"], json!([]));
    assert_eq!(state["spirit"], "idle");
    assert_eq!(state["has_more"], false);
    let symbols: Vec<&str> = state["board"]["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["symbol"].as_str().unwrap())
        .collect();
    for needed in ["YES", "NO", "GOODBYE", "REST", "A", "Z", "0", "9"] {
        assert!(symbols.contains(&needed), "{needed} missing from the board");
    }
    // The connection list in the store matches.
    let connections = app
        .harness
        .app
        .connections
        .in_session(sid.parse().unwrap())
        .await
        .unwrap();
    assert_eq!(connections.len(), 1);
}

async fn ping_gets_pong(backend: Backend) {
    let Room {
        app: _app,
        sid,
        mut host,
        ..
    } = room(spawn_app(backend).await).await;
    host.send_json(json!({"type": "ping"})).await;
    let pong = host.expect("pong").await;
    assert_eq!(pong["session_id"], sid);
}

async fn refused_handshakes_open_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let ticket = app.create_session(None).await;
    let other = app.create_session(None).await;
    let base = ticket["websocket_url"].as_str().unwrap().to_owned();
    let sid = ticket["session"]["id"].as_str().unwrap().to_owned();
    let token = ticket["token"].as_str().unwrap().to_owned();
    let claims = test_keys().verify(&token).unwrap();
    let now = Utc::now().timestamp();
    let expired = test_keys()
        .sign(&Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        })
        .unwrap();
    let forged = TokenKeys::new(
        &JwtSecret::Configured(Secret::new("a-different-secret-that-is-long-enough")),
        Duration::from_secs(60),
    )
    .sign(&claims)
    .unwrap();
    let other_sid = other["session"]["id"].as_str().unwrap();
    let cases = [
        (base.clone(), 401, "missing token"),
        (format!("{base}?token="), 401, "empty token"),
        (format!("{base}?token=not.a.jwt"), 401, "malformed"),
        (format!("{base}?token={expired}"), 401, "expired"),
        (format!("{base}?token={forged}"), 401, "wrong signature"),
        (
            format!("{base}/{other_sid}?token={token}"),
            403,
            "another session's path",
        ),
        (
            format!("{base}/not-a-uuid?token={token}"),
            403,
            "a path that is no session",
        ),
    ];
    for (url, status, what) in cases {
        let refused = WsClient::connect(&url)
            .await
            .err()
            .unwrap_or_else(|| panic!("{what}: opened"));
        assert_eq!(refused.status, status, "{what}: {}", refused.body);
        // The handler's own error body comes through API Gateway's refusal.
        let body: Value = serde_json::from_str(&refused.body)
            .unwrap_or_else(|err| panic!("{what}: {err}: {:?}", refused.body));
        assert!(body["error"]["code"].is_string(), "{what}: {body}");
    }
    // The right path is fine.
    let ok = WsClient::connect(&format!("{base}/{sid}?token={token}")).await;
    assert!(ok.is_ok());
    drop(ok);

    // An ended session refuses with 403.
    let ended = app.create_session(None).await;
    let ended_sid = ended["session"]["id"].as_str().unwrap();
    let response = app
        .post_with_token(
            &format!("/api/sessions/{ended_sid}/end"),
            ended["token"].as_str().unwrap(),
        )
        .await;
    assert_eq!(response.status(), 204);
    let refused = WsClient::connect(&app.ws_url(&ended)).await.err().unwrap();
    assert_eq!(refused.status, 403);

    // Nothing was recorded for the refused ones.
    let other_connections = app
        .harness
        .app
        .connections
        .in_session(other_sid.parse().unwrap())
        .await
        .unwrap();
    assert!(other_connections.is_empty());
    let ended_connections = app
        .harness
        .app
        .connections
        .in_session(ended_sid.parse().unwrap())
        .await
        .unwrap();
    assert!(ended_connections.is_empty());
}

async fn presence_counts_participants_not_tabs(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (bob_ticket, mut bob_tab1) = room.guest("Bob").await;
    let joined = room.host.expect("user_joined").await;
    assert_eq!(joined["participant"], bob_ticket["participant"]);
    assert_eq!(joined["session_id"], room.sid);
    // Bob does not hear about himself.
    let seen = bob_tab1.until_pong().await;
    assert!(!seen.iter().any(|e| e["type"] == "user_joined"), "{seen:?}");

    let mut bob_tab2 = WsClient::connect(&room.app.ws_url(&bob_ticket))
        .await
        .unwrap();
    let state = bob_tab2.sync(None).await;
    assert_eq!(
        names(&state["participants"]),
        ["Ada", "Bob"],
        "each participant once, by seat"
    );
    // The second tab's $connect has returned: anything it announced came before this pong.
    let seen = room.host.until_pong().await;
    assert!(!seen.iter().any(|e| e["type"] == "user_joined"), "{seen:?}");

    bob_tab1.close().await;
    settle(&room.app, &mut []).await;
    let seen = room.host.until_pong().await;
    assert!(!seen.iter().any(|e| e["type"] == "user_left"), "{seen:?}");
    let state = room.host.sync(None).await;
    assert_eq!(names(&state["participants"]), ["Ada", "Bob"]);

    bob_tab2.close().await;
    let left = room.host.expect("user_left").await;
    assert_eq!(left["participant"], bob_ticket["participant"]);
    let state = room.host.sync(None).await;
    assert_eq!(names(&state["participants"]), ["Ada"]);
}

async fn questions_reach_everyone_and_are_stored(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (bob_ticket, mut bob) = room.guest("Bob").await;
    bob.send_json(json!({"type": "send_message", "content": "  Is anyone there?  "}))
        .await;
    let mut received = Vec::new();
    for client in [&mut room.host, &mut bob] {
        let event = client.expect("message_received").await;
        assert_eq!(event["session_id"], room.sid);
        let message = &event["message"];
        assert_eq!(message["kind"], "question");
        assert_eq!(message["content"], "Is anyone there?");
        assert_eq!(message["author"], bob_ticket["participant"]);
        assert_eq!(message["in_reply_to"], Value::Null);
        assert_eq!(message["session_id"], room.sid);
        received.push(message.clone());
    }
    assert_eq!(received[0], received[1]);
    let token = room.ticket["token"].as_str().unwrap();
    let history: Value = room
        .app
        .get_with_token(&format!("/api/sessions/{}/messages", room.sid), token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(history["messages"], json!([received[0]]));
    let state = room.host.sync(None).await;
    assert_eq!(state["messages"], json!([received[0]]));
}

async fn typing_goes_to_others_at_most_once_a_second(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (bob_ticket, mut bob) = room.guest("Bob").await;
    let mut bob_tab2 = WsClient::connect(&room.app.ws_url(&bob_ticket))
        .await
        .unwrap();
    bob_tab2.sync(None).await;
    bob.send_json(json!({"type": "typing"})).await;
    let typing = room.host.expect("user_typing").await;
    assert_eq!(typing["participant"], bob_ticket["participant"]);
    for tab in [&mut bob, &mut bob_tab2] {
        let seen = tab.until_pong().await;
        assert!(!seen.iter().any(|e| e["type"] == "user_typing"), "{seen:?}");
    }
    // A second one within the second is not passed on; none is an error either.
    bob.send_json(json!({"type": "typing"})).await;
    settle(&room.app, &mut [&mut bob]).await;
    let seen = room.host.until_pong().await;
    assert!(!seen.iter().any(|e| e["type"] == "user_typing"), "{seen:?}");
    let seen = bob.until_pong().await;
    assert!(!seen.iter().any(|e| e["type"] == "error"), "{seen:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    bob.send_json(json!({"type": "typing"})).await;
    room.host.expect("user_typing").await;
}

async fn bad_frames_get_errors_and_change_nothing(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (_, mut bob) = room.guest("Bob").await;
    room.host.expect("user_joined").await;
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("not json".into(), "invalid_json", None),
        ("[1,2,3]".into(), "invalid_json", None),
        (
            json!({"content": "no type"}).to_string(),
            "unknown_type",
            None,
        ),
        (
            json!({"type": "dance"}).to_string(),
            "unknown_type",
            Some("dance"),
        ),
        (
            json!({"type": "send_message"}).to_string(),
            "invalid_message",
            Some("send_message"),
        ),
        (
            json!({"type": "send_message", "content": 42}).to_string(),
            "invalid_message",
            Some("send_message"),
        ),
        (
            json!({"type": "send_message", "content": "   "}).to_string(),
            "invalid_message",
            Some("send_message"),
        ),
        (
            json!({"type": "send_message", "content": "x".repeat(501)}).to_string(),
            "invalid_message",
            Some("send_message"),
        ),
        (
            json!({"type": "send_message", "content": "bell\u{7}"}).to_string(),
            "invalid_message",
            Some("send_message"),
        ),
        (
            json!({"type": "sync", "after": "nope"}).to_string(),
            "invalid_message",
            Some("sync"),
        ),
        (
            json!({"type": "sync", "after": Uuid::new_v4()}).to_string(),
            "invalid_message",
            Some("sync"),
        ),
        (
            json!({"type": "ping", "pad": "x".repeat(33 * 1024)}).to_string(),
            "invalid_message",
            None,
        ),
    ];
    for (frame, code, request_type) in cases {
        bob.send_text(&frame).await;
        let error = bob.expect("error").await;
        assert_eq!(error["code"], code, "{}", &frame[..frame.len().min(60)]);
        assert_eq!(error["session_id"], room.sid);
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
        match request_type {
            Some(kind) => assert_eq!(error["request_type"], kind),
            None => assert!(error.get("request_type").is_none(), "{error}"),
        }
    }
    // Exactly 500 characters is fine.
    bob.send_json(json!({"type": "send_message", "content": "y".repeat(500)}))
        .await;
    bob.expect("message_received").await;
    // Nothing reached anyone else but that one question (and the spirit's answer to it),
    // nothing else was stored, and the socket is still open.
    bob.expect("spirit_response").await;
    settle(&room.app, &mut [&mut bob]).await;
    let seen = room.host.until_pong().await;
    let kinds: Vec<&str> = seen
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .filter(|k| !k.starts_with("spirit_"))
        .collect();
    assert_eq!(kinds, ["message_received"], "{seen:?}");
    let state = bob.sync(None).await;
    let kinds: Vec<&str> = state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["question", "spirit"]);
    bob.send_json(json!({"type": "ping"})).await;
    bob.expect("pong").await;
}

async fn questions_are_rate_limited(backend: Backend) {
    // A queue long enough that the per-participant limit, not the queue, refuses.
    let app = spawn_app_configured(backend, |config| config.spirit.queue_capacity = 20).await;
    let mut room = room(app).await;
    for i in 0..3 {
        room.host
            .send_json(json!({"type": "send_message", "content": format!("q{i}")}))
            .await;
        room.host.expect("message_received").await;
    }
    room.host
        .send_json(json!({"type": "send_message", "content": "one too many"}))
        .await;
    let error = room.host.expect("error").await;
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["request_type"], "send_message");
    let wait = error["retry_after_ms"].as_u64().unwrap();
    assert!(wait > 0 && wait <= 3000, "{wait}");
    settle(&room.app, &mut [&mut room.host]).await;
    let seen = room.host.until_pong().await;
    assert!(
        !seen.iter().any(|e| e["type"] == "message_received"),
        "{seen:?}"
    );
    let state = room.host.sync(None).await;
    assert_eq!(
        state["messages"].as_array().unwrap().len(),
        3,
        "the refused question was not stored"
    );
    // Someone else still may ask.
    let (_, mut bob) = room.guest("Bob").await;
    bob.send_json(json!({"type": "send_message", "content": "my turn"}))
        .await;
    bob.expect("message_received").await;
}

async fn ending_the_session_tells_everyone_and_closes_the_sockets(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (_, mut bob) = room.guest("Bob").await;
    room.host.expect("user_joined").await;
    let token = room.ticket["token"].as_str().unwrap();
    let response = room
        .app
        .post_with_token(&format!("/api/sessions/{}/end", room.sid), token)
        .await;
    assert_eq!(response.status(), 204);
    for client in [&mut room.host, &mut bob] {
        let ended = client.expect("session_ended").await;
        assert_eq!(ended["session_id"], room.sid);
        assert_eq!(client.expect_closed().await, 1000);
    }
    let leftovers = room.host.drain(QUIET).await;
    assert!(
        leftovers.iter().all(|e| e["type"] != "user_left"),
        "{leftovers:?}"
    );
    let sid: Uuid = room.sid.parse().unwrap();
    settle(&room.app, &mut []).await;
    assert!(
        room.app
            .harness
            .app
            .connections
            .in_session(sid)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(room.app.harness.gateway.open_sockets(), 0);
}

async fn a_dropped_tcp_connection_is_a_user_left(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let (bob_ticket, bob) = room.guest("Bob").await;
    room.host.expect("user_joined").await;
    bob.kill();
    let left = room.host.expect("user_left").await;
    assert_eq!(left["participant"], bob_ticket["participant"]);
    let state = room.host.sync(None).await;
    assert_eq!(names(&state["participants"]), ["Ada"]);
}

async fn a_vanished_connection_is_pruned_on_the_next_push(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let carol_ticket = room.app.join_ticket(&room.sid, "Carol").await;
    let carol: Participant = serde_json::from_value(carol_ticket["participant"].clone()).unwrap();
    // A connection the gateway no longer has, as after a lost $disconnect, opened long
    // enough ago that a 410 cannot mean its $connect is still running.
    let ghost = Connection {
        connection_id: "GhostConnId0AA=".into(),
        session_id: room.sid.parse().unwrap(),
        participant: carol.clone(),
        connected_at: Utc::now() - chrono::Duration::minutes(1),
    };
    room.app.harness.app.connections.add(&ghost).await.unwrap();
    let state = room.host.sync(None).await;
    assert_eq!(names(&state["participants"]), ["Ada", "Carol"]);

    room.host
        .send_json(json!({"type": "send_message", "content": "who is here?"}))
        .await;
    room.host.expect("message_received").await;
    let left = room.host.expect("user_left").await;
    assert_eq!(left["participant"], carol_ticket["participant"]);
    let state = room.host.sync(None).await;
    assert_eq!(names(&state["participants"]), ["Ada"]);
    assert!(
        room.app
            .harness
            .app
            .connections
            .get(&ghost.connection_id)
            .await
            .unwrap()
            .is_none()
    );
}

/// A 410 for a connection whose `$connect` may still be running (API Gateway answers 410
/// until it returns) does not forget it.
async fn a_connection_still_opening_is_not_pruned(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let carol_ticket = room.app.join_ticket(&room.sid, "Carol").await;
    let opening = Connection {
        connection_id: "OpeningConnId0=".into(),
        session_id: room.sid.parse().unwrap(),
        participant: serde_json::from_value(carol_ticket["participant"].clone()).unwrap(),
        connected_at: Utc::now(),
    };
    room.app
        .harness
        .app
        .connections
        .add(&opening)
        .await
        .unwrap();
    room.host
        .send_json(json!({"type": "send_message", "content": "who is here?"}))
        .await;
    room.host.expect("message_received").await;
    room.host.send_json(json!({"type": "ping"})).await;
    let before_pong = room.host.collect_until("pong", 1).await;
    assert!(
        !before_pong.iter().any(|e| e["type"] == "user_left"),
        "{before_pong:?}"
    );
    assert!(
        room.app
            .harness
            .app
            .connections
            .get(&opening.connection_id)
            .await
            .unwrap()
            .is_some()
    );
}

/// Friends who open the link at the same moment all get in: every socket gets its
/// `session_state`, and nobody sees a `user_left` for someone still there.
async fn friends_opening_the_link_at_once_all_get_in(backend: Backend) {
    let app = spawn_app(backend).await;
    for _round in 0..3 {
        let host = app.create_session(Some(8)).await;
        let sid = host["session"]["id"].as_str().unwrap().to_owned();
        let mut tickets = vec![host];
        for i in 1..8 {
            tickets.push(app.join_ticket(&sid, &format!("Friend {i}")).await);
        }
        let mut clients = futures_util::future::join_all(tickets.iter().map(|ticket| {
            let url = app.ws_url(ticket);
            async move {
                let mut client = WsClient::connect(&url).await.unwrap();
                let state = client.sync(None).await;
                assert_eq!(state["type"], "session_state");
                client
            }
        }))
        .await;
        for client in &mut clients {
            client.send_json(json!({"type": "ping"})).await;
            let seen = client.collect_until("pong", 1).await;
            assert!(!seen.iter().any(|e| e["type"] == "user_left"), "{seen:?}");
            let state = client.sync(None).await;
            assert_eq!(
                state["participants"].as_array().unwrap().len(),
                8,
                "{:?}",
                names(&state["participants"])
            );
        }
    }
}

async fn sync_after_resumes_without_gaps(backend: Backend) {
    let mut room = room(spawn_app(backend).await).await;
    let sid: Uuid = room.sid.parse().unwrap();
    let host: Participant = serde_json::from_value(room.ticket["participant"].clone()).unwrap();
    let ids: Vec<String> = seed_questions(&room.app.store(), sid, &host, 105, "q")
        .await
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    let state = room.host.sync(None).await;
    let latest = message_ids(&state["messages"]);
    assert_eq!(latest, ids[85..], "the last 20, oldest first");

    let first = room.host.sync(Some(&ids[0])).await;
    let page = message_ids(&first["messages"]);
    assert_eq!(page, ids[1..101]);
    assert_eq!(first["has_more"], true);
    let rest = room.host.sync(Some(page.last().unwrap())).await;
    let page = message_ids(&rest["messages"]);
    assert_eq!(page, ids[101..]);
    assert_eq!(rest["has_more"], false);

    // A client that dropped and reconnects asks for what it missed.
    let (bob_ticket, bob) = room.guest("Bob").await;
    let last_seen = ids.last().unwrap().clone();
    bob.kill();
    room.host
        .send_json(json!({"type": "send_message", "content": "while you were away"}))
        .await;
    room.host.expect("message_received").await;
    let mut bob = WsClient::connect(&room.app.ws_url(&bob_ticket))
        .await
        .unwrap();
    let resumed = bob.sync(Some(&last_seen)).await;
    let missed = resumed["messages"].as_array().unwrap();
    assert_eq!(missed.len(), 1);
    assert_eq!(missed[0]["content"], "while you were away");
}

async fn frames_api_gateway_refuses_close_the_socket(backend: Backend) {
    let room = room(spawn_app(backend).await).await;
    let mut binary = WsClient::connect(&room.app.ws_url(&room.ticket))
        .await
        .unwrap();
    binary.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!(binary.expect_closed().await, 1003);

    let mut huge = WsClient::connect(&room.app.ws_url(&room.ticket))
        .await
        .unwrap();
    huge.send_text(&json!({"type": "ping", "pad": "x".repeat(129 * 1024)}).to_string())
        .await;
    assert_eq!(huge.expect_closed().await, 1009);
}

async fn a_browser_may_send_the_token_as_a_subprotocol(backend: Backend) {
    let room = room(spawn_app(backend).await).await;
    let url = room.ticket["websocket_url"].as_str().unwrap();
    let token = room.ticket["token"].as_str().unwrap();
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("seance, {token}").parse().unwrap(),
    );
    let (mut stream, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "seance"
    );
    futures_util::SinkExt::send(
        &mut stream,
        Message::Text(json!({"type": "ping"}).to_string().into()),
    )
    .await
    .unwrap();
    let frame = tokio::time::timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut stream),
    )
    .await
    .unwrap()
    .unwrap()
    .unwrap();
    let pong: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(pong["type"], "pong");
}

async fn idle_sockets_are_closed(backend: Backend) {
    let app = spawn_app_configured(backend, |config| {
        config.ws_idle_timeout = Duration::from_millis(600);
    })
    .await;
    let mut room = room(app).await;
    let (bob_ticket, mut bob) = room.guest("Bob").await;
    // The host keeps pinging; Bob says nothing.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        room.host.send_json(json!({"type": "ping"})).await;
    }
    assert_eq!(bob.expect_closed().await, 1001);
    let left = room.host.expect("user_left").await;
    assert_eq!(left["participant"], bob_ticket["participant"]);
}

seance_tests::on_both_backends!(
    redis, in_process:
    sync_answers_with_the_whole_state,
    ping_gets_pong,
    refused_handshakes_open_nothing,
    presence_counts_participants_not_tabs,
    questions_reach_everyone_and_are_stored,
    typing_goes_to_others_at_most_once_a_second,
    bad_frames_get_errors_and_change_nothing,
    questions_are_rate_limited,
    ending_the_session_tells_everyone_and_closes_the_sockets,
    a_dropped_tcp_connection_is_a_user_left,
    a_vanished_connection_is_pruned_on_the_next_push,
    a_connection_still_opening_is_not_pruned,
    friends_opening_the_link_at_once_all_get_in,
    every_frame_is_budgeted,
    sync_after_resumes_without_gaps,
    frames_api_gateway_refuses_close_the_socket,
    a_browser_may_send_the_token_as_a_subprotocol,
    idle_sockets_are_closed,
);

/// The emulator's Management API answers as API Gateway's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connections_endpoint_speaks_the_management_api() {
    let mut room = room(spawn_app(Backend::Sqlite).await).await;
    let connection_id = room
        .app
        .harness
        .app
        .connections
        .in_session(room.sid.parse().unwrap())
        .await
        .unwrap()[0]
        .connection_id
        .clone();
    let encoded = connection_id.replace('=', "%3D");
    for prefix in ["", "/local"] {
        let path = format!("{prefix}/@connections/{encoded}");
        let info: Value = room
            .app
            .connections_call(reqwest::Method::GET, &path, b"")
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            keys(&info),
            ["ConnectedAt", "Identity", "LastActiveAt"],
            "{info}"
        );
        assert_eq!(info["Identity"]["SourceIp"], "127.0.0.1");
        let posted = room
            .app
            .connections_call(reqwest::Method::POST, &path, br#"{"type":"hello"}"#)
            .await;
        assert_eq!(posted.status(), 200);
        assert_eq!(room.host.expect("hello").await["type"], "hello");
        let too_big = room
            .app
            .connections_call(reqwest::Method::POST, &path, &[b'x'; 129 * 1024])
            .await;
        assert_eq!(too_big.status(), 413);
    }
    for method in [
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::DELETE,
    ] {
        let unknown = room
            .app
            .connections_call(method.clone(), "/local/@connections/Nobody0000000A%3D", b"")
            .await;
        assert_eq!(unknown.status(), 410, "{method}");
        assert_eq!(
            unknown.headers().get("x-amzn-errortype").unwrap(),
            "GoneException"
        );
    }
    let deleted = room
        .app
        .connections_call(
            reqwest::Method::DELETE,
            &format!("/local/@connections/{encoded}"),
            b"",
        )
        .await;
    assert_eq!(deleted.status(), 204);
    assert_eq!(room.host.expect_closed().await, 1000);
}

/// A long history of long multi-byte messages never makes a `session_state` larger than
/// API Gateway's 128 KB (it would be refused with 413 and never arrive): `sync` pages it
/// by size, `has_more` until all has come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_of_long_messages_syncs_within_the_message_limit() {
    let mut room = room(spawn_app(Backend::Sqlite).await).await;
    let store = room.app.store();
    let host: Participant = serde_json::from_value(room.ticket["participant"].clone()).unwrap();
    // 500 characters of 4 bytes each: 2 KB a message, 120 of them.
    let long = "𓂀".repeat(490);
    let seeded = seed_questions(&store, room.sid.parse().unwrap(), &host, 120, &long).await;
    let first = seeded[0].id.to_string();
    let mut after = first.clone();
    let mut got = Vec::new();
    let mut pages = 0;
    loop {
        let state = room.host.sync(Some(&after)).await;
        assert!(state.to_string().len() <= 128 * 1024, "one push holds it");
        let messages = state["messages"].as_array().unwrap().clone();
        assert!(!messages.is_empty());
        after = messages.last().unwrap()["id"].as_str().unwrap().to_owned();
        got.extend(
            messages
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        pages += 1;
        if state["has_more"] == false {
            break;
        }
    }
    assert!(pages >= 3, "cut by size, not only by count: {pages} pages");
    let expected: Vec<String> = seeded[1..].iter().map(|m| m.id.to_string()).collect();
    assert_eq!(got, expected, "every message once, in order");
    // Without `after`: the newest that fit.
    let state = room.host.sync(None).await;
    assert!(state.to_string().len() <= 128 * 1024);
    let newest = state["messages"].as_array().unwrap();
    assert_eq!(
        newest.last().unwrap()["id"],
        seeded.last().unwrap().id.to_string()
    );
}

/// Panics the moment it is asked anything: a stand-in for a bug deep in a handler.
struct PanickingLimiter;

#[async_trait::async_trait]
impl seance::ratelimit::RateLimiter for PanickingLimiter {
    async fn acquire(
        &self,
        _key: &str,
        _limit: seance::ratelimit::RateLimit,
    ) -> Result<seance::ratelimit::Decision, seance::ratelimit::RateLimitError> {
        panic!("a bug in the rate limiter")
    }
}

/// A handler that panics answers with the protocol's `internal` error, over the socket
/// and over REST, and the process goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_answers_internal() {
    let mut room = room(spawn_app(Backend::Sqlite).await).await;
    let mut broken = room.app.harness.app.clone();
    broken.limiter = std::sync::Arc::new(PanickingLimiter);
    let connection_id = room
        .app
        .harness
        .app
        .connections
        .in_session(room.sid.parse().unwrap())
        .await
        .unwrap()[0]
        .connection_id
        .clone();
    let event: aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest =
        serde_json::from_value(json!({
            "requestContext": {
                "routeKey": "typing", "eventType": "MESSAGE", "messageId": "m1", "connectionId": connection_id,
                "connectedAt": 1_795_000_000_000_i64, "requestTimeEpoch": 1_795_000_000_000_i64,
                "domainName": "example.test", "stage": "local", "apiId": "x", "requestId": "r", "identity": {"sourceIp": "127.0.0.1"},
            },
            "body": json!({"type": "typing"}).to_string(),
            "isBase64Encoded": false,
        }))
        .unwrap();
    let response = seance::ws::handle_message(&broken, event).await;
    assert_eq!(response.status_code, 200);
    let error = room.host.expect("error").await;
    assert_eq!(error["code"], "internal");
    assert_eq!(error["request_type"], "typing");

    let rest = tower::ServiceExt::oneshot(
        seance::rest::router(broken),
        http::Request::post("/api/sessions")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"name": "Broken", "host_name": "Ada"}).to_string(),
            ))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(rest.status(), 500);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(rest.into_body(), 1 << 16)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["error"]["code"], "internal");
    // The harness still serves.
    room.host.send_json(json!({"type": "ping"})).await;
    room.host.expect("pong").await;
}

/// Every frame costs from one budget per connection, whatever its type: past it, each
/// frame gets `rate_limited` with `retry_after_ms`, and does nothing else.
async fn every_frame_is_budgeted(backend: Backend) {
    let app = spawn_app_configured(backend, |config| {
        config.frame_burst = 5;
        config.frame_interval = Duration::from_secs(60);
    })
    .await;
    let ticket = app.create_session(None).await;
    let mut client = WsClient::connect(&app.ws_url(&ticket)).await.unwrap();
    client.sync(None).await; // 1
    for _ in 0..3 {
        client.send_json(json!({"type": "ping"})).await; // 2..4
    }
    client.send_json(json!({"type": "dance"})).await; // 5: unknown_type
    client.send_json(json!({"type": "ping"})).await;
    client.send_json(json!({"type": "sync"})).await;
    // The harness runs frames concurrently, as API Gateway invokes them: which ones are
    // refused varies, how many does not. Each frame gets exactly one answer.
    let mut answers = Vec::new();
    while answers.len() < 6 {
        let event = client.next_event().await;
        if ["pong", "error", "session_state"].contains(&event["type"].as_str().unwrap()) {
            answers.push(event);
        }
    }
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|e| e["code"] == "rate_limited")
        .collect();
    assert_eq!(limited.len(), 2, "{answers:?}");
    for error in limited {
        assert!(error["retry_after_ms"].as_u64().unwrap() > 0);
        assert!(["ping", "sync", "dance"].contains(&error["request_type"].as_str().unwrap()));
    }
    let served = answers
        .iter()
        .filter(|e| {
            e["type"] == "pong" || e["type"] == "session_state" || e["code"] == "unknown_type"
        })
        .count();
    assert_eq!(served, 4, "{answers:?}");
}

seance_tests::on_mixed_backends!(
    sqlite_with_redis, postgres_in_process:
    sync_answers_with_the_whole_state,
    presence_counts_participants_not_tabs,
    questions_reach_everyone_and_are_stored,
    a_vanished_connection_is_pruned_on_the_next_push,
    sync_after_resumes_without_gaps,
);

/// A host and a guest, connected and synced in one séance.
async fn host_and_guest(app: &TestApp) -> (Uuid, WsClient, WsClient) {
    let created = app.create_session(None).await;
    let session = created["session"]["id"].as_str().unwrap().to_owned();
    let mut host = WsClient::connect(&app.ws_url(&created)).await.unwrap();
    host.sync(None).await;
    let guest_ticket = app.join_ticket(&session, "Guest").await;
    let mut guest = WsClient::connect(&app.ws_url(&guest_ticket)).await.unwrap();
    guest.sync(None).await;
    (session.parse().unwrap(), host, guest)
}

/// Stopping the harness (Ctrl-C) closes every socket as the server (1000) and runs each
/// one's `$disconnect` before it returns: the connection records are gone and the others
/// heard `user_left`.
async fn a_stopping_harness_disconnects_everyone_first(backend: Backend) {
    let app = spawn_app(backend).await;
    let connections = app.harness.app.connections.clone();
    let (session_id, mut host, mut guest) = host_and_guest(&app).await;
    assert_eq!(connections.in_session(session_id).await.unwrap().len(), 2);
    assert_eq!(app.harness.gateway.open_sockets(), 2);

    app.harness.shutdown().await.unwrap();
    assert!(
        connections.in_session(session_id).await.unwrap().is_empty(),
        "every $disconnect ran before the harness stopped ({backend:?})"
    );
    assert_eq!(host.expect_closed().await, 1000);
    assert_eq!(guest.expect_closed().await, 1000);
}

seance_tests::on_both_backends!(
    stopping_postgres,
    stopping_sqlite: a_stopping_harness_disconnects_everyone_first
);

/// `close_all` (what stopping runs) returns once every socket is closed and every
/// `$disconnect` has run, not when the closes have merely been asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_every_socket_waits_for_each_disconnect() {
    let app = spawn_app(Backend::Sqlite).await;
    let (session_id, mut host, mut guest) = host_and_guest(&app).await;

    app.harness.gateway.close_all().await;
    assert_eq!(app.harness.gateway.open_sockets(), 0);
    assert!(
        app.harness
            .app
            .connections
            .in_session(session_id)
            .await
            .unwrap()
            .is_empty(),
        "every $disconnect ran before close_all returned"
    );
    assert_eq!(
        (host.expect_closed().await, guest.expect_closed().await),
        (1000, 1000)
    );
}

// ---------------------------------------------------------------------------------------
// API Gateway's own frames.

/// A route handler still running at the integration timeout: the client gets API
/// Gateway's timeout frame and the handler runs on; a handler that fails: its
/// `Internal server error` frame. (Every other test's client fails on either frame.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_sends_api_gateways_own_frames() {
    let app = spawn_app_configured(Backend::Sqlite, |config| {
        config.ws_integration_timeout = Duration::from_millis(200);
    })
    .await;
    let ticket = app.create_session(None).await;
    let mut client = WsClient::connect(&app.ws_url(&ticket)).await.unwrap();
    client.sync(None).await;

    let (finished_tx, finished) = tokio::sync::oneshot::channel::<()>();
    let finished_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(finished_tx)));
    app.harness
        .gateway
        .replace_message_handler(std::sync::Arc::new(move |_app, _event| {
            let finished_tx = finished_tx.clone();
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Some(tx) = finished_tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
                aws_lambda_events::apigw::ApiGatewayProxyResponse::default()
            })
        }));
    client.send_json(json!({"type": "ping"})).await;
    let frame = client.expect_gateway_frame().await;
    assert_eq!(frame["message"], "Endpoint request timed out");
    assert!(frame["connectionId"].as_str().unwrap().ends_with('='));
    let first_request = frame["requestId"].as_str().unwrap().to_owned();
    assert!(first_request.len() >= 16, "{first_request}");
    assert!(frame.get("type").is_none());
    finished
        .await
        .expect("the handler ran on after the timeout");

    app.harness
        .gateway
        .replace_message_handler(std::sync::Arc::new(|_app, _event| {
            Box::pin(async move { panic!("a handler that fails") })
        }));
    client.send_json(json!({"type": "ping"})).await;
    let frame = client.expect_gateway_frame().await;
    assert_eq!(frame["message"], "Internal server error");
    assert!(frame["connectionId"].is_string());
    let second_request = frame["requestId"].as_str().unwrap();
    assert_ne!(second_request, first_request, "each request has its own id");
}

/// `settled`, which tests wait on instead of a clock, waits while a message-route
/// invocation runs and returns once it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_waits_for_running_invocations() {
    use futures_util::FutureExt;

    let app = spawn_app(Backend::Sqlite).await;
    let ticket = app.create_session(None).await;
    let mut client = WsClient::connect(&app.ws_url(&ticket)).await.unwrap();
    client.sync(None).await;
    let gateway = app.harness.gateway.clone();
    gateway.settled().await;

    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let hooks = std::sync::Arc::new(std::sync::Mutex::new(Some((started_tx, released))));
    gateway.replace_message_handler(std::sync::Arc::new(move |_app, _event| {
        let hooks = hooks.lock().unwrap().take();
        Box::pin(async move {
            if let Some((started_tx, released)) = hooks {
                let _ = started_tx.send(());
                let _ = released.await;
            }
            aws_lambda_events::apigw::ApiGatewayProxyResponse::default()
        })
    }));
    client.send_json(json!({"type": "ping"})).await;
    started.await.unwrap();
    assert!(
        gateway.settled().now_or_never().is_none(),
        "settled while an invocation runs"
    );
    release.send(()).unwrap();
    gateway.settled().await;
}
