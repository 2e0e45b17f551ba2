//! Every stanza the core sends is built here: errors (the one place where a typed
//! [`StanzaFailure`] becomes an XMPP error, for typed and unparseable stanzas alike),
//! presences, receipts, chat answers and the messages that carry a foreign network's text.
//! Payloads that belong to one protocol (data forms, disco, ad-hoc steps) are rendered by
//! that protocol's module and wrapped here or in [`crate::xmpp::service::reply`].

use jabbridge_sdk::{Attachment, ChatState, UserStatus};
use xmpp_parsers::{
    date::DateTime,
    delay::Delay,
    iq::Iq,
    jid::{BareJid, Jid},
    message::{Id, Lang, Message, MessageType},
    minidom::Element,
    nick::Nick,
    oob::Oob,
    presence::{Presence, Type as PresenceType},
    receipts::Received,
    stanza_error::{DefinedCondition, ErrorType, StanzaError},
    stanza_id::OriginId,
};

/// Why a stanza was refused, in the core's terms. Each becomes one RFC 6120 condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StanzaFailure {
    /// The stanza does not parse or breaks the protocol.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// Nothing here answers this request (unknown iq payload, RFC 6120 §8.4).
    #[error("service unavailable")]
    ServiceUnavailable,
    /// The request is understood but this gateway or bridge does not implement it.
    #[error("not implemented: {0}")]
    FeatureNotImplemented(String),
    /// The address does not name anything on the foreign network.
    #[error("malformed address: {0}")]
    JidMalformed(String),
    /// The bridge or the foreign network cannot do it (now): undeliverable message,
    /// registration check that could not reach the network.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The submitted values are refused; the text says why.
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// What the request refers to does not exist (e.g. removing a registration that isn't).
    #[error("not found: {0}")]
    ItemNotFound(String),
    /// The sender may not use this bridge (not in `allow`), or this command (not an admin).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The sender must register with the gateway first (XEP-0077).
    #[error("registration required: {0}")]
    RegistrationRequired(String),
    /// The foreign network refused the user's stored credentials (an error presence from the
    /// gateway, XEP-0100 §6).
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// The sender exceeded the bridge's `rate_limit`; they may retry later.
    #[error("rate limited: {0}")]
    ResourceConstraint(String),
    /// The bridge did not answer in time (`call_timeout`); the sender may try again.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The stanza breaks a bound on its shape (nesting, size…); the text says which.
    #[error("policy violation: {0}")]
    PolicyViolation(String),
    /// The sender may not do this here (a kick without the rights to).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The name asked for is taken (a nick in a room).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Jabbridge itself failed (database unavailable…); the sender may retry later.
    #[error("internal error")]
    Internal,
}

impl StanzaFailure {
    fn to_stanza_error(&self) -> StanzaError {
        let (type_, condition, text) = match self {
            Self::BadRequest(text) => (
                ErrorType::Modify,
                DefinedCondition::BadRequest,
                text.as_str(),
            ),
            Self::ServiceUnavailable => {
                (ErrorType::Cancel, DefinedCondition::ServiceUnavailable, "")
            }
            Self::FeatureNotImplemented(text) => (
                ErrorType::Cancel,
                DefinedCondition::FeatureNotImplemented,
                text.as_str(),
            ),
            Self::JidMalformed(text) => (
                ErrorType::Modify,
                DefinedCondition::JidMalformed,
                text.as_str(),
            ),
            Self::Unavailable(text) => (
                ErrorType::Cancel,
                DefinedCondition::ServiceUnavailable,
                text.as_str(),
            ),
            Self::NotAcceptable(text) => (
                ErrorType::Modify,
                DefinedCondition::NotAcceptable,
                text.as_str(),
            ),
            Self::ItemNotFound(text) => (
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                text.as_str(),
            ),
            Self::Forbidden(text) => (ErrorType::Auth, DefinedCondition::Forbidden, text.as_str()),
            Self::NotAuthorized(text) => (
                ErrorType::Auth,
                DefinedCondition::NotAuthorized,
                text.as_str(),
            ),
            Self::Conflict(text) => (ErrorType::Cancel, DefinedCondition::Conflict, text.as_str()),
            Self::NotAllowed(text) => (
                ErrorType::Cancel,
                DefinedCondition::NotAllowed,
                text.as_str(),
            ),
            Self::RegistrationRequired(text) => (
                ErrorType::Auth,
                DefinedCondition::RegistrationRequired,
                text.as_str(),
            ),
            Self::ResourceConstraint(text) => (
                ErrorType::Wait,
                DefinedCondition::ResourceConstraint,
                text.as_str(),
            ),
            Self::Timeout(text) => (
                ErrorType::Wait,
                DefinedCondition::RemoteServerTimeout,
                text.as_str(),
            ),
            Self::PolicyViolation(text) => (
                ErrorType::Modify,
                DefinedCondition::PolicyViolation,
                text.as_str(),
            ),
            Self::Internal => (
                ErrorType::Wait,
                DefinedCondition::InternalServerError,
                "the gateway failed; try again later",
            ),
        };
        let mut error = StanzaError::new(type_, condition, "en", text);
        if text.is_empty() {
            // No text rather than an empty one.
            error.texts.clear();
        }
        error
    }

    /// The condition's name, for metrics labels.
    pub fn condition(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad-request",
            Self::ServiceUnavailable | Self::Unavailable(_) => "service-unavailable",
            Self::NotAcceptable(_) => "not-acceptable",
            Self::ItemNotFound(_) => "item-not-found",
            Self::FeatureNotImplemented(_) => "feature-not-implemented",
            Self::JidMalformed(_) => "jid-malformed",
            Self::Forbidden(_) => "forbidden",
            Self::RegistrationRequired(_) => "registration-required",
            Self::Conflict(_) => "conflict",
            Self::NotAllowed(_) => "not-allowed",
            Self::NotAuthorized(_) => "not-authorized",
            Self::ResourceConstraint(_) => "resource-constraint",
            Self::Timeout(_) => "remote-server-timeout",
            Self::PolicyViolation(_) => "policy-violation",
            Self::Internal => "internal-server-error",
        }
    }
}

/// Which of the three stanzas an element is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StanzaKind {
    /// `<message/>`
    Message,
    /// `<presence/>`
    Presence,
    /// `<iq/>`
    Iq,
}

/// The routing attributes of a stanza, read without parsing the rest, so that even a stanza
/// that does not parse can be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StanzaHeader {
    /// Which stanza.
    pub kind: StanzaKind,
    /// The sender, as written.
    pub from: Option<String>,
    /// The recipient, as written.
    pub to: Option<String>,
    /// The stanza id.
    pub id: Option<String>,
    /// The `type` attribute.
    pub type_: Option<String>,
    /// Whether it is a room join (a presence with `<x xmlns='…/muc'/>`): its error carries
    /// that element too, as XEP-0045 §7.2 shows and clients expect to tell a failed join.
    pub muc_join: bool,
}

impl StanzaHeader {
    /// Reads the header of a stanza; `None` for anything that is not one.
    pub fn of(element: &Element) -> Option<StanzaHeader> {
        let kind = match element.name() {
            "message" => StanzaKind::Message,
            "presence" => StanzaKind::Presence,
            "iq" => StanzaKind::Iq,
            _ => return None,
        };
        let attribute = |name: &str| element.attr(name).map(str::to_owned);
        Some(StanzaHeader {
            kind,
            from: attribute("from"),
            to: attribute("to"),
            id: attribute("id"),
            type_: attribute("type"),
            muc_join: kind == StanzaKind::Presence && element.has_child("x", super::muc::NS_MUC),
        })
    }
}

/// The error reply to a stanza, or `None` where RFC 6120 forbids one: to an error, to an iq
/// result, or to a stanza with no usable sender.
pub fn error_reply(header: &StanzaHeader, failure: &StanzaFailure) -> Option<Element> {
    let type_ = header.type_.as_deref();
    if type_ == Some("error") || (header.kind == StanzaKind::Iq && type_ == Some("result")) {
        return None;
    }
    let to: Jid = header.from.as_deref()?.parse().ok()?;
    let from: Option<Jid> = header.to.as_deref().and_then(|to| to.parse().ok());
    let error = failure.to_stanza_error();
    Some(match header.kind {
        StanzaKind::Iq => Iq::Error {
            from,
            to: Some(to),
            // RFC 6120 §8.1.3: an iq without an id cannot be answered meaningfully, but an
            // empty id still tells the sender what went wrong.
            id: header.id.clone().unwrap_or_default(),
            error,
            payload: None,
        }
        .into(),
        StanzaKind::Message => {
            let mut message = Message::new_with_type(MessageType::Error, Some(to));
            message.from = from;
            message.id = header.id.clone().map(Id);
            message.with_payload(error).into()
        }
        StanzaKind::Presence => {
            let mut presence = Presence::error().with_to(to).with_payload(error);
            if header.muc_join {
                presence
                    .payloads
                    .insert(0, Element::builder("x", super::muc::NS_MUC).build());
            }
            presence.from = from;
            presence.id = header.id.clone();
            presence.into()
        }
    })
}

/// An error presence that answers nothing: the gateway telling a user that its link for
/// them failed (XEP-0100 §6).
pub fn error_presence(from: Jid, to: Jid, failure: &StanzaFailure) -> Element {
    let mut presence = Presence::error()
        .with_to(to)
        .with_payload(failure.to_stanza_error());
    presence.from = Some(from);
    presence.into()
}

/// A presence of `type_` from `from` to `to`, with a XEP-0172 nick when one is given.
pub fn presence(type_: PresenceType, from: Jid, to: Jid, nick: Option<String>) -> Element {
    let mut presence = Presence::new(type_).with_to(to);
    presence.from = Some(from);
    if let Some(nick) = nick {
        presence = presence.with_payloads(vec![Nick(nick).into()]);
    }
    presence.into()
}

/// The gateway's presence to a user: the state of their link to the foreign network
/// (XEP-0100 §6): available, unavailable with a status, or an error for bad credentials.
pub fn link_status(from: Jid, to: &BareJid, status: UserStatus) -> Element {
    let to = Jid::from(to.clone());
    match status {
        UserStatus::Connected(text) => {
            let mut presence = Presence::available().with_to(to);
            presence.from = Some(from);
            if let Some(text) = text {
                presence.set_status(Lang::default(), text);
            }
            presence.into()
        }
        UserStatus::Unavailable(text) => {
            let mut presence = Presence::new(PresenceType::Unavailable).with_to(to);
            presence.from = Some(from);
            presence.set_status(Lang::default(), text);
            presence.into()
        }
        UserStatus::BadCredentials(text) => {
            error_presence(from, to, &StanzaFailure::NotAuthorized(text))
        }
    }
}

/// A chat message from `from` to `to` (the gateway answering a command by chat).
pub fn chat(from: Jid, to: Jid, text: String) -> Element {
    let mut message = Message::chat(Some(to)).with_body(Lang::default(), text);
    message.from = Some(from);
    message.into()
}

/// XEP-0334's namespace (processing hints).
pub const NS_HINTS: &str = "urn:xmpp:hints";
/// XEP-0085's namespace.
const NS_CHATSTATES: &str = "http://jabber.org/protocol/chatstates";

/// Each chat state and its element's name.
const CHAT_STATES: [(ChatState, &str); 5] = [
    (ChatState::Active, "active"),
    (ChatState::Composing, "composing"),
    (ChatState::Paused, "paused"),
    (ChatState::Inactive, "inactive"),
    (ChatState::Gone, "gone"),
];

/// A typing notification (XEP-0085) from `from` to `to`: a message of one chat state and no
/// body, which servers neither archive nor keep for later (XEP-0334 `no-store`); of type
/// `groupchat` from an occupant (`room/nick`), `chat` from a contact.
pub fn chat_state(from: Jid, to: Jid, state: ChatState, groupchat: bool) -> Element {
    let mut message = match groupchat {
        true => Message::groupchat(Some(to)),
        false => Message::chat(Some(to)),
    };
    message.from = Some(from);
    if let Some((_, name)) = CHAT_STATES.iter().find(|(known, _)| *known == state) {
        message
            .payloads
            .push(Element::builder(*name, NS_CHATSTATES).build());
    }
    message
        .payloads
        .push(Element::builder("no-store", NS_HINTS).build());
    message.into()
}

/// The typing notification (XEP-0085) among a message's `payloads`, if it has one.
pub fn chat_state_of<'a>(mut payloads: impl Iterator<Item = &'a Element>) -> Option<ChatState> {
    let payload = payloads.find(|payload| payload.ns() == NS_CHATSTATES)?;
    CHAT_STATES
        .iter()
        .find(|(_, name)| payload.name() == *name)
        .map(|(state, _)| *state)
}

/// A XEP-0184 receipt from the contact `from` to the sender `to`, for their message `id`.
pub fn receipt(from: Jid, to: Jid, id: &str, receipt_id: String) -> Element {
    let mut receipt = Message::new(Some(to)).with_payload(Received { id: id.to_owned() });
    receipt.from = Some(from);
    receipt.id = Some(Id(receipt_id));
    receipt.into()
}

/// An error message from the contact `from` telling the sender `to` that their message `id`
/// was not delivered, and why. `None` if the stored addresses do not parse.
pub fn undelivered(from: &str, to: &str, id: String, failure: &StanzaFailure) -> Option<Element> {
    let header = StanzaHeader {
        kind: StanzaKind::Message,
        from: Some(to.to_owned()),
        to: Some(from.to_owned()),
        id: Some(id),
        type_: Some("chat".into()),
        muc_join: false,
    };
    error_reply(&header, failure)
}

/// A message from a foreign network, as the user receives it.
pub struct Carried<'a> {
    /// Its fixed id, used as stanza id and XEP-0359 origin-id, so that a redelivery after a
    /// crash carries the same one.
    pub id: &'a str,
    /// The contact's JID on the bridge's domain.
    pub from: Jid,
    /// The user.
    pub to: BareJid,
    /// The text.
    pub text: &'a str,
    /// XEP-0066 out-of-band URLs.
    pub attachments: &'a [Attachment],
    /// A XEP-0203 delay for a late delivery: who delayed it, and when it was sent.
    pub delay: Option<(Option<Jid>, DateTime)>,
}

/// The chat message that carries a foreign network's message to a user.
pub fn carried(message: Carried<'_>) -> Element {
    let mut stanza = Message::chat(Some(Jid::from(message.to)))
        .with_body(Lang::default(), message.text.to_owned())
        .with_payload(OriginId {
            id: message.id.to_owned(),
        });
    for attachment in message.attachments {
        stanza = stanza.with_payload(Oob {
            url: attachment.url.clone(),
            desc: attachment.description.clone(),
        });
    }
    if message.from.resource().is_some() {
        // From room/nick: a private message within a room (XEP-0045 §7.5).
        stanza.payloads.push(crate::xmpp::muc::private_marker());
    }
    if let Some((from, stamp)) = message.delay {
        stanza = stanza.with_payload(Delay {
            from,
            stamp,
            data: None,
        });
    }
    stanza.from = Some(message.from);
    stanza.id = Some(Id(message.id.to_owned()));
    stanza.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(xml: &str) -> Element {
        xml.parse().unwrap()
    }

    const NS: &str = "xmlns='jabber:component:accept'";

    #[test]
    fn answers_an_unparseable_message_with_bad_request() {
        let element = parse(&format!(
            "<message {NS} type='bogus' from='a@b/c' to='x@gw' id='m1'><body>hi</body></message>"
        ));
        let header = StanzaHeader::of(&element).unwrap();
        let reply = error_reply(&header, &StanzaFailure::BadRequest("no".into())).unwrap();
        assert_eq!(reply.attr("type"), Some("error"));
        assert_eq!(reply.attr("to"), Some("a@b/c"));
        assert_eq!(reply.attr("from"), Some("x@gw"));
        assert_eq!(reply.attr("id"), Some("m1"));
        let error = reply.get_child("error", NSChoiceAny).unwrap();
        assert_eq!(error.attr("type"), Some("modify"));
        assert!(error.children().any(|child| child.name() == "bad-request"));
    }

    #[test]
    fn never_answers_errors_or_results() {
        for xml in [
            format!("<message {NS} type='error' from='a@b'/>"),
            format!("<iq {NS} type='result' from='a@b' id='1'/>"),
            format!("<iq {NS} type='error' from='a@b' id='1'/>"),
            format!("<presence {NS} to='gw'/>"),
        ] {
            let header = StanzaHeader::of(&parse(&xml)).unwrap();
            assert_eq!(
                error_reply(&header, &StanzaFailure::ServiceUnavailable),
                None,
                "{xml}"
            );
        }
    }

    #[test]
    fn iq_error_keeps_the_id() {
        let element = parse(&format!(
            "<iq {NS} type='get' from='a@b/r' to='gw' id='q7'/>"
        ));
        let header = StanzaHeader::of(&element).unwrap();
        let reply = error_reply(&header, &StanzaFailure::ServiceUnavailable).unwrap();
        assert_eq!(reply.name(), "iq");
        assert_eq!(reply.attr("id"), Some("q7"));
        assert_eq!(reply.attr("type"), Some("error"));
    }

    use xmpp_parsers::minidom::NSChoice::Any as NSChoiceAny;
}
