//! Accepting a message into a queue: it becomes a row written by the next batch commit, and
//! the commit's callback hands it to its lane. A repeat (same sender and id) is written once.

use std::sync::Arc;

use jabbridge_sdk::{CoreError, ForeignId, IncomingMessage};
use tokio::sync::oneshot;
use xmpp_parsers::jid::{BareJid, Jid};

use super::commit::{CommitError, Done};
use super::{
    Delivery, InboxEntry, Inboxed, OutboxEntry, bare, conversation, dispatch, inbox, outbox,
};
use crate::store::{NewRow, Queue, Write, millis, now_millis};
use crate::xmpp::stanza::{self, StanzaFailure};

/// Queues a user's message for the outbox. Returns once it is submitted, not committed: XMPP
/// has no acknowledgement to hold back, and the sender's next stanza should not wait for this
/// one's commit. The commit hands it to its lane (in submission order); if it fails, the
/// sender gets an error. A repeat of a message accepted before (same sender and id) is
/// dropped.
pub async fn outgoing(delivery: &Arc<Delivery>, entry: OutboxEntry) -> Result<(), StanzaFailure> {
    let user = bare(&entry.from);
    let payload = serde_json::to_string(&entry).map_err(|_| StanzaFailure::Internal)?;
    let lane = conversation(&user, &entry.contact);
    let write = Write::Enqueue(NewRow {
        queue: Queue::Outbox,
        bridge: delivery.domain.clone(),
        conversation: lane.clone(),
        dedupe_key: format!("{user}\n{}", entry.id),
        payload,
    });
    let accepted = delivery.clone();
    let done: Done = Box::new(move |committed| {
        let _span = accepted.span.clone().entered();
        match committed {
            Ok(Some(row)) => dispatch::outgoing(&accepted, lane, outbox::Item::new(row, entry)),
            Ok(None) => {
                tracing::debug!(id = entry.id, "a repeated message was not queued again");
            }
            Err(error) => {
                tracing::error!(%error, "cannot store a message in the outbox");
                let id = entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone());
                if let Some(reply) =
                    stanza::undelivered(&entry.to, &entry.from, id, &StanzaFailure::Internal)
                {
                    tokio::spawn(async move { accepted.send(reply).await });
                }
            }
        }
    });
    delivery.committer.submit(write, Some(done)).await;
    Ok(())
}

/// A bridge's message, checked by the gateway: `user` may receive it, and `from` is the
/// contact's JID.
pub struct Incoming {
    /// The message as the bridge gave it.
    pub message: IncomingMessage,
    /// Its recipient.
    pub user: BareJid,
    /// The JID the contact appears under.
    pub from: Jid,
}

/// What the bridge is told about its message: `Ok` once the core has it for good.
pub type Answer = oneshot::Sender<Result<(), CoreError>>;

/// Queues a bridge's message for the inbox. `answer` is told once it is committed (or could
/// not be); a repeat (same user and foreign id) is accepted without being queued again.
pub async fn incoming(delivery: &Arc<Delivery>, incoming: Incoming, answer: Answer) {
    let Incoming {
        message,
        user,
        from,
    } = incoming;
    if message.text.len() > super::MAX_TEXT {
        let _ = answer.send(Err(CoreError::Refused(format!(
            "the text is {} bytes; at most {} are carried",
            message.text.len(),
            super::MAX_TEXT
        ))));
        return;
    }
    let entry = InboxEntry {
        id: uuid::Uuid::new_v4().to_string(),
        foreign_id: message.foreign_id.to_string(),
        user: user.to_string(),
        from: from.to_string(),
        text: inbox::with_fallback(message.text, &message.attachments),
        attachments: message.attachments,
        sent_at: message.timestamp.map(millis),
        accepted_at: now_millis(),
    };
    let contact: &ForeignId = &message.contact;
    let lane = conversation(&entry.user, contact.as_str());
    let dedupe_key = format!("{}\n{}", entry.user, entry.foreign_id);
    let foreign_id = entry.foreign_id.clone();
    let entry = Inboxed::Message(entry);
    let payload = match serde_json::to_string(&entry) {
        Ok(payload) => payload,
        Err(error) => {
            let _ = answer.send(Err(CoreError::Refused(error.to_string())));
            return;
        }
    };
    let write = Write::Enqueue(NewRow {
        queue: Queue::Inbox,
        bridge: delivery.domain.clone(),
        conversation: lane.clone(),
        dedupe_key,
        payload,
    });
    let accepted = delivery.clone();
    let done: Done = Box::new(move |committed| {
        let _span = accepted.span.clone().entered();
        let told = match committed {
            Ok(Some(row)) => {
                dispatch::incoming(&accepted, lane, inbox::Item::new(row, entry));
                Ok(())
            }
            Ok(None) => {
                tracing::debug!(
                    foreign_id,
                    "a repeated foreign message was not queued again"
                );
                Ok(())
            }
            Err(error) => Err(not_stored(&error)),
        };
        let _ = answer.send(told);
    });
    delivery.committer.submit(write, Some(done)).await;
}

fn not_stored(error: &CommitError) -> CoreError {
    tracing::error!(%error, "cannot store a message in the inbox");
    CoreError::Unavailable("the gateway cannot store messages right now; try again".into())
}
