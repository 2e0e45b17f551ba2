//! The echo bridge's rooms: `#NAME@echo-domain` is a room on a pretend network where the bot
//! occupant `echo` repeats every message, and every joined user sees the others. It is the
//! reference for room bridges: one shared view per room, occupants reported as they come and
//! go, the network's echo of a user's own post ([`Posted::EchoFollows`]).
//!
//! The bot takes a few commands, said in the room, so that the network's side of moderation
//! can be shown and tested: `!kick NICK [REASON]`, `!ban NICK [REASON]`, `!topic TEXT`,
//! `!rename NICK NEW` (the network renames someone). `#locked…` rooms refuse subject changes
//! by users, `#secret…` rooms want the password `sesame`, and a nick already in a room, or
//! `echo`, is taken.
//!
//! The network carries corrections, retractions and reactions (unless the bridge's `edits`
//! is `false`), and the bot follows: it corrects its repeat of a corrected message, retracts
//! its repeat of a retracted one, and mirrors a user's reactions with its own.
//!
//! The network keeps history: in every room, the bot said `long ago 0` … `long ago 4`, a
//! minute apart, in the five minutes before the bridge started; a MAM query that reaches
//! the start of the core's archive reads them ([`EchoRooms::history`]).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use jabbridge_sdk::{
    Affiliation, Core, CoreError, ForeignId, HistoryRequest, JoinError, JoinRequest, Joined,
    MessageId, Moderation, Occupant, Posted, Reaction, Role, RoomActionError, RoomEvent, RoomId,
    RoomListing, RoomMessage, RoomPost, SendError, Subject, UserJid, secrecy::ExposeSecret,
};
use tokio::sync::Mutex;

/// The bot's nick.
pub const BOT: &str = "echo";
/// The room always listed.
pub const LOBBY: &str = "#lobby";

/// When the bridge started: the pretend network's history ends there.
static STARTED: std::sync::LazyLock<SystemTime> = std::sync::LazyLock::new(SystemTime::now);

/// How many lines of history the pretend network keeps per room.
const REMEMBERED: u32 = 5;

/// Every room with someone in it.
#[derive(Default)]
pub struct EchoRooms {
    rooms: Mutex<HashMap<RoomId, Room>>,
}

#[derive(Default)]
struct Room {
    /// Our users in the room: nick → user.
    users: BTreeMap<String, UserJid>,
    /// Roles given by moderators (participant otherwise).
    roles: BTreeMap<String, Role>,
    subject: String,
    /// Users banned from the room.
    banned: Vec<UserJid>,
}

impl Room {
    fn occupants(&self) -> Vec<Occupant> {
        let mut occupants = vec![bot()];
        occupants.extend(self.users.keys().filter_map(|nick| self.occupant(nick)));
        occupants
    }

    fn occupant(&self, nick: &str) -> Option<Occupant> {
        let user = self.users.get(nick)?;
        Some(Occupant {
            role: self.roles.get(nick).copied().unwrap_or_default(),
            ..user_occupant(nick, user)
        })
    }

    /// Takes `nick` out (left, kicked, banned): their user, if it was one.
    fn remove(&mut self, nick: &str) -> Option<UserJid> {
        self.roles.remove(nick);
        self.users.remove(nick)
    }

    /// Renames `old` to `new`, role and all.
    fn rename(&mut self, old: &str, new: &str) -> Option<()> {
        let role = self.roles.remove(old);
        let user = self.users.remove(old)?;
        self.users.insert(new.to_owned(), user);
        if let Some(role) = role {
            self.roles.insert(new.to_owned(), role);
        }
        Some(())
    }

    fn nick_of(&self, user: &UserJid) -> Option<String> {
        self.users
            .iter()
            .find(|(_, who)| *who == user)
            .map(|(nick, _)| nick.clone())
    }
}

fn bot() -> Occupant {
    Occupant {
        role: Role::Moderator,
        affiliation: Affiliation::Owner,
        host: Some("echo.example".into()),
        realname: Some("The echo bot".into()),
        ..Occupant::new(BOT)
    }
}

fn user_occupant(nick: &str, user: &UserJid) -> Occupant {
    Occupant {
        // The pretend network knows who its users are: their id outlives nick changes.
        id: ForeignId::new(user.as_str()),
        // Users connect from a cloak, as on many IRC networks.
        host: Some(format!("user/{nick}")),
        ..Occupant::new(nick)
    }
}

/// The network id of the bot's repeat of the message `original`.
fn repeat_of(original: &MessageId) -> MessageId {
    MessageId::new(format!("{original}-echo"))
}

/// Whether a JID localpart names an echo room.
pub fn is_room(localpart: &str) -> bool {
    localpart.len() > 1 && localpart.starts_with('#')
}

fn transient(error: CoreError) -> SendError {
    SendError::Transient {
        reason: error.to_string(),
        retry_after: None,
    }
}

impl EchoRooms {
    /// Starts the clock of the pretend network's history.
    pub fn new() -> Self {
        let _ = *STARTED;
        Self::default()
    }

    /// The room's history said before `request.before` (the latest `limit` of it).
    pub fn history(request: &HistoryRequest) -> Vec<RoomMessage> {
        let lines: Vec<RoomMessage> = (0..REMEMBERED)
            .map(|index| {
                let ago = Duration::from_secs(60 * u64::from(REMEMBERED - index));
                RoomMessage {
                    foreign_id: MessageId::new(format!("{}-past-{index}", request.room)),
                    nick: BOT.into(),
                    sender: bot().id,
                    text: format!("long ago {index}"),
                    timestamp: STARTED.checked_sub(ago),
                    echo_of: None,
                    replaces: None,
                    reply_to: None,
                }
            })
            .filter(|line| {
                request
                    .before
                    .as_ref()
                    .is_none_or(|(_, at)| line.timestamp.is_some_and(|said| said < *at))
            })
            .collect();
        let skip = lines.len().saturating_sub(request.limit as usize);
        lines.into_iter().skip(skip).collect()
    }

    /// Joins a user: everyone else sees them come, and they get the room.
    pub async fn join(&self, core: &Core, request: JoinRequest) -> Result<Joined, JoinError> {
        let JoinRequest {
            user,
            room: room_id,
            nick,
            password,
            ..
        } = request;
        let mut rooms = self.rooms.lock().await;
        let room = rooms.entry(room_id.clone()).or_default();
        if room.banned.contains(&user) {
            return Err(JoinError::Banned(format!("you are banned from {room_id}")));
        }
        if room_id.as_str().starts_with("#secret")
            && password.as_ref().map(|p| p.expose_secret().to_owned()) != Some("sesame".into())
        {
            return Err(JoinError::PasswordRequired(format!(
                "{room_id} needs a password"
            )));
        }
        if let Some(current) = room.nick_of(&user) {
            // Rejoining (after a restart): the same nick.
            return Ok(Joined {
                nick: current,
                occupants: room.occupants(),
                subject: Some(Subject {
                    text: room.subject.clone(),
                    by: None,
                }),
            });
        }
        if nick == BOT || room.users.contains_key(&nick) {
            return Err(JoinError::NickInUse(format!(
                "{nick} is taken in {room_id}"
            )));
        }
        room.users.insert(nick.clone(), user.clone());
        let occupants = room.occupants();
        let subject = room.subject.clone();
        drop(rooms);
        let arrived = RoomEvent::Occupant(user_occupant(&nick, &user));
        // Not shown only when the core is stopping; the join stands.
        let _ = core.room_event(&room_id, arrived).await;
        Ok(Joined {
            nick,
            occupants,
            subject: Some(Subject {
                text: subject,
                by: None,
            }),
        })
    }

    /// Takes a user out of a room; the others see them leave.
    pub async fn leave(&self, core: &Core, user: &UserJid, room_id: &RoomId) {
        let nick = {
            let mut rooms = self.rooms.lock().await;
            let Some(room) = rooms.get_mut(room_id) else {
                return;
            };
            let Some(nick) = room.nick_of(user) else {
                return;
            };
            room.remove(&nick);
            if room.users.is_empty() && room.banned.is_empty() {
                rooms.remove(room_id);
            }
            nick
        };
        let left = RoomEvent::Left { nick, reason: None };
        let _ = core.room_event(room_id, left).await;
    }

    /// A post: the network echoes it (unless it plays one that does not: the core reflects
    /// it then), then the bot repeats it (or obeys it).
    pub async fn post(
        &self,
        core: &Core,
        post: RoomPost,
        id: String,
        echoes: bool,
    ) -> Result<Posted, SendError> {
        let nick = {
            let rooms = self.rooms.lock().await;
            rooms
                .get(&post.room)
                .and_then(|room| room.nick_of(&post.user))
                .ok_or_else(|| SendError::Permanent {
                    reason: "you are not in this room".into(),
                })?
        };
        let foreign_id = MessageId::new(format!("room-{id}"));
        let echo = RoomMessage {
            foreign_id: foreign_id.clone(),
            nick: nick.clone(),
            sender: ForeignId::new(post.user.as_str()),
            text: post.text.clone(),
            timestamp: None,
            echo_of: Some(post.id.clone()),
            replaces: post.replaces.clone(),
            reply_to: post.reply_to.as_ref().map(|to| to.id.clone()),
        };
        if echoes {
            core.room_event(&post.room, RoomEvent::Message(echo))
                .await
                .map_err(transient)?;
        }
        // A correction is repeated as a correction of the bot's repeat, never obeyed.
        let command = match post.replaces {
            Some(_) => None,
            None => self.command(&post.room, &nick, &post.text).await,
        };
        let event = match command {
            Some(event) => event,
            None => RoomEvent::Message(RoomMessage {
                foreign_id: MessageId::new(format!("room-{id}-echo")),
                nick: BOT.into(),
                sender: ForeignId::new(BOT),
                text: post.text,
                timestamp: None,
                echo_of: None,
                replaces: post.replaces.map(|original| repeat_of(&original)),
                // The bot's repeat of a reply replies to the same message.
                reply_to: post.reply_to.map(|to| to.id),
            }),
        };
        // The post went through; the bot's answer is lost only when the core is stopping.
        if echoes {
            let _ = core.room_event(&post.room, event).await;
            return Ok(Posted::EchoFollows);
        }
        // The core reflects the post once this returns; the bot answers from a task of its
        // own, so that its answer comes after the post as on a real network (usually: the
        // two race).
        let (core, room) = (core.clone(), post.room.clone());
        tokio::spawn(async move {
            let _ = core.room_event(&room, event).await;
        });
        Ok(Posted::Reflect {
            foreign_id: Some(foreign_id),
        })
    }

    /// A user retracts their message: gone on the network, and the bot retracts its repeat.
    pub async fn retract(
        &self,
        core: &Core,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
    ) -> Result<(), RoomActionError> {
        self.member(user, room).await?;
        let repeat = RoomEvent::Retracted {
            foreign_id: repeat_of(message),
        };
        let _ = core.room_event(room, repeat).await;
        Ok(())
    }

    /// A user's reactions to a message: the bot mirrors them with its own.
    pub async fn react(
        &self,
        core: &Core,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
        emojis: &[String],
    ) -> Result<(), RoomActionError> {
        self.member(user, room).await?;
        let mirrored = RoomEvent::Reacted(Reaction {
            to: message.clone(),
            nick: BOT.into(),
            sender: ForeignId::new(BOT),
            emojis: emojis.to_vec(),
        });
        let _ = core.room_event(room, mirrored).await;
        Ok(())
    }

    /// `user`'s nick in `room`, or why they may not act there.
    async fn member(&self, user: &UserJid, room: &RoomId) -> Result<String, RoomActionError> {
        let rooms = self.rooms.lock().await;
        rooms
            .get(room)
            .and_then(|room| room.nick_of(user))
            .ok_or_else(|| RoomActionError::Forbidden("you are not in this room".into()))
    }

    /// The bot's commands: what happens on the network when someone says one.
    async fn command(&self, room_id: &RoomId, by: &str, text: &str) -> Option<RoomEvent> {
        let mut words = text.splitn(3, ' ');
        let command = words.next()?;
        let target = words.next().map(str::to_owned);
        let rest = words.next().map(str::to_owned);
        let mut rooms = self.rooms.lock().await;
        let room = rooms.get_mut(room_id)?;
        match (command, target) {
            ("!kick", Some(nick)) | ("!ban", Some(nick)) if nick != BOT => {
                let user = room.remove(&nick);
                let by = Some(by.to_owned());
                if command == "!ban" {
                    room.banned.extend(user);
                    Some(RoomEvent::Banned {
                        nick,
                        by,
                        reason: rest,
                    })
                } else {
                    Some(RoomEvent::Kicked {
                        nick,
                        by,
                        reason: rest,
                    })
                }
            }
            ("!topic", Some(first)) => {
                let text = match rest {
                    Some(rest) => format!("{first} {rest}"),
                    None => first,
                };
                room.subject.clone_from(&text);
                Some(RoomEvent::Subject(Subject {
                    text,
                    by: Some(BOT.into()),
                }))
            }
            ("!rename", Some(old)) => {
                let new = rest?;
                if new == BOT || room.users.contains_key(&new) {
                    return None;
                }
                room.rename(&old, &new)?;
                Some(RoomEvent::Renamed { old, new })
            }
            _ => None,
        }
    }

    /// The rooms: `#lobby` always, and every room with someone in it.
    pub async fn list(&self) -> Vec<RoomListing> {
        let rooms = self.rooms.lock().await;
        let mut listed: Vec<RoomListing> = rooms
            .iter()
            .map(|(room, state)| RoomListing {
                room: room.clone(),
                name: (!state.subject.is_empty()).then(|| state.subject.clone()),
                occupants: u32::try_from(state.users.len() + 1).ok(),
            })
            .collect();
        if !rooms.contains_key(&RoomId::new(LOBBY)) {
            listed.push(RoomListing {
                room: RoomId::new(LOBBY),
                name: None,
                occupants: Some(1),
            });
        }
        listed
    }

    /// A moderator's kick, ban or role change: anyone may, except in `#locked…` rooms.
    pub async fn moderate(
        &self,
        core: &Core,
        user: &UserJid,
        room_id: &RoomId,
        action: Moderation,
    ) -> Result<(), RoomActionError> {
        if room_id.as_str().starts_with("#locked") {
            return Err(RoomActionError::Forbidden(
                "only the bot moderates here".into(),
            ));
        }
        let event = {
            let mut rooms = self.rooms.lock().await;
            let room = rooms
                .get_mut(room_id)
                .ok_or_else(|| RoomActionError::Forbidden("you are not in this room".into()))?;
            let by = room.nick_of(user);
            let nick = match &action {
                Moderation::Kick { nick, .. }
                | Moderation::Ban { nick, .. }
                | Moderation::SetRole { nick, .. } => nick.clone(),
            };
            if !room.users.contains_key(&nick) {
                return Err(RoomActionError::NoSuchOccupant(format!(
                    "nobody in {room_id} is called {nick}"
                )));
            }
            match action {
                Moderation::Kick { reason, .. } => {
                    room.remove(&nick);
                    RoomEvent::Kicked { nick, by, reason }
                }
                Moderation::Ban { reason, .. } => {
                    let banned = room.remove(&nick);
                    room.banned.extend(banned);
                    RoomEvent::Banned { nick, by, reason }
                }
                Moderation::SetRole { role, .. } => {
                    room.roles.insert(nick.clone(), role);
                    let occupant = room.occupant(&nick).ok_or_else(|| {
                        RoomActionError::NoSuchOccupant(format!("{nick} just left"))
                    })?;
                    RoomEvent::Occupant(occupant)
                }
            }
        };
        core.room_event(room_id, event)
            .await
            .map_err(|error| RoomActionError::Unavailable(error.to_string()))
    }

    /// A user's nick change.
    pub async fn rename(
        &self,
        core: &Core,
        user: &UserJid,
        room_id: &RoomId,
        new: &str,
    ) -> Result<(), RoomActionError> {
        let old = {
            let mut rooms = self.rooms.lock().await;
            let room = rooms
                .get_mut(room_id)
                .ok_or_else(|| RoomActionError::Forbidden("you are not in this room".into()))?;
            if new == BOT || room.users.contains_key(new) {
                return Err(RoomActionError::Forbidden(format!("{new} is taken")));
            }
            let old = room
                .nick_of(user)
                .ok_or_else(|| RoomActionError::Forbidden("you are not in this room".into()))?;
            room.rename(&old, new);
            old
        };
        let renamed = RoomEvent::Renamed {
            old,
            new: new.to_owned(),
        };
        core.room_event(room_id, renamed)
            .await
            .map_err(|error| RoomActionError::Unavailable(error.to_string()))
    }

    /// A user's subject change: refused in `#locked…` rooms.
    pub async fn set_subject(
        &self,
        core: &Core,
        user: &UserJid,
        room_id: &RoomId,
        text: &str,
    ) -> Result<(), RoomActionError> {
        if room_id.as_str().starts_with("#locked") {
            return Err(RoomActionError::Forbidden(
                "only the bot may change the subject here".into(),
            ));
        }
        let nick = {
            let mut rooms = self.rooms.lock().await;
            let room = rooms
                .get_mut(room_id)
                .ok_or_else(|| RoomActionError::Forbidden("you are not in this room".into()))?;
            room.subject = text.to_owned();
            room.nick_of(user)
        };
        let subject = RoomEvent::Subject(Subject {
            text: text.to_owned(),
            by: nick,
        });
        core.room_event(room_id, subject)
            .await
            .map_err(|error| RoomActionError::Unavailable(error.to_string()))
    }

    /// Someone on the network says something in a room (the `/say` webhook with `room`).
    pub async fn say(
        &self,
        core: &Core,
        room_id: &RoomId,
        nick: &str,
        text: String,
        id: String,
    ) -> Result<(), CoreError> {
        let said = RoomMessage {
            foreign_id: MessageId::new(format!("say-{id}")),
            nick: nick.to_owned(),
            sender: ForeignId::new(nick),
            text,
            timestamp: None,
            echo_of: None,
            replaces: None,
            reply_to: None,
        };
        core.room_event(room_id, RoomEvent::Message(said)).await
    }
}
