-- The spirit's claim (seance_claim_next, 0003) and, when it claims a question to answer,
-- the conversation the spirit answers it with, in one round trip: the p_history newest
-- messages stored before the question, oldest first. The claim's row comes first; each
-- message of the history follows as a row of its own, its outcome 'history', with the
-- message's columns as the claim's row has them (the session's and reply's are null).
-- The history is read by a statement of its own after the claim, so with a snapshot that
-- includes whatever acceptance the claim waited for. Nothing is read for a reply stored
-- but never announced: that turn announces it, it does not answer.
CREATE FUNCTION seance_claim_with_history(p_session UUID, p_until BIGINT, p_now BIGINT,
                                          p_history INTEGER)
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
    c RECORD;
BEGIN
    SELECT * INTO c FROM seance_claim_next(p_session, p_until, p_now);
    RETURN QUERY
    SELECT c.outcome, c.session_name, c.session_persona, c.session_status,
           c.session_participant_count, c.session_max_participants, c.session_created_at,
           c.id, c.session_id, c.kind, c.content, c.in_reply_to, c.created_at, c.turn,
           c.attempts, c.claimed_until, c.author_id, c.author_name, c.author_role,
           c.author_seat, c.reply_id, c.reply_content, c.reply_created_at;
    IF c.outcome <> 'claimed' OR c.reply_id IS NOT NULL OR p_history <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT 'history'::TEXT, NULL::TEXT, NULL::TEXT, NULL::TEXT, NULL::INTEGER, NULL::INTEGER,
           NULL::TIMESTAMPTZ,
           h.id, h.session_id, h.kind, h.content, h.in_reply_to, h.created_at, h.turn,
           h.attempts, h.claimed_until, h.author_id, h.author_name, h.author_role,
           h.author_seat, NULL::UUID, NULL::TEXT, NULL::TIMESTAMPTZ
    FROM (
        SELECT m.seq, m.id, m.session_id, m.kind, m.content, m.in_reply_to, m.created_at,
               m.turn, m.attempts, m.claimed_until,
               p.id AS author_id, p.display_name AS author_name, p.role AS author_role,
               p.seat AS author_seat
        FROM messages m LEFT JOIN participants p ON p.id = m.author_id
        WHERE m.session_id = p_session
          AND m.seq < (SELECT b.seq FROM messages b WHERE b.id = c.id)
        ORDER BY m.seq DESC LIMIT p_history
    ) h
    ORDER BY h.seq ASC;
END
$$;
