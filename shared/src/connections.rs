//! Open WebSocket connections, behind one trait with two real implementations: Redis
//! (production: every Lambda instance sees the same connections) and in-process (the
//! harness's default).
//!
//! Presence is per participant: two tabs are two connections but one presence. `add`
//! says whether a connection is its participant's first, `remove` whether it was the
//! last, atomically, so `user_joined` and `user_left` go out exactly once each.
//!
//! A lost `$disconnect` must not leave a ghost forever: every connection is forgotten
//! `ttl` after it opened (a little over API Gateway's 2-hour limit).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::domain::Participant;
use crate::redis_client::Redis;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub connection_id: String,
    pub session_id: Uuid,
    pub participant: Participant,
    pub connected_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
#[error("connection store unavailable: {0}")]
pub struct ConnectionStoreError(pub String);

/// Whether a change crossed a presence boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// The participant's first open connection opened, or their last closed.
    Changed,
    /// They have other connections open.
    Unchanged,
}

#[async_trait]
pub trait ConnectionStore: Send + Sync + 'static {
    /// Records a connection; `Changed` when it is the participant's first.
    async fn add(&self, connection: &Connection) -> Result<Presence, ConnectionStoreError>;

    /// Forgets a connection; `Changed` when it was the participant's last. `None` when it
    /// was not known (already removed, or expired).
    async fn remove(
        &self,
        connection_id: &str,
    ) -> Result<Option<(Connection, Presence)>, ConnectionStoreError>;

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, ConnectionStoreError>;

    /// Every live connection of a session.
    async fn in_session(&self, session_id: Uuid) -> Result<Vec<Connection>, ConnectionStoreError>;

    /// Remembers, for [`TOMBSTONE_TTL`], that a connection closed before it was recorded
    /// (API Gateway does not order `$disconnect` after `$connect`).
    async fn tombstone(&self, connection_id: &str) -> Result<(), ConnectionStoreError>;

    /// Whether [`tombstone`](Self::tombstone) marked this connection.
    async fn is_tombstoned(&self, connection_id: &str) -> Result<bool, ConnectionStoreError>;
}

/// How long a tombstone is kept: longer than any `$connect` can take (29 s).
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

impl Presence {
    /// A change crosses the boundary when the participant has no other connection.
    fn crossed_unless(has_others: bool) -> Self {
        if has_others {
            Self::Unchanged
        } else {
            Self::Changed
        }
    }
}

/// API Gateway closes every connection after 2 hours; keep records a little longer.
pub const DEFAULT_CONNECTION_TTL: Duration = Duration::from_secs(2 * 3600 + 600);

fn expired(connection: &Connection, ttl: Duration, now: DateTime<Utc>) -> bool {
    let age = now.signed_duration_since(connection.connected_at);
    age.num_milliseconds() > i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------------------

/// The harness's store: a map behind a mutex. Never held across an await.
#[derive(Debug)]
pub struct InProcessConnections {
    connections: Mutex<HashMap<String, Connection>>,
    tombstones: Mutex<HashMap<String, std::time::Instant>>,
    ttl: Duration,
}

impl InProcessConnections {
    pub fn new(ttl: Duration) -> Self {
        Self {
            connections: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<String, Connection>> {
        // A panic while holding the lock cannot leave the map half-written (every change is
        // one insert or remove), so a poisoned lock is still usable.
        self.connections
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn prune(&self, map: &mut HashMap<String, Connection>) {
        let now = Utc::now();
        map.retain(|_, c| !expired(c, self.ttl, now));
    }
}

#[async_trait]
impl ConnectionStore for InProcessConnections {
    async fn add(&self, connection: &Connection) -> Result<Presence, ConnectionStoreError> {
        let mut map = self.locked();
        self.prune(&mut map);
        let others = map.values().any(|c| {
            c.session_id == connection.session_id
                && c.participant.id == connection.participant.id
                && c.connection_id != connection.connection_id
        });
        map.insert(connection.connection_id.clone(), connection.clone());
        Ok(Presence::crossed_unless(others))
    }

    async fn remove(
        &self,
        connection_id: &str,
    ) -> Result<Option<(Connection, Presence)>, ConnectionStoreError> {
        let mut map = self.locked();
        let Some(removed) = map.remove(connection_id) else {
            return Ok(None);
        };
        self.prune(&mut map);
        let others = map.values().any(|c| {
            c.session_id == removed.session_id && c.participant.id == removed.participant.id
        });
        let presence = Presence::crossed_unless(others);
        Ok(Some((removed, presence)))
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, ConnectionStoreError> {
        let map = self.locked();
        Ok(map
            .get(connection_id)
            .filter(|c| !expired(c, self.ttl, Utc::now()))
            .cloned())
    }

    async fn in_session(&self, session_id: Uuid) -> Result<Vec<Connection>, ConnectionStoreError> {
        let mut map = self.locked();
        self.prune(&mut map);
        let mut found: Vec<Connection> = map
            .values()
            .filter(|c| c.session_id == session_id)
            .cloned()
            .collect();
        found.sort_by_key(|c| c.connected_at);
        Ok(found)
    }

    async fn tombstone(&self, connection_id: &str) -> Result<(), ConnectionStoreError> {
        let mut tombstones = self
            .tombstones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tombstones.retain(|_, at| at.elapsed() < TOMBSTONE_TTL);
        tombstones.insert(connection_id.to_owned(), std::time::Instant::now());
        Ok(())
    }

    async fn is_tombstoned(&self, connection_id: &str) -> Result<bool, ConnectionStoreError> {
        Ok(self
            .tombstones
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(connection_id)
            .is_some_and(|at| at.elapsed() < TOMBSTONE_TTL))
    }
}

// ---------------------------------------------------------------------------------------

/// Redis layout, all under the configured prefix:
/// - `conn:{connection_id}` → the session id (so a message names its session);
/// - `session:{{session_id}}:conns`, a hash: connection id → the connection as JSON;
/// - `gone:{connection_id}`, a tombstone for a connection closed before it was recorded.
///
/// Every change to a session's hash is one Lua script, so presence is decided atomically
/// even with many Lambda instances. Each script touches one key only, so it also runs on
/// a cluster (ElastiCache Serverless); the `{…}` hash tag keeps a session's keys together.
#[derive(Clone)]
pub struct RedisConnections {
    redis: Redis,
    prefix: String,
    ttl: Duration,
}

/// Stored form: the connection plus its open time in ms, which the scripts compare.
#[derive(Serialize, Deserialize)]
struct Stored {
    #[serde(flatten)]
    connection: Connection,
    connected_at_ms: i64,
}

// Shared by both scripts: drops the session's expired connections and counts the live
// ones of participant `pid`, leaving out connection `except` (false for none).
macro_rules! prune_and_count_lua {
    () => {
        r"
local function prune_and_count(key, now, ttl, pid, except)
  local all = redis.call('HGETALL', key)
  local others = 0
  for i = 1, #all, 2 do
    local c = cjson.decode(all[i + 1])
    if now - c.connected_at_ms > ttl then
      redis.call('HDEL', key, all[i])
    elseif c.participant.id == pid and all[i] ~= except then
      others = others + 1
    end
  end
  return others
end
"
    };
}

// KEYS[1] session hash. ARGV: connection id, stored JSON, participant id, now ms, ttl ms.
// Counts the participant's other connections, then records this one.
const ADD_SCRIPT: &str = concat!(
    prune_and_count_lua!(),
    r"
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local others = prune_and_count(KEYS[1], now, ttl, ARGV[3], ARGV[1])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return others
"
);

// KEYS[1] session hash. ARGV: connection id, now ms, ttl ms.
// Returns {stored JSON, other connections of that participant} or nil when unknown.
const REMOVE_SCRIPT: &str = concat!(
    prune_and_count_lua!(),
    r"
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then return nil end
redis.call('HDEL', KEYS[1], ARGV[1])
local pid = cjson.decode(stored).participant.id
local others = prune_and_count(KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), pid, false)
return {stored, others}
"
);

fn redis_err(err: impl std::fmt::Display) -> ConnectionStoreError {
    ConnectionStoreError(err.to_string())
}

impl RedisConnections {
    pub fn new(redis: Redis, prefix: &str, ttl: Duration) -> Self {
        Self {
            redis,
            prefix: prefix.to_owned(),
            ttl,
        }
    }

    fn conn_key(&self, connection_id: &str) -> String {
        format!("{}conn:{connection_id}", self.prefix)
    }

    fn tombstone_key(&self, connection_id: &str) -> String {
        format!("{}gone:{connection_id}", self.prefix)
    }

    fn session_key(&self, session_id: Uuid) -> String {
        format!("{}session:{{{session_id}}}:conns", self.prefix)
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    async fn connection(
        &self,
    ) -> Result<crate::redis_client::RedisConnection, ConnectionStoreError> {
        self.redis.connection().await.map_err(redis_err)
    }

    /// The session a connection belongs to, read with `GET`, or taken with `GETDEL`.
    async fn session_of(
        &self,
        conn: &mut crate::redis_client::RedisConnection,
        command: &str,
        connection_id: &str,
    ) -> Result<Option<Uuid>, ConnectionStoreError> {
        let session: Option<String> = redis::cmd(command)
            .arg(self.conn_key(connection_id))
            .query_async(conn)
            .await
            .map_err(redis_err)?;
        Ok(session.and_then(|s| Uuid::parse_str(&s).ok()))
    }
}

fn decode(stored: &str) -> Result<Connection, ConnectionStoreError> {
    serde_json::from_str::<Stored>(stored)
        .map(|s| s.connection)
        .map_err(|err| ConnectionStoreError(format!("corrupt connection record: {err}")))
}

#[async_trait]
impl ConnectionStore for RedisConnections {
    async fn add(&self, connection: &Connection) -> Result<Presence, ConnectionStoreError> {
        let stored = serde_json::to_string(&Stored {
            connection: connection.clone(),
            connected_at_ms: connection.connected_at.timestamp_millis(),
        })
        .map_err(redis_err)?;
        let mut conn = self.connection().await?;
        let ttl_ms = self.ttl_ms();
        let _: () = redis::cmd("SET")
            .arg(self.conn_key(&connection.connection_id))
            .arg(connection.session_id.to_string())
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let others: i64 = redis::Script::new(ADD_SCRIPT)
            .key(self.session_key(connection.session_id))
            .arg(&connection.connection_id)
            .arg(stored)
            .arg(connection.participant.id.to_string())
            .arg(Utc::now().timestamp_millis())
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(Presence::crossed_unless(others > 0))
    }

    async fn remove(
        &self,
        connection_id: &str,
    ) -> Result<Option<(Connection, Presence)>, ConnectionStoreError> {
        let mut conn = self.connection().await?;
        let Some(session_id) = self.session_of(&mut conn, "GETDEL", connection_id).await? else {
            return Ok(None);
        };
        let removed: Option<(String, i64)> = redis::Script::new(REMOVE_SCRIPT)
            .key(self.session_key(session_id))
            .arg(connection_id)
            .arg(Utc::now().timestamp_millis())
            .arg(self.ttl_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        match removed {
            None => Ok(None),
            Some((stored, others)) => Ok(Some((
                decode(&stored)?,
                Presence::crossed_unless(others > 0),
            ))),
        }
    }

    async fn get(&self, connection_id: &str) -> Result<Option<Connection>, ConnectionStoreError> {
        let mut conn = self.connection().await?;
        let Some(session_id) = self.session_of(&mut conn, "GET", connection_id).await? else {
            return Ok(None);
        };
        let stored: Option<String> = redis::cmd("HGET")
            .arg(self.session_key(session_id))
            .arg(connection_id)
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        stored.as_deref().map(decode).transpose()
    }

    async fn in_session(&self, session_id: Uuid) -> Result<Vec<Connection>, ConnectionStoreError> {
        let mut conn = self.connection().await?;
        let stored: Vec<String> = redis::cmd("HVALS")
            .arg(self.session_key(session_id))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let now = Utc::now();
        let mut found = stored
            .iter()
            .map(|s| decode(s))
            .collect::<Result<Vec<_>, _>>()?;
        found.retain(|c| !expired(c, self.ttl, now));
        found.sort_by_key(|c| c.connected_at);
        Ok(found)
    }

    async fn tombstone(&self, connection_id: &str) -> Result<(), ConnectionStoreError> {
        let mut conn = self.connection().await?;
        redis::cmd("SET")
            .arg(self.tombstone_key(connection_id))
            .arg(1)
            .arg("PX")
            .arg(i64::try_from(TOMBSTONE_TTL.as_millis()).unwrap_or(i64::MAX))
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)
    }

    async fn is_tombstoned(&self, connection_id: &str) -> Result<bool, ConnectionStoreError> {
        let mut conn = self.connection().await?;
        redis::cmd("EXISTS")
            .arg(self.tombstone_key(connection_id))
            .query_async::<bool>(&mut conn)
            .await
            .map_err(redis_err)
    }
}

/// A connection of Ada's, host of the nil session, made at `at` (for unit tests).
#[cfg(test)]
pub(crate) fn connected_at(at: DateTime<Utc>) -> Connection {
    Connection {
        connection_id: "A1=".into(),
        session_id: Uuid::nil(),
        participant: crate::domain::Participant {
            id: Uuid::nil(),
            display_name: "Ada".into(),
            role: crate::domain::Role::Host,
            seat: 0,
        },
        connected_at: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_expires_once_older_than_its_time_to_live() {
        let now = Utc::now();
        let ttl = Duration::from_secs(60);
        let at = |age_ms: i64| connected_at(now - chrono::Duration::milliseconds(age_ms));
        assert!(!expired(&at(0), ttl, now));
        assert!(!expired(&at(60_000), ttl, now), "exactly the time to live");
        assert!(expired(&at(60_001), ttl, now));
    }

    /// The README's documented default: API Gateway's two-hour cap on a connection, and
    /// ten minutes more for a `$disconnect` that never came.
    #[test]
    fn records_outlive_api_gateways_two_hour_cap_by_ten_minutes() {
        assert_eq!(DEFAULT_CONNECTION_TTL, Duration::from_secs(130 * 60));
    }
}
