-- Messages that mention anyone: the unread mention counts of the
-- conversation list and the `mentions` request look only at these.
CREATE INDEX messages_mentioning ON messages (conversation_id, seq)
    WHERE (body::jsonb -> 'mentions') IS NOT NULL
       OR (body::jsonb -> 'mention_all') IS NOT NULL;
