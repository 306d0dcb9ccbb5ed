-- Full-text search over message text (SQLite FTS5, unicode61 tokenizer:
-- case-folded for Cyrillic and Latin alike, diacritics removed).
CREATE VIRTUAL TABLE message_search USING fts5(
    text,
    conversation_id UNINDEXED,
    seq UNINDEXED,
    tokenize = 'unicode61 remove_diacritics 2'
);
