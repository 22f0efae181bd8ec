-- API tokens can be revoked (token revoke, DELETE /api/v1/tokens/{id}).
ALTER TABLE api_tokens ADD COLUMN revoked_at BIGINT;
CREATE INDEX api_tokens_created ON api_tokens (created_at);
