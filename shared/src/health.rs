//! What `/health` checks: the database with one query, and Redis with a PING when the
//! deployment has one (the harness without `REDIS_URL` runs its stores in-process).

use std::time::Duration;

use tokio::sync::OnceCell;

use crate::config::Secret;

/// A Redis client that connects on first use, so cold starts make no network call, and
/// then keeps one multiplexed, self-reconnecting connection for the process.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: std::sync::Arc<OnceCell<redis::aio::ConnectionManager>>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redis { .. }")
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

impl Redis {
    pub fn new(url: &Secret) -> Result<Self, RedisUnavailable> {
        let client = redis::Client::open(url.expose())
            .map_err(|_| RedisUnavailable("REDIS_URL is not a valid redis URL".into()))?;
        Ok(Self {
            client,
            connection: std::sync::Arc::new(OnceCell::new()),
        })
    }

    pub async fn connection(&self) -> Result<redis::aio::ConnectionManager, RedisUnavailable> {
        self.connection
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_number_of_retries(1);
                redis::aio::ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(|err| RedisUnavailable(err.to_string()))
            })
            .await
            .cloned()
    }

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
