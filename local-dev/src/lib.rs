//! The local harness: the same REST router the `sessions-api` Lambda runs, served on one
//! port with embedded defaults (SQLite, in-process stores, an ephemeral JWT secret).

use std::future::Future;
use std::net::SocketAddr;

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

/// Binds `127.0.0.1:{config.port}` (0 picks a free port), applies pending migrations and
/// starts serving in the background.
pub async fn spawn(config: Config) -> Result<Harness, HarnessError> {
    spawn_with_shutdown(config, std::future::pending()).await
}

/// As [`spawn`], also stopping when `signal` completes (Ctrl-C in the binary).
pub async fn spawn_with_shutdown(
    config: Config,
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
    if config.jwt_secret == JwtSecret::Ephemeral {
        tracing::warn!(
            "JWT_SECRET is not set: using an ephemeral secret, so every token dies with this process"
        );
    }
    let (app, database) = App::build(config, &websocket_url)?;
    let applied = database.migrate_up().await?;
    if !applied.is_empty() {
        tracing::info!(?applied, "applied pending migrations");
    }
    let router = seance::rest::router(app.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                tokio::select! {
                    _ = stopped => {}
                    () = signal => {}
                }
            })
            .await
    });
    tracing::info!(%addr, backend = app.store.backend(), "harness ready");
    Ok(Harness {
        addr,
        app,
        database,
        stop: Some(stop),
        server,
    })
}
