//! Chat messages from users: to a contact, a message for the outbox (after the checks:
//! access, capabilities, registration, size, rate) or a typing notification for the bridge;
//! to the bare gateway, a command by chat.

use jabbridge_sdk::{Attachment, ForeignId, RoomId, UserJid};
use xmpp_parsers::{
    jid::Jid,
    message::{Message, MessageType},
    message_correct::Replace,
    minidom::Element,
    ns,
    oob::Oob,
    stanza_id::OriginId,
};

use super::{Answer, Gateway, commands, rooms};
use crate::delivery::{MAX_TEXT, OutboxEntry, accept, inbox};
use crate::metrics;
use crate::store::Spent;
use crate::xmpp::muc;
use crate::xmpp::stanza::{self, StanzaFailure};

/// Handles a message addressed to the gateway or a contact.
pub(super) async fn on_message(gateway: &Gateway, element: Element) -> Answer {
    if let Some(post) = Groupchat::of(gateway, &element) {
        return rooms::on_groupchat(gateway, post).await;
    }
    let message = Message::try_from(element).map_err(|error| {
        StanzaFailure::BadRequest(format!("this message does not parse: {error}"))
    })?;
    if message.type_ == MessageType::Error {
        if let (Some(from), Some(room)) = (
            &message.from,
            message.to.as_ref().and_then(|to| gateway.room_of(to)),
        ) {
            rooms::bounced(gateway, from, &room).await;
            return Ok(None);
        }
        bounced(gateway, &message).await;
        return Ok(None);
    }
    let (Some(from), Some(to)) = (message.from.clone(), message.to.clone()) else {
        return Ok(None);
    };
    let user = from.to_bare().to_string();
    // Bodies come keyed by language (servers stamp xml:lang); take the first non-empty.
    let text = message
        .bodies
        .values()
        .find(|body| !body.trim().is_empty())
        .cloned();
    let (contact, room) = match gateway.room_of(&to) {
        Some(room) => {
            // A mediated invitation, to the room itself.
            if to.resource().is_none()
                && let Some(invitee) = message.payloads.iter().find_map(muc::invitee)
            {
                gateway.access.check(&user)?;
                let invitee = invitee.map_err(StanzaFailure::JidMalformed)?;
                return rooms::invite(gateway, &from, &room, &invitee).await;
            }
            if text.is_none() {
                // Typing to an occupant privately goes as typing in a chat; markers are not
                // carried.
                if let Some(nick) = to.resource()
                    && rooms::private_allowed(gateway, &from, &room, nick.as_str()).is_ok()
                {
                    let nick = ForeignId::new(nick.as_str());
                    pass_chat_state(gateway, &message, &user, nick, Some(&room)).await;
                }
                return Ok(None);
            }
            gateway.access.check(&user)?;
            let Some(nick) = to.resource() else {
                return Err(StanzaFailure::NotAcceptable(
                    "write to a room with type='groupchat', or to room/nick privately".into(),
                ));
            };
            rooms::private_allowed(gateway, &from, &room, nick.as_str())?;
            (Some(ForeignId::new(nick.as_str())), Some(room))
        }
        None => (gateway.contact_of(&to)?, None),
    };
    let role = match (&text, &contact) {
        // Typing notifications, receipts and markers from strangers: drop quietly.
        (None, _) => match gateway.access.role(&user) {
            Some(role) => role,
            None => return Ok(None),
        },
        _ => gateway.access.check(&user)?,
    };
    let Some(contact) = contact else {
        let Some(text) = text else { return Ok(None) };
        // Commands cost database work: they count against the rate limit too.
        gateway.access.take(&user)?;
        let reply = commands::by_chat(gateway, &user, role, &text).await;
        return Ok(Some(stanza::chat(to, from, reply)));
    };
    if message.type_ == MessageType::Groupchat {
        return Err(StanzaFailure::FeatureNotImplemented(
            "this bridge does not carry group chat messages".into(),
        ));
    }
    let Some(text) = text else {
        pass_chat_state(gateway, &message, &user, contact, None).await;
        return Ok(None);
    };
    let replaces = message
        .payloads
        .iter()
        .find_map(|payload| Replace::try_from(payload.clone()).ok())
        .map(|replace| replace.id.0);
    if replaces.is_some() && !gateway.bridge.capabilities().corrections {
        return Err(StanzaFailure::FeatureNotImplemented(format!(
            "{} cannot carry corrections: the correction was not sent; send a new message",
            gateway.info().name
        )));
    }
    if !gateway.is_member(&user).await? {
        return Err(StanzaFailure::RegistrationRequired(format!(
            "register with {} first (service discovery, or send 'help' to {})",
            gateway.domain, gateway.domain
        )));
    }
    if text.len() > MAX_TEXT {
        return Err(StanzaFailure::NotAcceptable(format!(
            "the message is {} bytes; at most {MAX_TEXT} are carried",
            text.len()
        )));
    }
    gateway.access.take(&user)?;
    spend(gateway, &user).await?;
    let stanza_id = message.id.clone().map(|id| id.0);
    let id = message
        .payloads
        .iter()
        .find_map(|payload| OriginId::try_from(payload.clone()).ok())
        .map(|origin| origin.id)
        .or_else(|| stanza_id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let entry = OutboxEntry {
        id,
        stanza_id,
        from: from.to_string(),
        to: to.to_string(),
        contact: contact.to_string(),
        text,
        receipt: message
            .payloads
            .iter()
            .any(|payload| payload.is("request", ns::RECEIPTS)),
        replaces,
        attachments: message
            .payloads
            .iter()
            .filter_map(|payload| Oob::try_from(payload.clone()).ok())
            .map(|oob| Attachment {
                url: oob.url,
                description: oob.desc.filter(|desc| !desc.is_empty()),
            })
            .collect(),
        accepted_at: Some(crate::store::now_millis()),
        room: room.map(|room| room.to_string()),
    };
    accept::outgoing(&gateway.delivery, entry).await?;
    Ok(None)
}

/// A groupchat message to a room (a post, a subject, a correction, a retraction or
/// reactions), read off its element: a room post is the hot path, and parsing it into a
/// [`Message`] would copy every payload.
pub(super) struct Groupchat<'a> {
    /// The stanza, whose children the room looks through for its payloads.
    pub element: &'a Element,
    pub from: Jid,
    pub room: RoomId,
    /// The first non-blank body, in document order.
    pub text: Option<String>,
    /// The first subject, blank or not (a blank one clears the room's subject).
    pub subject: Option<String>,
}

impl<'a> Groupchat<'a> {
    /// `element` as a groupchat message to one of the bridge's rooms; `None` for any other
    /// message (which takes the general path, with its own answers).
    fn of(gateway: &Gateway, element: &'a Element) -> Option<Self> {
        if element.attr("type") != Some("groupchat") {
            return None;
        }
        let jid = |name: &str| element.attr(name).and_then(|jid| Jid::new(jid).ok());
        let (Some(from), Some(room)) = (jid("from"), jid("to").and_then(|to| gateway.room_of(&to)))
        else {
            return None;
        };
        let mut text = None;
        let mut subject = None;
        for child in element
            .children()
            .filter(|child| child.ns() == ns::COMPONENT)
        {
            match child.name() {
                "body" if text.is_none() => {
                    let body = child.text();
                    if !body.trim().is_empty() {
                        text = Some(body);
                    }
                }
                "subject" if subject.is_none() => subject = Some(child.text()),
                _ => {}
            }
        }
        Some(Self {
            element,
            from,
            room,
            text,
            subject,
        })
    }
}

/// Counts a message against the bridge's `spend_limit`, or refuses it when a cap is
/// reached.
async fn spend(gateway: &Gateway, user: &str) -> Result<(), StanzaFailure> {
    let Some(limit) = gateway.spend else {
        return Ok(());
    };
    let day = crate::store::now_millis() / 86_400_000;
    let spent = gateway
        .store
        .spend(
            &gateway.domain,
            user,
            day,
            limit.per_day,
            limit.per_user_per_day,
        )
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    let cap = match spent {
        Spent::Counted { bridge_today } => {
            if let (Some(today), Some(cap)) = (bridge_today, limit.per_day) {
                metrics::spend_used(&gateway.domain, today, cap);
            }
            return Ok(());
        }
        Spent::BridgeCapReached => format!(
            "{} has sent the {} messages it may send today (UTC); the message was not sent",
            gateway.domain,
            limit.per_day.unwrap_or_default()
        ),
        Spent::UserCapReached => format!(
            "you have sent the {} messages you may send through {} today (UTC); the message \
             was not sent",
            limit.per_user_per_day.unwrap_or_default(),
            gateway.domain
        ),
    };
    metrics::spend_refused(&gateway.domain);
    Err(StanzaFailure::ResourceConstraint(cap))
}

/// Passes a typing notification to a bridge that declared it; drops it otherwise.
async fn pass_chat_state(
    gateway: &Gateway,
    message: &Message,
    user: &str,
    contact: ForeignId,
    room: Option<&RoomId>,
) {
    if !gateway.bridge.capabilities().chat_states {
        return;
    }
    let Some(state) = stanza::chat_state_of(message.payloads.iter()) else {
        return;
    };
    if matches!(gateway.is_member(user).await, Ok(true)) {
        let user = UserJid::new(user);
        let call = gateway.bridge.send_chat_state(&user, &contact, room, state);
        if let Err(failure) = gateway.call("a chat state", call).await {
            tracing::debug!(%user, %failure, "a chat state was not passed on");
        }
    }
}

/// An error from a user's server about a message we delivered to them: its inbox row is
/// marked failed, counted, and the admin told when the user seems not to exist. Anything
/// else of type error is dropped (never answered: RFC 6120 §8.3.1).
async fn bounced(gateway: &Gateway, message: &Message) {
    let (Some(from), Some(id)) = (&message.from, &message.id) else {
        return;
    };
    let user = from.to_bare().to_string();
    if gateway.access.role(&user).is_none() {
        return;
    }
    let error = message
        .payloads
        .iter()
        .find(|payload| payload.name() == "error");
    let condition = error
        .and_then(|error| error.children().find(|child| child.name() != "text"))
        .map_or("undefined-condition", |condition| condition.name());
    let text = error
        .and_then(|error| error.children().find(|child| child.name() == "text"))
        .map(Element::text);
    let reason = match &text {
        Some(text) => format!("{condition}: {text}"),
        None => condition.to_owned(),
    };
    if !inbox::bounced(&gateway.delivery, &user, &id.0, &reason).await {
        tracing::debug!(
            user,
            condition,
            id = id.0,
            "ignored an error message about nothing we sent"
        );
        return;
    }
    metrics::bounce(&gateway.domain, condition);
    if matches!(
        condition,
        "item-not-found"
            | "service-unavailable"
            | "recipient-unavailable"
            | "remote-server-not-found"
    ) {
        tracing::warn!(
            user,
            condition,
            "a message could not be delivered: the user's server says the account is not there; \
             an admin may remove the user (remove-user) or release their identities"
        );
    } else {
        tracing::info!(user, %reason, "a message came back from the user's server");
    }
}
