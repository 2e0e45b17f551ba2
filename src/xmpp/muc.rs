//! The stanzas of a group chat (XEP-0045) as the core sends them: occupant presences with
//! their `muc#user` items and status codes, room messages with the room's XEP-0359
//! stanza-id and XEP-0421 occupant-id, subjects, and the disco#info of a room. Built with
//! minidom directly: a room message is built once and cloned per recipient.

use jabbridge_sdk::{Affiliation, Role};
use xmpp_parsers::{
    jid::Jid,
    minidom::{
        Element, ElementBuilder,
        rxml::{Namespace, NcName},
    },
};

/// Sets attributes on a builder by `&'static str` name (ours, always valid names).
trait With {
    fn with(self, name: &'static str, value: impl Into<String>) -> Self;
}

impl With for ElementBuilder {
    fn with(self, name: &'static str, value: impl Into<String>) -> Self {
        match NcName::try_from(name) {
            Ok(name) => self.attr(name, value.into()),
            Err(_) => self,
        }
    }
}

/// Sets an attribute of a built element by `&'static str` name.
fn set(element: &mut Element, name: &'static str, value: &str) {
    if let Ok(name) = NcName::try_from(name) {
        element.set_attr(Namespace::none().clone(), name, value);
    }
}

/// `http://jabber.org/protocol/muc`: what a join presence carries.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/muc#user`: what the room's presences carry.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0421 occupant ids.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0359 stanza and origin ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0203 delays.
const NS_DELAY: &str = "urn:xmpp:delay";
/// The namespace stanzas carry on a component link.
const NS_COMPONENT: &str = "jabber:component:accept";

/// XEP-0045 status codes the core sends.
pub mod status {
    /// The presence is about the recipient themselves.
    pub const SELF: u16 = 110;
    /// The room is non-anonymous: occupants' addresses may be seen.
    pub const NON_ANONYMOUS: u16 = 100;
    /// The room changed the nick the user asked for.
    pub const NICK_ASSIGNED: u16 = 210;
    /// Banned.
    pub const BANNED: u16 = 301;
    /// Nick changed.
    pub const NICK_CHANGED: u16 = 303;
    /// Kicked.
    pub const KICKED: u16 = 307;
    /// Removed because the service is shutting down or the link failed.
    pub const SHUTDOWN: u16 = 332;
}

/// An occupant as a presence shows it.
#[derive(Debug, Clone)]
pub struct OccupantPresence<'a> {
    /// `room@domain/nick`.
    pub from: Jid,
    /// The recipient's full JID.
    pub to: Jid,
    /// Their role and affiliation.
    pub role: Role,
    /// Their affiliation.
    pub affiliation: Affiliation,
    /// Their XEP-0421 occupant-id.
    pub occupant_id: &'a str,
    /// Whether this is an unavailable presence (left, renamed, kicked, banned).
    pub unavailable: bool,
    /// Status codes.
    pub statuses: &'a [u16],
    /// The new nick (status 303).
    pub new_nick: Option<&'a str>,
    /// Who did it (kick, ban).
    pub actor: Option<&'a str>,
    /// Why (kick, ban, leave).
    pub reason: Option<&'a str>,
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Moderator => "moderator",
        Role::Participant => "participant",
        Role::Visitor => "visitor",
    }
}

fn affiliation_name(affiliation: Affiliation) -> &'static str {
    match affiliation {
        Affiliation::Owner => "owner",
        Affiliation::Admin => "admin",
        Affiliation::Member => "member",
        Affiliation::None => "none",
    }
}

/// An occupant's presence in a room (XEP-0045 §7.2.3), or its unavailable presence.
pub fn occupant(presence: &OccupantPresence<'_>) -> Element {
    let mut item = Element::builder("item", NS_MUC_USER)
        .with("affiliation", affiliation_name(presence.affiliation))
        .with(
            "role",
            if presence.unavailable && presence.new_nick.is_none() {
                "none"
            } else {
                role_name(presence.role)
            },
        );
    if let Some(nick) = presence.new_nick {
        item = item.with("nick", nick);
    }
    if let Some(actor) = presence.actor {
        item = item.append(Element::builder("actor", NS_MUC_USER).with("nick", actor));
    }
    if let Some(reason) = presence.reason {
        item = item.append(Element::builder("reason", NS_MUC_USER).append(reason));
    }
    let mut x = Element::builder("x", NS_MUC_USER).append(item);
    for code in presence.statuses {
        x = x.append(Element::builder("status", NS_MUC_USER).with("code", code.to_string()));
    }
    let mut stanza = Element::builder("presence", NS_COMPONENT)
        .with("from", presence.from.to_string())
        .with("to", presence.to.to_string());
    if presence.unavailable {
        stanza = stanza.with("type", "unavailable");
    }
    stanza
        .append(x)
        .append(Element::builder("occupant-id", NS_OCCUPANT_ID).with("id", presence.occupant_id))
        .build()
}

/// A message said in a room, before its recipient is set ([`addressed`]).
pub struct RoomMessage<'a> {
    /// `room@domain/nick` of the sender.
    pub from: Jid,
    /// The room's bare JID, which gives the stanza-id.
    pub room: &'a str,
    /// The room's XEP-0359 stanza-id for it, also the stanza's `id`.
    pub stanza_id: &'a str,
    /// The text.
    pub text: &'a str,
    /// The sender's occupant-id.
    pub occupant_id: &'a str,
    /// The poster's origin-id, when one of our users posted it.
    pub origin_id: Option<&'a str>,
    /// A XEP-0203 delay stamp (history, late lines).
    pub delay: Option<&'a str>,
}

/// A groupchat message with no `to` yet: clone it per recipient with [`addressed`].
pub fn room_message(message: &RoomMessage<'_>) -> Element {
    let mut stanza = Element::builder("message", NS_COMPONENT)
        .with("type", "groupchat")
        .with("from", message.from.to_string())
        .with("id", message.origin_id.unwrap_or(message.stanza_id))
        .append(Element::builder("body", NS_COMPONENT).append(message.text))
        .append(
            Element::builder("stanza-id", NS_SID)
                .with("id", message.stanza_id)
                .with("by", message.room),
        )
        .append(Element::builder("occupant-id", NS_OCCUPANT_ID).with("id", message.occupant_id));
    if let Some(origin) = message.origin_id {
        stanza = stanza.append(Element::builder("origin-id", NS_SID).with("id", origin));
    }
    if let Some(stamp) = message.delay {
        stanza = stanza.append(
            Element::builder("delay", NS_DELAY)
                .with("stamp", stamp)
                .with("from", message.room),
        );
    }
    stanza.build()
}

/// `stanza` addressed to `to`, and with the `id` the recipient's own post had, when given.
pub fn addressed(stanza: &Element, to: &str, id: Option<&str>) -> Element {
    let mut stanza = stanza.clone();
    set(&mut stanza, "to", to);
    if let Some(id) = id {
        set(&mut stanza, "id", id);
    }
    stanza
}

/// The room's subject (XEP-0045 §7.2.15), from the room or the nick who set it; an empty
/// `<subject/>` when there is none, which tells the client the join is complete.
pub fn subject(from: Jid, to: Jid, text: &str, id: &str) -> Element {
    Element::builder("message", NS_COMPONENT)
        .with("type", "groupchat")
        .with("from", from.to_string())
        .with("to", to.to_string())
        .with("id", id)
        .append(Element::builder("subject", NS_COMPONENT).append(text))
        .build()
}

/// Whether a presence is a join (carries `<x xmlns='http://jabber.org/protocol/muc'/>`).
pub fn is_join(presence: &Element) -> bool {
    presence.has_child("x", NS_MUC)
}

/// A join's password and history wish, as the join presence carries them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JoinWish {
    /// `<password/>`.
    pub password: Option<String>,
    /// `<history maxstanzas/>`.
    pub max_stanzas: Option<u32>,
    /// `<history seconds/>`.
    pub seconds: Option<u64>,
    /// `<history since/>`, as written (XEP-0082).
    pub since: Option<String>,
}

/// Reads a join presence's `<x xmlns='muc'/>`.
pub fn join_wish(presence: &Element) -> JoinWish {
    let Some(x) = presence.get_child("x", NS_MUC) else {
        return JoinWish::default();
    };
    let password = x.get_child("password", NS_MUC).map(Element::text);
    let history = x.get_child("history", NS_MUC);
    let number = |name: &'static str| history.and_then(|history| history.attr(name));
    JoinWish {
        password,
        max_stanzas: number("maxstanzas").and_then(|n| n.parse().ok()),
        seconds: number("seconds").and_then(|n| n.parse().ok()),
        since: number("since").map(str::to_owned),
    }
}

/// Whether a message carries a XEP-0045 invite or another `muc#user` payload rather than
/// chat (those are not passed on).
pub fn is_muc_user_payload(message: &Element) -> bool {
    message.has_child("x", NS_MUC_USER)
}

/// The `muc#user` marker that tells a client a chat message is private within a room
/// (XEP-0045 §7.5).
pub fn private_marker() -> Element {
    Element::builder("x", NS_MUC_USER).build()
}

/// The disco#info of a room: `conference/text`, MUC, its features, and `muc#roominfo`.
pub fn room_info(name: &str, subject: &str, occupants: usize, features: &[&str]) -> Element {
    let mut query = Element::builder("query", "http://jabber.org/protocol/disco#info").append(
        Element::builder("identity", "http://jabber.org/protocol/disco#info")
            .with("category", "conference")
            .with("type", "text")
            .with("name", name),
    );
    for feature in features {
        query = query.append(
            Element::builder("feature", "http://jabber.org/protocol/disco#info")
                .with("var", *feature),
        );
    }
    let field = |var: &str, value: String| {
        Element::builder("field", "jabber:x:data")
            .with("var", var)
            .append(Element::builder("value", "jabber:x:data").append(value))
    };
    let form = Element::builder("x", "jabber:x:data")
        .with("type", "result")
        .append(
            Element::builder("field", "jabber:x:data")
                .with("var", "FORM_TYPE")
                .with("type", "hidden")
                .append(
                    Element::builder("value", "jabber:x:data")
                        .append("http://jabber.org/protocol/muc#roominfo"),
                ),
        )
        .append(field("muc#roominfo_subject", subject.to_owned()))
        .append(field("muc#roominfo_occupants", occupants.to_string()));
    query.append(form).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kick_is_unavailable_with_role_none_actor_reason_and_codes() {
        let presence = occupant(&OccupantPresence {
            from: "#r@gw/bob".parse().unwrap(),
            to: "bob@x/phone".parse().unwrap(),
            role: Role::Participant,
            affiliation: Affiliation::None,
            occupant_id: "abc",
            unavailable: true,
            statuses: &[status::SELF, status::KICKED],
            new_nick: None,
            actor: Some("op"),
            reason: Some("spam"),
        });
        let xml = String::from(&presence);
        assert!(xml.contains("type='unavailable'"), "{xml}");
        assert!(xml.contains("role='none'"), "{xml}");
        assert!(xml.contains("<actor nick='op'/>"), "{xml}");
        assert!(xml.contains("<reason>spam</reason>"), "{xml}");
        assert!(
            xml.contains("code='110'") && xml.contains("code='307'"),
            "{xml}"
        );
    }

    #[test]
    fn a_join_wish_reads_password_and_history() {
        let presence: Element =
            "<presence xmlns='jabber:client'><x xmlns='http://jabber.org/protocol/muc'>\
             <password>pw</password><history maxstanzas='5' seconds='60'/></x></presence>"
                .parse()
                .unwrap();
        let wish = join_wish(&presence);
        assert_eq!(wish.password.as_deref(), Some("pw"));
        assert_eq!(wish.max_stanzas, Some(5));
        assert_eq!(wish.seconds, Some(60));
        assert!(is_join(&presence));
    }
}
