// The fuzzers' checks, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`) and by
// the test suite, which replays every file of `fuzz/corpus/<target>/` through them
// (`tests/fuzz_corpus.rs`): a crash the fuzzer finds is saved into the corpus and stays a
// regression test. Each check panics on what must never happen.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::OnceLock;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use seance::App;
use seance::config::{Config, Profile};
use seance::protocol::{ClientFrame, ErrorCode, parse_frame};
use serde_json::{Value, json};

const SECRET: &str = "fuzz-secret-fuzz-secret-fuzz-secret-0000";

/// Client frames: any bytes give a frame or one of the protocol's error codes.
pub fn client_frame(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_frame(text, 32 * 1024) {
        Ok(frame) => {
            // A frame that parses is an object whose `type` names it.
            let value: Value = serde_json::from_str(text).expect("it parsed as JSON");
            assert_eq!(value["type"], frame.type_name());
            if let ClientFrame::SendMessage { content } = &frame {
                assert_eq!(value["content"].as_str(), Some(content.as_str()));
            }
        }
        Err(err) => {
            assert!(matches!(
                err.code,
                ErrorCode::InvalidJson | ErrorCode::UnknownType | ErrorCode::InvalidMessage
            ));
            assert!(!err.message.is_empty());
        }
    }
}

/// Tokens: any string is refused or is a token this server signed.
pub fn token(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let app = &world().app;
    if let Ok(claims) = app.tokens.verify(text) {
        // Only our own signature gets here; a fuzzer cannot forge one.
        panic!("an arbitrary string verified as a token: {claims:?}");
    }
    let header = format!("Bearer {text}");
    let _ = seance::auth::bearer_token(Some(&header));
    let _ = seance::auth::bearer_token(Some(text));
}

/// REST bodies: creating and joining with any body is a 201/200 or a 4xx in the protocol's
/// error shape, never a 5xx.
pub fn rest_body(data: &[u8]) {
    let world = world();
    for path in [
        "/api/sessions".to_owned(),
        format!("/api/sessions/{}/join", world.session_id),
    ] {
        let request = http::Request::post(&path)
            .header("content-type", "application/json")
            .body(axum::body::Body::from(data.to_vec()))
            .unwrap();
        let router = seance::rest::router(world.app.clone());
        let response = world
            .runtime
            .block_on(tower::ServiceExt::oneshot(router, request))
            .unwrap();
        let status = response.status().as_u16();
        assert!(
            matches!(status, 200 | 201 | 400 | 404 | 409 | 413 | 422 | 429),
            "{path} answered {status}"
        );
        let body = world
            .runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let value: Value = serde_json::from_slice(&body).expect("a JSON body");
        if status >= 400 {
            assert!(value["error"]["code"].is_string(), "{value}");
        }
    }
}

/// WebSocket message events with any body: the handler answers 200 (refusals go to the
/// socket as `error` events) and never panics out.
pub fn ws_message(data: &[u8]) {
    let world = world();
    let body = String::from_utf8_lossy(data).into_owned();
    let event = message_event(&world.connection_id, &body);
    let response = world
        .runtime
        .block_on(seance::ws::handle_message(&world.app, event));
    assert_eq!(response.status_code, 200, "for {body:?}");
}

/// WebSocket events of any shape (any route, connection id, query, headers, body, as
/// API Gateway's JSON): each handler answers with a status and never panics out.
pub fn ws_event(data: &[u8]) {
    let Ok(event) = serde_json::from_slice::<ApiGatewayWebsocketProxyRequest>(data) else {
        return;
    };
    let world = world();
    let route = event.request_context.route_key.clone().unwrap_or_default();
    let response = world.runtime.block_on(async {
        match route.as_str() {
            "$connect" => seance::ws::handle_connect(&world.app, event).await,
            "$disconnect" => seance::ws::handle_disconnect(&world.app, event).await,
            _ => seance::ws::handle_message(&world.app, event).await,
        }
    });
    let allowed: &[i64] = match route.as_str() {
        "$connect" => &[200, 400, 401, 403, 503],
        _ => &[200],
    };
    assert!(
        allowed.contains(&response.status_code),
        "{route} answered {}",
        response.status_code
    );
}

// ----------------------------------------------------------------------------------------
// One app (SQLite in memory, in-process stores) with a session and a connected host.

struct World {
    runtime: tokio::runtime::Runtime,
    app: App,
    session_id: String,
    connection_id: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let vars: HashMap<String, String> = [
            ("DATABASE_URL", "sqlite::memory:"),
            ("JWT_SECRET", SECRET),
            ("LOG_LEVEL", "off"),
            // Pushes go nowhere: connection refused at once.
            ("APIGW_MANAGEMENT_ENDPOINT", "http://127.0.0.1:9/fuzz"),
            ("REST_RATE_BURST", "1000000"),
            ("FRAME_RATE_BURST", "1000000"),
            ("FRAME_RATE_PER_SECOND", "10000"),
            ("MESSAGE_RATE_BURST", "1000"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = Config::from_vars(Profile::Harness, &vars).unwrap();
        // The pool and the SDK clients are made inside the runtime they will run on.
        let (app, database) = {
            let _inside = runtime.enter();
            App::build(config, "ws://127.0.0.1:9/ws").unwrap()
        };
        runtime.block_on(database.migrate_up()).unwrap();
        let request = http::Request::post("/api/sessions")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(
                json!({"name": "fuzz", "host_name": "Ada", "max_participants": 12}).to_string(),
            ))
            .unwrap();
        let response = runtime
            .block_on(tower::ServiceExt::oneshot(
                seance::rest::router(app.clone()),
                request,
            ))
            .unwrap();
        let body = runtime
            .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
            .unwrap();
        let ticket: Value = serde_json::from_slice(&body).unwrap();
        let connection_id = "fuzzConnection=".to_owned();
        let connect = event(
            "$connect",
            "CONNECT",
            &connection_id,
            None,
            Some(ticket["token"].as_str().unwrap()),
        );
        let connected = runtime.block_on(seance::ws::handle_connect(&app, connect));
        assert_eq!(connected.status_code, 200);
        World {
            runtime,
            app,
            session_id: ticket["session"]["id"].as_str().unwrap().to_owned(),
            connection_id,
        }
    })
}

fn message_event(connection_id: &str, body: &str) -> ApiGatewayWebsocketProxyRequest {
    event("$default", "MESSAGE", connection_id, Some(body), None)
}

fn event(
    route: &str,
    kind: &str,
    connection_id: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> ApiGatewayWebsocketProxyRequest {
    let mut value = json!({
        "requestContext": {
            "routeKey": route, "eventType": kind, "messageId": "m", "connectionId": connection_id,
            "connectedAt": 1_795_000_000_000_i64, "requestTimeEpoch": 1_795_000_000_000_i64,
            "domainName": "127.0.0.1:9", "stage": "fuzz", "apiId": "fuzz", "requestId": "r",
            "identity": {"sourceIp": "127.0.0.1"},
        },
        "isBase64Encoded": false,
    });
    if let Some(body) = body {
        value["body"] = json!(body);
    }
    if let Some(token) = token {
        value["queryStringParameters"] = json!({"token": token});
    }
    serde_json::from_value(value).unwrap()
}
