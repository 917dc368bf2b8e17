-- Sessions, the people who joined them, and what was said.
CREATE TABLE sessions (
    id                UUID PRIMARY KEY,
    name              TEXT        NOT NULL,
    persona           TEXT        NOT NULL,
    status            TEXT        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended')),
    participant_count INTEGER     NOT NULL DEFAULT 0 CHECK (participant_count >= 0),
    max_participants  INTEGER     NOT NULL CHECK (max_participants BETWEEN 2 AND 12),
    created_at        TIMESTAMPTZ NOT NULL,
    ended_at          TIMESTAMPTZ,
    CHECK (participant_count <= max_participants)
);

CREATE TABLE participants (
    id           UUID PRIMARY KEY,
    session_id   UUID        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    display_name TEXT        NOT NULL,
    role         TEXT        NOT NULL CHECK (role IN ('host', 'participant')),
    seat         INTEGER     NOT NULL CHECK (seat >= 0),
    joined_at    TIMESTAMPTZ NOT NULL,
    -- A seat belongs to one participant for the whole session.
    UNIQUE (session_id, seat)
);

CREATE TABLE messages (
    -- seq orders messages exactly, whatever the clocks of the writers said.
    seq         BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    id          UUID PRIMARY KEY,
    session_id  UUID        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind        TEXT        NOT NULL CHECK (kind IN ('question', 'spirit')),
    author_id   UUID        REFERENCES participants (id) ON DELETE SET NULL,
    content     TEXT        NOT NULL,
    in_reply_to UUID        REFERENCES messages (id) ON DELETE SET NULL,
    created_at  TIMESTAMPTZ NOT NULL
);

CREATE INDEX messages_session_seq ON messages (session_id, seq);
