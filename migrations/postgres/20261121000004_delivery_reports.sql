-- A message sent to a network that reports delivery later (SMS status callbacks): what the
-- XEP-0184 receipt or the error message needs once the report arrives (JSON: the sender's
-- full JID, the contact's JID, the stanza id, whether a receipt was asked). Cleared when the
-- report is handled, so a repeated report does nothing.
ALTER TABLE message_ids ADD COLUMN pending_report TEXT;
