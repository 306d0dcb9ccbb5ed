-- The PostgreSQL schema: the final SQLite schema (migrations/ 0001..0014)
-- written afresh rather than replayed. Ids are UUID text, times BIGINT
-- milliseconds since the Unix epoch, counters BIGINT.
--
-- Tenancy: subscribers own applications; applications own users.

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
-- The locked users, found without reading every user (every serving
-- process looks for new ones every few seconds).
CREATE INDEX users_locked ON users (id) WHERE locked;

-- One live code per (purpose, e-mail): a new request replaces the old one.
CREATE TABLE email_codes (
    purpose     TEXT NOT NULL,
    email       TEXT NOT NULL,
    code_hash   TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    tries       BIGINT NOT NULL DEFAULT 0,
    max_tries   BIGINT NOT NULL,
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

-- One row, rewritten by each health check: the smallest committed write,
-- so that a full disk shows in /healthz, and its end clears by itself.
CREATE TABLE store_probe (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at  BIGINT NOT NULL
);
