-- Messages to the foreign network counted per UTC day, for a bridge's `spend_limit`: one row
-- for the whole bridge (subject '') and one per user, shared by every instance.
CREATE TABLE spend (
    bridge TEXT NOT NULL,
    subject TEXT NOT NULL,
    day BIGINT NOT NULL,
    count BIGINT NOT NULL,
    PRIMARY KEY (bridge, subject, day)
);
