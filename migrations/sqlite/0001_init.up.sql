-- Sessions, the people who joined them, and what was said. Ids are 16-byte BLOBs and
-- times RFC 3339 TEXT, as sqlx encodes Uuid and DateTime<Utc> for SQLite.
CREATE TABLE sessions (
    id                BLOB PRIMARY KEY,
    name              TEXT    NOT NULL,
    persona           TEXT    NOT NULL,
    status            TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    participant_count INTEGER NOT NULL DEFAULT 0 CHECK (participant_count >= 0),
    max_participants  INTEGER NOT NULL CHECK (max_participants BETWEEN 2 AND 12),
    created_at        TEXT    NOT NULL,
    ended_at          TEXT,
    CHECK (participant_count <= max_participants)
);

CREATE TABLE participants (
    id           BLOB PRIMARY KEY,
    session_id   BLOB    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    display_name TEXT    NOT NULL,
    role         TEXT    NOT NULL CHECK (role IN ('host', 'participant')),
    seat         INTEGER NOT NULL CHECK (seat >= 0),
    joined_at    TEXT    NOT NULL,
    UNIQUE (session_id, seat)
);

CREATE TABLE messages (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          BLOB    NOT NULL UNIQUE,
    session_id  BLOB    NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind        TEXT    NOT NULL CHECK (kind IN ('question', 'spirit')),
    author_id   BLOB    REFERENCES participants (id) ON DELETE SET NULL,
    content     TEXT    NOT NULL,
    in_reply_to BLOB    REFERENCES messages (id) ON DELETE SET NULL,
    created_at  TEXT    NOT NULL
);

CREATE INDEX messages_session_seq ON messages (session_id, seq);
