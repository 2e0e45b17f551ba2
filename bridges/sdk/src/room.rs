//! Group chats (XEP-0045 rooms as the core presents them): what the core asks of a bridge
//! that declares [`crate::Capabilities::rooms`], and the events such a bridge reports.
//!
//! The core owns the XMPP side: who of its users is joined from which resource, the order of
//! a join's presences, status codes, stanza ids, the room archive, self-pings and disco. A
//! bridge owns the foreign side: one view of each foreign room (its occupants, as the network
//! lists them, the users' own nicks among them), shared by all the users in it. Every user in
//! a room is also one of its occupants, under the nick the network gave them.
//!
//! The calls, in the order a room sees them:
//! - [`crate::Bridge::join_room`]: a user's first resource joins. The answer is the room as
//!   the user now sees it ([`Joined`]); the core then shows it to them. Later resources of
//!   the same user, and a client sending its join again after a restart, are answered by the
//!   core from what it knows, without a second call.
//! - [`crate::Bridge::send_room_message`]: a user posts. `Ok` means the network took it.
//! - [`crate::Bridge::leave_room`]: the user's last resource left (after the grace period),
//!   or the user was unregistered.
//!
//! Events go to the core with [`crate::Core::room_event`], in the order they happened.

use std::time::SystemTime;

use crate::{ChatState, ForeignId, MessageId, RegistrationData, UserJid};

/// A room on the foreign network, as the bridge names it (an IRC channel, a group SMS
/// thread). Appears as the localpart of the room's JID, e.g. `#rust@irc.example.org`.
pub type RoomId = ForeignId;

/// An occupant's role in a room (XEP-0045 §5.1): what they may do now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Role {
    /// May kick, and change the subject (an IRC operator).
    Moderator,
    /// May speak (the default; IRC voice in a moderated channel).
    #[default]
    Participant,
    /// May only read (a moderated IRC channel without voice).
    Visitor,
}

/// An occupant's affiliation with a room (XEP-0045 §5.2): who they are in it, lastingly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Affiliation {
    /// Owns the room.
    Owner,
    /// Administers it.
    Admin,
    /// A member (a registered account, or a members-only room's list).
    Member,
    /// None of the above.
    #[default]
    None,
}

/// Someone in a room, as the network lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    /// Their nick in the room: the resource of their occupant JID `room@domain/nick`.
    pub nick: String,
    /// Who they are on the network, stable across nick changes where the network can tell (an
    /// IRC account, else the nick): the core derives their XEP-0421 occupant-id from it.
    pub id: ForeignId,
    /// What they may do.
    pub role: Role,
    /// Who they are in the room.
    pub affiliation: Affiliation,
    /// Whether they are away, with the message they left (IRC's `AWAY`): shown as
    /// `<show>away</show>` and the message as the status. `None`: here.
    pub away: Option<String>,
    /// Where they connect from, when the network says (IRC's host, or its cloak): shown in
    /// their presence as the item's bare JID (XEP-0045 `jid`), as Biboumi does, so that
    /// people can be told apart by it. It names no one to write to.
    pub host: Option<String>,
    /// Their real name, when the network says (IRC's realname): the full name of their
    /// vCard (`vcard-temp` on their occupant JID).
    pub realname: Option<String>,
}

impl Occupant {
    /// A participant with no affiliation, here, whose id is their nick.
    pub fn new(nick: impl Into<String>) -> Self {
        let nick = nick.into();
        Self {
            id: ForeignId::new(nick.clone()),
            nick,
            role: Role::default(),
            affiliation: Affiliation::default(),
            away: None,
            host: None,
            realname: None,
        }
    }
}

/// A room's subject (topic).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// The text; empty when there is none.
    pub text: String,
    /// The nick of who set it, when known.
    pub by: Option<String>,
}

/// The history a joining client asked for (XEP-0045 §7.2.14). The core answers it from its
/// archive; a bridge that can fetch more from the network (IRC `CHATHISTORY`) may use it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistoryWish {
    /// At most this many messages (`maxstanzas`); `Some(0)` asks for none.
    pub max_stanzas: Option<u32>,
    /// Only messages since then (`since`, or `seconds` ago).
    pub since: Option<SystemTime>,
}

/// A room's earlier lines, asked of the network for a MAM query that reached the start of
/// the core's archive: [`crate::Bridge::room_history`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRequest {
    /// Whose link to the network asks (the user reading the archive).
    pub user: UserJid,
    /// Which room.
    pub room: RoomId,
    /// Lines said before this one (the oldest the archive has: its network id and time);
    /// `None`: the archive has none, so the latest.
    pub before: Option<(MessageId, SystemTime)>,
    /// At most this many.
    pub limit: u32,
}

/// A user's wish to join a room: [`crate::Bridge::join_room`].
#[derive(Debug, Clone)]
pub struct JoinRequest {
    /// Who joins.
    pub user: UserJid,
    /// Which room.
    pub room: RoomId,
    /// The nick they asked for (the resource of the presence they sent).
    pub nick: String,
    /// The room password, if they gave one.
    pub password: Option<secrecy::SecretString>,
    /// The history they asked for.
    pub history: HistoryWish,
    /// What the bridge stored for them at registration, if they registered.
    pub registration: Option<RegistrationData>,
}

/// A successful join: the room as the user now sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The user's nick in the room; when it is not the one they asked for, the core tells
    /// them (status 210).
    pub nick: String,
    /// Everyone in the room, the user included.
    pub occupants: Vec<Occupant>,
    /// The subject, if the room has one.
    pub subject: Option<Subject>,
}

/// Why a user could not join. Each becomes the error presence XEP-0045 §7.2 names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room needs a password and the one given (if any) is wrong: `not-authorized`.
    #[error("{0}")]
    PasswordRequired(String),
    /// The user is banned: `forbidden`.
    #[error("{0}")]
    Banned(String),
    /// The nick is taken or not allowed: `conflict`.
    #[error("{0}")]
    NickInUse(String),
    /// The room is members-only and the user is not a member: `registration-required`.
    #[error("{0}")]
    MembersOnly(String),
    /// There is no such room and it cannot be created: `item-not-found`.
    #[error("{0}")]
    NoSuchRoom(String),
    /// The network cannot be reached, or the room is full: `service-unavailable`.
    #[error("{0}")]
    Unavailable(String),
}

/// A user's message to a room: [`crate::Bridge::send_room_message`].
#[derive(Debug, Clone, PartialEq)]
pub struct RoomPost {
    /// The XMPP side's id (origin-id or stanza id): stable across retries.
    pub id: MessageId,
    /// Who posts.
    pub user: UserJid,
    /// Where.
    pub room: RoomId,
    /// The text. Never empty.
    pub text: String,
    /// What the bridge stored for the user at registration, if they registered; always
    /// `None` for a bridge without a registration form (the core does not look it up).
    pub registration: Option<RegistrationData>,
    /// When this corrects an earlier post of the same user (XEP-0308): the network's id
    /// for that post. Only for bridges that declare [`crate::Capabilities::corrections`].
    /// Report the network's echo (or, with [`Posted::Reflect`], nothing: the core reflects
    /// it) like any post.
    pub replaces: Option<MessageId>,
    /// When this replies to an earlier message (XEP-0461): which, and who said it. Only for
    /// bridges that declare [`crate::Capabilities::replies`]; `text` is then the reply
    /// alone (the client's quote of the message, its XEP-0428 fallback, is taken out).
    pub reply_to: Option<ReplyTo>,
}

/// The message a post replies to: [`RoomPost::reply_to`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The network's id for it.
    pub id: MessageId,
    /// The nick of who said it (as the archive has it: they may have changed nick since).
    pub nick: String,
}

/// What a successful [`crate::Bridge::send_room_message`] returns: how the user's own
/// message comes back to them (XEP-0045's reflection, the cue their client takes for "sent").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// The network took it and will not echo it: the core reflects it now, to the user's
    /// resources and to its other users in the room, with the network's id when it gave one.
    Reflect {
        /// The network's id for the message; the core makes one up when `None`.
        foreign_id: Option<MessageId>,
    },
    /// The network will echo it (IRCv3 `echo-message`): the bridge reports the echo as a
    /// [`RoomMessage`] whose `echo_of` is the post's id, and the core reflects that.
    EchoFollows,
}

/// A message said in a room, reported with [`RoomEvent::Message`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMessage {
    /// The network's id for it. The core keeps each id once per room, so a bridge may report
    /// a message again (every user's connection saw it, a replay after a crash) and users
    /// see it once.
    pub foreign_id: MessageId,
    /// The sender's nick.
    pub nick: String,
    /// The sender's stable id on the network (see [`Occupant::id`]).
    pub sender: ForeignId,
    /// The text.
    pub text: String,
    /// When the network says it was said, for history and late lines.
    pub timestamp: Option<SystemTime>,
    /// When this is the network's echo of a user's own post ([`Posted::EchoFollows`]): the
    /// post's id, so that the core reflects it with the user's origin-id.
    pub echo_of: Option<MessageId>,
    /// When this corrects an earlier message (XEP-0308): that message's network id. A
    /// correction of a message the core never saw is shown as a new message.
    pub replaces: Option<MessageId>,
    /// When this replies to an earlier message (XEP-0461): that message's network id. The
    /// core shows it as a reply to the message it archived under that id; a reply to a
    /// message it never saw is shown as a plain message.
    pub reply_to: Option<MessageId>,
}

/// Someone's reactions to a room message (XEP-0444), reported with [`RoomEvent::Reacted`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    /// The network id of the message reacted to.
    pub to: MessageId,
    /// The reacting occupant's nick.
    pub nick: String,
    /// Their stable id on the network (see [`Occupant::id`]).
    pub sender: ForeignId,
    /// Their reactions to it now, in full (empty: they took them all back).
    pub emojis: Vec<String>,
}

/// Something that happened in a room, reported with [`crate::Core::room_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A message.
    Message(RoomMessage),
    /// Someone joined, or an occupant's role or affiliation changed.
    Occupant(Occupant),
    /// Someone left.
    Left {
        /// Their nick.
        nick: String,
        /// Their parting words, if any.
        reason: Option<String>,
    },
    /// Someone changed nick (a user of the core too: the network renamed them).
    Renamed {
        /// The nick they had.
        old: String,
        /// The nick they have now.
        new: String,
    },
    /// Someone was kicked (a user of the core too: they are out of the room).
    Kicked {
        /// Their nick.
        nick: String,
        /// Who kicked them, when known.
        by: Option<String>,
        /// Why, when said.
        reason: Option<String>,
    },
    /// Someone was banned (a user of the core too: they are out of the room).
    Banned {
        /// Their nick.
        nick: String,
        /// Who banned them, when known.
        by: Option<String>,
        /// Why, when said.
        reason: Option<String>,
    },
    /// The subject changed.
    Subject(Subject),
    /// A message was retracted (by its sender, or a moderator): users' clients hide it, and
    /// the archive keeps only a tombstone. A message the core never saw is ignored.
    Retracted {
        /// The message's network id.
        foreign_id: MessageId,
    },
    /// Someone's reactions to a message changed. Reactions to a message the core never saw
    /// are ignored.
    Reacted(Reaction),
    /// Something the room itself says, not one of its occupants: the network's notice, or
    /// news of a user's link to it ("reconnecting…"). Shown as a message from the room's
    /// address, to `user`'s resources only when set (to everyone in the room otherwise);
    /// never archived.
    Notice {
        /// Whom it is for; `None`: everyone in the room.
        user: Option<UserJid>,
        /// What it says.
        text: String,
    },
    /// Someone on the network is typing, or stopped ([`ChatState`], XEP-0085). Shown to
    /// everyone in the room but the member of that nick; never archived. A bridge reports
    /// changes only (a network's repeated "still typing" is one [`ChatState::Composing`]),
    /// and [`ChatState::Paused`] when it stopped hearing of it: clients show "typing" until
    /// told otherwise or a message comes. Not for the core's own users: the core shows their
    /// typing to the room itself.
    Typing {
        /// Their nick.
        nick: String,
        /// What they are doing.
        state: ChatState,
    },
    /// Someone on the network invites `user` to this room (IRC `INVITE`), whether or not
    /// they are in it: the user gets a XEP-0045 invitation (and a XEP-0249 one) from the
    /// room's address, naming `by`'s address as the inviter.
    Invited {
        /// Whom.
        user: UserJid,
        /// Who invites them (their address on the gateway, as for a private message).
        by: ForeignId,
    },
}

/// What a moderator asks of the network through [`crate::Bridge::moderate`] (XEP-0045 §8-9).
/// The outcome is reported as the [`RoomEvent`] the network sends (kicked, banned, an
/// occupant's new role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Moderation {
    /// Put `nick` out of the room (IRC `KICK`).
    Kick {
        /// Who.
        nick: String,
        /// Why, if said.
        reason: Option<String>,
    },
    /// Keep `nick` out of the room (IRC `MODE +b` and `KICK`).
    Ban {
        /// Who.
        nick: String,
        /// Why, if said.
        reason: Option<String>,
    },
    /// Give `nick` another role (IRC `+o`/`-o`, `+v`/`-v`).
    SetRole {
        /// Who.
        nick: String,
        /// The role.
        role: Role,
    },
}

/// A room the network lists (IRC's `LIST`): an entry of the gateway's disco#items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomListing {
    /// The room.
    pub room: RoomId,
    /// What to show besides its address (a topic, a title), if anything.
    pub name: Option<String>,
    /// How many are in it, when the network says.
    pub occupants: Option<u32>,
}

/// Why a room action (a subject change, a nick change, a kick) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomActionError {
    /// The user may not do it here: `forbidden` (`not-allowed` for moderation, `conflict`
    /// for a nick).
    #[error("{0}")]
    Forbidden(String),
    /// There is nobody of that nick in the room: `item-not-found`.
    #[error("{0}")]
    NoSuchOccupant(String),
    /// The bridge cannot do it: `feature-not-implemented`.
    #[error("{0}")]
    NotSupported(String),
    /// The network cannot be reached now: `service-unavailable`.
    #[error("{0}")]
    Unavailable(String),
}
