-- Retention (--audit-retention) deletes closed access-log entries by age.
CREATE INDEX access_logs_closed ON access_logs (closed_at);
