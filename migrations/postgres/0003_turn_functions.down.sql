DROP FUNCTION IF EXISTS seance_claim_next(UUID, BIGINT, BIGINT);
DROP FUNCTION IF EXISTS seance_lock_for_question(UUID);
