-- Tenancy: subscribers own applications; applications own users.
-- Portable SQL (SQLite and PostgreSQL): ids are UUID strings, times are
-- BIGINT milliseconds since the Unix epoch.

CREATE TABLE subscribers (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE applications (
    id                    TEXT PRIMARY KEY,
    subscriber_id         TEXT NOT NULL REFERENCES subscribers (id),
    name                  TEXT NOT NULL,
    secret_hash           TEXT NOT NULL,
    token_key             TEXT NOT NULL,
    prev_token_key        TEXT,
    prev_token_key_until  BIGINT,
    created_at            BIGINT NOT NULL,
    unregistered_at       BIGINT
);
CREATE INDEX applications_by_subscriber ON applications (subscriber_id);

CREATE TABLE users (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL REFERENCES applications (id),
    external_id  TEXT NOT NULL,
    name         TEXT NOT NULL,
    email        TEXT,
    locked       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT NOT NULL,
    UNIQUE (app_id, external_id)
);

-- One live code per (purpose, e-mail): a new request replaces the old one.
CREATE TABLE email_codes (
    purpose     TEXT NOT NULL,
    email       TEXT NOT NULL,
    code_hash   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    tries       INTEGER NOT NULL DEFAULT 0,
    max_tries   INTEGER NOT NULL,
    used        BOOLEAN NOT NULL DEFAULT FALSE,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (purpose, email)
);

CREATE TABLE subscriber_sessions (
    token_hash     TEXT PRIMARY KEY,
    subscriber_id  TEXT NOT NULL REFERENCES subscribers (id),
    expires_at     BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
