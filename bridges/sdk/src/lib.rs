//! The Jabbridge SDK: everything a bridge author implements and nothing more.
//!
//! A bridge connects Jabbridge to one foreign network (SMS, IRC, webhooks…). It sees typed
//! events and opaque ids, never XML stanzas and never SQL: the core turns stanzas into
//! [`OutgoingMessage`]s, turns [`IncomingMessage`]s into stanzas, answers XMPP protocol
//! requests (disco, ping, registration forms) from [`BridgeInfo`], and keeps every message in
//! its database.
//!
//! Layout:
//! - [`Bridge`]: the trait a bridge implements, and [`BuildFn`], how the core makes one.
//! - [`ids`]: opaque newtypes for users, foreign addresses and message ids.
//! - [`message`]: the typed messages that flow in each direction, and delivery errors.
//! - [`form`]: registration forms (rendered by the core as XEP-0004 data forms).
//! - [`Core`], the handle a bridge uses to push events to the core and keep a little state
//!   of its own, and [`Shutdown`], how the core tells a bridge to stop.
//! - [`command`]: commands a bridge adds to the gateway's ad-hoc and chat commands.
//! - [`auth`]: checking bearer tokens of incoming webhooks.
//! - [`room`]: group chats: the calls and events of a bridge with rooms.
//! - [`settings`]: the bridge's own config keys, parsed with errors that name the key.
//! - [`testkit`]: run a bridge without an XMPP server, in a unit test.
//! - [`plumbing`]: how the core hands a bridge its `Core` (not for bridge authors).

pub mod auth;
pub mod command;
mod core;
pub mod form;
pub mod ids;
pub mod message;
pub mod plumbing;
pub mod room;
pub mod settings;
pub mod testkit;

use std::sync::Arc;

pub use crate::command::{Command, CommandError, CommandResult};
pub use crate::core::{Core, CoreError, Shutdown};
pub use crate::form::{Field, FieldKind, Form, FormValues};
pub use crate::ids::{ForeignId, MessageId, UserJid};
pub use crate::message::{
    Attachment, ChatState, Correction, DeliveryReport, IncomingMessage, OutgoingMessage, SendError,
    SendOutcome, UserStatus,
};
pub use crate::room::{
    Affiliation, HistoryRequest, HistoryWish, JoinError, JoinRequest, Joined, Moderation, Occupant,
    Posted, Reaction, ReplyTo, Role, RoomActionError, RoomEvent, RoomId, RoomListing, RoomMessage,
    RoomPost, Subject,
};
pub use crate::settings::{Settings, SettingsError};
pub use async_trait::async_trait;
pub use http;
pub use secrecy;
pub use serde_json;

/// An HTTP request routed to a bridge: `/bridges/{domain}/{path}` on Jabbridge's HTTP
/// listener. `uri().path()` is the part after `/bridges/{domain}`. The core has already
/// applied the body size limit and timeout.
pub type HttpRequest = http::Request<bytes::Bytes>;
/// The bridge's answer to an [`HttpRequest`].
pub type HttpResponse = http::Response<bytes::Bytes>;

/// An [`HttpResponse`] with `status` and a plain-text or JSON `body`.
pub fn respond(status: http::StatusCode, body: impl Into<bytes::Bytes>) -> HttpResponse {
    let mut response = HttpResponse::new(body.into());
    *response.status_mut() = status;
    response
}

/// What a bridge tells the core about itself. Rendered into XEP-0030 disco#info and
/// XEP-0077 registration by the core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeInfo {
    /// The XEP-0030 gateway identity type, from the XMPP registrar where one fits:
    /// `sms`, `irc`, `smtp`, … (`echo` for the reference bridge).
    pub gateway_type: String,
    /// Human-readable name shown by clients, e.g. "SMS gateway".
    pub name: String,
    /// Optional features the bridge supports. The core answers `feature-not-implemented`
    /// for the rest.
    pub capabilities: Capabilities,
    /// The registration form; `None` when users need not register.
    pub registration: Option<Form>,
    /// What XEP-0100's `jabber:iq:gateway` asks for when a user adds a contact.
    pub prompt: Prompt,
}

/// The question a client shows when a user adds a contact through the gateway (XEP-0100
/// `jabber:iq:gateway`). The answer goes through [`Bridge::parse_address`], so a bridge can
/// accept what people type, e.g. `(555) 123-4567`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// A sentence explaining what to enter, e.g. "Enter the phone number of the contact".
    pub description: String,
    /// A short label for the field, e.g. "Phone number".
    pub prompt: String,
}

impl Default for Prompt {
    fn default() -> Self {
        Self {
            description: "Enter the address of the contact on the other network".into(),
            prompt: "Address".into(),
        }
    }
}

/// Optional features, declared up front so the core can answer for what a bridge lacks.
/// Every flag defaults to `false`: a bridge claims only what it implements.
///
/// XEP-0184 receipts need no flag: the core sends one, when asked, as soon as
/// [`Bridge::send_message`] succeeds (the foreign network accepted the message).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The bridge can carry message corrections (XEP-0308), in chats and, with `rooms`, in
    /// rooms ([`RoomPost::replaces`], [`RoomMessage::replaces`]).
    pub corrections: bool,
    /// With `rooms`: users may retract their own room messages (XEP-0424):
    /// [`Bridge::retract_room_message`], and the network's [`RoomEvent::Retracted`].
    pub retractions: bool,
    /// With `rooms`: users may react to room messages (XEP-0444): [`Bridge::react_in_room`],
    /// and the network's [`RoomEvent::Reacted`].
    pub reactions: bool,
    /// With `rooms`: users' replies to room messages (XEP-0461) reach the bridge as such
    /// ([`RoomPost::reply_to`], without the client's quote), and rooms list the feature.
    /// Without it, a user's reply is a plain post whose text keeps the client's quote. (The
    /// network's replies need no flag: [`RoomMessage::reply_to`].)
    pub replies: bool,
    /// The bridge carries users' typing notifications (XEP-0085) to the network:
    /// [`Bridge::send_chat_state`], and with `rooms` [`Bridge::room_chat_state`]. (Contacts'
    /// and occupants' typing needs no flag: [`Core::chat_state`], [`RoomEvent::Typing`].)
    pub chat_states: bool,
    /// The bridge has group chats ([`crate::room`]): it implements
    /// [`Bridge::parse_room`], [`Bridge::join_room`], [`Bridge::send_room_message`] and
    /// [`Bridge::leave_room`], and private messages to occupants (an [`OutgoingMessage`]
    /// with `room` set).
    pub rooms: bool,
    /// The registration has several steps ([`Bridge::register_step`] answers
    /// [`RegistrationStep::Next`]): XEP-0077 registration (one form) and `register` by chat
    /// are refused at once, pointing to the XEP-0050 command, before the bridge is asked
    /// anything (which might send a code twice).
    pub registration_steps: bool,
}

/// Why a bridge could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// The bridge's config section is wrong; the message names the key.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The bridge failed while running; the core logs it and restarts `run` with backoff.
    #[error("{0}")]
    Failed(String),
}

/// One check of a bridge's own setup, for `jabbridge doctor` ([`Bridge::check_setup`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// What was checked, e.g. `Twilio account`.
    pub what: String,
    /// What was seen, or what to fix (naming the config key).
    pub outcome: Result<String, String>,
}

/// Why a user's session ends ([`Bridge::stop_session`]). More reasons may come in later
/// versions: treat an unknown one like `Shutdown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEnd {
    /// The user unregistered.
    Unregistered,
    /// An admin removed the user.
    Removed,
    /// Jabbridge is shutting down; the session starts again at the next start, or at once
    /// in another instance sharing the database.
    Shutdown,
    /// Another instance sharing the database runs the session now (this one was silent for
    /// longer than `delivery.lease`, and its sessions were taken over). Close the foreign
    /// connection without telling the network the user left: the other instance holds it.
    Moved,
}

/// Why a foreign address could not be parsed from a JID localpart. The core answers the
/// user with `jid-malformed` and this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

/// Why a registration was refused. The core answers the user with `not-acceptable` and this
/// text, and stores nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The form's values are wrong (bad credentials, missing field…): the text says which.
    #[error("{0}")]
    Rejected(String),
    /// The foreign network could not be reached to check the values; try again later.
    #[error("{0}")]
    Unavailable(String),
}

/// Where one step of a registration led ([`Bridge::register_step`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationStep {
    /// Registered: what the core stores for the user.
    Done(RegistrationData),
    /// One more step: another form (a code sent by SMS, a choice), or a wait ("confirm on
    /// your phone, then press Complete": a form without fields, with its instructions). The
    /// user's answer comes back to [`Bridge::register_step`] with `step`. Shown through the
    /// XEP-0050 command `register`; XEP-0077 (one form) tells the user to use that.
    Next {
        /// The bridge's name for the step, handed back with its values.
        step: String,
        /// What the user is asked.
        form: Form,
    },
}

/// The data a bridge keeps per registered user (credentials, settings), as a serde type of
/// the bridge's own: [`RegistrationData::new`] from it, [`RegistrationData::read`] back.
/// Stored by the core as JSON and handed back with every [`OutgoingMessage`] of that user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationData(serde_json::Value);

impl RegistrationData {
    /// The data of `value`, a type of the bridge's own.
    pub fn new<T: serde::Serialize>(value: &T) -> Result<Self, RegistrationError> {
        serde_json::to_value(value)
            .map(Self)
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))
    }

    /// Reads the data as the bridge's own type (the one it was made from); an error when the
    /// stored data is not of that shape (written by an older version of the bridge, say).
    pub fn read<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        T::deserialize(&self.0)
    }

    /// The data as the core stores it.
    pub fn as_json(&self) -> &serde_json::Value {
        &self.0
    }

    /// Data read back from the core's store.
    pub fn from_json(value: serde_json::Value) -> Self {
        Self(value)
    }
}

/// Constructs a bridge from its config section. One per bridge kind, listed in the core's
/// registry (`src/bridges.rs`): adding a kind is one line there.
///
/// Called at start-up and by `jabbridge check-config`: it must validate `settings` and do no
/// I/O (no connections, no files); connect in [`Bridge::run`].
pub type BuildFn = fn(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError>;

/// A bridge between XMPP users and one foreign network.
///
/// The core holds one instance per `[[bridge]]` section and calls its methods concurrently
/// from several tasks: keep state behind `Mutex`es or channels. Methods never see XML or SQL.
#[async_trait]
pub trait Bridge: Send + Sync + 'static {
    /// Describes the bridge. Called at start-up and when answering disco queries: it must
    /// return at once, with no I/O.
    fn info(&self) -> BridgeInfo;

    /// [`BridgeInfo::capabilities`], which the core asks on every message. The default
    /// builds the whole [`Bridge::info`]; a bridge may answer it directly (it must agree).
    fn capabilities(&self) -> Capabilities {
        self.info().capabilities
    }

    /// Whether users register ([`BridgeInfo::registration`] is `Some`), which the core asks
    /// on every message. The default builds the whole [`Bridge::info`]; a bridge may answer
    /// it directly (it must agree).
    fn registers(&self) -> bool {
        self.info().registration.is_some()
    }

    /// The bridge's long-running work: connect to the foreign network, listen, push incoming
    /// messages through [`Core`]. Called once after start-up; must return soon after
    /// `shutdown` fires. Connection trouble is not an error to return: retry inside, and
    /// return `Err` only for what a restart might cure. The default does nothing until
    /// shutdown, for bridges that only react to calls.
    async fn run(&self, shutdown: Shutdown) -> Result<(), BridgeError> {
        shutdown.wait().await;
        Ok(())
    }

    /// Whether the bridge can serve its users now, for `/ready`: `Err` says why not (an
    /// external bridge's process is restarting, say). No I/O. The default: always ready.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Turns the (already XEP-0106-unescaped) localpart of a contact's JID into the foreign
    /// address it stands for, e.g. `+15551234567`. Called for every stanza to a contact;
    /// no I/O. An error reaches the user as `jid-malformed`.
    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError>;

    /// Whether the (already unescaped) localpart of a JID names a room rather than a contact,
    /// and which: e.g. `#rust` on IRC. Called for every stanza before
    /// [`Bridge::parse_address`], only for bridges that declare [`Capabilities::rooms`];
    /// no I/O. The default: no localpart is a room.
    fn parse_room(&self, _localpart: &str) -> Option<RoomId> {
        None
    }

    /// Turns a foreign address into the JID localpart it appears under; the core escapes it
    /// (XEP-0106). Must be the inverse of [`Bridge::parse_address`]. No I/O.
    fn format_address(&self, contact: &ForeignId) -> String {
        contact.as_str().to_owned()
    }

    /// Checks a registration form a user submitted and returns what to store for them
    /// (a type of the bridge's own, through [`RegistrationData::new`]). Called when a user
    /// registers or re-registers; may do I/O to check credentials, but must not keep them
    /// anywhere: the core stores what this returns. The default stores the form's values as
    /// they are (a JSON object of strings).
    async fn register(
        &self,
        _user: &UserJid,
        form: &FormValues,
    ) -> Result<RegistrationData, RegistrationError> {
        Ok(RegistrationData::from_json(form.to_json()))
    }

    /// One step of a registration in several steps. `step` is `None` for the registration
    /// form's values (checked against it by the core), or the `step` of the
    /// [`RegistrationStep::Next`] this bridge returned, with the values of that step's form
    /// (checked by nobody but the bridge; the core keeps no state between steps, so carry
    /// what you need in `step`). The core seals the step for the user it was offered to, so
    /// `step` is always one this bridge returned to this user. The default:
    /// [`Bridge::register`], in one step.
    async fn register_step(
        &self,
        user: &UserJid,
        step: Option<&str>,
        form: &FormValues,
    ) -> Result<RegistrationStep, RegistrationError> {
        match step {
            None => self.register(user, form).await.map(RegistrationStep::Done),
            Some(_) => Err(RegistrationError::Rejected(
                "this registration has one step: start again".into(),
            )),
        }
    }

    /// Delivers one message from an XMPP user to the foreign network. Called in order per
    /// conversation, after the message is accepted. Return a transient error for what a retry
    /// may cure (the core retries with backoff) and a permanent one for what it cannot (the
    /// user gets an error message with the reason).
    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError>;

    /// Decides whether a user may add a contact (a presence subscription to the contact's JID).
    /// The default approves every request; a network with its own approval (friend requests)
    /// would ask there. May do I/O.
    async fn subscription_requested(&self, _user: &UserJid, _contact: &ForeignId) -> bool {
        true
    }

    /// The display name of a contact, sent with presence as a XEP-0172 nick when known.
    /// No I/O.
    fn contact_name(&self, _contact: &ForeignId) -> Option<String> {
        None
    }

    /// The state of a user's link to the foreign network, answered to presence probes. The
    /// default says connected; bridges that keep a connection per user report its state here
    /// and push changes with [`Core::set_status`]. No I/O.
    fn user_status(&self, _user: &UserJid) -> UserStatus {
        UserStatus::Connected(None)
    }

    /// Checks the bridge's own setup with I/O for `jabbridge doctor`, e.g. that its provider
    /// credentials are accepted, with the cheapest authenticated call there is. Must change
    /// nothing anywhere; called on a bridge that was built but never run. The default
    /// checks nothing.
    async fn check_setup(&self) -> Vec<Checked> {
        Vec::new()
    }

    /// Starts `user`'s session: called for every registered user when Jabbridge starts, when
    /// a user registers, and again when they register anew with other data (`registration`
    /// is what [`Bridge::register`] returned). With several instances on one database, a
    /// session runs in one instance at a time: this is called in the instance that runs it,
    /// also when it takes the session over from an instance that stopped or died, and every
    /// call for that user (rooms, messages) comes to that instance. A bridge that keeps a foreign connection per
    /// user opens it here, or lazily on the user's first join; it reports the link's state
    /// with [`Core::set_status`], which the user sees as the gateway's presence (XEP-0100).
    /// Return soon: connect in a task of the bridge's own. The default does nothing.
    async fn start_session(&self, _user: &UserJid, _registration: &RegistrationData) {}

    /// Ends `user`'s session ([`SessionEnd`] says why): close their foreign connection and
    /// forget what was kept for them in memory. On unregistering, their rooms were left
    /// first ([`Bridge::leave_room`]); at shutdown they stay recorded, and are joined again
    /// at the next start. The default does nothing.
    async fn stop_session(&self, _user: &UserJid, _why: SessionEnd) {}

    /// Tells the bridge that a registered user came online (first resource) or went offline
    /// (last resource), e.g. to connect or disconnect them. The default ignores it.
    async fn user_presence(&self, _user: &UserJid, _online: bool) {}

    /// Passes on a user's typing to a contact, or (with `room`) privately to an occupant there,
    /// `contact` then being their nick (XEP-0045 §7.5's private messages). Called only when
    /// the bridge declares [`Capabilities::chat_states`]; never retried. The default drops it.
    async fn send_chat_state(
        &self,
        _user: &UserJid,
        _contact: &ForeignId,
        _room: Option<&RoomId>,
        _state: ChatState,
    ) {
    }

    /// What the bridge tells a user who writes to the gateway itself, shown above the
    /// commands in the `help` reply: e.g. the contacts they may write to. No I/O.
    fn describe(&self, _user: &UserJid) -> Option<String> {
        None
    }

    /// Commands the bridge adds to the gateway's own (`register`, `status`…), offered as
    /// XEP-0050 ad-hoc commands and by chat, each with what runs it ([`Command::new`]).
    /// Called whenever the list is shown or a command runs, so it may change (e.g. a
    /// choice of what is disabled now). No I/O.
    fn commands(&self) -> Vec<Command> {
        Vec::new()
    }

    /// Whether the commands made with [`Command::on_contacts`] are offered on `contact`'s
    /// JID (an IRC server's address, say, and not a nick's). No I/O. The default: on none.
    fn offers_commands(&self, _contact: &ForeignId) -> bool {
        false
    }

    /// Joins `request.user` to a room on the network, and returns the room as they see it
    /// now. Called when a user's first resource joins (and, at start, for every user who was
    /// in a room when Jabbridge stopped); never twice for a user already in the room. Events
    /// the join causes (the user appearing as an occupant to the others) may be reported
    /// before this returns. May do I/O, within the call timeout.
    async fn join_room(&self, request: JoinRequest) -> Result<Joined, JoinError> {
        let _ = request;
        Err(JoinError::Unavailable(
            "this bridge has no group chats".into(),
        ))
    }

    /// Leaves a room on the network for `user`: their last resource left it (after the
    /// grace period), or they were unregistered or removed. Not called for a user the
    /// network already put out (kicked, banned), nor at shutdown (the join is kept, and
    /// made again at the next start).
    async fn leave_room(&self, _user: &UserJid, _room: &RoomId) {}

    /// Lines of a room said before the oldest the core archived, for a MAM query that
    /// reached the start of its archive (IRC: `CHATHISTORY BEFORE`), in any order. Each
    /// needs its time; the core archives those within its retention, below what it had,
    /// and answers the query with them. Asked again only while the network gives some. The
    /// default: none (a network that keeps no history).
    async fn room_history(
        &self,
        _request: HistoryRequest,
    ) -> Result<Vec<RoomMessage>, RoomActionError> {
        Ok(Vec::new())
    }

    /// A user in `room` sent their presence there: `away` is their status text (empty when
    /// they gave none) while they show away, extended away or busy, `None` while they are
    /// available (IRC: `AWAY`). Called after each join and for each presence update of a
    /// joined user (not for leaves), so mostly with what the bridge knew already: it
    /// should act on changes only. The latest presence of any of the user's resources
    /// counts. No answer.
    async fn room_presence(&self, _user: &UserJid, _room: &RoomId, _away: Option<String>) {}

    /// Passes on that a user in `room` is typing, or stopped. Called only when the bridge
    /// declares [`Capabilities::chat_states`] and the user is in the room; never retried,
    /// no answer. The default drops it.
    async fn room_chat_state(&self, _user: &UserJid, _room: &RoomId, _state: ChatState) {}

    /// Posts a user's message to a room they are in. `Ok` means the network took it; see
    /// [`Posted`] for how it is reflected. An error goes back to the user as an error
    /// message with its reason; nothing is retried (the user's client shows it unsent).
    async fn send_room_message(&self, post: RoomPost) -> Result<Posted, SendError> {
        let _ = post;
        Err(SendError::Permanent {
            reason: "this bridge has no group chats".into(),
        })
    }

    /// The rooms the network lists for `user`, for the gateway's disco#items (the core
    /// sorts and pages them). May do I/O (IRC's `LIST`), within the call timeout. The
    /// default lists none.
    async fn list_rooms(&self, _user: &UserJid) -> Result<Vec<RoomListing>, RoomActionError> {
        Ok(Vec::new())
    }

    /// Asks the network to kick, ban, or change the role of an occupant for `user`, a
    /// moderator in the XMPP client (XEP-0045 §8-9). Report the outcome as the network's
    /// [`RoomEvent`]. The default refuses (`feature-not-implemented`); `Forbidden` becomes
    /// `not-allowed`.
    async fn moderate(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _action: Moderation,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot moderate rooms".into(),
        ))
    }

    /// Invites `contact` (a person on the network, by their address) to `room` for `user`,
    /// who is in it (a XEP-0045 mediated invitation to `contact`'s JID: IRC `INVITE`). The
    /// default refuses (`feature-not-implemented`); `Forbidden` becomes `forbidden`.
    async fn invite(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _contact: &ForeignId,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot invite to rooms".into(),
        ))
    }

    /// What software `contact` uses, in words, asked for `user` (XEP-0092 to the contact's
    /// address; with `room`, to their occupant's address there, `contact` then being their
    /// nick): IRC asks with CTCP `VERSION` and answers with the reply. The default refuses
    /// (`NotSupported`: the asker gets `service-unavailable`); `NoSuchOccupant` becomes
    /// `item-not-found`, `Unavailable` (no answer, not connected) `service-unavailable`
    /// with its text.
    async fn contact_version(
        &self,
        _user: &UserJid,
        _contact: &ForeignId,
        _room: Option<&RoomId>,
    ) -> Result<String, RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot ask what software someone uses".into(),
        ))
    }

    /// Whether `contact` answers now, asked for `user` (XEP-0199 ping to the contact's
    /// address; with `room`, to their occupant's address there, `contact` then being their
    /// nick): IRC asks with CTCP `PING`. `Ok` once they answered. The default says
    /// `NotSupported`, and the core then answers for the network, as it always did;
    /// `NoSuchOccupant` becomes `item-not-found`, `Unavailable` (no answer, not connected)
    /// `service-unavailable` with its text.
    async fn ping_contact(
        &self,
        _user: &UserJid,
        _contact: &ForeignId,
        _room: Option<&RoomId>,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot ask whether someone answers".into(),
        ))
    }

    /// Changes a user's nick in a room (they sent presence to `room/new-nick`). Report the
    /// change with [`RoomEvent::Renamed`] when the network confirms it; the core shows it
    /// then. The default refuses (`feature-not-implemented`); `Forbidden` becomes `conflict`.
    async fn change_nick(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _nick: &str,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot change nicks".into(),
        ))
    }

    /// Changes a user's room subject. The default refuses; the answer to the user is
    /// `forbidden` or `feature-not-implemented` with the reason. Report the change itself
    /// with [`RoomEvent::Subject`] when the network confirms it.
    async fn set_subject(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _subject: &str,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot change a room's subject".into(),
        ))
    }

    /// Retracts (deletes for everyone, XEP-0424) `message`, an earlier post of `user` in
    /// `room`, on the network. Called only for bridges that declare
    /// [`Capabilities::retractions`], and only for the user's own messages. `Ok` means the
    /// network took it: the core then shows the retraction to everyone in the room and
    /// marks the message retracted in its archive, so do not report the user's own
    /// retraction as a [`RoomEvent::Retracted`]. The default refuses.
    async fn retract_room_message(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _message: &MessageId,
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot retract messages".into(),
        ))
    }

    /// Sets `user`'s reactions to `message` in `room` to `emojis` (XEP-0444: the full set,
    /// empty to take every reaction back). Called only for bridges that declare
    /// [`Capabilities::reactions`]. `Ok` means the network took it: the core then shows the
    /// reactions to everyone in the room, so do not report the user's own reactions as a
    /// [`RoomEvent::Reacted`]. The default refuses.
    async fn react_in_room(
        &self,
        _user: &UserJid,
        _room: &RoomId,
        _message: &MessageId,
        _emojis: &[String],
    ) -> Result<(), RoomActionError> {
        Err(RoomActionError::NotSupported(
            "this bridge cannot carry reactions".into(),
        ))
    }

    /// Answers an HTTP request under `/bridges/{domain}/`, e.g. a provider's webhook. Verify
    /// signatures before trusting anything in the request. The default answers 404.
    async fn handle_http(&self, _request: HttpRequest) -> HttpResponse {
        respond(http::StatusCode::NOT_FOUND, "not found\n")
    }
}
