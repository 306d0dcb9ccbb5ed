-- An event goes to the log of every user it notifies (500 of them for a
-- message in a channel of 500): its payload is now stored once, in
-- event_payloads, and each user's row points at it. Rows written before
-- keep their payload inline (payload_id NULL); new rows have payload NULL.
-- Every row pointing at a payload has its created_at, so pruning by age
-- removes a payload with the last row that needs it.
CREATE TABLE event_payloads (
    id          INTEGER PRIMARY KEY,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX event_payloads_by_age ON event_payloads (created_at);

CREATE TABLE user_events_shared (
    user_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    payload     TEXT,
    payload_id  INTEGER,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
INSERT INTO user_events_shared (user_id, seq, payload, created_at)
    SELECT user_id, seq, payload, created_at FROM user_events;
DROP TABLE user_events;
ALTER TABLE user_events_shared RENAME TO user_events;
CREATE INDEX user_events_by_age ON user_events (created_at);
