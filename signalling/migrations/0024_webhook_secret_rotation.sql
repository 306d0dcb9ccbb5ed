-- A rotated endpoint secret: the one it replaced keeps signing beside
-- the new one until `previous_until` (milliseconds since the epoch), so
-- that a receiver can switch without losing deliveries.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secret TEXT;
ALTER TABLE webhook_endpoints ADD COLUMN previous_until BIGINT;
