-- Conversations, members, messages, read marks, and the per-user event log
-- that WebSocket clients resume from. Portable SQL, as 0001.
--
-- Members and event logs name "participants": a user id, or the id of an
-- application for its bot; so they carry no foreign key to users.

CREATE TABLE conversations (
    id             TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL REFERENCES applications (id),
    title          TEXT NOT NULL,
    is_group       BOOLEAN NOT NULL,
    displayed      BOOLEAN NOT NULL,
    all_users      BOOLEAN NOT NULL DEFAULT FALSE,
    app_key        TEXT,
    context        TEXT,
    last_seq       BIGINT NOT NULL DEFAULT 0,
    last_activity  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (app_id, app_key),
    UNIQUE (app_id, context)
);

CREATE TABLE conversation_members (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL,
    joined_at        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON conversation_members (user_id);

-- author is a user id, or "app" for the application's bot.
CREATE TABLE messages (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    seq              BIGINT NOT NULL,
    id               TEXT NOT NULL UNIQUE,
    author           TEXT NOT NULL,
    client_id        TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    edited_at        BIGINT,
    deleted_at       BIGINT,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, author, client_id)
);

CREATE TABLE read_marks (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL REFERENCES users (id),
    seq              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- Every event a user must see, numbered per user; a reconnecting client
-- asks for everything after its last number.
CREATE TABLE user_event_heads (
    user_id   TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL
);

CREATE TABLE user_events (
    user_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
