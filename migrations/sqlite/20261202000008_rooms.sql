-- Group chats. Who of our users is in which room, per resource, under which nick: what the
-- gateway rejoins at start and resyncs when a client joins again.
CREATE TABLE room_joins (
    bridge TEXT NOT NULL,
    jid TEXT NOT NULL,
    room TEXT NOT NULL,
    resource TEXT NOT NULL,
    nick TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (bridge, jid, room, resource)
);
CREATE INDEX room_joins_by_room ON room_joins (bridge, room);
-- The room archive: every message said in a room, once however many of our users are in it
-- (unique per foreign id). History on join and MAM read it; the fan-out sends from it.
-- stanza_id is the XEP-0359 id the room gives it; origin_id the poster's own id when one of
-- our users posted it.
CREATE TABLE room_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    bridge TEXT NOT NULL,
    room TEXT NOT NULL,
    foreign_id TEXT NOT NULL,
    stanza_id TEXT NOT NULL,
    nick TEXT NOT NULL,
    sender TEXT NOT NULL,
    text TEXT NOT NULL,
    origin_id TEXT,
    poster TEXT,
    said_at BIGINT NOT NULL,
    UNIQUE (bridge, room, foreign_id)
);
CREATE INDEX room_messages_by_room ON room_messages (bridge, room, id);
CREATE INDEX room_messages_by_time ON room_messages (said_at);
