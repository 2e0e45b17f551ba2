-- Which instance runs each user's session (several instances on one PostgreSQL). `owner` is
-- NULL once released at an orderly shutdown; `last_owner` is the instance that ran it before,
-- whose room cursors say what its fan-out may not have sent.
CREATE TABLE sessions (
    bridge TEXT NOT NULL,
    jid TEXT NOT NULL,
    owner TEXT,
    last_owner TEXT,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, jid)
);
CREATE INDEX sessions_by_owner ON sessions (bridge, owner);

-- Stanzas that reached an instance other than their sender's session owner, waiting for the
-- owner to handle them (it is told at once with NOTIFY jabbridge_handoff on PostgreSQL).
CREATE TABLE handoffs (
    id BIGSERIAL PRIMARY KEY,
    bridge TEXT NOT NULL,
    jid TEXT NOT NULL,
    stanza TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX handoffs_by_user ON handoffs (bridge, jid, id);

-- Room cursors become per instance: each instance fans out to its own users.
DROP TABLE room_cursors;
CREATE TABLE room_cursors (
    bridge TEXT NOT NULL,
    room TEXT NOT NULL,
    instance TEXT NOT NULL,
    sent_id BIGINT NOT NULL,
    PRIMARY KEY (bridge, room, instance)
);
