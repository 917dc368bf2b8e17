-- Two steps of a question's life that each took several round trips, as one call each.
-- Both are VOLATILE (the default), so under READ COMMITTED every statement inside takes a
-- fresh snapshot, as it did when the application sent them one by one: what a statement
-- reads after the session's lock was granted includes what the lock's previous holder
-- committed. Only the round trips go.

-- Opens a question's acceptance (called inside the application's transaction, which keeps
-- the lock until it commits): the session's row locked, and how many of its questions are
-- still owed an answer. No row when there is no such session.
CREATE FUNCTION seance_lock_for_question(p_session UUID)
RETURNS TABLE (id UUID, name TEXT, persona TEXT, status TEXT, participant_count INTEGER,
               max_participants INTEGER, created_at TIMESTAMPTZ, unanswered BIGINT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s sessions%ROWTYPE;
BEGIN
    SELECT * INTO s FROM sessions WHERE sessions.id = p_session FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    id := s.id; name := s.name; persona := s.persona; status := s.status;
    participant_count := s.participant_count; max_participants := s.max_participants;
    created_at := s.created_at;
    SELECT COUNT(*) INTO unanswered FROM messages
    WHERE messages.session_id = p_session AND messages.turn IN ('queued', 'thinking', 'speaking');
    RETURN NEXT;
END
$$;

-- Claims the session's oldest unanswered question until p_until (ms since the epoch), in one
-- transaction of its own: the session's row locked (waiting for an acceptance in progress),
-- the oldest unanswered question read with its author and any stored reply, and the claim,
-- conditional on the attempt count read. One row, whose outcome is 'nothing' (no such
-- session, or nothing owed), 'ended', 'in_progress' (held by a live claim, or taken by
-- another worker between the read and the claim) or 'claimed' (with the question, its
-- attempts before this claim, any reply, and the session as read under the lock).
CREATE FUNCTION seance_claim_next(p_session UUID, p_until BIGINT, p_now BIGINT)
RETURNS TABLE (outcome TEXT,
               session_name TEXT, session_persona TEXT, session_status TEXT,
               session_participant_count INTEGER, session_max_participants INTEGER,
               session_created_at TIMESTAMPTZ,
               id UUID, session_id UUID, kind TEXT, content TEXT, in_reply_to UUID,
               created_at TIMESTAMPTZ, turn TEXT, attempts INTEGER, claimed_until BIGINT,
               author_id UUID, author_name TEXT, author_role TEXT, author_seat INTEGER,
               reply_id UUID, reply_content TEXT, reply_created_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s sessions%ROWTYPE;
    q RECORD;
BEGIN
    SELECT * INTO s FROM sessions WHERE sessions.id = p_session FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        outcome := 'nothing';
        RETURN NEXT;
        RETURN;
    END IF;
    IF s.status = 'ended' THEN
        outcome := 'ended';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at, m.turn,
           m.attempts, m.claimed_until,
           p.id AS author_id, p.display_name AS author_name, p.role AS author_role,
           p.seat AS author_seat,
           r.id AS reply_id, r.content AS reply_content, r.created_at AS reply_created_at
    INTO q
    FROM messages m LEFT JOIN participants p ON p.id = m.author_id
    LEFT JOIN messages r ON r.in_reply_to = m.id AND r.kind = 'spirit'
    WHERE m.session_id = p_session AND m.turn IN ('queued', 'thinking', 'speaking')
    ORDER BY m.seq ASC LIMIT 1;
    IF NOT FOUND THEN
        outcome := 'nothing';
        RETURN NEXT;
        RETURN;
    END IF;
    IF q.turn <> 'queued' AND q.claimed_until IS NOT NULL AND q.claimed_until > p_now THEN
        outcome := 'in_progress';
        RETURN NEXT;
        RETURN;
    END IF;
    UPDATE messages SET turn = 'thinking', attempts = messages.attempts + 1,
                        claimed_until = p_until
    WHERE messages.id = q.id AND messages.attempts = q.attempts
      AND messages.turn IN ('queued', 'thinking', 'speaking');
    IF NOT FOUND THEN
        outcome := 'in_progress';
        RETURN NEXT;
        RETURN;
    END IF;
    outcome := 'claimed';
    session_name := s.name; session_persona := s.persona; session_status := s.status;
    session_participant_count := s.participant_count;
    session_max_participants := s.max_participants; session_created_at := s.created_at;
    id := q.id; session_id := q.session_id; kind := q.kind; content := q.content;
    in_reply_to := q.in_reply_to; created_at := q.created_at; turn := q.turn;
    attempts := q.attempts; claimed_until := q.claimed_until;
    author_id := q.author_id; author_name := q.author_name; author_role := q.author_role;
    author_seat := q.author_seat;
    reply_id := q.reply_id; reply_content := q.reply_content;
    reply_created_at := q.reply_created_at;
    RETURN NEXT;
END
$$;
