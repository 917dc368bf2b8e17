//! The sample API Gateway WebSocket events shipped in `aws_lambda_events`' own test
//! fixtures (copied to `tests/events/ws/fixtures/`) deserialize and run through the
//! handlers the `ws-*` Lambdas run, with pushes going to the harness's `@connections`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use seance_tests::{Backend, spawn_app};
use serde_json::{Value, json};

fn fixture(name: &str) -> Value {
    let path = format!("{}/events/ws/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn event(value: &Value) -> ApiGatewayWebsocketProxyRequest {
    serde_json::from_str(&value.to_string()).expect("the fixture deserializes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_events_run_through_the_handlers() {
    let app = spawn_app(Backend::Postgres).await;
    let handlers = &app.harness.app;

    for name in [
        "example-apigw-websocket-request.json",
        "example-apigw-websocket-request-without-method.json",
    ] {
        let connect = fixture(name);
        // As shipped the events carry no token: refused, nothing recorded.
        let refused = seance::ws::handle_connect(handlers, event(&connect)).await;
        assert_eq!(refused.status_code, 401, "{name}");
        let id = connect["requestContext"]["connectionId"].as_str().unwrap();
        assert!(handlers.connections.get(id).await.unwrap().is_none());
    }

    // With a participant's token in the query string, the same event connects.
    let ticket = app.create_session(None).await;
    let mut connect = fixture("example-apigw-websocket-request.json");
    connect["queryStringParameters"] = json!({"token": ticket["token"]});
    let connection_id = connect["requestContext"]["connectionId"]
        .as_str()
        .unwrap()
        .to_owned();
    let accepted = seance::ws::handle_connect(handlers, event(&connect)).await;
    assert_eq!(accepted.status_code, 200);
    let recorded = handlers
        .connections
        .get(&connection_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        recorded.session_id.to_string(),
        ticket["session"]["id"].as_str().unwrap()
    );

    // A message on that connection: the pong goes to @connections, where no such socket
    // exists (the fixture's connection never opened here), so the 410 prunes it.
    let mut message = connect.clone();
    message["requestContext"]["eventType"] = json!("MESSAGE");
    message["requestContext"]["routeKey"] = json!("ping");
    message["body"] = json!(r#"{"type":"ping"}"#);
    let answered = seance::ws::handle_message(handlers, event(&message)).await;
    assert_eq!(answered.status_code, 200);
    assert!(
        handlers
            .connections
            .get(&connection_id)
            .await
            .unwrap()
            .is_none(),
        "pruned via 410"
    );

    // The disconnect fixture, for a connection nobody knows, is harmless.
    let disconnect = fixture("example-apigw-websocket-request-disconnect-route.json");
    let done = seance::ws::handle_disconnect(handlers, event(&disconnect)).await;
    assert_eq!(done.status_code, 200);
}

fn shipped(name: &str, token: &str, connection_id: &str) -> ApiGatewayWebsocketProxyRequest {
    let path = format!("{}/events/ws/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("TOKEN", token)
        .replace("CONNECTION_ID", connection_id);
    serde_json::from_str(&text).expect("the shipped event deserializes")
}

/// The events in `tests/events/ws/` (the ones the README runs with `cargo lambda invoke`)
/// do what they say, seen from a real client of the harness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_events_do_what_they_say() {
    use seance_tests::ws::WsClient;
    let app = spawn_app(Backend::Postgres).await;
    let handlers = &app.harness.app;
    let host = app.create_session(None).await;
    let sid = host["session"]["id"].as_str().unwrap().to_owned();
    let mut watcher = WsClient::connect(&app.ws_url(&host)).await.unwrap();
    watcher.sync(None).await;
    let bob = app.join_ticket(&sid, "Bob").await;
    let token = bob["token"].as_str().unwrap();
    let id = "InvokeTest000A=";

    let refused =
        seance::ws::handle_connect(handlers, shipped("connect-no-token.json", token, id)).await;
    assert_eq!(refused.status_code, 401);
    let connected = seance::ws::handle_connect(handlers, shipped("connect.json", token, id)).await;
    assert_eq!(connected.status_code, 200);
    assert_eq!(
        watcher.expect("user_joined").await["participant"]["display_name"],
        "Bob"
    );

    for (name, answered) in [
        ("typing.json", 200),
        ("ping.json", 200),
        ("sync.json", 200),
        ("default.json", 200),
    ] {
        let response = seance::ws::handle_message(handlers, shipped(name, token, id)).await;
        assert_eq!(response.status_code, answered, "{name}");
    }
    assert_eq!(
        watcher.expect("user_typing").await["participant"]["display_name"],
        "Bob"
    );
    // Pushes to the invented connection id answered 410 at the harness's @connections,
    // so it was forgotten: Bob left.
    assert_eq!(
        watcher.expect("user_left").await["participant"]["display_name"],
        "Bob"
    );

    // Connected again, Bob asks through the send-message event; everyone sees the question.
    assert_eq!(
        seance::ws::handle_connect(handlers, shipped("connect.json", token, id))
            .await
            .status_code,
        200
    );
    let asked = seance::ws::handle_message(handlers, shipped("send-message.json", token, id)).await;
    assert_eq!(asked.status_code, 200);
    let received = watcher.expect("message_received").await;
    assert_eq!(received["message"]["content"], "Is anyone there?");
    watcher.expect("spirit_response").await;

    let gone = seance::ws::handle_disconnect(handlers, shipped("disconnect.json", token, id)).await;
    assert_eq!(gone.status_code, 200);
    assert!(handlers.connections.get(id).await.unwrap().is_none());
}

/// `tests/events/sqs/question.json`, the event `cargo lambda invoke spirit` is given, runs
/// through the `spirit` function's handler: as shipped it names a session that does not
/// exist (done with, nothing failed); pointed at a session with a question waiting, it
/// answers that question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_sqs_event_runs_through_the_spirit() {
    use aws_lambda_events::event::sqs::SqsEvent;

    let path = format!("{}/events/sqs/question.json", env!("CARGO_MANIFEST_DIR"));
    let shipped: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let app = seance_tests::spawn_app_with_options(
        seance_tests::test_config(&seance_tests::fresh_postgres_url().await, None),
        local_dev::Options {
            event_source: false,
            push: local_dev::PushPath::Sdk,
        },
    )
    .await;
    let spirit = app.harness.app.spirit_worker();
    let event: SqsEvent = serde_json::from_value(shipped.clone()).expect("the event deserializes");
    let response = spirit.handle_batch(event, 0).await;
    assert!(response.batch_item_failures.is_empty());

    let ticket = app.create_session(None).await;
    let mut client = seance_tests::ws::WsClient::connect(&app.ws_url(&ticket))
        .await
        .unwrap();
    client.sync(None).await;
    client
        .send_json(json!({"type": "send_message", "content": "Is anyone there?"}))
        .await;
    let received = client.expect("message_received").await;
    let mut event = shipped;
    event["Records"][0]["body"] = json!(
        json!({
            "session_id": ticket["session"]["id"],
            "question_id": received["message"]["id"],
        })
        .to_string()
    );
    let event: SqsEvent = serde_json::from_value(event).unwrap();
    assert!(
        spirit
            .handle_batch(event, 0)
            .await
            .batch_item_failures
            .is_empty()
    );
    let answer = client.expect("spirit_response").await;
    assert_eq!(answer["message"]["in_reply_to"], received["message"]["id"]);
}

/// API Gateway does not order `$disconnect` after `$connect`: when the disconnect of a
/// connection runs first, the connect that follows records nothing, announces nothing,
/// and no ghost stays listed.
async fn a_disconnect_before_its_connect_leaves_no_ghost(backend: Backend) {
    use seance_tests::ws::WsClient;
    let app = spawn_app(backend).await;
    let handlers = &app.harness.app;
    let host = app.create_session(None).await;
    let sid = host["session"]["id"].as_str().unwrap().to_owned();
    let mut watcher = WsClient::connect(&app.ws_url(&host)).await.unwrap();
    watcher.sync(None).await;
    let bob = app.join_ticket(&sid, "Bob").await;
    let token = bob["token"].as_str().unwrap();
    let id = "EarlyGone0000A=";

    let gone = seance::ws::handle_disconnect(handlers, shipped("disconnect.json", token, id)).await;
    assert_eq!(gone.status_code, 200);
    let connected = seance::ws::handle_connect(handlers, shipped("connect.json", token, id)).await;
    assert_eq!(connected.status_code, 200);
    assert!(handlers.connections.get(id).await.unwrap().is_none());
    watcher.send_json(json!({"type": "ping"})).await;
    let seen = watcher.collect_until("pong", 1).await;
    assert!(
        !seen
            .iter()
            .any(|e| e["type"] == "user_joined" || e["type"] == "user_left"),
        "{seen:?}"
    );
    let state = watcher.sync(None).await;
    let online: Vec<&str> = state["participants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["display_name"].as_str().unwrap())
        .collect();
    assert_eq!(online, ["Ada"]);
}

seance_tests::on_both_backends!(
    redis, in_process:
    a_disconnect_before_its_connect_leaves_no_ghost,
);
