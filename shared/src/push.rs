//! Pushing events to clients: the API Gateway Management API (`@connections`) behind one
//! trait, and the session fan-out built on it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_apigatewaymanagement::config::{
    BehaviorVersion, Credentials, Region, SharedCredentialsProvider, retry::RetryConfig,
    timeout::TimeoutConfig,
};
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures_util::StreamExt;
use uuid::Uuid;

use crate::connections::{Connection, ConnectionStore, Presence};
use crate::protocol::{ServerEvent, encode};
use crate::tls::AwsTlsRoots;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// The connection is gone (410): forget it.
    #[error("the connection is gone")]
    Gone,
    #[error("the payload is too large")]
    PayloadTooLarge,
    /// No answer within [`PUSH_TIMEOUT`]: the connection is skipped for a while.
    #[error("no answer within the push timeout")]
    Timeout,
    /// Skipped: it timed out moments ago (see [`SLOW_SKIP`]).
    #[error("skipped: the connection was slow moments ago")]
    Skipped,
    #[error("push failed: {0}")]
    Other(String),
}

#[async_trait]
pub trait Pusher: Send + Sync + 'static {
    /// `PostToConnection`: sends one text frame.
    async fn send(&self, endpoint: &str, connection_id: &str, data: &str) -> Result<(), PushError>;

    /// `DeleteConnection`: closes the socket.
    async fn close(&self, endpoint: &str, connection_id: &str) -> Result<(), PushError>;
}

/// Where the credentials come from.
#[derive(Debug, Clone)]
pub enum AwsCredentials {
    /// Lambda's environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
    Environment,
    /// Fixed placeholder keys ([`LOCAL_ACCESS_KEY_ID`]), which the harness's own
    /// `@connections` endpoint accepts.
    Static,
}

/// The placeholder key of [`AwsCredentials::Static`]: not a secret, nothing on AWS knows it.
pub const LOCAL_ACCESS_KEY_ID: &str = "LOCALHARNESS";
const LOCAL_SECRET_ACCESS_KEY: &str = "local-harness-secret";

impl AwsCredentials {
    /// The harness's: the environment's keys when it has some (a real SQS queue needs
    /// them), else the placeholders its own endpoints and local servers accept.
    pub fn for_harness() -> Self {
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_some() {
            Self::Environment
        } else {
            Self::Static
        }
    }

    /// The credentials provider every AWS client of this process signs with.
    pub fn provider(&self) -> SharedCredentialsProvider {
        match self {
            Self::Environment => SharedCredentialsProvider::new(
                aws_config::environment::EnvironmentVariableCredentialsProvider::new(),
            ),
            Self::Static => SharedCredentialsProvider::new(Credentials::new(
                LOCAL_ACCESS_KEY_ID,
                LOCAL_SECRET_ACCESS_KEY,
                None,
                None,
                "seance-harness",
            )),
        }
    }

    /// The access key and secret these credentials sign with, read now: the harness checks
    /// the signatures its `@connections` receives against them, and tests sign their
    /// hand-made calls with them. `None` for the environment when it lacks either.
    pub fn keys(&self) -> Option<(String, String)> {
        match self {
            Self::Environment => Some((
                std::env::var("AWS_ACCESS_KEY_ID").ok()?,
                std::env::var("AWS_SECRET_ACCESS_KEY").ok()?,
            )),
            Self::Static => Some((
                LOCAL_ACCESS_KEY_ID.to_owned(),
                LOCAL_SECRET_ACCESS_KEY.to_owned(),
            )),
        }
    }
}

/// The production pusher: `aws-sdk-apigatewaymanagement`. One client per endpoint, built
/// on first use and kept for the life of the container; building one makes no network call.
pub struct ManagementApi {
    region: Region,
    credentials: SharedCredentialsProvider,
    clients: Mutex<HashMap<String, aws_sdk_apigatewaymanagement::Client>>,
    slow: SlowConnections,
    roots: AwsTlsRoots,
}

/// Connections whose last push timed out, and when: their pushes are skipped for
/// [`SLOW_SKIP`]. Every [`Pusher`] keeps one, so a stuck connection costs the room one
/// timeout whichever way pushes go.
#[derive(Debug, Default)]
pub struct SlowConnections(Mutex<HashMap<String, std::time::Instant>>);

impl SlowConnections {
    pub fn recently_slow(&self, connection_id: &str) -> bool {
        let mut slow = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slow.retain(|_, at| at.elapsed() < SLOW_SKIP);
        slow.contains_key(connection_id)
    }

    pub fn mark(&self, connection_id: &str) {
        tracing::warn!(%connection_id, timeout = ?PUSH_TIMEOUT, "push timed out; skipping this connection for a while");
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(connection_id.to_owned(), std::time::Instant::now());
    }
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

const PUSH_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A push that has not answered by then is given up for that event: the room's next
/// token must not wait on one connection.
pub const PUSH_TIMEOUT: Duration = Duration::from_millis(1500);
/// After a timeout, the connection's pushes are skipped this long, so one stuck
/// connection costs the room one timeout, not one per event.
pub const SLOW_SKIP: Duration = Duration::from_secs(10);

/// Whether a failed push surely never reached the connection, so sending it again cannot
/// deliver it twice: throttled (429, `LimitExceededException`).
fn throttled<E>(
    err: &aws_sdk_apigatewaymanagement::error::SdkError<
        E,
        aws_sdk_apigatewaymanagement::config::http::HttpResponse,
    >,
) -> bool {
    err.raw_response()
        .is_some_and(|raw| raw.status().as_u16() == 429)
}

impl ManagementApi {
    /// Builds no client for an endpoint yet (each push names its own), but does build one
    /// and throw it away: the SDK parses its endpoint rules' partition table (JSON and
    /// regular expressions, about 0.4 M instructions, once a process) the first time a
    /// client of this service is built, whatever resolver the client is given, since its
    /// service plugin always makes the default one. Here that lands in a Lambda's init,
    /// which runs at full CPU before the first event, not inside the first push (README,
    /// "Sizes and cold starts, measured"). No network call either way. Once a process: the
    /// table is the process's, so a second `ManagementApi` (the harness's tests build many)
    /// has nothing left to warm.
    pub fn new(region: &str, credentials: AwsCredentials, roots: AwsTlsRoots) -> Self {
        static PARTITION_TABLE_BUILT: std::sync::Once = std::sync::Once::new();
        let api = Self {
            roots,
            region: Region::new(region.to_owned()),
            credentials: credentials.provider(),
            clients: Mutex::new(HashMap::new()),
            slow: SlowConnections::default(),
        };
        PARTITION_TABLE_BUILT.call_once(|| {
            drop(aws_sdk_apigatewaymanagement::Client::from_conf(
                api.config_for(""),
            ));
        });
        api
    }

    /// The configuration of the client for `endpoint`.
    fn config_for(&self, endpoint: &str) -> aws_sdk_apigatewaymanagement::Config {
        aws_sdk_apigatewaymanagement::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .http_client(crate::tls::aws_http_client(self.roots))
            .region(self.region.clone())
            .credentials_provider(self.credentials.clone())
            .endpoint_resolver(FixedEndpoint(endpoint.to_owned()))
            // The whole call's limit is `send`'s own (PUSH_TIMEOUT, one clock).
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(PUSH_CONNECT_TIMEOUT)
                    .build(),
            )
            // PostToConnection is not idempotent: the SDK retries nothing (a timed-out push
            // may have been delivered); `send` retries only what surely was not.
            .retry_config(RetryConfig::standard().with_max_attempts(1))
            .build()
    }

    fn client(&self, endpoint: &str) -> aws_sdk_apigatewaymanagement::Client {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(endpoint.to_owned())
            .or_insert_with(|| {
                aws_sdk_apigatewaymanagement::Client::from_conf(self.config_for(endpoint))
            })
            .clone()
    }
}

/// The endpoint a client was built for, as the SDK's own resolver answers for a custom
/// endpoint (the URL alone, no properties: the signing name, `execute-api`, and the region
/// come from the client's configuration). Every push names its endpoint, so the generated
/// resolver's rules are never run for it. (Its partition table is parsed all the same, when
/// a process builds its first client: see [`ManagementApi::new`].)
#[derive(Debug)]
struct FixedEndpoint(String);

impl aws_sdk_apigatewaymanagement::config::endpoint::ResolveEndpoint for FixedEndpoint {
    fn resolve_endpoint<'a>(
        &'a self,
        _params: &'a aws_sdk_apigatewaymanagement::config::endpoint::Params,
    ) -> aws_sdk_apigatewaymanagement::config::endpoint::EndpointFuture<'a> {
        aws_sdk_apigatewaymanagement::config::endpoint::EndpointFuture::ready(Ok(
            aws_sdk_apigatewaymanagement::config::endpoint::Endpoint::builder()
                .url(self.0.clone())
                .build(),
        ))
    }
}

#[async_trait]
impl Pusher for ManagementApi {
    async fn send(&self, endpoint: &str, connection_id: &str, data: &str) -> Result<(), PushError> {
        if self.slow.recently_slow(connection_id) {
            return Err(PushError::Skipped);
        }
        let client = self.client(endpoint);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let call = client
                .post_to_connection()
                .connection_id(connection_id)
                .data(Blob::new(data.as_bytes()))
                .send();
            let result = match tokio::time::timeout(PUSH_TIMEOUT, call).await {
                Ok(result) => result,
                Err(_) => {
                    self.slow.mark(connection_id);
                    return Err(PushError::Timeout);
                }
            };
            let err = match result {
                Ok(_) => return Ok(()),
                Err(err) => err,
            };
            let detail = aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&err).to_string();
            match err.as_service_error() {
                Some(e) if e.is_gone_exception() => return Err(PushError::Gone),
                Some(e) if e.is_payload_too_large_exception() => {
                    return Err(PushError::PayloadTooLarge);
                }
                _ => {}
            }
            if attempt < 2 && throttled(&err) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            return Err(PushError::Other(detail));
        }
    }

    async fn close(&self, endpoint: &str, connection_id: &str) -> Result<(), PushError> {
        let call = self
            .client(endpoint)
            .delete_connection()
            .connection_id(connection_id)
            .send();
        tokio::time::timeout(PUSH_TIMEOUT, call)
            .await
            .map_err(|_| PushError::Timeout)?
            .map(|_| ())
            .map_err(|err| match err.as_service_error() {
                Some(e) if e.is_gone_exception() => PushError::Gone,
                _ => PushError::Other(
                    aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&err).to_string(),
                ),
            })
    }
}

/// Who in a session gets an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    Everyone,
    /// Everyone but one connection (the one opening: it cannot be pushed to yet).
    AllButConnection(String),
    /// Everyone but one participant's connections (their own typing).
    AllButParticipant(Uuid),
}

impl Audience {
    fn includes(&self, connection: &Connection) -> bool {
        match self {
            Self::Everyone => true,
            Self::AllButConnection(id) => connection.connection_id != *id,
            Self::AllButParticipant(id) => connection.participant.id != *id,
        }
    }
}

/// How many pushes of one fan-out are in flight at once. On AWS a push waits on a round
/// trip to API Gateway far longer than the CPU it costs, so a fan-out takes about one
/// round trip per wave of this many: 256 lets a room of a few hundred sockets hear an event
/// in one wave (`bench-push` with `BENCH_ENDPOINT_DELAY_MS`: 64 in flight made a fan-out to
/// 200 four waves, 4.3× one). Each push in flight holds one pooled HTTP connection.
pub const FANOUT_CONCURRENCY: usize = 256;

/// What a fan-out did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FanoutReport {
    pub delivered: usize,
    pub gone: usize,
    pub failed: usize,
    /// Answered 410 while their `$connect` may still be running: kept, not pruned.
    pub opening: usize,
}

/// How long after `$connect` began a connection may still be opening. API Gateway answers
/// `PostToConnection` with 410 until `$connect` has returned, and gives it at most 29 s;
/// a 410 in that window says nothing about the connection being gone.
pub const STILL_OPENING: std::time::Duration = std::time::Duration::from_secs(30);

/// True while `connection` may still be opening (see [`STILL_OPENING`]).
pub fn still_opening(connection: &Connection) -> bool {
    still_opening_at(connection, chrono::Utc::now())
}

/// [`still_opening`] at `now`. A `connected_at` ahead of `now` (another instance's clock)
/// counts as opening.
fn still_opening_at(connection: &Connection, now: chrono::DateTime<chrono::Utc>) -> bool {
    let age = now.signed_duration_since(connection.connected_at);
    age.to_std().map_or(true, |age| age < STILL_OPENING)
}

/// Pushes to everything that can reach a session's connections.
#[derive(Clone)]
pub struct Broadcaster {
    pub connections: Arc<dyn ConnectionStore>,
    pub pusher: Arc<dyn Pusher>,
}

impl Broadcaster {
    /// Sends one event to one connection; a 410 forgets the connection (and announces
    /// `user_left` if it was its participant's last).
    pub async fn send_to(
        &self,
        endpoint: &str,
        connection: &Connection,
        event: &ServerEvent,
    ) -> FanoutReport {
        self.fan_out(
            endpoint,
            connection.session_id,
            vec![(event.clone(), Target::One(connection.connection_id.clone()))],
        )
        .await
    }

    /// Sends `event` to the session's connections in `audience`, concurrently (at most
    /// [`FANOUT_CONCURRENCY`] at a time). A slow or failed connection holds up no one.
    pub async fn broadcast(
        &self,
        endpoint: &str,
        session_id: Uuid,
        event: &ServerEvent,
        audience: Audience,
    ) -> FanoutReport {
        self.fan_out(
            endpoint,
            session_id,
            vec![(event.clone(), Target::Audience(audience))],
        )
        .await
    }

    /// Sends each of the session's connections its own event, made from the connection
    /// (its seat, say), concurrently, as [`broadcast`](Self::broadcast) does.
    pub async fn broadcast_each(
        &self,
        endpoint: &str,
        session_id: Uuid,
        make: impl Fn(&Connection) -> ServerEvent,
    ) -> FanoutReport {
        let mut report = FanoutReport::default();
        let recipients = match self.connections.in_session(session_id).await {
            Ok(all) => all,
            Err(err) => {
                tracing::warn!(%err, %session_id, "cannot list the session's connections");
                report.failed += 1;
                return report;
            }
        };
        let pushes = recipients
            .into_iter()
            .map(|c| {
                let text: Arc<str> = Arc::from(encode(session_id, &make(&c)));
                (c, text)
            })
            .collect();
        let left = self.push_all(endpoint, pushes, &mut report).await;
        if !left.is_empty() {
            let more = self
                .fan_out(
                    endpoint,
                    session_id,
                    left.into_iter()
                        .map(|e| (e, Target::Audience(Audience::Everyone)))
                        .collect(),
                )
                .await;
            report.delivered += more.delivered;
            report.gone += more.gone;
            report.failed += more.failed;
            report.opening += more.opening;
        }
        report
    }

    /// Pushes each text to its connection, at most [`FANOUT_CONCURRENCY`] at once. A 410
    /// forgets the connection; the `user_left` events that follows are returned.
    async fn push_all(
        &self,
        endpoint: &str,
        pushes: Vec<(Connection, Arc<str>)>,
        report: &mut FanoutReport,
    ) -> Vec<ServerEvent> {
        let results: Vec<(Connection, Result<(), PushError>)> = futures_util::stream::iter(pushes)
            .map(|(connection, text)| async move {
                let result = self
                    .pusher
                    .send(endpoint, &connection.connection_id, &text)
                    .await;
                (connection, result)
            })
            .buffer_unordered(FANOUT_CONCURRENCY)
            .collect()
            .await;
        let mut left = Vec::new();
        for (connection, result) in results {
            match result {
                Ok(()) => report.delivered += 1,
                Err(PushError::Gone) if still_opening(&connection) => {
                    // Its $connect has not returned yet: it misses this event (its first
                    // `sync` brings it up to date) but stays.
                    report.opening += 1;
                    tracing::debug!(connection_id = %connection.connection_id, "410 while still opening; kept");
                }
                Err(PushError::Gone) => {
                    report.gone += 1;
                    tracing::info!(connection_id = %connection.connection_id, "connection gone; forgetting it");
                    match self.connections.remove(&connection.connection_id).await {
                        Ok(Some((gone, Presence::Changed))) => left.push(ServerEvent::UserLeft {
                            participant: gone.participant,
                        }),
                        Ok(_) => {}
                        Err(err) => tracing::warn!(%err, "cannot forget a gone connection"),
                    }
                }
                Err(PushError::Skipped) => {
                    report.failed += 1;
                    tracing::debug!(connection_id = %connection.connection_id, "skipped a slow connection");
                }
                Err(err) => {
                    report.failed += 1;
                    tracing::warn!(connection_id = %connection.connection_id, %err, "push failed");
                }
            }
        }
        left
    }

    /// Works through a queue, because pruning a gone connection can itself produce an
    /// event (`user_left`) for those still there.
    async fn fan_out(
        &self,
        endpoint: &str,
        session_id: Uuid,
        initial: Vec<(ServerEvent, Target)>,
    ) -> FanoutReport {
        let mut queue: VecDeque<(ServerEvent, Target)> = initial.into();
        let mut report = FanoutReport::default();
        while let Some((event, target)) = queue.pop_front() {
            let recipients: Vec<Connection> = match &target {
                Target::One(id) => match self.connections.get(id).await {
                    Ok(found) => found.into_iter().collect(),
                    Err(err) => {
                        tracing::warn!(%err, "cannot look up a connection");
                        report.failed += 1;
                        continue;
                    }
                },
                Target::Audience(audience) => match self.connections.in_session(session_id).await {
                    Ok(all) => all.into_iter().filter(|c| audience.includes(c)).collect(),
                    Err(err) => {
                        tracing::warn!(%err, %session_id, "cannot list the session's connections");
                        report.failed += 1;
                        continue;
                    }
                },
            };
            let text: Arc<str> = Arc::from(encode(session_id, &event));
            let pushes = recipients.into_iter().map(|c| (c, text.clone())).collect();
            let left = self.push_all(endpoint, pushes, &mut report).await;
            queue.extend(
                left.into_iter()
                    .map(|e| (e, Target::Audience(Audience::Everyone))),
            );
        }
        report
    }
}

enum Target {
    One(String),
    Audience(Audience),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed resolver answers what the SDK's generated one answers for the same
    /// endpoint, in every region we could be in.
    #[tokio::test]
    async fn the_fixed_endpoint_is_what_the_sdk_would_resolve() {
        use aws_sdk_apigatewaymanagement::config::endpoint::{
            DefaultResolver, Params, ResolveEndpoint,
        };
        for (endpoint, region) in [
            (
                "https://abc123.execute-api.eu-west-1.amazonaws.com/prod",
                "eu-west-1",
            ),
            ("https://ws.example.com", "us-east-1"),
            ("http://127.0.0.1:3000/local", "us-east-1"),
        ] {
            let params = Params::builder()
                .region(region.to_owned())
                .use_fips(false)
                .use_dual_stack(false)
                .endpoint(endpoint.to_owned())
                .build()
                .unwrap();
            let ours = FixedEndpoint(endpoint.to_owned())
                .resolve_endpoint(&params)
                .await
                .unwrap();
            let sdk = DefaultResolver::new()
                .resolve_endpoint(&params)
                .await
                .unwrap();
            assert_eq!(ours, sdk, "{endpoint}");
        }
    }

    #[test]
    fn a_connection_is_opening_for_thirty_seconds_after_connect() {
        let now = chrono::Utc::now();
        let connected = |ago_ms: i64| {
            crate::connections::connected_at(now - chrono::Duration::milliseconds(ago_ms))
        };
        assert!(still_opening_at(&connected(-2_000), now), "a clock ahead");
        assert!(still_opening_at(&connected(0), now));
        assert!(still_opening_at(&connected(29_999), now));
        assert!(!still_opening_at(&connected(30_000), now));
        assert!(!still_opening_at(&connected(60_000), now));
    }
}
