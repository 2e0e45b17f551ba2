//! Group chats (XEP-0045): which of our users is in which room from which resources, under
//! which nick, and what each room looks like (occupants, subject) as its bridge reported it
//! (here); joins, leaves, nick changes and restarts (`membership`); posts, private
//! messages, moderation, self-pings and the fan-out of what happens in a room (`talk`);
//! history, MAM, disco and upkeep (`archive`).
//!
//! A room message is archived once ([`crate::store::rooms`]) and sent from memory to every
//! joined resource: the archive is the room's history and its de-duplication (one row per
//! foreign id), the in-memory membership is the fan-out list. Joins are persisted per
//! (user, room, resource), so that at start the bridge rejoins the foreign rooms
//! ([`restore`]) and a client that joins again gets a resync without a second foreign join.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
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
    minidom::Element,
};

use tokio::sync::Semaphore;

use super::{Answer, Gateway};
use crate::lanes::Lanes;
use crate::store::rooms::{ArchivedMessage, Find, JoinRow, NewRoomMessage, RepliedTo, STAYING};
use crate::store::{millis, now_millis};
use crate::xmpp::encode::{Encoded, Template};
use crate::xmpp::muc::{self, OccupantPresence, status};
use crate::xmpp::stanza::StanzaFailure;
use crate::xmpp::xml_safe::Writable;

mod archive;
mod membership;
mod talk;

pub use archive::maintain;
pub(in crate::gateway) use archive::{archive_query, info, list};
pub(in crate::gateway) use membership::{
    CONFIGURE, CONFIGURE_NAME, bounced, configure, on_presence,
};
pub use membership::{drop_user, forget_user, leave_if_gone, restore};
pub use talk::{Reply, event, message_event};
pub(in crate::gateway) use talk::{administer, card, invite, on_groupchat, ping, private_allowed};

/// Our users in rooms, and the rooms as the bridge reported them. Shared with the timers
/// that leave a room after the grace period.
pub struct Rooms {
    rooms: Mutex<HashMap<RoomId, Room>>,
    /// Posts whose echo the network will send ([`Posted::EchoFollows`]), by room and post
    /// id: who posted, and the id their stanza had.
    echoes: Mutex<HashMap<(RoomId, String), Poster>>,
    /// What this instance showed in rooms lately, by room and key: the same message,
    /// retraction or reactions reported by several users' connections, or archived by
    /// another instance first, is shown here once.
    shown: Mutex<Shown>,
    /// Archived room messages waiting to be shown, per room, in the order they were
    /// archived.
    shows: Lanes<talk::Show>,
    /// Room messages between their archive write and their fan-out ([`talk::SHOWING`]).
    showing: Arc<Semaphore>,
    /// Per room, for resources (full JIDs) that joined while messages waited to be shown:
    /// the newest archive id their join's history carried, so that a message archived
    /// before that join but shown after it is not sent to them again. Kept until a newer
    /// message is shown in the room.
    history_through: Mutex<HashMap<RoomId, HashMap<String, i64>>>,
}

impl Default for Rooms {
    fn default() -> Self {
        Self {
            rooms: Mutex::default(),
            echoes: Mutex::default(),
            shown: Mutex::default(),
            shows: Lanes::new(talk::SHOWING),
            showing: Arc::new(Semaphore::new(talk::SHOWING)),
            history_through: Mutex::default(),
        }
    }
}

/// The last [`SHOWN`] things shown, oldest first, and the same as a set.
#[derive(Default)]
struct Shown {
    order: std::collections::VecDeque<(RoomId, String)>,
    keys: std::collections::HashSet<(RoomId, String)>,
}

/// How many shown things are remembered, all rooms together.
const SHOWN: usize = 65_536;

/// One room: the network's view of it, and our users in it.
#[derive(Default)]
struct Room {
    /// Everyone in the room, our users included, by nick. Boxed, here and in `members`: a
    /// B-tree's first node holds eleven entries whether or not they are used, and a room of
    /// one occupant (a user alone in a channel) would pay ~1.7 KiB for it, not ~0.5.
    occupants: BTreeMap<String, Box<Occupant>>,
    subject: Option<Subject>,
    /// Our users in the room, by bare JID.
    members: BTreeMap<String, Box<Member>>,
    /// The highest archive id whose copies the server acknowledged.
    acked: i64,
    /// The `acked` last written to `room_cursors`.
    flushed: i64,
    /// Whether `room_cursors` has a row for the room (written before its first fan-out).
    cursor_known: bool,
    /// Through which archive id the instance that ran the users restored here had sent the
    /// room's messages (its cursor; what followed was sent again at the restore): a message
    /// the network reports again at or below it is not shown again. SQLite only.
    sent_before: i64,
    /// Whether the network said it has nothing older than the archive's oldest
    /// ([`jabbridge_sdk::Bridge::room_history`]): MAM queries do not ask it again.
    history_exhausted: bool,
    /// How many of our users' joins the network is answering now ([`Rooms::joining`]):
    /// the room is open for them, so that what is said meanwhile is archived and reaches
    /// them (in their join's history, or after it), and it is not closed while any runs.
    joining: u16,
}

impl Room {
    /// Whether nothing keeps the room open: none of our users is in it or joining it.
    fn unused(&self) -> bool {
        self.members.is_empty() && self.joining == 0
    }
}

/// A join the network is answering: the room stays open until this is dropped (after the
/// user was admitted, or the join failed).
pub(super) struct Joining<'a> {
    rooms: &'a Rooms,
    room: RoomId,
}

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        let mut rooms = self.rooms.lock();
        if let Some(state) = rooms.get_mut(&self.room) {
            state.joining = state.joining.saturating_sub(1);
            if state.unused() {
                rooms.remove(&self.room);
            }
        }
    }
}

/// Who ran some of a room's users' sessions before they were claimed here: the instances,
/// whose cursors say what may not have been sent, and the users.
#[derive(Default)]
struct Previously {
    instances: BTreeSet<String>,
    users: BTreeSet<String>,
}

/// One of our users in a room.
struct Member {
    nick: String,
    /// Their joined resources; empty while the grace period after the last one left runs,
    /// and for as long as they stay.
    resources: Resources,
    /// Bumped whenever a resource joins, so that a grace timer started earlier does nothing.
    generation: u64,
    /// Whether they stay in the room when their last resource leaves (they made it
    /// persistent: [`crate::store::rooms::STAYING`]): the network keeps them in it, the
    /// archive keeps what is said, and their clients find it when they join again.
    stays: bool,
}

/// A member's joined resources, in the order they joined: nearly always one, so a short
/// list rather than a tree (a B-tree's first node alone is ~300 bytes, per member).
#[derive(Default)]
struct Resources(Vec<String>);

impl Resources {
    /// Adds `resource` unless it is there.
    fn insert(&mut self, resource: String) {
        if !self.contains(&resource) {
            self.0.push(resource);
        }
    }

    /// Takes `resource` out; whether it was there.
    fn remove(&mut self, resource: &str) -> bool {
        let found = self.0.iter().position(|joined| joined == resource);
        if let Some(at) = found {
            self.0.remove(at);
        }
        found.is_some()
    }

    fn contains(&self, resource: &str) -> bool {
        self.0.iter().any(|joined| joined == resource)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, String> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a Resources {
    type Item = &'a String;
    type IntoIter = std::slice::Iter<'a, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl IntoIterator for Resources {
    type Item = String;
    type IntoIter = std::vec::IntoIter<String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// Who posted a message that is being reflected.
#[derive(Debug, Clone)]
struct Poster {
    user: String,
    /// The `id` of their stanza, which the reflection to them carries.
    stanza_id: Option<String>,
    /// Their XEP-0359 origin-id (or stanza id): what every copy carries.
    origin_id: String,
    /// When they posted: an echo that never comes is forgotten after [`ECHO_WAIT`].
    posted: std::time::Instant,
}

/// How long a post waits for the network's echo ([`Posted::EchoFollows`]) before it is
/// forgotten (the message went out; only its reflection is lost).
const ECHO_WAIT: Duration = Duration::from_secs(600);

impl Rooms {
    /// Opens `room` for a join of one of our users, until the guard is dropped.
    pub(super) fn joining(&self, room: &RoomId) -> Joining<'_> {
        let mut rooms = self.lock();
        let state = rooms.entry(room.clone()).or_default();
        state.joining = state.joining.saturating_add(1);
        Joining {
            rooms: self,
            room: room.clone(),
        }
    }

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

    /// Whether `key` was not shown in `room` lately; it counts as shown from now on.
    fn first_showing(&self, room: &RoomId, key: String) -> bool {
        let mut shown = self
            .shown
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = (room.clone(), key);
        if !shown.keys.insert(entry.clone()) {
            return false;
        }
        shown.order.push_back(entry);
        if shown.order.len() > SHOWN
            && let Some(oldest) = shown.order.pop_front()
        {
            shown.keys.remove(&oldest);
        }
        true
    }

    /// `resource` (a full JID) of `room` got history up to archive id `through`: noted only
    /// while messages wait to be shown in the room (otherwise none can come twice).
    fn history_sent(&self, room: &RoomId, resource: &str, through: i64) {
        if !self.shows.has(room.as_str()) {
            return;
        }
        let mut map = self
            .history_through
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let resources = map.entry(room.clone()).or_default();
        // Bounded: past this many joins during one backlog, a repeat is possible.
        if resources.len() >= SHOWN {
            resources.clear();
        }
        resources.insert(resource.to_owned(), through);
    }

    /// The resources of `room` whose join's history already carried message `id`; the
    /// entries that a message newer than theirs passed are dropped.
    fn had_in_history(&self, room: &RoomId, id: i64) -> Vec<String> {
        let mut map = self
            .history_through
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(resources) = map.get_mut(room) else {
            return Vec::new();
        };
        let had = resources
            .iter()
            .filter(|(_, through)| **through >= id)
            .map(|(resource, _)| resource.clone())
            .collect();
        resources.retain(|_, through| *through >= id);
        if resources.is_empty() {
            map.remove(room);
        }
        had
    }

    /// The server acknowledged every copy of `room`'s message `id`.
    fn acked(&self, room: &RoomId, id: i64) {
        if let Some(state) = self.lock().get_mut(room) {
            state.acked = state.acked.max(id);
        }
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
    let mut id = String::with_capacity(32);
    for byte in &hash.finalize()[..16] {
        // Writing to a String cannot fail.
        let _ = write!(id, "{byte:02x}");
    }
    id
}

/// `room@domain` for a room.
fn room_jid(gateway: &Gateway, room: &RoomId) -> Option<BareJid> {
    gateway.contact_jid(room).ok().map(|jid| jid.to_bare())
}

/// `room@domain/nick`.
fn occupant_jid(room: &BareJid, nick: &str) -> Option<Jid> {
    room.with_resource_str(nick).ok().map(Jid::from)
}

/// The occupant JID of who said the message `reply` names, when their nick makes one: the
/// `to` of a reply's `<reply/>`.
fn replied_by(room: &BareJid, reply: Option<&RepliedTo>) -> Option<String> {
    reply
        .and_then(|to| occupant_jid(room, &to.nick))
        .map(|jid| jid.to_string())
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
    // Where they connect from, to everyone but themselves: their own presence's item JID
    // would be their real one, which the room does not show.
    let jid = occupant
        .host
        .as_deref()
        .filter(|_| !shape.statuses.contains(&status::SELF))
        .and_then(|host| host_jid(&gateway.domain, host));
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
        away: occupant.away.as_deref(),
        jid: jid.as_deref(),
    }))
}

/// The bare JID shown for an occupant who connects from `host`: the host itself where it is
/// a domain (a name or an address, as Biboumi shows it), else (a cloak such as
/// `user/alice`) the host escaped (XEP-0106) at the bridge's domain.
fn host_jid(domain: &str, host: &str) -> Option<String> {
    if host.is_empty() || host.contains(|c: char| c.is_control() || c.is_whitespace()) {
        return None;
    }
    let plain = !host.contains(['@', '/'])
        && host
            .parse::<BareJid>()
            .is_ok_and(|jid| jid.node().is_none());
    Some(if plain {
        host.to_ascii_lowercase()
    } else {
        format!("{}@{domain}", crate::xmpp::jid::escape(host))
    })
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

fn action_failure(error: RoomActionError) -> StanzaFailure {
    match error {
        RoomActionError::Forbidden(text) => StanzaFailure::Forbidden(text),
        RoomActionError::NoSuchOccupant(text) => StanzaFailure::ItemNotFound(text),
        RoomActionError::NotSupported(text) => StanzaFailure::FeatureNotImplemented(text),
        RoomActionError::Unavailable(text) => StanzaFailure::Unavailable(text),
    }
}
