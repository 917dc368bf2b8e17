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
