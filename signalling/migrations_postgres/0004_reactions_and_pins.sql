-- Reactions and pins live beside their message, never in its body: an
-- edit rewrites the body and must not drop a reaction made meanwhile.
-- `id` keeps the order reactions came in.
CREATE TABLE message_reactions (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id  TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    emoji            TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    UNIQUE (conversation_id, seq, emoji, user_id),
    FOREIGN KEY (conversation_id, seq) REFERENCES messages (conversation_id, seq)
);

CREATE TABLE pinned_messages (
    conversation_id  TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    pinned_by        TEXT NOT NULL,
    pinned_at        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, seq),
    FOREIGN KEY (conversation_id, seq) REFERENCES messages (conversation_id, seq)
);

-- Who pins in a conversation: every member (no row), or only the
-- application.
CREATE TABLE conversation_pin_policy (
    conversation_id  TEXT PRIMARY KEY REFERENCES conversations (id),
    app_only         BOOLEAN NOT NULL
);
