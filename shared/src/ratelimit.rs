//! Rate limits as a generic cell rate algorithm (a token bucket stored as one timestamp):
//! `burst` actions at once, then one per `interval`. Redis in production, so every Lambda
//! instance counts together; in-process in the harness.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::config::Config;
use crate::redis_client::Redis;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub interval: Duration,
    pub burst: u32,
}

/// The limits the configuration sets, built here so configuration knows nothing of rate
/// limiting.
impl RateLimit {
    /// Questions per participant: a burst, then one per interval.
    pub fn questions(config: &Config) -> Self {
        Self {
            interval: config.message_interval,
            burst: config.message_burst,
        }
    }

    /// The per-session hourly question cap as a bucket: the whole hour's questions may
    /// come at once, then they refill evenly.
    pub fn session_questions(config: &Config) -> Self {
        let per_hour = config.spirit.session_questions_per_hour.max(1);
        Self {
            interval: Duration::from_secs(3600) / per_hour,
            burst: per_hour,
        }
    }

    /// Session creations and joins per client.
    pub fn rest_writes(config: &Config) -> Self {
        Self {
            interval: config.rest_interval,
            burst: config.rest_burst,
        }
    }

    /// Every frame of one connection.
    pub fn frames(config: &Config) -> Self {
        Self {
            interval: config.frame_interval,
            burst: config.frame_burst,
        }
    }

    /// `typing` passed on per participant.
    pub fn typing(config: &Config) -> Self {
        Self {
            interval: config.typing_interval,
            burst: 1,
        }
    }
}

/// Allowed, or refused with how long to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    RetryAfter(Duration),
}

#[derive(Debug, thiserror::Error)]
#[error("rate limiter unavailable: {0}")]
pub struct RateLimitError(pub String);

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one action from `key`'s bucket if it can.
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<Decision, RateLimitError>;
}

/// The algorithm on plain numbers (ms): returns the new "theoretical arrival time" to
/// store, or how long to wait.
fn gcra(tat: Option<u128>, now: u128, limit: RateLimit) -> Result<u128, u128> {
    let interval = limit.interval.as_millis();
    let tolerance = interval * u128::from(limit.burst.max(1));
    let new_tat = tat.unwrap_or(now).max(now) + interval;
    if new_tat - now > tolerance {
        Err(new_tat - now - tolerance)
    } else {
        Ok(new_tat)
    }
}

#[derive(Debug)]
pub struct InProcessRateLimiter {
    start: Instant,
    tats: Mutex<HashMap<String, u128>>,
}

impl Default for InProcessRateLimiter {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            tats: Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<Decision, RateLimitError> {
        let now = self.start.elapsed().as_millis();
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Forget buckets that have fully refilled, so the map stays small.
        if tats.len() > 10_000 {
            tats.retain(|_, tat| *tat > now);
        }
        match gcra(tats.get(key).copied(), now, limit) {
            Ok(new_tat) => {
                tats.insert(key.to_owned(), new_tat);
                Ok(Decision::Allowed)
            }
            Err(wait) => Ok(Decision::RetryAfter(duration_ms(wait))),
        }
    }
}

fn duration_ms(ms: u128) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The same algorithm in Lua, on Redis's clock so instances with skewed clocks agree.
/// KEYS[1] bucket. ARGV: interval ms, burst. Returns 0 (allowed) or the wait in ms.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local tolerance = interval * burst
if new_tat - now > tolerance then
  return new_tat - now - tolerance
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return 0
";

#[derive(Clone)]
pub struct RedisRateLimiter {
    redis: Redis,
    prefix: String,
}

impl RedisRateLimiter {
    pub fn new(redis: Redis, prefix: &str) -> Self {
        Self {
            redis,
            prefix: format!("{prefix}rate:"),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<Decision, RateLimitError> {
        let mut conn = self
            .redis
            .connection()
            .await
            .map_err(|e| RateLimitError(e.to_string()))?;
        let wait: i64 = redis::Script::new(GCRA_SCRIPT)
            .key(format!("{}{key}", self.prefix))
            .arg(u64::try_from(limit.interval.as_millis()).unwrap_or(u64::MAX))
            .arg(limit.burst.max(1))
            .invoke_async(&mut conn)
            .await
            .map_err(|e| RateLimitError(e.to_string()))?;
        Ok(if wait <= 0 {
            Decision::Allowed
        } else {
            Decision::RetryAfter(duration_ms(u128::try_from(wait).unwrap_or(0)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE_PER_NINE: RateLimit = RateLimit {
        interval: Duration::from_secs(3),
        burst: 3,
    };

    #[test]
    fn burst_then_one_per_interval() {
        let mut tat = None;
        for _ in 0..3 {
            tat = Some(gcra(tat, 0, THREE_PER_NINE).unwrap());
        }
        assert_eq!(gcra(tat, 0, THREE_PER_NINE), Err(3000));
        assert_eq!(gcra(tat, 1000, THREE_PER_NINE), Err(2000));
        assert!(gcra(tat, 3000, THREE_PER_NINE).is_ok());
    }

    #[tokio::test]
    async fn in_process_limiter_counts_per_key() {
        let limiter = InProcessRateLimiter::default();
        for _ in 0..3 {
            assert_eq!(
                limiter.acquire("a", THREE_PER_NINE).await.unwrap(),
                Decision::Allowed
            );
        }
        assert!(matches!(
            limiter.acquire("a", THREE_PER_NINE).await.unwrap(),
            Decision::RetryAfter(wait) if wait > Duration::from_millis(2900)
        ));
        assert_eq!(
            limiter.acquire("b", THREE_PER_NINE).await.unwrap(),
            Decision::Allowed
        );
    }
}
