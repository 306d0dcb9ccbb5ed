-- Unread counts leave out messages addressed to others: only messages with
-- recipients are looked at, found through this index.
CREATE INDEX messages_addressed ON messages (conversation_id, seq)
    WHERE json_extract(body, '$.recipients') IS NOT NULL;

-- Conversation keys belong to the application (its bot) from now on. Until
-- now a user could set one, and the bot asking for that key later was
-- handed the user's conversation. A conversation the bot created has the
-- bot (participant id = the application id) as a member; keys of the
-- others were set by users and are taken back.
UPDATE conversations SET app_key = NULL
WHERE app_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM conversation_members m
                  WHERE m.conversation_id = conversations.id
                    AND m.user_id = conversations.app_id);
