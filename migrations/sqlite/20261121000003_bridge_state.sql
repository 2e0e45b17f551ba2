-- A bridge's own durable state (Core::load / Core::save in the SDK): small JSON values by
-- key, such as a webhook endpoint disabled after a 410 Gone, shared by every instance.
CREATE TABLE bridge_state (
    bridge TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, key)
);
