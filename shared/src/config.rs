//! Typed configuration, read once from the environment (and, in the harness, `.env` when
//! present) and validated at start-up with a message that names the variable. Secret
//! values are never printed: `Debug` redacts them.

use std::collections::HashMap;
use std::time::Duration;

pub use crate::tls::AwsTlsRoots;

/// Who is starting: a Lambda must be given everything; the harness has embedded defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Lambda,
    Harness,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Where CORS lets browsers call from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

/// A secret that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The JWT signing secret, or (harness only) a request to make an ephemeral one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtSecret {
    Configured(Secret),
    Ephemeral,
}

/// Which model answers for the spirit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiritProviderConfig {
    /// Google's Gemini API (`streamGenerateContent`).
    Gemini {
        api_key: Secret,
        model: String,
        base_url: String,
    },
    /// Any OpenAI-compatible chat completions server (Ollama, llama.cpp, vLLM, Gemini's own).
    OpenAi {
        api_key: Option<Secret>,
        model: String,
        base_url: String,
    },
    /// The offline oracle: deterministic, in character, no network.
    Oracle { seed: u64 },
}

/// How to reach Redis: `REDIS_URL` (`redis://` or `rediss://` for TLS), `REDIS_CLUSTER`
/// (true for a cluster, as ElastiCache Serverless always is), and `REDIS_CA_FILE` (a PEM
/// CA to trust instead of the public roots, for a private CA).
#[derive(Clone)]
pub struct RedisConfig {
    pub url: Secret,
    pub cluster: bool,
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url)
            .field("cluster", &self.cluster)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "…"))
            .finish()
    }
}

fn redis_config(
    get: &impl Fn(&str) -> Option<String>,
    url: &str,
) -> Result<RedisConfig, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        var: "REDIS_URL",
        reason: reason.to_owned(),
    };
    let tls = url.starts_with("rediss://");
    if !(tls || url.starts_with("redis://")) {
        return Err(invalid("must start with redis:// or rediss:// (TLS)"));
    }
    let cluster = match get("REDIS_CLUSTER").as_deref() {
        None | Some("false" | "0" | "no") => false,
        Some("true" | "1" | "yes") => true,
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "REDIS_CLUSTER",
                reason: format!("`{other}` is neither true nor false"),
            });
        }
    };
    // What follows the host: a database number is the only thing a path can be.
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let path = rest.split_once('/').map_or("", |(_, path)| path);
    let path = path.split('?').next().unwrap_or("");
    if cluster && !path.is_empty() && path != "0" {
        return Err(invalid(
            "a cluster has only database 0 (no SELECT): drop the /<db> from the URL",
        ));
    }
    if !path.is_empty() && path.parse::<u32>().is_err() {
        return Err(invalid("the path after the host must be a database number"));
    }
    if redis::IntoConnectionInfo::into_connection_info(url).is_err() {
        return Err(invalid("is not a URL the Redis client can use"));
    }
    let ca_pem = match get("REDIS_CA_FILE") {
        None => None,
        Some(_) if !tls => {
            return Err(ConfigError::Invalid {
                var: "REDIS_CA_FILE",
                reason: "only means something with a rediss:// (TLS) REDIS_URL".into(),
            });
        }
        Some(path) => Some(std::fs::read(&path).map_err(|err| ConfigError::Invalid {
            var: "REDIS_CA_FILE",
            reason: format!("cannot read {path}: {err}"),
        })?),
    };
    Ok(RedisConfig {
        url: Secret::new(url),
        cluster,
        ca_pem,
    })
}

/// The spirit's voice (`VOICE_PROVIDER`).
#[derive(Debug, Clone, PartialEq)]
pub enum VoiceConfig {
    /// Text only.
    None,
    /// The offline synthesiser: hummed letters, no key.
    Offline,
    ElevenLabs {
        api_key: Secret,
        /// `ELEVENLABS_BASE_URL`, for proxies and tests.
        base_url: String,
        /// `ELEVENLABS_MODEL`.
        model: String,
        /// `ELEVENLABS_OUTPUT_FORMAT`.
        output_format: String,
    },
}

impl VoiceConfig {
    /// What `/health` calls it; the same words as the built voice's `describe`.
    pub fn describe(&self) -> String {
        match self {
            Self::None => "none".to_owned(),
            Self::Offline => "offline (hummed letters)".to_owned(),
            Self::ElevenLabs { model, .. } => format!("elevenlabs ({model})"),
        }
    }
}

impl SpiritProviderConfig {
    /// What `/health` calls it; the same words as the built provider's `describe`.
    pub fn describe(&self) -> String {
        match self {
            Self::Gemini { model, .. } => format!("gemini ({model})"),
            Self::OpenAi { model, .. } => format!("openai-compatible ({model})"),
            Self::Oracle { .. } => "oracle (offline)".to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SpiritConfig {
    pub provider: SpiritProviderConfig,
    /// Extra or overriding persona files (`SPIRIT_STEERING_DIR`).
    pub steering_dir: Option<std::path::PathBuf>,
    /// Past this, the answer is a stock line with `fallback: true` (`SPIRIT_DEADLINE`, 20 s).
    pub deadline: Duration,
    /// How many recent messages the model sees (`SPIRIT_HISTORY`, 12).
    pub history: u32,
    /// The model's output cap (`SPIRIT_MAX_OUTPUT_TOKENS`, 256).
    pub max_output_tokens: u32,
    /// Questions waiting per session, the one being answered included (`SPIRIT_QUEUE_CAPACITY`, 3).
    pub queue_capacity: u32,
    /// Questions a session may ask per hour (`SPIRIT_SESSION_QUESTIONS_PER_HOUR`, 60).
    pub session_questions_per_hour: u32,
    /// The oracle's pause between words, so it streams like a model (`ORACLE_WORD_DELAY`, 120 ms).
    pub oracle_word_delay: Duration,
    /// Planchette pace: time per symbol and the extra pause at a word gap.
    pub planchette_symbol_ms: u64,
    pub planchette_gap_ms: u64,
    /// The SQS FIFO queue `ws-message` sends accepted questions to (`SPIRIT_QUEUE_URL`):
    /// required in Lambda; in the harness it replaces the in-process queue, and the
    /// harness then polls it as Lambda's event source mapping would.
    pub queue_url: Option<String>,
    /// Another SQS endpoint (`AWS_ENDPOINT_URL_SQS`), for a local SQS-speaking server.
    pub sqs_endpoint: Option<String>,
    /// The `spirit` function's timeout, as the harness emulates it: a turn still running
    /// then is killed and its message comes back (`SPIRIT_FUNCTION_TIMEOUT`, 90 s).
    pub function_timeout: Duration,
    /// How long a message whose turn failed stays hidden in the harness's in-process queue
    /// (`SPIRIT_VISIBILITY_TIMEOUT`; 6 × the function timeout, as the template sets SQS).
    pub visibility_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    /// `postgres://…` or `sqlite:…` (`sqlite::memory:` works too).
    pub database_url: Secret,
    /// Database connections per process; a Lambda needs 1–2.
    pub database_max_connections: u32,
    /// Another host for `DATABASE_URL`'s credentials (`DATABASE_HOST`): RDS Proxy's endpoint.
    pub database_host: Option<String>,
    /// Named prepared statements (`DATABASE_PREPARED_STATEMENTS`, true); false behind
    /// RDS Proxy, where they pin a client to one database connection.
    pub database_prepared_statements: bool,
    /// `REDIS_URL` and how to reach it; `None` means the harness's embedded stores.
    pub redis: Option<RedisConfig>,
    /// Prefix of every Redis key, so deployments and tests can share a server.
    pub redis_key_prefix: String,
    pub jwt_secret: JwtSecret,
    pub jwt_ttl: Duration,
    pub cors_origins: CorsOrigins,
    pub log_level: String,
    pub log_format: LogFormat,
    /// What `websocket_url` says in REST answers; the harness derives it when unset.
    pub public_ws_url: Option<String>,
    /// Largest accepted request body, in bytes (413 above it).
    pub max_body_bytes: usize,
    /// `max_participants` when a creator leaves it out.
    pub default_max_participants: u8,
    /// The highest `max_participants` a creator may ask for.
    pub max_participants_cap: u8,
    /// `messages?limit=` when left out.
    pub default_page_size: u32,
    /// The harness's port (`PORT`); 0 picks a free one.
    pub port: u16,
    /// Where pushes go (`APIGW_MANAGEMENT_ENDPOINT`): needed with a custom domain, and by
    /// the harness for its own `@connections`. Otherwise taken from each WebSocket event
    /// (`https://{domainName}/{stage}`) or, in the REST function, from `PUBLIC_WS_URL`.
    pub apigw_management_endpoint: Option<String>,
    /// `AWS_REGION`, which Lambda always sets; the harness uses `us-east-1`.
    pub aws_region: String,
    /// The root certificates the AWS SDK's clients trust (`AWS_TLS_ROOTS`: `amazon`, built
    /// in, by default; `system` for the platform's).
    pub aws_tls_roots: AwsTlsRoots,
    /// Longest question, in characters (`MAX_CONTENT_CHARS`, default 500).
    pub max_content_chars: usize,
    /// Largest client frame, in bytes (`MAX_FRAME_BYTES`, default 32768).
    pub max_frame_bytes: usize,
    /// Questions per participant: a burst, then one per interval (default 3, then 1 per 3 s).
    pub message_burst: u32,
    pub message_interval: Duration,
    /// Session creations and joins per client address: a burst, then one per interval
    /// (`REST_RATE_BURST` 30, `REST_RATE_INTERVAL` 2 s); beyond it, 429 with Retry-After.
    pub rest_burst: u32,
    /// Whether a proxy in front of the harness sets `X-Forwarded-For` (`TRUST_FORWARDED_FOR`,
    /// false): only then is it the client's address for the REST quota.
    pub trust_forwarded_for: bool,
    pub rest_interval: Duration,
    /// At most one `typing` a participant per this interval is passed on (default 1 s).
    pub typing_interval: Duration,
    /// Every frame a connection sends costs from one budget: `FRAME_RATE_BURST` (60) at
    /// once, then `FRAME_RATE_PER_SECOND` (10) a second.
    pub frame_burst: u32,
    pub frame_interval: Duration,
    /// How long a connection record outlives a lost `$disconnect` (default 2 h 10 min).
    pub connection_ttl: Duration,
    /// The harness closes a socket idle this long (default 10 min, as API Gateway).
    pub ws_idle_timeout: Duration,
    /// The harness closes any socket this old (default 2 h, as API Gateway).
    pub ws_max_lifetime: Duration,
    /// How long the harness waits for a WebSocket route's handler before it sends the
    /// client API Gateway's own timeout frame (`WS_INTEGRATION_TIMEOUT`, 29 s, fixed on AWS).
    pub ws_integration_timeout: Duration,
    pub spirit: SpiritConfig,
    pub voice: VoiceConfig,
    /// Bytes of synthesised audio the voice cache may hold in process, and the largest
    /// answer Redis keeps (`VOICE_CACHE_BYTES`, 8 MiB).
    pub voice_cache_bytes: usize,
    /// How long Redis keeps a cached answer (`VOICE_CACHE_TTL`, 1 day).
    pub voice_cache_ttl: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("configuration error: {var} is required but not set ({hint})")]
    Missing {
        var: &'static str,
        hint: &'static str,
    },
    #[error("configuration error: {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
}

/// What one Lambda function uses, so it is given (and requires) only those secrets and
/// services: least privilege, checked at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub database: bool,
    pub redis: bool,
    /// Signs or verifies tokens (`JWT_SECRET`).
    pub jwt: bool,
    /// Sends to the spirit's queue (`SPIRIT_QUEUE_URL`).
    pub queue: bool,
    /// Calls the model (its API key).
    pub model: bool,
}

impl Needs {
    pub const ALL: Self = Self {
        database: true,
        redis: true,
        jwt: true,
        queue: true,
        model: true,
    };
    pub const SESSIONS_API: Self = Self {
        queue: false,
        model: false,
        ..Self::ALL
    };
    pub const WS_CONNECT: Self = Self::SESSIONS_API;
    pub const WS_MESSAGE: Self = Self {
        jwt: false,
        model: false,
        ..Self::ALL
    };
    pub const WS_DISCONNECT: Self = Self {
        database: false,
        redis: true,
        jwt: false,
        queue: false,
        model: false,
    };
    pub const SPIRIT: Self = Self {
        jwt: false,
        queue: false,
        ..Self::ALL
    };
    pub const MIGRATE: Self = Self {
        database: true,
        redis: false,
        jwt: false,
        queue: false,
        model: false,
    };
}

/// Stands in for `DATABASE_URL` in a function that never touches the database: the pool
/// is lazy and never used, and would fail loudly if it were.
const NO_DATABASE: &str = "postgres://not-given-to-this-function.invalid/none";

pub const MIN_JWT_SECRET_CHARS: usize = 32;
const DEFAULT_SQLITE_URL: &str = "sqlite:.seance/seance.db";

impl Config {
    /// Reads the environment; the harness first loads `.env` (if present, without
    /// overriding the real environment).
    pub fn from_env(profile: Profile) -> Result<Self, ConfigError> {
        Self::from_env_for(profile, Needs::ALL)
    }

    /// As [`from_env`](Self::from_env), requiring in Lambda only what `needs` says.
    pub fn from_env_for(profile: Profile, needs: Needs) -> Result<Self, ConfigError> {
        // A Lambda function's configuration is its environment: looking for `.env` in
        // every folder up from its working directory would only cost each cold start
        // (`cargo lambda watch --env-file .env` passes a file to functions run locally).
        if profile == Profile::Harness
            && let Err(err) = dotenvy::dotenv()
            && !err.not_found()
        {
            // A missing .env is normal; a malformed one is worth a warning.
            eprintln!("warning: ignoring .env: {err}");
        }
        let vars: HashMap<String, String> = std::env::vars().collect();
        Self::from_vars_for(profile, needs, &vars)
    }

    /// The validation itself, over any map, so tests need not touch the process environment.
    pub fn from_vars(
        profile: Profile,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        Self::from_vars_for(profile, Needs::ALL, vars)
    }

    pub fn from_vars_for(
        profile: Profile,
        needs: Needs,
        vars: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            vars.get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let lambda = profile == Profile::Lambda;

        let database_url = match get("DATABASE_URL") {
            Some(url) => url,
            None if lambda && !needs.database => NO_DATABASE.to_owned(),
            None if lambda => {
                return Err(ConfigError::Missing {
                    var: "DATABASE_URL",
                    hint: "a postgres:// URL",
                });
            }
            None => DEFAULT_SQLITE_URL.to_owned(),
        };
        if !(database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://")
            || database_url.starts_with("sqlite:"))
        {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "must start with postgres://, postgresql:// or sqlite:".into(),
            });
        }
        if lambda && database_url.starts_with("sqlite:") {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                reason: "a Lambda needs PostgreSQL; SQLite is for the local harness".into(),
            });
        }

        let redis_url = get("REDIS_URL");
        let redis = redis_url
            .as_deref()
            .map(|url| redis_config(&get, url))
            .transpose()?;
        if lambda && needs.redis && redis_url.is_none() {
            return Err(ConfigError::Missing {
                var: "REDIS_URL",
                hint: "a redis:// or rediss:// URL",
            });
        }

        let jwt_secret = match get("JWT_SECRET") {
            Some(secret) if secret.chars().count() >= MIN_JWT_SECRET_CHARS => {
                JwtSecret::Configured(Secret::new(secret))
            }
            Some(secret) => {
                return Err(ConfigError::Invalid {
                    var: "JWT_SECRET",
                    reason: format!(
                        "must be at least {MIN_JWT_SECRET_CHARS} characters (got {})",
                        secret.chars().count()
                    ),
                });
            }
            None if lambda && needs.jwt => {
                return Err(ConfigError::Missing {
                    var: "JWT_SECRET",
                    hint: "at least 32 random characters, e.g. from `openssl rand -base64 48`",
                });
            }
            None => JwtSecret::Ephemeral,
        };

        let jwt_ttl = match get("JWT_TTL") {
            Some(raw) => parse_duration(&raw).map_err(|reason| ConfigError::Invalid {
                var: "JWT_TTL",
                reason,
            })?,
            None => Duration::from_secs(12 * 3600),
        };

        let cors_origins = match get("CORS_ORIGINS") {
            None => CorsOrigins::Any,
            Some(raw) if raw == "*" => CorsOrigins::Any,
            Some(raw) => {
                let origins: Vec<String> = raw
                    .split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect();
                if let Some(bad) = origins
                    .iter()
                    .find(|o| !(o.starts_with("http://") || o.starts_with("https://")))
                {
                    return Err(ConfigError::Invalid {
                        var: "CORS_ORIGINS",
                        reason: format!(
                            "`{bad}` is not an origin; give `*` or a comma-separated list like https://app.example.com"
                        ),
                    });
                }
                CorsOrigins::List(origins)
            }
        };

        let log_format = match get("LOG_FORMAT").as_deref() {
            None if lambda => LogFormat::Json,
            None => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    var: "LOG_FORMAT",
                    reason: format!("`{other}` is neither json nor pretty"),
                });
            }
        };
        let log_level = get("LOG_LEVEL").unwrap_or_else(|| "info".to_owned());
        if crate::telemetry::parse_filter(&log_level).is_none() {
            return Err(ConfigError::Invalid {
                var: "LOG_LEVEL",
                reason: format!(
                    "`{log_level}` is not a level or list of target=level (try info, or info,seance=debug)"
                ),
            });
        }

        let public_ws_url = get("PUBLIC_WS_URL");
        if let Some(url) = &public_ws_url
            && !(url.starts_with("ws://") || url.starts_with("wss://"))
        {
            return Err(ConfigError::Invalid {
                var: "PUBLIC_WS_URL",
                reason: "must start with ws:// or wss://".into(),
            });
        }
        if lambda && public_ws_url.is_none() {
            return Err(ConfigError::Missing {
                var: "PUBLIC_WS_URL",
                hint: "the wss:// URL of the WebSocket API stage",
            });
        }

        let apigw_management_endpoint = get("APIGW_MANAGEMENT_ENDPOINT")
            .or_else(|| get("AWS_ENDPOINT_URL_APIGATEWAYMANAGEMENTAPI"))
            .map(|url| url.trim_end_matches('/').to_owned());
        if let Some(url) = &apigw_management_endpoint
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            return Err(ConfigError::Invalid {
                var: "APIGW_MANAGEMENT_ENDPOINT",
                reason: "must start with https:// (or http:// for a local endpoint)".into(),
            });
        }
        let aws_tls_roots = match get("AWS_TLS_ROOTS") {
            None => AwsTlsRoots::default(),
            Some(raw) => raw.parse().map_err(|reason| ConfigError::Invalid {
                var: "AWS_TLS_ROOTS",
                reason,
            })?,
        };
        let duration = |var: &'static str, default: Duration| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(default),
                Some(raw) => {
                    parse_duration(&raw).map_err(|reason| ConfigError::Invalid { var, reason })
                }
            }
        };

        let spirit = spirit_config(&get, &duration, !lambda || needs.model)?;
        if lambda && needs.queue && spirit.queue_url.is_none() {
            return Err(ConfigError::Missing {
                var: "SPIRIT_QUEUE_URL",
                hint: "the URL of the spirit's SQS FIFO queue (the template sets it)",
            });
        }

        let voice = voice_config(&get, lambda)?;

        let max_participants_cap = parse_num(&get, "MAX_PARTICIPANTS_CAP", 12u8, 2, 12)?;
        let default_max_participants = parse_num(
            &get,
            "DEFAULT_MAX_PARTICIPANTS",
            8u8.min(max_participants_cap),
            2,
            max_participants_cap,
        )?;

        Ok(Self {
            profile,
            database_url: Secret::new(database_url),
            database_max_connections: parse_num(
                &get,
                "DATABASE_MAX_CONNECTIONS",
                if lambda { 2 } else { 5 },
                1,
                100,
            )?,
            database_host: get("DATABASE_HOST"),
            database_prepared_statements: match get("DATABASE_PREPARED_STATEMENTS").as_deref() {
                None | Some("true" | "1" | "yes") => true,
                Some("false" | "0" | "no") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "DATABASE_PREPARED_STATEMENTS",
                        reason: format!("`{other}` is neither true nor false"),
                    });
                }
            },
            redis,
            redis_key_prefix: get("REDIS_KEY_PREFIX").unwrap_or_else(|| "seance:".to_owned()),
            jwt_secret,
            jwt_ttl,
            cors_origins,
            log_level,
            log_format,
            public_ws_url,
            max_body_bytes: parse_num(&get, "MAX_BODY_BYTES", 16 * 1024, 256, 1024 * 1024)?,
            default_max_participants,
            max_participants_cap,
            default_page_size: parse_num(&get, "DEFAULT_PAGE_SIZE", 50, 1, 100)?,
            port: parse_num(&get, "PORT", 3000, 0, u16::MAX)?,
            apigw_management_endpoint,
            aws_region: get("AWS_REGION").unwrap_or_else(|| "us-east-1".to_owned()),
            aws_tls_roots,
            max_content_chars: parse_num(&get, "MAX_CONTENT_CHARS", 500, 1, 10_000)?,
            max_frame_bytes: parse_num(&get, "MAX_FRAME_BYTES", 32 * 1024, 1024, 128 * 1024)?,
            message_burst: parse_num(&get, "MESSAGE_RATE_BURST", 3, 1, 1000)?,
            rest_burst: parse_num(&get, "REST_RATE_BURST", 30, 1, 1_000_000)?,
            trust_forwarded_for: match get("TRUST_FORWARDED_FOR").as_deref() {
                None | Some("false" | "0" | "no") => false,
                Some("true" | "1" | "yes") => true,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        var: "TRUST_FORWARDED_FOR",
                        reason: format!("`{other}` is neither true nor false"),
                    });
                }
            },
            rest_interval: duration("REST_RATE_INTERVAL", Duration::from_secs(2))?,
            message_interval: duration("MESSAGE_RATE_INTERVAL", Duration::from_secs(3))?,
            typing_interval: duration("TYPING_INTERVAL", Duration::from_secs(1))?,
            frame_burst: parse_num(&get, "FRAME_RATE_BURST", 60, 1, 1_000_000)?,
            frame_interval: Duration::from_secs(1)
                / parse_num(&get, "FRAME_RATE_PER_SECOND", 10u32, 1, 10_000)?,
            connection_ttl: duration("CONNECTION_TTL", crate::connections::DEFAULT_CONNECTION_TTL)?,
            ws_idle_timeout: duration("WS_IDLE_TIMEOUT", Duration::from_secs(600))?,
            ws_max_lifetime: duration("WS_MAX_LIFETIME", Duration::from_secs(7200))?,
            ws_integration_timeout: duration("WS_INTEGRATION_TIMEOUT", Duration::from_secs(29))?,
            spirit,
            voice,
            voice_cache_bytes: parse_num(
                &get,
                "VOICE_CACHE_BYTES",
                8 * 1024 * 1024,
                0,
                1024 * 1024 * 1024,
            )?,
            voice_cache_ttl: duration("VOICE_CACHE_TTL", Duration::from_secs(86_400))?,
        })
    }

    /// The harness's embedded defaults, as if no variable were set.
    pub fn harness_defaults() -> Self {
        // No variable set cannot fail validation.
        Self::from_vars(Profile::Harness, &HashMap::new()).unwrap_or_else(|err| {
            unreachable!("embedded defaults are valid: {err}");
        })
    }

    pub fn uses_sqlite(&self) -> bool {
        self.database_url.expose().starts_with("sqlite:")
    }
}

fn voice_config(
    get: &impl Fn(&str) -> Option<String>,
    lambda: bool,
) -> Result<VoiceConfig, ConfigError> {
    let key = get("ELEVENLABS_API_KEY");
    let choice = match get("VOICE_PROVIDER").as_deref() {
        Some(p @ ("elevenlabs" | "offline" | "none")) => p.to_owned(),
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "VOICE_PROVIDER",
                reason: format!("`{other}` is not elevenlabs, offline or none"),
            });
        }
        None if key.is_some() => "elevenlabs".into(),
        // Text only in Lambda unless asked; the harness hums.
        None if lambda => "none".into(),
        None => "offline".into(),
    };
    Ok(match choice.as_str() {
        "elevenlabs" => {
            let base_url =
                get("ELEVENLABS_BASE_URL").unwrap_or_else(|| "https://api.elevenlabs.io".into());
            if !(base_url.starts_with("https://") || base_url.starts_with("http://")) {
                return Err(ConfigError::Invalid {
                    var: "ELEVENLABS_BASE_URL",
                    reason: "must start with http:// or https://".into(),
                });
            }
            VoiceConfig::ElevenLabs {
                api_key: Secret::new(key.ok_or(ConfigError::Missing {
                    var: "ELEVENLABS_API_KEY",
                    hint: "an ElevenLabs API key, or VOICE_PROVIDER=offline or none",
                })?),
                base_url: base_url.trim_end_matches('/').to_owned(),
                model: get("ELEVENLABS_MODEL").unwrap_or_else(|| "eleven_flash_v2_5".into()),
                output_format: get("ELEVENLABS_OUTPUT_FORMAT")
                    .unwrap_or_else(|| "mp3_44100_128".into()),
            }
        }
        "offline" => VoiceConfig::Offline,
        _ => VoiceConfig::None,
    })
}

fn spirit_config(
    get: &impl Fn(&str) -> Option<String>,
    duration: &impl Fn(&'static str, Duration) -> Result<Duration, ConfigError>,
    calls_the_model: bool,
) -> Result<SpiritConfig, ConfigError> {
    let google_key = get("GOOGLE_API_KEY");
    let openai_base = get("OPENAI_BASE_URL");
    let choice = match get("SPIRIT_PROVIDER").as_deref() {
        Some(p @ ("gemini" | "openai" | "oracle")) => p.to_owned(),
        Some(other) => {
            return Err(ConfigError::Invalid {
                var: "SPIRIT_PROVIDER",
                reason: format!("`{other}` is not gemini, openai or oracle"),
            });
        }
        // No choice made: the first that is configured, else the offline oracle.
        None if google_key.is_some() => "gemini".into(),
        None if openai_base.is_some() => "openai".into(),
        None => "oracle".into(),
    };
    let url = |var: &'static str, value: String| -> Result<String, ConfigError> {
        if value.starts_with("http://") || value.starts_with("https://") {
            Ok(value.trim_end_matches('/').to_owned())
        } else {
            Err(ConfigError::Invalid {
                var,
                reason: "must start with http:// or https://".into(),
            })
        }
    };
    let provider = match choice.as_str() {
        "gemini" => SpiritProviderConfig::Gemini {
            // A function that never calls the model only names it (in /health).
            api_key: Secret::new(match google_key {
                Some(key) => key,
                None if !calls_the_model => "not-given-to-this-function".to_owned(),
                None => {
                    return Err(ConfigError::Missing {
                        var: "GOOGLE_API_KEY",
                        hint: "a Gemini API key, or SPIRIT_PROVIDER=oracle for the offline spirit",
                    });
                }
            }),
            model: get("GEMINI_MODEL").unwrap_or_else(|| "gemini-flash-latest".into()),
            base_url: url(
                "GEMINI_BASE_URL",
                get("GEMINI_BASE_URL")
                    .unwrap_or_else(|| "https://generativelanguage.googleapis.com".into()),
            )?,
        },
        "openai" => SpiritProviderConfig::OpenAi {
            api_key: get("OPENAI_API_KEY").map(Secret::new),
            model: get("OPENAI_MODEL").ok_or(ConfigError::Missing {
                var: "OPENAI_MODEL",
                hint: "the model name the OpenAI-compatible server serves, e.g. llama3.2",
            })?,
            base_url: url(
                "OPENAI_BASE_URL",
                openai_base.ok_or(ConfigError::Missing {
                    var: "OPENAI_BASE_URL",
                    hint: "e.g. http://127.0.0.1:11434/v1 for Ollama",
                })?,
            )?,
        },
        _ => SpiritProviderConfig::Oracle {
            seed: parse_num(get, "ORACLE_SEED", 1891, 0, u64::MAX)?,
        },
    };
    let http_url = |var: &'static str| -> Result<Option<String>, ConfigError> {
        match get(var) {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok(Some(url)),
            Some(_) => Err(ConfigError::Invalid {
                var,
                reason: "must start with https:// (or http:// for a local server)".into(),
            }),
            None => Ok(None),
        }
    };
    let queue_url = http_url("SPIRIT_QUEUE_URL")?;
    if let Some(url) = &queue_url
        && !url.ends_with(".fifo")
    {
        return Err(ConfigError::Invalid {
            var: "SPIRIT_QUEUE_URL",
            reason: "must be a FIFO queue (its name ends in .fifo)".into(),
        });
    }
    let function_timeout = duration("SPIRIT_FUNCTION_TIMEOUT", Duration::from_secs(90))?;
    let steering_dir = get("SPIRIT_STEERING_DIR").map(std::path::PathBuf::from);
    if let Some(dir) = &steering_dir
        && !dir.is_dir()
    {
        return Err(ConfigError::Invalid {
            var: "SPIRIT_STEERING_DIR",
            reason: format!("{} is not a folder", dir.display()),
        });
    }
    Ok(SpiritConfig {
        provider,
        steering_dir,
        deadline: duration("SPIRIT_DEADLINE", Duration::from_secs(20))?,
        history: parse_num(get, "SPIRIT_HISTORY", 12, 0, 100)?,
        max_output_tokens: parse_num(get, "SPIRIT_MAX_OUTPUT_TOKENS", 256, 16, 8192)?,
        queue_capacity: parse_num(get, "SPIRIT_QUEUE_CAPACITY", 3, 1, 100)?,
        session_questions_per_hour: parse_num(
            get,
            "SPIRIT_SESSION_QUESTIONS_PER_HOUR",
            60,
            1,
            100_000,
        )?,
        oracle_word_delay: match get("ORACLE_WORD_DELAY") {
            Some(raw) => {
                Duration::from_millis(parse_num(get, "ORACLE_WORD_DELAY", 120, 0, 10_000).map_err(
                    |_| ConfigError::Invalid {
                        var: "ORACLE_WORD_DELAY",
                        reason: format!("`{raw}` is not milliseconds from 0 to 10000"),
                    },
                )?)
            }
            None => Duration::from_millis(120),
        },
        planchette_symbol_ms: parse_num(get, "PLANCHETTE_SYMBOL_MS", 350, 1, 10_000)?,
        planchette_gap_ms: parse_num(get, "PLANCHETTE_GAP_MS", 600, 0, 10_000)?,
        queue_url,
        sqs_endpoint: http_url("AWS_ENDPOINT_URL_SQS")?,
        function_timeout,
        visibility_timeout: duration("SPIRIT_VISIBILITY_TIMEOUT", function_timeout * 6)?,
    })
}

fn parse_num<T>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
{
    let Some(raw) = get(var) else {
        return Ok(default);
    };
    match raw.parse::<T>() {
        Ok(value) if value >= min && value <= max => Ok(value),
        _ => Err(ConfigError::Invalid {
            var,
            reason: format!("`{raw}` is not a whole number from {min} to {max}"),
        }),
    }
}

/// `3600`, `3600s`, `90m`, `12h` or `7d`.
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (digits, unit) = match raw.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => raw.split_at(i),
        None => (raw, "s"),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration like 3600, 90m, 12h or 7d"))?;
    let secs = match unit {
        "s" => value,
        "m" => value.saturating_mul(60),
        "h" => value.saturating_mul(3600),
        "d" => value.saturating_mul(86_400),
        _ => return Err(format!("`{raw}` has an unknown unit; use s, m, h or d")),
    };
    if secs == 0 {
        return Err("must be longer than zero".into());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn lambda_vars() -> Vec<(&'static str, &'static str)> {
        vec![
            ("DATABASE_URL", "postgres://u@db/seance"),
            ("REDIS_URL", "redis://cache:6379"),
            ("JWT_SECRET", GOOD_SECRET),
            (
                "PUBLIC_WS_URL",
                "wss://abc.execute-api.eu-west-1.amazonaws.com/prod",
            ),
            (
                "SPIRIT_QUEUE_URL",
                "https://sqs.eu-west-1.amazonaws.com/123456789012/seance-spirit.fifo",
            ),
        ]
    }

    #[test]
    fn harness_defaults_are_embedded() {
        let config = Config::harness_defaults();
        assert_eq!(config.database_url.expose(), DEFAULT_SQLITE_URL);
        assert_eq!(config.jwt_secret, JwtSecret::Ephemeral);
        assert!(config.redis.is_none());
        assert_eq!(config.port, 3000);
        assert_eq!(config.jwt_ttl, Duration::from_secs(43_200));
        assert_eq!(config.log_format, LogFormat::Pretty);
    }

    #[test]
    fn lambda_requires_a_long_secret() {
        let mut pairs = lambda_vars();
        assert!(Config::from_vars(Profile::Lambda, &vars(&pairs)).is_ok());
        pairs[2] = ("JWT_SECRET", "short");
        let err = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration error: JWT_SECRET is invalid: must be at least 32 characters (got 5)"
        );
        pairs.remove(2);
        let err = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "JWT_SECRET",
                ..
            }
        ));
    }

    #[test]
    fn errors_never_echo_the_secret() {
        let mut pairs = lambda_vars();
        pairs[2] = ("JWT_SECRET", "hunter2-is-my-password");
        let err = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let config = Config::from_vars(Profile::Lambda, &vars(&lambda_vars())).unwrap();
        assert!(!format!("{config:?}").contains(GOOD_SECRET));
    }

    #[test]
    fn lambda_needs_every_service() {
        for missing in [
            "DATABASE_URL",
            "REDIS_URL",
            "PUBLIC_WS_URL",
            "SPIRIT_QUEUE_URL",
        ] {
            let pairs: Vec<_> = lambda_vars()
                .into_iter()
                .filter(|(k, _)| *k != missing)
                .collect();
            let err = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap_err();
            assert!(err.to_string().contains(missing), "{err}");
        }
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, value) in [
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "http://x"),
            ("JWT_TTL", "forever"),
            ("LOG_FORMAT", "xml"),
            ("CORS_ORIGINS", "example.com"),
            ("PORT", "99999"),
            ("PUBLIC_WS_URL", "http://x"),
            ("MAX_BODY_BYTES", "-1"),
            ("AWS_TLS_ROOTS", "mozilla"),
        ] {
            let err = Config::from_vars(Profile::Harness, &vars(&[(var, value)])).unwrap_err();
            assert!(err.to_string().contains(var), "{var}: {err}");
        }
    }

    #[test]
    fn the_aws_clients_trust_amazon_s_roots_unless_told_otherwise() {
        let harness = |pairs: &[(&str, &str)]| Config::from_vars(Profile::Harness, &vars(pairs));
        assert_eq!(harness(&[]).unwrap().aws_tls_roots, AwsTlsRoots::Amazon);
        let lambda = Config::from_vars(Profile::Lambda, &vars(&lambda_vars())).unwrap();
        assert_eq!(lambda.aws_tls_roots, AwsTlsRoots::Amazon);
        assert_eq!(
            harness(&[("AWS_TLS_ROOTS", "system")])
                .unwrap()
                .aws_tls_roots,
            AwsTlsRoots::System
        );
    }

    #[test]
    fn redis_urls_that_cannot_work_are_refused_clearly() {
        let harness = |pairs: &[(&str, &str)]| Config::from_vars(Profile::Harness, &vars(pairs));
        let ok = harness(&[
            ("REDIS_URL", "rediss://cache.example:6379"),
            ("REDIS_CLUSTER", "true"),
        ])
        .unwrap();
        let redis = ok.redis.unwrap();
        assert!(redis.cluster);
        assert!(
            !format!("{redis:?}").contains("cache.example"),
            "the URL may hold a password"
        );
        for (pairs, var) in [
            (vec![("REDIS_URL", "http://cache:6379")], "REDIS_URL"),
            (
                vec![
                    ("REDIS_URL", "redis://cache:6379/2"),
                    ("REDIS_CLUSTER", "true"),
                ],
                "REDIS_URL",
            ),
            (vec![("REDIS_URL", "redis://cache:6379/two")], "REDIS_URL"),
            (
                vec![
                    ("REDIS_URL", "redis://cache:6379"),
                    ("REDIS_CLUSTER", "maybe"),
                ],
                "REDIS_CLUSTER",
            ),
            (
                vec![
                    ("REDIS_URL", "redis://cache:6379"),
                    ("REDIS_CA_FILE", "/etc/ca.pem"),
                ],
                "REDIS_CA_FILE",
            ),
            (
                vec![
                    ("REDIS_URL", "rediss://cache:6379"),
                    ("REDIS_CA_FILE", "/nowhere/ca.pem"),
                ],
                "REDIS_CA_FILE",
            ),
        ] {
            let err = harness(&pairs).unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { var: v, .. } if *v == var),
                "{pairs:?}: {err}"
            );
        }
    }

    #[test]
    fn the_voice_is_offline_in_the_harness_and_off_in_lambda() {
        assert_eq!(Config::harness_defaults().voice, VoiceConfig::Offline);
        let lambda = Config::from_vars(Profile::Lambda, &vars(&lambda_vars())).unwrap();
        assert_eq!(lambda.voice, VoiceConfig::None);
        let mut pairs = lambda_vars();
        pairs.push(("ELEVENLABS_API_KEY", "xi-secret-key"));
        let config = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap();
        assert!(matches!(
            &config.voice,
            VoiceConfig::ElevenLabs { model, output_format, .. }
                if model == "eleven_flash_v2_5" && output_format == "mp3_44100_128"
        ));
        assert!(!format!("{config:?}").contains("xi-secret-key"));
        let err = Config::from_vars(Profile::Harness, &vars(&[("VOICE_PROVIDER", "elevenlabs")]))
            .unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Missing {
                var: "ELEVENLABS_API_KEY",
                ..
            }
        ));
        let err =
            Config::from_vars(Profile::Harness, &vars(&[("VOICE_PROVIDER", "loud")])).unwrap_err();
        assert!(matches!(
            err,
            ConfigError::Invalid {
                var: "VOICE_PROVIDER",
                ..
            }
        ));
    }

    #[test]
    fn each_function_requires_only_what_it_uses() {
        let only = |names: &[&str]| -> HashMap<String, String> {
            lambda_vars()
                .into_iter()
                .filter(|(k, _)| names.contains(k) || *k == "PUBLIC_WS_URL")
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        };
        let disconnect =
            Config::from_vars_for(Profile::Lambda, Needs::WS_DISCONNECT, &only(&["REDIS_URL"]))
                .unwrap();
        assert_eq!(disconnect.jwt_secret, JwtSecret::Ephemeral);
        let migrate =
            Config::from_vars_for(Profile::Lambda, Needs::MIGRATE, &only(&["DATABASE_URL"]))
                .unwrap();
        assert!(migrate.redis.is_none());
        let mut gemini = only(&["DATABASE_URL", "REDIS_URL", "JWT_SECRET"]);
        gemini.insert("SPIRIT_PROVIDER".into(), "gemini".into());
        let api = Config::from_vars_for(Profile::Lambda, Needs::SESSIONS_API, &gemini).unwrap();
        assert!(matches!(
            api.spirit.provider,
            SpiritProviderConfig::Gemini { .. }
        ));
        // The spirit calls the model: without its key it does not start.
        let err = Config::from_vars_for(Profile::Lambda, Needs::SPIRIT, &gemini).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    var: "GOOGLE_API_KEY",
                    ..
                }
            ),
            "{err}"
        );
        // ws-message sends to the queue, so it needs its URL; ws-connect does not.
        let connect_vars = only(&["DATABASE_URL", "REDIS_URL", "JWT_SECRET"]);
        assert!(Config::from_vars_for(Profile::Lambda, Needs::WS_CONNECT, &connect_vars).is_ok());
        let err =
            Config::from_vars_for(Profile::Lambda, Needs::WS_MESSAGE, &connect_vars).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    var: "SPIRIT_QUEUE_URL",
                    ..
                }
            ),
            "{err}"
        );
        let err = Config::from_vars_for(Profile::Lambda, Needs::WS_CONNECT, &only(&["REDIS_URL"]))
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Missing {
                    var: "DATABASE_URL",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_spirit_queue_must_be_fifo() {
        let mut pairs = lambda_vars();
        pairs[4] = (
            "SPIRIT_QUEUE_URL",
            "https://sqs.eu-west-1.amazonaws.com/123456789012/seance-spirit",
        );
        let err = Config::from_vars(Profile::Lambda, &vars(&pairs)).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    var: "SPIRIT_QUEUE_URL",
                    ..
                }
            ),
            "{err}"
        );
        let config = Config::from_vars(Profile::Lambda, &vars(&lambda_vars())).unwrap();
        assert_eq!(
            config.spirit.visibility_timeout,
            config.spirit.function_timeout * 6
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("12y").is_err());
    }

    #[test]
    fn cors_list_is_parsed() {
        let config = Config::from_vars(
            Profile::Harness,
            &vars(&[("CORS_ORIGINS", "https://a.example, http://localhost:5173/")]),
        )
        .unwrap();
        assert_eq!(
            config.cors_origins,
            CorsOrigins::List(vec![
                "https://a.example".into(),
                "http://localhost:5173".into()
            ])
        );
    }
}
