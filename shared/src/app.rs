//! The application state: everything a handler needs, built once per process (per Lambda
//! container, per harness) and shared by every request.

use std::sync::Arc;

use crate::auth::TokenKeys;
use crate::board::Board;
use crate::config::{Config, ConfigError};
use crate::connections::{ConnectionStore, InProcessConnections, RedisConnections};
use crate::personas::{PersonaError, Personas};
use crate::push::{AwsCredentials, Broadcaster, ManagementApi, Pusher};
use crate::ratelimit::{InProcessRateLimiter, RateLimiter, RedisRateLimiter};
use crate::redis_client::{Redis, RedisUnavailable};
use crate::spirit::queue::{self, QuestionQueue, QueueBuilder};
use crate::spirit::turn::Spirit;
use crate::store::{Database, DynStore, StoreError};
use crate::voice::cache::{InProcessVoiceCache, RedisVoiceCache, VoiceCache};

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
    pub connections: Arc<dyn ConnectionStore>,
    pub pusher: Arc<dyn Pusher>,
    pub limiter: Arc<dyn RateLimiter>,
    pub board: Arc<Board>,
    /// Where accepted questions go: SQS (`SPIRIT_QUEUE_URL`), or the harness's own queue.
    pub questions: Arc<dyn QuestionQueue>,
    /// The spirit's cache of identical answers' audio. The model and the voice themselves
    /// are built by [`spirit_worker`](Self::spirit_worker), so a function that never
    /// answers (the WebSocket functions, `sessions-api`) never links their HTTP client.
    pub voice_cache: Arc<dyn VoiceCache>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot open the database: {0}")]
    Database(#[from] StoreError),
    #[error("cannot set up Redis: {0}")]
    Redis(#[from] RedisUnavailable),
    #[error("configuration error: {0}")]
    Persona(#[from] PersonaError),
}

impl App {
    /// Start-up of every Lambda: configuration from the environment (Lambda profile),
    /// logs, then the state. A bad configuration prints one clear line naming the variable
    /// and exits, so the function fails its init instead of serving half-configured.
    ///
    /// `queue` builds where accepted questions go: [`queue::from_config`] in `ws-message`,
    /// [`queue::none`] in the functions that accept none. Passed in rather than chosen
    /// here, so a function that never names the SQS client does not link it.
    pub fn for_lambda(needs: crate::config::Needs, queue: QueueBuilder) -> Self {
        lambda_start_up(needs, |config| {
            let websocket_url = config.public_ws_url.clone().unwrap_or_default();
            Self::build_with(config, &websocket_url, queue).map(|(app, _database)| app)
        })
    }

    /// Builds the state without touching the network: pools connect on first use. Accepted
    /// questions go to the queue `SPIRIT_QUEUE_URL` names, if any (the harness plugs in its
    /// own otherwise).
    pub fn build(config: Config, websocket_url: &str) -> Result<(Self, Database), StartupError> {
        Self::build_with(config, websocket_url, queue::from_config)
    }

    /// [`build`](Self::build), with the question queue built by `queue`.
    pub fn build_with(
        config: Config,
        websocket_url: &str,
        queue: QueueBuilder,
    ) -> Result<(Self, Database), StartupError> {
        // Before any TLS client is built (the Redis client and reqwest take the default).
        crate::tls::install_crypto_provider();
        let database = Database::connect_lazy(&config)?;
        let redis = config.redis.as_ref().map(Redis::new).transpose()?;
        let tokens = TokenKeys::new(&config.jwt_secret, config.jwt_ttl);
        let personas = Personas::load(config.spirit.steering_dir.as_deref())?;
        type Stores = (Arc<dyn ConnectionStore>, Arc<dyn RateLimiter>);
        let (connections, limiter): Stores = match &redis {
            Some(redis) => (
                Arc::new(RedisConnections::new(
                    redis.clone(),
                    &config.redis_key_prefix,
                    config.connection_ttl,
                )),
                Arc::new(RedisRateLimiter::new(
                    redis.clone(),
                    &config.redis_key_prefix,
                )),
            ),
            None => (
                Arc::new(InProcessConnections::new(config.connection_ttl)),
                Arc::new(InProcessRateLimiter::default()),
            ),
        };
        let credentials = match config.profile {
            crate::config::Profile::Lambda => AwsCredentials::Environment,
            crate::config::Profile::Harness => AwsCredentials::for_harness(),
        };
        let questions = queue(&config, &credentials);
        let pusher: Arc<dyn Pusher> = Arc::new(ManagementApi::new(
            &config.aws_region,
            credentials,
            config.aws_tls_roots,
        ));
        let voice_cache: Arc<dyn VoiceCache> = match &redis {
            Some(redis) => Arc::new(RedisVoiceCache::new(
                redis.clone(),
                &config.redis_key_prefix,
                config.voice_cache_bytes,
                config.voice_cache_ttl,
            )),
            None => Arc::new(InProcessVoiceCache::new(config.voice_cache_bytes)),
        };
        let app = Self {
            connections,
            pusher,
            limiter,
            board: Arc::new(Board::classic()),
            questions,
            voice_cache,
            store: database.store_with(config.database_prepared_statements),
            tokens,
            redis,
            personas: Arc::new(personas),
            websocket_url: Arc::from(websocket_url.trim_end_matches('/')),
            config: Arc::new(config),
        };
        Ok((app, database))
    }

    /// Start-up of the `migrate` Lambda: the database pool only.
    pub fn database_for_lambda() -> Database {
        lambda_start_up(crate::config::Needs::MIGRATE, |config| {
            Database::connect_lazy(&config).map_err(StartupError::from)
        })
    }

    /// Start-up of the `spirit` Lambda: the narrow set the spirit's turn needs.
    pub fn spirit_for_lambda() -> Spirit {
        Self::for_lambda(crate::config::Needs::SPIRIT, queue::none).spirit_worker()
    }

    /// What the spirit's turn needs of this state: store, pushes, personas, board, and the
    /// model and voice, built here from the configuration (no network I/O).
    pub fn spirit_worker(&self) -> Spirit {
        Spirit {
            store: self.store.clone(),
            broadcaster: self.broadcaster(),
            personas: self.personas.clone(),
            board: self.board.clone(),
            provider: crate::spirit::build_provider(&self.config.spirit),
            config: Arc::new(self.config.spirit.clone()),
            endpoint: Arc::from(self.push_endpoint(None, None)),
            voice: crate::voice::build_voice(&self.config.voice),
            voice_cache: self.voice_cache.clone(),
        }
    }

    pub fn broadcaster(&self) -> Broadcaster {
        Broadcaster {
            connections: self.connections.clone(),
            pusher: self.pusher.clone(),
        }
    }

    /// The `@connections` endpoint: the configured override, else the event's
    /// `https://{domainName}/{stage}`, else the one `PUBLIC_WS_URL` implies.
    pub fn push_endpoint(&self, domain_name: Option<&str>, stage: Option<&str>) -> String {
        if let Some(endpoint) = &self.config.apigw_management_endpoint {
            return endpoint.clone();
        }
        if let (Some(domain), Some(stage)) = (domain_name, stage) {
            return format!("https://{domain}/{stage}");
        }
        let ws = self.websocket_url.as_ref();
        if let Some(rest) = ws.strip_prefix("wss://") {
            format!("https://{rest}")
        } else if let Some(rest) = ws.strip_prefix("ws://") {
            format!("http://{rest}")
        } else {
            ws.to_owned()
        }
    }
}

/// Configuration (Lambda profile), logs, then `build`; on any error one clear line and
/// exit 1, so the function fails its init rather than serving half-configured.
fn lambda_start_up<T>(
    needs: crate::config::Needs,
    build: impl FnOnce(Config) -> Result<T, StartupError>,
) -> T {
    let built = Config::from_env_for(crate::config::Profile::Lambda, needs)
        .map_err(StartupError::from)
        .and_then(|config| {
            crate::telemetry::init(&config.log_level, config.log_format);
            build(config)
        });
    match built {
        Ok(value) => value,
        Err(err) => {
            eprintln!("error: {err}");
            std::process::exit(1);
        }
    }
}
