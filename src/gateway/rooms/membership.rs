//! Who is in a room: joins (the bridge's one per user, the resyncs), leaves and the grace
//! period, staying when the clients leave (the command on a room's address), nick changes,
//! restoring the joins at start, unregistered users, stale resources.

use jabbridge_sdk::{Field, FieldKind, Form, FormValues};

use super::archive::archived;
use super::talk::resend_unsent;
use super::*;
use crate::xmpp::adhoc::Outcome;

/// A presence to a room (`to` is `room@domain/nick`): a join, a presence update, a nick
/// change, or a leave.
pub(in crate::gateway) async fn on_presence(
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
            // Away, busy, back: the network may show it (IRC's AWAY).
            show_away(gateway, &room, &user, muc::away_of(element)).await;
            Ok(None)
        }
        Some(current) => {
            change_nick(gateway, &room, &user, &current, &nick).await?;
            Ok(None)
        }
        None if muc::is_join(element) => {
            let joined = join(gateway, room.clone(), &user, &resource, nick, element).await;
            // Joined away, or available again (a client back after dropping while away).
            if joined.is_ok() {
                show_away(gateway, &room, &user, muc::away_of(element)).await;
            }
            joined
        }
        // A presence update for a room this resource is not in (its server still sends
        // them after a kick, say): no join without the MUC element that asks for one.
        None => Ok(None),
    }
}

/// Tells the bridge `user` shows away in `room` with this text, or is back with `None`.
async fn show_away(gateway: &Gateway, room: &RoomId, user: &str, away: Option<String>) {
    let jid = UserJid::new(user);
    let hook = gateway.bridge.room_presence(&jid, room, away);
    if let Err(failure) = gateway.call("a presence in a room", hook).await {
        tracing::warn!(%user, %failure, "a room presence hook timed out");
    }
}

/// Joins `resource` of `user` to `room`: the bridge joins the foreign room for the user's
/// first resource; every resource gets the room shown.
pub(super) async fn join(
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
    let cap = gateway.rooms_config.rooms_per_user;
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
            None => {
                let rooms_in = rooms
                    .values()
                    .filter(|state| state.members.contains_key(user))
                    .count();
                if rooms_in >= cap {
                    return Err(StanzaFailure::ResourceConstraint(format!(
                        "you are in {rooms_in} rooms of {}, the most one may be in; leave \
                         one first",
                        gateway.domain
                    )));
                }
                None
            }
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
            let _joining = gateway.rooms.joining(&room);
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
/// a member with one more resource (or, for [`STAYING`], as staying). Returns the user's
/// nick.
pub(super) fn admit(
    gateway: &Gateway,
    room: &RoomId,
    user: &str,
    resource: &str,
    joined: Joined,
) -> String {
    let mut rooms = gateway.rooms.lock();
    let state = rooms.entry(room.clone()).or_default();
    state.occupants = joined
        .occupants
        .into_iter()
        .map(|occupant| (occupant.nick.clone(), Box::new(occupant)))
        .collect();
    state
        .occupants
        .entry(joined.nick.clone())
        .or_insert_with(|| Box::new(Occupant::new(joined.nick.clone())));
    if joined.subject.is_some() {
        state.subject = joined.subject;
    }
    let member = state.members.entry(user.to_owned()).or_insert_with(|| {
        Box::new(Member {
            nick: joined.nick.clone(),
            resources: Resources::default(),
            generation: 0,
            stays: false,
        })
    });
    member.nick = joined.nick.clone();
    if resource == STAYING {
        member.stays = true;
    } else {
        member.resources.insert(resource.to_owned());
    }
    member.generation += 1;
    joined.nick
}

pub(super) fn history_wish(wish: &muc::JoinWish) -> HistoryWish {
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

pub(super) fn join_failure(error: JoinError) -> StanzaFailure {
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
pub(super) async fn resync(
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
    if let Some(newest) = history.iter().map(|message| message.id).max() {
        gateway.rooms.history_sent(room, &to, newest);
    }
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
            .map_or_else(|| Occupant::new(member.nick.clone()), |own| (**own).clone());
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
pub(super) async fn history(
    gateway: &Gateway,
    room: &RoomId,
    wish: &muc::JoinWish,
) -> Vec<ArchivedMessage> {
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

/// A resource left (an unavailable presence, or its server bounced a room message): it gets
/// its own unavailable presence; the user's last resource leaving starts the grace period
/// after which the bridge leaves the foreign room.
pub(super) async fn leave(gateway: &Gateway, room: &RoomId, user: &str, resource: &str) {
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
            .map_or_else(|| Occupant::new(member.nick.clone()), |own| (**own).clone());
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
        let still_gone = state.members.get(&user).is_some_and(|member| {
            member.resources.is_empty() && member.generation == generation && !member.stays
        });
        if still_gone {
            state.members.remove(&user);
            if state.unused() {
                rooms.remove(&room);
            }
        }
        still_gone
    };
    if gone {
        tracing::info!(user, %room, "left a room");
        leave_foreign(&gateway, &room, &user).await;
    }
}

/// Has the bridge leave the foreign room for `user`, who is no longer a member.
async fn leave_foreign(gateway: &Gateway, room: &RoomId, user: &str) {
    let leaver = UserJid::new(user);
    let call = gateway.bridge.leave_room(&leaver, room);
    if let Err(failure) = gateway.call("leaving a room", call).await {
        tracing::warn!(%failure, "leaving a room timed out");
    }
}

/// Asks the bridge to change a user's nick in a room; the network's answer comes as a
/// [`RoomEvent::Renamed`].
pub(super) async fn change_nick(
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

/// For the sessions just claimed here (at start, or taken over from another instance):
/// rejoins, for each of their users who was in a room (or stays in it), the foreign room,
/// and records their resources as joined. Their clients still believe they are in the
/// room; what they missed meanwhile is in the archive, and what the previous instance
/// archived but may not have sent goes again.
pub async fn restore(gateway: &Gateway, claimed: &[crate::store::sessions::Claimed]) {
    let previous: HashMap<&str, Option<&str>> = claimed
        .iter()
        .map(|claim| (claim.jid.as_str(), claim.previous.as_deref()))
        .collect();
    let joins = match gateway.store.rooms().joins(&gateway.domain).await {
        Ok(joins) => joins,
        Err(error) => {
            tracing::error!(%error, "cannot read the room joins to restore");
            return;
        }
    };
    let joins = joins
        .into_iter()
        .filter(|row| previous.contains_key(row.jid.as_str()));
    let mut resend: BTreeMap<RoomId, Previously> = BTreeMap::new();
    let mut by_user_room: BTreeMap<(String, String), Vec<JoinRow>> = BTreeMap::new();
    for row in joins {
        by_user_room
            .entry((row.jid.clone(), row.room.clone()))
            .or_default()
            .push(row);
    }
    for ((user, room), rows) in by_user_room {
        let room = RoomId::new(room);
        if let Some(Some(instance)) = previous.get(user.as_str()) {
            let before = resend.entry(room.clone()).or_default();
            before.instances.insert((*instance).to_owned());
            before.users.insert(user.clone());
        }
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
        let _joining = gateway.rooms.joining(&room);
        match gateway
            .call("rejoining a room", gateway.bridge.join_room(request))
            .await
        {
            Ok(Ok(joined)) => {
                let mut nick = String::new();
                for row in &rows {
                    nick = admit(gateway, &room, &user, &row.resource, joined.clone());
                }
                let resources = rows.iter().filter(|row| row.resource != STAYING).count();
                tracing::info!(user, %room, nick, resources, "rejoined a room");
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
    resend_unsent(gateway, resend).await;
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
        rooms.retain(|_, state| !state.unused());
        left
    };
    if let Err(error) = gateway.store.rooms().leave_all(&gateway.domain, user).await {
        tracing::error!(%error, "cannot forget a user's rooms");
    }
    for (room, resources, nick) in left {
        if let Some(room_jid) = room_jid(gateway, &room) {
            let own = Occupant::new(nick);
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

/// Takes `user` out of every room in memory only: another instance runs their session now,
/// and their joins and foreign rooms are its.
pub fn drop_user(gateway: &Gateway, user: &str) {
    let mut rooms = gateway.rooms.lock();
    for state in rooms.values_mut() {
        state.members.remove(user);
    }
    rooms.retain(|_, state| !state.unused());
}

/// A room message or presence that `from`'s server bounced: the resource is gone (XEP-0045
/// §7.2, stale resources), and leaves.
pub(in crate::gateway) async fn bounced(gateway: &Gateway, from: &Jid, room: &RoomId) {
    let user = from.to_bare().to_string();
    let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
    if gateway.rooms.nick_of(room, &user, &resource).is_some() {
        tracing::info!(user, resource, %room, "a joined resource bounced a room stanza; it leaves");
        leave(gateway, room, &user, &resource).await;
    }
}

/// The node of the command on a room's address (XEP-0050), as Biboumi names its own on a
/// channel.
pub const CONFIGURE: &str = "configure";

/// What clients list [`CONFIGURE`] as.
pub const CONFIGURE_NAME: &str = "Room settings";

/// The field of [`CONFIGURE`]'s form that says whether the user stays in the room.
const PERSISTENT: &str = "persistent";

/// One step of the command on a room's address: `user`'s own settings of a room they are in
/// (for now, whether they stay in it when their clients leave: [`Member::stays`]). Without
/// `input`, the form with what is set; with it, the change.
pub(in crate::gateway) async fn configure(
    gateway: &Gateway,
    user: &str,
    room: &RoomId,
    input: Option<FormValues>,
) -> Result<Outcome, StanzaFailure> {
    let name = gateway.bridge.format_address(room);
    let form = Form {
        title: format!("Your settings of {name}"),
        instructions: "Staying in the room: when your last client leaves it, you stay in it \
                       on the network, what is said goes on into its archive, and your \
                       clients find it there when they join again (after a restart too)."
            .into(),
        fields: vec![Field {
            var: PERSISTENT.into(),
            label: "Stay in the room when your clients leave it".into(),
            kind: FieldKind::Boolean,
            required: false,
        }],
    };
    let member = {
        let rooms = gateway.rooms.lock();
        (rooms.get(room))
            .and_then(|state| state.members.get(user))
            .map(|member| (member.stays, member.nick.clone()))
    };
    let Some((stays, nick)) = member else {
        return Err(StanzaFailure::NotAcceptable(format!(
            "join {name} first: these settings are those of your place in it"
        )));
    };
    let Some(values) = input else {
        let mut current = FormValues::default();
        current
            .0
            .insert(PERSISTENT.into(), u8::from(stays).to_string());
        return Ok(Outcome::Form(form, current));
    };
    form.validate(&values)
        .map_err(StanzaFailure::NotAcceptable)?;
    let wanted = values
        .get(PERSISTENT)
        .map_or(stays, |value| matches!(value, "1" | "true"));
    let tables = gateway.store.rooms();
    let stored = if wanted {
        let row = JoinRow {
            jid: user.to_owned(),
            room: room.to_string(),
            resource: STAYING.to_owned(),
            nick,
        };
        tables.join(&gateway.domain, &row).await
    } else {
        (tables.leave(&gateway.domain, user, room.as_str(), Some(STAYING))).await
    };
    stored.map_err(|error| gateway.storage_failed(error))?;
    // Staying no more with no client in the room: out of it now.
    let out = (|| {
        let mut rooms = gateway.rooms.lock();
        let state = rooms.get_mut(room)?;
        let member = state.members.get_mut(user)?;
        member.stays = wanted;
        let out = !wanted && member.resources.is_empty();
        if out {
            state.members.remove(user);
            if state.unused() {
                rooms.remove(room);
            }
        }
        Some(out)
    })();
    let Some(out) = out else {
        // Gone meanwhile (the grace period ended, a kick): no stay is left behind either.
        let _ = (tables.leave(&gateway.domain, user, room.as_str(), Some(STAYING))).await;
        return Err(StanzaFailure::NotAcceptable(format!(
            "you left {name} meanwhile"
        )));
    };
    tracing::info!(user, %room, stays = wanted, "changed their room settings");
    if out {
        leave_foreign(gateway, room, user).await;
        return Ok(Outcome::Done(format!(
            "You no longer stay in {name}, and with none of your clients in it, you left it."
        )));
    }
    Ok(Outcome::Done(if wanted {
        format!("You stay in {name} when your clients leave it.")
    } else {
        format!("You leave {name} when your last client leaves it.")
    }))
}
