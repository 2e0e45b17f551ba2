//! The durable message flow of one bridge. A message accepted from either side is committed
//! (with others, [`crate::commit`]) before anyone is told it was accepted; the commit hands it
//! to its conversation's lane in memory, which delivers it and records the outcome (again in
//! batches). The database is read back only at start, when another instance's messages are
//! taken over, and after a shutdown released them: a crash loses nothing, and an instance
//! delivers only the rows it holds.
//!
//! - Outbox (XMPP → foreign network): [`Gateway::accept_outgoing`] queues; the lane calls
//!   [`jabbridge_sdk::Bridge::send_message`], retries transient failures with capped
//!   exponential backoff (holding the conversation's later messages back), and answers with
//!   a receipt or an error message: at once, or when the bridge passes on the network's
//!   delivery report ([`Gateway::delivery_report`]).
//! - Inbox (foreign network → XMPP): [`Gateway::accept_incoming`] queues (de-duplicated by
//!   the foreign id) and returns once committed; the lane writes the stanza to the component
//!   link once it is up and marks the row delivered once the stanza is on the server's socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::{
    Attachment, CoreError, Correction, DeliveryReport, ForeignId, IncomingMessage, MessageId,
    OutgoingMessage, SendError, UserJid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use xmpp_parsers::{
    date::DateTime,
    delay::Delay,
    jid::{BareJid, Jid},
    message::{Id, Lang, Message},
    oob::Oob,
    receipts::Received,
    stanza_id::OriginId,
};

use crate::commit::{CommitError, Committed, Done};
use crate::lanes::{Lanes, Pushed};
use crate::metrics;
use crate::router::Gateway;
use crate::store::{NewRow, Queue, Recovered, Write, from_now, millis, now_millis};
use crate::xmpp::session::{NotWritten, backoff};
use crate::xmpp::stanza::{StanzaFailure, StanzaHeader, StanzaKind, error_reply};

/// The longest text carried either way, in bytes. Prosody drops a component that sends a
/// stanza over 512 KiB; no chat message needs more than this.
pub const MAX_TEXT: usize = 64 * 1024;
/// A late delivery (this long after the message was accepted) carries a XEP-0203 delay.
const LATE: Duration = Duration::from_secs(5);
/// How often delivered rows older than `delivery.keep_delivered` are deleted.
const SWEEP: Duration = Duration::from_secs(3600);

/// A user's message waiting in the outbox, as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The XMPP id of the message: origin-id, else the stanza id, else one we made.
    pub id: String,
    /// The stanza's `id` attribute, which receipts and errors refer to.
    pub stanza_id: Option<String>,
    /// The sender's full JID (errors and receipts go back to that resource).
    pub from: String,
    /// The contact's JID as the user addressed it.
    pub to: String,
    /// The contact's foreign address.
    pub contact: String,
    /// The text.
    pub text: String,
    /// Whether the sender asked for a XEP-0184 receipt.
    pub receipt: bool,
    /// The XMPP id of the message this one corrects (XEP-0308).
    pub replaces: Option<String>,
    /// XEP-0066 out-of-band URLs the message carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// When we accepted it, Unix ms (absent in rows queued before this field existed).
    #[serde(default)]
    pub accepted_at: Option<i64>,
}

/// A bridge's message waiting in the inbox, as stored (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InboxEntry {
    /// The id the stanza carries (and its origin-id): fixed at acceptance, so that a
    /// redelivery after a crash carries the same id.
    id: String,
    foreign_id: String,
    user: String,
    /// The contact's JID on our domain.
    from: String,
    text: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    attachments: Vec<Attachment>,
    /// When the foreign network received it, Unix ms.
    sent_at: Option<i64>,
    /// When we accepted it, Unix ms.
    accepted_at: i64,
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

/// A queued user's message in its conversation's lane.
#[derive(Debug)]
pub struct OutboxItem {
    row: i64,
    entry: OutboxEntry,
    /// Failed attempts so far.
    attempts: u32,
    /// Not to be tried before this (Unix ms), after a failure.
    due: i64,
}

/// A queued bridge's message in its conversation's lane.
#[derive(Debug)]
pub struct InboxItem {
    row: i64,
    entry: InboxEntry,
}

/// The messages of one bridge in hand: per conversation, in order.
#[derive(Debug)]
pub struct Pipeline {
    outbox: Lanes<OutboxItem>,
    inbox: Lanes<InboxItem>,
    /// Lane tasks running, so that shutdown can wait for sends in progress.
    running: AtomicUsize,
    idle: Notify,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            // Every committed message must reach its lane: lanes here never refuse.
            outbox: Lanes::new(usize::MAX),
            inbox: Lanes::new(usize::MAX),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }
}

/// Counts a running lane task for as long as it lives.
struct Running<'a>(&'a Pipeline);

impl<'a> Running<'a> {
    fn start(pipeline: &'a Pipeline) -> Self {
        pipeline.running.fetch_add(1, Ordering::AcqRel);
        Self(pipeline)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

fn conversation(user: &str, contact: &str) -> String {
    format!("{user}\n{contact}")
}

fn unix_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl Gateway {
    /// Queues a user's message for the outbox. Returns once it is submitted, not committed:
    /// XMPP has no acknowledgement to hold back, and the sender's next stanza should not
    /// wait for this one's commit. The commit hands it to its lane (in submission order); if
    /// it fails the sender gets an error. A repeat of a message accepted before (same
    /// sender and id) is dropped.
    pub async fn accept_outgoing(
        self: &Arc<Self>,
        entry: OutboxEntry,
    ) -> Result<(), StanzaFailure> {
        let user = bare(&entry.from);
        let payload = serde_json::to_string(&entry).map_err(|_| StanzaFailure::Internal)?;
        let lane = conversation(&user, &entry.contact);
        let write = Write::Enqueue(NewRow {
            queue: Queue::Outbox,
            bridge: self.domain.clone(),
            conversation: lane.clone(),
            dedupe_key: format!("{user}\n{}", entry.id),
            payload,
        });
        let gateway = self.clone();
        let done: Done = Box::new(move |committed| match committed {
            Ok(Some(row)) => gateway.dispatch_outgoing(
                lane,
                OutboxItem {
                    row,
                    entry,
                    attempts: 0,
                    due: 0,
                },
            ),
            Ok(None) => {
                tracing::debug!(bridge = %gateway.domain, id = entry.id, "a repeated message was not queued again");
            }
            Err(error) => {
                tracing::error!(bridge = %gateway.domain, %error, "cannot store a message in the outbox");
                tokio::spawn(async move {
                    let id = entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone());
                    let header = StanzaHeader {
                        kind: StanzaKind::Message,
                        from: Some(entry.from.clone()),
                        to: Some(entry.to.clone()),
                        id: Some(id),
                        type_: Some("chat".into()),
                    };
                    if let Some(reply) = error_reply(&header, &StanzaFailure::Internal) {
                        gateway.send(reply).await;
                    }
                });
            }
        });
        self.committer.submit(write, Some(done)).await;
        Ok(())
    }

    /// Stores a bridge's message in the inbox. `Ok` means the core has it for good.
    pub async fn accept_incoming(
        self: &Arc<Self>,
        message: IncomingMessage,
    ) -> Result<(), CoreError> {
        let user: BareJid = message.user.as_str().parse().map_err(|error| {
            CoreError::Refused(format!("'{}' is not a JID: {error}", message.user))
        })?;
        if self.access.role(user.as_str()).is_none() {
            return Err(CoreError::Refused(format!(
                "{user} may not use {}: not in its allow list",
                self.domain
            )));
        }
        if message.text.len() > MAX_TEXT {
            return Err(CoreError::Refused(format!(
                "the text is {} bytes; at most {MAX_TEXT} are carried",
                message.text.len()
            )));
        }
        let from = self
            .contact_jid(&message.contact)
            .map_err(CoreError::Refused)?;
        let entry = InboxEntry {
            id: uuid::Uuid::new_v4().to_string(),
            foreign_id: message.foreign_id.to_string(),
            user: user.to_string(),
            from: from.to_string(),
            text: with_fallback(message.text, &message.attachments),
            attachments: message.attachments,
            sent_at: message.timestamp.map(millis),
            accepted_at: now_millis(),
        };
        let payload =
            serde_json::to_string(&entry).map_err(|error| CoreError::Refused(error.to_string()))?;
        let lane = conversation(&entry.user, message.contact.as_str());
        let write = Write::Enqueue(NewRow {
            queue: Queue::Inbox,
            bridge: self.domain.clone(),
            conversation: lane.clone(),
            dedupe_key: format!("{}\n{}", entry.user, entry.foreign_id),
            payload,
        });
        let (committed, outcome) = oneshot::channel::<Committed>();
        let gateway = self.clone();
        let done: Done = Box::new(move |result| {
            match &result {
                Ok(Some(row)) => gateway.dispatch_incoming(lane, InboxItem { row: *row, entry }),
                Ok(None) => {
                    tracing::debug!(bridge = %gateway.domain, foreign_id = entry.foreign_id, "a repeated foreign message was not queued again");
                }
                Err(_) => {}
            }
            let _ = committed.send(result);
        });
        self.committer.submit(write, Some(done)).await;
        match outcome.await.unwrap_or(Err(CommitError::Stopped)) {
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::error!(bridge = %self.domain, %error, "cannot store a message in the inbox");
                Err(CoreError::Refused(
                    "the gateway cannot store messages right now".into(),
                ))
            }
        }
    }

    /// Hands a committed user's message to its conversation's lane, starting the lane's task
    /// if it had none. Called on the committer's task: it must not block.
    fn dispatch_outgoing(self: &Arc<Self>, lane: String, item: OutboxItem) {
        if let Pushed::Opened = self.pipeline.outbox.push(&lane, item) {
            let gateway = self.clone();
            tokio::spawn(async move {
                let _running = Running::start(&gateway.pipeline);
                while let Some(item) = gateway.pipeline.outbox.next(&lane) {
                    if !gateway.shutdown.is_stopping() {
                        // At shutdown the rest stays queued: the rows are released for the
                        // next start.
                        gateway.send_out(item).await;
                    }
                }
            });
        }
    }

    /// Hands a committed bridge's message to its conversation's lane (see
    /// [`Gateway::dispatch_outgoing`]).
    fn dispatch_incoming(self: &Arc<Self>, lane: String, item: InboxItem) {
        if let Pushed::Opened = self.pipeline.inbox.push(&lane, item) {
            let gateway = self.clone();
            tokio::spawn(async move {
                let _running = Running::start(&gateway.pipeline);
                while let Some(item) = gateway.pipeline.inbox.next(&lane) {
                    if !gateway.shutdown.is_stopping() {
                        gateway.deliver_in(item).await;
                    }
                }
            });
        }
    }

    /// Takes over the rows no live instance holds (see [`crate::store::Store::take_over`]) and
    /// hands them to their lanes, oldest first. At start on SQLite, where only one instance
    /// runs, that is every undelivered row of this bridge.
    pub async fn recover(self: &Arc<Self>, at_start: bool) {
        let stale_before = if at_start && self.store.is_sqlite() {
            None
        } else {
            Some(now_millis().saturating_sub(unix_millis(self.delivery.lease)))
        };
        let owner = self.committer.owner();
        for queue in [Queue::Outbox, Queue::Inbox] {
            let rows = match self
                .store
                .take_over(queue, &self.domain, owner, stale_before)
                .await
            {
                Ok(rows) => rows,
                Err(error) => {
                    tracing::warn!(bridge = %self.domain, ?queue, %error, "cannot take over queued messages");
                    continue;
                }
            };
            if !rows.is_empty() {
                tracing::info!(bridge = %self.domain, ?queue, count = rows.len(), "took over queued messages");
            }
            for row in rows {
                self.dispatch_recovered(queue, row).await;
            }
        }
    }

    async fn dispatch_recovered(self: &Arc<Self>, queue: Queue, row: Recovered) {
        let unreadable = |error: serde_json::Error| {
            tracing::error!(bridge = %self.domain, row = row.id, %error, "a queued message does not parse; giving up on it");
            Write::Fail {
                queue,
                id: row.id,
                reason: format!("unreadable: {error}"),
            }
        };
        match queue {
            Queue::Outbox => match serde_json::from_str::<OutboxEntry>(&row.payload) {
                Ok(entry) => self.dispatch_outgoing(
                    row.conversation,
                    OutboxItem {
                        row: row.id,
                        entry,
                        attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                        due: row.next_attempt_at,
                    },
                ),
                Err(error) => self.committer.submit(unreadable(error), None).await,
            },
            Queue::Inbox => match serde_json::from_str::<InboxEntry>(&row.payload) {
                Ok(entry) => {
                    self.dispatch_incoming(row.conversation, InboxItem { row: row.id, entry })
                }
                Err(error) => self.committer.submit(unreadable(error), None).await,
            },
        }
    }

    /// Starts the task that takes over other instances' messages and releases this one's at
    /// shutdown, and the sweeper of old rows. The first takeover ([`Gateway::recover`] with
    /// `at_start`) must have run before the gateway accepts anything, so that old messages
    /// reach their lanes before new ones.
    pub fn spawn_workers(self: &Arc<Self>, tasks: &mut JoinSet<()>) {
        tasks.spawn(self.clone().keeper());
        tasks.spawn(self.clone().sweeper());
    }

    async fn keeper(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(self.delivery.lease / 2) => {}
                () = self.shutdown.clone().wait() => break,
            }
            self.recover(false).await;
        }
        // Let sends in progress finish, then hand back what is left.
        let settled = async {
            loop {
                let idle = self.pipeline.idle.notified();
                if self.pipeline.running.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(self.delivery.lease.min(SETTLE), settled).await;
        for queue in [Queue::Outbox, Queue::Inbox] {
            match self.store.release(queue, self.committer.owner()).await {
                Ok(0) => {}
                Ok(count) => {
                    tracing::info!(bridge = %self.domain, ?queue, count, "released queued messages for the next start")
                }
                Err(error) => {
                    tracing::warn!(bridge = %self.domain, %error, "cannot release queued messages; another instance takes them after delivery.lease")
                }
            }
        }
    }

    /// Sends one user's message, retrying transient failures in place (the conversation's
    /// later messages wait), until it is delivered, refused, or given up on.
    async fn send_out(self: &Arc<Self>, mut item: OutboxItem) {
        loop {
            let wait = item.due.saturating_sub(now_millis());
            if wait > 0 {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(wait.unsigned_abs())) => {}
                    () = self.shutdown.clone().wait() => return,
                }
            }
            let delay = match self.try_send(&item).await {
                Attempt::Done => return,
                Attempt::Again(delay) => delay,
                Attempt::Failed(reason) => {
                    item.attempts = item.attempts.saturating_add(1);
                    if item.attempts >= self.delivery.max_attempts {
                        let reason = format!("gave up after {} attempts: {reason}", item.attempts);
                        self.give_up(&item, &reason).await;
                        return;
                    }
                    backoff(item.attempts - 1, self.delivery.retry_max)
                }
                Attempt::FailedAfter(reason, retry_after) => {
                    item.attempts = item.attempts.saturating_add(1);
                    if item.attempts >= self.delivery.max_attempts {
                        let reason = format!("gave up after {} attempts: {reason}", item.attempts);
                        self.give_up(&item, &reason).await;
                        return;
                    }
                    backoff(item.attempts - 1, self.delivery.retry_max).max(retry_after)
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
                self.committer.submit(retry, None).await;
            }
        }
    }

    /// One attempt at sending.
    async fn try_send(self: &Arc<Self>, item: &OutboxItem) -> Attempt {
        let entry = &item.entry;
        let user = bare(&entry.from);
        let registration = match self.store.registration(&self.domain, &user).await {
            Ok(registration) => registration,
            Err(error) => {
                tracing::warn!(bridge = %self.domain, %error, "cannot read a registration; retrying");
                return Attempt::Again(Duration::from_secs(1));
            }
        };
        // Only a bridge with registration asks, and only about a user without one. A store
        // error counts as a member: the bridge's own lookup will fail transiently instead.
        if self.info.registration.is_some()
            && registration.is_none()
            && !self.owns_identity(&user).await.unwrap_or(true)
        {
            let reason = format!("you are no longer registered with {}", self.domain);
            self.give_up(item, &reason).await;
            return Attempt::Done;
        }
        let replaces = match &entry.replaces {
            Some(xmpp_id) => Some(Correction {
                xmpp_id: MessageId::new(xmpp_id.as_str()),
                foreign_id: self
                    .store
                    .foreign_message_id(&self.domain, &user, xmpp_id)
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
        };
        let sent = self
            .call("the message", self.bridge.send_message(message))
            .await
            .unwrap_or_else(|timeout| {
                Err(SendError::Transient {
                    reason: timeout.to_string(),
                    retry_after: None,
                })
            });
        match sent {
            Ok(outcome) => {
                metrics::delivery(&self.domain, "ok");
                let complete = Write::Complete {
                    queue: Queue::Outbox,
                    id: item.row,
                };
                self.committer.submit(complete, None).await;
                let report_follows = outcome.report_follows && outcome.foreign_id.is_some();
                if let Some(foreign_id) = outcome.foreign_id {
                    if report_follows {
                        let pending = PendingReport {
                            from: entry.from.clone(),
                            to: entry.to.clone(),
                            stanza_id: entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone()),
                            receipt: entry.receipt && entry.stanza_id.is_some(),
                        };
                        let pending = serde_json::to_string(&pending).unwrap_or_default();
                        if let Err(error) = self
                            .store
                            .await_report(
                                &self.domain,
                                &user,
                                &entry.id,
                                foreign_id.as_str(),
                                &pending,
                            )
                            .await
                        {
                            tracing::warn!(bridge = %self.domain, %error, "cannot record a message awaiting a delivery report");
                        }
                    } else {
                        let mapping = Write::MapId {
                            bridge: self.domain.clone(),
                            jid: user.clone(),
                            xmpp_id: entry.id.clone(),
                            foreign_id: foreign_id.to_string(),
                        };
                        self.committer.submit(mapping, None).await;
                    }
                }
                if let (false, true, Some(stanza_id)) =
                    (report_follows, entry.receipt, &entry.stanza_id)
                {
                    self.send_receipt(&entry.from, &entry.to, stanza_id).await;
                }
                Attempt::Done
            }
            Err(SendError::Permanent { reason }) => {
                metrics::delivery(&self.domain, "permanent");
                self.give_up(item, &reason).await;
                Attempt::Done
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                metrics::delivery(&self.domain, "transient");
                tracing::warn!(bridge = %self.domain, %reason, attempts = item.attempts + 1, "delivery failed; will retry");
                match retry_after {
                    Some(retry_after) => Attempt::FailedAfter(reason, retry_after),
                    None => Attempt::Failed(reason),
                }
            }
        }
    }

    /// Gives up on a user's message and tells them why, as an error from the contact.
    async fn give_up(&self, item: &OutboxItem, reason: &str) {
        tracing::info!(bridge = %self.domain, %reason, "message not delivered");
        let fail = Write::Fail {
            queue: Queue::Outbox,
            id: item.row,
            reason: reason.to_owned(),
        };
        self.committer.submit(fail, None).await;
        let entry = &item.entry;
        let id = entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone());
        self.send_error(&entry.from, &entry.to, id, reason).await;
    }

    /// Tells the sender of message `id` that it was not delivered, as an error from `to`.
    async fn send_error(&self, from: &str, to: &str, id: String, reason: &str) {
        let header = StanzaHeader {
            kind: StanzaKind::Message,
            from: Some(from.to_owned()),
            to: Some(to.to_owned()),
            id: Some(id),
            type_: Some("chat".into()),
        };
        let failure = StanzaFailure::Unavailable(reason.to_owned());
        if let Some(error) = error_reply(&header, &failure) {
            self.send(error).await;
        }
    }

    async fn send_receipt(&self, from: &str, to: &str, stanza_id: &str) {
        let (Ok(to), Ok(from)) = (from.parse::<Jid>(), to.parse::<Jid>()) else {
            return;
        };
        let mut receipt = Message::new(Some(to)).with_payload(Received {
            id: stanza_id.to_owned(),
        });
        receipt.from = Some(from);
        receipt.id = Some(Id(uuid::Uuid::new_v4().to_string()));
        self.send(receipt.into()).await;
    }

    /// Acts on a bridge's delivery report about the message the network knows as
    /// `foreign_id`: a receipt (if asked) or an error message to its sender, once. Unknown
    /// messages and repeated reports are ignored.
    pub async fn delivery_report(
        &self,
        foreign_id: &str,
        report: DeliveryReport,
    ) -> Result<(), CoreError> {
        let deadline = tokio::time::Instant::now() + REPORT_WAIT;
        let pending = loop {
            match self
                .store
                .take_pending_report(&self.domain, foreign_id)
                .await
            {
                Ok(Some(pending)) => break pending,
                Ok(None) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(None) => {
                    tracing::debug!(bridge = %self.domain, foreign_id, "a delivery report about no message awaiting one");
                    return Ok(());
                }
                Err(error) => {
                    tracing::error!(bridge = %self.domain, %error, "cannot read a message awaiting a delivery report");
                    return Err(CoreError::Refused(
                        "the gateway cannot reach its database right now".into(),
                    ));
                }
            }
        };
        let Ok(pending) = serde_json::from_str::<PendingReport>(&pending) else {
            tracing::error!(bridge = %self.domain, foreign_id, "a stored delivery report record does not parse");
            return Ok(());
        };
        match report {
            DeliveryReport::Delivered => {
                metrics::delivery(&self.domain, "reported-delivered");
                if pending.receipt {
                    self.send_receipt(&pending.from, &pending.to, &pending.stanza_id)
                        .await;
                }
            }
            DeliveryReport::Failed(reason) => {
                metrics::delivery(&self.domain, "reported-failed");
                tracing::info!(bridge = %self.domain, %reason, "the network reported a message undelivered");
                let reason = format!("not delivered: {reason}");
                self.send_error(&pending.from, &pending.to, pending.stanza_id, &reason)
                    .await;
            }
        }
        Ok(())
    }

    /// Writes one bridge's message to the link once it is up, until the server has it (or it
    /// can never be written).
    async fn deliver_in(self: &Arc<Self>, item: InboxItem) {
        let entry = &item.entry;
        let finish = |write: Write| self.committer.submit(write, None);
        let stanza = match inbox_stanza(&self.domain, entry) {
            Ok(stanza) => stanza,
            Err(reason) => {
                tracing::error!(bridge = %self.domain, %reason, "an inbox message cannot become a stanza; dropping it");
                finish(Write::Fail {
                    queue: Queue::Inbox,
                    id: item.row,
                    reason,
                })
                .await;
                return;
            }
        };
        let stanza: xmpp_parsers::minidom::Element = stanza.into();
        loop {
            tokio::select! {
                () = self.link.state.wait_connected() => {}
                () = self.shutdown.clone().wait() => return,
            }
            let written = tokio::time::timeout(
                self.delivery.lease / 2,
                self.link.send_and_confirm(stanza.clone()),
            )
            .await;
            match written {
                Ok(Ok(())) => break,
                Ok(Err(NotWritten::Unwritable(unwritable))) => {
                    // Sending it again would fail the same way and hold up the lane.
                    finish(Write::Fail {
                        queue: Queue::Inbox,
                        id: item.row,
                        reason: unwritable.to_string(),
                    })
                    .await;
                    return;
                }
                Ok(Err(NotWritten::LinkStopped)) | Err(_) => {
                    // The link went down before the stanza was written: try again once up.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        finish(Write::Complete {
            queue: Queue::Inbox,
            id: item.row,
        })
        .await;
        finish(Write::MapId {
            bridge: self.domain.clone(),
            jid: entry.user.clone(),
            xmpp_id: entry.id.clone(),
            foreign_id: entry.foreign_id.clone(),
        })
        .await;
    }

    async fn sweeper(self: Arc<Self>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP) => {}
                () = self.shutdown.clone().wait() => return,
            }
            let keep = i64::try_from(self.delivery.keep_delivered.as_millis()).unwrap_or(i64::MAX);
            let before = now_millis().saturating_sub(keep);
            if let Err(error) = self.store.forget_message_ids(before).await {
                tracing::warn!(bridge = %self.domain, %error, "cannot delete old message ids");
            }
            let day_ago = now_millis().saturating_sub(86_400_000);
            if let Err(error) = self.store.forget_instances(None, day_ago).await {
                tracing::warn!(bridge = %self.domain, %error, "cannot forget old instances");
            }
            for queue in [Queue::Outbox, Queue::Inbox] {
                match self.store.forget_delivered(queue, before).await {
                    Ok(0) => {}
                    Ok(count) => {
                        tracing::info!(bridge = %self.domain, ?queue, count, "forgot old delivered messages")
                    }
                    Err(error) => {
                        tracing::warn!(bridge = %self.domain, %error, "cannot delete old messages")
                    }
                }
            }
        }
    }
}

/// What one attempt at sending came to.
enum Attempt {
    /// Delivered, refused or given up on: the lane moves on.
    Done,
    /// Not tried (the database did not answer); again after this long, not counted.
    Again(Duration),
    /// A temporary failure: counted, and tried again after the backoff.
    Failed(String),
    /// A temporary failure the network asked to wait this long after.
    FailedAfter(String, Duration),
}

/// How long shutdown waits for sends in progress before releasing the rows.
const SETTLE: Duration = Duration::from_secs(3);

/// The bare form of a full JID string (what we stored was parsed before).
fn bare(full: &str) -> String {
    full.parse::<Jid>()
        .map(|jid| jid.to_bare().to_string())
        .unwrap_or_else(|_| full.to_owned())
}

/// The text with every attachment URL it does not already contain appended, one per line,
/// so that clients without XEP-0066 still show them (and clients with it, which show a
/// body that is exactly the URL as the file, do too).
fn with_fallback(text: String, attachments: &[Attachment]) -> String {
    let missing: Vec<&str> = attachments
        .iter()
        .map(|attachment| attachment.url.as_str())
        .filter(|url| !text.contains(url))
        .collect();
    if missing.is_empty() {
        return text;
    }
    let mut lines: Vec<&str> = Vec::new();
    if !text.trim().is_empty() {
        lines.push(&text);
    }
    lines.extend(missing);
    lines.join("\n")
}

/// The chat message an inbox entry becomes: its fixed id as stanza id and origin-id
/// (XEP-0359), and a XEP-0203 delay when it is late.
fn inbox_stanza(domain: &str, entry: &InboxEntry) -> Result<Message, String> {
    let to: BareJid = entry.user.parse().map_err(|error| format!("{error}"))?;
    let from: Jid = entry.from.parse().map_err(|error| format!("{error}"))?;
    let mut stanza = Message::chat(Some(Jid::from(to)))
        .with_body(Lang::default(), entry.text.clone())
        .with_payload(OriginId {
            id: entry.id.clone(),
        });
    for attachment in &entry.attachments {
        stanza = stanza.with_payload(Oob {
            url: attachment.url.clone(),
            desc: attachment.description.clone(),
        });
    }
    let now = now_millis();
    let late = i64::try_from(LATE.as_millis()).unwrap_or(i64::MAX);
    let sent = entry.sent_at.unwrap_or(entry.accepted_at);
    let is_late = now.saturating_sub(entry.accepted_at) > late || now.saturating_sub(sent) > late;
    if is_late && let Some(stamp) = stamp(sent) {
        stanza = stanza.with_payload(Delay {
            from: domain.parse().ok(),
            stamp,
            data: None,
        });
    }
    stanza.from = Some(from);
    stanza.id = Some(Id(entry.id.clone()));
    Ok(stanza)
}

fn stamp(unix_millis: i64) -> Option<DateTime> {
    let time = UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_millis).ok()?);
    let time = time.min(SystemTime::now());
    humantime::format_rfc3339_millis(time)
        .to_string()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(accepted_ago: i64, sent_ago: Option<i64>) -> InboxEntry {
        let now = now_millis();
        InboxEntry {
            id: "m1".into(),
            foreign_id: "f1".into(),
            user: "alice@example.org".into(),
            from: "bob@gw.example".into(),
            text: "hi".into(),
            attachments: Vec::new(),
            sent_at: sent_ago.map(|ago| now - ago),
            accepted_at: now - accepted_ago,
        }
    }

    #[test]
    fn a_prompt_delivery_has_no_delay_and_carries_its_ids() {
        let stanza = inbox_stanza("gw.example", &entry(0, None)).unwrap();
        assert_eq!(stanza.id, Some(Id("m1".into())));
        let element: xmpp_parsers::minidom::Element = stanza.into();
        assert!(element.get_child("origin-id", "urn:xmpp:sid:0").is_some());
        assert!(element.get_child("delay", "urn:xmpp:delay").is_none());
    }

    #[test]
    fn a_late_delivery_carries_when_it_was_sent() {
        for (accepted_ago, sent_ago) in [(60_000, None), (0, Some(3_600_000))] {
            let element: xmpp_parsers::minidom::Element =
                inbox_stanza("gw.example", &entry(accepted_ago, sent_ago))
                    .unwrap()
                    .into();
            let delay = element.get_child("delay", "urn:xmpp:delay").unwrap();
            assert_eq!(delay.attr("from"), Some("gw.example"));
            let stamp: DateTime = delay.attr("stamp").unwrap().parse().unwrap();
            let age = chrono_age(&stamp);
            let expected = sent_ago.unwrap_or(accepted_ago) / 1000;
            assert!((age - expected).abs() <= 2, "{age} vs {expected}");
        }
    }

    #[test]
    fn attachments_become_oob_with_the_url_in_the_text() {
        let picture = Attachment {
            url: "https://media.example/cat.jpg".into(),
            description: Some("a cat".into()),
        };
        assert_eq!(
            with_fallback("look".into(), std::slice::from_ref(&picture)),
            "look\nhttps://media.example/cat.jpg"
        );
        assert_eq!(
            with_fallback(String::new(), std::slice::from_ref(&picture)),
            "https://media.example/cat.jpg"
        );
        let text = "see https://media.example/cat.jpg".to_owned();
        assert_eq!(
            with_fallback(text.clone(), std::slice::from_ref(&picture)),
            text
        );
        let mut with_picture = entry(0, None);
        with_picture.attachments = vec![picture];
        let element: xmpp_parsers::minidom::Element =
            inbox_stanza("gw.example", &with_picture).unwrap().into();
        let oob = element.get_child("x", "jabber:x:oob").unwrap();
        assert_eq!(
            oob.get_child("url", "jabber:x:oob").map(|url| url.text()),
            Some("https://media.example/cat.jpg".into())
        );
    }

    fn chrono_age(stamp: &DateTime) -> i64 {
        let unix = stamp.0.timestamp();
        now_millis() / 1000 - unix
    }
}
