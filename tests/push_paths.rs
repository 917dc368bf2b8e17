//! The harness's two ways of pushing to its own sockets answer alike: the in-process
//! `DirectPusher` (the default) and the real Management API client through the
//! `@connections` endpoint (`HARNESS_PUSH=sdk`), for a live connection, an unknown one, a
//! payload over 128 KB, a close, and API Gateway's refusals (403, 429); and a fan-out
//! counts, keeps and forgets connections by what `@connections` answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use local_dev::gateway::Refusal;
use seance::connections::Connection;
use seance::domain::{Participant, Role};
use seance::protocol::ServerEvent;
use seance::push::{
    Audience, AwsCredentials, Broadcaster, FanoutReport, ManagementApi, PushError, Pusher,
};
use seance_tests::ws::WsClient;
use seance_tests::{Backend, TestApp, on_both_backends, spawn_app};
use serde_json::json;
use std::sync::Arc;
use uuid::Uuid;

/// The harness's own pusher and the real Management API client, by name.
fn both_pushers(app: &TestApp) -> [(&'static str, Arc<dyn Pusher>); 2] {
    let sdk: Arc<dyn Pusher> = Arc::new(ManagementApi::new(
        "us-east-1",
        AwsCredentials::for_harness(),
        seance::tls::AwsTlsRoots::Amazon,
    ));
    [("direct", app.harness.app.pusher.clone()), ("sdk", sdk)]
}

/// A `pong` to everyone in the séance, and what the fan-out reports.
async fn pong_everyone(
    broadcaster: &Broadcaster,
    endpoint: &str,
    session_id: Uuid,
) -> FanoutReport {
    broadcaster
        .broadcast(
            endpoint,
            session_id,
            &ServerEvent::Pong {},
            Audience::Everyone,
        )
        .await
}

/// A socket of the séance's host, synced, and its connection id (the séance's only one).
async fn host_socket(app: &TestApp, created: &serde_json::Value) -> (WsClient, String) {
    let mut client = WsClient::connect(&app.ws_url(created)).await.unwrap();
    client.sync(None).await;
    let session_id: Uuid = created["session"]["id"].as_str().unwrap().parse().unwrap();
    let connections = app
        .harness
        .app
        .connections
        .in_session(session_id)
        .await
        .unwrap();
    assert_eq!(connections.len(), 1);
    (client, connections[0].connection_id.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_sdk_pushes_answer_alike() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = endpoint(&app);
    let created = app.create_session(None).await;
    for (name, pusher) in both_pushers(&app) {
        let (mut client, id) = host_socket(&app, &created).await;

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
        // API Gateway's limit, to the byte: 128 KiB is delivered, one byte more is not.
        let sized = |bytes: usize| {
            let frame = json!({"type": "pong", "session_id": "x", "timestamp": "t", "pad": ""});
            let pad = "x".repeat(bytes - frame.to_string().len());
            json!({"type": "pong", "session_id": "x", "timestamp": "t", "pad": pad}).to_string()
        };
        let limit = local_dev::gateway::MAX_MESSAGE_BYTES;
        assert_eq!(limit, 128 * 1024);
        let largest = sized(limit);
        assert_eq!(largest.len(), limit);
        pusher.send(&endpoint, &id, &largest).await.unwrap();
        assert_eq!(client.expect("pong").await.to_string(), largest, "{name}");
        for bytes in [limit + 1, 200 * 1024] {
            let too_large = pusher.send(&endpoint, &id, &sized(bytes)).await;
            assert!(
                matches!(too_large, Err(PushError::PayloadTooLarge)),
                "{name}, {bytes} bytes: {too_large:?}"
            );
        }
        pusher.close(&endpoint, &id).await.unwrap();
        assert_eq!(client.expect_closed().await, 1000, "{name}");
        app.harness.gateway.settled().await;
        let closed = pusher.close(&endpoint, "nobody=").await;
        assert!(matches!(closed, Err(PushError::Gone)), "{name}: {closed:?}");
    }
}

/// `@connections` checks what API Gateway checks first of a call: a push the SDK signed
/// for another region is refused (403, a failure, not gone), as are hand-made signatures
/// for another service or without a credential, an unsigned call, one signed with another
/// secret or another key, and a signed one whose body was changed on the way; none of them
/// reaches the socket, whose next frames are a hand-made call signed as the SDK signs and
/// the next push, signed for this region and `execute-api` (which is what every SDK push in
/// this suite is held to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_signed_for_another_region_or_service_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = endpoint(&app);
    let created = app.create_session(None).await;
    let (mut client, id) = host_socket(&app, &created).await;
    let pusher = |region: &str| {
        ManagementApi::new(
            region,
            AwsCredentials::for_harness(),
            seance::tls::AwsTlsRoots::Amazon,
        )
    };

    let elsewhere = pusher("eu-west-1")
        .send(&endpoint, &id, r#"{"type":"pong","via":"eu-west-1"}"#)
        .await;
    assert!(
        matches!(elsewhere, Err(PushError::Other(_))),
        "{elsewhere:?}"
    );
    let url = format!("{endpoint}/@connections/{}", id.replace('=', "%3D"));
    for (authorization, error_type, says) in [
        (
            "AWS4-HMAC-SHA256 Credential=LOCALHARNESS/20261206/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-date, Signature=00",
            "InvalidSignatureException",
            "'execute-api'",
        ),
        (
            "AWS4-HMAC-SHA256 SignedHeaders=host, Signature=00",
            "IncompleteSignatureException",
            "'Credential'",
        ),
        ("Bearer abc", "IncompleteSignatureException", "'Credential'"),
    ] {
        let refused = app
            .client
            .post(&url)
            .header("authorization", authorization)
            .body(r#"{"type":"pong","via":"by hand"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 403, "{authorization}");
        assert_eq!(
            refused.headers()["x-amzn-errortype"],
            error_type,
            "{authorization}"
        );
        let body: serde_json::Value = refused.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{authorization}: {body}"
        );
    }

    // Unsigned; signed with another key; with this key and another secret; signed, then
    // its body changed.
    let path = url.strip_prefix(&app.base).unwrap();
    let unsigned = app
        .client
        .post(&url)
        .body(r#"{"type":"pong","via":"unsigned"}"#)
        .send()
        .await
        .unwrap();
    let (key, secret) = AwsCredentials::for_harness().keys().unwrap();
    let signed_with = |key: &str, secret: &str, via: &str| {
        let mut request = app
            .client
            .post(&url)
            .body(json!({"type": "pong", "via": via}).to_string())
            .build()
            .unwrap();
        seance_tests::sign_for_connections_with(&mut request, "us-east-1", key, secret);
        request
    };
    let wrong_secret = signed_with(&key, &format!("not-{secret}"), "another secret");
    let stranger = signed_with("AKIDSTRANGER", &secret, "another key");
    let mut changed = app
        .client
        .post(&url)
        .body(r#"{"type":"pong","via":"signed"}"#)
        .build()
        .unwrap();
    seance_tests::sign_for_connections(&mut changed, "us-east-1");
    *changed.body_mut() = Some(r#"{"type":"pong","via":"changed"}"#.into());
    for (name, response, error_type, says) in [
        (
            "unsigned",
            unsigned,
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        (
            "another secret",
            app.client.execute(wrong_secret).await.unwrap(),
            "InvalidSignatureException",
            "does not match",
        ),
        (
            "a changed body",
            app.client.execute(changed).await.unwrap(),
            "InvalidSignatureException",
            "does not match",
        ),
        (
            "another key",
            app.client.execute(stranger).await.unwrap(),
            "UnrecognizedClientException",
            "security token included in the request is invalid",
        ),
    ] {
        assert_eq!(response.status(), 403, "{name}");
        assert_eq!(response.headers()["x-amzn-errortype"], error_type, "{name}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert!(
            body["message"].as_str().unwrap().contains(says),
            "{name}: {body}"
        );
    }

    let by_hand = app
        .connections_call(
            reqwest::Method::POST,
            path,
            br#"{"type":"pong","via":"by hand, signed"}"#,
        )
        .await;
    assert_eq!(by_hand.status(), 200);
    assert_eq!(client.expect("pong").await["via"], "by hand, signed");
    pusher("us-east-1")
        .send(&endpoint, &id, r#"{"type":"pong","via":"us-east-1"}"#)
        .await
        .unwrap();
    assert_eq!(client.expect("pong").await["via"], "us-east-1");
}

fn endpoint(app: &TestApp) -> String {
    app.harness
        .app
        .config
        .apigw_management_endpoint
        .clone()
        .unwrap()
}

/// A 403 is reported as a failure (not as gone, not as too large) and the connection
/// still gets the next push; a 429 is tried once more and delivered once; two 429s in a
/// row are reported; a refused close is reported and leaves the socket open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_reported_and_a_throttled_push_is_tried_once_more() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = endpoint(&app);
    let gateway = app.harness.gateway.clone();
    let created = app.create_session(None).await;
    for (name, pusher) in both_pushers(&app) {
        let (mut client, id) = host_socket(&app, &created).await;
        let pong = |n: u32| {
            json!({"type": "pong", "session_id": "x", "timestamp": "t", "n": n}).to_string()
        };

        gateway.refuse(&id, Refusal::Forbidden, 1);
        assert_refused(name, pusher.send(&endpoint, &id, &pong(1)).await);
        pusher.send(&endpoint, &id, &pong(2)).await.unwrap();
        assert_eq!(
            client.expect("pong").await["n"],
            2,
            "{name}: the refused push arrived"
        );

        gateway.refuse(&id, Refusal::Throttled, 1);
        pusher.send(&endpoint, &id, &pong(3)).await.unwrap();
        gateway.refuse(&id, Refusal::Throttled, 2);
        assert_refused(name, pusher.send(&endpoint, &id, &pong(4)).await);
        pusher.send(&endpoint, &id, &pong(5)).await.unwrap();
        assert_eq!(client.expect("pong").await["n"], 3, "{name}");
        assert_eq!(
            client.expect("pong").await["n"],
            5,
            "{name}: once each, in order"
        );

        gateway.refuse(&id, Refusal::Forbidden, 1);
        assert_refused(name, pusher.close(&endpoint, &id).await);
        pusher.send(&endpoint, &id, &pong(6)).await.unwrap();
        assert_eq!(client.expect("pong").await["n"], 6, "{name}: still open");
        pusher.close(&endpoint, &id).await.unwrap();
        assert_eq!(client.expect_closed().await, 1000, "{name}");
        app.harness.gateway.settled().await;
    }
}

/// A refusal is a failure of its own: not gone (the connection is kept), not too large.
#[track_caller]
fn assert_refused(pusher: &str, result: Result<(), PushError>) {
    assert!(
        matches!(result, Err(PushError::Other(_))),
        "{pusher}: {result:?}"
    );
}

/// One broadcast to a séance holding: a guest who receives it, a host whose push API
/// Gateway refuses (403), a connection gone for good (410, connected a minute ago) and one
/// whose `$connect` may still be running (410, connected just now). The report counts
/// each; only the gone one is forgotten, and its participant's `user_left` goes out to
/// everyone (the host's refusal has passed by then).
async fn a_fan_out_counts_keeps_and_forgets_by_the_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    // `broadcast` (one text for all) and `broadcast_each` (a text per connection, as the
    // voice's pan tracks are) count alike; each in a séance of its own.
    fan_out_and_count(&app, backend, false).await;
    fan_out_and_count(&app, backend, true).await;
}

async fn fan_out_and_count(app: &TestApp, backend: Backend, each: bool) {
    let connections = app.harness.app.connections.clone();
    let created = app.create_session(None).await;
    let session: &str = created["session"]["id"].as_str().unwrap();
    let session_id: Uuid = session.parse().unwrap();
    let mut host = WsClient::connect(&app.ws_url(&created)).await.unwrap();
    host.sync(None).await;
    let guest_ticket = app.join_ticket(session, "Guest").await;
    let mut guest = WsClient::connect(&app.ws_url(&guest_ticket)).await.unwrap();
    guest.sync(None).await;
    host.expect("user_joined").await;
    let host_id: Uuid = created["participant"]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let host_connection = connections
        .in_session(session_id)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.participant.id == host_id)
        .unwrap()
        .connection_id;

    let someone = |name: &str, seat| Participant {
        id: Uuid::new_v4(),
        display_name: name.into(),
        role: Role::Participant,
        seat,
    };
    let gone = Connection {
        connection_id: local_dev::gateway::new_connection_id(),
        session_id,
        participant: someone("Gone", 2),
        connected_at: chrono::Utc::now() - chrono::Duration::seconds(60),
    };
    let opening = Connection {
        connection_id: local_dev::gateway::new_connection_id(),
        session_id,
        participant: someone("Opening", 3),
        connected_at: chrono::Utc::now(),
    };
    connections.add(&gone).await.unwrap();
    connections.add(&opening).await.unwrap();
    app.harness
        .gateway
        .refuse(&host_connection, Refusal::Forbidden, 1);

    let broadcaster = Broadcaster {
        connections: connections.clone(),
        pusher: app.harness.app.pusher.clone(),
    };
    let report = if each {
        broadcaster
            .broadcast_each(&endpoint(app), session_id, |_| ServerEvent::Pong {})
            .await
    } else {
        pong_everyone(&broadcaster, &endpoint(app), session_id).await
    };
    // The pong: guest delivered, host refused, one gone, one opening. Then `user_left` for
    // the gone one's participant: host and guest delivered, the opening one 410 again.
    assert_eq!(
        report,
        FanoutReport {
            delivered: 3,
            failed: 1,
            gone: 1,
            opening: 2
        },
        "{backend:?}, each: {each}"
    );
    let mut left: Vec<String> = connections
        .in_session(session_id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.connection_id)
        .collect();
    left.sort();
    let mut expected = vec![host_connection, opening.connection_id.clone()];
    expected.extend(
        connections
            .in_session(session_id)
            .await
            .unwrap()
            .into_iter()
            .filter(|c| c.participant.display_name == "Guest")
            .map(|c| c.connection_id),
    );
    expected.sort();
    assert_eq!(left, expected, "only the gone connection is forgotten");
    assert!(
        connections
            .get(&gone.connection_id)
            .await
            .unwrap()
            .is_none()
    );

    guest.expect("pong").await;
    let guest_saw = guest.expect("user_left").await;
    assert_eq!(guest_saw["participant"]["display_name"], "Gone");
    // Everything the host got before the pong of its own ping: the refused pong would come
    // first and end the list early.
    let host_saw = host.until_pong().await;
    let kinds: Vec<&str> = host_saw
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["user_left"], "{host_saw:?}");
    assert_eq!(host_saw[0]["participant"]["display_name"], "Gone");
}

on_both_backends!(postgres_sdk_push, sqlite_direct_push: a_fan_out_counts_keeps_and_forgets_by_the_answer);

/// A connection that does not answer costs one push timeout, then its pushes are skipped
/// at once for a while (the room's next token must not wait on it again), whichever way
/// the harness pushes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_connection_times_out_once_then_is_skipped() {
    let app = spawn_app(Backend::Sqlite).await;
    let endpoint = endpoint(&app);
    let created = app.create_session(None).await;
    let session_id = created["session"]["id"].as_str().unwrap().parse().unwrap();
    for (name, pusher) in both_pushers(&app) {
        let (client, id) = host_socket(&app, &created).await;
        app.harness.gateway.stall(&id);
        let first = pusher.send(&endpoint, &id, "{}").await;
        assert!(
            matches!(first, Err(PushError::Timeout)),
            "{name}: {first:?}"
        );
        let second = pusher.send(&endpoint, &id, "{}").await;
        assert!(
            matches!(second, Err(PushError::Skipped)),
            "{name}: {second:?}"
        );
        // A fan-out counts the skipped push as failed and moves on.
        let broadcaster = Broadcaster {
            connections: app.harness.app.connections.clone(),
            pusher: pusher.clone(),
        };
        let report = pong_everyone(&broadcaster, &endpoint, session_id).await;
        assert_eq!(
            report,
            FanoutReport {
                failed: 1,
                ..FanoutReport::default()
            },
            "{name}"
        );
        client.kill();
        app.harness.gateway.settled().await;
    }
}

/// With the connection store unreachable (a Redis that is not there), a fan-out of any kind
/// pushes nothing and reports one failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_without_its_connection_store_reports_a_failure() {
    let app = spawn_app(Backend::Sqlite).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = seance::redis_client::Redis::new(&seance::config::RedisConfig {
        url: seance::config::Secret::new(format!("redis://127.0.0.1:{port}")),
        cluster: false,
        ca_pem: None,
    })
    .unwrap();
    let broadcaster = Broadcaster {
        connections: Arc::new(seance::connections::RedisConnections::new(
            unreachable,
            "seance-test:",
            std::time::Duration::from_secs(60),
        )),
        pusher: app.harness.app.pusher.clone(),
    };
    let endpoint = endpoint(&app);
    let session_id = Uuid::new_v4();
    let one_failure = FanoutReport {
        failed: 1,
        ..FanoutReport::default()
    };
    let everyone = pong_everyone(&broadcaster, &endpoint, session_id).await;
    assert_eq!(everyone, one_failure);
    let each = broadcaster
        .broadcast_each(&endpoint, session_id, |_| ServerEvent::Pong {})
        .await;
    assert_eq!(each, one_failure);
    let someone = Connection {
        connection_id: local_dev::gateway::new_connection_id(),
        session_id,
        participant: Participant {
            id: Uuid::new_v4(),
            display_name: "Ada".into(),
            role: Role::Host,
            seat: 0,
        },
        connected_at: chrono::Utc::now(),
    };
    let one = broadcaster
        .send_to(&endpoint, &someone, &ServerEvent::Pong {})
        .await;
    assert_eq!(one, one_failure);
}
