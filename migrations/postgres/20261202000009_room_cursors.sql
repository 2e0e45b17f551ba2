-- How far each room's fan-out is known to have reached the XMPP server (the last archive id
-- whose copies the server acknowledged). At start, what a room archived after it is sent
-- again to the resources still joined: at least once, and clients recognise a repeat by
-- the room's stanza-id.
CREATE TABLE room_cursors (
    bridge TEXT NOT NULL,
    room TEXT NOT NULL,
    sent_id BIGINT NOT NULL,
    PRIMARY KEY (bridge, room)
);
