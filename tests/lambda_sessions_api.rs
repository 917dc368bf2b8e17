//! The `sessions-api` Lambda as AWS runs it: real HTTP API v2 event JSON (the files in
//! `tests/events/http/`) deserialized by `lambda_http`, run through the same adapter
//! `lambda_http::run` uses, against PostgreSQL and Redis, configured with the Lambda
//! profile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use lambda_http::request::LambdaRequest;
use lambda_http::{Adapter, Context, LambdaEvent, Service};
use seance::config::{Config, Profile};
use seance_tests::{TEST_JWT_SECRET, fresh_postgres_url, redis_url};
use serde_json::{Value, json};

struct Lambda {
    router: axum::Router,
}

impl Lambda {
    async fn start() -> Self {
        Self::start_with(&[]).await
    }

    async fn start_with(extra: &[(&str, &str)]) -> Self {
        let database_url = fresh_postgres_url().await;
        // Keys of its own: a rate limit left by an earlier run must not count here.
        let prefix = format!("seance-test:{}:", uuid::Uuid::new_v4().simple());
        let mut vars: HashMap<String, String> = [
            ("DATABASE_URL", database_url.as_str()),
            ("REDIS_URL", redis_url().as_str()),
            ("REDIS_KEY_PREFIX", prefix.as_str()),
            ("JWT_SECRET", TEST_JWT_SECRET),
            ("PUBLIC_WS_URL", "wss://ws.example.test/prod"),
            (
                "SPIRIT_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/seance-spirit.fifo",
            ),
            ("LOG_LEVEL", "warn"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        vars.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let config = Config::from_vars(Profile::Lambda, &vars).expect("lambda config");
        let websocket_url = config.public_ws_url.clone().unwrap_or_default();
        let (app, database) = seance::App::build(config, &websocket_url).expect("app");
        // Lambdas never migrate; the deploy step does. Here the test plays that step.
        database.migrate_up().await.expect("migrate");
        Self {
            router: seance::rest::router(app),
        }
    }

    /// Loads `tests/events/http/{name}`, fills in placeholders, invokes, and returns the
    /// API Gateway response JSON with the body parsed.
    async fn invoke(&self, name: &str, replacements: &[(&str, &str)]) -> (u16, Value, Value) {
        let path = format!("{}/events/http/{name}", env!("CARGO_MANIFEST_DIR"));
        let mut text = std::fs::read_to_string(&path).expect("event file");
        for (from, to) in replacements {
            text = text.replace(from, to);
        }
        let request: LambdaRequest =
            serde_json::from_str(&text).expect("a valid HTTP API v2 event");
        assert!(
            matches!(request, LambdaRequest::ApiGatewayV2(_)),
            "read as HTTP API v2"
        );
        let mut adapter = Adapter::from(self.router.clone());
        let response = adapter
            .call(LambdaEvent::new(request, Context::default()))
            .await
            .expect("handler answers");
        let response = serde_json::to_value(&response).expect("response serializes");
        let status = response["statusCode"].as_u64().expect("statusCode") as u16;
        let body = match response["body"].as_str() {
            Some(text) if !text.is_empty() => serde_json::from_str(text).expect("JSON body"),
            _ => Value::Null,
        };
        (status, body, response)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_events_run_the_whole_session_lifecycle() {
    let lambda = Lambda::start().await;

    let (status, body, raw) = lambda.invoke("health.json", &[]).await;
    assert_eq!(status, 200, "{raw}");
    assert_eq!(body["database"], "connected");
    assert_eq!(body["redis"], "connected");
    assert_eq!(raw["headers"]["content-type"], "application/json");

    let (status, body, _) = lambda.invoke("personas.json", &[]).await;
    assert_eq!(status, 200);
    assert!(body["personas"].as_array().unwrap().len() >= 3);

    let (status, created, _) = lambda.invoke("create-session.json", &[]).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["session"]["name"], "Friday séance");
    assert_eq!(created["session"]["max_participants"], 4);
    assert_eq!(created["websocket_url"], "wss://ws.example.test/prod");
    let sid = created["session"]["id"].as_str().unwrap().to_owned();
    let host_token = created["token"].as_str().unwrap().to_owned();

    let (status, joined, _) = lambda
        .invoke("join-session.json", &[("SESSION_ID", &sid)])
        .await;
    assert_eq!(status, 200, "{joined}");
    assert_eq!(joined["participant"]["seat"], 1);

    let (status, session, _) = lambda
        .invoke("get-session.json", &[("SESSION_ID", &sid)])
        .await;
    assert_eq!(status, 200);
    assert_eq!(session["participant_count"], 2);

    let (status, messages, _) = lambda
        .invoke(
            "list-messages.json",
            &[("SESSION_ID", &sid), ("TOKEN", &host_token)],
        )
        .await;
    assert_eq!(status, 200, "{messages}");
    assert_eq!(messages, json!({"messages": [], "next_before": null}));

    let (status, _, _) = lambda
        .invoke(
            "end-session.json",
            &[("SESSION_ID", &sid), ("TOKEN", &host_token)],
        )
        .await;
    assert_eq!(status, 204);
    let (status, body, _) = lambda
        .invoke("join-session.json", &[("SESSION_ID", &sid)])
        .await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "session_ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_errors_keep_the_protocol_shape() {
    let lambda = Lambda::start().await;
    let (status, body, _) = lambda.invoke("create-session-invalid.json", &[]).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_field");
    assert_eq!(body["error"]["field"], "name");

    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body, _) = lambda
        .invoke("get-session.json", &[("SESSION_ID", &unknown)])
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");

    let (status, body, _) = lambda
        .invoke(
            "list-messages.json",
            &[("SESSION_ID", &unknown), ("TOKEN", "garbage")],
        )
        .await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
}

#[test]
fn the_lambda_profile_refuses_a_short_secret() {
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", "postgres://u@db/seance"),
        ("REDIS_URL", "redis://cache"),
        ("JWT_SECRET", "too-short"),
        ("PUBLIC_WS_URL", "wss://x/prod"),
        (
            "SPIRIT_QUEUE_URL",
            "https://sqs.us-east-1.amazonaws.com/123456789012/seance-spirit.fifo",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let err = Config::from_vars(Profile::Lambda, &vars).unwrap_err();
    assert!(err.to_string().contains("JWT_SECRET"), "{err}");
    assert!(
        !err.to_string().contains("too-short"),
        "the secret is never echoed"
    );
}

/// In Lambda the REST quota's client is API Gateway's `requestContext.http.sourceIp`, not
/// a header the client wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_by_api_gateways_source_ip() {
    let lambda =
        Lambda::start_with(&[("REST_RATE_BURST", "1"), ("REST_RATE_INTERVAL", "60")]).await;
    // Only the request context changes; the X-Forwarded-For header stays the same.
    let from = |ip: &'static str| [("\"sourceIp\": \"203.0.113.7\"", ip)];
    let (status, _, _) = lambda
        .invoke(
            "create-session.json",
            &from("\"sourceIp\": \"198.51.100.10\""),
        )
        .await;
    assert_eq!(status, 201);
    let (status, body, raw) = lambda
        .invoke(
            "create-session.json",
            &from("\"sourceIp\": \"198.51.100.10\""),
        )
        .await;
    assert_eq!(status, 429, "{body}");
    assert!(raw["headers"]["retry-after"].is_string());
    let (status, _, _) = lambda
        .invoke(
            "create-session.json",
            &from("\"sourceIp\": \"198.51.100.11\""),
        )
        .await;
    assert_eq!(status, 201, "another caller has its own quota");
}
