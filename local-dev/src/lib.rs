//! The local harness: the same REST router the `sessions-api` Lambda runs and the same
//! WebSocket handlers the `ws-*` Lambdas run, behind an emulation of API Gateway's
//! WebSocket API (`gateway`), served on one port with embedded defaults (SQLite,
//! in-process stores, an ephemeral JWT secret).

pub mod event_source;
pub mod gateway;
pub mod sigv4;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::serve::ListenerExt;
use seance::App;
use seance::app::StartupError;
use seance::config::{Config, JwtSecret};
use seance::store::{Database, StoreError};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// A running harness. Dropping it stops the server (without waiting for it);
/// call [`Harness::shutdown`] to stop it gracefully.
pub struct Harness {
    pub addr: SocketAddr,
    pub app: App,
    pub database: Database,
    pub gateway: Arc<gateway::Gateway>,
    /// The harness's own spirit queue, when no `SPIRIT_QUEUE_URL` is set.
    pub fifo: Option<Arc<event_source::InProcessFifo>>,
    /// Feeds queued questions to the spirit; stops with the harness.
    _event_source: Option<event_source::AbortOnDrop>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), std::io::Error>>,
}

impl Harness {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish, closes the database.
    pub async fn shutdown(mut self) -> Result<(), HarnessError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server stops of itself (its shutdown signal fired), then closes the
    /// database.
    pub async fn wait(self) -> Result<(), HarnessError> {
        // Keep the sender alive while waiting: dropping it would read as a stop request.
        let _stop = self.stop;
        let result = self.server.await;
        self.database.close().await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(HarnessError::Serve(err)),
            Err(join) => Err(HarnessError::Serve(std::io::Error::other(join.to_string()))),
        }
    }
}

/// What a harness runs besides the API.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Feed the spirit's queue to the spirit, as Lambda's event source mapping does. Off
    /// only for tests that play the mapping themselves.
    pub event_source: bool,
    /// How the harness pushes to its own sockets.
    pub push: PushPath,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            event_source: true,
            push: PushPath::Direct,
        }
    }
}

/// How the harness's pushes reach its own sockets (`HARNESS_PUSH`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushPath {
    /// In process, with `@connections`' answers ([`gateway::DirectPusher`]); the default.
    Direct,
    /// Through the real Management API client, signed, over HTTP to this process's
    /// `@connections` endpoint, as a Lambda pushes.
    Sdk,
}

impl PushPath {
    /// `HARNESS_PUSH`: `direct` (the default) or `sdk`.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var("HARNESS_PUSH").ok().as_deref() {
            None | Some("" | "direct") => Ok(Self::Direct),
            Some("sdk") => Ok(Self::Sdk),
            Some(other) => Err(format!("HARNESS_PUSH is `{other}`; use direct or sdk")),
        }
    }
}

/// Binds `127.0.0.1:{config.port}` (0 picks a free port), applies pending migrations and
/// starts serving in the background.
pub async fn spawn(config: Config) -> Result<Harness, HarnessError> {
    spawn_with(config, Options::default(), std::future::pending()).await
}

/// As [`spawn`], also stopping when `signal` completes (Ctrl-C in the binary).
pub async fn spawn_with_shutdown(
    config: Config,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Harness, HarnessError> {
    spawn_with(config, Options::default(), signal).await
}

/// As [`spawn_with_shutdown`], with [`Options`].
pub async fn spawn_with(
    config: Config,
    options: Options,
    signal: impl Future<Output = ()> + Send + 'static,
) -> Result<Harness, HarnessError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], config.port));
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HarnessError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HarnessError::Bind { addr, source })?;
    let websocket_url = config
        .public_ws_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}/ws"));
    let mut config = config;
    // Pushes go to this process's own sockets: in process, or through the real Management
    // API client to its @connections. An endpoint configured elsewhere keeps the client.
    let pushes_to_itself = config.apigw_management_endpoint.is_none();
    if pushes_to_itself {
        config.apigw_management_endpoint = Some(format!("http://{addr}/{}", gateway::STAGE));
    }
    if config.jwt_secret == JwtSecret::Ephemeral {
        tracing::warn!(
            "JWT_SECRET is not set: using an ephemeral secret, so every token dies with this process"
        );
    }
    let (mut app, database) = App::build(config, &websocket_url)?;
    let direct = (pushes_to_itself && options.push == PushPath::Direct)
        .then(|| Arc::new(gateway::DirectPusher::default()));
    if let Some(direct) = &direct {
        app.pusher = direct.clone();
    }
    let applied = database.migrate_up().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied pending migrations");
    }
    let spirit = &app.config.spirit;
    let (fifo, event_source) = match &spirit.queue_url {
        Some(url) => {
            let client = seance::spirit::queue::sqs_client(
                &app.config.aws_region,
                spirit.sqs_endpoint.as_deref(),
                seance::push::AwsCredentials::for_harness(),
                app.config.aws_tls_roots,
            );
            let source = event_source::SqsEventSource::new(client, url, spirit.function_timeout);
            tracing::info!(queue_url = %url, "the spirit listens on SQS");
            (
                None,
                options
                    .event_source
                    .then(|| source.start(app.spirit_worker())),
            )
        }
        None => {
            let fifo = event_source::InProcessFifo::new(spirit.visibility_timeout);
            let function_timeout = spirit.function_timeout;
            app.questions = fifo.clone();
            let started = options
                .event_source
                .then(|| fifo.start(app.spirit_worker(), function_timeout));
            (Some(fifo), started)
        }
    };
    let gateway = gateway::Gateway::new(app.clone(), addr);
    if let Some(direct) = &direct {
        direct.attach(&gateway);
    }
    tracing::info!(
        push = if direct.is_some() { "direct" } else { "sdk" },
        "the harness pushes to its sockets"
    );
    let router = seance::rest::router(app.clone())
        .merge(gateway::router(gateway.clone()))
        .merge(web::router());
    let (stop, stopped) = oneshot::channel::<()>();
    let closing = gateway.clone();
    let server = tokio::spawn(async move {
        // Without TCP_NODELAY, each small frame after the first waits for the client's
        // delayed ACK (up to 200 ms on loopback) when several go out in a row, as a
        // streamed answer's do; API Gateway's own sockets do not hold frames back.
        let listener = listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(%err, "could not set TCP_NODELAY");
            }
        });
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = stopped => {}
                () = signal => {}
            }
            // Sockets are not part of HTTP's graceful shutdown: close them (each fires
            // $disconnect) before the server stops.
            closing.close_all().await;
        })
        .await
    });
    tracing::info!(%addr, backend = app.store.backend(), "harness ready");
    Ok(Harness {
        addr,
        app,
        database,
        gateway,
        fifo,
        _event_source: event_source,
        stop: Some(stop),
        server,
    })
}
