-- Messages that mention anyone: the unread mention counts of the
-- conversation list and the `mentions` request look only at these.
CREATE INDEX messages_mentioning ON messages (conversation_id, seq)
    WHERE json_extract(body, '$.mentions') IS NOT NULL
       OR json_extract(body, '$.mention_all') IS NOT NULL;
