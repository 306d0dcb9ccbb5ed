-- A reply names its thread's root in its body (`thread_seq`); this
-- column reads it there, and the index finds a thread's replies and
-- counts them without a scan.
ALTER TABLE messages ADD COLUMN thread_seq INTEGER
    GENERATED ALWAYS AS (json_extract(body, '$.thread_seq')) VIRTUAL;
CREATE INDEX messages_thread ON messages (conversation_id, thread_seq, seq)
    WHERE thread_seq IS NOT NULL;

-- Each user's read mark in a thread (the conversation's own read mark
-- is apart, in read_marks).
CREATE TABLE thread_read_marks (
    conversation_id  TEXT NOT NULL,
    root_seq         BIGINT NOT NULL,
    user_id          TEXT NOT NULL,
    seq              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, root_seq, user_id)
);

-- Who follows a thread: its root's author, whoever replied, whoever
-- asked to.
CREATE TABLE thread_followers (
    conversation_id  TEXT NOT NULL,
    root_seq         BIGINT NOT NULL,
    user_id          TEXT NOT NULL,
    PRIMARY KEY (conversation_id, root_seq, user_id)
);
CREATE INDEX thread_followers_by_user ON thread_followers (user_id);
