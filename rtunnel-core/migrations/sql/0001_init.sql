-- rtunnel schema v1. Portable types only: TEXT ids (UUID strings), BIGINT
-- millisecond timestamps, TEXT JSON, so PostgreSQL can share the shape.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    role        TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens (user_id);

CREATE TABLE systems (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    key          TEXT NOT NULL UNIQUE,
    secret_hash  TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);

CREATE TABLE grants (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    system_id   TEXT NOT NULL REFERENCES systems (id) ON DELETE CASCADE,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT,
    revoked_at  BIGINT
);
CREATE INDEX grants_user_system ON grants (user_id, system_id);

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY,
    system_id       TEXT NOT NULL REFERENCES systems (id) ON DELETE CASCADE,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'active', 'grace_period', 'expired', 'closed')),
    created_at      BIGINT NOT NULL,
    activated_at    BIGINT,
    ended_at        BIGINT,
    end_reason      TEXT,
    expires_at      BIGINT NOT NULL,
    agent_addr      TEXT,
    agent_software  TEXT,
    manifest        TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX sessions_system ON sessions (system_id, created_at);
CREATE INDEX sessions_status ON sessions (status, created_at);

CREATE TABLE audit_events (
    id          TEXT PRIMARY KEY,
    at          BIGINT NOT NULL,
    event       TEXT NOT NULL,
    actor       TEXT,
    system_id   TEXT,
    session_id  TEXT,
    ip_address  TEXT,
    details     TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_events_at ON audit_events (at);
CREATE INDEX audit_events_session ON audit_events (session_id, at);
