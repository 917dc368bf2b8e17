//! Sessions, participants and messages behind one trait, with two real implementations
//! on `sqlx`: PostgreSQL (production) and SQLite (the harness's embedded default). Both
//! run the same SQL text (but for two steps PostgreSQL runs as functions of its
//! migrations), so one conformance suite proves both.

mod migrations;
mod pg_pool;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use uuid::Uuid;

use crate::domain::{
    DisplayName, MaxParticipants, Message, MessageKind, Participant, Session, SessionName,
    TurnState,
};

pub use migrations::{MigrationAction, MigrationReport, MigrationState, MigrationStatus};
pub use pg_pool::{PgConn, PgConnections, PgTx};
#[cfg(feature = "sqlite")]
pub use sql::SqliteStore;
pub use sql::{Database, PgStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no session has this id")]
    SessionNotFound,
    #[error("the session is full")]
    SessionFull,
    #[error("the session has ended")]
    SessionEnded,
    #[error("no message of this session has this id")]
    UnknownMessage,
    /// The database could not be reached or is overloaded: worth a retry (503).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => Self::Unavailable(err.to_string()),
            sqlx::Error::Database(db)
                if matches!(
                    db.code().as_deref(),
                    // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections,
                    // SQLITE_BUSY, SQLITE_LOCKED
                    Some("57P01" | "57P02" | "57P03" | "53300" | "5" | "6")
                ) =>
            {
                Self::Unavailable(err.to_string())
            }
            _ => Self::Internal(err.to_string()),
        }
    }
}

/// What creating a session needs; already validated.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub name: SessionName,
    pub persona: String,
    pub max_participants: MaxParticipants,
    pub host_name: DisplayName,
}

/// A message to store; `author` is `None` for the spirit.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Chosen in advance when the caller needs the id before the message is stored (a
    /// question's place in the spirit's queue); a fresh UUIDv7 otherwise.
    pub id: Option<Uuid>,
    pub session_id: Uuid,
    pub kind: MessageKind,
    pub author: Option<Participant>,
    pub content: String,
    pub in_reply_to: Option<Uuid>,
}

/// One page of history, oldest first; `next_before` is where the next (older) page starts.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub next_before: Option<Uuid>,
}

/// Messages after a point, oldest first; `has_more` when the limit cut the list.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesAfter {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// A question being accepted. Opening it takes the session's row lock (PostgreSQL) or the
/// write lock (SQLite) and holds it until [`commit`](Self::commit),
/// [`rollback`](Self::rollback) or drop (which rolls back): acceptances in one session take
/// turns, so the order questions are stored in is the order they are announced in, and a
/// spirit worker claiming a question waits for an acceptance in progress to end.
#[async_trait]
pub trait Acceptance: Send {
    /// The session, read under the lock.
    fn session(&self) -> &Session;

    /// The session's questions still owed an answer (the one being answered included).
    fn unanswered(&self) -> u32;

    /// Stores the question, queued for the spirit; visible to others once committed.
    async fn insert_question(
        &mut self,
        id: Uuid,
        author: &Participant,
        content: String,
    ) -> Result<Message, StoreError>;

    async fn commit(self: Box<Self>) -> Result<(), StoreError>;

    /// Ends it storing nothing (a refused question). Dropping it does the same, but on
    /// PostgreSQL by closing its connection; this gives the connection back.
    async fn rollback(self: Box<Self>) -> Result<(), StoreError>;
}

/// A question a spirit worker has claimed, with how many claims it has had (this one
/// included): more than one means an earlier attempt died before storing its reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedQuestion {
    pub message: Message,
    pub attempts: u32,
    /// Its session, as read under the claim's lock (so the turn needs no read of its own).
    pub session: Session,
    /// The conversation the spirit answers it with: the newest messages stored before it,
    /// as many as the claim asked for, oldest first, read once the claim holds (so the
    /// turn needs no read for them either). Empty for a reply being announced.
    pub history: Vec<Message>,
}

/// What claiming the next question found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// This caller answers it now.
    Claimed(ClaimedQuestion),
    /// Every question of the session is settled (or there is no such session).
    Nothing,
    /// The session has ended: nothing more of it is answered, and what it still owes is to
    /// be [dropped](Store::drop_unanswered).
    Ended,
    /// The oldest unanswered question is being answered under a claim that still holds:
    /// its worker will go on to the rest. A question whose reply is stored but not yet
    /// announced still counts as being answered, so no worker starts the next question
    /// before the room has heard the last answer.
    InProgress,
    /// The oldest unanswered question has its reply stored, but the worker that stored it
    /// died before announcing it (its claim ran out). This caller, now holding the claim,
    /// announces the reply and then [marks it answered](Store::mark_answered).
    Replied {
        question: ClaimedQuestion,
        reply: Message,
    },
}

/// What storing a reply did.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyOutcome {
    /// Stored; the question stays unsettled until [`Store::mark_answered`].
    Stored(Message),
    /// The question already had its reply (a redelivery raced an earlier attempt): nothing
    /// stored, nothing to announce, and the question left to whoever stored the reply to
    /// announce and mark answered (or to the next claimer, should that worker die).
    AlreadyAnswered,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    /// One round trip, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates the session with its host in seat 0.
    async fn create_session(&self, new: NewSession) -> Result<(Session, Participant), StoreError>;

    /// Takes the next free seat, atomically: of two joins racing for the last seat,
    /// exactly one wins and the other gets `SessionFull`.
    async fn join_session(
        &self,
        session_id: Uuid,
        display_name: &DisplayName,
    ) -> Result<(Session, Participant), StoreError>;

    async fn session(&self, id: Uuid) -> Result<Session, StoreError>;

    async fn participant(
        &self,
        session_id: Uuid,
        participant_id: Uuid,
    ) -> Result<Option<Participant>, StoreError>;

    /// Ends an active session; `SessionEnded` if it already was.
    async fn end_session(&self, id: Uuid) -> Result<Session, StoreError>;

    /// Stores a message in an active session (`SessionEnded` otherwise).
    async fn add_message(&self, new: NewMessage) -> Result<Message, StoreError>;

    /// The newest `limit` messages older than `before` (or the newest of all), oldest first.
    async fn messages_before(
        &self,
        session_id: Uuid,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<MessagePage, StoreError>;

    /// Opens the acceptance of one question in `session_id` (see [`Acceptance`]).
    async fn begin_accept(&self, session_id: Uuid) -> Result<Box<dyn Acceptance>, StoreError>;

    /// Claims the session's oldest unanswered question, by stored order, until
    /// `until_ms` (milliseconds since the epoch: when the claiming invocation ends): a
    /// queued one, or one left thinking or speaking under a claim that has run out (its
    /// worker died). The claim is a conditional update on the attempt count, so of two
    /// workers racing for it exactly one wins (the other sees `InProgress`). Waits for an
    /// acceptance in progress in the session to end first. A question claimed to be
    /// answered comes with up to `history` messages stored before it (see
    /// [`ClaimedQuestion::history`]), read in the same round trip on PostgreSQL.
    async fn claim_next_question(
        &self,
        session_id: Uuid,
        until_ms: i64,
        history: u32,
    ) -> Result<Claim, StoreError>;

    /// Marks a claimed question as speaking (its first words went out).
    async fn mark_speaking(&self, question_id: Uuid) -> Result<(), StoreError>;

    /// Stores the spirit's reply to `question_id`. A question has at most one reply (a
    /// unique index says so). The question stays unsettled, its claim held, until
    /// [`mark_answered`](Self::mark_answered) after the reply has been announced: that is
    /// what keeps the next question's turn from starting (and its events from reaching
    /// the room) before this answer's. `reply_id` is chosen before the answer is spoken,
    /// so its audio can name it.
    async fn store_reply(
        &self,
        question_id: Uuid,
        reply_id: Uuid,
        content: String,
    ) -> Result<ReplyOutcome, StoreError>;

    /// Marks a question answered once its stored reply has been announced, and tells, in
    /// the same statement, whether its session still owes another answer (a question
    /// queued, thinking or speaking, a stored reply not yet announced included), read with
    /// the update's snapshot: the spirit's turn goes on to claim the next question only
    /// then. A question accepted after that read comes with a queue message of its own.
    async fn mark_answered(&self, question_id: Uuid) -> Result<bool, StoreError>;

    /// Marks every unanswered question of the session dropped (it ended); how many.
    async fn drop_unanswered(&self, session_id: Uuid) -> Result<u64, StoreError>;

    /// The state of the session's oldest unanswered question without a stored reply; `None`
    /// when there is none (a reply stored but not yet announced counts as done here: it is
    /// what `session_state` tells the room).
    async fn turn_state(&self, session_id: Uuid) -> Result<Option<TurnState>, StoreError>;

    /// The oldest `limit` messages newer than `after`, oldest first.
    async fn messages_after(
        &self,
        session_id: Uuid,
        after: Uuid,
        limit: u32,
    ) -> Result<MessagesAfter, StoreError>;
}

pub type DynStore = Arc<dyn Store>;

/// Now, in milliseconds since the epoch (how claims are timed).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Now, at the microsecond precision both databases keep, so what a writer returns equals
/// what a reader later sees.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
