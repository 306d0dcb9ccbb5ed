-- Files attached to messages. A row is created when a member asks to
-- upload (state 'pending', counted against the application's quota at
-- once), becomes 'ready' when the bytes are in storage and checked, and is
-- bound to a message when one attaches it. The bytes live in the storage
-- backend under "<app_id>/<id>" (and "<app_id>/<id>.preview.jpg").
CREATE TABLE files (
    id                TEXT PRIMARY KEY,
    app_id            TEXT NOT NULL REFERENCES applications (id),
    conversation_id   TEXT NOT NULL REFERENCES conversations (id),
    uploader          TEXT NOT NULL,
    name              TEXT NOT NULL,
    content_type      TEXT NOT NULL,
    size              BIGINT NOT NULL,
    declared_sha256   TEXT,
    sha256            TEXT,
    state             TEXT NOT NULL,
    message_id        TEXT,
    preview_width     BIGINT,
    preview_height    BIGINT,
    created_at        BIGINT NOT NULL,
    upload_expires_at BIGINT NOT NULL
);
CREATE INDEX files_by_app ON files (app_id);
CREATE INDEX files_by_message ON files (message_id);
CREATE INDEX files_by_age ON files (state, created_at);

-- Files whose rows are gone but whose bytes may still be in storage; the
-- sweeper deletes the objects at `not_before`, then the row here. Written
-- in the same transaction that forgets the file, so no object is ever
-- orphaned. An upload URL still alive may put an object back: until
-- `upload_until` (its expiry plus a grace) the entry is swept again.
CREATE TABLE file_garbage (
    id            TEXT PRIMARY KEY,
    app_id        TEXT NOT NULL,
    not_before    BIGINT NOT NULL,
    upload_until  BIGINT NOT NULL
);
CREATE INDEX file_garbage_due ON file_garbage (not_before);
