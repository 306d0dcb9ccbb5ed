-- Retention: messages (and their files) older than `days` are deleted.
-- A row with conversation_id '' is the application's policy; one naming a
-- conversation overrides it (days 0: kept forever).
CREATE TABLE retention_policies (
    app_id           TEXT NOT NULL REFERENCES applications (id),
    conversation_id  TEXT NOT NULL,
    days             BIGINT NOT NULL,
    PRIMARY KEY (app_id, conversation_id)
);

-- Legal holds: while one is not released, nothing it covers is deleted
-- (by retention or by its author: the version before a delete or an edit
-- is kept in held_copies, hidden from users). A hold names a conversation
-- or a user (every conversation the user is in, and what the user wrote).
CREATE TABLE legal_holds (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL REFERENCES applications (id),
    conversation_id  TEXT,
    user_id          TEXT,
    reason           TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    released_at      BIGINT
);
CREATE INDEX legal_holds_live ON legal_holds (app_id) WHERE released_at IS NULL;

CREATE TABLE held_copies (
    message_id       TEXT NOT NULL,
    conversation_id  TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    author           TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    why              TEXT NOT NULL,
    kept_at          BIGINT NOT NULL
);
CREATE INDEX held_copies_by_conversation ON held_copies (conversation_id, seq);
CREATE INDEX held_copies_by_message ON held_copies (message_id);
