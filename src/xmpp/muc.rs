//! The stanzas of a group chat (XEP-0045) as the core sends them: occupant presences with
//! their `muc#user` items and status codes, room messages with the room's XEP-0359
//! stanza-id and XEP-0421 occupant-id, subjects, and the disco#info of a room. Built with
//! minidom; a room message for its fan-out is written as a template's bytes directly.

use jabbridge_sdk::{Affiliation, Role};
use xmpp_parsers::{
    jid::Jid,
    minidom::{Element, ElementBuilder, rxml::NcName},
};

use super::encode::{Template, TemplateWriter};
use super::stanza::NS_HINTS;

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

/// `http://jabber.org/protocol/muc`: what a join presence carries.
pub const NS_MUC: &str = "http://jabber.org/protocol/muc";
/// `http://jabber.org/protocol/muc#user`: what the room's presences carry.
pub const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
/// XEP-0421 occupant ids.
pub const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
/// XEP-0359 stanza and origin ids.
pub const NS_SID: &str = "urn:xmpp:sid:0";
/// XEP-0308 last message correction.
pub const NS_CORRECT: &str = "urn:xmpp:message-correct:0";
/// XEP-0424 message retraction.
pub const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0444 message reactions.
pub const NS_REACTIONS: &str = "urn:xmpp:reactions:0";
/// XEP-0461 message replies.
pub const NS_REPLY: &str = "urn:xmpp:reply:0";
/// XEP-0428 fallback indication.
pub const NS_FALLBACK: &str = "urn:xmpp:fallback:0";
/// XEP-0313 message archive management.
pub const NS_MAM: &str = "urn:xmpp:mam:2";
/// XEP-0059 result set management.
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0297 forwarding.
const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0004 data forms.
const NS_DATA: &str = "jabber:x:data";
/// What a forwarded stanza is written in.
const NS_CLIENT: &str = "jabber:client";
/// XEP-0203 delays.
const NS_DELAY: &str = "urn:xmpp:delay";
/// The namespace stanzas carry on a component link.
const NS_COMPONENT: &str = "jabber:component:accept";

/// XEP-0249: direct MUC invitations.
const NS_CONFERENCE: &str = "jabber:x:conference";

/// XEP-0045 status codes the core sends.
pub mod status {
    /// The presence is about the recipient themselves.
    pub const SELF: u16 = 110;
    /// The room changed the nick the user asked for.
    pub const NICK_ASSIGNED: u16 = 210;
    /// Banned.
    pub const BANNED: u16 = 301;
    /// Nick changed.
    pub const NICK_CHANGED: u16 = 303;
    /// Kicked.
    pub const KICKED: u16 = 307;
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
    /// Away, with this message (`<show>away</show>`, the message as the status).
    pub away: Option<&'a str>,
    /// The bare JID the item shows for them (`jid`): where they connect from.
    pub jid: Option<&'a str>,
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
    if let Some(jid) = presence.jid {
        item = item.with("jid", jid);
    }
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
    } else if let Some(message) = presence.away {
        stanza = stanza.append(Element::builder("show", NS_COMPONENT).append("away"));
        if !message.is_empty() {
            stanza = stanza.append(Element::builder("status", NS_COMPONENT).append(message));
        }
    }
    stanza
        .append(x)
        .append(Element::builder("occupant-id", NS_OCCUPANT_ID).with("id", presence.occupant_id))
        .build()
}

/// A message said in a room, before its recipient is set.
#[derive(Clone)]
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
    /// When it corrects an earlier message (XEP-0308): the id that one was shown with.
    pub replaces: Option<&'a str>,
    /// When it was retracted (XEP-0424): the stamp; it is then a tombstone, with no body.
    pub retracted: Option<&'a str>,
    /// When it replies to an earlier message (XEP-0461).
    pub reply_to: Option<Replied<'a>>,
}

/// The message a room message replies to (XEP-0461's `<reply/>`).
#[derive(Clone, Copy)]
pub struct Replied<'a> {
    /// The stanza id the room gave it.
    pub id: &'a str,
    /// The occupant JID of who said it, when their nick makes one.
    pub to: Option<&'a str>,
}

/// What someone did to an earlier room message, shown from their occupant JID.
pub enum Touch<'a> {
    /// Retracted it (XEP-0424).
    Retract,
    /// Set their reactions to it to these (XEP-0444).
    React(&'a [String]),
}

/// A retraction or reactions `from` an occupant (`occupant_id`), to the room message whose
/// stanza id is `target`, before its recipient is set. `id` is the stanza's own id.
pub fn room_touch(
    from: &Jid,
    id: &str,
    target: &str,
    occupant_id: &str,
    touch: &Touch<'_>,
) -> Element {
    let stanza = Element::builder("message", NS_COMPONENT)
        .with("type", "groupchat")
        .with("from", from.to_string())
        .with("id", id);
    let stanza = match touch {
        Touch::Retract => stanza
            .append(Element::builder("retract", NS_RETRACT).with("id", target))
            .append(Element::builder("fallback", NS_FALLBACK).with("for", NS_RETRACT))
            .append(
                Element::builder("body", NS_COMPONENT)
                    .append("This message was retracted; your client does not show it."),
            ),
        Touch::React(emojis) => stanza.append(
            Element::builder("reactions", NS_REACTIONS)
                .with("id", target)
                .append_all(emojis.iter().map(|emoji| {
                    Element::builder("reaction", NS_REACTIONS).append(emoji.as_str())
                })),
        ),
    };
    stanza
        .append(Element::builder("store", NS_HINTS))
        .append(Element::builder("occupant-id", NS_OCCUPANT_ID).with("id", occupant_id))
        .build()
}

/// A groupchat message with no `to` yet, as an element: what history, MAM and resends wrap
/// or copy ([`room_template`] is the same stanza for the fan-out).
pub fn room_message(message: &RoomMessage<'_>) -> Element {
    groupchat(message, NS_COMPONENT)
}

/// [`room_message`] as a template, written directly: the same stanza (a test reads both
/// back), at a fraction of the cost, for the fan-out of every message said in a room.
pub fn room_template(message: &RoomMessage<'_>) -> Template {
    let from = message.from.to_string();
    let mut stanza = TemplateWriter::new("message", message.origin_id.unwrap_or(message.stanza_id));
    stanza.attr("type", "groupchat").attr("from", &from);
    match message.retracted {
        Some(stamp) => stanza
            .start("retracted", Some(NS_RETRACT))
            .attr("stamp", stamp),
        None => stanza.start("body", None).text(message.text),
    };
    stanza
        .end()
        .start("stanza-id", Some(NS_SID))
        .attr("id", message.stanza_id)
        .attr("by", message.room)
        .end()
        .start("occupant-id", Some(NS_OCCUPANT_ID))
        .attr("id", message.occupant_id)
        .end();
    if let Some(origin) = message.origin_id {
        stanza
            .start("origin-id", Some(NS_SID))
            .attr("id", origin)
            .end();
    }
    if let Some(replaces) = message.replaces {
        stanza
            .start("replace", Some(NS_CORRECT))
            .attr("id", replaces)
            .end();
    }
    if let Some(replied) = &message.reply_to {
        stanza.start("reply", Some(NS_REPLY));
        if let Some(to) = replied.to {
            stanza.attr("to", to);
        }
        stanza.attr("id", replied.id).end();
    }
    if let Some(stamp) = message.delay {
        stanza
            .start("delay", Some(NS_DELAY))
            .attr("stamp", stamp)
            .attr("from", message.room)
            .end();
    }
    stanza.finish()
}

fn groupchat(message: &RoomMessage<'_>, namespace: &str) -> Element {
    let mut stanza = Element::builder("message", namespace)
        .with("type", "groupchat")
        .with("from", message.from.to_string())
        .with("id", message.origin_id.unwrap_or(message.stanza_id));
    if let Some(stamp) = message.retracted {
        stanza = stanza.append(Element::builder("retracted", NS_RETRACT).with("stamp", stamp));
    } else {
        stanza = stanza.append(Element::builder("body", namespace).append(message.text));
    }
    stanza = stanza
        .append(
            Element::builder("stanza-id", NS_SID)
                .with("id", message.stanza_id)
                .with("by", message.room),
        )
        .append(Element::builder("occupant-id", NS_OCCUPANT_ID).with("id", message.occupant_id));
    if let Some(origin) = message.origin_id {
        stanza = stanza.append(Element::builder("origin-id", NS_SID).with("id", origin));
    }
    if let Some(replaces) = message.replaces {
        stanza = stanza.append(Element::builder("replace", NS_CORRECT).with("id", replaces));
    }
    if let Some(replied) = &message.reply_to {
        let mut reply = Element::builder("reply", NS_REPLY);
        if let Some(to) = replied.to {
            reply = reply.with("to", to);
        }
        stanza = stanza.append(reply.with("id", replied.id));
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

/// A user's reply (XEP-0461) in `message`: the id of the message it replies to, and `body`
/// without the client's quote of that message (the ranges its XEP-0428 fallback for
/// replies marks, counted in characters), and without the blank space after it. The body
/// stays whole when the fallback's ranges do not fit it, are more than eight, or
/// would leave nothing.
pub fn reply_of<'a>(message: &'a Element, body: &str) -> Option<(&'a str, String)> {
    /// Clients mark one quote; a few more are tolerated, not thousands.
    const MAX_RANGES: usize = 8;
    let reply = message
        .children()
        .find(|child| child.is("reply", NS_REPLY))?;
    let id = reply.attr("id").filter(|id| !id.is_empty())?;
    let whole = Some((id, body.to_owned()));
    let mut ranges = Vec::new();
    for fallback in message
        .children()
        .filter(|child| child.is("fallback", NS_FALLBACK) && child.attr("for") == Some(NS_REPLY))
    {
        for range in fallback.children().filter(|child| child.name() == "body") {
            let bound = |name| {
                range
                    .attr(name)
                    .and_then(|at: &str| at.parse::<usize>().ok())
            };
            match (bound("start"), bound("end")) {
                (Some(start), Some(end)) if start <= end && ranges.len() < MAX_RANGES => {
                    ranges.push((start, end));
                }
                _ => return whole,
            }
        }
    }
    ranges.sort_unstable();
    let fits = ranges.windows(2).all(|pair| pair[0].1 <= pair[1].0);
    // One pass: each character is kept unless it falls in the next range not yet passed.
    let mut kept = String::with_capacity(body.len());
    let mut next = ranges.iter().peekable();
    let mut length = 0;
    for (at, character) in body.chars().enumerate() {
        while next.next_if(|&&(_, end)| end <= at).is_some() {}
        if next.peek().is_none_or(|&&(start, _)| at < start) {
            kept.push(character);
        }
        length = at + 1;
    }
    if !fits || ranges.iter().any(|&(_, end)| end > length) {
        return whole;
    }
    match kept.trim_start() {
        "" => whole,
        rest => Some((id, rest.to_owned())),
    }
}

/// A XEP-0313 query of a room's archive, as the user sent it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ArchiveQuery {
    /// `queryid`, echoed in every result.
    pub query_id: Option<String>,
    /// The form's `start` and `end` (XEP-0082 timestamps, as written).
    pub start: Option<String>,
    /// See `start`.
    pub end: Option<String>,
    /// The form's `with`: an occupant JID.
    pub with: Option<String>,
    /// The form's `after-id` or RSM `<after/>`: a stanza id.
    pub after: Option<String>,
    /// The form's `before-id` or a non-empty RSM `<before/>`: a stanza id.
    pub before: Option<String>,
    /// An empty RSM `<before/>`: the last page.
    pub last: bool,
    /// RSM `<max/>`.
    pub max: Option<u32>,
}

/// Reads a XEP-0313 `<query/>`; an error names what is wrong.
pub fn archive_query(payload: &Element) -> Result<ArchiveQuery, String> {
    let mut query = ArchiveQuery {
        query_id: payload.attr("queryid").map(str::to_owned),
        ..ArchiveQuery::default()
    };
    if let Some(form) = payload.get_child("x", NS_DATA) {
        for field in form.children().filter(|child| child.name() == "field") {
            let value = field
                .children()
                .find(|child| child.name() == "value")
                .map(Element::text);
            match field.attr("var").unwrap_or_default() {
                "FORM_TYPE" => {
                    if value.as_deref() != Some(NS_MAM) {
                        return Err("the form's FORM_TYPE must be urn:xmpp:mam:2".into());
                    }
                }
                "start" => query.start = value,
                "end" => query.end = value,
                "with" => query.with = value,
                "after-id" => query.after = value,
                "before-id" => query.before = value,
                other => return Err(format!("the field '{other}' is not supported")),
            }
        }
    }
    if let Some(set) = payload.get_child("set", NS_RSM) {
        let text = |name: &str| {
            set.children()
                .find(|child| child.name() == name)
                .map(Element::text)
        };
        if let Some(max) = text("max") {
            query.max = Some(
                max.trim()
                    .parse()
                    .map_err(|_| format!("<max>{max}</max> is not a number"))?,
            );
        }
        if let Some(after) = text("after") {
            query.after = Some(after);
        }
        match text("before") {
            Some(before) if before.is_empty() => query.last = true,
            Some(before) => query.before = Some(before),
            None => {}
        }
    }
    Ok(query)
}

/// One archived message as a XEP-0313 result, from the room to `to`.
pub fn archive_result(
    to: &str,
    room: &str,
    query_id: Option<&str>,
    message: &RoomMessage<'_>,
) -> Element {
    let mut result = Element::builder("result", NS_MAM).with("id", message.stanza_id);
    if let Some(query_id) = query_id {
        result = result.with("queryid", query_id);
    }
    let mut forwarded = Element::builder("forwarded", NS_FORWARD);
    if let Some(stamp) = message.delay {
        forwarded = forwarded.append(Element::builder("delay", NS_DELAY).with("stamp", stamp));
    }
    let inner = RoomMessage {
        delay: None,
        ..message.clone()
    };
    Element::builder("message", NS_COMPONENT)
        .with("from", room)
        .with("to", to)
        .append(result.append(forwarded.append(groupchat(&inner, NS_CLIENT))))
        .build()
}

/// The `<fin/>` that ends a XEP-0313 query: whether the page reached the end, and its first
/// and last ids.
pub fn archive_fin(complete: bool, first: Option<&str>, last: Option<&str>) -> Element {
    let mut set = Element::builder("set", NS_RSM);
    if let Some(first) = first {
        set = set.append(
            Element::builder("first", NS_RSM)
                .with("index", "0")
                .append(first),
        );
    }
    if let Some(last) = last {
        set = set.append(Element::builder("last", NS_RSM).append(last));
    }
    Element::builder("fin", NS_MAM)
        .with("complete", if complete { "true" } else { "false" })
        .append(set)
        .build()
}

/// vcard-temp (XEP-0054).
pub const NS_VCARD: &str = "vcard-temp";

/// An occupant's vCard (XEP-0054): their nick, and their full name when the network gave one.
pub fn occupant_card(nick: &str, full_name: Option<&str>) -> Element {
    let mut card = Element::builder("vCard", NS_VCARD);
    if let Some(name) = full_name {
        card = card.append(Element::builder("FN", NS_VCARD).append(name));
    }
    card.append(Element::builder("NICKNAME", NS_VCARD).append(nick))
        .build()
}

/// The form a XEP-0313 query may carry (the answer to a `get`).
pub fn archive_form() -> Element {
    let field = |var: &'static str, type_: &'static str| {
        Element::builder("field", NS_DATA)
            .with("var", var)
            .with("type", type_)
    };
    let form = Element::builder("x", NS_DATA)
        .with("type", "form")
        .append(
            field("FORM_TYPE", "hidden").append(Element::builder("value", NS_DATA).append(NS_MAM)),
        )
        .append(field("with", "jid-single"))
        .append(field("start", "text-single"))
        .append(field("end", "text-single"))
        .append(field("after-id", "text-single"))
        .append(field("before-id", "text-single"));
    Element::builder("query", NS_MAM).append(form).build()
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

/// A message from the room itself (`from` the room's bare JID): a notice, not archived.
pub fn notice(from: Jid, to: Jid, text: &str, id: &str) -> Element {
    Element::builder("message", NS_COMPONENT)
        .with("type", "groupchat")
        .with("from", from.to_string())
        .with("to", to.to_string())
        .with("id", id)
        .append(Element::builder("body", NS_COMPONENT).append(text))
        .append(Element::builder("no-store", NS_HINTS).build())
        .build()
}

/// An invitation to the room `room` for `to`, from `by` (XEP-0045 §7.8.2, mediated, with
/// XEP-0249's direct form beside it, which some clients show instead), with a body for
/// clients that show neither.
pub fn invitation(room: &Jid, to: &Jid, by: &Jid, id: &str) -> Element {
    let invite = Element::builder("invite", NS_MUC_USER).with("from", by.to_string());
    Element::builder("message", NS_COMPONENT)
        .with("from", room.to_string())
        .with("to", to.to_string())
        .with("id", id)
        .append(Element::builder("x", NS_MUC_USER).append(invite))
        .append(Element::builder("x", NS_CONFERENCE).with("jid", room.to_string()))
        .append(
            Element::builder("body", NS_COMPONENT)
                .append(format!("{by} invites you to the room {room}")),
        )
        .build()
}

/// The JID a user's mediated invitation names (`<x xmlns='…muc#user'><invite to='…'/></x>`
/// in a message to the room), when `payload` is one; `Err` when its `to` is no JID.
pub fn invitee(payload: &Element) -> Option<Result<Jid, String>> {
    if !payload.is("x", NS_MUC_USER) {
        return None;
    }
    let invite = payload.get_child("invite", NS_MUC_USER)?;
    let to = invite.attr("to").unwrap_or_default();
    Some(
        to.parse()
            .map_err(|error| format!("'{to}' is no JID: {error}")),
    )
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

/// The longest away text passed on from a presence's `<status/>`, in characters.
const MAX_AWAY: usize = 200;

/// Whether a presence shows its sender away: their status text (empty without one) while
/// its `<show/>` is `away`, `xa` or `dnd`; `None` when they are available.
pub fn away_of(presence: &Element) -> Option<String> {
    let namespace = presence.ns();
    let show = presence.get_child("show", namespace.as_str())?.text();
    if !matches!(show.trim(), "away" | "xa" | "dnd") {
        return None;
    }
    let status = presence
        .get_child("status", namespace.as_str())
        .map(Element::text)
        .unwrap_or_default();
    Some(status.trim().chars().take(MAX_AWAY).collect())
}

/// The `muc#user` marker that tells a client a chat message is private within a room
/// (XEP-0045 §7.5).
pub fn private_marker() -> Element {
    Element::builder("x", NS_MUC_USER).build()
}

/// XEP-0045 §8-10 administration.
pub const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// One `<item/>` of a `muc#admin` set: whom (by nick), what (a role or an affiliation), why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminItem {
    /// The occupant's nick.
    pub nick: String,
    /// The role asked for, as written.
    pub role: Option<String>,
    /// The affiliation asked for, as written.
    pub affiliation: Option<String>,
    /// `<reason/>`.
    pub reason: Option<String>,
}

/// Reads the items of a `muc#admin` query; an error says what is wrong. Occupants are
/// named by nick (a bridged room's occupants have no JIDs to name them by).
pub fn admin_items(payload: &Element) -> Result<Vec<AdminItem>, String> {
    let items: Vec<AdminItem> = payload
        .children()
        .filter(|child| child.name() == "item")
        .map(|item| {
            Ok(AdminItem {
                nick: item
                    .attr("nick")
                    .filter(|nick| !nick.is_empty())
                    .ok_or("name the occupant by nick: occupants here have no JIDs")?
                    .to_owned(),
                role: item.attr("role").map(str::to_owned),
                affiliation: item.attr("affiliation").map(str::to_owned),
                reason: item
                    .children()
                    .find(|child| child.name() == "reason")
                    .map(Element::text),
            })
        })
        .collect::<Result<_, &str>>()?;
    if items.is_empty() {
        return Err("a muc#admin set needs an <item/>".into());
    }
    Ok(items)
}

/// A page of the gateway's room list (disco#items with XEP-0059): `(room JID, name)` pairs,
/// where the page starts in the whole list, and how long the list is.
pub fn room_list(page: &[(Jid, Option<String>)], first_index: usize, count: usize) -> Element {
    use xmpp_parsers::disco::{DiscoItemsResult, Item};
    use xmpp_parsers::rsm::{First, SetResult};
    let items = page
        .iter()
        .map(|(jid, name)| Item {
            jid: jid.clone(),
            node: None,
            name: name.clone(),
        })
        .collect();
    let rsm = SetResult {
        first: page.first().map(|(jid, _)| First {
            index: Some(first_index),
            item: jid.to_string(),
        }),
        last: page.last().map(|(jid, _)| jid.to_string()),
        count: Some(count),
    };
    DiscoItemsResult {
        node: None,
        items,
        rsm: Some(rsm),
    }
    .into()
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
    fn a_room_message_written_directly_reads_back_as_the_one_built() {
        let hostile = "a\u{1}<b> & 'c' \"d\"\r\n\te\u{fffe}]]>";
        let plain = RoomMessage {
            from: "#r%irc.test@gw/n'ick<&\"".parse().unwrap(),
            room: "#r%irc.test@gw",
            stanza_id: "s-1",
            text: "hello",
            occupant_id: "occ",
            origin_id: None,
            delay: None,
            replaces: None,
            retracted: None,
            reply_to: None,
        };
        let variants = [
            plain.clone(),
            RoomMessage {
                text: hostile,
                origin_id: Some("o&<'1"),
                delay: Some("2026-12-04T01:02:03.004Z"),
                replaces: Some("r\u{2}'1"),
                reply_to: Some(Replied {
                    id: "p<'1",
                    to: Some("#r%irc.test@gw/b&b"),
                }),
                ..plain.clone()
            },
            RoomMessage {
                reply_to: Some(Replied { id: "p2", to: None }),
                ..plain.clone()
            },
            RoomMessage {
                retracted: Some("2026-12-04T01:02:03Z"),
                origin_id: Some("o-2"),
                ..plain.clone()
            },
            RoomMessage {
                text: "",
                ..plain.clone()
            },
        ];
        for message in &variants {
            let built = Template::new(room_message(message)).expect("writable");
            let written = room_template(message);
            for id in [None, Some("own\n'id")] {
                let to = "u\u{3}'s@example.org/r<1>";
                let expected = built.copy(to, id).to_element().expect("built parses");
                let got = written.copy(to, id).to_element().expect("written parses");
                assert_eq!(got, expected, "{:?}", message.text);
            }
        }
    }

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
            away: Some("lunch"),
            jid: None,
        });
        let xml = String::from(&presence);
        assert!(xml.contains("type='unavailable'"), "{xml}");
        // Gone is gone: no away on an unavailable presence.
        assert!(!xml.contains("<show"), "{xml}");
        assert!(xml.contains("role='none'"), "{xml}");
        assert!(xml.contains("<actor nick='op'/>"), "{xml}");
        assert!(xml.contains("<reason>spam</reason>"), "{xml}");
        assert!(
            xml.contains("code='110'") && xml.contains("code='307'"),
            "{xml}"
        );
    }

    #[test]
    fn an_away_occupant_shows_away_with_their_message() {
        let presence = occupant(&OccupantPresence {
            from: "#r@gw/bob".parse().unwrap(),
            to: "alice@x/phone".parse().unwrap(),
            role: Role::Participant,
            affiliation: Affiliation::None,
            occupant_id: "abc",
            unavailable: false,
            statuses: &[],
            new_nick: None,
            actor: None,
            reason: None,
            away: Some("at lunch"),
            jid: Some("bob.example.net"),
        });
        let xml = String::from(&presence);
        assert!(xml.contains("<show>away</show>"), "{xml}");
        assert!(xml.contains("<status>at lunch</status>"), "{xml}");
        assert!(xml.contains("jid='bob.example.net'"), "{xml}");
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

    proptest::proptest! {
        /// Any body and any ranges: no panic, and where the ranges are good the text is
        /// what a plain filter of the characters outside them gives.
        #[test]
        fn a_replys_quote_is_taken_out_as_its_ranges_say(
            body in "[a-zé😀 \n>]{0,30}",
            ranges in proptest::collection::vec((0usize..34, 0usize..34), 0..10),
        ) {
            let marks: String = ranges
                .iter()
                .map(|(start, end)| format!("<body start='{start}' end='{end}'/>"))
                .collect();
            let message: Element = format!(
                "<message xmlns='jabber:client'><reply xmlns='urn:xmpp:reply:0' id='p'/>\
                 <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>{marks}\
                 </fallback></message>"
            )
            .parse()
            .expect("well-formed");
            let (_, text) = reply_of(&message, &body).expect("a reply");
            let mut sorted = ranges.clone();
            sorted.sort_unstable();
            let length = body.chars().count();
            let good = sorted.len() <= 8
                && sorted.iter().all(|&(start, end)| start <= end && end <= length)
                && sorted.windows(2).all(|pair| pair[0].1 <= pair[1].0);
            let filtered: String = body
                .chars()
                .enumerate()
                .filter(|(at, _)| !sorted.iter().any(|&(start, end)| (start..end).contains(at)))
                .map(|(_, kept)| kept)
                .collect();
            let expected = match filtered.trim_start() {
                kept if good && !kept.is_empty() => kept.to_owned(),
                _ => body.clone(),
            };
            proptest::prop_assert_eq!(text, expected);
        }
    }

    #[test]
    fn a_reply_loses_the_clients_quote_and_keeps_the_rest() {
        let message = |fallback: &str| -> Element {
            format!(
                "<message xmlns='jabber:client' type='groupchat'>\
                 <reply xmlns='urn:xmpp:reply:0' to='r@gw/bob' id='s-1'/>{fallback}</message>"
            )
            .parse()
            .unwrap()
        };
        let quoted = "> bob: héllo\nyes, and you?";
        let range = |start: usize, end: usize| {
            format!(
                "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
                 <body start='{start}' end='{end}'/></fallback>"
            )
        };
        // Counted in characters: 'é' is two bytes.
        let plain = message(&range(0, 13));
        assert_eq!(
            reply_of(&plain, quoted),
            Some(("s-1", "yes, and you?".to_owned()))
        );
        // The blank space between the quote and the reply goes with the quote.
        assert_eq!(
            reply_of(&plain, "> bob: héllo\n\n  yes"),
            Some(("s-1", "yes".to_owned()))
        );
        // Two ranges, each taken out.
        let two = message(
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
             <body start='3' end='5'/><body start='0' end='1'/></fallback>",
        );
        assert_eq!(reply_of(&two, "abcdefg"), Some(("s-1", "bcfg".to_owned())));
        // No fallback, or one that does not fit the body, overlaps, has too many ranges, or
        // would leave nothing.
        let overlapping = message(
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
             <body start='0' end='5'/><body start='3' end='8'/></fallback>",
        );
        let many = message(&format!(
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>{}</fallback>",
            "<body start='0' end='0'/>".repeat(9)
        ));
        for whole in [&overlapping, &many] {
            assert_eq!(reply_of(whole, quoted), Some(("s-1", quoted.to_owned())));
        }
        for fallback in ["", &range(0, 99), &range(5, 2), &range(0, 26)] {
            let whole = message(fallback);
            assert_eq!(reply_of(&whole, quoted), Some(("s-1", quoted.to_owned())));
        }
        let other = message(
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'>\
             <body start='0' end='13'/></fallback>",
        );
        assert_eq!(
            reply_of(&other, quoted).map(|(_, text)| text),
            Some(quoted.to_owned())
        );
        let none: Element = "<message xmlns='jabber:client'><body>x</body></message>"
            .parse()
            .unwrap();
        assert_eq!(reply_of(&none, "x"), None);
    }
}
