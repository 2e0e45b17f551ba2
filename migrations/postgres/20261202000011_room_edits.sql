-- Corrections (XEP-0308) and retractions (XEP-0424) in rooms. A correction is archived as a
-- message of its own that names, in `replaces`, the id the room showed for the message it
-- corrects; a retracted message keeps only a tombstone (`retracted_at`, its text emptied).
ALTER TABLE room_messages ADD COLUMN replaces TEXT;
ALTER TABLE room_messages ADD COLUMN retracted_at BIGINT;
-- The id of the poster's own stanza, which their client may name rather than the origin-id.
ALTER TABLE room_messages ADD COLUMN post_id TEXT;
CREATE INDEX room_messages_by_stanza_id ON room_messages (bridge, room, stanza_id);
CREATE INDEX room_messages_by_origin_id ON room_messages (bridge, room, origin_id);
CREATE INDEX room_messages_by_post_id ON room_messages (bridge, room, post_id);
