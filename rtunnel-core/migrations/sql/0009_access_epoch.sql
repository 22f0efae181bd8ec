-- A counter every change that can take access away moves on (a grant
-- revoked, a user disabled, a token or login ended, a system deleted), in
-- the change's own transaction. Each server node watches this one row
-- instead of every open connection asking the database again.
CREATE TABLE access_epoch (
    id INTEGER PRIMARY KEY,
    epoch BIGINT NOT NULL
);
INSERT INTO access_epoch (id, epoch) VALUES (1, 0);
