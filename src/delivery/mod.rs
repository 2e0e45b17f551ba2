//! The durable message flow of one bridge: a message accepted from either side is committed
//! (with others, [`commit`]) before anyone is told it was accepted; the commit hands it to
//! its conversation's lane in memory ([`dispatch`]), which delivers it and records the
//! outcome, again in batches. The database is read back only at start, when another
//! instance's messages are taken over, and after a shutdown released them ([`recovery`]): a
//! crash loses nothing, and an instance delivers only the rows it holds.
//!
//! - Outbox (XMPP → foreign network): [`accept::outgoing`] queues; the lane calls
//!   [`jabbridge_sdk::Bridge::send_message`] ([`outbox`]), retries transient failures with
//!   capped exponential backoff (holding the conversation's later messages back), and
//!   answers with a receipt or an error message: at once, or when the bridge passes on the
//!   network's delivery report ([`outbox::delivery_report`]).
//! - Inbox (foreign network → XMPP): [`accept::incoming`] queues (de-duplicated by the
//!   foreign id) and answers once committed; the lane ([`inbox`]) writes the stanza to the
//!   component link once it is up and marks the row delivered once the stanza is on the
//!   server's socket.
//! - Notices (a receipt, or why a message was not delivered) are inbox rows too, queued in
//!   the transaction that records what they report ([`notice`]).
//!
//! Delivery knows nothing of access rules or stanzas it did not queue: the gateway decides
//! what is accepted, delivery keeps it.

pub mod accept;
pub mod commit;
pub mod dispatch;
pub mod inbox;
pub mod notice;
pub mod outbox;
pub mod recovery;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use jabbridge_sdk::{Attachment, Bridge, Shutdown};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use xmpp_parsers::minidom::Element;

use crate::calls::Calls;
use crate::config::DeliveryConfig;
use crate::lanes::Lanes;
use crate::store::Store;
use crate::xmpp::session::LinkHandle;
use commit::Committer;

/// The longest text carried either way, in bytes. Prosody drops a component that sends a
/// stanza over 512 KiB; no chat message needs more than this.
pub const MAX_TEXT: usize = 64 * 1024;

/// The delivery of one bridge's messages: its queues in memory and what they need.
pub struct Delivery {
    /// The bridge's domain.
    domain: String,
    /// The bridge, to send messages to its network.
    bridge: Arc<dyn Bridge>,
    /// The limits on calls into the bridge, shared with the gateway.
    calls: Arc<Calls>,
    /// The component link.
    link: LinkHandle,
    /// The database.
    store: Store,
    /// Where writes to the queues go, to be committed in batches.
    committer: Committer,
    /// `[delivery]`.
    config: DeliveryConfig,
    /// Tells lanes and workers to stop.
    shutdown: Shutdown,
    /// The bridge's tracing span, which every lane task runs in.
    span: tracing::Span,
    /// Users' messages in hand, per conversation, in order.
    outbox: Lanes<outbox::Item>,
    /// Bridges' messages in hand, per conversation, in order.
    inbox: Lanes<inbox::Item>,
    /// Lane tasks running, so that shutdown can wait for sends in progress.
    running: AtomicUsize,
    idle: Notify,
    /// Bridges' messages handed to the link whose id mapping is not stored yet, by stanza
    /// id: the user and the row, for an error bounce that comes before the mapping would
    /// find the row.
    unacked: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

/// What a bridge's delivery shares with the rest of the process.
pub struct Wiring {
    /// Its component link.
    pub link: LinkHandle,
    /// The database.
    pub store: Store,
    /// Where writes to the durable queues go.
    pub committer: Committer,
    /// Tells everything to stop.
    pub shutdown: Shutdown,
}

impl Delivery {
    /// This instance's id: the rows it holds, and the sessions it runs, carry it.
    pub fn instance(&self) -> &str {
        self.committer.owner()
    }

    /// Where writes go to be committed in batches (the room archive's too).
    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// `delivery.lease`: an instance silent this long is taken for dead.
    pub fn lease(&self) -> std::time::Duration {
        self.config.lease
    }

    /// Tells everything to stop.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// The delivery of the messages of `bridge` at `domain`, in `span`.
    pub fn new(
        domain: &str,
        bridge: Arc<dyn Bridge>,
        calls: Arc<Calls>,
        wiring: Wiring,
        config: DeliveryConfig,
        span: tracing::Span,
    ) -> Self {
        let Wiring {
            link,
            store,
            committer,
            shutdown,
        } = wiring;
        Self {
            domain: domain.to_owned(),
            bridge,
            calls,
            link,
            store,
            committer,
            config,
            shutdown,
            span,
            // Every committed message must reach its lane: these lanes never refuse.
            outbox: Lanes::new(usize::MAX),
            inbox: Lanes::new(usize::MAX),
            running: AtomicUsize::new(0),
            idle: Notify::new(),
            unacked: std::sync::Mutex::default(),
        }
    }

    /// Queues a stanza on the link (a receipt or error about a message).
    async fn send(&self, stanza: Element) {
        if self.link.send(stanza).await.is_err() {
            tracing::warn!("link stopped; a stanza was dropped at shutdown");
        }
    }
}

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
    /// Set for a private message to the occupant `contact` of this room (XEP-0045 §7.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// What an inbox row holds (JSON): a notice to a user about their own message, or a
/// bridge's message (rows written before notices existed are all messages).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum Inboxed {
    /// A receipt or error about a user's message.
    Notice {
        /// The notice.
        notice: notice::Notice,
    },
    /// A bridge's message.
    Message(InboxEntry),
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

/// A conversation's lane key: its messages are delivered in order.
fn conversation(user: &str, contact: &str) -> String {
    format!("{user}\n{contact}")
}

/// The bare form of a full JID string (what we stored was parsed before).
fn bare(full: &str) -> String {
    full.parse::<xmpp_parsers::jid::Jid>()
        .map(|jid| jid.to_bare().to_string())
        .unwrap_or_else(|_| full.to_owned())
}
