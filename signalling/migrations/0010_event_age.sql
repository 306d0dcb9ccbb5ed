-- Pruning deletes events by age: without this index it read every event of
-- every user inside the writer's transaction.
CREATE INDEX user_events_by_age ON user_events (created_at);
