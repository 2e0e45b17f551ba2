//! Typed messages in both directions and the errors of delivering one.

use std::time::{Duration, SystemTime};

use crate::{ForeignId, MessageId, RegistrationData, UserJid};

/// A message from an XMPP user to a foreign contact, handed to [`crate::Bridge::send_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingMessage {
    /// The id the XMPP side gave the message (origin-id or stanza id). Stable across retries:
    /// use it as an idempotency key where the foreign network has one.
    pub id: MessageId,
    /// Who sent it.
    pub user: UserJid,
    /// To whom, as [`crate::Bridge::parse_address`] returned it.
    pub contact: ForeignId,
    /// The text. Never empty: clients put a file's URL in the text too.
    pub text: String,
    /// Files linked to the message (XEP-0066 out-of-band data), e.g. a picture shared
    /// through HTTP upload; sent by MMS-like networks as media.
    pub attachments: Vec<Attachment>,
    /// When the core accepted the message from the user (it may be sent much later, after
    /// retries).
    pub accepted_at: SystemTime,
    /// What the bridge stored for this user at registration, if they registered.
    pub registration: Option<RegistrationData>,
    /// Set when this message corrects an earlier one (XEP-0308). Only bridges that declare
    /// [`crate::Capabilities::corrections`] see corrections; the core refuses them for the
    /// others, so that the user does not believe the correction reached anyone.
    pub replaces: Option<Correction>,
    /// Set when this is a private message to the occupant of a room whose nick is
    /// `contact` (XEP-0045 §7.5), for bridges with [`crate::Capabilities::rooms`].
    pub room: Option<crate::RoomId>,
}

/// A file linked to a message by URL (XEP-0066 out-of-band data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attachment {
    /// Where the file is, usually `https://…`.
    pub url: String,
    /// What it is, when the sender said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Which earlier message a correction replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    /// The XMPP id of the message being corrected.
    pub xmpp_id: MessageId,
    /// The foreign network's id for it, when the bridge returned one in [`SendOutcome`].
    pub foreign_id: Option<MessageId>,
}

/// What a foreign network said, after the fact, about a message a bridge sent: passed to
/// [`crate::Core::report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryReport {
    /// It reached the recipient: the sender gets their XEP-0184 receipt, if they asked.
    Delivered,
    /// It will not reach the recipient: the sender gets an error message with this reason
    /// (the network's error code and text).
    Failed(String),
}

/// A typing notification (XEP-0085), either way: a user's, passed only to bridges that
/// declare [`crate::Capabilities::chat_states`] ([`crate::Bridge::send_chat_state`],
/// [`crate::Bridge::room_chat_state`]) and dropped quietly for the others; a contact's or an
/// occupant's, reported with [`crate::Core::chat_state`] or [`crate::RoomEvent::Typing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    /// The user is typing.
    Composing,
    /// The user stopped typing.
    Paused,
    /// The user is paying attention to the conversation.
    Active,
    /// The user is not paying attention.
    Inactive,
    /// The user closed the conversation.
    Gone,
}

/// The state of a user's link to the foreign network, shown to them as the gateway's
/// presence (XEP-0100 §6): what a bridge returns from [`crate::Bridge::user_status`] and
/// pushes with [`crate::Core::set_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserStatus {
    /// Connected; the optional text becomes the presence status.
    Connected(Option<String>),
    /// The foreign network cannot be reached for now; shown as unavailable with this text.
    Unavailable(String),
    /// The stored credentials were refused; shown as an error presence (`not-authorized`)
    /// with this text, telling the user to register again.
    BadCredentials(String),
}

/// What a successful [`crate::Bridge::send_message`] returns: the network took the message,
/// and what the core may expect of it next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Taken; the network gave it no id.
    Sent,
    /// Taken under this id: the core maps it to the XMPP id, so that receipts, corrections
    /// and replies can refer to it.
    SentAs(MessageId),
    /// Taken under this id, and the network will report the delivery later (an SMS status
    /// callback): the core waits for [`crate::Core::report`] about this id before sending
    /// the XEP-0184 receipt, and turns a failure report into an error message.
    ReportFollows(MessageId),
}

impl SendOutcome {
    /// The network's id for the message, if it gave one.
    pub fn foreign_id(&self) -> Option<&MessageId> {
        match self {
            Self::Sent => None,
            Self::SentAs(id) | Self::ReportFollows(id) => Some(id),
        }
    }

    /// Whether a delivery report will follow.
    pub fn report_follows(&self) -> bool {
        matches!(self, Self::ReportFollows(_))
    }
}

/// Why a message could not be delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// A retry may cure it (timeout, rate limit, outage). The core retries with capped
    /// exponential backoff, no sooner than `retry_after` when given.
    #[error("temporary failure: {reason}")]
    Transient {
        /// Why, for the log.
        reason: String,
        /// The foreign network's own wish (`Retry-After`), if it said one.
        retry_after: Option<Duration>,
    },
    /// A retry will not cure it. The user gets an error message carrying `reason`.
    #[error("{reason}")]
    Permanent {
        /// Why, in words the user understands.
        reason: String,
    },
}

/// A message from a foreign contact to an XMPP user, pushed by the bridge through
/// [`crate::Core::deliver`].
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingMessage {
    /// The foreign network's id for the message. The core delivers each id once, so a bridge
    /// may push the same message again after a crash without the user seeing it twice.
    pub foreign_id: MessageId,
    /// Who sent it on the foreign network.
    pub contact: ForeignId,
    /// The XMPP user it is for.
    pub user: UserJid,
    /// The text. When there are attachments, clients without XEP-0066 show only this: the
    /// core appends any attachment URL the text does not already contain.
    pub text: String,
    /// Files linked to the message (pictures of an MMS…), sent as XEP-0066 out-of-band data.
    pub attachments: Vec<Attachment>,
    /// When the foreign network received it, if known; late deliveries carry it as a delay.
    pub timestamp: Option<SystemTime>,
    /// Set when an occupant of this room writes privately (XEP-0045 §7.5): `contact` is their
    /// nick, and the message comes from `room@domain/nick`.
    pub room: Option<crate::RoomId>,
}
