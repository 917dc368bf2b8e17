//! The REST routes over real HTTP against the harness on port 0: every status the protocol
//! lists, the happy paths on both databases, and proof that rejected requests change nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use seance::auth::{AUDIENCE, Claims, ISSUER, TokenKeys};
use seance::config::{JwtSecret, Secret};
use seance::domain::Role;
use seance_tests::{
    Backend, TEST_JWT_SECRET, TestApp, expect_error, keys, seed_questions, spawn_app,
    spawn_app_with, status_and_body, test_config,
};
use serde_json::{Value, json};
use uuid::Uuid;

fn session_keys() -> Vec<&'static str> {
    vec![
        "created_at",
        "id",
        "max_participants",
        "name",
        "participant_count",
        "persona",
        "status",
    ]
}

fn test_keys() -> TokenKeys {
    TokenKeys::new(
        &JwtSecret::Configured(Secret::new(TEST_JWT_SECRET)),
        std::time::Duration::from_secs(3600),
    )
}

/// The README's curl walk-through, asserted: create, join, read, list, end, late join.
async fn walkthrough(backend: Backend) {
    let app = spawn_app(backend).await;

    let created = app.create_session(None).await;
    assert_eq!(
        keys(&created),
        ["participant", "session", "token", "websocket_url"]
    );
    assert_eq!(keys(&created["session"]), session_keys());
    assert_eq!(
        keys(&created["participant"]),
        ["display_name", "id", "role", "seat"]
    );
    assert_eq!(created["session"]["status"], "active");
    assert_eq!(created["session"]["participant_count"], 1);
    assert_eq!(created["session"]["max_participants"], 8);
    assert_eq!(created["session"]["persona"], "madame-veyra");
    assert_eq!(created["participant"]["role"], "host");
    assert_eq!(created["participant"]["seat"], 0);
    assert_eq!(
        created["websocket_url"],
        format!("ws://{}/ws", app.harness.addr)
    );
    let created_at = created["session"]["created_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(created_at).is_ok());
    assert!(created_at.ends_with('Z'), "UTC: {created_at}");
    let sid = created["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        Uuid::parse_str(&sid).unwrap().to_string(),
        sid,
        "lowercase UUID"
    );
    let host_token = created["token"].as_str().unwrap().to_owned();
    let claims = test_keys().verify(&host_token).unwrap();
    assert_eq!(claims.sid.to_string(), sid);
    assert_eq!(claims.role, Role::Host);
    assert_eq!(claims.name, "Ada");

    let (status, joined) = status_and_body(app.join(&sid, "  Bob ").await).await;
    assert_eq!(status, 200);
    assert_eq!(
        keys(&joined),
        ["participant", "session", "token", "websocket_url"]
    );
    assert_eq!(joined["participant"]["display_name"], "Bob");
    assert_eq!(joined["participant"]["role"], "participant");
    assert_eq!(joined["participant"]["seat"], 1);
    assert_eq!(joined["session"]["participant_count"], 2);
    let bob_token = joined["token"].as_str().unwrap().to_owned();

    let (status, session) = status_and_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(status, 200);
    assert_eq!(keys(&session), session_keys());
    assert_eq!(session["participant_count"], 2);

    let (status, messages) = status_and_body(
        app.get_with_token(&format!("/api/sessions/{sid}/messages"), &bob_token)
            .await,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(messages, json!({"messages": [], "next_before": null}));

    let response = app
        .post_with_token(&format!("/api/sessions/{sid}/end"), &host_token)
        .await;
    assert_eq!(response.status(), 204);
    assert!(response.text().await.unwrap().is_empty());

    expect_error(app.join(&sid, "Late").await, 409, "session_ended").await;
    let (_, session) = status_and_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(session["status"], "ended");
    assert_eq!(
        session["participant_count"], 2,
        "the refused join took no seat"
    );
    expect_error(
        app.post_with_token(&format!("/api/sessions/{sid}/end"), &host_token)
            .await,
        409,
        "session_ended",
    )
    .await;
}

async fn health_reports_each_part(backend: Backend) {
    let app = spawn_app(backend).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "connected");
    let expected_redis = match backend {
        b if b.has_redis() => "connected",
        _ => "embedded",
    };
    assert_eq!(body["redis"], expected_redis);
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
}

/// `/health` answers 503 with its own body, not the error shape.
async fn health(app: &TestApp) -> (u16, Value) {
    let response = app.get("/health").await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        keys(&body),
        [
            "database",
            "database_backend",
            "redis",
            "spirit",
            "status",
            "timestamp",
            "voice"
        ]
    );
    assert_eq!(
        body["voice"], "offline (hummed letters)",
        "the harness hums by default"
    );
    (status, body)
}

async fn messages_page_through_history(backend: Backend) {
    let app = spawn_app(backend).await;
    let created = app.create_session(None).await;
    let sid: Uuid = created["session"]["id"].as_str().unwrap().parse().unwrap();
    let token = created["token"].as_str().unwrap();
    let host: seance::domain::Participant =
        serde_json::from_value(created["participant"].clone()).unwrap();
    let ids: Vec<String> = seed_questions(&app.store(), sid, &host, 5, "question ")
        .await
        .iter()
        .map(|m| m.id.to_string())
        .collect();
    let path = format!("/api/sessions/{sid}/messages");
    let (status, page) =
        status_and_body(app.get_with_token(&format!("{path}?limit=2"), token).await).await;
    assert_eq!(status, 200);
    let got: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[3].as_str(), ids[4].as_str()]);
    assert_eq!(page["next_before"], ids[3]);
    let first = &page["messages"][0];
    assert_eq!(
        keys(first),
        [
            "author",
            "content",
            "created_at",
            "id",
            "in_reply_to",
            "kind",
            "session_id"
        ]
    );
    assert_eq!(first["kind"], "question");
    assert_eq!(first["author"]["display_name"], "Ada");
    assert_eq!(first["in_reply_to"], Value::Null);

    let (_, older) = status_and_body(
        app.get_with_token(&format!("{path}?limit=2&before={}", ids[3]), token)
            .await,
    )
    .await;
    let got: Vec<&str> = older["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[1].as_str(), ids[2].as_str()]);
    let (_, oldest) = status_and_body(
        app.get_with_token(&format!("{path}?limit=2&before={}", ids[1]), token)
            .await,
    )
    .await;
    assert_eq!(oldest["messages"].as_array().unwrap().len(), 1);
    assert_eq!(oldest["next_before"], Value::Null);
    // limit defaults to 50.
    let (_, all) = status_and_body(app.get_with_token(&path, token).await).await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 5);
}

seance_tests::on_both_backends!(
    postgres, sqlite:
    walkthrough,
    health_reports_each_part,
    messages_page_through_history
);

async fn sqlite_app() -> TestApp {
    spawn_app(Backend::Sqlite).await
}

#[tokio::test]
async fn personas_are_listed() {
    let app = sqlite_app().await;
    let (status, body) = status_and_body(app.get("/api/personas").await).await;
    assert_eq!(status, 200);
    let personas = body["personas"].as_array().unwrap();
    assert!(personas.len() >= 3);
    for persona in personas {
        assert_eq!(keys(persona), ["description", "era", "id", "name"]);
    }
    // A listed persona can be chosen at creation and is kept.
    let id = personas[1]["id"].as_str().unwrap();
    let (status, created) = status_and_body(
        app.post(
            "/api/sessions",
            json!({"name": "n", "host_name": "h", "persona": id}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(created["session"]["persona"], id);
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let app = sqlite_app().await;
    for body in ["{", "", "not json", "{\"name\": \"x\",}", "{} {}"] {
        expect_error(
            app.post_raw("/api/sessions", body).await,
            400,
            "invalid_json",
        )
        .await;
    }
    let created = app.create_session(None).await;
    let sid = created["session"]["id"].as_str().unwrap();
    expect_error(
        app.post_raw(&format!("/api/sessions/{sid}/join"), "{")
            .await,
        400,
        "invalid_json",
    )
    .await;
}

#[tokio::test]
async fn invalid_fields_are_a_422_naming_the_field() {
    let app = sqlite_app().await;
    let cases = [
        (json!({"host_name": "Ada"}), "name"),
        (json!({"name": "", "host_name": "Ada"}), "name"),
        (json!({"name": "   ", "host_name": "Ada"}), "name"),
        (json!({"name": "x".repeat(101), "host_name": "Ada"}), "name"),
        (json!({"name": "bell\u{7}", "host_name": "Ada"}), "name"),
        (json!({"name": 5, "host_name": "Ada"}), "name"),
        (json!({"name": "S"}), "host_name"),
        (
            json!({"name": "S", "host_name": "y".repeat(41)}),
            "host_name",
        ),
        (json!({"name": "S", "host_name": "tab\there"}), "host_name"),
        (
            json!({"name": "S", "host_name": "Ada", "persona": "nobody"}),
            "persona",
        ),
        (
            json!({"name": "S", "host_name": "Ada", "max_participants": 1}),
            "max_participants",
        ),
        (
            json!({"name": "S", "host_name": "Ada", "max_participants": 13}),
            "max_participants",
        ),
        (
            json!({"name": "S", "host_name": "Ada", "max_participants": "four"}),
            "max_participants",
        ),
        (
            json!({"name": "S", "host_name": "Ada", "max_participants": 2.5}),
            "max_participants",
        ),
    ];
    for (body, field) in cases {
        let error = expect_error(
            app.post("/api/sessions", body.clone()).await,
            422,
            "invalid_field",
        )
        .await;
        assert_eq!(error["field"], field, "{body} -> {error}");
        assert!(
            error["message"].as_str().unwrap().contains(field),
            "{error}"
        );
    }
    // Exactly at the limits is fine.
    let (status, _) = status_and_body(
        app.post(
            "/api/sessions",
            json!({"name": "x".repeat(100), "host_name": "y".repeat(40), "max_participants": 12}),
        )
        .await,
    )
    .await;
    assert_eq!(status, 201);

    let created = app.create_session(None).await;
    let sid = created["session"]["id"].as_str().unwrap();
    for body in [
        json!({}),
        json!({"display_name": ""}),
        json!({"display_name": "z".repeat(41)}),
        json!({"display_name": "a\u{1b}[31m"}),
    ] {
        let error = expect_error(
            app.post(&format!("/api/sessions/{sid}/join"), body).await,
            422,
            "invalid_field",
        )
        .await;
        assert_eq!(error["field"], "display_name");
    }
    let token = created["token"].as_str().unwrap();
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("before=nope", "before"),
    ] {
        let error = expect_error(
            app.get_with_token(&format!("/api/sessions/{sid}/messages?{query}"), token)
                .await,
            422,
            "invalid_field",
        )
        .await;
        assert_eq!(error["field"], field, "{query}");
    }
    let unknown = Uuid::new_v4();
    let error = expect_error(
        app.get_with_token(
            &format!("/api/sessions/{sid}/messages?before={unknown}"),
            token,
        )
        .await,
        422,
        "invalid_field",
    )
    .await;
    assert_eq!(error["field"], "before");
}

#[tokio::test]
async fn rejected_requests_change_nothing() {
    let app = sqlite_app().await;
    let created = app.create_session(Some(2)).await;
    let sid = created["session"]["id"].as_str().unwrap();
    let count_rows = |table: &'static str| {
        let db = app.harness.database.clone();
        async move {
            match db {
                seance::store::Database::Sqlite(pool) => sqlx::query_scalar::<_, i64>(
                    sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")),
                )
                .fetch_one(&pool)
                .await
                .unwrap(),
                seance::store::Database::Postgres(_) => unreachable!("sqlite app"),
            }
        }
    };
    let before = (
        count_rows("sessions").await,
        count_rows("participants").await,
    );
    expect_error(
        app.post("/api/sessions", json!({"name": "", "host_name": "Ada"}))
            .await,
        422,
        "invalid_field",
    )
    .await;
    expect_error(
        app.post_raw("/api/sessions", "{").await,
        400,
        "invalid_json",
    )
    .await;
    expect_error(app.join(sid, "").await, 422, "invalid_field").await;
    let (status, _) = status_and_body(app.join(sid, "Bob").await).await;
    assert_eq!(status, 200);
    expect_error(app.join(sid, "Cy").await, 409, "session_full").await;
    let after = (
        count_rows("sessions").await,
        count_rows("participants").await,
    );
    assert_eq!(
        after,
        (before.0, before.1 + 1),
        "only Bob's join wrote anything"
    );
    let (_, session) = status_and_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(session["participant_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_http_joins_for_the_last_seat_one_wins() {
    let app = spawn_app_with(test_config(&seance_tests::fresh_sqlite_url(), None)).await;
    for _ in 0..5 {
        let created = app.create_session(Some(2)).await;
        let sid = created["session"]["id"].as_str().unwrap();
        let (a, b) = tokio::join!(app.join(sid, "A"), app.join(sid, "B"));
        let mut statuses = [a.status().as_u16(), b.status().as_u16()];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 409]);
    }
}

#[tokio::test]
async fn missing_or_bad_tokens_are_a_401() {
    let app = sqlite_app().await;
    let created = app.create_session(None).await;
    let sid = created["session"]["id"].as_str().unwrap();
    let path = format!("/api/sessions/{sid}/messages");
    expect_error(app.get(&path).await, 401, "unauthorized").await;
    expect_error(
        app.get_with_token(&path, "garbage").await,
        401,
        "unauthorized",
    )
    .await;
    let basic = app
        .client
        .get(app.url(&path))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    expect_error(basic, 401, "unauthorized").await;

    let claims = test_keys()
        .verify(created["token"].as_str().unwrap())
        .unwrap();
    let now = Utc::now().timestamp();
    let expired = test_keys()
        .sign(&Claims {
            iat: now - 7200,
            exp: now - 3600,
            ..claims.clone()
        })
        .unwrap();
    let error = expect_error(
        app.get_with_token(&path, &expired).await,
        401,
        "unauthorized",
    )
    .await;
    assert!(error["message"].as_str().unwrap().contains("expired"));

    let forged = TokenKeys::new(
        &JwtSecret::Configured(Secret::new("some-other-secret-that-is-long-enough!!")),
        std::time::Duration::from_secs(3600),
    )
    .sign(&claims)
    .unwrap();
    expect_error(
        app.get_with_token(&path, &forged).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_audience = test_keys()
        .sign(&Claims {
            aud: "someone-else".into(),
            iss: ISSUER.into(),
            ..claims.clone()
        })
        .unwrap();
    expect_error(
        app.get_with_token(&path, &wrong_audience).await,
        401,
        "unauthorized",
    )
    .await;
    let wrong_issuer = test_keys()
        .sign(&Claims {
            iss: "not-seance".into(),
            aud: AUDIENCE.into(),
            ..claims
        })
        .unwrap();
    expect_error(
        app.get_with_token(&path, &wrong_issuer).await,
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        app.post_with_token(&format!("/api/sessions/{sid}/end"), "garbage")
            .await,
        401,
        "unauthorized",
    )
    .await;
    let no_token = app
        .client
        .post(app.url(&format!("/api/sessions/{sid}/end")))
        .send()
        .await
        .unwrap();
    expect_error(no_token, 401, "unauthorized").await;
}

#[tokio::test]
async fn tokens_open_nothing_elsewhere_and_only_hosts_end() {
    let app = sqlite_app().await;
    let first = app.create_session(None).await;
    let second = app.create_session(None).await;
    let first_id = first["session"]["id"].as_str().unwrap();
    let second_id = second["session"]["id"].as_str().unwrap();
    let first_host = first["token"].as_str().unwrap();
    expect_error(
        app.get_with_token(&format!("/api/sessions/{second_id}/messages"), first_host)
            .await,
        403,
        "forbidden",
    )
    .await;
    expect_error(
        app.post_with_token(&format!("/api/sessions/{second_id}/end"), first_host)
            .await,
        403,
        "forbidden",
    )
    .await;
    let (_, joined) = status_and_body(app.join(first_id, "Bob").await).await;
    let bob = joined["token"].as_str().unwrap();
    expect_error(
        app.post_with_token(&format!("/api/sessions/{first_id}/end"), bob)
            .await,
        403,
        "forbidden",
    )
    .await;
    let (_, session) = status_and_body(app.get(&format!("/api/sessions/{first_id}")).await).await;
    assert_eq!(session["status"], "active", "a refused end changes nothing");
    let (_, session) = status_and_body(app.get(&format!("/api/sessions/{second_id}")).await).await;
    assert_eq!(session["status"], "active");
}

#[tokio::test]
async fn unknown_ids_and_routes_are_a_404() {
    let app = sqlite_app().await;
    let unknown = Uuid::new_v4();
    expect_error(
        app.get(&format!("/api/sessions/{unknown}")).await,
        404,
        "not_found",
    )
    .await;
    expect_error(app.get("/api/sessions/not-a-uuid").await, 404, "not_found").await;
    expect_error(
        app.join(&unknown.to_string(), "Bob").await,
        404,
        "not_found",
    )
    .await;
    expect_error(app.join("not-a-uuid", "Bob").await, 404, "not_found").await;
    expect_error(app.get("/no/such/route").await, 404, "not_found").await;
    // A well-signed token for a session that does not exist.
    let ghost = seance::domain::Participant {
        id: Uuid::new_v4(),
        display_name: "Ghost".into(),
        role: Role::Host,
        seat: 0,
    };
    let token = test_keys().issue(unknown, &ghost).unwrap();
    expect_error(
        app.post_with_token(&format!("/api/sessions/{unknown}/end"), &token)
            .await,
        404,
        "not_found",
    )
    .await;
    expect_error(
        app.get_with_token(&format!("/api/sessions/{unknown}/messages"), &token)
            .await,
        404,
        "not_found",
    )
    .await;
    // Wrong method: still JSON, never HTML.
    let response = app
        .client
        .delete(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    expect_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn full_sessions_are_a_409() {
    let app = sqlite_app().await;
    let created = app.create_session(Some(3)).await;
    let sid = created["session"]["id"].as_str().unwrap();
    for name in ["Bob", "Cy"] {
        assert_eq!(app.join(sid, name).await.status(), 200);
    }
    let error = expect_error(app.join(sid, "Dee").await, 409, "session_full").await;
    assert!(error["message"].as_str().unwrap().contains("full"));
}

#[tokio::test]
async fn oversized_bodies_are_a_413() {
    let app = sqlite_app().await;
    let limit = app.harness.app.config.max_body_bytes;
    let huge = json!({"name": "x".repeat(limit), "host_name": "Ada"}).to_string();
    expect_error(
        app.post_raw("/api/sessions", huge.clone()).await,
        413,
        "payload_too_large",
    )
    .await;
    let created = app.create_session(None).await;
    let sid = created["session"]["id"].as_str().unwrap();
    expect_error(
        app.post_raw(&format!("/api/sessions/{sid}/join"), huge)
            .await,
        413,
        "payload_too_large",
    )
    .await;
    // A streamed body without Content-Length is cut at the limit too.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..limit / 1024 + 2)
        .map(|_| Ok(vec![b' '; 1024]))
        .collect();
    let stream = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    expect_error(
        app.post_raw("/api/sessions", stream).await,
        413,
        "payload_too_large",
    )
    .await;
}

#[tokio::test]
async fn creating_and_joining_are_rate_limited_per_client() {
    let mut config = test_config("sqlite::memory:", None);
    config.rest_burst = 3;
    config.rest_interval = std::time::Duration::from_secs(60);
    let app = spawn_app_with(config).await;
    let created = app.create_session(None).await;
    let sid = created["session"]["id"].as_str().unwrap();
    assert_eq!(app.join(sid, "Bob").await.status(), 200);
    assert_eq!(app.join(sid, "Cy").await.status(), 200);
    let refused = app.join(sid, "Dee").await;
    let retry_after: u64 = refused
        .headers()
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    expect_error(refused, 429, "rate_limited").await;
    expect_error(
        app.post("/api/sessions", json!({"name": "n", "host_name": "h"}))
            .await,
        429,
        "rate_limited",
    )
    .await;
    let (_, session) = status_and_body(app.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(
        session["participant_count"], 3,
        "the refused join took no seat"
    );
    // Reads are not limited.
    assert_eq!(app.get(&format!("/api/sessions/{sid}")).await.status(), 200);
    // A client cannot pick a fresh bucket by writing X-Forwarded-For itself.
    let forged = app
        .client
        .post(app.url("/api/sessions"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
        .json(&json!({"name": "n", "host_name": "h"}))
        .send()
        .await
        .unwrap();
    expect_error(forged, 429, "rate_limited").await;
}

/// Behind a proxy that sets it (`TRUST_FORWARDED_FOR`), the last X-Forwarded-For entry
/// names the client, and each client has its own quota.
#[tokio::test]
async fn a_trusted_proxy_names_the_client() {
    let mut config = test_config("sqlite::memory:", None);
    config.rest_burst = 1;
    config.rest_interval = std::time::Duration::from_secs(60);
    config.trust_forwarded_for = true;
    let app = spawn_app_with(config).await;
    let create = |client: &'static str| {
        app.client
            .post(app.url("/api/sessions"))
            .header("x-forwarded-for", format!("10.9.9.9, {client}"))
            .json(&json!({"name": "n", "host_name": "h"}))
            .send()
    };
    assert_eq!(create("203.0.113.1").await.unwrap().status(), 201);
    assert_eq!(create("203.0.113.2").await.unwrap().status(), 201);
    expect_error(create("203.0.113.1").await.unwrap(), 429, "rate_limited").await;
}

#[tokio::test]
async fn health_is_503_when_a_part_is_down() {
    // Nothing listens on port 1: Redis is down.
    let app = spawn_app_with(test_config("sqlite::memory:", Some("redis://127.0.0.1:1"))).await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["redis"], "disconnected");
    assert_eq!(body["database"], "connected");
}

#[tokio::test]
async fn a_database_outage_is_a_503_not_a_500() {
    let app = spawn_app_with(test_config(&seance_tests::fresh_sqlite_url(), None)).await;
    app.harness.database.close().await;
    let (status, body) = health(&app).await;
    assert_eq!(status, 503);
    assert_eq!(body["database"], "disconnected");
    expect_error(
        app.post("/api/sessions", json!({"name": "n", "host_name": "h"}))
            .await,
        503,
        "service_unavailable",
    )
    .await;
}

#[tokio::test]
async fn cors_follows_the_configured_origins() {
    let mut config = test_config("sqlite::memory:", None);
    config.cors_origins = seance::config::CorsOrigins::List(vec!["https://board.example".into()]);
    let app = spawn_app_with(config).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/sessions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,authorization",
            )
            .send()
    };
    let allowed = preflight("https://board.example").await.unwrap();
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .unwrap(),
        "https://board.example"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn openapi_and_swagger_ui_are_served() {
    let app = sqlite_app().await;
    let (status, doc) = status_and_body(app.get("/openapi.json").await).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/health",
        "/api/personas",
        "/api/sessions",
        "/api/sessions/{id}",
        "/api/sessions/{id}/join",
        "/api/sessions/{id}/messages",
        "/api/sessions/{id}/end",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from the OpenAPI document"
        );
    }
    let docs = app.get("/docs").await;
    assert_eq!(docs.status(), 200);
    let html = docs.text().await.unwrap();
    assert!(html.to_lowercase().contains("swagger"), "{html}");
    // The UI loads the document from the route above.
    let initializer = app.get("/docs/swagger-initializer.js").await;
    assert_eq!(initializer.status(), 200);
    let script = initializer.text().await.unwrap();
    assert!(script.contains("\"/openapi.json\""), "{script}");
}

#[tokio::test]
async fn every_response_carries_a_request_id() {
    let app = sqlite_app().await;
    let response = app.get("/health").await;
    let id = response
        .headers()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(Uuid::parse_str(id).is_ok());
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("x-request-id").unwrap(), "abc-123");
}

const TEXT_PATTERN: &str = r"^[^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*[^\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\u0000-\u0009\u000B-\u001F\u007F-\u009F]*$";

/// The OpenAPI document states the constraints the server enforces, at the same bounds,
/// and every error status a route answers with, so generated clients and schema-driven
/// fuzzers agree with the server.
#[tokio::test]
async fn the_openapi_document_states_the_real_constraints() {
    let app = sqlite_app().await;
    let (_, doc) = status_and_body(app.get("/openapi.json").await).await;
    let schema = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
    let create = schema("CreateSessionBody");
    for (field, min, max) in [("name", 1, 100), ("host_name", 1, 40)] {
        assert_eq!(create[field]["minLength"], min, "{field}");
        assert_eq!(create[field]["maxLength"], max, "{field}");
        // Not blank (something that is neither whitespace nor control, in Rust's sense of
        // both), and no control character but the newline.
        assert_eq!(create[field]["pattern"], TEXT_PATTERN, "{field}");
    }
    assert_eq!(
        create["persona"]["enum"],
        json!(["madame-veyra", "captain-hollow", "the-archivist"]),
        "only the personas this server has"
    );
    assert_eq!(create["max_participants"]["minimum"], 2);
    assert_eq!(create["max_participants"]["maximum"], 12);
    let join = schema("JoinSessionBody");
    assert_eq!(join["display_name"]["minLength"], 1);
    assert_eq!(join["display_name"]["maxLength"], 40);
    assert_eq!(join["display_name"]["pattern"], TEXT_PATTERN);
    let params = doc["paths"]["/api/sessions/{id}/messages"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let limit = params.iter().find(|p| p["name"] == "limit").unwrap();
    assert_eq!(limit["schema"]["minimum"], 1);
    assert_eq!(limit["schema"]["maximum"], 100);

    // The server draws the lines where the document does.
    let body = |name: &str, max: Option<i64>| {
        let mut body = json!({"name": name, "host_name": "Ada"});
        if let Some(max) = max {
            body["max_participants"] = json!(max);
        }
        body
    };
    let a = |n: usize| "a".repeat(n);
    for (request, expected) in [
        (body(&a(100), None), 201),
        (body(&a(101), None), 422),
        (body("", None), 422),
        (body("   ", None), 422),
        (body("ok", Some(2)), 201),
        (body("ok", Some(12)), 201),
        (body("ok", Some(1)), 422),
        (body("ok", Some(13)), 422),
    ] {
        let status = app.post("/api/sessions", request.clone()).await.status();
        assert_eq!(status.as_u16(), expected, "{request}");
    }

    // Every route lists the error statuses it can answer with.
    let statuses = |path: &str, method: &str| -> Vec<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    };
    for (path, method, wanted) in [
        (
            "/api/sessions",
            "post",
            &["201", "400", "413", "422", "429", "503"][..],
        ),
        (
            "/api/sessions/{id}/join",
            "post",
            &["200", "400", "404", "409", "413", "422", "429", "503"],
        ),
        ("/api/sessions/{id}", "get", &["200", "404", "503"]),
        (
            "/api/sessions/{id}/messages",
            "get",
            &["200", "401", "403", "404", "422", "503"],
        ),
        (
            "/api/sessions/{id}/end",
            "post",
            &["204", "401", "403", "404", "409", "503"],
        ),
    ] {
        let listed = statuses(path, method);
        for status in wanted {
            assert!(
                listed.contains(&(*status).to_owned()),
                "{method} {path}: {status}"
            );
        }
    }
}
