-- The locked users, found without reading every user: a serving process
-- looks for new ones every few seconds to close their sessions, also when
-- another process (signalling admin lock-user) locked them.
CREATE INDEX users_locked ON users (id) WHERE locked;
