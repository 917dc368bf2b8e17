//! The shared Redis client: a single node or a cluster, plain or TLS, from `REDIS_URL`
//! (`redis://` or `rediss://`) and `REDIS_CLUSTER`. It connects on first use, so cold
//! starts make no network call, and then keeps one multiplexed, self-reconnecting
//! connection for the process. ElastiCache Serverless is TLS-only and cluster-only: every
//! command and script here touches one key (or keys of one hash slot).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use tokio::sync::OnceCell;

use crate::config::RedisConfig;

#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

// One per process: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// One connection of either kind; every command goes through it.
#[derive(Clone)]
pub enum RedisConnection {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

#[derive(Clone)]
pub struct Redis {
    target: Target,
    connection: Arc<OnceCell<RedisConnection>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis { .. }")
    }
}

impl Redis {
    /// Builds the client; no network I/O. The URL and the CA were validated with the
    /// configuration.
    pub fn new(config: &RedisConfig) -> Result<Self, RedisUnavailable> {
        crate::tls::install_crypto_provider();
        let url = config.url.expose();
        let certs = || redis::TlsCertificates {
            client_tls: None,
            root_cert: config.ca_pem.clone(),
        };
        let target = if config.cluster {
            let mut builder = redis::cluster::ClusterClientBuilder::new(vec![url])
                .connection_timeout(REDIS_TIMEOUT)
                .response_timeout(REDIS_TIMEOUT);
            if config.ca_pem.is_some() {
                builder = builder.certs(certs());
            }
            Target::Cluster(builder.build().map_err(|_| {
                RedisUnavailable("REDIS_URL is not a valid redis URL for a cluster".into())
            })?)
        } else {
            let client = match &config.ca_pem {
                Some(_) => redis::Client::build_with_tls(url, certs()),
                None => redis::Client::open(url),
            };
            Target::Single(
                client
                    .map_err(|_| RedisUnavailable("REDIS_URL is not a valid redis URL".into()))?,
            )
        };
        Ok(Self {
            target,
            connection: Arc::new(OnceCell::new()),
        })
    }

    pub async fn connection(&self) -> Result<RedisConnection, RedisUnavailable> {
        self.connection
            .get_or_try_init(|| async {
                match &self.target {
                    Target::Single(client) => {
                        let config = redis::aio::ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(REDIS_TIMEOUT))
                            .set_response_timeout(Some(REDIS_TIMEOUT))
                            .set_number_of_retries(1);
                        redis::aio::ConnectionManager::new_with_config(client.clone(), config)
                            .await
                            .map(RedisConnection::Single)
                    }
                    Target::Cluster(client) => client
                        .get_async_connection()
                        .await
                        .map(RedisConnection::Cluster),
                }
                .map_err(|err| RedisUnavailable(err.to_string()))
            })
            .await
            .cloned()
    }

    /// One round trip, for `/health`.
    pub async fn ping(&self) -> Result<(), RedisUnavailable> {
        let mut conn = self.connection().await?;
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(REDIS_TIMEOUT, ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(RedisUnavailable(err.to_string())),
            Err(_) => Err(RedisUnavailable("PING timed out".into())),
        }
    }
}
