-- The audit log: administrative actions, append-only (rows are only ever
-- inserted, and deleted by the audit retention), newest read first by id.
CREATE TABLE audit_log (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    at             BIGINT NOT NULL,
    subscriber_id  TEXT NOT NULL,
    app_id         TEXT,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT,
    source_ip      TEXT,
    details        TEXT
);
CREATE INDEX audit_log_by_subscriber ON audit_log (subscriber_id, id);
CREATE INDEX audit_log_by_time ON audit_log (at);
