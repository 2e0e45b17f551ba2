//! Group chats (XEP-0045): which of our users is in which room from which resources, under
//! which nick, and what each room looks like (occupants, subject) as its bridge reported it.
//! Joins, leaves, posts, private messages and self-pings from users are decided here; so is
//! the fan-out of what happens in a room to every joined resource.
//!
//! A room message is archived once ([`crate::store::rooms`]) and sent from memory to every
//! joined resource: the archive is the room's history and its de-duplication (one row per
//! foreign id), the in-memory membership is the fan-out list. Joins are persisted per
//! (user, room, resource), so that at start the bridge rejoins the foreign rooms
//! ([`restore`]) and a client that joins again gets a resync without a second foreign join.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use jabbridge_sdk::{
    CoreError, HistoryWish, JoinError, JoinRequest, Joined, MessageId, Moderation, Occupant,
    Posted, Role, RoomActionError, RoomEvent, RoomId, RoomMessage, RoomPost, SendError, Subject,
    UserJid,
};
use sha2::{Digest, Sha256};
use xmpp_parsers::{
    jid::{BareJid, Jid},
    message::Message,
    minidom::Element,
};

use super::{Answer, Gateway};
use crate::store::rooms::{ArchivedMessage, JoinRow, NewRoomMessage};
use crate::store::{millis, now_millis};
use crate::xmpp::muc::{self, OccupantPresence, status};
use crate::xmpp::stanza::StanzaFailure;
use crate::xmpp::xml_safe::Writable;

/// Our users in rooms, and the rooms as the bridge reported them. Shared with the timers
/// that leave a room after the grace period.
#[derive(Default)]
pub struct Rooms {
    rooms: Mutex<HashMap<RoomId, Room>>,
    /// Posts whose echo the network will send ([`Posted::EchoFollows`]), by room and post
    /// id: who posted, and the id their stanza had.
    echoes: Mutex<HashMap<(RoomId, String), Poster>>,
}

/// One room: the network's view of it, and our users in it.
#[derive(Default)]
struct Room {
    /// Everyone in the room, our users included, by nick.
    occupants: BTreeMap<String, Occupant>,
    subject: Option<Subject>,
    /// Our users in the room, by bare JID.
    members: BTreeMap<String, Member>,
    /// The highest archive id whose copies the server acknowledged.
    acked: i64,
    /// The `acked` last written to `room_cursors`.
    flushed: i64,
    /// Whether `room_cursors` has a row for the room (written before its first fan-out).
    cursor_known: bool,
}

/// One of our users in a room.
struct Member {
    nick: String,
    /// Their joined resources; empty while the grace period after the last one left runs.
    resources: BTreeSet<String>,
    /// Bumped whenever a resource joins, so that a grace timer started earlier does nothing.
    generation: u64,
}

/// Who posted a message that is being reflected.
#[derive(Debug, Clone)]
struct Poster {
    user: String,
    /// The `id` of their stanza, which the reflection to them carries.
    stanza_id: Option<String>,
    /// Their XEP-0359 origin-id (or stanza id): what every copy carries.
    origin_id: String,
}

impl Rooms {
    fn lock(&self) -> MutexGuard<'_, HashMap<RoomId, Room>> {
        // A panic while holding the lock is a bug; the map is still consistent enough to
        // serve (every change is one insert or remove).
        self.rooms
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `resource` of `user` is in `room`, and their nick if so.
    fn nick_of(&self, room: &RoomId, user: &str, resource: &str) -> Option<String> {
        let rooms = self.lock();
        let member = rooms.get(room)?.members.get(user)?;
        member
            .resources
            .contains(resource)
            .then(|| member.nick.clone())
    }

    /// The server acknowledged every copy of `room`'s message `id`.
    fn acked(&self, room: &RoomId, id: i64) {
        if let Some(state) = self.lock().get_mut(room) {
            state.acked = state.acked.max(id);
        }
    }

    /// How many rooms have at least one of our users, and how many resources are joined.
    pub fn counts(&self) -> (usize, usize) {
        let rooms = self.lock();
        let resources = rooms
            .values()
            .flat_map(|room| room.members.values())
            .map(|member| member.resources.len())
            .sum();
        (rooms.len(), resources)
    }
}

/// The XEP-0421 occupant-id of a foreign sender in a room: stable for the same sender, room
/// and bridge, and telling nothing of the sender's id.
fn occupant_id(domain: &str, room: &RoomId, sender: &str) -> String {
    let mut hash = Sha256::new();
    for part in [domain, room.as_str(), sender] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    hash.finalize()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `room@domain` for a room.
fn room_jid(gateway: &Gateway, room: &RoomId) -> Option<BareJid> {
    gateway.contact_jid(room).ok().map(|jid| jid.to_bare())
}

/// `room@domain/nick`.
fn occupant_jid(room: &BareJid, nick: &str) -> Option<Jid> {
    format!("{room}/{nick}").parse().ok()
}

/// The presence of `occupant` for `to`.
fn presence_of(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    occupant: &Occupant,
    to: &str,
    shape: Shape<'_>,
) -> Option<Element> {
    let from = occupant_jid(room_jid, &occupant.nick)?;
    let id = occupant_id(&gateway.domain, room, occupant.id.as_str());
    Some(muc::occupant(&OccupantPresence {
        from,
        to: to.parse().ok()?,
        role: occupant.role,
        affiliation: occupant.affiliation,
        occupant_id: &id,
        unavailable: shape.unavailable,
        statuses: shape.statuses,
        new_nick: shape.new_nick,
        actor: shape.actor,
        reason: shape.reason,
    }))
}

/// How an occupant presence looks beyond the occupant.
#[derive(Clone, Copy, Default)]
struct Shape<'a> {
    unavailable: bool,
    statuses: &'a [u16],
    new_nick: Option<&'a str>,
    actor: Option<&'a str>,
    reason: Option<&'a str>,
}

/// Every joined resource of a room: (bare JID, nick, full JID).
fn recipients(room: &Room) -> Vec<(String, String, String)> {
    room.members
        .iter()
        .flat_map(|(user, member)| {
            member
                .resources
                .iter()
                .map(move |resource| (user.clone(), member.nick.clone(), full(user, resource)))
        })
        .collect()
}

fn full(user: &str, resource: &str) -> String {
    if resource.is_empty() {
        user.to_owned()
    } else {
        format!("{user}/{resource}")
    }
}

/// A presence to a room (`to` is `room@domain/nick`): a join, a presence update, a nick
/// change, or a leave.
pub(super) async fn on_presence(
    gateway: &Gateway,
    element: &Element,
    from: &Jid,
    to: &Jid,
    room: RoomId,
) -> Answer {
    let user = from.to_bare().to_string();
    let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
    let unavailable = element.attr("type") == Some("unavailable");
    match element.attr("type") {
        None | Some("unavailable") => {}
        // Subscriptions to a room, probes: not for rooms.
        _ => return Ok(None),
    }
    if unavailable {
        leave(gateway, &room, &user, &resource).await;
        return Ok(None);
    }
    gateway.access.check(&user)?;
    let Some(nick) = to.resource().map(|nick| nick.to_string()) else {
        return Err(StanzaFailure::JidMalformed(
            "to join a room, address it as room@domain/nick".into(),
        ));
    };
    let joined_as = gateway.rooms.nick_of(&room, &user, &resource);
    match joined_as {
        // Still there: a status change, or a client that (re)joins after a restart of its
        // own or of its server: it gets the room again, and the network sees nothing.
        Some(current) if current == nick => {
            if muc::is_join(element) {
                resync(
                    gateway,
                    &room,
                    &user,
                    &resource,
                    &nick,
                    muc::join_wish(element),
                )
                .await;
            }
            Ok(None)
        }
        Some(current) => {
            change_nick(gateway, &room, &user, &current, &nick).await?;
            Ok(None)
        }
        None => join(gateway, room, &user, &resource, nick, element).await,
    }
}

/// Joins `resource` of `user` to `room`: the bridge joins the foreign room for the user's
/// first resource; every resource gets the room shown.
async fn join(
    gateway: &Gateway,
    room: RoomId,
    user: &str,
    resource: &str,
    nick: String,
    element: &Element,
) -> Answer {
    if !gateway.is_member(user).await? {
        return Err(StanzaFailure::RegistrationRequired(format!(
            "register with {} before joining its rooms",
            gateway.domain
        )));
    }
    let wish = muc::join_wish(element);
    // Joins cost the network a join and the gateway state: they count against the rate
    // limit, and a user's rooms are capped.
    gateway.access.take(user)?;
    let (rooms_in, in_this_one) = {
        let rooms = gateway.rooms.lock();
        let rooms_in = rooms
            .values()
            .filter(|state| state.members.contains_key(user))
            .count();
        let in_this_one = rooms
            .get(&room)
            .is_some_and(|state| state.members.contains_key(user));
        (rooms_in, in_this_one)
    };
    let cap = gateway.rooms_config.rooms_per_user;
    if !in_this_one && rooms_in >= cap {
        return Err(StanzaFailure::ResourceConstraint(format!(
            "you are in {rooms_in} rooms of {}, the most one may be in; leave one first",
            gateway.domain
        )));
    }
    let already = {
        let mut rooms = gateway.rooms.lock();
        match rooms
            .get_mut(&room)
            .and_then(|room| room.members.get_mut(user))
        {
            Some(member) => {
                // Another resource of a user already in the room, or one back within the
                // grace period: no second foreign join.
                member.resources.insert(resource.to_owned());
                member.generation += 1;
                Some(member.nick.clone())
            }
            None => None,
        }
    };
    let nick = match already {
        Some(nick) => nick,
        None => {
            let registration = gateway
                .store
                .registration(&gateway.domain, user)
                .await
                .map_err(|error| gateway.storage_failed(error))?;
            let request = JoinRequest {
                user: UserJid::new(user),
                room: room.clone(),
                nick: nick.clone(),
                password: wish.password.clone().map(Into::into),
                history: history_wish(&wish),
                registration,
            };
            let joined = gateway
                .call("joining the room", gateway.bridge.join_room(request))
                .await?
                .map_err(join_failure)?;
            admit(gateway, &room, user, resource, joined)
        }
    };
    let row = JoinRow {
        jid: user.to_owned(),
        room: room.to_string(),
        resource: resource.to_owned(),
        nick: nick.clone(),
    };
    if let Err(error) = gateway.store.rooms().join(&gateway.domain, &row).await {
        // The user is in the room; only a restart would forget it.
        tracing::error!(%error, "cannot record a room join");
    }
    let asked = element
        .attr("to")
        .and_then(|to| to.split_once('/'))
        .map_or(nick.as_str(), |(_, asked)| asked)
        .to_owned();
    resync(gateway, &room, user, resource, &asked, wish).await;
    tracing::info!(user, %room, nick, "joined a room");
    Ok(None)
}

/// Records what the bridge said of a join: the room's occupants and subject, and the user as
/// a member with one resource. Returns the user's nick.
fn admit(gateway: &Gateway, room: &RoomId, user: &str, resource: &str, joined: Joined) -> String {
    let mut rooms = gateway.rooms.lock();
    let state = rooms.entry(room.clone()).or_default();
    state.occupants = joined
        .occupants
        .into_iter()
        .map(|occupant| (occupant.nick.clone(), occupant))
        .collect();
    state
        .occupants
        .entry(joined.nick.clone())
        .or_insert_with(|| Occupant::new(joined.nick.clone()));
    if joined.subject.is_some() {
        state.subject = joined.subject;
    }
    let member = state.members.entry(user.to_owned()).or_insert(Member {
        nick: joined.nick.clone(),
        resources: BTreeSet::new(),
        generation: 0,
    });
    member.nick = joined.nick.clone();
    member.resources.insert(resource.to_owned());
    member.generation += 1;
    joined.nick
}

fn history_wish(wish: &muc::JoinWish) -> HistoryWish {
    let since = wish
        .since
        .as_deref()
        .and_then(|since| humantime::parse_rfc3339_weak(since).ok())
        .or_else(|| {
            wish.seconds
                .map(|seconds| SystemTime::now() - Duration::from_secs(seconds))
        });
    HistoryWish {
        max_stanzas: wish.max_stanzas,
        since,
    }
}

fn join_failure(error: JoinError) -> StanzaFailure {
    match error {
        JoinError::PasswordRequired(text) => StanzaFailure::NotAuthorized(text),
        JoinError::Banned(text) => StanzaFailure::Forbidden(text),
        JoinError::NickInUse(text) => StanzaFailure::Conflict(text),
        JoinError::MembersOnly(text) => StanzaFailure::RegistrationRequired(text),
        JoinError::NoSuchRoom(text) => StanzaFailure::ItemNotFound(text),
        JoinError::Unavailable(text) => StanzaFailure::Unavailable(text),
    }
}

/// Shows `resource` of `user` the room: every other occupant, then themselves (110, and 210
/// when the nick is not the one asked for), then history from the archive, then the subject.
async fn resync(
    gateway: &Gateway,
    room: &RoomId,
    user: &str,
    resource: &str,
    asked: &str,
    wish: muc::JoinWish,
) {
    let Some(room_jid) = room_jid(gateway, room) else {
        return;
    };
    let to = full(user, resource);
    let history = history(gateway, room, &wish).await;
    let stanzas = {
        let rooms = gateway.rooms.lock();
        let Some(state) = rooms.get(room) else { return };
        let Some(member) = state.members.get(user) else {
            return;
        };
        let mut stanzas = Vec::with_capacity(state.occupants.len() + history.len() + 1);
        for occupant in state.occupants.values() {
            if occupant.nick != member.nick {
                stanzas.extend(presence_of(
                    gateway,
                    room,
                    &room_jid,
                    occupant,
                    &to,
                    Shape::default(),
                ));
            }
        }
        let own = state
            .occupants
            .get(&member.nick)
            .cloned()
            .unwrap_or_else(|| Occupant::new(member.nick.clone()));
        let renamed = [status::SELF, status::NICK_ASSIGNED];
        let statuses: &[u16] = if asked == member.nick {
            &renamed[..1]
        } else {
            &renamed
        };
        stanzas.extend(presence_of(
            gateway,
            room,
            &room_jid,
            &own,
            &to,
            Shape {
                statuses,
                ..Shape::default()
            },
        ));
        for message in &history {
            stanzas.extend(archived(gateway, room, &room_jid, message, &to));
        }
        let (text, by) = state.subject.as_ref().map_or(("", None), |subject| {
            (subject.text.as_str(), subject.by.as_deref())
        });
        let from = by
            .and_then(|nick| occupant_jid(&room_jid, nick))
            .unwrap_or_else(|| Jid::from(room_jid.clone()));
        if let Ok(to) = to.parse() {
            stanzas.push(muc::subject(
                from,
                to,
                text,
                &uuid::Uuid::new_v4().to_string(),
            ));
        }
        stanzas
    };
    for stanza in stanzas {
        gateway.send(stanza).await;
    }
}

/// The archive's messages a joining client gets: what it asked for, at most
/// `history_on_join` when it did not say.
async fn history(gateway: &Gateway, room: &RoomId, wish: &muc::JoinWish) -> Vec<ArchivedMessage> {
    let wished = history_wish(wish);
    let max = wished
        .max_stanzas
        .unwrap_or(gateway.rooms_config.history_on_join)
        .min(1000);
    if max == 0 {
        return Vec::new();
    }
    let since = wished.since.map_or(0, millis);
    gateway
        .store
        .rooms()
        .history(&gateway.domain, room.as_str(), max, since)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot read a room's history");
            Vec::new()
        })
}

/// An archived message as history for `to`: with its delay, and the poster's origin-id.
fn archived(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    message: &ArchivedMessage,
    to: &str,
) -> Option<Element> {
    as_room_message(gateway, room, room_jid, message, |message| {
        let stanza = Writable::new(muc::room_message(message)).ok()?;
        Some(stanza.with(&[("to", to)]).into_inner())
    })
}

/// Builds a stanza from an archived message, as the room said it (with its delay).
fn as_room_message(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    message: &ArchivedMessage,
    build: impl FnOnce(&muc::RoomMessage<'_>) -> Option<Element>,
) -> Option<Element> {
    let stamp = humantime::format_rfc3339_millis(
        SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(message.said_at).ok()?),
    )
    .to_string();
    let room_name = room_jid.to_string();
    build(&muc::RoomMessage {
        from: occupant_jid(room_jid, &message.nick)?,
        room: &room_name,
        stanza_id: &message.stanza_id,
        text: &message.text,
        occupant_id: &occupant_id(&gateway.domain, room, &message.sender),
        origin_id: message.origin_id.as_deref(),
        delay: Some(&stamp),
    })
}

/// Answers a XEP-0313 query of a room's archive from one of its members: the page's
/// messages as results to the asking resource, then the `<fin/>` for the iq result.
pub(super) async fn archive_query(
    gateway: &Gateway,
    from: &Jid,
    room: &RoomId,
    payload: &Element,
) -> Result<Element, StanzaFailure> {
    const DEFAULT_PAGE: u32 = 50;
    const LARGEST_PAGE: u32 = 250;
    let user = from.to_bare().to_string();
    let member = gateway
        .rooms
        .lock()
        .get(room)
        .is_some_and(|state| state.members.contains_key(&user));
    if !member {
        return Err(StanzaFailure::Forbidden(
            "join the room to read its archive".into(),
        ));
    }
    gateway.access.take(&user)?;
    let query = muc::archive_query(payload).map_err(StanzaFailure::BadRequest)?;
    let Some(room_jid) = room_jid(gateway, room) else {
        return Err(StanzaFailure::ItemNotFound("no such room".into()));
    };
    let time = |stamp: &Option<String>, name: &str| {
        stamp
            .as_deref()
            .map(|stamp| {
                humantime::parse_rfc3339_weak(stamp)
                    .map(millis)
                    .map_err(|_| {
                        StanzaFailure::BadRequest(format!("{name}: '{stamp}' is not a time"))
                    })
            })
            .transpose()
    };
    let tables = gateway.store.rooms();
    let id_of = async |stanza_id: &Option<String>| match stanza_id {
        None => Ok(None),
        Some(stanza_id) => tables
            .archive_id(&gateway.domain, room.as_str(), stanza_id)
            .await
            .map_err(|error| gateway.storage_failed(error))?
            .map(Some)
            .ok_or_else(|| {
                StanzaFailure::ItemNotFound(format!("no message '{stanza_id}' in the archive"))
            }),
    };
    let nick = match &query.with {
        None => None,
        Some(with) => match with.parse::<Jid>() {
            Ok(jid) if jid.to_bare() == room_jid => jid.resource().map(|nick| nick.to_string()),
            _ => {
                return Err(StanzaFailure::BadRequest(
                    "'with' must be an occupant of this room (room@domain/nick)".into(),
                ));
            }
        },
    };
    let page = crate::store::rooms::PageQuery {
        after: id_of(&query.after).await?,
        before: id_of(&query.before).await?,
        last: query.last,
        start: time(&query.start, "start")?,
        end: time(&query.end, "end")?,
        nick,
        max: query.max.unwrap_or(DEFAULT_PAGE).min(LARGEST_PAGE),
    };
    let (messages, complete) = tables
        .page(&gateway.domain, room.as_str(), &page)
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    let to = from.to_string();
    let room_name = room_jid.to_string();
    for message in &messages {
        let result = as_room_message(gateway, room, &room_jid, message, |message| {
            Some(muc::archive_result(
                &to,
                &room_name,
                query.query_id.as_deref(),
                message,
            ))
        });
        if let Some(result) = result {
            gateway.send(result).await;
        }
    }
    Ok(muc::archive_fin(
        complete,
        messages.first().map(|message| message.stanza_id.as_str()),
        messages.last().map(|message| message.stanza_id.as_str()),
    ))
}

/// A resource left (an unavailable presence, or its server bounced a room message): it gets
/// its own unavailable presence; the user's last resource leaving starts the grace period
/// after which the bridge leaves the foreign room.
async fn leave(gateway: &Gateway, room: &RoomId, user: &str, resource: &str) {
    let left = {
        let mut rooms = gateway.rooms.lock();
        let Some(state) = rooms.get_mut(room) else {
            return;
        };
        let Some(member) = state.members.get_mut(user) else {
            return;
        };
        if !member.resources.remove(resource) {
            return;
        }
        let own = state
            .occupants
            .get(&member.nick)
            .cloned()
            .unwrap_or_else(|| Occupant::new(member.nick.clone()));
        (own, member.resources.is_empty(), member.generation)
    };
    let (own, last, generation) = left;
    if let Err(error) = gateway
        .store
        .rooms()
        .leave(&gateway.domain, user, room.as_str(), Some(resource))
        .await
    {
        tracing::error!(%error, "cannot record a room leave");
    }
    if let Some(room_jid) = room_jid(gateway, room) {
        let shape = Shape {
            unavailable: true,
            statuses: &[status::SELF],
            ..Shape::default()
        };
        let to = full(user, resource);
        if let Some(presence) = presence_of(gateway, room, &room_jid, &own, &to, shape) {
            gateway.send(presence).await;
        }
    }
    if last {
        gateway.leave_later(room.clone(), user.to_owned(), generation);
    }
}

/// The end of a grace period: if the user's resources are all still gone, they leave the
/// room, and the bridge the foreign room. Runs on a timer task of its own.
pub async fn leave_if_gone(gateway: Arc<Gateway>, room: RoomId, user: String, generation: u64) {
    tokio::time::sleep(gateway.rooms_config.leave_grace).await;
    let gone = {
        let mut rooms = gateway.rooms.lock();
        let Some(state) = rooms.get_mut(&room) else {
            return;
        };
        let still_gone = state
            .members
            .get(&user)
            .is_some_and(|member| member.resources.is_empty() && member.generation == generation);
        if still_gone {
            state.members.remove(&user);
            if state.members.is_empty() {
                rooms.remove(&room);
            }
        }
        still_gone
    };
    if gone {
        tracing::info!(user, %room, "left a room");
        let leaver = UserJid::new(user.as_str());
        let call = gateway.bridge.leave_room(&leaver, &room);
        if let Err(failure) = gateway.call("leaving a room", call).await {
            tracing::warn!(%failure, "leaving a room timed out");
        }
    }
}

/// Asks the bridge to change a user's nick in a room; the network's answer comes as a
/// [`RoomEvent::Renamed`].
async fn change_nick(
    gateway: &Gateway,
    room: &RoomId,
    user: &str,
    _current: &str,
    nick: &str,
) -> Result<(), StanzaFailure> {
    let user = UserJid::new(user);
    let call = gateway.bridge.change_nick(&user, room, nick);
    gateway
        .call("changing your nick", call)
        .await?
        .map_err(|error| match error {
            RoomActionError::Forbidden(text) => StanzaFailure::Conflict(text),
            other => action_failure(other),
        })
}

/// A groupchat message from a user: a post, or a subject change.
pub(super) async fn on_groupchat(
    gateway: &Gateway,
    message: &Message,
    from: &Jid,
    room: RoomId,
    text: Option<String>,
) -> Answer {
    gateway.access.check(from.to_bare().as_str())?;
    let (user, posted_as) = joined(gateway, from, &room)?;
    for (name, namespace, what) in [
        ("replace", "urn:xmpp:message-correct:0", "corrections"),
        ("retract", "urn:xmpp:message-retract:1", "retractions"),
        ("reactions", "urn:xmpp:reactions:0", "reactions"),
    ] {
        if message
            .payloads
            .iter()
            .any(|payload| payload.is(name, namespace))
        {
            return Err(StanzaFailure::FeatureNotImplemented(format!(
                "{} cannot carry {what} in rooms: it was not sent",
                gateway.info.name
            )));
        }
    }
    if let Some(subject) = message.subjects.values().next()
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
    let Some(text) = text else {
        // Chat states and markers in rooms are not carried.
        return Ok(None);
    };
    if text.len() > crate::delivery::MAX_TEXT {
        return Err(StanzaFailure::NotAcceptable(format!(
            "the message is {} bytes; at most {} are carried",
            text.len(),
            crate::delivery::MAX_TEXT
        )));
    }
    gateway.access.take(&user)?;
    let stanza_id = message.id.as_ref().map(|id| id.0.clone());
    let origin_id = message
        .payloads
        .iter()
        .find(|payload| payload.is("origin-id", muc::NS_SID))
        .and_then(|origin| origin.attr("id"))
        .map(str::to_owned)
        .or_else(|| stanza_id.clone())
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let registration = gateway
        .store
        .registration(&gateway.domain, &user)
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    let post = RoomPost {
        id: MessageId::new(origin_id.as_str()),
        user: UserJid::new(user.as_str()),
        room: room.clone(),
        text: text.clone(),
        registration,
    };
    let poster = Poster {
        user: user.clone(),
        stanza_id,
        origin_id: origin_id.clone(),
    };
    if let Ok(mut echoes) = gateway.rooms.echoes.lock() {
        // Recorded before the call: the echo may come before the call returns.
        echoes.insert((room.clone(), origin_id.clone()), poster.clone());
    }
    let posted = gateway
        .call("your message", gateway.bridge.send_room_message(post))
        .await;
    let outcome = match posted {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(error)) => {
            forget_echo(gateway, &room, &origin_id);
            return Err(match error {
                SendError::Permanent { reason } => StanzaFailure::NotAcceptable(reason),
                SendError::Transient { reason, .. } => StanzaFailure::Unavailable(format!(
                    "the network did not take the message ({reason}); send it again"
                )),
            });
        }
        Err(failure) => {
            forget_echo(gateway, &room, &origin_id);
            return Err(failure);
        }
    };
    match outcome {
        Posted::EchoFollows => Ok(None),
        Posted::Reflect { foreign_id } => {
            forget_echo(gateway, &room, &origin_id);
            // The nick it is reflected under is the one the user has now.
            let nick = joined(gateway, from, &room).map_or(posted_as, |(_, nick)| nick);
            let sender = {
                let rooms = gateway.rooms.lock();
                rooms
                    .get(&room)
                    .and_then(|state| state.occupants.get(&nick))
                    .map_or_else(|| nick.clone(), |occupant| occupant.id.to_string())
            };
            let message = RoomMessage {
                foreign_id: foreign_id
                    .unwrap_or_else(|| MessageId::new(format!("xmpp:{user}:{origin_id}"))),
                nick,
                sender: sender.into(),
                text,
                timestamp: None,
                echo_of: None,
            };
            said(gateway, &room, message, Some(poster))
                .await
                .map_err(|_| StanzaFailure::Internal)?;
            Ok(None)
        }
    }
}

fn forget_echo(gateway: &Gateway, room: &RoomId, origin_id: &str) {
    if let Ok(mut echoes) = gateway.rooms.echoes.lock() {
        echoes.remove(&(room.clone(), origin_id.to_owned()));
    }
}

/// `from`'s bare JID and nick in `room`, when that resource is joined; `not-acceptable`
/// otherwise (XEP-0045's answer to a non-occupant, which also tells a client to join
/// again).
fn joined(gateway: &Gateway, from: &Jid, room: &RoomId) -> Result<(String, String), StanzaFailure> {
    let user = from.to_bare().to_string();
    let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
    match gateway.rooms.nick_of(room, &user, &resource) {
        Some(nick) => Ok((user, nick)),
        None => Err(StanzaFailure::NotAcceptable(
            "you are not in this room: join it first".into(),
        )),
    }
}

/// Whether `from` may write privately to `nick` in `room`: they are in it, and so is `nick`.
pub(super) fn private_allowed(
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

/// A XEP-0410 self-ping (or any ping to an occupant): answered `Ok` (a result) only when
/// the sending resource is in the room; `not-acceptable` otherwise, which tells the client
/// to join again.
pub(super) fn ping(gateway: &Gateway, from: &Jid, room: &RoomId) -> Result<(), StanzaFailure> {
    joined(gateway, from, room).map(|_| ())
}

/// The gateway's disco#items: the rooms the network lists for `user`, sorted by address
/// and paged with XEP-0059 (`after` a room's JID, 100 per page unless asked, at most 500).
pub(super) async fn list(
    gateway: &Gateway,
    user: &str,
    payload: &Element,
) -> Result<Element, StanzaFailure> {
    const DEFAULT_PAGE: usize = 100;
    const LARGEST_PAGE: usize = 500;
    let query = xmpp_parsers::disco::DiscoItemsQuery::try_from(payload.clone())
        .map_err(|error| StanzaFailure::BadRequest(error.to_string()))?;
    let asker = UserJid::new(user);
    let listed = gateway
        .call("listing the rooms", gateway.bridge.list_rooms(&asker))
        .await?
        .map_err(action_failure)?;
    let mut rooms: Vec<(Jid, Option<String>)> = listed
        .into_iter()
        .filter_map(|listing| {
            let jid = Jid::from(room_jid(gateway, &listing.room)?);
            let name = match (listing.name, listing.occupants) {
                (Some(name), Some(count)) => format!("{} ({count}): {name}", listing.room),
                (None, Some(count)) => format!("{} ({count})", listing.room),
                (Some(name), None) => format!("{}: {name}", listing.room),
                (None, None) => listing.room.to_string(),
            };
            Some((jid, Some(name)))
        })
        .collect();
    rooms.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    rooms.dedup_by(|a, b| a.0 == b.0);
    let (after, index, max) = query
        .rsm
        .map_or((None, None, None), |set| (set.after, set.index, set.max));
    let start = match &after {
        None => index.unwrap_or(0),
        Some(after) => {
            rooms
                .iter()
                .position(|(jid, _)| jid.as_str() == after)
                .ok_or_else(|| {
                    StanzaFailure::ItemNotFound(format!("no room {after} in the list"))
                })?
                + 1
        }
    };
    let max = max.unwrap_or(DEFAULT_PAGE).min(LARGEST_PAGE);
    let page = rooms.get(start..).unwrap_or_default();
    let page = &page[..page.len().min(max)];
    Ok(muc::room_list(page, start, rooms.len()))
}

fn action_failure(error: RoomActionError) -> StanzaFailure {
    match error {
        RoomActionError::Forbidden(text) => StanzaFailure::Forbidden(text),
        RoomActionError::NoSuchOccupant(text) => StanzaFailure::ItemNotFound(text),
        RoomActionError::NotSupported(text) => StanzaFailure::FeatureNotImplemented(text),
        RoomActionError::Unavailable(text) => StanzaFailure::Unavailable(text),
    }
}

/// A moderator's `muc#admin` set (XEP-0045 §8-9) from a joined resource: each item
/// becomes one [`Moderation`] for the bridge, in order; the first refusal ends it. What the
/// network then does comes back as room events.
pub(super) async fn administer(
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

/// The disco#info of a room.
pub(super) fn info(gateway: &Gateway, room: &RoomId) -> Element {
    let (subject, occupants) = {
        let rooms = gateway.rooms.lock();
        rooms.get(room).map_or((String::new(), 0), |state| {
            (
                state
                    .subject
                    .as_ref()
                    .map(|subject| subject.text.clone())
                    .unwrap_or_default(),
                state.occupants.len(),
            )
        })
    };
    let name = gateway.bridge.format_address(room);
    muc::room_info(
        &name,
        &subject,
        occupants,
        &[
            "http://jabber.org/protocol/disco#info",
            muc::NS_MUC,
            "muc_open",
            "muc_public",
            "muc_semianonymous",
            "muc_persistent",
            muc::NS_OCCUPANT_ID,
            muc::NS_SID,
            muc::NS_MAM,
            "urn:xmpp:ping",
        ],
    )
}

/// A room message: archived once (a repeat of its foreign id is dropped), then sent to
/// every joined resource; the poster's resources get it with their own stanza's id.
async fn said(
    gateway: &Gateway,
    room: &RoomId,
    message: RoomMessage,
    poster: Option<Poster>,
) -> Result<(), CoreError> {
    let Some(room_jid) = room_jid(gateway, room) else {
        return Err(CoreError::Refused(format!("'{room}' makes no room JID")));
    };
    if gateway.rooms.lock().get(room).is_none() {
        return Ok(());
    }
    let mut text = message.text;
    crate::xmpp::xml_safe::clean(&mut text);
    let stanza_id = uuid::Uuid::new_v4().to_string();
    let sender = message.sender.to_string();
    let said_at = message.timestamp.map_or_else(now_millis, millis);
    let new = NewRoomMessage {
        foreign_id: message.foreign_id.as_str(),
        stanza_id: &stanza_id,
        nick: &message.nick,
        sender: &sender,
        text: &text,
        origin_id: poster.as_ref().map(|poster| poster.origin_id.as_str()),
        poster: poster.as_ref().map(|poster| poster.user.as_str()),
        said_at,
    };
    let archived = gateway
        .store
        .rooms()
        .archive(&gateway.domain, room.as_str(), &new)
        .await
        .map_err(|error| {
            tracing::error!(%error, "cannot archive a room message");
            CoreError::Unavailable("the gateway cannot store messages right now; try again".into())
        })?;
    let Some(id) = archived else {
        return Ok(());
    };
    let Some(from) = occupant_jid(&room_jid, &message.nick) else {
        return Err(CoreError::Refused(format!(
            "'{}' is not a nick a JID can carry",
            message.nick
        )));
    };
    let room_name = room_jid.to_string();
    let occupant = occupant_id(&gateway.domain, room, &sender);
    let delay = message.timestamp.and_then(|at| {
        let late = SystemTime::now().duration_since(at).ok()? > Duration::from_secs(5);
        late.then(|| humantime::format_rfc3339_millis(at).to_string())
    });
    let template = Writable::new(muc::room_message(&muc::RoomMessage {
        from,
        room: &room_name,
        stanza_id: &stanza_id,
        text: &text,
        occupant_id: &occupant,
        origin_id: poster.as_ref().map(|poster| poster.origin_id.as_str()),
        delay: delay.as_deref(),
    }))
    .map_err(|error| CoreError::Refused(error.to_string()))?;
    fan_out(gateway, room, &template, id, poster.as_ref()).await;
    Ok(())
}

/// Records, before a room's first fan-out in this process, where its cursor stands: a
/// crash after that resends what follows.
async fn know_cursor(gateway: &Gateway, room: &RoomId, before: i64) {
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
        .set_cursor(&gateway.domain, room.as_str(), before)
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
async fn fan_out(
    gateway: &Gateway,
    room: &RoomId,
    template: &Writable,
    id: i64,
    poster: Option<&Poster>,
) {
    know_cursor(gateway, room, id - 1).await;
    // The copies are made under the lock, straight from the membership (no list of
    // recipients in between), and sent after it.
    let mut copies: Vec<Writable> = {
        let rooms = gateway.rooms.lock();
        let Some(state) = rooms.get(room) else {
            return;
        };
        let mut copies = Vec::with_capacity(state.members.len());
        let mut to = String::new();
        for (user, member) in &state.members {
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
                copies.push(match own_id {
                    Some(id) => template.with(&[("to", &to), ("id", id)]),
                    None => template.with(&[("to", &to)]),
                });
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
        gateway.send_writable(copy).await;
    }
    // Queued in order with the others; its acknowledgement is awaited aside.
    match gateway.link.send_writable_tracked(last).await {
        Ok(tracked) => {
            let rooms = gateway.rooms.clone();
            let room = room.clone();
            tokio::spawn(async move {
                if tracked.acknowledged().await {
                    rooms.acked(&room, id);
                }
            });
        }
        Err(_) => tracing::warn!("link stopped; a room message copy was dropped at shutdown"),
    }
}

/// Writes the rooms' cursors that moved since the last time.
async fn flush_cursors(gateway: &Gateway) {
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
            .set_cursor(&gateway.domain, room.as_str(), acked)
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

/// At start, once rooms are rejoined: what each room archived after its cursor (the
/// copies a crash may have lost) goes again to the resources joined now, with its delay.
async fn resend_unsent(gateway: &Gateway) {
    const AT_MOST: u32 = 1000;
    let rooms: Vec<RoomId> = gateway.rooms.lock().keys().cloned().collect();
    let tables = gateway.store.rooms();
    for room in rooms {
        let cursor = match tables.cursor(&gateway.domain, room.as_str()).await {
            Ok(cursor) => cursor,
            Err(error) => {
                tracing::warn!(%error, "cannot read a room's cursor");
                continue;
            }
        };
        let Some(cursor) = cursor else {
            // Never fanned out in a process that recorded it: nothing to resend.
            continue;
        };
        if let Some(state) = gateway.rooms.lock().get_mut(&room) {
            state.cursor_known = true;
            state.acked = state.acked.max(cursor);
            state.flushed = state.flushed.max(cursor);
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
            let template = as_room_message(gateway, &room, &room_jid, &message, |message| {
                Some(muc::room_message(message))
            })
            .and_then(|stanza| Writable::new(stanza).ok());
            if let Some(template) = template {
                fan_out(gateway, &room, &template, message.id, None).await;
            }
        }
    }
}

/// Serves a bridge's [`RoomEvent`]: updates the room and shows the change to every joined
/// resource.
pub async fn event(gateway: &Gateway, room: RoomId, event: RoomEvent) -> Result<(), CoreError> {
    if let RoomEvent::Message(message) = event {
        let poster = message.echo_of.as_ref().and_then(|post| {
            gateway
                .rooms
                .echoes
                .lock()
                .ok()?
                .remove(&(room.clone(), post.to_string()))
        });
        return said(gateway, &room, message, poster).await;
    }
    let Some(room_jid) = room_jid(gateway, &room) else {
        return Err(CoreError::Refused(format!("'{room}' makes no room JID")));
    };
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
            RoomEvent::Message(_) => {}
            RoomEvent::Occupant(occupant) => {
                let known = state
                    .occupants
                    .insert(occupant.nick.clone(), occupant.clone());
                for (_, nick, to) in &everyone {
                    let own = *nick == occupant.nick;
                    if own && known.is_none() {
                        // Their own join was shown when they joined.
                        continue;
                    }
                    let statuses: &[u16] = if own { &[status::SELF] } else { &[] };
                    let shape = Shape {
                        statuses,
                        ..Shape::default()
                    };
                    stanzas.extend(presence_of(gateway, &room, &room_jid, &occupant, to, shape));
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
                    .unwrap_or_else(|| Occupant::new(old.clone()));
                for (user, member_nick, to) in &everyone {
                    let own = *member_nick == old;
                    if own {
                        renamed_user = Some(user.clone());
                    }
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
                    stanzas.extend(presence_of(gateway, &room, &room_jid, &occupant, to, shape));
                    occupant.nick.clone_from(&new);
                    let back: &[u16] = if own { &[status::SELF] } else { &[] };
                    let shape = Shape {
                        statuses: back,
                        ..Shape::default()
                    };
                    stanzas.extend(presence_of(gateway, &room, &room_jid, &occupant, to, shape));
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
            RoomEvent::Subject(subject) => {
                let from = subject
                    .by
                    .as_deref()
                    .and_then(|nick| occupant_jid(&room_jid, nick))
                    .unwrap_or_else(|| Jid::from(room_jid.clone()));
                let id = uuid::Uuid::new_v4().to_string();
                for (_, _, to) in &everyone {
                    if let Ok(to) = to.parse() {
                        stanzas.push(muc::subject(from.clone(), to, &subject.text, &id));
                    }
                }
                state.subject = Some(subject);
            }
        }
        for user in &removed_users {
            state.members.remove(user);
        }
        if state.members.is_empty() {
            rooms.remove(&room);
        }
        stanzas
    };
    for stanza in stanzas {
        gateway.send(stanza).await;
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
struct Gone<'a> {
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
fn remove_occupant(
    gateway: &Gateway,
    room: &RoomId,
    room_jid: &BareJid,
    state: &mut Room,
    gone: &Gone<'_>,
    stanzas: &mut Vec<Element>,
) -> Vec<String> {
    let occupant = state
        .occupants
        .remove(gone.nick)
        .unwrap_or_else(|| Occupant::new(gone.nick));
    let mut removed = Vec::new();
    for (user, nick, to) in recipients(state) {
        let own = nick == gone.nick;
        let mut statuses = Vec::with_capacity(2);
        statuses.extend(gone.code);
        if own {
            statuses.push(status::SELF);
            if !removed.contains(&user) {
                removed.push(user);
            }
        }
        let shape = Shape {
            unavailable: true,
            statuses: &statuses,
            actor: gone.by,
            reason: gone.reason,
            ..Shape::default()
        };
        stanzas.extend(presence_of(gateway, room, room_jid, &occupant, &to, shape));
    }
    removed
}

/// At start: rejoins, for every user who was in a room when Jabbridge stopped, the foreign
/// room, and records their resources as joined. Their clients still believe they are in the
/// room; what they missed meanwhile is in the archive.
pub async fn restore(gateway: &Gateway) {
    let joins = match gateway.store.rooms().joins(&gateway.domain).await {
        Ok(joins) => joins,
        Err(error) => {
            tracing::error!(%error, "cannot read the room joins to restore");
            return;
        }
    };
    let mut by_user_room: BTreeMap<(String, String), Vec<JoinRow>> = BTreeMap::new();
    for row in joins {
        by_user_room
            .entry((row.jid.clone(), row.room.clone()))
            .or_default()
            .push(row);
    }
    for ((user, room), rows) in by_user_room {
        let room = RoomId::new(room);
        let nick = rows[0].nick.clone();
        let registration = gateway
            .store
            .registration(&gateway.domain, &user)
            .await
            .ok()
            .flatten();
        let request = JoinRequest {
            user: UserJid::new(user.as_str()),
            room: room.clone(),
            nick: nick.clone(),
            password: None,
            history: HistoryWish::default(),
            registration,
        };
        match gateway
            .call("rejoining a room", gateway.bridge.join_room(request))
            .await
        {
            Ok(Ok(joined)) => {
                let mut nick = String::new();
                for row in &rows {
                    nick = admit(gateway, &room, &user, &row.resource, joined.clone());
                }
                tracing::info!(user, %room, nick, resources = rows.len(), "rejoined a room");
            }
            Ok(Err(error)) => {
                tracing::warn!(user, %room, %error, "could not rejoin a room; forgetting it");
                let _ = gateway
                    .store
                    .rooms()
                    .leave(&gateway.domain, &user, room.as_str(), None)
                    .await;
            }
            Err(failure) => tracing::warn!(user, %room, %failure, "rejoining a room failed"),
        }
    }
    resend_unsent(gateway).await;
}

/// The rooms' upkeep until shutdown: their cursors written every second (and once more at
/// shutdown), archived messages older than `keep_history` forgotten hourly.
pub async fn maintain(gateway: Arc<Gateway>, shutdown: jabbridge_sdk::Shutdown) {
    const CURSORS: Duration = Duration::from_secs(1);
    const SWEEP: u32 = 3600;
    let mut ticks = 0;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CURSORS) => {}
            () = shutdown.clone().wait() => {
                flush_cursors(&gateway).await;
                return;
            }
        }
        flush_cursors(&gateway).await;
        ticks += 1;
        if ticks % SWEEP != 0 {
            continue;
        }
        let keep = i64::try_from(gateway.rooms_config.keep_history.as_millis()).unwrap_or(i64::MAX);
        let before = now_millis().saturating_sub(keep);
        match gateway
            .store
            .rooms()
            .forget_before(&gateway.domain, before)
            .await
        {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "forgot old room messages"),
            Err(error) => tracing::warn!(%error, "cannot delete old room messages"),
        }
    }
}

/// Takes `user` out of every room (unregistered): their resources get their own unavailable
/// presence, the joins are forgotten, and the bridge leaves the foreign rooms.
pub async fn forget_user(gateway: &Gateway, user: &str) {
    let left: Vec<(RoomId, Vec<String>, String)> = {
        let mut rooms = gateway.rooms.lock();
        let mut left = Vec::new();
        for (room, state) in rooms.iter_mut() {
            if let Some(member) = state.members.remove(user) {
                left.push((
                    room.clone(),
                    member.resources.into_iter().collect(),
                    member.nick,
                ));
            }
        }
        rooms.retain(|_, state| !state.members.is_empty());
        left
    };
    if let Err(error) = gateway.store.rooms().leave_all(&gateway.domain, user).await {
        tracing::error!(%error, "cannot forget a user's rooms");
    }
    for (room, resources, nick) in left {
        if let Some(room_jid) = room_jid(gateway, &room) {
            let own = Occupant {
                role: Role::Participant,
                ..Occupant::new(nick)
            };
            for resource in resources {
                let shape = Shape {
                    unavailable: true,
                    statuses: &[status::SELF],
                    reason: Some("you are no longer registered"),
                    ..Shape::default()
                };
                let to = full(user, &resource);
                if let Some(presence) = presence_of(gateway, &room, &room_jid, &own, &to, shape) {
                    gateway.send(presence).await;
                }
            }
        }
        let leaver = UserJid::new(user);
        let call = gateway.bridge.leave_room(&leaver, &room);
        let _ = gateway.call("leaving a room", call).await;
    }
}

/// A room message or presence that `from`'s server bounced: the resource is gone (XEP-0045
/// §7.2, stale resources), and leaves.
pub(super) async fn bounced(gateway: &Gateway, from: &Jid, room: &RoomId) {
    let user = from.to_bare().to_string();
    let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
    if gateway.rooms.nick_of(room, &user, &resource).is_some() {
        tracing::info!(user, resource, %room, "a joined resource bounced a room stanza; it leaves");
        leave(gateway, room, &user, &resource).await;
    }
}
