//! The outbox lane's work: sending one user's message through the bridge, retrying
//! transient failures in place, and telling the sender how it went (a receipt or an error,
//! queued as a [`notice`]), at once or when the network's delivery report comes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::{
    CoreError, Correction, DeliveryReport, ForeignId, MessageId, OutgoingMessage, SendError,
    UserJid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::commit::CommitError;
use super::notice::{self, Notice, Says};
use super::{Delivery, OutboxEntry, bare};
use crate::metrics;
use crate::store::{Queue, Write, from_now, now_millis};
use crate::xmpp::session::backoff;

/// A queued user's message in its conversation's lane.
#[derive(Debug)]
pub struct Item {
    row: i64,
    entry: OutboxEntry,
    /// Failed attempts so far.
    attempts: u32,
    /// Not to be tried before this (Unix ms), after a failure.
    due: i64,
}

impl Item {
    /// A message just committed as `row`.
    pub fn new(row: i64, entry: OutboxEntry) -> Self {
        Self::recovered(row, entry, 0, 0)
    }

    /// A message read back from `row`, tried `attempts` times, due at `due` (Unix ms).
    pub fn recovered(row: i64, entry: OutboxEntry, attempts: u32, due: i64) -> Self {
        Self {
            row,
            entry,
            attempts,
            due,
        }
    }
}

/// What answering a later delivery report needs, kept with the message id mapping (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PendingReport {
    /// The sender's full JID.
    from: String,
    /// The contact's JID.
    to: String,
    /// The id the receipt or error refers to.
    stanza_id: String,
    /// Whether the sender asked for a receipt.
    receipt: bool,
}

/// How long a delivery report waits for the message it is about to be recorded: a network
/// may report before the core has written down what the bridge's send returned.
const REPORT_WAIT: Duration = Duration::from_secs(3);

/// What one attempt at sending came to.
enum Attempt {
    /// Delivered, refused or given up on: the lane moves on.
    Done,
    /// Not tried (the database did not answer); again after this long, not counted.
    Again(Duration),
    /// A temporary failure: counted, and tried again after the backoff (or after the wait
    /// the network asked for, if longer).
    Failed(String, Option<Duration>),
}

/// Sends one user's message, retrying transient failures in place (the conversation's later
/// messages wait), until it is delivered, refused, or given up on.
pub async fn send(delivery: &Arc<Delivery>, mut item: Item) {
    loop {
        let wait = item.due.saturating_sub(now_millis());
        if wait > 0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())) => {}
                () = delivery.shutdown.clone().wait() => return,
            }
        }
        let delay = match attempt(delivery, &item).await {
            Attempt::Done => return,
            Attempt::Again(delay) => delay,
            Attempt::Failed(reason, retry_after) => {
                item.attempts = item.attempts.saturating_add(1);
                if item.attempts >= delivery.config.max_attempts {
                    let reason = format!("gave up after {} attempts: {reason}", item.attempts);
                    give_up(delivery, &item, &reason).await;
                    return;
                }
                let backoff = backoff(item.attempts - 1, delivery.config.retry_max);
                retry_after.map_or(backoff, |wait| backoff.max(wait))
            }
        };
        item.due = from_now(delay);
        if delay > Duration::from_secs(1) {
            // Recorded, so that a restart waits too (and counts the attempt).
            let retry = Write::Retry {
                queue: Queue::Outbox,
                id: item.row,
                at: item.due,
            };
            delivery.committer.submit(retry, None).await;
        }
    }
}

/// One attempt at sending.
async fn attempt(delivery: &Arc<Delivery>, item: &Item) -> Attempt {
    let entry = &item.entry;
    let user = bare(&entry.from);
    let store = &delivery.store;
    let registration = match store.registration(&delivery.domain, &user).await {
        Ok(registration) => registration,
        Err(error) => {
            tracing::warn!(%error, "cannot read a registration; retrying");
            return Attempt::Again(Duration::from_secs(1));
        }
    };
    // Only a bridge with registration asks, and only about a user without one. A store
    // error counts as a member: the bridge's own lookup will fail transiently instead.
    if registration.is_none() && delivery.bridge.registers() {
        let owns_identity = store
            .identities_of(&delivery.domain, &user)
            .await
            .map(|identities| !identities.is_empty())
            .unwrap_or(true);
        if !owns_identity {
            let reason = format!("you are no longer registered with {}", delivery.domain);
            give_up(delivery, item, &reason).await;
            return Attempt::Done;
        }
    }
    let replaces = match &entry.replaces {
        Some(xmpp_id) => Some(Correction {
            xmpp_id: MessageId::new(xmpp_id.as_str()),
            foreign_id: store
                .foreign_message_id(&delivery.domain, &user, xmpp_id)
                .await
                .ok()
                .flatten()
                .map(MessageId::new),
        }),
        None => None,
    };
    let message = OutgoingMessage {
        id: MessageId::new(entry.id.as_str()),
        user: UserJid::new(user.as_str()),
        contact: ForeignId::new(entry.contact.as_str()),
        text: entry.text.clone(),
        attachments: entry.attachments.clone(),
        accepted_at: entry
            .accepted_at
            .and_then(|at| u64::try_from(at).ok())
            .map_or_else(SystemTime::now, |at| UNIX_EPOCH + Duration::from_millis(at)),
        registration,
        replaces,
        room: entry.room.as_deref().map(ForeignId::new),
    };
    let sent = delivery
        .calls
        .run("the message", delivery.bridge.send_message(message))
        .await
        .unwrap_or_else(|timeout| {
            Err(SendError::Transient {
                reason: timeout.to_string(),
                retry_after: None,
            })
        });
    let domain = delivery.domain.as_str();
    match sent {
        Ok(outcome) => {
            metrics::delivery(domain, "ok");
            let complete = Write::Complete {
                queue: Queue::Outbox,
                id: item.row,
            };
            let report_follows = outcome.report_follows();
            match (report_follows, entry.receipt, &entry.stanza_id) {
                (false, true, Some(stanza_id)) => {
                    let receipt = Notice::new(Says::Receipt, &entry.from, &entry.to, stanza_id);
                    let key = format!("receipt\n{}", item.row);
                    notice::queue_with(delivery, complete, &user, key, receipt, None).await;
                }
                _ => delivery.committer.submit(complete, None).await,
            }
            if let Some(foreign_id) = outcome.foreign_id() {
                let pending_report = report_follows.then(|| {
                    let pending = PendingReport {
                        from: entry.from.clone(),
                        to: entry.to.clone(),
                        stanza_id: entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone()),
                        receipt: entry.receipt && entry.stanza_id.is_some(),
                    };
                    serde_json::to_string(&pending).unwrap_or_default()
                });
                let mapping = Write::MapId {
                    bridge: delivery.domain.clone(),
                    jid: user.clone(),
                    xmpp_id: entry.id.clone(),
                    foreign_id: foreign_id.to_string(),
                    pending_report,
                };
                if report_follows {
                    // Committed (in a batch with others) before the lane goes on: the
                    // report may come at once.
                    if let Err(error) = delivery.committer.commit(mapping).await {
                        tracing::warn!(%error, "cannot record a message awaiting a delivery report");
                    }
                } else {
                    delivery.committer.submit(mapping, None).await;
                }
            }
            Attempt::Done
        }
        Err(SendError::Permanent { reason }) => {
            metrics::delivery(domain, "permanent");
            give_up(delivery, item, &reason).await;
            Attempt::Done
        }
        Err(SendError::Transient {
            reason,
            retry_after,
        }) => {
            metrics::delivery(domain, "transient");
            tracing::warn!(%reason, attempts = item.attempts + 1, "delivery failed; will retry");
            Attempt::Failed(reason, retry_after)
        }
    }
}

/// Gives up on a user's message and tells them why, as an error from the contact: the
/// failure and the notice are committed together.
async fn give_up(delivery: &Arc<Delivery>, item: &Item, reason: &str) {
    tracing::info!(%reason, "message not delivered");
    let fail = Write::Fail {
        queue: Queue::Outbox,
        id: item.row,
        reason: reason.to_owned(),
    };
    let entry = &item.entry;
    let about = entry.stanza_id.as_deref().unwrap_or(&entry.id);
    let says = Says::Undelivered {
        reason: reason.to_owned(),
    };
    let error = Notice::new(says, &entry.from, &entry.to, about);
    let key = format!("undelivered\n{}", item.row);
    notice::queue_with(delivery, fail, &bare(&entry.from), key, error, None).await;
}

/// Acts on a bridge's delivery report about the message the network knows as `foreign_id`:
/// a receipt (if asked) or an error message to its sender, once. Unknown messages and
/// repeated reports are ignored, and so is a report vouched for by `only_for` (a user's own
/// credentials) about a message someone else sent.
pub async fn delivery_report(
    delivery: &Arc<Delivery>,
    foreign_id: &str,
    only_for: Option<&str>,
    report: DeliveryReport,
) -> Result<(), CoreError> {
    let deadline = tokio::time::Instant::now() + REPORT_WAIT;
    let pending = loop {
        match delivery
            .store
            .pending_report(&delivery.domain, foreign_id)
            .await
        {
            Ok(Some(pending)) => break pending,
            Ok(None) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(None) => {
                tracing::debug!(
                    foreign_id,
                    "a delivery report about no message awaiting one"
                );
                return Ok(());
            }
            Err(error) => {
                tracing::error!(%error, "cannot read a message awaiting a delivery report");
                return Err(CoreError::Unavailable(
                    "the gateway cannot reach its database right now".into(),
                ));
            }
        }
    };
    let Ok(pending) = serde_json::from_str::<PendingReport>(&pending) else {
        tracing::error!(foreign_id, "a stored delivery report record does not parse");
        return Ok(());
    };
    if let Some(user) = only_for
        && bare(&pending.from) != user
    {
        // Signed with one user's own account, about another's message: not theirs to report.
        metrics::delivery(&delivery.domain, "report-refused");
        tracing::warn!(
            foreign_id,
            signer = user,
            "ignored a delivery report signed by one user's account about another's message"
        );
        return Ok(());
    }
    let says = match report {
        DeliveryReport::Delivered => {
            metrics::delivery(&delivery.domain, "reported-delivered");
            pending.receipt.then_some(Says::Receipt)
        }
        DeliveryReport::Failed(reason) => {
            metrics::delivery(&delivery.domain, "reported-failed");
            tracing::info!(%reason, "the network reported a message undelivered");
            Some(Says::Undelivered {
                reason: format!("not delivered: {reason}"),
            })
        }
    };
    // The report is cleared in the transaction that queues the notice, and the bridge hears
    // back only once both are stored: a report repeated meanwhile queues it once (same key).
    let clear = Write::ClearReport {
        bridge: delivery.domain.clone(),
        foreign_id: foreign_id.to_owned(),
    };
    let committed = match says {
        Some(says) => {
            let notice = Notice::new(says, &pending.from, &pending.to, &pending.stanza_id);
            let key = format!("report\n{foreign_id}");
            let (told, answer) = oneshot::channel();
            let user = bare(&pending.from);
            notice::queue_with(delivery, clear, &user, key, notice, Some(told)).await;
            answer.await.unwrap_or(Err(CommitError::Stopped))
        }
        None => delivery.committer.commit(clear).await,
    };
    committed.map(|_| ()).map_err(|error| {
        tracing::error!(%error, "cannot record a delivery report");
        CoreError::Unavailable("the gateway cannot store this report right now".into())
    })
}
