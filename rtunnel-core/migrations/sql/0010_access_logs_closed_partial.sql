-- Retention looks access-log entries up by `closed_at` only once they are
-- closed (`closed_at < $1`). Entries still open (NULL) no longer go into
-- that index: every connection's open then writes one index entry fewer,
-- and the close one insert instead of a delete and an insert.
DROP INDEX access_logs_closed;
CREATE INDEX access_logs_closed ON access_logs (closed_at) WHERE closed_at IS NOT NULL;
