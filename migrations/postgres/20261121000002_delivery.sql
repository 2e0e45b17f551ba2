-- Delivery bookkeeping: why a message was given up on, and indexes that keep claiming fast
-- however many delivered rows are kept for de-duplication.
-- The first schema's "due" indexes covered delivered rows too, which made every claim scan
-- them all; the partial indexes below cover only what is waiting.
DROP INDEX outbox_due;
DROP INDEX inbox_due;
ALTER TABLE outbox ADD COLUMN failure TEXT;
ALTER TABLE inbox ADD COLUMN failure TEXT;
CREATE INDEX outbox_undelivered ON outbox (bridge, id) WHERE delivered_at IS NULL;
CREATE INDEX outbox_conversation ON outbox (bridge, conversation, id) WHERE delivered_at IS NULL;
CREATE INDEX outbox_delivered ON outbox (delivered_at);
CREATE INDEX inbox_undelivered ON inbox (bridge, id) WHERE delivered_at IS NULL;
CREATE INDEX inbox_conversation ON inbox (bridge, conversation, id) WHERE delivered_at IS NULL;
CREATE INDEX inbox_delivered ON inbox (delivered_at);
