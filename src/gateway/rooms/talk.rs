//! What is said and done in a room: posts and their reflection, private messages,
//! moderation, self-pings, the archive-then-fan-out of room messages with their cursors,
//! and the bridge's room events.

use jabbridge_sdk::{ChatState, ReplyTo};
use tokio::sync::{OwnedSemaphorePermit, oneshot};
use tracing::Instrument;

use super::archive::as_room_message;
use super::*;
use crate::delivery::commit::{Committed, Done};
use crate::gateway::message::Groupchat;
use crate::lanes::{LINGER, Pushed};
use crate::store::Write;
use crate::store::rooms::ArchiveRow;
use crate::xmpp::stanza::{self, StanzaHeader, StanzaKind};

/// A user typing in a room, or stopped: shown to the room's other members at once, as a
/// MUC does, and passed to a bridge that carries typing. (Bridges do not report the typing
/// of the core's own users: the core shows it.)
async fn typed(gateway: &Gateway, user: &str, nick: &str, room: &RoomId, state: ChatState) {
    let shown = {
        let rooms = gateway.rooms.lock();
        match (rooms.get(room), room_jid(gateway, room)) {
            (Some(members), Some(room_jid)) => {
                typing_to_others(&room_jid, &recipients(members), nick, state)
            }
            _ => Vec::new(),
        }
    };
    for stanza in shown {
        gateway.send(stanza).await;
    }
    if gateway.bridge.capabilities().chat_states {
        let typist = UserJid::new(user);
        let call = gateway.bridge.room_chat_state(&typist, room, state);
        if let Err(failure) = gateway.call("a chat state", call).await {
            tracing::debug!(%user, %failure, "a chat state was not passed on");
        }
    }
}

/// `nick`'s typing for every recipient but the member of that nick and those away from the
/// room (staying in it without a resource: their bare JID).
fn typing_to_others(
    room_jid: &BareJid,
    everyone: &[(String, String, String)],
    nick: &str,
    state: ChatState,
) -> Vec<Element> {
    let Some(from) = occupant_jid(room_jid, nick) else {
        return Vec::new();
    };
    everyone
        .iter()
        .filter(|(member, member_nick, to)| member_nick != nick && to != member)
        .filter_map(|(_, _, to)| to.parse().ok())
        .map(|to| stanza::chat_state(from.clone(), to, state, true))
        .collect()
}

/// A groupchat message from a user: a post, or a subject change.
pub(in crate::gateway) async fn on_groupchat(gateway: &Gateway, message: Groupchat<'_>) -> Answer {
    let Groupchat {
        element,
        from,
        room,
        text,
        subject,
    } = message;
    let from = &from;
    gateway.access.check(from.to_bare().as_str())?;
    let (user, posted_as) = joined(gateway, from, &room)?;
    let payload = |name: &str, namespace: &str| {
        element
            .children()
            .find(|payload| payload.is(name, namespace))
    };
    let capabilities = gateway.bridge.capabilities();
    let refused = |what: &str| {
        Err(StanzaFailure::FeatureNotImplemented(format!(
            "{} cannot carry {what} in rooms: it was not sent",
            gateway.info().name
        )))
    };
    if let Some(retract) = payload("retract", muc::NS_RETRACT) {
        if !capabilities.retractions {
            return refused("retractions");
        }
        gateway.access.take(&user)?;
        return touch(
            gateway,
            &user,
            &posted_as,
            &room,
            retract,
            &muc::Touch::Retract,
        )
        .await;
    }
    if let Some(reactions) = payload("reactions", muc::NS_REACTIONS) {
        if !capabilities.reactions {
            return refused("reactions");
        }
        let emojis: Vec<String> = reactions
            .children()
            .filter(|child| child.is("reaction", muc::NS_REACTIONS))
            .map(Element::text)
            .filter(|emoji| !emoji.is_empty())
            .take(MAX_REACTIONS + 1)
            .collect();
        if emojis.len() > MAX_REACTIONS || emojis.iter().any(|emoji| emoji.len() > 64) {
            return Err(StanzaFailure::NotAcceptable(format!(
                "at most {MAX_REACTIONS} reactions of at most 64 bytes each are carried"
            )));
        }
        gateway.access.take(&user)?;
        let react = muc::Touch::React(&emojis);
        return touch(gateway, &user, &posted_as, &room, reactions, &react).await;
    }
    let replaces = match payload("replace", muc::NS_CORRECT) {
        None => None,
        Some(_) if !capabilities.corrections => return refused("corrections"),
        Some(replace) => {
            let id = replace.attr("id").unwrap_or_default();
            Some(MessageId::new(
                own_message(gateway, &user, &room, id).await?.foreign_id,
            ))
        }
    };
    if let Some(subject) = &subject
        && text.is_none()
    {
        let setter = UserJid::new(user.as_str());
        let call = gateway.bridge.set_subject(&setter, &room, subject);
        gateway
            .call("changing the subject", call)
            .await?
            .map_err(action_failure)?;
        return Ok(None);
    }
    let Some(mut text) = text else {
        // A typing notification (markers are not carried).
        if let Some(state) = stanza::chat_state_of(element.children()) {
            typed(gateway, &user, &posted_as, &room, state).await;
        }
        return Ok(None);
    };
    if text.len() > crate::delivery::MAX_TEXT {
        return Err(StanzaFailure::NotAcceptable(format!(
            "the message is {} bytes; at most {} are carried",
            text.len(),
            crate::delivery::MAX_TEXT
        )));
    }
    let stanza_id = element.attr("id").map(str::to_owned);
    let origin = payload("origin-id", muc::NS_SID).and_then(|origin| origin.attr("id"));
    if [stanza_id.as_deref(), origin]
        .iter()
        .flatten()
        .any(|id| id.len() > MAX_ID)
    {
        return Err(StanzaFailure::NotAcceptable(format!(
            "message ids longer than {MAX_ID} bytes are not carried"
        )));
    }
    gateway.access.take(&user)?;
    // A reply names what it replies to by the id the room showed for it; one the archive
    // does not know goes as a plain post, its quote kept.
    let reply = capabilities.replies.then(|| muc::reply_of(element, &text));
    let reply_to = match reply.flatten() {
        Some((id, without_quote)) if id.len() <= MAX_ID => {
            find_settled(gateway, &room, Find::Shown { id, poster: None })
                .await?
                .map(|parent| {
                    text = without_quote;
                    ReplyTo {
                        id: MessageId::new(parent.foreign_id),
                        nick: parent.nick,
                    }
                })
        }
        _ => None,
    };
    let origin_id = origin
        .map(str::to_owned)
        .or_else(|| stanza_id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    // A bridge without registration (IRC) has no data to hand over: no read per post.
    let registration = match gateway.bridge.registers() {
        false => None,
        true => gateway
            .store
            .registration(&gateway.domain, &user)
            .await
            .map_err(|error| gateway.storage_failed(error))?,
    };
    // The post's id is how the network's echo finds its poster: another user's pending
    // post with the same id (a client's bad luck, or someone's malice) gets a fresh one.
    let post_id = {
        let echoes = gateway.rooms.echoes.lock();
        match echoes
            .as_ref()
            .ok()
            .and_then(|echoes| echoes.get(&(room.clone(), origin_id.clone())))
        {
            Some(pending) if pending.user != user => uuid::Uuid::new_v4().to_string(),
            _ => origin_id.clone(),
        }
    };
    let post = RoomPost {
        id: MessageId::new(post_id.as_str()),
        user: UserJid::new(user.as_str()),
        room: room.clone(),
        text: text.clone(),
        registration,
        replaces: replaces.clone(),
        reply_to: reply_to.clone(),
    };
    let poster = Poster {
        user: user.clone(),
        stanza_id,
        origin_id: origin_id.clone(),
        posted: std::time::Instant::now(),
    };
    if let Ok(mut echoes) = gateway.rooms.echoes.lock() {
        echoes.retain(|_, pending| pending.posted.elapsed() < ECHO_WAIT);
        // Recorded before the call: the echo may come before the call returns.
        echoes.insert((room.clone(), post_id.clone()), poster.clone());
    }
    let posted = gateway
        .call("your message", gateway.bridge.send_room_message(post))
        .await;
    let outcome = match posted {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => {
            forget_echo(gateway, &room, &post_id);
            return Err(match error {
                SendError::Permanent { reason } => StanzaFailure::NotAcceptable(reason),
                SendError::Transient { reason, .. } => StanzaFailure::Unavailable(format!(
                    "the network did not take the message ({reason}); send it again"
                )),
            });
        }
        Err(failure) => {
            forget_echo(gateway, &room, &post_id);
            return Err(failure);
        }
    };
    match outcome {
        Posted::EchoFollows => Ok(None),
        Posted::Reflect { foreign_id } => {
            forget_echo(gateway, &room, &post_id);
            // The nick it is reflected under is the one the user has now.
            let nick = joined(gateway, from, &room).map_or(posted_as, |(_, nick)| nick);
            let sender = sender_of(gateway, &room, &nick);
            let message_of = RoomMessage {
                foreign_id: foreign_id
                    .unwrap_or_else(|| MessageId::new(format!("xmpp:{user}:{origin_id}"))),
                nick,
                sender: sender.into(),
                text,
                timestamp: None,
                echo_of: None,
                replaces,
                reply_to: reply_to.map(|to| to.id),
            };
            // Archived and shown after this returns: the user's next post goes to the
            // network meanwhile, and a failure comes back as an error to this one.
            let header = StanzaHeader {
                kind: StanzaKind::Message,
                from: Some(from.to_string()),
                to: element.attr("to").map(str::to_owned),
                id: element.attr("id").map(str::to_owned),
                type_: Some("groupchat".into()),
                muc_join: false,
            };
            said(
                gateway,
                &room,
                message_of,
                Some(poster),
                Then::Refuse(header),
            )
            .await;
            Ok(None)
        }
    }
}

/// The longest id (a message's, its sender's) or nick a room message may carry: the archive
/// indexes them, and a database refuses over-long index rows (PostgreSQL: ~2.7 KB), which
/// would fail every write committed with it.
pub(super) const MAX_ID: usize = 512;

/// Most reactions one user may set on one message at once.
const MAX_REACTIONS: usize = 20;

/// The stable foreign id of the occupant `nick`, as the bridge reported it (the nick itself
/// when it did not).
fn sender_of(gateway: &Gateway, room: &RoomId, nick: &str) -> String {
    let rooms = gateway.rooms.lock();
    rooms
        .get(room)
        .and_then(|state| state.occupants.get(nick))
        .map_or_else(|| nick.to_owned(), |occupant| occupant.id.to_string())
}

/// The archived message of `user`'s in `room` that a client calls `id` (its origin-id or
/// the room's stanza id): what a correction or retraction is about.
async fn own_message(
    gateway: &Gateway,
    user: &str,
    room: &RoomId,
    id: &str,
) -> Result<ArchivedMessage, StanzaFailure> {
    let tables = gateway.store.rooms();
    let find = |id| Find::Shown {
        id,
        poster: Some(user),
    };
    let named = find_settled(gateway, room, find(id))
        .await?
        .ok_or_else(|| {
            StanzaFailure::ItemNotFound(format!(
                "you have no message with id '{id}' in this room (only your own can be \
                 corrected or retracted)"
            ))
        })?;
    // A client naming a correction means the message it corrected.
    let Some(first) = named.replaces.as_deref() else {
        return Ok(named);
    };
    Ok(tables
        .find(&gateway.domain, room.as_str(), find(first))
        .await
        .map_err(|error| gateway.storage_failed(error))?
        .unwrap_or(named))
}

/// A message of `room`'s archive, looked up once every archive write submitted before now
/// is committed (`Write::Barrier`): posts do not wait for their commit, so a correction
/// right behind its post must, or it would miss it (or find an older message that had the
/// same id).
async fn find_settled(
    gateway: &Gateway,
    room: &RoomId,
    find: Find<'_>,
) -> Result<Option<ArchivedMessage>, StanzaFailure> {
    if gateway
        .delivery
        .committer()
        .commit(Write::Barrier)
        .await
        .is_err()
    {
        return Err(StanzaFailure::Internal);
    }
    gateway
        .store
        .rooms()
        .find(&gateway.domain, room.as_str(), find)
        .await
        .map_err(|error| gateway.storage_failed(error))
}

/// A user's retraction (of their own message) or reactions (to anyone's): the bridge
/// carries it, then everyone in the room sees it from the user's occupant JID; a retracted
/// message keeps only a tombstone in the archive.
async fn touch(
    gateway: &Gateway,
    user: &str,
    nick: &str,
    room: &RoomId,
    payload: &Element,
    touch: &muc::Touch<'_>,
) -> Answer {
    let id = payload.attr("id").unwrap_or_default();
    let target = match touch {
        muc::Touch::Retract => own_message(gateway, user, room, id).await?,
        muc::Touch::React(_) => find_settled(gateway, room, Find::Shown { id, poster: None })
            .await?
            .ok_or_else(|| {
                StanzaFailure::ItemNotFound(format!("this room has no message with id '{id}'"))
            })?,
    };
    if target.retracted_at.is_some() {
        return Ok(None);
    }
    let actor = UserJid::new(user);
    let foreign = MessageId::new(target.foreign_id.as_str());
    let outcome = match touch {
        muc::Touch::Retract => {
            let call = gateway.bridge.retract_room_message(&actor, room, &foreign);
            gateway.call("the retraction", call).await?
        }
        muc::Touch::React(emojis) => {
            let call = gateway.bridge.react_in_room(&actor, room, &foreign, emojis);
            gateway.call("the reaction", call).await?
        }
    };
    outcome.map_err(action_failure)?;
    if matches!(touch, muc::Touch::Retract) {
        gateway
            .store
            .rooms()
            .retract(&gateway.domain, room.as_str(), &target)
            .await
            .map_err(|error| gateway.storage_failed(error))?;
        gateway.rooms.first_showing(room, format!("r{}", target.id));
    }
    let sender = sender_of(gateway, room, nick);
    show_touch(gateway, room, nick, &sender, &target.stanza_id, touch).await;
    Ok(None)
}

/// Shows a retraction or reactions of the occupant `nick` (foreign id `sender`) to the
/// message with stanza id `target` to every joined resource. Not archived: a retraction
/// leaves its tombstone in the archive instead; reactions are shown live only.
async fn show_touch(
    gateway: &Gateway,
    room: &RoomId,
    nick: &str,
    sender: &str,
    target: &str,
    touch: &muc::Touch<'_>,
) {
    let Some(room_jid) = room_jid(gateway, room) else {
        return;
    };
    let Some(from) = occupant_jid(&room_jid, nick) else {
        return;
    };
    let occupant = occupant_id(&gateway.domain, room, sender);
    let id = uuid::Uuid::new_v4().to_string();
    let stanza = muc::room_touch(&from, &id, target, &occupant, touch);
    let Ok(template) = Template::new(stanza) else {
        return;
    };
    // After every message archived before it (its target among them).
    match gateway.myself.upgrade() {
        Some(gateway) => queue_show(gateway, room.clone(), Show::Touch(template)),
        None => send_copies(gateway, room, &template).await,
    }
}

/// A copy of `template` to every joined resource of `room`.
async fn send_copies(gateway: &Gateway, room: &RoomId, template: &Template) {
    let copies: Vec<Encoded> = {
        let rooms = gateway.rooms.lock();
        let Some(state) = rooms.get(room) else {
            return;
        };
        recipients(state)
            .iter()
            .map(|(_, _, to)| template.copy(to, None))
            .collect()
    };
    for copy in copies {
        gateway.send_encoded(copy).await;
    }
}

pub(super) fn forget_echo(gateway: &Gateway, room: &RoomId, origin_id: &str) {
    if let Ok(mut echoes) = gateway.rooms.echoes.lock() {
        echoes.remove(&(room.clone(), origin_id.to_owned()));
    }
}

/// A user's mediated invitation (XEP-0045 §7.8.2) of `invitee`, someone on the network by
/// their address on this gateway: the bridge carries it (IRC `INVITE`). Only an occupant
/// invites; anyone else's JID is no one the network can invite.
pub(in crate::gateway) async fn invite(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    invitee: &Jid,
) -> Answer {
    let (user, _) = joined(gateway, from, room)?;
    // Another domain's JID is no one the bridge could parse as a contact.
    let ours = invitee.domain().as_str() == gateway.domain;
    let Some(contact) = ours
        .then(|| gateway.contact_of(invitee))
        .transpose()?
        .flatten()
    else {
        return Err(StanzaFailure::FeatureNotImplemented(format!(
            "only people on the network can be invited here, at addresses of {}",
            gateway.domain
        )));
    };
    let user = UserJid::new(user);
    let call = gateway.bridge.invite(&user, room, &contact);
    gateway
        .call("the invitation", call)
        .await?
        .map_err(action_failure)?;
    Ok(None)
}

/// Whether `from` may write privately to `nick` in `room`: they are in it, and so is `nick`.
pub(in crate::gateway) fn private_allowed(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    nick: &str,
) -> Result<(), StanzaFailure> {
    joined(gateway, from, room)?;
    let rooms = gateway.rooms.lock();
    if !rooms
        .get(room)
        .is_some_and(|state| state.occupants.contains_key(nick))
    {
        return Err(StanzaFailure::ItemNotFound(format!(
            "nobody in the room is called {nick}"
        )));
    }
    Ok(())
}

/// An occupant's vCard (XEP-0054), for a resource in the room: their nick, and the real
/// name the network gave for them.
pub(in crate::gateway) fn card(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    nick: &str,
) -> Result<Element, StanzaFailure> {
    joined(gateway, from, room)?;
    let rooms = gateway.rooms.lock();
    let occupant = rooms
        .get(room)
        .and_then(|state| state.occupants.get(nick))
        .ok_or_else(|| {
            StanzaFailure::ItemNotFound(format!("nobody in the room is called {nick}"))
        })?;
    let mut realname = occupant.realname.clone();
    if let Some(name) = &mut realname {
        crate::xmpp::xml_safe::clean(name);
    }
    Ok(muc::occupant_card(&occupant.nick, realname.as_deref()))
}

/// A XEP-0410 self-ping (and the first check of any ping to an occupant): the sender's nick
/// only when the sending resource is in the room; `not-acceptable` otherwise, which tells
/// the client to join again.
pub(in crate::gateway) fn ping(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
) -> Result<String, StanzaFailure> {
    joined(gateway, from, room).map(|(_, nick)| nick)
}

/// A moderator's `muc#admin` set (XEP-0045 §8-9) from a joined resource: each item
/// becomes one [`Moderation`] for the bridge, in order; the first refusal ends it. What the
/// network then does comes back as room events.
pub(in crate::gateway) async fn administer(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    payload: &Element,
) -> Result<(), StanzaFailure> {
    let (user, _) = joined(gateway, from, room)?;
    let items = muc::admin_items(payload).map_err(StanzaFailure::BadRequest)?;
    let moderator = UserJid::new(user.as_str());
    for item in items {
        let action = match (item.role.as_deref(), item.affiliation.as_deref()) {
            (Some("none"), None) => Moderation::Kick {
                nick: item.nick,
                reason: item.reason,
            },
            (None, Some("outcast")) => Moderation::Ban {
                nick: item.nick,
                reason: item.reason,
            },
            (Some(role), None) => Moderation::SetRole {
                nick: item.nick,
                role: match role {
                    "moderator" => Role::Moderator,
                    "participant" => Role::Participant,
                    "visitor" => Role::Visitor,
                    other => {
                        return Err(StanzaFailure::BadRequest(format!("no role '{other}'")));
                    }
                },
            },
            _ => {
                return Err(StanzaFailure::FeatureNotImplemented(
                    "only kicks (role none), bans (affiliation outcast) and role changes are \
                     carried"
                        .into(),
                ));
            }
        };
        let call = gateway.bridge.moderate(&moderator, room, action);
        gateway
            .call("the moderation", call)
            .await?
            .map_err(|error| match error {
                RoomActionError::Forbidden(text) => StanzaFailure::NotAllowed(text),
                other => action_failure(other),
            })?;
    }
    Ok(())
}

/// Room messages between their submission to the group commit and the end of their
/// fan-out, all rooms together; past it, whoever has the next one waits for room.
pub(super) const SHOWING: usize = 4096;

/// Who waits to hear how a room message went.
pub(super) enum Then {
    /// The bridge that reported it: told once it was shown, or why it was not.
    Reply(Reply),
    /// The user whose post it is, already on the network: told only when it could not be
    /// archived and shown.
    Refuse(StanzaHeader),
}

impl Then {
    async fn tell(self, gateway: &Gateway, outcome: Result<(), CoreError>) {
        match (self, outcome) {
            (Then::Reply(reply), outcome) => {
                let _ = reply.send(outcome);
            }
            (Then::Refuse(_), Ok(())) => {}
            (Then::Refuse(header), Err(error)) => {
                let failure = StanzaFailure::Unavailable(format!(
                    "the message reached the network, but the room cannot show it: {error}"
                ));
                gateway.refuse(&header, &failure).await;
            }
        }
    }
}

/// What waits for its turn to be shown in a room, in order: messages in the order they were
/// archived, and a retraction or reactions after every message archived before it (its
/// target among them).
pub(super) enum Show {
    /// A room message whose archive write was committed (or failed).
    Message(Box<Archived>),
    /// A retraction or reactions: the stanza every joined resource gets a copy of.
    Touch(Template),
}

/// A room message whose archive write was committed (or failed).
pub(super) struct Archived {
    room_jid: BareJid,
    foreign_id: String,
    /// The stanza every copy is made from.
    template: Template,
    poster: Option<Poster>,
    then: Then,
    /// Its archive id, `None` for a foreign id the room had.
    committed: Committed,
    /// Its place among the [`SHOWING`].
    _permit: OwnedSemaphorePermit,
}

/// A room message: archived once (a repeat of its foreign id is dropped), then sent to
/// every joined resource; the poster's resources get it with their own stanza's id.
///
/// The archive write goes through the group commit, and the fan-out happens after this
/// returns, in the room's order: `then` hears the outcome. Waits only for room among the
/// messages being shown ([`SHOWING`]) and in the committer's queue, and, for a correction,
/// for the archive read that finds what it corrects.
pub(super) async fn said(
    gateway: &Gateway,
    room: &RoomId,
    message: RoomMessage,
    poster: Option<Poster>,
    then: Then,
) {
    let prepared = match prepare(gateway, room, message, poster).await {
        Ok(Some(prepared)) => prepared,
        Ok(None) => return then.tell(gateway, Ok(())).await,
        Err(error) => return then.tell(gateway, Err(error)).await,
    };
    let (row, room_jid, template, poster) = prepared;
    let Ok(permit) = gateway.rooms.showing.clone().acquire_owned().await else {
        return then.tell(gateway, Err(CoreError::ShuttingDown)).await;
    };
    let myself = gateway.myself.clone();
    let room = room.clone();
    let foreign_id = row.message.foreign_id.clone();
    let done: Done = Box::new(move |committed| {
        // The gateway is gone only at shutdown: what was archived is sent again at start
        // (the room's cursor did not move), and a bridge waiting is told by the dropped
        // answer.
        let Some(gateway) = myself.upgrade() else {
            return;
        };
        let show = Show::Message(Box::new(Archived {
            room_jid,
            foreign_id,
            template,
            poster,
            then,
            committed,
            _permit: permit,
        }));
        queue_show(gateway, room, show);
    });
    gateway
        .delivery
        .committer()
        .submit(Write::Archive(row), Some(done))
        .await;
}

/// What showing a room message needs: its archive row, the room's JID, the stanza its
/// copies are made from, and its poster. `None` when the room is not open here.
async fn prepare(
    gateway: &Gateway,
    room: &RoomId,
    message: RoomMessage,
    poster: Option<Poster>,
) -> Result<Option<(ArchiveRow, BareJid, Template, Option<Poster>)>, CoreError> {
    let Some(room_jid) = room_jid(gateway, room) else {
        return Err(CoreError::Refused(format!("'{room}' makes no room JID")));
    };
    if gateway.rooms.lock().get(room).is_none() {
        return Ok(None);
    }
    let Some(from) = occupant_jid(&room_jid, &message.nick) else {
        return Err(CoreError::Refused(format!(
            "'{}' is not a nick a JID can carry",
            message.nick
        )));
    };
    // What the archive indexes must fit an index row, and no text column may hold a NUL
    // (PostgreSQL refuses one): a bad row would fail every write committed with it.
    let ids = [
        message.foreign_id.as_str(),
        message.sender.as_str(),
        message.nick.as_str(),
    ];
    if room.as_str().len() > 2 * MAX_ID
        || ids.iter().any(|id| id.len() > MAX_ID || id.contains('\0'))
    {
        return Err(CoreError::Refused(format!(
            "a room message's room id, id, sender or nick is over {MAX_ID} bytes or holds a NUL"
        )));
    }
    let mut text = message.text;
    crate::xmpp::xml_safe::clean(&mut text);
    // A correction names the message it corrects by the id the room showed for it; one of a
    // message never seen here is shown as a new message.
    let replaces = match &message.replaces {
        None => None,
        Some(foreign) => archived_settled(gateway, room, foreign.as_str())
            .await?
            // A correction of a correction names the first message, as XEP-0308 wants.
            .map(|corrected| {
                corrected
                    .replaces
                    .clone()
                    .unwrap_or_else(|| corrected.shown_id().to_owned())
            }),
    };
    // A reply names its parent by the stanza id the room gave it; one to a message never
    // seen here is shown as a plain message.
    let reply_to = match &message.reply_to {
        // Never found: no lookup (PostgreSQL refuses a NUL in a value).
        Some(foreign) if foreign.as_str().len() > MAX_ID || foreign.as_str().contains('\0') => None,
        None => None,
        Some(foreign) => archived_settled(gateway, room, foreign.as_str())
            .await?
            .map(|parent| RepliedTo {
                stanza_id: parent.stanza_id,
                nick: parent.nick,
            }),
    };
    let replied_by = replied_by(&room_jid, reply_to.as_ref());
    // Time-ordered (UUIDv7): consecutive messages' ids sit side by side in the archive's
    // stanza-id index, so a commit writes one of its pages rather than one page per message.
    let stanza_id = uuid::Uuid::now_v7().to_string();
    let sender = message.sender.to_string();
    let room_name = room_jid.to_string();
    let occupant = occupant_id(&gateway.domain, room, &sender);
    let delay = message.timestamp.and_then(|at| {
        let late = SystemTime::now().duration_since(at).ok()? > Duration::from_secs(5);
        late.then(|| humantime::format_rfc3339_millis(at).to_string())
    });
    let template = muc::room_template(&muc::RoomMessage {
        from,
        room: &room_name,
        stanza_id: &stanza_id,
        text: &text,
        occupant_id: &occupant,
        origin_id: poster.as_ref().map(|poster| poster.origin_id.as_str()),
        delay: delay.as_deref(),
        replaces: replaces.as_deref(),
        retracted: None,
        reply_to: reply_to.as_ref().map(|to| muc::Replied {
            id: &to.stanza_id,
            to: replied_by.as_deref(),
        }),
    });
    let row = ArchiveRow {
        bridge: gateway.domain.clone(),
        room: room.to_string(),
        message: NewRoomMessage {
            foreign_id: message.foreign_id.to_string(),
            stanza_id,
            nick: message.nick,
            sender,
            text,
            origin_id: poster.as_ref().map(|poster| poster.origin_id.clone()),
            poster: poster.as_ref().map(|poster| poster.user.clone()),
            said_at: message.timestamp.map_or_else(now_millis, millis),
            replaces,
            post_id: poster.as_ref().and_then(|poster| poster.stanza_id.clone()),
            reply_to,
        },
    };
    Ok(Some((row, room_jid, template, poster)))
}

/// The message `room`'s archive has under the network's id `foreign`, if any.
async fn archived_as(
    gateway: &Gateway,
    room: &RoomId,
    foreign: &str,
) -> Result<Option<ArchivedMessage>, CoreError> {
    let find = Find::Foreign(foreign);
    gateway
        .store
        .rooms()
        .find(&gateway.domain, room.as_str(), find)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot read a room's archive");
            CoreError::Unavailable("the gateway cannot read messages right now".into())
        })
}

/// [`archived_as`], once more after every archive write submitted before now is committed
/// when the first look finds nothing: what a correction or a reply names may have been
/// said just before it, its write still waiting for the group commit.
async fn archived_settled(
    gateway: &Gateway,
    room: &RoomId,
    foreign: &str,
) -> Result<Option<ArchivedMessage>, CoreError> {
    if let Some(found) = archived_as(gateway, room, foreign).await? {
        return Ok(Some(found));
    }
    let committer = gateway.delivery.committer();
    if committer.commit(Write::Barrier).await.is_err() {
        return Err(CoreError::Unavailable(
            "the gateway cannot read messages right now".into(),
        ));
    }
    archived_as(gateway, room, foreign).await
}

/// Files `show` in its room's lane, starting the lane's task if it had none.
fn queue_show(gateway: Arc<Gateway>, room: RoomId, show: Show) {
    match gateway.rooms.shows.push(room.as_str(), show) {
        Pushed::Opened => {
            let span = gateway.span();
            tokio::spawn(show_in_order(gateway, room).instrument(span));
        }
        Pushed::Queued => {}
        // Not reached for messages (fewer permits than a lane holds); a retraction or
        // reactions past them is shown at once.
        Pushed::Full(show) => {
            tokio::spawn(async move {
                match show {
                    Show::Message(message) => {
                        let full = CoreError::Unavailable("too many room messages wait".into());
                        message.then.tell(&gateway, Err(full)).await;
                    }
                    Show::Touch(template) => send_copies(&gateway, &room, &template).await,
                }
            });
        }
    }
}

/// Shows what waits in `room`'s lane, one after another, until nothing waits.
async fn show_in_order(gateway: Arc<Gateway>, room: RoomId) {
    while let Some(show) = gateway.rooms.shows.next_within(room.as_str(), LINGER).await {
        let message = match show {
            Show::Message(message) => *message,
            Show::Touch(template) => {
                send_copies(&gateway, &room, &template).await;
                continue;
            }
        };
        let Archived {
            room_jid,
            foreign_id,
            template,
            poster,
            then,
            committed,
            _permit,
        } = message;
        let outcome = match committed {
            // The committer logged why.
            Err(_) => Err(CoreError::Unavailable(
                "the gateway cannot store messages right now; try again".into(),
            )),
            Ok(None) => known(&gateway, &room, &room_jid, &foreign_id, poster).await,
            Ok(Some(id)) => {
                gateway.rooms.first_showing(&room, format!("m{id}"));
                fan_out(&gateway, &room, template, id, poster.as_ref(), None).await;
                Ok(())
            }
        };
        then.tell(&gateway, outcome).await;
    }
}

/// A room message the archive already had: another user's connection reported it again, or
/// another instance archived it first. Sent to the resources joined here unless it was
/// shown here already, was sent before a restart (by the cursor of the instance that ran
/// these users' sessions, or sent again after it), or is an old one played again (said more
/// than [`REPLAYED`] ago).
async fn known(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    foreign_id: &str,
    poster: Option<Poster>,
) -> Result<(), CoreError> {
    const REPLAYED: i64 = 10 * 60 * 1000;
    let Some(row) = archived_as(gateway, room, foreign_id).await? else {
        return Ok(());
    };
    let sent_before = gateway
        .rooms
        .lock()
        .get(room)
        .map_or(0, |state| state.sent_before);
    if row.said_at < now_millis().saturating_sub(REPLAYED)
        || row.id <= sent_before
        || !gateway.rooms.first_showing(room, format!("m{}", row.id))
    {
        return Ok(());
    }
    let template = as_room_message(gateway, room, room_jid, &row, |message| {
        Some(muc::room_message(message))
    })
    .and_then(|stanza| Template::new(stanza).ok());
    if let Some(template) = template {
        fan_out(gateway, room, template, row.id, poster.as_ref(), None).await;
    }
    Ok(())
}

/// Records, before a room's first fan-out in this process, where its cursor stands: a
/// crash after that resends what follows.
pub(super) async fn know_cursor(gateway: &Gateway, room: &RoomId, before: i64) {
    let known = gateway
        .rooms
        .lock()
        .get(room)
        .is_none_or(|state| state.cursor_known);
    if known {
        return;
    }
    let tables = gateway.store.rooms();
    match tables
        .set_cursor(
            &gateway.domain,
            room.as_str(),
            gateway.delivery.instance(),
            before,
        )
        .await
    {
        Ok(()) => {
            if let Some(state) = gateway.rooms.lock().get_mut(room) {
                state.cursor_known = true;
                state.acked = state.acked.max(before);
                state.flushed = state.flushed.max(before);
            }
        }
        Err(error) => tracing::warn!(%error, "cannot record a room's cursor"),
    }
}

/// Sends a copy of room message `id` to every joined resource, the poster's with their own
/// stanza's id. The last copy is tracked: once the server acknowledged it (and so every copy
/// before it), the room's cursor moves to `id`.
pub(super) async fn fan_out(
    gateway: &Gateway,
    room: &RoomId,
    template: Template,
    id: i64,
    poster: Option<&Poster>,
    only: Option<&BTreeSet<String>>,
) {
    know_cursor(gateway, room, id - 1).await;
    // Resources that joined after it was archived and got it in their history.
    let had = gateway.rooms.had_in_history(room, id);
    // The copies are made under the lock, straight from the membership (no list of
    // recipients in between), and sent after it.
    let mut copies: Vec<Encoded> = {
        let rooms = gateway.rooms.lock();
        let Some(state) = rooms.get(room) else {
            return;
        };
        let mut copies = Vec::with_capacity(state.members.len());
        let mut to = String::new();
        for (user, member) in &state.members {
            if only.is_some_and(|only| !only.contains(user)) {
                continue;
            }
            let own_id = poster
                .filter(|poster| poster.user == *user)
                .and_then(|poster| poster.stanza_id.as_deref());
            for resource in &member.resources {
                to.clear();
                to.push_str(user);
                if !resource.is_empty() {
                    to.push('/');
                    to.push_str(resource);
                }
                if had.contains(&to) {
                    continue;
                }
                copies.push(template.copy(&to, own_id));
            }
        }
        copies
    };
    crate::metrics::room_message(&gateway.domain, copies.len());
    let Some(last) = copies.pop() else {
        gateway.rooms.acked(room, id);
        return;
    };
    for copy in copies {
        gateway.send_encoded(copy).await;
    }
    // Queued in order with the others; the link moves the cursor once the server has it.
    let rooms = gateway.rooms.clone();
    let room = room.clone();
    let queued = gateway
        .link
        .send_encoded_then(last, move || rooms.acked(&room, id))
        .await;
    if queued.is_err() {
        tracing::warn!("link stopped; a room message copy was dropped at shutdown");
    }
}

/// Writes the rooms' cursors that moved since the last time.
pub(super) async fn flush_cursors(gateway: &Gateway) {
    let moved: Vec<(RoomId, i64)> = gateway
        .rooms
        .lock()
        .iter()
        .filter(|(_, state)| state.cursor_known && state.acked > state.flushed)
        .map(|(room, state)| (room.clone(), state.acked))
        .collect();
    let tables = gateway.store.rooms();
    for (room, acked) in moved {
        match tables
            .set_cursor(
                &gateway.domain,
                room.as_str(),
                gateway.delivery.instance(),
                acked,
            )
            .await
        {
            Ok(()) => {
                if let Some(state) = gateway.rooms.lock().get_mut(&room) {
                    state.flushed = state.flushed.max(acked);
                }
            }
            Err(error) => tracing::warn!(%error, "cannot record a room's cursor"),
        }
    }
}

/// Once rooms are rejoined for sessions claimed here: what each room archived after the
/// cursor of the instance that ran those sessions before (per room: those instances, and
/// the users whose sessions they were; the copies a crash may have lost) goes again to
/// those users' resources, with its delay.
pub(super) async fn resend_unsent(gateway: &Gateway, previous: BTreeMap<RoomId, Previously>) {
    const AT_MOST: u32 = 1000;
    let tables = gateway.store.rooms();
    for (room, Previously { instances, users }) in previous {
        let mut cursor: Option<i64> = None;
        for instance in &instances {
            match tables
                .cursor(&gateway.domain, room.as_str(), instance)
                .await
            {
                Ok(Some(sent)) => cursor = Some(cursor.map_or(sent, |known| known.min(sent))),
                // Never fanned out there: nothing to resend for it.
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read a room's cursor"),
            }
        }
        let Some(cursor) = cursor else {
            continue;
        };
        // Only where one instance runs: on PostgreSQL another instance may have archived a
        // line below the cursor that the one before never showed (it crashed before its
        // connection reported it), and that line would be lost here.
        if gateway.store.is_sqlite()
            && let Some(state) = gateway.rooms.lock().get_mut(&room)
        {
            state.sent_before = state.sent_before.max(cursor);
        }
        let page = crate::store::rooms::PageQuery {
            after: Some(cursor),
            max: AT_MOST,
            ..Default::default()
        };
        let unsent = match tables.page(&gateway.domain, room.as_str(), &page).await {
            Ok((unsent, _)) => unsent,
            Err(error) => {
                tracing::warn!(%error, "cannot read what a room did not send");
                continue;
            }
        };
        let Some(room_jid) = room_jid(gateway, &room) else {
            continue;
        };
        if !unsent.is_empty() {
            tracing::info!(%room, count = unsent.len(), "sending again what a room had not sent");
        }
        for message in unsent {
            // Sent now: the network reporting it again (a history replay) shows it no more.
            gateway
                .rooms
                .first_showing(&room, format!("m{}", message.id));
            let template = as_room_message(gateway, &room, &room_jid, &message, |message| {
                Some(muc::room_message(message))
            })
            .and_then(|stanza| Template::new(stanza).ok());
            if let Some(template) = template {
                fan_out(gateway, &room, template, message.id, None, Some(&users)).await;
            }
        }
    }
}

/// The network retracted a message (`reaction` is `None`) or someone's reactions to it
/// changed: shown to every joined resource, a retraction also leaving a tombstone in the
/// archive. About a message never seen here, nothing happens.
async fn touched(
    gateway: &Gateway,
    room: &RoomId,
    foreign_id: &MessageId,
    reaction: Option<&jabbridge_sdk::Reaction>,
) -> Result<(), CoreError> {
    let tables = gateway.store.rooms();
    let unavailable = |error: crate::store::StoreError| {
        tracing::error!(%error, "cannot read or change a room's archive");
        CoreError::Unavailable("the gateway cannot store messages right now; try again".into())
    };
    let Some(target) = tables
        .find(
            &gateway.domain,
            room.as_str(),
            Find::Foreign(foreign_id.as_str()),
        )
        .await
        .map_err(unavailable)?
    else {
        return Ok(());
    };
    match reaction {
        None => {
            tables
                .retract(&gateway.domain, room.as_str(), &target)
                .await
                .map_err(unavailable)?;
            // Shown here once, even when another instance made the tombstone first.
            if gateway.rooms.first_showing(room, format!("r{}", target.id)) {
                let retract = muc::Touch::Retract;
                show_touch(
                    gateway,
                    room,
                    &target.nick,
                    &target.sender,
                    &target.stanza_id,
                    &retract,
                )
                .await;
            }
        }
        Some(reaction) => {
            let key = format!(
                "x{}/{}/{}",
                target.id,
                reaction.nick,
                reaction.emojis.join("\u{1f}")
            );
            if target.retracted_at.is_none() && gateway.rooms.first_showing(room, key) {
                let react = muc::Touch::React(&reaction.emojis);
                let sender = reaction.sender.to_string();
                show_touch(
                    gateway,
                    room,
                    &reaction.nick,
                    &sender,
                    &target.stanza_id,
                    &react,
                )
                .await;
            }
        }
    }
    Ok(())
}

/// A room message a bridge reported: `reply` is told once it was shown (or why not), after
/// this returns.
pub async fn message_event(gateway: &Gateway, room: RoomId, message: RoomMessage, reply: Reply) {
    let poster = message.echo_of.as_ref().and_then(|post| {
        gateway
            .rooms
            .echoes
            .lock()
            .ok()?
            .remove(&(room.clone(), post.to_string()))
    });
    said(gateway, &room, message, poster, Then::Reply(reply)).await;
}

/// What a bridge waiting for a room event is told.
pub type Reply = oneshot::Sender<Result<(), CoreError>>;

/// Serves a bridge's [`RoomEvent`]: updates the room and shows the change to every joined
/// resource.
pub async fn event(gateway: &Gateway, room: RoomId, event: RoomEvent) -> Result<(), CoreError> {
    if let RoomEvent::Message(message) = event {
        let (reply, answer) = oneshot::channel();
        message_event(gateway, room, message, reply).await;
        return answer.await.unwrap_or(Err(CoreError::ShuttingDown));
    }
    if let RoomEvent::Retracted { foreign_id } = &event {
        return touched(gateway, &room, foreign_id, None).await;
    }
    if let RoomEvent::Reacted(reaction) = &event {
        return touched(gateway, &room, &reaction.to, Some(reaction)).await;
    }
    let Some(room_jid) = room_jid(gateway, &room) else {
        return Err(CoreError::Refused(format!("'{room}' makes no room JID")));
    };
    if let RoomEvent::Invited { user, by } = &event {
        // For a user in the room or not: no room state is needed. Only to a user of this
        // bridge: it names no one else to write to.
        if gateway.access.role(user.as_str()).is_none() {
            return Err(CoreError::Refused(format!(
                "{user} is no user of this bridge"
            )));
        }
        let by = gateway.contact_jid(by).map_err(CoreError::Refused)?;
        let to: Jid = (user.as_str().parse())
            .map_err(|_| CoreError::Refused(format!("'{user}' is no JID")))?;
        let id = uuid::Uuid::new_v4().to_string();
        let invitation = muc::invitation(&Jid::from(room_jid), &to, &by, &id);
        gateway.send(invitation).await;
        return Ok(());
    }
    let mut removed_users = Vec::new();
    let mut renamed_user = None;
    let stanzas = {
        let mut rooms = gateway.rooms.lock();
        let Some(state) = rooms.get_mut(&room) else {
            return Ok(());
        };
        let mut stanzas = Vec::new();
        let everyone = recipients(state);
        match event {
            // Served above.
            RoomEvent::Message(_)
            | RoomEvent::Retracted { .. }
            | RoomEvent::Reacted(_)
            | RoomEvent::Invited { .. } => {}
            RoomEvent::Occupant(occupant) => {
                let known = state
                    .occupants
                    .insert(occupant.nick.clone(), Box::new(occupant.clone()));
                // Nothing changed (a network repeating what it said): nothing to show. A
                // client may take a second self-presence for an error and bounce it.
                let unchanged = known.as_deref() == Some(&occupant);
                // Everyone but the occupant gets the same presence: encoded once, copied.
                let mut others = Others::default();
                for (_, nick, to) in everyone.iter().filter(|_| !unchanged) {
                    let own = *nick == occupant.nick;
                    if own && known.is_none() {
                        // Their own join was shown when they joined.
                        continue;
                    }
                    if own {
                        let shape = Shape {
                            statuses: &[status::SELF],
                            ..Shape::default()
                        };
                        let presence = presence_of(gateway, &room, &room_jid, &occupant, to, shape);
                        stanzas.extend(presence.map(Out::Stanza));
                    } else {
                        let template = others.get(|| {
                            presence_of(gateway, &room, &room_jid, &occupant, to, Shape::default())
                        });
                        stanzas.extend(template.map(|template| Out::Copy(template.copy(to, None))));
                    }
                }
            }
            RoomEvent::Left { .. } | RoomEvent::Kicked { .. } | RoomEvent::Banned { .. } => {
                if let Some(gone) = Gone::of(&event) {
                    removed_users =
                        remove_occupant(gateway, &room, &room_jid, state, &gone, &mut stanzas);
                }
            }
            RoomEvent::Renamed { old, new } => {
                let mut occupant = state
                    .occupants
                    .remove(&old)
                    .unwrap_or_else(|| Box::new(Occupant::new(old.clone())));
                // Our user under that nick, joined from a client or not.
                renamed_user = (state.members.iter())
                    .find(|(_, member)| member.nick == old)
                    .map(|(user, _)| user.clone());
                for (_, member_nick, to) in &everyone {
                    let own = *member_nick == old;
                    let gone: &[u16] = if own {
                        &[status::NICK_CHANGED, status::SELF]
                    } else {
                        &[status::NICK_CHANGED]
                    };
                    let shape = Shape {
                        unavailable: true,
                        statuses: gone,
                        new_nick: Some(&new),
                        ..Shape::default()
                    };
                    let presence = presence_of(gateway, &room, &room_jid, &occupant, to, shape);
                    stanzas.extend(presence.map(Out::Stanza));
                    occupant.nick.clone_from(&new);
                    let back: &[u16] = if own { &[status::SELF] } else { &[] };
                    let shape = Shape {
                        statuses: back,
                        ..Shape::default()
                    };
                    let presence = presence_of(gateway, &room, &room_jid, &occupant, to, shape);
                    stanzas.extend(presence.map(Out::Stanza));
                    occupant.nick.clone_from(&old);
                }
                occupant.nick.clone_from(&new);
                state.occupants.insert(new.clone(), occupant);
                if let Some(user) = &renamed_user
                    && let Some(member) = state.members.get_mut(user)
                {
                    member.nick.clone_from(&new);
                }
            }
            RoomEvent::Notice { user, text } => {
                let mut text = text;
                crate::xmpp::xml_safe::clean(&mut text);
                let id = uuid::Uuid::new_v4().to_string();
                for (member, _, to) in &everyone {
                    if user.as_ref().is_some_and(|user| user.as_str() != member) {
                        continue;
                    }
                    if let Ok(to) = to.parse() {
                        let from = Jid::from(room_jid.clone());
                        stanzas.push(Out::Stanza(muc::notice(from, to, &text, &id)));
                    }
                }
            }
            RoomEvent::Typing {
                nick,
                state: typing,
            } => {
                let shown = typing_to_others(&room_jid, &everyone, &nick, typing);
                stanzas.extend(shown.into_iter().map(Out::Stanza));
            }
            RoomEvent::Subject(subject) => {
                let from = subject
                    .by
                    .as_deref()
                    .and_then(|nick| occupant_jid(&room_jid, nick))
                    .unwrap_or_else(|| Jid::from(room_jid.clone()));
                let id = uuid::Uuid::new_v4().to_string();
                for (_, _, to) in &everyone {
                    if let Ok(to) = to.parse() {
                        stanzas.push(Out::Stanza(muc::subject(
                            from.clone(),
                            to,
                            &subject.text,
                            &id,
                        )));
                    }
                }
                state.subject = Some(subject);
            }
        }
        for user in &removed_users {
            state.members.remove(user);
        }
        if state.unused() {
            rooms.remove(&room);
        }
        stanzas
    };
    for stanza in stanzas {
        match stanza {
            Out::Stanza(stanza) => gateway.send(stanza).await,
            Out::Copy(copy) => gateway.send_encoded(copy).await,
        }
    }
    let tables = gateway.store.rooms();
    for user in removed_users {
        if let Err(error) = tables
            .leave(&gateway.domain, &user, room.as_str(), None)
            .await
        {
            tracing::error!(%error, "cannot record that a user left a room");
        }
    }
    if let Some(user) = renamed_user {
        let nick = gateway
            .rooms
            .lock()
            .get(&room)
            .and_then(|state| state.members.get(&user))
            .map(|member| member.nick.clone());
        if let Some(nick) = nick
            && let Err(error) = tables
                .rename(&gateway.domain, &user, room.as_str(), &nick)
                .await
        {
            tracing::error!(%error, "cannot record a nick change");
        }
    }
    Ok(())
}

/// An occupant leaving, kicked or banned.
pub(super) struct Gone<'a> {
    nick: &'a str,
    by: Option<&'a str>,
    reason: Option<&'a str>,
    /// 307 (kicked) or 301 (banned); none for a leave.
    code: Option<u16>,
}

impl<'a> Gone<'a> {
    /// The departure an event reports, if it reports one.
    fn of(event: &'a RoomEvent) -> Option<Self> {
        let (nick, by, reason, code) = match event {
            RoomEvent::Left { nick, reason } => (nick, None, reason, None),
            RoomEvent::Kicked { nick, by, reason } => {
                (nick, by.as_deref(), reason, Some(status::KICKED))
            }
            RoomEvent::Banned { nick, by, reason } => {
                (nick, by.as_deref(), reason, Some(status::BANNED))
            }
            _ => return None,
        };
        Some(Gone {
            nick,
            by,
            reason: reason.as_deref(),
            code,
        })
    }
}

/// Takes an occupant out of the room and shows it to everyone; when the occupant is one of
/// our users, they are out of the room too (with 110). Returns those users.
pub(super) fn remove_occupant(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    state: &mut Room,
    gone: &Gone<'_>,
    stanzas: &mut Vec<Out>,
) -> Vec<String> {
    let occupant = state
        .occupants
        .remove(gone.nick)
        .unwrap_or_else(|| Box::new(Occupant::new(gone.nick)));
    // Our users under that nick, joined from a client or not (staying, or within the grace
    // period): out of the room.
    let removed = (state.members.iter())
        .filter(|(_, member)| member.nick == gone.nick)
        .map(|(user, _)| user.clone())
        .collect();
    // Everyone but the occupant gets the same presence: encoded once, copied.
    let mut others = Others::default();
    for (_, nick, to) in recipients(state) {
        let own = nick == gone.nick;
        let mut statuses = Vec::with_capacity(2);
        statuses.extend(gone.code);
        if own {
            statuses.push(status::SELF);
        }
        let shape = Shape {
            unavailable: true,
            statuses: &statuses,
            actor: gone.by,
            reason: gone.reason,
            ..Shape::default()
        };
        if own {
            let presence = presence_of(gateway, room, room_jid, &occupant, &to, shape);
            stanzas.extend(presence.map(Out::Stanza));
        } else {
            let template =
                others.get(|| presence_of(gateway, room, room_jid, &occupant, &to, shape));
            stanzas.extend(template.map(|template| Out::Copy(template.copy(&to, None))));
        }
    }
    removed
}

/// A stanza a room event shows: built for its one recipient, or a copy of a template.
pub(super) enum Out {
    Stanza(Element),
    Copy(Encoded),
}

/// The presence every recipient but its subject gets, made on first use from the first
/// such recipient's (its `to` is put in per copy).
#[derive(Default)]
struct Others(Option<Option<Template>>);

impl Others {
    fn get(&mut self, make: impl FnOnce() -> Option<Element>) -> Option<&Template> {
        self.0
            .get_or_insert_with(|| make().and_then(|stanza| Template::new(stanza).ok()))
            .as_ref()
    }
}
