-- Incoming webhooks: a secret URL that posts into one conversation as the
-- application's bot. Only the SHA-256 digest of the URL's token is kept.
CREATE TABLE incoming_webhooks (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL REFERENCES applications (id),
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    name             TEXT NOT NULL,
    token_digest     TEXT NOT NULL UNIQUE,
    created_at       BIGINT NOT NULL,
    revoked_at       BIGINT
);
CREATE INDEX incoming_webhooks_by_conversation ON incoming_webhooks (conversation_id);
