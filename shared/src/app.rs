//! The application state: everything a handler needs, built once per process (per Lambda
//! container, per harness) and shared by every request.

use std::sync::Arc;

use crate::auth::TokenKeys;
use crate::config::{Config, ConfigError};
use crate::health::{Redis, RedisUnavailable};
use crate::personas::Personas;
use crate::store::{Database, DynStore, StoreError};

#[derive(Clone)]
pub struct App {
    pub config: Arc<Config>,
    pub store: DynStore,
    pub tokens: TokenKeys,
    /// `None` when the harness runs its stores in-process.
    pub redis: Option<Redis>,
    pub personas: Arc<Personas>,
    /// What REST answers give as `websocket_url`.
    pub websocket_url: Arc<str>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Database(#[from] StoreError),
    #[error("cannot set up Redis: {0}")]
    Redis(#[from] RedisUnavailable),
}

impl App {
    /// Start-up of every Lambda: configuration from the environment (Lambda profile),
    /// logs, then the state. A bad configuration prints one clear line naming the variable
    /// and exits, so the function fails its init instead of serving half-configured.
    pub fn for_lambda() -> Self {
        let built = Config::from_env(crate::config::Profile::Lambda)
            .map_err(StartupError::from)
            .and_then(|config| {
                crate::telemetry::init(&config.log_level, config.log_format);
                let websocket_url = config.public_ws_url.clone().unwrap_or_default();
                Self::build(config, &websocket_url)
            });
        match built {
            Ok((app, _database)) => app,
            Err(err) => {
                eprintln!("error: {err}");
                std::process::exit(1);
            }
        }
    }

    /// Builds the state without touching the network: pools connect on first use.
    pub fn build(config: Config, websocket_url: &str) -> Result<(Self, Database), StartupError> {
        let database = Database::connect_lazy(&config)?;
        let redis = config.redis_url.as_ref().map(Redis::new).transpose()?;
        let tokens = TokenKeys::new(&config.jwt_secret, config.jwt_ttl);
        let app = Self {
            store: database.store(),
            tokens,
            redis,
            personas: Arc::new(Personas::built_in()),
            websocket_url: Arc::from(websocket_url.trim_end_matches('/')),
            config: Arc::new(config),
        };
        Ok((app, database))
    }
}
