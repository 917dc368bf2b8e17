//! The PostgreSQL and SQLite stores. Both speak the same SQL (`$N` placeholders work in
//! SQLite too), so one macro writes both implementations and they cannot drift; the two
//! exceptions are opening a question's acceptance and claiming a question, which PostgreSQL
//! does by calling a function of its migrations (one round trip instead of two and five),
//! and the conformance suite holds both to the same behaviour.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::PgConnectOptions;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use uuid::Uuid;

use super::pg_pool::{PgConn, PgConnections, PgTx};
use super::{
    Acceptance, Claim, ClaimedQuestion, DynStore, MessagePage, MessagesAfter, NewMessage,
    NewSession, ReplyOutcome, Store, StoreError, now,
};
use crate::config::Config;
use crate::domain::{
    DisplayName, Message, MessageKind, Participant, Role, Session, SessionStatus, TurnState,
};

/// A connection pool to whichever database `DATABASE_URL` names.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgConnections),
    /// Only in builds with the `sqlite` feature (the harness and the tests; no Lambda).
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
}

impl Database {
    /// Builds the pool without connecting: the first query connects, so a Lambda's cold
    /// start makes no network call. A SQLite file's folder is created here.
    pub fn connect_lazy(config: &Config) -> Result<Self, StoreError> {
        let url = config.database_url.expose();
        if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, config)
        } else {
            let mut options = PgConnectOptions::from_str(url).map_err(|_| {
                StoreError::Internal("DATABASE_URL is not a valid postgres:// URL".into())
            })?;
            if let Some(host) = &config.database_host {
                // RDS Proxy's endpoint, with the credentials of DATABASE_URL.
                options = options.host(host);
            }
            if !config.database_prepared_statements {
                options = options.statement_cache_capacity(0);
            }
            let pool = PgConnections::new(
                options,
                config.database_max_connections,
                Duration::from_secs(3),
            );
            Ok(Self::Postgres(pool))
        }
    }

    #[cfg(feature = "sqlite")]
    fn connect_sqlite(url: &str, config: &Config) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|_| StoreError::Internal("DATABASE_URL is not a valid sqlite: URL".into()))?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let in_memory = url.contains(":memory:") || url.contains("mode=memory");
        let pool = if in_memory {
            // Every connection to :memory: is its own database: keep exactly one, forever.
            SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_lazy_with(options)
        } else {
            if let Some(dir) = options.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|err| {
                    StoreError::Unavailable(format!(
                        "cannot create the SQLite folder {}: {err}",
                        dir.display()
                    ))
                })?;
            }
            SqlitePoolOptions::new()
                // A SQLite connection is a file handle: nothing to find gone.
                .test_before_acquire(false)
                .max_connections(config.database_max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options.journal_mode(SqliteJournalMode::Wal))
        };
        Ok(Self::Sqlite(pool))
    }

    #[cfg(not(feature = "sqlite"))]
    fn connect_sqlite(_url: &str, _config: &Config) -> Result<Self, StoreError> {
        Err(StoreError::Internal(
            "this build has no SQLite (the `sqlite` feature of seance-shared, which the \
             harness enables); DATABASE_URL must be postgres://"
                .into(),
        ))
    }

    pub fn store(&self) -> DynStore {
        self.store_with(true)
    }

    /// The store, with named prepared statements or (`prepared: false`, for RDS Proxy)
    /// unnamed ones only.
    pub fn store_with(&self, prepared: bool) -> DynStore {
        match self {
            Self::Postgres(pool) => Arc::new(PgStore {
                pool: pool.clone(),
                prepared,
            }),
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => Arc::new(SqliteStore {
                pool: pool.clone(),
                prepared,
            }),
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgStore {
    pub pool: PgConnections,
    /// Named (prepared, cached) statements; off behind RDS Proxy, where they pin a client
    /// to one database connection.
    pub prepared: bool,
}

#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub pool: SqlitePool,
    pub prepared: bool,
}

const SELECT_SESSION: &str = "SELECT id, name, persona, status, participant_count, max_participants, created_at FROM sessions WHERE id = $1";

const JOIN_TAKE_SEAT: &str = "UPDATE sessions SET participant_count = participant_count + 1 \
     WHERE id = $1 AND status = 'active' AND participant_count < max_participants \
     RETURNING id, name, persona, status, participant_count, max_participants, created_at";

const END_SESSION: &str = "UPDATE sessions SET status = 'ended', ended_at = $2 \
     WHERE id = $1 AND status = 'active' \
     RETURNING id, name, persona, status, participant_count, max_participants, created_at";

const INSERT_SESSION: &str = "INSERT INTO sessions (id, name, persona, status, participant_count, max_participants, created_at) \
     VALUES ($1, $2, $3, 'active', 1, $4, $5)";

const INSERT_PARTICIPANT: &str = "INSERT INTO participants (id, session_id, display_name, role, seat, joined_at) \
     VALUES ($1, $2, $3, $4, $5, $6)";

const SELECT_PARTICIPANT: &str =
    "SELECT id, display_name, role, seat FROM participants WHERE session_id = $1 AND id = $2";

// Only into an active session: the check and the insert are one statement, so a message
// cannot slip in after the session ended.
const INSERT_MESSAGE: &str = "INSERT INTO messages (id, session_id, kind, author_id, content, in_reply_to, created_at) \
     SELECT $1, $2, $3, $4, $5, $6, $7 WHERE EXISTS (SELECT 1 FROM sessions WHERE id = $2 AND status = 'active')";

const MESSAGE_SEQ: &str = "SELECT seq FROM messages WHERE session_id = $1 AND id = $2";

const MESSAGES_BEFORE: &str = "SELECT m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at, \
            p.id AS author_id, p.display_name AS author_name, p.role AS author_role, p.seat AS author_seat \
     FROM messages m LEFT JOIN participants p ON p.id = m.author_id \
     WHERE m.session_id = $1 AND m.seq < $2 ORDER BY m.seq DESC LIMIT $3";

// The same below a message named by id, in one statement: an id not in the session reads
// as no rows (its seq is NULL), and only then is it looked up on its own.
const MESSAGES_BEFORE_ID: &str = "SELECT m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at, \
            p.id AS author_id, p.display_name AS author_name, p.role AS author_role, p.seat AS author_seat \
     FROM messages m LEFT JOIN participants p ON p.id = m.author_id \
     WHERE m.session_id = $1 AND m.seq < (SELECT b.seq FROM messages b WHERE b.session_id = $1 AND b.id = $2) \
     ORDER BY m.seq DESC LIMIT $3";

const MESSAGES_AFTER: &str = "SELECT m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at, \
            p.id AS author_id, p.display_name AS author_name, p.role AS author_role, p.seat AS author_seat \
     FROM messages m LEFT JOIN participants p ON p.id = m.author_id \
     WHERE m.session_id = $1 AND m.seq > $2 ORDER BY m.seq ASC LIMIT $3";

// PostgreSQL's acceptance lock and count, and its whole claim, are functions of migration
// 0003 (`migrations/postgres/0003_turn_functions.up.sql`): one round trip each; the claim
// is called through 0004's, which adds the question's history to the same round trip.
/// `BEGIN` and the lock in one simple query, so one round trip: a simple query carries no
/// parameters, and the one value spliced in is a [`Uuid`], printed by us in its hyphenated
/// form (no text from a client ever reaches this SQL).
fn pg_begin_and_lock_for_question(session_id: Uuid) -> String {
    format!(
        "BEGIN; SELECT id, name, persona, status, participant_count, max_participants, \
         created_at, unanswered FROM seance_lock_for_question('{}')",
        session_id.hyphenated()
    )
}

const PG_CLAIM_WITH_HISTORY: &str = "SELECT * FROM seance_claim_with_history($1, $2, $3, $4)";

// SQLite has no row locks: a write that changes nothing takes the database's write lock.
#[cfg(feature = "sqlite")]
const SQLITE_LOCK_SESSION: &str = "UPDATE sessions SET status = status WHERE id = $1 \
     RETURNING id, name, persona, status, participant_count, max_participants, created_at";

#[cfg(feature = "sqlite")]
const COUNT_UNANSWERED: &str = "SELECT COUNT(*) AS n FROM messages \
     WHERE session_id = $1 AND turn IN ('queued', 'thinking', 'speaking')";

// Only ever run under the session's lock (seance_lock_for_question, SQLITE_LOCK_SESSION), after the session was seen active.
const INSERT_QUESTION: &str = "INSERT INTO messages (id, session_id, kind, author_id, content, in_reply_to, created_at, turn) \
     VALUES ($1, $2, 'question', $3, $4, NULL, $5, 'queued')";

#[cfg(feature = "sqlite")]
const OLDEST_UNANSWERED: &str = "SELECT m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at, m.turn, m.attempts, m.claimed_until, \
            p.id AS author_id, p.display_name AS author_name, p.role AS author_role, p.seat AS author_seat, \
            r.id AS reply_id, r.content AS reply_content, r.created_at AS reply_created_at \
     FROM messages m LEFT JOIN participants p ON p.id = m.author_id \
     LEFT JOIN messages r ON r.in_reply_to = m.id AND r.kind = 'spirit' \
     WHERE m.session_id = $1 AND m.turn IN ('queued', 'thinking', 'speaking') ORDER BY m.seq ASC LIMIT 1";

// The claim: only if nobody claimed it since we read its attempt count.
#[cfg(feature = "sqlite")]
const CLAIM_QUESTION: &str = "UPDATE messages SET turn = 'thinking', attempts = attempts + 1, claimed_until = $3 \
     WHERE id = $1 AND attempts = $2 AND turn IN ('queued', 'thinking', 'speaking')";

const MARK_SPEAKING: &str =
    "UPDATE messages SET turn = 'speaking' WHERE id = $1 AND turn = 'thinking'";

// The unique index messages_one_reply makes a second reply a no-op.
const INSERT_REPLY: &str = "INSERT INTO messages (id, session_id, kind, author_id, content, in_reply_to, created_at) \
     SELECT $1, q.session_id, 'spirit', NULL, $2, q.id, $3 FROM messages q \
     WHERE q.id = $4 AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = q.session_id AND s.status = 'active') \
     ON CONFLICT DO NOTHING RETURNING session_id";

const HAS_REPLY: &str = "SELECT 1 AS one FROM messages WHERE in_reply_to = $1 AND kind = 'spirit'";

// The session's other unsettled questions are read with the update's snapshot; `o.id <>`
// keeps the answer the same whether a backend's subquery sees the row before or after.
const MARK_ANSWERED: &str = "UPDATE messages SET turn = 'answered' \
     WHERE id = $1 AND turn IN ('queued', 'thinking', 'speaking') \
     RETURNING EXISTS (SELECT 1 FROM messages o WHERE o.session_id = messages.session_id \
     AND o.id <> messages.id AND o.turn IN ('queued', 'thinking', 'speaking')) AS more";

// When the question was settled already (by another worker, or the session's end).
const OWED_BESIDE: &str = "SELECT EXISTS (SELECT 1 FROM messages o \
     WHERE o.session_id = (SELECT q.session_id FROM messages q WHERE q.id = $1) \
     AND o.turn IN ('queued', 'thinking', 'speaking')) AS more";

const DROP_QUESTION: &str = "UPDATE messages SET turn = 'dropped' \
     WHERE id = $1 AND turn IN ('queued', 'thinking', 'speaking')";

const DROP_UNANSWERED: &str = "UPDATE messages SET turn = 'dropped' \
     WHERE session_id = $1 AND turn IN ('queued', 'thinking', 'speaking')";

// What the room is told the spirit is doing: a question whose reply is stored is done for
// them (its `spirit_response` is on its way), though it holds the turn until announced.
const HEAD_TURN: &str = "SELECT m.turn AS turn FROM messages m \
     WHERE m.session_id = $1 AND m.turn IN ('queued', 'thinking', 'speaking') \
     AND NOT EXISTS (SELECT 1 FROM messages r WHERE r.in_reply_to = m.id AND r.kind = 'spirit') \
     ORDER BY m.seq ASC LIMIT 1";

fn corrupt(what: &str) -> StoreError {
    StoreError::Internal(format!("unexpected value in column {what}"))
}

fn to_u32(value: i32, what: &str) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| corrupt(what))
}

/// Reads a `TurnState` column.
fn turn_of(raw: &str) -> Result<TurnState, StoreError> {
    TurnState::from_db(raw).ok_or_else(|| corrupt("turn"))
}

/// A pooled connection, given back for the next caller.
trait GiveBack {
    fn give_back(self);
}

impl GiveBack for PgConn {
    fn give_back(self) {
        self.release();
    }
}

#[cfg(feature = "sqlite")]
impl GiveBack for sqlx::pool::PoolConnection<sqlx::Sqlite> {
    fn give_back(self) {
        drop(self);
    }
}

/// Runs one statement on a connection of the pool, and gives the connection back unless
/// the statement failed in a way that may have left it unusable (an error the server
/// reported, or no row where one was wanted, leaves it as good as before; anything else
/// closes it).
macro_rules! on_conn {
    ($pool:expr, |$conn:ident| $statement:expr) => {{
        let mut $conn = $pool.acquire().await?;
        let result = $statement.await;
        match &result {
            Ok(_) | Err(sqlx::Error::Database(_) | sqlx::Error::RowNotFound) => $conn.give_back(),
            Err(_) => drop($conn),
        }
        result?
    }};
}

macro_rules! impl_sql_store {
    ($store:ident, $acceptance:ident, $tx:ty, $row:ty, $backend:literal) => {
        /// An open acceptance: the transaction holding the session's lock.
        pub struct $acceptance {
            tx: $tx,
            session: Session,
            unanswered: u32,
            prepared: bool,
        }

        #[async_trait]
        impl Acceptance for $acceptance {
            fn session(&self) -> &Session {
                &self.session
            }

            fn unanswered(&self) -> u32 {
                self.unanswered
            }

            async fn insert_question(
                &mut self,
                id: Uuid,
                author: &Participant,
                content: String,
            ) -> Result<Message, StoreError> {
                let message = Message {
                    id,
                    session_id: self.session.id,
                    kind: MessageKind::Question,
                    author: Some(author.clone()),
                    content,
                    in_reply_to: None,
                    created_at: now(),
                };
                sqlx::query(INSERT_QUESTION)
                    .persistent(self.prepared)
                    .bind(message.id)
                    .bind(message.session_id)
                    .bind(author.id)
                    .bind(&message.content)
                    .bind(message.created_at)
                    .execute(&mut *self.tx)
                    .await?;
                Ok(message)
            }

            async fn commit(self: Box<Self>) -> Result<(), StoreError> {
                self.tx.commit().await?;
                Ok(())
            }

            async fn rollback(self: Box<Self>) -> Result<(), StoreError> {
                self.tx.rollback().await?;
                Ok(())
            }
        }

        impl $store {
            fn session_from_row(row: &$row) -> Result<Session, StoreError> {
                let status: String = row.try_get("status")?;
                Ok(Session {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    persona: row.try_get("persona")?,
                    status: SessionStatus::from_db(&status).ok_or_else(|| corrupt("status"))?,
                    participant_count: to_u32(
                        row.try_get("participant_count")?,
                        "participant_count",
                    )?,
                    max_participants: to_u32(row.try_get("max_participants")?, "max_participants")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            fn participant_from_row(row: &$row) -> Result<Participant, StoreError> {
                let role: String = row.try_get("role")?;
                Ok(Participant {
                    id: row.try_get("id")?,
                    display_name: row.try_get("display_name")?,
                    role: Role::from_db(&role).ok_or_else(|| corrupt("role"))?,
                    seat: to_u32(row.try_get("seat")?, "seat")?,
                })
            }

            fn message_from_row(row: &$row) -> Result<Message, StoreError> {
                let kind: String = row.try_get("kind")?;
                let author_id: Option<Uuid> = row.try_get("author_id")?;
                let author = match author_id {
                    None => None,
                    Some(id) => {
                        let role: String = row.try_get("author_role")?;
                        Some(Participant {
                            id,
                            display_name: row.try_get("author_name")?,
                            role: Role::from_db(&role).ok_or_else(|| corrupt("role"))?,
                            seat: to_u32(row.try_get("author_seat")?, "seat")?,
                        })
                    }
                };
                Ok(Message {
                    id: row.try_get("id")?,
                    session_id: row.try_get("session_id")?,
                    kind: MessageKind::from_db(&kind).ok_or_else(|| corrupt("kind"))?,
                    author,
                    content: row.try_get("content")?,
                    in_reply_to: row.try_get("in_reply_to")?,
                    created_at: row.try_get("created_at")?,
                })
            }

            /// The claim a claiming read's row stands for, once this caller holds it: the
            /// question to answer, or a reply stored by a worker that died before announcing
            /// it (announce it, don't answer). `attempts` is the count before this claim.
            fn claimed_from_row(
                row: &$row,
                session: Session,
                attempts: i32,
            ) -> Result<Claim, StoreError> {
                let message = Self::message_from_row(row)?;
                let session_id = message.session_id;
                let question = ClaimedQuestion {
                    attempts: to_u32(attempts, "attempts")?.saturating_add(1),
                    message,
                    session,
                    history: Vec::new(),
                };
                // Stored by a worker that died before announcing it: announce, don't answer.
                let reply_id: Option<Uuid> = row.try_get("reply_id")?;
                if let Some(reply_id) = reply_id {
                    let reply = Message {
                        id: reply_id,
                        session_id,
                        kind: MessageKind::Spirit,
                        author: None,
                        content: row.try_get("reply_content")?,
                        in_reply_to: Some(question.message.id),
                        created_at: row.try_get("reply_created_at")?,
                    };
                    return Ok(Claim::Replied { question, reply });
                }
                Ok(Claim::Claimed(question))
            }

            /// Why a conditional update touched nothing: the session is missing, ended or full.
            async fn why_not(&self, id: Uuid) -> StoreError {
                match self.session(id).await {
                    Ok(session) if session.status == SessionStatus::Ended => {
                        StoreError::SessionEnded
                    }
                    Ok(_) => StoreError::SessionFull,
                    Err(err) => err,
                }
            }

            async fn message_seq(&self, session_id: Uuid, id: Uuid) -> Result<i64, StoreError> {
                on_conn!(self.pool, |conn| sqlx::query(MESSAGE_SEQ)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .bind(id)
                    .fetch_optional(&mut *conn))
                .map(|row| row.try_get::<i64, _>("seq"))
                .transpose()?
                .ok_or(StoreError::UnknownMessage)
            }
        }

        #[async_trait]
        impl Store for $store {
            fn backend(&self) -> &'static str {
                $backend
            }

            async fn ping(&self) -> Result<(), StoreError> {
                on_conn!(self.pool, |conn| sqlx::query("SELECT 1")
                    .persistent(self.prepared)
                    .execute(&mut *conn));
                Ok(())
            }

            async fn create_session(
                &self,
                new: NewSession,
            ) -> Result<(Session, Participant), StoreError> {
                let created_at = now();
                let session = Session {
                    id: Uuid::now_v7(),
                    name: new.name.as_str().to_owned(),
                    persona: new.persona,
                    status: SessionStatus::Active,
                    participant_count: 1,
                    max_participants: u32::from(new.max_participants.get()),
                    created_at,
                };
                let host = Participant {
                    id: Uuid::now_v7(),
                    display_name: new.host_name.as_str().to_owned(),
                    role: Role::Host,
                    seat: 0,
                };
                let mut tx = self.pool.begin().await?;
                sqlx::query(INSERT_SESSION)
                    .persistent(self.prepared)
                    .bind(session.id)
                    .bind(&session.name)
                    .bind(&session.persona)
                    .bind(i32::from(new.max_participants.get()))
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(INSERT_PARTICIPANT)
                    .persistent(self.prepared)
                    .bind(host.id)
                    .bind(session.id)
                    .bind(&host.display_name)
                    .bind(Role::Host.as_str())
                    .bind(0_i32)
                    .bind(created_at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok((session, host))
            }

            async fn join_session(
                &self,
                session_id: Uuid,
                display_name: &DisplayName,
            ) -> Result<(Session, Participant), StoreError> {
                let mut tx = self.pool.begin().await?;
                // The conditional increment is the seat lock: the row lock (Postgres) or the
                // write lock (SQLite) makes racing joins take turns, and each re-checks the cap.
                let Some(row) = sqlx::query(JOIN_TAKE_SEAT)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    tx.rollback().await?;
                    return Err(self.why_not(session_id).await);
                };
                let session = Self::session_from_row(&row)?;
                let seat = session.participant_count.saturating_sub(1);
                let participant = Participant {
                    id: Uuid::now_v7(),
                    display_name: display_name.as_str().to_owned(),
                    role: Role::Participant,
                    seat,
                };
                sqlx::query(INSERT_PARTICIPANT)
                    .persistent(self.prepared)
                    .bind(participant.id)
                    .bind(session_id)
                    .bind(&participant.display_name)
                    .bind(Role::Participant.as_str())
                    .bind(i32::try_from(seat).map_err(|_| corrupt("seat"))?)
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok((session, participant))
            }

            async fn session(&self, id: Uuid) -> Result<Session, StoreError> {
                let row = on_conn!(self.pool, |conn| sqlx::query(SELECT_SESSION)
                    .persistent(self.prepared)
                    .bind(id)
                    .fetch_optional(&mut *conn))
                .ok_or(StoreError::SessionNotFound)?;
                Self::session_from_row(&row)
            }

            async fn participant(
                &self,
                session_id: Uuid,
                participant_id: Uuid,
            ) -> Result<Option<Participant>, StoreError> {
                on_conn!(self.pool, |conn| sqlx::query(SELECT_PARTICIPANT)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .bind(participant_id)
                    .fetch_optional(&mut *conn))
                .map(|row| Self::participant_from_row(&row))
                .transpose()
            }

            async fn end_session(&self, id: Uuid) -> Result<Session, StoreError> {
                match on_conn!(self.pool, |conn| sqlx::query(END_SESSION)
                    .persistent(self.prepared)
                    .bind(id)
                    .bind(now())
                    .fetch_optional(&mut *conn))
                {
                    Some(row) => Self::session_from_row(&row),
                    None => Err(self.why_not(id).await),
                }
            }

            async fn add_message(&self, new: NewMessage) -> Result<Message, StoreError> {
                let message = Message {
                    id: new.id.unwrap_or_else(Uuid::now_v7),
                    session_id: new.session_id,
                    kind: new.kind,
                    author: new.author,
                    content: new.content,
                    in_reply_to: new.in_reply_to,
                    created_at: now(),
                };
                let inserted = on_conn!(self.pool, |conn| sqlx::query(INSERT_MESSAGE)
                    .persistent(self.prepared)
                    .bind(message.id)
                    .bind(message.session_id)
                    .bind(message.kind.as_str())
                    .bind(message.author.as_ref().map(|a| a.id))
                    .bind(&message.content)
                    .bind(message.in_reply_to)
                    .bind(message.created_at)
                    .execute(&mut *conn))
                .rows_affected();
                if inserted == 0 {
                    return Err(match self.session(message.session_id).await {
                        Ok(_) => StoreError::SessionEnded,
                        Err(err) => err,
                    });
                }
                Ok(message)
            }

            async fn messages_before(
                &self,
                session_id: Uuid,
                before: Option<Uuid>,
                limit: u32,
            ) -> Result<MessagePage, StoreError> {
                // One extra row says whether an older page exists.
                let fetch = i64::from(limit) + 1;
                let rows = match before {
                    Some(id) => {
                        let rows = on_conn!(self.pool, |conn| sqlx::query(MESSAGES_BEFORE_ID)
                            .persistent(self.prepared)
                            .bind(session_id)
                            .bind(id)
                            .bind(fetch)
                            .fetch_all(&mut *conn));
                        if rows.is_empty() {
                            // The first message, or not one of this session's.
                            self.message_seq(session_id, id).await?;
                        }
                        rows
                    }
                    None => {
                        on_conn!(self.pool, |conn| sqlx::query(MESSAGES_BEFORE)
                            .persistent(self.prepared)
                            .bind(session_id)
                            .bind(i64::MAX)
                            .bind(fetch)
                            .fetch_all(&mut *conn))
                    }
                };
                let mut messages = rows
                    .iter()
                    .take(limit as usize)
                    .map(Self::message_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                messages.reverse();
                let next_before = if rows.len() > limit as usize {
                    messages.first().map(|m| m.id)
                } else {
                    None
                };
                Ok(MessagePage {
                    messages,
                    next_before,
                })
            }

            async fn begin_accept(
                &self,
                session_id: Uuid,
            ) -> Result<Box<dyn Acceptance>, StoreError> {
                let (tx, session, unanswered) =
                    Self::open_acceptance(&self.pool, session_id, self.prepared).await?;
                Ok(Box::new($acceptance {
                    tx,
                    session,
                    unanswered,
                    prepared: self.prepared,
                }))
            }

            async fn claim_next_question(
                &self,
                session_id: Uuid,
                until_ms: i64,
                history: u32,
            ) -> Result<Claim, StoreError> {
                self.claim(session_id, until_ms, history).await
            }

            async fn mark_speaking(&self, question_id: Uuid) -> Result<(), StoreError> {
                on_conn!(self.pool, |conn| sqlx::query(MARK_SPEAKING)
                    .persistent(self.prepared)
                    .bind(question_id)
                    .execute(&mut *conn));
                Ok(())
            }

            async fn store_reply(
                &self,
                question_id: Uuid,
                reply_id: Uuid,
                content: String,
            ) -> Result<ReplyOutcome, StoreError> {
                let id = reply_id;
                let created_at = now();
                // One statement: the question is settled later, by `mark_answered`.
                let inserted = on_conn!(self.pool, |conn| sqlx::query(INSERT_REPLY)
                    .persistent(self.prepared)
                    .bind(id)
                    .bind(&content)
                    .bind(created_at)
                    .bind(question_id)
                    .fetch_optional(&mut *conn));
                if let Some(row) = inserted {
                    let session_id: Uuid = row.try_get("session_id")?;
                    return Ok(ReplyOutcome::Stored(Message {
                        id,
                        session_id,
                        kind: MessageKind::Spirit,
                        author: None,
                        content,
                        in_reply_to: Some(question_id),
                        created_at,
                    }));
                }
                // Nothing stored: the reply exists already, or the session ended.
                let mut tx = self.pool.begin().await?;
                let answered = sqlx::query(HAS_REPLY)
                    .persistent(self.prepared)
                    .bind(question_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                if answered {
                    // Whoever stored it announces it and marks the question answered (or,
                    // if it dies first, the next claimer does): settling it here could let
                    // the next turn begin before the room has heard this answer.
                    tx.commit().await?;
                    return Ok(ReplyOutcome::AlreadyAnswered);
                }
                sqlx::query(DROP_QUESTION)
                    .persistent(self.prepared)
                    .bind(question_id)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Err(StoreError::SessionEnded)
            }

            async fn mark_answered(&self, question_id: Uuid) -> Result<bool, StoreError> {
                let marked = on_conn!(self.pool, |conn| sqlx::query(MARK_ANSWERED)
                    .persistent(self.prepared)
                    .bind(question_id)
                    .fetch_optional(&mut *conn));
                let row = match marked {
                    Some(row) => row,
                    None => {
                        on_conn!(self.pool, |conn| sqlx::query(OWED_BESIDE)
                            .persistent(self.prepared)
                            .bind(question_id)
                            .fetch_one(&mut *conn))
                    }
                };
                Ok(row.try_get("more")?)
            }

            async fn drop_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError> {
                Ok(on_conn!(self.pool, |conn| sqlx::query(DROP_UNANSWERED)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .execute(&mut *conn))
                .rows_affected())
            }

            async fn turn_state(&self, session_id: Uuid) -> Result<Option<TurnState>, StoreError> {
                on_conn!(self.pool, |conn| sqlx::query(HEAD_TURN)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .fetch_optional(&mut *conn))
                .map(|row| turn_of(&row.try_get::<String, _>("turn")?))
                .transpose()
            }

            async fn messages_after(
                &self,
                session_id: Uuid,
                after: Uuid,
                limit: u32,
            ) -> Result<MessagesAfter, StoreError> {
                let above = self.message_seq(session_id, after).await?;
                let rows = on_conn!(self.pool, |conn| sqlx::query(MESSAGES_AFTER)
                    .persistent(self.prepared)
                    .bind(session_id)
                    .bind(above)
                    .bind(i64::from(limit) + 1)
                    .fetch_all(&mut *conn));
                let messages = rows
                    .iter()
                    .take(limit as usize)
                    .map(Self::message_from_row)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(MessagesAfter {
                    has_more: rows.len() > limit as usize,
                    messages,
                })
            }
        }
    };
}

impl_sql_store!(
    PgStore,
    PgAcceptance,
    PgTx,
    sqlx::postgres::PgRow,
    "postgres"
);
#[cfg(feature = "sqlite")]
impl_sql_store!(
    SqliteStore,
    SqliteAcceptance,
    sqlx::Transaction<'static, sqlx::Sqlite>,
    sqlx::sqlite::SqliteRow,
    "sqlite"
);

/// PostgreSQL sends each of the two as one call to a function that holds its statements.
impl PgStore {
    /// Opens a question's acceptance: the transaction, the session's row locked and its
    /// unanswered questions counted, in one round trip (see
    /// [`pg_begin_and_lock_for_question`]). The row comes in text format, which the same
    /// decoding reads. `prepared` is SQLite's twin's: a simple query is never prepared.
    async fn open_acceptance(
        pool: &PgConnections,
        session_id: Uuid,
        _prepared: bool,
    ) -> Result<(PgTx, Session, u32), StoreError> {
        let (tx, row) = pool
            .begin_with(pg_begin_and_lock_for_question(session_id))
            .await?;
        let row = match row {
            Some(row) => row,
            None => {
                // No such session leaves the connection sound: roll back so it is reused.
                // Dropping the transaction would close it; a rollback that fails closes it
                // too.
                let _ = tx.rollback().await;
                return Err(StoreError::SessionNotFound);
            }
        };
        let read = Self::session_from_row(&row).and_then(|session| {
            let unanswered: i64 = row.try_get("unanswered")?;
            Ok((session, u32::try_from(unanswered).unwrap_or(u32::MAX)))
        });
        match read {
            Ok((session, unanswered)) => Ok((tx, session, unanswered)),
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    async fn claim(
        &self,
        session_id: Uuid,
        until_ms: i64,
        history: u32,
    ) -> Result<Claim, StoreError> {
        // The claim's row, then the history's (see migration 0004).
        let rows = on_conn!(self.pool, |conn| sqlx::query(PG_CLAIM_WITH_HISTORY)
            .persistent(self.prepared)
            .bind(session_id)
            .bind(until_ms)
            .bind(crate::store::now_ms())
            .bind(i32::try_from(history).unwrap_or(i32::MAX))
            .fetch_all(&mut *conn));
        let Some((row, history)) = rows.split_first() else {
            return Err(corrupt("claim"));
        };
        let outcome: String = row.try_get("outcome")?;
        match outcome.as_str() {
            "nothing" => Ok(Claim::Nothing),
            "ended" => Ok(Claim::Ended),
            "in_progress" => Ok(Claim::InProgress),
            "claimed" => {
                let status: String = row.try_get("session_status")?;
                let session = Session {
                    id: session_id,
                    name: row.try_get("session_name")?,
                    persona: row.try_get("session_persona")?,
                    status: SessionStatus::from_db(&status).ok_or_else(|| corrupt("status"))?,
                    participant_count: to_u32(
                        row.try_get("session_participant_count")?,
                        "participant_count",
                    )?,
                    max_participants: to_u32(
                        row.try_get("session_max_participants")?,
                        "max_participants",
                    )?,
                    created_at: row.try_get("session_created_at")?,
                };
                let attempts: i32 = row.try_get("attempts")?;
                let mut claim = Self::claimed_from_row(row, session, attempts)?;
                if let Claim::Claimed(question) = &mut claim {
                    question.history = history
                        .iter()
                        .map(Self::message_from_row)
                        .collect::<Result<_, _>>()?;
                }
                Ok(claim)
            }
            _ => Err(corrupt("outcome")),
        }
    }
}

/// SQLite has no functions to hold the claim's statements: it sends them one by one, in a
/// transaction that takes the database's write lock first.
#[cfg(feature = "sqlite")]
impl SqliteStore {
    /// Opens a question's acceptance: the transaction, with the database's write lock, then
    /// the session read and its unanswered questions counted.
    async fn open_acceptance(
        pool: &sqlx::SqlitePool,
        session_id: Uuid,
        prepared: bool,
    ) -> Result<(sqlx::Transaction<'static, sqlx::Sqlite>, Session, u32), StoreError> {
        let mut tx = pool.begin().await?;
        match Self::lock_for_question(&mut tx, session_id, prepared).await {
            Ok((session, unanswered)) => Ok((tx, session, unanswered)),
            Err(err) => {
                let _ = tx.rollback().await;
                Err(err)
            }
        }
    }

    async fn lock_for_question(
        tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        session_id: Uuid,
        prepared: bool,
    ) -> Result<(Session, u32), StoreError> {
        let row = sqlx::query(SQLITE_LOCK_SESSION)
            .persistent(prepared)
            .bind(session_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or(StoreError::SessionNotFound)?;
        let session = Self::session_from_row(&row)?;
        let unanswered: i64 = sqlx::query(COUNT_UNANSWERED)
            .persistent(prepared)
            .bind(session_id)
            .fetch_one(&mut **tx)
            .await?
            .try_get("n")?;
        Ok((session, u32::try_from(unanswered).unwrap_or(u32::MAX)))
    }

    async fn claim(
        &self,
        session_id: Uuid,
        until_ms: i64,
        history: u32,
    ) -> Result<Claim, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Wait for an acceptance in progress, so its question is seen in its place.
        let Some(session_row) = sqlx::query(SQLITE_LOCK_SESSION)
            .persistent(self.prepared)
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Claim::Nothing);
        };
        let session = Self::session_from_row(&session_row)?;
        if session.status == SessionStatus::Ended {
            tx.commit().await?;
            return Ok(Claim::Ended);
        }
        let Some(row) = sqlx::query(OLDEST_UNANSWERED)
            .persistent(self.prepared)
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            tx.commit().await?;
            return Ok(Claim::Nothing);
        };
        let question_id: Uuid = row.try_get("id")?;
        let attempts: i32 = row.try_get("attempts")?;
        let turn = turn_of(&row.try_get::<String, _>("turn")?)?;
        let claimed_until: Option<i64> = row.try_get("claimed_until")?;
        let held = turn != TurnState::Queued
            && claimed_until.is_some_and(|until| until > crate::store::now_ms());
        if held {
            tx.commit().await?;
            return Ok(Claim::InProgress);
        }
        let claimed = sqlx::query(CLAIM_QUESTION)
            .persistent(self.prepared)
            .bind(question_id)
            .bind(attempts)
            .bind(until_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            tx.commit().await?;
            return Ok(Claim::InProgress);
        }
        let mut claim = Self::claimed_from_row(&row, session, attempts)?;
        if let Claim::Claimed(question) = &mut claim
            && history > 0
        {
            // Under the claim's write lock, as PostgreSQL reads it after its claim.
            let mut earlier = sqlx::query(MESSAGES_BEFORE_ID)
                .persistent(self.prepared)
                .bind(session_id)
                .bind(question_id)
                .bind(i64::from(history))
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(Self::message_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            earlier.reverse();
            question.history = earlier;
        }
        tx.commit().await?;
        Ok(claim)
    }
}
