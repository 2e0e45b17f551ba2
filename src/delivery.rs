//! The durable message flow of one bridge. A message accepted from either side is a row in
//! the store before anyone is told it was accepted; workers claim rows with leases, deliver
//! them, and mark them delivered, so that a crash (or a second instance sharing the
//! database) loses nothing and delivers nothing twice.
//!
//! - Outbox (XMPP → foreign network): [`Gateway::accept_outgoing`] stores, the outbox
//!   workers call [`jabbridge_sdk::Bridge::send_message`], retry transient failures with
//!   capped exponential backoff, and answer with a receipt or an error message: at once, or
//!   when the bridge passes on the network's delivery report ([`Gateway::delivery_report`]).
//! - Inbox (foreign network → XMPP): [`Gateway::accept_incoming`] stores (de-duplicated by
//!   the foreign id), the inbox workers write the stanza to the component link once it is up
//!   and mark the row delivered once the stanza is on the server's socket.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::{
    Attachment, CoreError, Correction, DeliveryReport, ForeignId, IncomingMessage, MessageId,
    OutgoingMessage, SendError, Shutdown, UserJid,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
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

use crate::metrics;
use crate::router::Gateway;
use crate::store::{Claimed, Queue, millis, now_millis};
use crate::xmpp::session::{NotWritten, backoff};
use crate::xmpp::stanza::{StanzaFailure, StanzaHeader, StanzaKind, error_reply};

/// The longest text carried either way, in bytes. Prosody drops a component that sends a
/// stanza over 512 KiB; no chat message needs more than this.
pub const MAX_TEXT: usize = 64 * 1024;
/// How often idle workers look for messages that became due (retries, other instances).
const POLL: Duration = Duration::from_secs(1);
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

/// Wakes the outbox or the inbox workers when a message arrives.
#[derive(Debug, Default)]
pub struct Wakers {
    outbox: Notify,
    inbox: Notify,
}

fn conversation(user: &str, contact: &str) -> String {
    format!("{user}\n{contact}")
}

impl Gateway {
    /// Stores a user's message in the outbox. `Ok(false)` when the same message (same sender
    /// and id) was accepted before: it is not sent again.
    pub async fn accept_outgoing(&self, entry: &OutboxEntry) -> Result<bool, StanzaFailure> {
        let user = bare(&entry.from);
        let payload = serde_json::to_string(entry).map_err(|_| StanzaFailure::Internal)?;
        let accepted = self
            .store
            .enqueue(
                Queue::Outbox,
                &self.domain,
                &conversation(&user, &entry.contact),
                &format!("{user}\n{}", entry.id),
                &payload,
            )
            .await
            .map_err(|error| {
                tracing::error!(bridge = %self.domain, %error, "cannot store a message in the outbox");
                StanzaFailure::Internal
            })?;
        if accepted {
            self.wakers.outbox.notify_one();
        } else {
            tracing::debug!(bridge = %self.domain, id = entry.id, "a repeated message was not queued again");
        }
        Ok(accepted)
    }

    /// Stores a bridge's message in the inbox. `Ok` means the core has it for good.
    pub async fn accept_incoming(&self, message: IncomingMessage) -> Result<(), CoreError> {
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
        let accepted = self
            .store
            .enqueue(
                Queue::Inbox,
                &self.domain,
                &conversation(&entry.user, message.contact.as_str()),
                &format!("{}\n{}", entry.user, entry.foreign_id),
                &payload,
            )
            .await
            .map_err(|error| {
                tracing::error!(bridge = %self.domain, %error, "cannot store a message in the inbox");
                CoreError::Refused("the gateway cannot store messages right now".into())
            })?;
        if accepted {
            self.wakers.inbox.notify_one();
        } else {
            tracing::debug!(bridge = %self.domain, foreign_id = entry.foreign_id, "a repeated foreign message was not queued again");
        }
        Ok(())
    }

    /// Starts the outbox and inbox workers and the sweeper of old rows.
    pub fn spawn_workers(self: &Arc<Self>, tasks: &mut JoinSet<()>, shutdown: &Shutdown) {
        for _ in 0..self.delivery.workers {
            tasks.spawn(self.clone().outbox_worker(shutdown.clone()));
            tasks.spawn(self.clone().inbox_worker(shutdown.clone()));
        }
        tasks.spawn(self.clone().sweeper(shutdown.clone()));
    }

    async fn idle(&self, queue: Queue, shutdown: &Shutdown) {
        let notify = match queue {
            Queue::Outbox => &self.wakers.outbox,
            Queue::Inbox => &self.wakers.inbox,
        };
        tokio::select! {
            () = notify.notified() => {}
            () = tokio::time::sleep(POLL) => {}
            () = shutdown.clone().wait() => {}
        }
    }

    async fn claim(&self, queue: Queue) -> Option<Claimed> {
        match self
            .store
            .claim(queue, &self.domain, &self.owner, self.delivery.lease)
            .await
        {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(bridge = %self.domain, ?queue, %error, "cannot claim queued messages");
                None
            }
        }
    }

    /// Runs `work` while renewing the lease on row `id`, so that a slow delivery is not
    /// taken over by another worker.
    async fn leased<F: Future>(&self, queue: Queue, id: i64, work: F) -> F::Output {
        tokio::pin!(work);
        let mut renewal = tokio::time::interval(self.delivery.lease / 3);
        renewal.tick().await;
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = renewal.tick() => {
                    if let Err(error) = self.store.renew(queue, id, &self.owner, self.delivery.lease).await {
                        tracing::warn!(bridge = %self.domain, %error, "cannot renew a lease");
                    }
                }
            }
        }
    }

    /// The entry a claimed row holds; a row that does not parse (written by something else)
    /// is marked failed, so that it does not block its conversation.
    async fn read_row<T: serde::de::DeserializeOwned>(
        &self,
        queue: Queue,
        claimed: &Claimed,
    ) -> Option<T> {
        match serde_json::from_str(&claimed.payload) {
            Ok(entry) => Some(entry),
            Err(error) => {
                tracing::error!(bridge = %self.domain, ?queue, row = claimed.id, %error, "a queued row does not parse; dropping it");
                self.finish(queue, claimed, Some("unreadable row")).await;
                None
            }
        }
    }

    async fn outbox_worker(self: Arc<Self>, shutdown: Shutdown) {
        while !shutdown.is_stopping() {
            match self.claim(Queue::Outbox).await {
                Some(claimed) => self.send_out(claimed).await,
                None => self.idle(Queue::Outbox, &shutdown).await,
            }
        }
    }

    async fn send_out(&self, claimed: Claimed) {
        let Some(entry) = self.read_row::<OutboxEntry>(Queue::Outbox, &claimed).await else {
            return;
        };
        let user = bare(&entry.from);
        let registration = match self.store.registration(&self.domain, &user).await {
            Ok(registration) => registration,
            Err(error) => {
                tracing::warn!(bridge = %self.domain, %error, "cannot read a registration; retrying");
                self.retry(Queue::Outbox, &claimed, Duration::from_secs(1))
                    .await;
                return;
            }
        };
        // Only a bridge with registration asks, and only about a user without one. A store
        // error counts as a member: the bridge's own lookup will fail transiently instead.
        if self.info.registration.is_some()
            && registration.is_none()
            && !self.owns_identity(&user).await.unwrap_or(true)
        {
            let reason = format!("you are no longer registered with {}", self.domain);
            self.give_up(&claimed, &entry, &reason).await;
            return;
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
        let sending = self.call("the message", self.bridge.send_message(message));
        let sent = self
            .leased(Queue::Outbox, claimed.id, sending)
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
                self.finish(Queue::Outbox, &claimed, None).await;
                let report_follows = outcome.report_follows && outcome.foreign_id.is_some();
                if let Some(foreign_id) = outcome.foreign_id {
                    let mapped = if report_follows {
                        let pending = PendingReport {
                            from: entry.from.clone(),
                            to: entry.to.clone(),
                            stanza_id: entry.stanza_id.clone().unwrap_or_else(|| entry.id.clone()),
                            receipt: entry.receipt && entry.stanza_id.is_some(),
                        };
                        let pending = serde_json::to_string(&pending).unwrap_or_default();
                        self.store
                            .await_report(
                                &self.domain,
                                &user,
                                &entry.id,
                                foreign_id.as_str(),
                                &pending,
                            )
                            .await
                    } else {
                        self.store
                            .map_message_id(&self.domain, &user, &entry.id, foreign_id.as_str())
                            .await
                    };
                    if let Err(error) = mapped {
                        tracing::warn!(bridge = %self.domain, %error, "cannot record a message id mapping");
                    }
                }
                if let (false, true, Some(stanza_id)) =
                    (report_follows, entry.receipt, &entry.stanza_id)
                {
                    self.send_receipt(&entry.from, &entry.to, stanza_id).await;
                }
            }
            Err(SendError::Permanent { reason }) => {
                metrics::delivery(&self.domain, "permanent");
                self.give_up(&claimed, &entry, &reason).await;
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                metrics::delivery(&self.domain, "transient");
                let attempts = u32::try_from(claimed.attempts).unwrap_or(u32::MAX);
                if attempts >= self.delivery.max_attempts {
                    let reason = format!("gave up after {attempts} attempts: {reason}");
                    self.give_up(&claimed, &entry, &reason).await;
                } else {
                    let delay = backoff(attempts, self.delivery.retry_max)
                        .max(retry_after.unwrap_or_default());
                    tracing::warn!(bridge = %self.domain, %reason, attempts, delay_ms = delay.as_millis() as u64, "delivery failed; will retry");
                    self.retry(Queue::Outbox, &claimed, delay).await;
                }
            }
        }
    }

    /// Marks a row delivered (`failure` = `None`) or given up on.
    async fn finish(&self, queue: Queue, claimed: &Claimed, failure: Option<&str>) {
        let finished = match failure {
            None => self.store.complete(queue, claimed.id, &self.owner).await,
            Some(reason) => {
                self.store
                    .fail(queue, claimed.id, &self.owner, reason)
                    .await
            }
        };
        match finished {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                bridge = %self.domain, row = claimed.id,
                "a lease expired during delivery; another worker may deliver this message again \
                 (raise delivery.lease?)"
            ),
            Err(error) => {
                tracing::error!(bridge = %self.domain, %error, "cannot mark a message delivered; it will be delivered again")
            }
        }
    }

    async fn retry(&self, queue: Queue, claimed: &Claimed, delay: Duration) {
        if let Err(error) = self
            .store
            .retry_later(queue, claimed.id, &self.owner, delay)
            .await
        {
            tracing::warn!(bridge = %self.domain, %error, "cannot reschedule a message; its lease will expire instead");
        }
    }

    /// Gives up on a user's message and tells them why, as an error from the contact.
    async fn give_up(&self, claimed: &Claimed, entry: &OutboxEntry, reason: &str) {
        tracing::info!(bridge = %self.domain, %reason, "message not delivered");
        self.finish(Queue::Outbox, claimed, Some(reason)).await;
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

    async fn inbox_worker(self: Arc<Self>, shutdown: Shutdown) {
        while !shutdown.is_stopping() {
            tokio::select! {
                () = self.link.state.wait_connected() => {}
                () = shutdown.clone().wait() => return,
            }
            match self.claim(Queue::Inbox).await {
                Some(claimed) => self.deliver_in(claimed).await,
                None => self.idle(Queue::Inbox, &shutdown).await,
            }
        }
    }

    async fn deliver_in(&self, claimed: Claimed) {
        let Some(entry) = self.read_row::<InboxEntry>(Queue::Inbox, &claimed).await else {
            return;
        };
        let stanza = match inbox_stanza(&self.domain, &entry) {
            Ok(stanza) => stanza,
            Err(reason) => {
                tracing::error!(bridge = %self.domain, %reason, "an inbox message cannot become a stanza; dropping it");
                self.finish(Queue::Inbox, &claimed, Some(&reason)).await;
                return;
            }
        };
        let written = tokio::time::timeout(
            self.delivery.lease / 2,
            self.link.send_and_confirm(stanza.into()),
        )
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(NotWritten::Unwritable(unwritable))) => {
                // Sending it again would fail the same way and hold up the queue behind it.
                self.finish(Queue::Inbox, &claimed, Some(&unwritable.to_string()))
                    .await;
                return;
            }
            Ok(Err(NotWritten::LinkStopped)) | Err(_) => {
                // The link went down before the stanza was written: it stays queued.
                self.retry(Queue::Inbox, &claimed, Duration::from_millis(200))
                    .await;
                return;
            }
        }
        self.finish(Queue::Inbox, &claimed, None).await;
        if let Err(error) = self
            .store
            .map_message_id(&self.domain, &entry.user, &entry.id, &entry.foreign_id)
            .await
        {
            tracing::warn!(bridge = %self.domain, %error, "cannot record a message id mapping");
        }
    }

    async fn sweeper(self: Arc<Self>, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(SWEEP) => {}
                () = shutdown.clone().wait() => return,
            }
            let keep = i64::try_from(self.delivery.keep_delivered.as_millis()).unwrap_or(i64::MAX);
            let before = now_millis().saturating_sub(keep);
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
