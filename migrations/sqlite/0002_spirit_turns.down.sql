DROP INDEX IF EXISTS messages_unanswered;
DROP INDEX IF EXISTS messages_one_reply;
ALTER TABLE messages DROP COLUMN claimed_until;
ALTER TABLE messages DROP COLUMN attempts;
ALTER TABLE messages DROP COLUMN turn;
