-- Outgoing webhooks: endpoints an application's events are posted to,
-- and the durable outbox of deliveries. Events come from the per-user log
-- of the application's webhook sink; `webhook_cursors` says how far it
-- has been turned into deliveries.
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES applications (id),
    url         TEXT NOT NULL,
    kinds       TEXT NOT NULL,
    secret      TEXT NOT NULL,
    start_seq   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX webhook_endpoints_by_app ON webhook_endpoints (app_id);

CREATE TABLE webhook_cursors (
    app_id  TEXT PRIMARY KEY,
    seq     BIGINT NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id),
    app_id           TEXT NOT NULL,
    event_seq        BIGINT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    state            TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_status      INTEGER,
    last_error       TEXT,
    last_attempt_at  BIGINT,
    created_at       BIGINT NOT NULL,
    UNIQUE (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_log ON webhook_deliveries (endpoint_id, created_at, id);
