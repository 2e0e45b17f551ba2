//! [`Core`]: the handle through which a bridge pushes events to the Jabbridge core and keeps
//! a little durable state, and [`Shutdown`], how the core tells a bridge to stop.

use std::sync::Arc;

use crate::{
    ChatState, DeliveryReport, ForeignId, IncomingMessage, MessageId, RegistrationData, RoomEvent,
    RoomId, UserJid, UserStatus,
};

/// Why the core did not accept an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// The core is shutting down; the bridge should stop and let the foreign network
    /// redeliver later.
    #[error("the core is shutting down")]
    ShuttingDown,
    /// The event was refused for what it is (a user not allowed, a text too long…): sending
    /// it again will not help. Do not tell the foreign network the message was accepted.
    #[error("{0}")]
    Refused(String),
    /// The core cannot take the event now (its database is unreachable or full): the foreign
    /// network should send it again later (a 503, a retry). Nothing was stored.
    #[error("{0}")]
    Unavailable(String),
}

/// What the core implements to receive a bridge's events ([`crate::plumbing`]). Bridge
/// authors use [`Core`]; the test kit implements this to record events.
#[crate::async_trait]
pub trait CoreSink: Send + Sync + 'static {
    /// See [`Core::deliver`].
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError>;

    /// See [`Core::room_event`].
    async fn room_event(&self, room: RoomId, event: RoomEvent) -> Result<(), CoreError>;

    /// See [`Core::set_status`].
    async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError>;

    /// See [`Core::chat_state`].
    async fn chat_state(
        &self,
        user: UserJid,
        contact: ForeignId,
        state: ChatState,
    ) -> Result<(), CoreError>;

    /// See [`Core::load`].
    async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError>;

    /// See [`Core::save`].
    async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError>;

    /// See [`Core::report`] (`sender: None`) and [`Core::report_for`].
    async fn report(
        &self,
        message: MessageId,
        sender: Option<UserJid>,
        report: DeliveryReport,
    ) -> Result<(), CoreError>;

    /// See [`Core::owner`].
    async fn owner(&self, identity: ForeignId) -> Result<Option<UserJid>, CoreError>;

    /// See [`Core::set_owner`].
    async fn set_owner(&self, identity: ForeignId, owner: Option<UserJid>)
    -> Result<(), CoreError>;

    /// See [`Core::identities`].
    async fn identities(&self, user: UserJid) -> Result<Vec<ForeignId>, CoreError>;

    /// See [`Core::registration`].
    async fn registration(&self, user: UserJid) -> Result<Option<RegistrationData>, CoreError>;
}

/// The bridge's handle on the core. Cheap to clone; given to [`crate::BuildFn`].
#[derive(Clone)]
pub struct Core {
    sink: Arc<dyn CoreSink>,
    // Shared, not copied: a bridge keeps a clone per connection or task (the IRC bridge one
    // per user and server), and a clone allocates nothing.
    domain: Arc<str>,
    public_url: Option<Arc<str>>,
}

impl Core {
    /// Wraps a sink ([`crate::plumbing::core`]).
    pub(crate) fn new(domain: impl Into<String>, sink: Arc<dyn CoreSink>) -> Self {
        Self {
            sink,
            domain: Arc::from(domain.into()),
            public_url: None,
        }
    }

    /// Sets the URL the outside world reaches Jabbridge's HTTP listener at (`http.public_url`).
    pub(crate) fn with_public_url(mut self, url: Option<String>) -> Self {
        self.public_url = url.map(|url| Arc::from(url.trim_end_matches('/')));
        self
    }

    /// The URL the outside world reaches Jabbridge's HTTP listener at, without a trailing
    /// `/` (`http.public_url`), if the admin configured one.
    pub fn public_url(&self) -> Option<&str> {
        self.public_url.as_deref()
    }

    /// The public URL of one of the bridge's own HTTP routes, e.g. `route_url("/status")` is
    /// `https://gw.example.org/bridges/{domain}/status`: what to give a provider as a callback
    /// URL, and what its signature covers. `None` without `http.public_url`.
    pub fn route_url(&self, path: &str) -> Option<String> {
        let path = path.trim_start_matches('/');
        self.public_url()
            .map(|base| format!("{base}/bridges/{}/{path}", self.domain))
    }

    /// The bridge's XMPP domain, e.g. `sms.example.org`, for building URLs and texts.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Hands a message from the foreign network to the core. When this returns `Ok`, the
    /// core has taken responsibility for the message: only then acknowledge it to the
    /// foreign network. The core delivers each `foreign_id` once. On
    /// [`CoreError::Unavailable`] tell the network to send it again later (a 503); on
    /// [`CoreError::Refused`] sending it again will not help.
    pub async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        self.sink.deliver(message).await
    }

    /// Reports something that happened in a room ([`crate::room`]): a message, an occupant
    /// joining, leaving, renamed, kicked or banned, a new subject. The core shows it to every
    /// user in the room. For a [`RoomEvent::Message`], `Ok` means the core archived it: only
    /// then acknowledge it to the network; a repeated `foreign_id` is shown once. Events about
    /// a room no user is in are dropped (`Ok`).
    pub async fn room_event(&self, room: &RoomId, event: RoomEvent) -> Result<(), CoreError> {
        self.sink.room_event(room.clone(), event).await
    }

    /// Tells the core that a user's link to the foreign network changed (connected, network
    /// down, credentials refused). The core shows it to the user as the gateway's presence.
    pub async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError> {
        self.sink.set_status(user, status).await
    }

    /// Shows `user` that `contact` is typing, or stopped ([`ChatState`], XEP-0085), in their
    /// one-to-one chat: sent at once, never stored, lost if the user is offline. Report
    /// changes only; see [`RoomEvent::Typing`] for rooms. A user who may not use the bridge
    /// is refused.
    pub async fn chat_state(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        state: ChatState,
    ) -> Result<(), CoreError> {
        self.sink
            .chat_state(user.clone(), contact.clone(), state)
            .await
    }

    /// Reads a value the bridge saved under `key` with [`Core::save`]: the bridge's own
    /// durable state (a disabled endpoint, a cursor), kept in the core's database and shared
    /// by every instance. Keys are the bridge's to choose; each bridge sees only its own.
    pub async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        self.sink.load(key).await
    }

    /// [`Core::load`] as a type of the bridge's own; a stored value of another shape is
    /// refused with the reason.
    pub async fn load_as<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, CoreError> {
        match self.load(key).await? {
            None => Ok(None),
            Some(value) => T::deserialize(&value).map(Some).map_err(|error| {
                CoreError::Refused(format!(
                    "the value saved under '{key}' does not read: {error}"
                ))
            }),
        }
    }

    /// [`Core::save`] of a type of the bridge's own.
    pub async fn save_as<T: serde::Serialize>(
        &self,
        key: &str,
        value: Option<&T>,
    ) -> Result<(), CoreError> {
        let value = value
            .map(serde_json::to_value)
            .transpose()
            .map_err(|error| CoreError::Refused(error.to_string()))?;
        self.save(key, value).await
    }

    /// Saves `value` under `key` (`None` deletes it), durably, before returning `Ok`.
    pub async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError> {
        self.sink.save(key, value).await
    }

    /// Passes on what the foreign network reported about a message the bridge sent with
    /// [`crate::SendOutcome::ReportFollows`]: a receipt or an error message for its sender.
    /// Reports about unknown messages, and repeated reports, are ignored (`Ok`).
    pub async fn report(
        &self,
        message: &MessageId,
        report: DeliveryReport,
    ) -> Result<(), CoreError> {
        self.sink.report(message.clone(), None, report).await
    }

    /// [`Core::report`], acted on only if `sender` sent the message: for a report that only
    /// a user's own credentials vouch for (a webhook signed with the key of their own
    /// provider account), which must not reach anyone else's messages.
    pub async fn report_for(
        &self,
        message: &MessageId,
        sender: &UserJid,
        report: DeliveryReport,
    ) -> Result<(), CoreError> {
        self.sink
            .report(message.clone(), Some(sender.clone()), report)
            .await
    }

    /// The XMPP user who owns one of the bridge's foreign identities (a phone number, a nick):
    /// messages to it are theirs. Owners are set by admins (`jabbridge identities set`) or by
    /// the bridge ([`Core::set_owner`]); an owner may use the bridge without registering.
    pub async fn owner(&self, identity: &ForeignId) -> Result<Option<UserJid>, CoreError> {
        self.sink.owner(identity.clone()).await
    }

    /// Makes `owner` the owner of `identity` (`None`: nobody), durably.
    pub async fn set_owner(
        &self,
        identity: &ForeignId,
        owner: Option<&UserJid>,
    ) -> Result<(), CoreError> {
        self.sink.set_owner(identity.clone(), owner.cloned()).await
    }

    /// The foreign identities `user` owns, sorted.
    pub async fn identities(&self, user: &UserJid) -> Result<Vec<ForeignId>, CoreError> {
        self.sink.identities(user.clone()).await
    }

    /// What the bridge stored for `user` when they registered ([`crate::Bridge::register`]),
    /// e.g. to check a webhook with the user's own credentials.
    pub async fn registration(
        &self,
        user: &UserJid,
    ) -> Result<Option<RegistrationData>, CoreError> {
        self.sink.registration(user.clone()).await
    }
}

/// Fires once when Jabbridge is shutting down. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    /// A signal and the sender that fires it (`send(true)`).
    pub fn new() -> (tokio::sync::watch::Sender<bool>, Self) {
        let (sender, receiver) = tokio::sync::watch::channel(false);
        (sender, Self(receiver))
    }

    /// Resolves once shutdown has begun (at once if it already has, or if the sender is gone).
    pub async fn wait(mut self) {
        // An error means the sender was dropped, which also means: stop.
        let _ = self.0.wait_for(|stopping| *stopping).await;
    }

    /// Whether shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::TestCore;

    #[test]
    fn a_clone_shares_the_domain_and_the_public_url() {
        let core = TestCore::new("irc.test")
            .with_public_url("https://gw.example.org/")
            .core();
        let clone = core.clone();
        assert_eq!(clone.domain(), "irc.test");
        assert_eq!(clone.public_url(), Some("https://gw.example.org"));
        // The same bytes, not a copy of them: a clone per connection allocates nothing.
        assert!(std::ptr::eq(core.domain(), clone.domain()));
        assert!(std::ptr::eq(
            core.public_url().unwrap_or_default(),
            clone.public_url().unwrap_or_default()
        ));
    }
}
