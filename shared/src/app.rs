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
