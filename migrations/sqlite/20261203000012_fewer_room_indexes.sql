-- A poster's own ids (the origin-id, and the id of their stanza) are looked up among a room's
-- most recent messages (RECENT in src/store/rooms.rs), not through indexes of their own: two
-- b-trees fewer for every archived message to update. The room's stanza ids keep theirs.
DROP INDEX room_messages_by_origin_id;
DROP INDEX room_messages_by_post_id;
