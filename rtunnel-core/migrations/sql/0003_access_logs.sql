-- Access log: one row per connection an operator opened through a session.
CREATE TABLE access_logs (
    id                  TEXT PRIMARY KEY,
    session_id          TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    kind                TEXT NOT NULL,
    service             TEXT,
    actor               TEXT NOT NULL,
    ip_address          TEXT,
    opened_at           BIGINT NOT NULL,
    closed_at           BIGINT,
    bytes_to_service    BIGINT NOT NULL DEFAULT 0,
    bytes_from_service  BIGINT NOT NULL DEFAULT 0,
    error               TEXT
);
CREATE INDEX access_logs_session ON access_logs (session_id, opened_at);
