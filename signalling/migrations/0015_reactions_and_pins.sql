-- Reactions and pins live beside their message, never in its body: an
-- edit rewrites the body and must not drop a reaction made meanwhile.
-- Each row's rowid keeps the order reactions came in.
CREATE TABLE message_reactions (
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

-- What the application chose for a conversation (no row: the defaults):
-- whether only it pins messages, whether members may mention @all.
CREATE TABLE conversation_settings (
    conversation_id  TEXT PRIMARY KEY REFERENCES conversations (id),
    pins_app_only    INTEGER NOT NULL DEFAULT 0,
    mention_all      INTEGER NOT NULL DEFAULT 1
);
