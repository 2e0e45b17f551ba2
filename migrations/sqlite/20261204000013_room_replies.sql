-- Replies (XEP-0461) in rooms: the message a room message replies to, by the stanza id the
-- room gave it, and the nick of who said it (the reply's `to`, an occupant JID).
ALTER TABLE room_messages ADD COLUMN reply_to TEXT;
ALTER TABLE room_messages ADD COLUMN reply_nick TEXT;
