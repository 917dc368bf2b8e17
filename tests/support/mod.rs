//! Shared test support: fresh databases, the harness on port 0, an HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod mock_llm;
pub mod turns;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;

use seance::config::{Config, JwtSecret, Profile, Secret};
use seance::store::{Database, DynStore};
use serde_json::{Value, json};
use uuid::Uuid;

/// The secret every test harness signs with, so tests can forge expired or foreign tokens.
pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123";

/// The PostgreSQL server the suite creates its databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The SQS-speaking server `tests/run` started (moto), e.g. `http://127.0.0.1:4566`.
pub fn sqs_endpoint() -> String {
    std::env::var("TEST_SQS_ENDPOINT").expect(
        "TEST_SQS_ENDPOINT names an SQS-speaking server (tests/run starts moto_server and sets it)",
    )
}

/// A FIFO queue of its own on the test SQS server, messages hidden for `visibility`
/// seconds after a receive; its URL.
pub async fn fresh_fifo_queue(visibility: u32) -> String {
    let client = sqs_test_client();
    let name = format!("seance-test-{}.fifo", Uuid::new_v4().simple());
    client
        .create_queue()
        .queue_name(name)
        .attributes(aws_sdk_sqs::types::QueueAttributeName::FifoQueue, "true")
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            visibility.to_string(),
        )
        .send()
        .await
        .expect("create a FIFO queue on the test SQS server")
        .queue_url
        .expect("a queue URL")
}

/// An SQS client for the test server, signed with placeholder keys.
pub fn sqs_test_client() -> aws_sdk_sqs::Client {
    seance::spirit::queue::sqs_client(
        "us-east-1",
        Some(&sqs_endpoint()),
        seance::push::AwsCredentials::Static,
        seance::tls::AwsTlsRoots::Amazon,
    )
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The Redis flavours the stores must work on: plain, TLS (single node), and a TLS
/// cluster like ElastiCache Serverless (both started by `tests/run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisFlavour {
    Plain,
    Tls,
    TlsCluster,
}

/// Configuration for `flavour`, as `REDIS_URL`, `REDIS_CLUSTER` and `REDIS_CA_FILE` give it.
pub fn redis_config(flavour: RedisFlavour) -> seance::config::RedisConfig {
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is set by tests/run (it starts a TLS Redis and a one-node TLS cluster)")
        })
    };
    let ca = || Some(std::fs::read(var("TEST_REDIS_CA_FILE")).expect("the test CA"));
    let (url, cluster, ca_pem) = match flavour {
        RedisFlavour::Plain => (redis_url(), false, None),
        RedisFlavour::Tls => (var("TEST_REDIS_TLS_URL"), false, ca()),
        RedisFlavour::TlsCluster => (var("TEST_REDIS_CLUSTER_URL"), true, ca()),
    };
    seance::config::RedisConfig {
        url: Secret::new(url),
        cluster,
        ca_pem,
    }
}

/// A database of its own for one test: `seance_test_<unix seconds>_<uuid>`, created empty.
/// `tests/run` drops leftovers from earlier runs; `tests/mutants`, which runs the tests
/// hundreds of times, drops those older than a few minutes that nothing is connected to.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin).await.expect(
        "PostgreSQL must be reachable at TEST_DATABASE_URL (run the tests through tests/run)",
    );
    let name = format!(
        "seance_test_{}_{}",
        chrono::Utc::now().timestamp(),
        Uuid::new_v4().simple()
    );
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    conn.close().await.ok();
    let (base, _) = admin
        .rsplit_once('/')
        .expect("TEST_DATABASE_URL ends with /dbname");
    format!("{base}/{name}")
}

/// Waits until the harness has handled everything `senders` sent so far: each sends a
/// `ping` and waits for its `pong` (so the harness has read their earlier frames), then
/// the gateway's invocations and disconnects must all have finished. After this, an
/// observer's [`ws::WsClient::until_pong`] holds every event those frames caused.
pub async fn settle(app: &TestApp, senders: &mut [&mut ws::WsClient]) {
    for sender in senders.iter_mut() {
        sender.send_json(json!({"type": "ping"})).await;
        sender.expect("pong").await;
    }
    app.harness.gateway.settled().await;
}

/// A SQLite file of its own (not `:memory:`, so concurrent connections are real).
pub fn fresh_sqlite_url() -> String {
    let path = std::env::temp_dir().join(format!("seance-test-{}.db", Uuid::new_v4().simple()));
    format!("sqlite:{}", path.display())
}

/// Runs each named `async fn(Backend)` as two tests: in module `$postgres` on
/// PostgreSQL (with Redis, where the harness is involved) and in module `$sqlite` on
/// SQLite (with the in-process stores).
#[macro_export]
macro_rules! on_both_backends {
    ($postgres:ident, $sqlite:ident: $($name:ident),* $(,)?) => {
        mod $postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::Backend::Postgres).await
            })*
        }
        mod $sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::Backend::Sqlite).await
            })*
        }
    };
}

/// Runs each named `async fn(RedisFlavour)` as three tests, in modules `plain`, `tls` and
/// `tls_cluster`.
#[macro_export]
macro_rules! on_each_redis {
    ($($name:ident),* $(,)?) => {
        mod plain {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::RedisFlavour::Plain).await
            })*
        }
        mod tls {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::RedisFlavour::Tls).await
            })*
        }
        mod tls_cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::RedisFlavour::TlsCluster).await
            })*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite with the in-process stores: the harness's embedded default.
    Sqlite,
    /// PostgreSQL with Redis: production's parts.
    Postgres,
    /// The mixes an operator may run too.
    SqliteWithRedis,
    PostgresInProcess,
}

impl Backend {
    pub fn has_redis(self) -> bool {
        matches!(self, Self::Postgres | Self::SqliteWithRedis)
    }

    pub fn is_postgres(self) -> bool {
        matches!(self, Self::Postgres | Self::PostgresInProcess)
    }
}

/// Runs each named `async fn(Backend)` on the mixed back-ends, in modules `$sqlite_redis`
/// (SQLite with Redis) and `$postgres_in_process` (PostgreSQL with in-process stores).
#[macro_export]
macro_rules! on_mixed_backends {
    ($sqlite_redis:ident, $postgres_in_process:ident: $($name:ident),* $(,)?) => {
        mod $sqlite_redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::Backend::SqliteWithRedis).await
            })*
        }
        mod $postgres_in_process {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                super::$name($crate::Backend::PostgresInProcess).await
            })*
        }
    };
}

/// The harness's configuration for a test: port 0, a known secret, quiet logs.
pub fn test_config(database_url: &str, redis_url: Option<&str>) -> Config {
    let mut vars = HashMap::new();
    vars.insert("DATABASE_URL".to_owned(), database_url.to_owned());
    vars.insert("PORT".to_owned(), "0".to_owned());
    vars.insert("LOG_LEVEL".to_owned(), "warn".to_owned());
    if let Some(url) = redis_url {
        vars.insert("REDIS_URL".to_owned(), url.to_owned());
        if url.starts_with("rediss://") {
            let ca =
                std::env::var("TEST_REDIS_CA_FILE").expect("TEST_REDIS_CA_FILE with rediss://");
            vars.insert("REDIS_CA_FILE".to_owned(), ca);
        }
        vars.insert(
            "REDIS_KEY_PREFIX".to_owned(),
            format!("seance-test:{}:", Uuid::new_v4().simple()),
        );
    }
    let mut config = Config::from_vars(Profile::Harness, &vars).expect("test config is valid");
    config.jwt_secret = JwtSecret::Configured(Secret::new(TEST_JWT_SECRET));
    config
}

/// A migrated, empty store of the given backend.
pub async fn fresh_store(backend: Backend) -> (DynStore, Database) {
    let url = match backend {
        Backend::Sqlite | Backend::SqliteWithRedis => fresh_sqlite_url(),
        Backend::Postgres | Backend::PostgresInProcess => fresh_postgres_url().await,
    };
    let config = test_config(&url, None);
    let database = Database::connect_lazy(&config).expect("pool");
    database.migrate_up().await.expect("migrate");
    (database.store(), database)
}

/// The harness on port 0 and an HTTP client for it.
pub struct TestApp {
    pub harness: local_dev::Harness,
    pub client: reqwest::Client,
    pub base: String,
}

/// Signs `request` for `region`'s `execute-api` with the key the harness pushes with
/// (`AwsCredentials::for_harness`), now, by the SDK's own signer: what a call to the
/// harness's `@connections` needs.
pub fn sign_for_connections(request: &mut reqwest::Request, region: &str) {
    let (key, secret) = seance::push::AwsCredentials::for_harness()
        .keys()
        .expect("the harness has a key to sign with");
    sign_for_connections_with(request, region, &key, &secret);
}

/// Signs `request` for `region`'s `execute-api` with `key` and `secret`, now.
pub fn sign_for_connections_with(
    request: &mut reqwest::Request,
    region: &str,
    key: &str,
    secret: &str,
) {
    use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
    let identity = aws_credential_types::Credentials::new(key, secret, None, None, "tests").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("execute-api")
        .time(std::time::SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .expect("signing parameters")
        .into();
    let body = request
        .body()
        .and_then(|b| b.as_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect();
    let signable = SignableRequest::new(
        request.method().as_str(),
        request.url().as_str(),
        headers.iter().map(|(n, v)| (n.as_str(), v.as_str())),
        SignableBody::Bytes(body),
    )
    .expect("a signable request");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    let (headers, _) = instructions.into_parts();
    for header in headers {
        request.headers_mut().insert(
            reqwest::header::HeaderName::from_bytes(header.name().as_bytes()).expect("a name"),
            reqwest::header::HeaderValue::from_str(header.value()).expect("a value"),
        );
    }
}

/// SQLite with in-process connection stores, or PostgreSQL with Redis: the harness's two
/// modes.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_configured(backend, |_| {}).await
}

pub async fn spawn_app_configured(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let mut config = match backend {
        Backend::Sqlite => test_config("sqlite::memory:", None),
        Backend::Postgres => test_config(&fresh_postgres_url().await, Some(&redis_url())),
        Backend::SqliteWithRedis => test_config(&fresh_sqlite_url(), Some(&redis_url())),
        Backend::PostgresInProcess => test_config(&fresh_postgres_url().await, None),
    };
    adjust(&mut config);
    // The WebSocket scenarios run over both push paths: on PostgreSQL the harness pushes
    // through the real Management API client and its @connections endpoint, as a Lambda
    // does; on SQLite in process.
    let push = if backend.is_postgres() {
        local_dev::PushPath::Sdk
    } else {
        local_dev::PushPath::Direct
    };
    spawn_app_with_options(
        config,
        local_dev::Options {
            push,
            ..local_dev::Options::default()
        },
    )
    .await
}

pub async fn spawn_app_with(config: Config) -> TestApp {
    spawn_app_with_options(config, local_dev::Options::default()).await
}

/// With `SEANCE_TEST_LOG_DIR` set (`tests/run` sets it), every test process that starts a
/// harness logs to a file of its own there (DEBUG), so that `tests/run` can search the
/// whole suite's logs for secrets and tokens afterwards. A process that installed its own
/// subscriber first keeps it.
pub fn capture_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(dir) = std::env::var_os("SEANCE_TEST_LOG_DIR") else {
            return;
        };
        let binary = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "test".into());
        let path = std::path::Path::new(&dir).join(format!("{binary}-{}.log", std::process::id()));
        let Ok(file) = std::fs::File::create(&path) else {
            return;
        };
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter = seance::telemetry::parse_filter(
            "debug,sqlx=info,hyper=info,hyper_util=info,h2=info,reqwest=info,rustls=info,\
             aws_smithy_runtime=info,aws_smithy_runtime_api=info,aws_config=info,aws_sdk_sqs=info,\
             aws_sdk_apigatewaymanagement=info,tungstenite=info,tokio_tungstenite=info,tower=info",
        )
        .expect("the test log filter parses");
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .finish()
            .with(filter)
            .try_init();
    });
}

pub async fn spawn_app_with_options(config: Config, options: local_dev::Options) -> TestApp {
    capture_logs();
    let harness = local_dev::spawn_with(config, options, std::future::pending())
        .await
        .expect("harness starts");
    seance::tls::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
        .expect("client");
    TestApp {
        base: harness.base_url(),
        harness,
        client,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A hand-made `@connections` call (`path` percent-encoded, as on the wire), signed as
    /// the SDK signs one, with the harness's own key and region: the harness, as API
    /// Gateway, refuses any other.
    pub async fn connections_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, self.url(path))
            .body(body.to_vec())
            .build()
            .expect("a request");
        sign_for_connections(&mut request, &self.harness.app.config.aws_region);
        self.client.execute(request).await.expect("request")
    }

    pub fn store(&self) -> Arc<dyn seance::store::Store> {
        self.harness.app.store.clone()
    }

    /// POSTs raw bytes as JSON.
    pub async fn post_raw(&self, path: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.post_raw(path, body.to_string()).await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request")
    }

    /// Creates a session and returns the whole 201 body.
    pub async fn create_session(&self, max_participants: Option<u32>) -> Value {
        let mut body = json!({"name": "Friday séance", "host_name": "Ada"});
        if let Some(max) = max_participants {
            body["max_participants"] = json!(max);
        }
        let response = self.post("/api/sessions", body).await;
        assert_eq!(response.status(), 201);
        response.json().await.expect("json")
    }

    /// `websocket_url?token=…` for a ticket (a create or join answer).
    pub fn ws_url(&self, ticket: &Value) -> String {
        format!(
            "{}?token={}",
            ticket["websocket_url"].as_str().expect("websocket_url"),
            ticket["token"].as_str().expect("token")
        )
    }

    /// Joins and returns the whole 200 body.
    pub async fn join_ticket(&self, session_id: &str, name: &str) -> Value {
        let response = self.join(session_id, name).await;
        assert_eq!(response.status(), 200);
        response.json().await.expect("json")
    }

    pub async fn join(&self, session_id: &str, name: &str) -> reqwest::Response {
        self.post(
            &format!("/api/sessions/{session_id}/join"),
            json!({"display_name": name}),
        )
        .await
    }
}

/// Stores `count` questions by `author` straight into the store (as the WebSocket route
/// would), oldest first; their contents are `{prefix}{i}`.
pub async fn seed_questions(
    store: &seance::store::DynStore,
    session_id: Uuid,
    author: &seance::domain::Participant,
    count: usize,
    prefix: &str,
) -> Vec<seance::domain::Message> {
    let mut stored = Vec::with_capacity(count);
    for i in 0..count {
        let message = store
            .add_message(seance::store::NewMessage {
                id: None,
                session_id,
                kind: seance::domain::MessageKind::Question,
                author: Some(author.clone()),
                content: format!("{prefix}{i}"),
                in_reply_to: None,
            })
            .await
            .expect("store a question");
        stored.push(message);
    }
    stored
}

/// The status and the parsed body, asserting the protocol's error shape when it is an error.
pub async fn status_and_body(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let text = response.text().await.expect("body");
    let body: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}"))
    };
    if status >= 400 {
        assert_eq!(content_type.as_deref(), Some("application/json"), "{text}");
        let error = &body["error"];
        assert!(error["code"].is_string(), "no error.code: {text}");
        assert!(error["message"].is_string(), "no error.message: {text}");
    }
    (status, body)
}

/// Asserts `response` is an error with this status and code; returns the error object.
pub async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let (got, body) = status_and_body(response).await;
    assert_eq!(got, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"].clone()
}

/// The `id`s of a JSON list of messages (`session_state.messages`, a REST page), in order.
pub fn message_ids(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("a list of messages")
        .iter()
        .map(|m| m["id"].as_str().expect("a message id").to_owned())
        .collect()
}

/// The sorted keys of a JSON object.
pub fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .expect("an object")
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}
