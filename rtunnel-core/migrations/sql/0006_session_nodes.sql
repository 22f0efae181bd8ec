-- The server node holding each session's tunnel: a node restarting
-- recovers only its own sessions, and the others notice a node that died.

ALTER TABLE sessions ADD COLUMN node_id TEXT;
CREATE INDEX sessions_node ON sessions (node_id, status);
