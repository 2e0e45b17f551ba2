-- The line-rate pipeline (issue 11): messages are dispatched from memory by the instance
-- that accepted them, and read back only at start, when another instance's messages are
-- taken over, or after a shutdown released them. An instance is alive while its heartbeat
-- is recent; the rows it holds carry its id in lease_owner (lease_until is no longer used).
CREATE TABLE instances (
    id TEXT PRIMARY KEY,
    heartbeat_at BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);
-- Claims no longer scan for the next row of a conversation: these indexes only cost writes.
DROP INDEX outbox_undelivered;
DROP INDEX outbox_conversation;
DROP INDEX inbox_undelivered;
DROP INDEX inbox_conversation;
-- What a takeover, a release and the pending counts look for.
CREATE INDEX outbox_owner ON outbox (bridge, lease_owner) WHERE delivered_at IS NULL;
CREATE INDEX inbox_owner ON inbox (bridge, lease_owner) WHERE delivered_at IS NULL;
-- The sweep of old id mappings.
CREATE INDEX message_ids_created ON message_ids (created_at);
