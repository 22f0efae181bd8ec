-- Launcher resources (things operators launch sessions to through an
-- external gateway, or through a system's service) and who may launch them.

CREATE TABLE resources (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    ip_address  TEXT,
    metadata    TEXT NOT NULL DEFAULT '{}',
    system_id   TEXT REFERENCES systems (id) ON DELETE SET NULL,
    service     TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE resource_grants (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    resource_id  TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT
);
CREATE INDEX resource_grants_user ON resource_grants (user_id, resource_id);

ALTER TABLE users ADD COLUMN email TEXT;
