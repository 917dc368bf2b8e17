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

/// Past this many buckets, the full ones are forgotten (a full bucket and no bucket
/// allow the same).
const IN_PROCESS_BUCKETS: usize = 10_000;

impl InProcessRateLimiter {
    /// [`RateLimiter::acquire`] at `now`, in ms on this limiter's clock.
    fn acquire_at(&self, key: &str, limit: RateLimit, now: u128) -> Decision {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tats.len() > IN_PROCESS_BUCKETS {
            tats.retain(|_, tat| *tat > now);
        }
        match gcra(tats.get(key).copied(), now, limit) {
            Ok(new_tat) => {
                tats.insert(key.to_owned(), new_tat);
                Decision::Allowed
            }
            Err(wait) => Decision::RetryAfter(duration_ms(wait)),
        }
    }
}

#[async_trait]
impl RateLimiter for InProcessRateLimiter {
    async fn acquire(&self, key: &str, limit: RateLimit) -> Result<Decision, RateLimitError> {
        Ok(self.acquire_at(key, limit, self.start.elapsed().as_millis()))
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

    #[test]
    fn full_buckets_are_forgotten_once_there_are_too_many() {
        let limiter = InProcessRateLimiter::default();
        let now = 60_000;
        {
            let mut tats = limiter.tats.lock().unwrap_or_else(|e| e.into_inner());
            for i in 0..IN_PROCESS_BUCKETS {
                // Half have refilled by `now` (one exactly at it), half have not.
                let tat = if i % 2 == 0 {
                    now - (i as u128 % 7)
                } else {
                    now + 1
                };
                tats.insert(format!("k{i}"), tat);
            }
        }
        let count = |l: &InProcessRateLimiter| l.tats.lock().map(|t| t.len()).unwrap_or(0);
        // At the limit nothing is forgotten; one more bucket is made.
        assert_eq!(
            limiter.acquire_at("new", THREE_PER_NINE, now),
            Decision::Allowed
        );
        assert_eq!(count(&limiter), IN_PROCESS_BUCKETS + 1);
        // Past it, the full buckets go and the others stay, with what they hold.
        assert_eq!(
            limiter.acquire_at("k1", THREE_PER_NINE, now),
            Decision::Allowed
        );
        assert_eq!(count(&limiter), IN_PROCESS_BUCKETS / 2 + 1);
        let tats = limiter.tats.lock().unwrap_or_else(|e| e.into_inner());
        assert_eq!(tats.get("k1"), Some(&(now + 1 + 3000)));
        assert!(
            !tats.contains_key("k0"),
            "a bucket full exactly now is forgotten"
        );
    }

    #[test]
    fn the_limits_are_the_configured_ones() {
        let vars: std::collections::HashMap<String, String> = [
            ("MESSAGE_RATE_BURST", "4"),
            ("MESSAGE_RATE_INTERVAL", "5"),
            ("REST_RATE_BURST", "6"),
            ("REST_RATE_INTERVAL", "7"),
            ("FRAME_RATE_BURST", "8"),
            ("FRAME_RATE_PER_SECOND", "4"),
            ("TYPING_INTERVAL", "2"),
            ("SPIRIT_SESSION_QUESTIONS_PER_HOUR", "90"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config = Config::from_vars(crate::config::Profile::Harness, &vars)
            .unwrap_or_else(|e| panic!("{e}"));
        let limit = |secs: f64, burst| RateLimit {
            interval: Duration::from_secs_f64(secs),
            burst,
        };
        assert_eq!(RateLimit::questions(&config), limit(5.0, 4));
        assert_eq!(RateLimit::rest_writes(&config), limit(7.0, 6));
        assert_eq!(RateLimit::frames(&config), limit(0.25, 8));
        assert_eq!(RateLimit::typing(&config), limit(2.0, 1));
        assert_eq!(RateLimit::session_questions(&config), limit(40.0, 90));
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
