-- Passwords (argon2id PHC strings) and logins: one row per refresh-token
-- family, holding the one refresh token id that may still be used.

ALTER TABLE users ADD COLUMN password_hash TEXT;

CREATE TABLE logins (
    id              TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    current_jti     TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    last_used_at    BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    revoked_at      BIGINT,
    revoked_reason  TEXT,
    ip_address      TEXT
);
CREATE INDEX logins_user ON logins (user_id);
