-- Calls that have started and not yet ended. The live state of a call is
-- in memory; this row lets a restarted server record the end of a call
-- that the previous process could not.
CREATE TABLE open_calls (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL REFERENCES applications (id),
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    started_at       BIGINT NOT NULL
);
