//! Notices to a user about their own message: a XEP-0184 receipt, or an error saying why it
//! was not delivered. A notice is an inbox row, queued in the same transaction as the state
//! it reports (the outbox row delivered or failed, the delivery report cleared), so that a
//! crash may delay a notice but never lose it, nor send it for a state that was not stored.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use xmpp_parsers::{jid::Jid, minidom::Element};

use super::commit::{Committed, Done};
use super::{Delivery, Inboxed, dispatch, inbox};
use crate::store::{NewRow, Queue, Write};
use crate::xmpp::stanza::{self, StanzaFailure};

/// A notice, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Notice {
    /// What it says.
    pub says: Says,
    /// The sender's full JID: the notice goes to the resource that sent the message.
    pub to: String,
    /// The contact's JID: the notice comes from it.
    pub from: String,
    /// The stanza id of the message it is about.
    pub about: String,
    /// The notice's own stanza id, fixed when it is queued.
    pub id: String,
}

/// What a notice says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Says {
    /// The message was delivered (XEP-0184).
    Receipt,
    /// The message was not delivered, and why.
    Undelivered {
        /// Why, as the user reads it.
        reason: String,
    },
}

impl Notice {
    /// A notice from contact `from` to sender `to` about their message `about`.
    pub fn new(says: Says, to: &str, from: &str, about: &str) -> Self {
        Self {
            says,
            to: to.to_owned(),
            from: from.to_owned(),
            about: about.to_owned(),
            id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The stanza it becomes.
    pub fn stanza(&self) -> Result<Element, String> {
        match &self.says {
            Says::Receipt => {
                let sender: Jid = self.to.parse().map_err(|error| format!("{error}"))?;
                let contact: Jid = self.from.parse().map_err(|error| format!("{error}"))?;
                Ok(stanza::receipt(
                    contact,
                    sender,
                    &self.about,
                    self.id.clone(),
                ))
            }
            Says::Undelivered { reason } => {
                let failure = StanzaFailure::Unavailable(reason.clone());
                stanza::undelivered(&self.from, &self.to, self.about.clone(), &failure)
                    .ok_or_else(|| format!("'{}' cannot be answered", self.to))
            }
        }
    }
}

/// Queues `notice` to `user` (their bare JID) in the same transaction as `state`; `key`
/// names the notice among all of the bridge's (one per message and kind), so that it is
/// queued once. Once committed the notice goes to its lane; `committed` (if any) is told.
pub async fn queue_with(
    delivery: &Arc<Delivery>,
    state: Write,
    user: &str,
    key: String,
    notice: Notice,
    committed: Option<oneshot::Sender<Committed>>,
) {
    let lane = format!("notice\n{user}");
    let entry = Inboxed::Notice { notice };
    let payload = match serde_json::to_string(&entry) {
        Ok(payload) => payload,
        Err(error) => {
            // Cannot happen with these types; record the state at least.
            tracing::error!(%error, "a notice does not serialise");
            delivery.committer.submit(state, None).await;
            return;
        }
    };
    let row = Write::Enqueue(NewRow {
        queue: Queue::Inbox,
        bridge: delivery.domain.clone(),
        conversation: lane.clone(),
        dedupe_key: key,
        payload,
    });
    let queued = delivery.clone();
    let done: Done = Box::new(move |result| {
        if let Ok(Some(row)) = &result {
            let _span = queued.span.clone().entered();
            dispatch::incoming(&queued, lane, inbox::Item::new(*row, entry));
        }
        if let Some(committed) = committed {
            let _ = committed.send(result);
        }
    });
    delivery
        .committer
        .submit_together(state, row, Some(done))
        .await;
}
