-- Jabbridge's first schema (sqlite). Times are Unix milliseconds (BIGINT) and structured
-- data is JSON text, so that one set of queries serves SQLite and PostgreSQL alike.

-- A user registered with a bridge (XEP-0077) and what the bridge keeps for them.
CREATE TABLE registrations (
    bridge TEXT NOT NULL,
    jid TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, jid)
);

-- A foreign identity (phone number, IRC nick, endpoint) and the XMPP user it belongs to.
CREATE TABLE identities (
    bridge TEXT NOT NULL,
    foreign_id TEXT NOT NULL,
    jid TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, foreign_id)
);
CREATE INDEX identities_by_jid ON identities (bridge, jid);

-- XMPP message ids and the foreign network's ids for the same message, both ways.
CREATE TABLE message_ids (
    bridge TEXT NOT NULL,
    jid TEXT NOT NULL,
    xmpp_id TEXT NOT NULL,
    foreign_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, jid, xmpp_id)
);
CREATE INDEX message_ids_by_foreign ON message_ids (bridge, foreign_id);

-- Durable queues: outbox (XMPP -> foreign network) and inbox (foreign network -> XMPP).
-- A row is claimed by setting a lease and marked delivered_at once delivered; it stays, so
-- that dedupe_key keeps a message that arrives twice (a retried webhook, a resent stanza)
-- one delivery.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bridge TEXT NOT NULL,
    conversation TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    delivered_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (bridge, dedupe_key)
);
CREATE INDEX outbox_due ON outbox (bridge, next_attempt_at);

CREATE TABLE inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bridge TEXT NOT NULL,
    conversation TEXT NOT NULL,
    dedupe_key TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    delivered_at BIGINT,
    created_at BIGINT NOT NULL,
    UNIQUE (bridge, dedupe_key)
);
CREATE INDEX inbox_due ON inbox (bridge, next_attempt_at);
