//! The PostgreSQL pool (`seance::store::PgConnections`) against a real server: a connection
//! comes back only when its user finished cleanly, anything else closes it, and the server
//! then frees what it held.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use seance::store::{PgConn, PgConnections};
use sqlx::postgres::PgConnectOptions;

/// A pool on a fresh database, and that database's URL (advisory locks and server
/// processes are looked at from a second pool on the same database).
async fn pool(max: u32, acquire_timeout: Duration) -> (PgConnections, String) {
    let url = seance_tests::fresh_postgres_url().await;
    (pool_at(&url, max, acquire_timeout), url)
}

fn pool_at(url: &str, max: u32, acquire_timeout: Duration) -> PgConnections {
    let options: PgConnectOptions = url.parse().unwrap();
    PgConnections::new(options, max, acquire_timeout)
}

async fn backend_pid(conn: &mut PgConn) -> i32 {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut **conn)
        .await
        .unwrap()
}

/// Whether a server process still runs, asked on a connection of the pool.
async fn backend_alive(pool: &PgConnections, pid: i32) -> bool {
    let mut conn = pool.acquire().await.unwrap();
    let alive: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
            .bind(pid)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    conn.release();
    alive
}

#[tokio::test]
async fn a_released_connection_is_reused_and_a_dropped_one_is_closed() {
    let (pool, _) = pool(2, Duration::from_secs(3)).await;
    let mut first = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut first).await;
    first.release();
    assert_eq!(pool.idle_count(), 1);

    let mut again = pool.acquire().await.unwrap();
    assert_eq!(
        backend_pid(&mut again).await,
        pid,
        "the same connection back"
    );
    drop(again);
    assert_eq!(
        pool.idle_count(),
        0,
        "a dropped connection does not come back"
    );

    let mut fresh = pool.acquire().await.unwrap();
    let fresh_pid = backend_pid(&mut fresh).await;
    assert_ne!(fresh_pid, pid, "a new connection replaces the closed one");
    fresh.release();
    // The server sees the closed socket; wait for its process to go (no fixed sleep: each
    // look is a round trip, and the bound only stops a test that would hang).
    let mut looks = 0;
    while backend_alive(&pool, pid).await {
        looks += 1;
        assert!(
            looks < 5_000,
            "the closed connection's server process stayed"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_cancelled_statement_closes_its_connection() {
    let (pool, _) = pool(1, Duration::from_secs(3)).await;
    let mut conn = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    let sleeping = sqlx::query("SELECT pg_sleep(30)").execute(&mut *conn);
    // The statement is under way when the future is dropped (the timeout fires first).
    assert!(
        tokio::time::timeout(Duration::from_millis(200), sleeping)
            .await
            .is_err()
    );
    drop(conn);
    // With one connection allowed, the next acquire must open a new one, not wait 30 s.
    let mut next = pool.acquire().await.unwrap();
    assert_ne!(backend_pid(&mut next).await, pid);
    next.release();
}

#[tokio::test]
async fn a_transaction_dropped_unfinished_frees_its_locks() {
    let (pool, url) = pool(2, Duration::from_secs(3)).await;
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    drop(tx);
    // Blocks until the server has rolled the dropped transaction back.
    let mut other = pool.acquire().await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query("SELECT pg_advisory_xact_lock(7)").execute(&mut *other),
    )
    .await
    .expect("the lock was freed")
    .unwrap();
    other.release();

    // Committed or rolled back, a transaction ends at once and its connection comes back.
    for (lock, commit) in [(8_i64, true), (9, false)] {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(lock)
            .execute(&mut *tx)
            .await
            .unwrap();
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        assert_eq!(pool.idle_count(), 1, "the connection came back");
        // Advisory locks are per database: look from the same one.
        let mut elsewhere = pool_at(&url, 1, Duration::from_secs(3))
            .acquire()
            .await
            .unwrap();
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(lock)
            .fetch_one(&mut *elsewhere)
            .await
            .unwrap();
        assert!(free, "the transaction's lock {lock} is free");
    }
}

#[tokio::test]
async fn a_full_pool_times_out_and_a_closed_one_refuses() {
    let (pool, _) = pool(1, Duration::from_millis(300)).await;
    let held = pool.acquire().await.unwrap();
    assert!(matches!(
        pool.acquire().await,
        Err(sqlx::Error::PoolTimedOut)
    ));
    held.release();
    pool.acquire().await.unwrap().release();
    pool.close().await;
    assert!(matches!(pool.acquire().await, Err(sqlx::Error::PoolClosed)));
}

#[tokio::test]
async fn a_connection_killed_under_the_pool_is_replaced() {
    let (pool, url) = pool(2, Duration::from_secs(3)).await;
    let mut conn = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    conn.release();
    let mut killer = pool_at(&url, 1, Duration::from_secs(3))
        .acquire()
        .await
        .unwrap();
    let killed: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .fetch_one(&mut *killer)
        .await
        .unwrap();
    assert!(killed);
    // Within a second of its last use the connection is not pinged first: its next
    // statement may fail (the caller gets an error and the connection is closed); after
    // at most that one failure the pool hands out a working connection.
    let mut failures = 0;
    loop {
        let mut conn = pool.acquire().await.unwrap();
        match sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(now) => {
                assert_ne!(now, pid);
                conn.release();
                break;
            }
            Err(_) => failures += 1,
        }
        assert!(failures <= 1, "more than the killed connection failed");
    }
}

#[tokio::test]
async fn a_question_for_a_missing_session_gives_its_connection_back() {
    let url = seance_tests::fresh_postgres_url().await;
    let config = seance_tests::test_config(&url, None);
    let db = seance::store::Database::connect_lazy(&config).unwrap();
    db.migrate_up().await.unwrap();
    let seance::store::Database::Postgres(pool) = &db else {
        panic!("a postgres:// URL makes a PostgreSQL pool");
    };
    let store = db.store();
    // Warm: one connection, idle after the migrations.
    let mut conn = pool.acquire().await.unwrap();
    let pid = backend_pid(&mut conn).await;
    conn.release();
    assert_eq!(pool.idle_count(), 1);

    let refused = store.begin_accept(uuid::Uuid::new_v4()).await;
    assert!(
        matches!(refused, Err(seance::store::StoreError::SessionNotFound)),
        "refused as not found"
    );
    assert_eq!(
        pool.idle_count(),
        1,
        "rolled back and given back, not closed"
    );
    let mut again = pool.acquire().await.unwrap();
    assert_eq!(backend_pid(&mut again).await, pid, "the same connection");
    again.release();
    db.close().await;
}
