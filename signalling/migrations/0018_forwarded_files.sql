-- A forwarded message shows its original's files by reference: each row
-- lets the readers of the forward (`message_id` in `conversation_id`)
-- fetch a file that belongs to another conversation's message.
CREATE TABLE file_references (
    file_id          TEXT NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    conversation_id  TEXT NOT NULL,
    message_id       TEXT NOT NULL,
    PRIMARY KEY (file_id, message_id)
);
