//! The harness's two ways of pushing to its own sockets answer alike: the in-process
//! `DirectPusher` (the default) and the real Management API client through the
//! `@connections` endpoint (`HARNESS_PUSH=sdk`), for a live connection, an unknown one, a
//! payload over 128 KB and a close.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use seance::push::{AwsCredentials, ManagementApi, PushError, Pusher};
use seance_tests::ws::WsClient;
use seance_tests::{Backend, spawn_app};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_sdk_pushes_answer_alike() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = app
        .harness
        .app
        .config
        .apigw_management_endpoint
        .clone()
        .unwrap();
    let direct = app.harness.app.pusher.clone();
    let sdk = ManagementApi::new("us-east-1", AwsCredentials::Static);
    let pushers: [(&str, &dyn Pusher); 2] = [("direct", direct.as_ref()), ("sdk", &sdk)];

    let created = app.create_session(None).await;
    let session_id = created["session"]["id"].as_str().unwrap().parse().unwrap();
    for (name, pusher) in pushers {
        let mut client = WsClient::connect(&app.ws_url(&created)).await.unwrap();
        client.sync(None).await;
        let connections = app
            .harness
            .app
            .connections
            .in_session(session_id)
            .await
            .unwrap();
        assert_eq!(connections.len(), 1);
        let id = connections[0].connection_id.clone();

        let frame = json!({"type": "pong", "session_id": "x", "timestamp": "t", "via": name});
        pusher
            .send(&endpoint, &id, &frame.to_string())
            .await
            .unwrap();
        assert_eq!(client.expect("pong").await["via"], name);
        let unknown = pusher.send(&endpoint, "nobody=", "{}").await;
        assert!(
            matches!(unknown, Err(PushError::Gone)),
            "{name}: {unknown:?}"
        );
        let huge = "x".repeat(129 * 1024);
        let too_large = pusher.send(&endpoint, &id, &huge).await;
        assert!(
            matches!(too_large, Err(PushError::PayloadTooLarge)),
            "{name}: {too_large:?}"
        );
        pusher.close(&endpoint, &id).await.unwrap();
        assert_eq!(client.expect_closed().await, 1000, "{name}");
        app.harness.gateway.settled().await;
        let closed = pusher.close(&endpoint, "nobody=").await;
        assert!(matches!(closed, Err(PushError::Gone)), "{name}: {closed:?}");
    }
}
