-- The spirit's turn lives with the questions, so the database judges it: each question's
-- place in the turn (NULL for the spirit's own messages), how many times a worker has
-- claimed it, until when the last claim holds (milliseconds since the epoch: the end of
-- the claiming invocation, after which that worker is surely dead), and at most one
-- stored reply per question.
ALTER TABLE messages ADD COLUMN turn TEXT CHECK (turn IN ('queued', 'thinking', 'speaking', 'answered', 'dropped'));
ALTER TABLE messages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE messages ADD COLUMN claimed_until BIGINT;

-- Questions from before this migration are settled, whatever happened to them.
UPDATE messages SET turn = 'answered' WHERE kind = 'question';

-- The old answer loop could store a second reply; keep the first of each.
DELETE FROM messages
WHERE kind = 'spirit' AND in_reply_to IS NOT NULL
  AND EXISTS (SELECT 1 FROM messages first
              WHERE first.kind = 'spirit' AND first.in_reply_to = messages.in_reply_to
                AND first.seq < messages.seq);

CREATE UNIQUE INDEX messages_one_reply ON messages (in_reply_to) WHERE kind = 'spirit';
CREATE INDEX messages_unanswered ON messages (session_id, seq) WHERE turn IN ('queued', 'thinking', 'speaking');
