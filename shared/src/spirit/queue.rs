//! One answerer per session, first in first out, across every Lambda instance and harness
//! task. A question first reserves a place (a full queue is `spirit_busy` before anything
//! is stored), then joins the queue once `message_received` has gone out, and whoever then
//! takes the session's answerer lock answers until the queue is empty. Handing the lock
//! back and checking for a newcomer are one atomic step, so no queued question is ever
//! stranded; a lock whose holder died expires, and the next question takes over.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Participant;
use crate::health::Redis;
use crate::protocol::SpiritState;

/// A question waiting for the spirit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedQuestion {
    pub id: Uuid,
    pub session_id: Uuid,
    pub author: Participant,
    pub content: String,
    pub persona: String,
}

#[derive(Debug, thiserror::Error)]
#[error("spirit queue unavailable: {0}")]
pub struct QueueError(pub String);

/// Held while one question is accepted (checked, stored, announced and queued), so the
/// order questions are announced in is the order they are answered in. Dropping it
/// without [`AcceptGuard::release`] still releases it (the Redis lock by expiry).
pub struct AcceptGuard {
    release: Option<Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>>,
}

impl AcceptGuard {
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release().await;
        }
    }
}

/// How long one acceptance may hold the session's accept lock (a store write and a fan-out).
pub const ACCEPT_LOCK_TTL: Duration = Duration::from_secs(5);

#[async_trait]
pub trait SpiritQueue: Send + Sync + 'static {
    /// Waits for the session's accept lock.
    async fn lock_accept(&self, session_id: Uuid) -> Result<AcceptGuard, QueueError>;

    /// Holds a place for `question_id`; false when the session already has `capacity`
    /// questions waiting (the one being answered included).
    async fn reserve(
        &self,
        session_id: Uuid,
        question_id: Uuid,
        capacity: u32,
    ) -> Result<bool, QueueError>;

    /// Gives a reserved place back (the question was refused after all).
    async fn cancel(&self, session_id: Uuid, question_id: Uuid) -> Result<(), QueueError>;

    /// Queues a reserved question; true when the caller became the session's answerer.
    async fn enqueue(&self, question: &QueuedQuestion) -> Result<bool, QueueError>;

    /// The question to answer next, left in the queue until [`finish`](Self::finish).
    async fn head(&self, session_id: Uuid) -> Result<Option<QueuedQuestion>, QueueError>;

    /// Removes the answered question. True: more are waiting and the caller is still the
    /// answerer. False: the queue is empty and the lock was handed back, atomically.
    async fn finish(&self, session_id: Uuid, question_id: Uuid) -> Result<bool, QueueError>;

    async fn set_state(&self, session_id: Uuid, state: SpiritState) -> Result<(), QueueError>;

    /// Idle when nothing is queued.
    async fn state(&self, session_id: Uuid) -> Result<SpiritState, QueueError>;
}

/// A reservation not turned into a queued question within this is forgotten (its
/// instance died between the two steps).
const RESERVATION_TTL: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct SessionQueue {
    waiting: VecDeque<QueuedQuestion>,
    reserved: HashMap<Uuid, Instant>,
    answering: bool,
    state: Option<SpiritState>,
}

/// The harness's queue: everything behind one mutex, never held across an await.
#[derive(Default)]
pub struct InProcessQueue {
    sessions: Mutex<HashMap<Uuid, SessionQueue>>,
    accept_locks: Mutex<HashMap<Uuid, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

impl InProcessQueue {
    fn with<T>(&self, session_id: Uuid, f: impl FnOnce(&mut SessionQueue) -> T) -> T {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let queue = sessions.entry(session_id).or_default();
        let out = f(queue);
        if queue.waiting.is_empty() && queue.reserved.is_empty() && !queue.answering {
            sessions.remove(&session_id);
        }
        out
    }
}

#[async_trait]
impl SpiritQueue for InProcessQueue {
    async fn lock_accept(&self, session_id: Uuid) -> Result<AcceptGuard, QueueError> {
        let lock = self
            .accept_locks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(session_id)
            .or_default()
            .clone();
        let guard = lock.lock_owned().await;
        Ok(AcceptGuard {
            release: Some(Box::new(move || {
                Box::pin(async move {
                    drop(guard);
                })
            })),
        })
    }

    async fn reserve(
        &self,
        session_id: Uuid,
        question_id: Uuid,
        capacity: u32,
    ) -> Result<bool, QueueError> {
        Ok(self.with(session_id, |q| {
            q.reserved.retain(|_, at| at.elapsed() < RESERVATION_TTL);
            if q.waiting.len() + q.reserved.len() >= capacity as usize {
                return false;
            }
            q.reserved.insert(question_id, Instant::now());
            true
        }))
    }

    async fn cancel(&self, session_id: Uuid, question_id: Uuid) -> Result<(), QueueError> {
        self.with(session_id, |q| q.reserved.remove(&question_id));
        Ok(())
    }

    async fn enqueue(&self, question: &QueuedQuestion) -> Result<bool, QueueError> {
        Ok(self.with(question.session_id, |q| {
            q.reserved.remove(&question.id);
            q.waiting.push_back(question.clone());
            !std::mem::replace(&mut q.answering, true)
        }))
    }

    async fn head(&self, session_id: Uuid) -> Result<Option<QueuedQuestion>, QueueError> {
        Ok(self.with(session_id, |q| q.waiting.front().cloned()))
    }

    async fn finish(&self, session_id: Uuid, question_id: Uuid) -> Result<bool, QueueError> {
        Ok(self.with(session_id, |q| {
            if q.waiting.front().is_some_and(|h| h.id == question_id) {
                q.waiting.pop_front();
            }
            if q.waiting.is_empty() {
                q.answering = false;
                q.state = None;
                false
            } else {
                true
            }
        }))
    }

    async fn set_state(&self, session_id: Uuid, state: SpiritState) -> Result<(), QueueError> {
        self.with(session_id, |q| q.state = Some(state));
        Ok(())
    }

    async fn state(&self, session_id: Uuid) -> Result<SpiritState, QueueError> {
        Ok(self.with(session_id, |q| {
            if q.waiting.is_empty() {
                SpiritState::Idle
            } else {
                q.state.unwrap_or(SpiritState::Thinking)
            }
        }))
    }
}

// ---------------------------------------------------------------------------------------

/// Redis: per session `spirit:{<id>}:queue` (a list of JSON questions), `:reserved` (a
/// sorted set of question ids by time), `:lock` (the answerer) and `:state`. The `{…}`
/// hash tag keeps a session's keys in one slot, so each script also runs on a cluster.
#[derive(Clone)]
pub struct RedisQueue {
    redis: Redis,
    prefix: String,
    /// How long an answerer holds the lock without renewing it: longer than one answer.
    lock_ttl: Duration,
}

const RESERVE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
local used = redis.call('LLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
if used >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
";

const ENQUEUE: &str = r"
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], 86400000)
if redis.call('SET', KEYS[3], ARGV[3], 'NX', 'PX', ARGV[4]) then return 1 end
return 0
";

const FINISH: &str = r"
local head = redis.call('LINDEX', KEYS[1], 0)
if head and cjson.decode(head).id == ARGV[1] then redis.call('LPOP', KEYS[1]) end
if redis.call('LLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2], KEYS[3])
  return 0
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1
";

fn queue_err(err: impl std::fmt::Display) -> QueueError {
    QueueError(err.to_string())
}

impl RedisQueue {
    pub fn new(redis: Redis, prefix: &str, lock_ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            lock_ttl,
        }
    }

    fn key(&self, session_id: Uuid, part: &str) -> String {
        format!("{}spirit:{{{session_id}}}:{part}", self.prefix)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.lock_ttl.as_millis()).unwrap_or(u64::MAX)
    }

    async fn conn(&self) -> Result<redis::aio::ConnectionManager, QueueError> {
        self.redis.connection().await.map_err(queue_err)
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const RELEASE_IF_OURS: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

#[async_trait]
impl SpiritQueue for RedisQueue {
    async fn lock_accept(&self, session_id: Uuid) -> Result<AcceptGuard, QueueError> {
        let key = self.key(session_id, "accept");
        let token = Uuid::new_v4().to_string();
        let mut conn = self.conn().await?;
        let ttl_ms = u64::try_from(ACCEPT_LOCK_TTL.as_millis()).unwrap_or(5000);
        let give_up = Instant::now() + ACCEPT_LOCK_TTL * 2;
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
                .map_err(queue_err)?;
            if taken.is_some() {
                break;
            }
            if Instant::now() > give_up {
                return Err(QueueError("the accept lock stayed taken".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(AcceptGuard {
            release: Some(Box::new(move || {
                Box::pin(async move {
                    let _: Result<i64, _> = redis::Script::new(RELEASE_IF_OURS)
                        .key(key)
                        .arg(token)
                        .invoke_async(&mut conn)
                        .await;
                })
            })),
        })
    }

    async fn reserve(
        &self,
        session_id: Uuid,
        question_id: Uuid,
        capacity: u32,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let ok: i64 = redis::Script::new(RESERVE)
            .key(self.key(session_id, "queue"))
            .key(self.key(session_id, "reserved"))
            .arg(question_id.to_string())
            .arg(capacity)
            .arg(now_ms())
            .arg(u64::try_from(RESERVATION_TTL.as_millis()).unwrap_or(30_000))
            .invoke_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(ok == 1)
    }

    async fn cancel(&self, session_id: Uuid, question_id: Uuid) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let _: i64 = redis::cmd("ZREM")
            .arg(self.key(session_id, "reserved"))
            .arg(question_id.to_string())
            .query_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    async fn enqueue(&self, question: &QueuedQuestion) -> Result<bool, QueueError> {
        let json = serde_json::to_string(question).map_err(queue_err)?;
        let mut conn = self.conn().await?;
        let claimed: i64 = redis::Script::new(ENQUEUE)
            .key(self.key(question.session_id, "queue"))
            .key(self.key(question.session_id, "reserved"))
            .key(self.key(question.session_id, "lock"))
            .arg(question.id.to_string())
            .arg(json)
            .arg(Uuid::new_v4().to_string())
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(claimed == 1)
    }

    async fn head(&self, session_id: Uuid) -> Result<Option<QueuedQuestion>, QueueError> {
        let mut conn = self.conn().await?;
        let head: Option<String> = redis::cmd("LINDEX")
            .arg(self.key(session_id, "queue"))
            .arg(0)
            .query_async(&mut conn)
            .await
            .map_err(queue_err)?;
        head.map(|h| serde_json::from_str(&h).map_err(queue_err))
            .transpose()
    }

    async fn finish(&self, session_id: Uuid, question_id: Uuid) -> Result<bool, QueueError> {
        let mut conn = self.conn().await?;
        let more: i64 = redis::Script::new(FINISH)
            .key(self.key(session_id, "queue"))
            .key(self.key(session_id, "lock"))
            .key(self.key(session_id, "state"))
            .arg(question_id.to_string())
            .arg(Uuid::new_v4().to_string())
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(more == 1)
    }

    async fn set_state(&self, session_id: Uuid, state: SpiritState) -> Result<(), QueueError> {
        let mut conn = self.conn().await?;
        let name = serde_json::to_value(state).map_err(queue_err)?;
        let _: () = redis::cmd("SET")
            .arg(self.key(session_id, "state"))
            .arg(name.as_str().unwrap_or("thinking"))
            .arg("PX")
            .arg(self.ttl_ms())
            .query_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(())
    }

    async fn state(&self, session_id: Uuid) -> Result<SpiritState, QueueError> {
        let mut conn = self.conn().await?;
        let (waiting, state): (i64, Option<String>) = redis::pipe()
            .cmd("LLEN")
            .arg(self.key(session_id, "queue"))
            .cmd("GET")
            .arg(self.key(session_id, "state"))
            .query_async(&mut conn)
            .await
            .map_err(queue_err)?;
        Ok(match (waiting, state.as_deref()) {
            (0, _) => SpiritState::Idle,
            (_, Some("speaking")) => SpiritState::Speaking,
            (_, Some("idle")) => SpiritState::Idle,
            _ => SpiritState::Thinking,
        })
    }
}
