-- The full-text index is no longer written in the transaction that stores
-- a message: the message writer indexes new and edited messages in batches
-- between its commits (and before any search runs). The messages still to
-- index are those without an index row that are not deleted.
CREATE INDEX messages_unindexed ON messages (conversation_id, seq)
    WHERE search_rowid IS NULL AND deleted_at IS NULL;
