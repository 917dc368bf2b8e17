//! PostgreSQL connections, pooled without a round trip of the pool's own.
//!
//! sqlx's pool pings a connection each time one comes back (a `Sync` and the server's
//! answer), in a task spawned after the caller let go of it: a round trip for every use,
//! six of a question's, and work after the handler returned, which a Lambda frozen at that
//! moment runs only on its next thaw. Here a caller hands its connection back with
//! [`PgConn::release`] once it finished cleanly; any other end (an error, a cancelled
//! future, a transaction neither committed nor rolled back) closes the socket at once, so
//! the server rolls back what was open and frees its locks with no work left to run.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgRow};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A pooled connection idle for this long is pinged before use.
pub(crate) const PING_WHEN_IDLE_FOR: Duration = Duration::from_secs(1);
/// Idle longer than this, a connection is closed rather than reused (sqlx's default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Older than this, a connection is closed when it comes back, so the server can free what
/// a long-lived session holds (sqlx's default).
const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// The pool: at most `max` connections, opened when first needed.
#[derive(Clone)]
pub struct PgConnections {
    inner: Arc<Inner>,
}

struct Inner {
    options: PgConnectOptions,
    idle: Mutex<Vec<Idle>>,
    permits: Arc<Semaphore>,
    acquire_timeout: Duration,
    /// Milliseconds since the epoch of the last acquire of an idle connection.
    last_acquire: AtomicI64,
}

struct Idle {
    conn: PgConnection,
    since: Instant,
    opened: Instant,
}

impl std::fmt::Debug for PgConnections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnections")
            .field("available", &self.inner.permits.available_permits())
            .finish_non_exhaustive()
    }
}

/// A connection taken from the pool. Dropping it closes it; [`release`](Self::release)
/// gives it back.
pub struct PgConn {
    // Fields drop in this order: the socket closes before the permit frees its place.
    conn: PgConnection,
    opened: Instant,
    pool: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl PgConnections {
    /// Connects nothing yet: the first [`acquire`](Self::acquire) does.
    pub fn new(options: PgConnectOptions, max: u32, acquire_timeout: Duration) -> Self {
        let max = usize::try_from(max.max(1)).unwrap_or(1);
        Self {
            inner: Arc::new(Inner {
                options,
                idle: Mutex::new(Vec::with_capacity(max)),
                permits: Arc::new(Semaphore::new(max)),
                acquire_timeout,
                last_acquire: AtomicI64::new(0),
            }),
        }
    }

    /// The most recently used idle connection (pinged first if it may have gone stale), or a
    /// new one; `PoolTimedOut` when none frees up within the acquire timeout, `PoolClosed`
    /// after [`close`](Self::close).
    pub async fn acquire(&self) -> Result<PgConn, sqlx::Error> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.acquire_timeout;
        let permit = tokio::time::timeout_at(deadline, inner.permits.clone().acquire_owned())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
            .map_err(|_| sqlx::Error::PoolClosed)?;
        while let Some(idle) = inner.take_idle() {
            let idle_for = idle.since.elapsed();
            if idle_for >= IDLE_TIMEOUT || idle.opened.elapsed() >= MAX_LIFETIME {
                continue; // dropped: closed
            }
            let mut conn = idle.conn;
            if may_be_stale(&inner.last_acquire, idle_for) {
                match tokio::time::timeout_at(deadline, conn.ping()).await {
                    Ok(Ok(())) => {}
                    // Gone (a restart, a failover, a proxy's idle timeout): try the next.
                    Ok(Err(_)) => continue,
                    Err(_) => return Err(sqlx::Error::PoolTimedOut),
                }
            }
            return Ok(PgConn {
                conn,
                opened: idle.opened,
                pool: inner.clone(),
                _permit: permit,
            });
        }
        let conn = tokio::time::timeout_at(deadline, inner.options.connect())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok(PgConn {
            conn,
            opened: Instant::now(),
            pool: inner.clone(),
            _permit: permit,
        })
    }

    /// A transaction on a connection of its own (see [`PgTx`]).
    pub async fn begin(&self) -> Result<PgTx, sqlx::Error> {
        let mut conn = self.acquire().await?;
        sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
        Ok(PgTx { conn })
    }

    /// A transaction whose first statements go in the same round trip as its `BEGIN`:
    /// `sql` is one simple query starting with `BEGIN;` (no parameters, so nothing from a
    /// client may be spliced into it), and its first row, in text format, comes back
    /// beside the transaction. On an error the transaction is rolled back and the
    /// connection given back (or closed, if even that fails).
    pub async fn begin_with(&self, sql: String) -> Result<(PgTx, Option<PgRow>), sqlx::Error> {
        debug_assert!(sql.starts_with("BEGIN;"));
        // The caller vouches for `sql` (above); sqlx asks for it to be said.
        let sql = sqlx::AssertSqlSafe(sql);
        let conn = self.acquire().await?;
        let mut tx = PgTx { conn };
        // `fetch_all`, not `fetch_optional`: it reads to the end of the query, so the
        // connection is ready for the transaction's next statement.
        match sqlx::raw_sql(sql).fetch_all(&mut *tx.conn).await {
            Ok(rows) => Ok((tx, rows.into_iter().next())),
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    /// Refuses further acquires and closes the idle connections politely.
    pub async fn close(&self) {
        self.inner.permits.close();
        let idle = std::mem::take(
            &mut *self
                .inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for idle in idle {
            let _ = idle.conn.close().await;
        }
    }

    /// How many connections wait idle (for tests).
    pub fn idle_count(&self) -> usize {
        self.inner
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Inner {
    fn take_idle(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }
}

impl PgConn {
    /// Gives the connection back for the next caller. Only for a connection whose last
    /// statement finished and that holds no open transaction.
    pub fn release(self) {
        let PgConn {
            conn,
            opened,
            pool,
            _permit,
        } = self;
        if opened.elapsed() < MAX_LIFETIME && !pool.permits.is_closed() {
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Idle {
                    conn,
                    since: Instant::now(),
                    opened,
                });
        }
    }
}

impl Deref for PgConn {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// A transaction begun on a pooled connection. [`commit`](Self::commit) and
/// [`rollback`](Self::rollback) end it and give the connection back; dropped unfinished, it
/// closes the connection and the server rolls the transaction back and frees its locks.
pub struct PgTx {
    conn: PgConn,
}

impl PgTx {
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("COMMIT").execute(&mut *self.conn).await?;
        self.conn.release();
        Ok(())
    }

    pub async fn rollback(mut self) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *self.conn).await?;
        self.conn.release();
        Ok(())
    }
}

impl Deref for PgTx {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl DerefMut for PgTx {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
    }
}

/// Whether a connection about to be handed out may have been closed under us (a database
/// restart or failover, a proxy's idle timeout) and should be pinged first: when it sat idle
/// for [`PING_WHEN_IDLE_FOR`], or when the whole pool did, by the wall clock. The second is
/// for Lambda, which freezes the process between invocations: whether the monotonic clock
/// behind `idle_for` runs through a freeze is not promised, the wall clock is set right
/// after it. Under load neither holds and no statement waits on a ping; a connection that
/// died anyway fails its statement (`StoreError::Unavailable`) and is closed.
pub(crate) fn may_be_stale(last_acquire: &AtomicI64, idle_for: Duration) -> bool {
    let now = super::now_ms();
    let before = last_acquire.swap(now, Ordering::Relaxed);
    let gap_ms = i64::try_from(PING_WHEN_IDLE_FOR.as_millis()).unwrap_or(i64::MAX);
    idle_for >= PING_WHEN_IDLE_FOR || now.saturating_sub(before) >= gap_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_is_pinged_only_after_an_idle_spell() {
        let last_acquire = AtomicI64::new(0);
        assert!(
            may_be_stale(&last_acquire, Duration::ZERO),
            "the pool's first acquire in a while pings"
        );
        assert!(
            !may_be_stale(&last_acquire, Duration::from_millis(5)),
            "a busy pool's connection is not pinged"
        );
        assert!(
            may_be_stale(&last_acquire, PING_WHEN_IDLE_FOR),
            "a connection idle for the threshold is"
        );
        last_acquire.store(super::super::now_ms() - 60_000, Ordering::Relaxed);
        assert!(
            may_be_stale(&last_acquire, Duration::ZERO),
            "so is any after the pool sat idle by the wall clock (a frozen Lambda)"
        );
    }
}
