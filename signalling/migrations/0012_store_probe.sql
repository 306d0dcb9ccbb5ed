-- One row, rewritten by each health check: the smallest committed write,
-- so that a full disk shows in /healthz, and its end clears by itself.
CREATE TABLE store_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at BIGINT NOT NULL
);
