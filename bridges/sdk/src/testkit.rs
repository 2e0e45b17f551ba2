//! Test a bridge without an XMPP server: [`TestCore`] builds the bridge with a [`Core`] whose
//! events land in a queue the test reads.
//!
//! ```
//! # use jabbridge_sdk::{testkit::TestCore, *};
//! # fn build(_: &Settings, _: Core) -> Result<std::sync::Arc<dyn Bridge>, BridgeError> { unimplemented!() }
//! let kit = TestCore::new("echo.test");
//! // let bridge = kit.build(build, serde_json::json!({})).unwrap();
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};

use crate::plumbing::CoreSink;
use crate::{
    Bridge, BridgeError, BuildFn, ChatState, CommandError, CommandResult, Core, CoreError,
    DeliveryReport, ForeignId, FormValues, IncomingMessage, MessageId, RegistrationData, RoomEvent,
    RoomId, Settings, SettingsError, UserJid, UserStatus,
};

/// Runs `bridge`'s command `node` for `user` with `values`, as the core does once it has
/// checked the user's rights and the values against the command's form.
pub async fn run_command(
    bridge: &dyn Bridge,
    user: &UserJid,
    node: &str,
    values: &FormValues,
) -> CommandResult {
    let command = bridge
        .commands()
        .into_iter()
        .find(|command| command.node == node)
        .ok_or_else(|| CommandError::Rejected(format!("no command '{node}'")))?;
    command.run(user.clone(), values.clone()).await
}

/// A stand-in for the Jabbridge core that records what a bridge pushes.
pub struct TestCore {
    domain: String,
    public_url: Option<String>,
    sender: mpsc::UnboundedSender<IncomingMessage>,
    receiver: Mutex<mpsc::UnboundedReceiver<IncomingMessage>>,
    statuses: Arc<std::sync::Mutex<Vec<(UserJid, UserStatus)>>>,
    state: State,
}

struct RecordingSink {
    messages: mpsc::UnboundedSender<IncomingMessage>,
    statuses: Arc<std::sync::Mutex<Vec<(UserJid, UserStatus)>>>,
    state: State,
}

/// What the core would keep for the bridge, in memory: its own state (`Core::save`), who
/// owns which identity, registrations, and the delivery reports it received.
#[derive(Default)]
struct Memory {
    values: BTreeMap<String, serde_json::Value>,
    owners: BTreeMap<ForeignId, UserJid>,
    registrations: BTreeMap<UserJid, RegistrationData>,
    reports: Vec<(MessageId, DeliveryReport)>,
    report_senders: Vec<Option<UserJid>>,
    /// (user, foreign id) of every message delivered, to drop repeats as the core does.
    delivered: std::collections::BTreeSet<(UserJid, MessageId)>,
    /// Room messages' (room, foreign id), likewise.
    said: std::collections::BTreeSet<(RoomId, MessageId)>,
    room_events: Vec<(RoomId, RoomEvent)>,
    chat_states: Vec<(UserJid, ForeignId, ChatState)>,
}

type State = Arc<std::sync::Mutex<Memory>>;

fn memory(state: &State) -> Result<std::sync::MutexGuard<'_, Memory>, CoreError> {
    state
        .lock()
        .map_err(|_| CoreError::Refused("poisoned".into()))
}

#[crate::async_trait]
impl CoreSink for RecordingSink {
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        let key = (message.user.clone(), message.foreign_id.clone());
        if !memory(&self.state)?.delivered.insert(key) {
            // The core delivers each foreign id once per user.
            return Ok(());
        }
        self.messages
            .send(message)
            .map_err(|_| CoreError::ShuttingDown)
    }

    async fn room_event(&self, room: RoomId, event: RoomEvent) -> Result<(), CoreError> {
        let mut memory = memory(&self.state)?;
        if let RoomEvent::Message(message) = &event {
            // The core keeps each foreign id once per room.
            if !memory
                .said
                .insert((room.clone(), message.foreign_id.clone()))
            {
                return Ok(());
            }
        }
        memory.room_events.push((room, event));
        Ok(())
    }

    async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError> {
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.push((user, status));
        }
        Ok(())
    }

    async fn chat_state(
        &self,
        user: UserJid,
        contact: ForeignId,
        state: ChatState,
    ) -> Result<(), CoreError> {
        memory(&self.state)?
            .chat_states
            .push((user, contact, state));
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        Ok(memory(&self.state)?.values.get(key).cloned())
    }

    async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError> {
        let mut state = memory(&self.state)?;
        match value {
            Some(value) => state.values.insert(key.to_owned(), value),
            None => state.values.remove(key),
        };
        Ok(())
    }

    async fn report(
        &self,
        message: MessageId,
        sender: Option<UserJid>,
        report: DeliveryReport,
    ) -> Result<(), CoreError> {
        let mut memory = memory(&self.state)?;
        memory.reports.push((message, report));
        memory.report_senders.push(sender);
        Ok(())
    }

    async fn owner(&self, identity: ForeignId) -> Result<Option<UserJid>, CoreError> {
        Ok(memory(&self.state)?.owners.get(&identity).cloned())
    }

    async fn set_owner(
        &self,
        identity: ForeignId,
        owner: Option<UserJid>,
    ) -> Result<(), CoreError> {
        let mut state = memory(&self.state)?;
        match owner {
            Some(owner) => state.owners.insert(identity, owner),
            None => state.owners.remove(&identity),
        };
        Ok(())
    }

    async fn identities(&self, user: UserJid) -> Result<Vec<ForeignId>, CoreError> {
        Ok(memory(&self.state)?
            .owners
            .iter()
            .filter(|(_, owner)| **owner == user)
            .map(|(identity, _)| identity.clone())
            .collect())
    }

    async fn registration(&self, user: UserJid) -> Result<Option<RegistrationData>, CoreError> {
        Ok(memory(&self.state)?.registrations.get(&user).cloned())
    }
}

impl TestCore {
    /// A test core for a bridge on `domain`.
    pub fn new(domain: &str) -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            domain: domain.to_owned(),
            public_url: None,
            sender,
            receiver: Mutex::new(receiver),
            statuses: Arc::default(),
            state: Arc::default(),
        }
    }

    /// Sets `http.public_url` as bridges built from now on see it ([`Core::public_url`]).
    pub fn with_public_url(mut self, url: &str) -> Self {
        self.public_url = Some(url.to_owned());
        self
    }

    /// The [`Core`] handle to give a bridge.
    pub fn core(&self) -> Core {
        Core::new(
            self.domain.clone(),
            Arc::new(RecordingSink {
                messages: self.sender.clone(),
                statuses: self.statuses.clone(),
                state: self.state.clone(),
            }),
        )
        .with_public_url(self.public_url.clone())
    }

    /// Builds a bridge with `settings` (a JSON object of its config keys), as the core would.
    pub fn build(
        &self,
        build: BuildFn,
        settings: serde_json::Value,
    ) -> Result<Arc<dyn Bridge>, BridgeError> {
        let serde_json::Value::Object(keys) = settings else {
            return Err(SettingsError {
                key: String::new(),
                message: "settings must be a JSON object".into(),
            }
            .into());
        };
        build(&Settings::new(keys), self.core())
    }

    /// The next message the bridge delivered, waiting up to `timeout`. A message delivered
    /// again (same user and foreign id) is not seen twice, as with the core.
    pub async fn next_delivered(&self, timeout: Duration) -> Option<IncomingMessage> {
        let mut receiver = self.receiver.lock().await;
        tokio::time::timeout(timeout, receiver.recv())
            .await
            .ok()
            .flatten()
    }

    /// Stores `data` as `user`'s registration, as the core does with what
    /// [`Bridge::register`] returned.
    pub fn set_registration(&self, user: &str, data: RegistrationData) {
        if let Ok(mut state) = self.state.lock() {
            state.registrations.insert(UserJid::new(user), data);
        }
    }

    /// Every delivery report the bridge passed with [`Core::report`], oldest first.
    pub fn reports(&self) -> Vec<(MessageId, DeliveryReport)> {
        self.state
            .lock()
            .map(|state| state.reports.clone())
            .unwrap_or_default()
    }

    /// For each of [`TestCore::reports`], the sender it was restricted to
    /// ([`Core::report_for`]), or `None` ([`Core::report`]).
    pub fn report_senders(&self) -> Vec<Option<UserJid>> {
        self.state
            .lock()
            .map(|state| state.report_senders.clone())
            .unwrap_or_default()
    }

    /// Every room event the bridge reported with [`Core::room_event`], oldest first, with
    /// repeated messages (same room and foreign id) left out as the core leaves them out.
    pub fn room_events(&self) -> Vec<(RoomId, RoomEvent)> {
        self.state
            .lock()
            .map(|state| state.room_events.clone())
            .unwrap_or_default()
    }

    /// Every typing notification the bridge passed with [`Core::chat_state`], oldest first.
    pub fn chat_states(&self) -> Vec<(UserJid, ForeignId, ChatState)> {
        self.state
            .lock()
            .map(|state| state.chat_states.clone())
            .unwrap_or_default()
    }

    /// Every status the bridge pushed with [`Core::set_status`], oldest first.
    pub fn statuses(&self) -> Vec<(UserJid, UserStatus)> {
        self.statuses
            .lock()
            .map(|statuses| statuses.clone())
            .unwrap_or_default()
    }
}
