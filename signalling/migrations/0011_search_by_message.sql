-- Each message knows its row in the full-text index, so that an edit or a
-- deletion removes that row by its id instead of scanning the unindexed
-- conversation_id and seq columns of every application's index inside the
-- writer's transaction. The index is rebuilt once, keyed by message.
ALTER TABLE messages ADD COLUMN search_rowid INTEGER;
DELETE FROM message_search;
UPDATE messages SET search_rowid = rowid WHERE deleted_at IS NULL;
INSERT INTO message_search (rowid, text, conversation_id, seq)
    SELECT search_rowid, COALESCE(json_extract(body, '$.text'), ''), conversation_id, seq
    FROM messages WHERE search_rowid IS NOT NULL;
