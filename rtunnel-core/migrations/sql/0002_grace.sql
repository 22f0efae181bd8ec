-- Grace period and reconnect tokens (issue 3).
ALTER TABLE sessions ADD COLUMN grace_until BIGINT;
ALTER TABLE sessions ADD COLUMN reconnect_token_hash TEXT;
CREATE INDEX sessions_deadlines ON sessions (status, expires_at, grace_until);
