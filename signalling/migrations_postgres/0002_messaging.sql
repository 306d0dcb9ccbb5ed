-- Conversations, members, messages, read marks, grants, open calls, and
-- the per-user event log that WebSocket clients resume from.
--
-- Members and event logs name "participants": a user id, or the id of an
-- application for its bot; so they carry no foreign key to users.

CREATE TABLE conversations (
    id             TEXT PRIMARY KEY,
    app_id         TEXT NOT NULL REFERENCES applications (id),
    title          TEXT NOT NULL,
    is_group       BOOLEAN NOT NULL,
    displayed      BOOLEAN NOT NULL,
    all_users      BOOLEAN NOT NULL DEFAULT FALSE,
    app_key        TEXT,
    context        TEXT,
    last_seq       BIGINT NOT NULL DEFAULT 0,
    last_activity  BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    UNIQUE (app_id, app_key),
    UNIQUE (app_id, context)
);
-- A user's conversations are its memberships plus its application's
-- "all users" conversations, found here.
CREATE INDEX conversations_for_all_users ON conversations (app_id) WHERE all_users;

CREATE TABLE conversation_members (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL,
    joined_at        BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);
CREATE INDEX members_by_user ON conversation_members (user_id);

-- The words of a message body's text for full-text search. The `russian`
-- configuration stems Cyrillic words with the Russian stemmer and Latin
-- ones with the English stemmer (and drops both languages' stop words);
-- `simple` adds every word as written, lower-cased, so that a stop word
-- ("не", "the") is still found and a prefix typed by a user matches the
-- word even where the stemmer cut it shorter ("runn" finds "running",
-- stored as "run" by the stemmer). A search asks for each word's prefix
-- in either form.
CREATE FUNCTION confer_search_vector(body TEXT) RETURNS tsvector
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
        SELECT to_tsvector('pg_catalog.russian'::regconfig, COALESCE(body::jsonb ->> 'text', ''))
            || to_tsvector('pg_catalog.simple'::regconfig, COALESCE(body::jsonb ->> 'text', ''))
    $$;

-- What a search asks for: every word, as a prefix, stemmed (`russian`) or
-- as written (`simple`). Each word is quoted as a tsquery literal, so no
-- input is query syntax (the store also keeps only letters and digits).
-- NULL for no words.
CREATE FUNCTION confer_search_query(words TEXT[]) RETURNS tsquery
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
    DECLARE
        found tsquery;
        word TEXT;
        quoted TEXT;
        term tsquery;
    BEGIN
        FOREACH word IN ARRAY words LOOP
            CONTINUE WHEN word IS NULL OR btrim(word) = '';
            quoted := '''' || replace(replace(word, '\', '\\'), '''', '''''') || ''':*';
            term := to_tsquery('pg_catalog.russian'::regconfig, quoted)
                || to_tsquery('pg_catalog.simple'::regconfig, quoted);
            found := CASE WHEN found IS NULL THEN term ELSE found && term END;
        END LOOP;
        RETURN found;
    END
    $$;

-- author is a user id, or "app" for the application's bot; body is the
-- message's JSON document. `search` follows every edit by itself; a
-- deleted message's body is empty.
CREATE TABLE messages (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    seq              BIGINT NOT NULL,
    id               TEXT NOT NULL UNIQUE,
    author           TEXT NOT NULL,
    client_id        TEXT NOT NULL,
    body             TEXT NOT NULL,
    created_at       BIGINT NOT NULL,
    edited_at        BIGINT,
    deleted_at       BIGINT,
    search           tsvector GENERATED ALWAYS AS (confer_search_vector(body)) STORED,
    PRIMARY KEY (conversation_id, seq),
    UNIQUE (conversation_id, author, client_id)
);
CREATE INDEX messages_search ON messages USING GIN (search);
-- Unread counts leave out messages addressed to others: only messages with
-- recipients are looked at, found through this index.
CREATE INDEX messages_addressed ON messages (conversation_id, seq)
    WHERE (body::jsonb -> 'recipients') IS NOT NULL;

CREATE TABLE read_marks (
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    user_id          TEXT NOT NULL REFERENCES users (id),
    seq              BIGINT NOT NULL,
    PRIMARY KEY (conversation_id, user_id)
);

-- Every event a user must see, numbered per user; a reconnecting client
-- asks for everything after its last number. The head row holds the last
-- number given: the writer locks it to number (see store/pg_writer.rs),
-- so a user's events commit in the order of their numbers.
CREATE TABLE user_event_heads (
    user_id   TEXT PRIMARY KEY,
    last_seq  BIGINT NOT NULL
);

-- An event is stored once, whatever the number of users it notifies; each
-- user's row points at it. Every row pointing at a payload has its
-- created_at, so pruning by age removes a payload with the last row that
-- needs it.
CREATE TABLE event_payloads (
    id          BIGSERIAL PRIMARY KEY,
    payload     TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX event_payloads_by_age ON event_payloads (created_at);

CREATE TABLE user_events (
    user_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    payload_id  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);
CREATE INDEX user_events_by_age ON user_events (created_at);

-- Server-to-server grants: the application says a user may see a business
-- object (context), besides the `ctx` claim of the user's token.
CREATE TABLE context_grants (
    app_id      TEXT NOT NULL REFERENCES applications (id),
    user_id     TEXT NOT NULL REFERENCES users (id),
    context     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id, context)
);

-- Calls that have started and not yet ended (the live state is in
-- memory; this row lets a restarted server record the end of a call).
CREATE TABLE open_calls (
    id               TEXT PRIMARY KEY,
    app_id           TEXT NOT NULL REFERENCES applications (id),
    conversation_id  TEXT NOT NULL REFERENCES conversations (id),
    started_at       BIGINT NOT NULL
);
