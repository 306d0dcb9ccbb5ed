-- Exports: archives of a conversation's or a user's conversations' messages
-- (with kept versions and attachments) built in the background; the
-- archive is an object of the file store, downloaded through a URL signed
-- with the export's own token.
CREATE TABLE exports (
    id                   TEXT PRIMARY KEY,
    app_id               TEXT NOT NULL REFERENCES applications (id),
    subscriber_id        TEXT NOT NULL,
    conversation_id      TEXT,
    user_id              TEXT,
    from_at              BIGINT NOT NULL,
    to_at                BIGINT NOT NULL,
    state                TEXT NOT NULL,
    conversations_total  BIGINT NOT NULL DEFAULT 0,
    conversations_done   BIGINT NOT NULL DEFAULT 0,
    messages             BIGINT NOT NULL DEFAULT 0,
    files                BIGINT NOT NULL DEFAULT 0,
    bytes                BIGINT NOT NULL DEFAULT 0,
    error                TEXT,
    token                TEXT NOT NULL,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    finished_at          BIGINT
);
CREATE INDEX exports_by_app ON exports (app_id, created_at);
