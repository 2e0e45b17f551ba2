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

use crate::{
    Bridge, BridgeError, BuildFn, Core, CoreError, CoreSink, IncomingMessage, Settings,
    SettingsError, UserJid, UserStatus,
};

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

/// The bridge's saved state, in memory.
type State = Arc<std::sync::Mutex<BTreeMap<String, serde_json::Value>>>;

#[crate::async_trait]
impl CoreSink for RecordingSink {
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        self.messages
            .send(message)
            .map_err(|_| CoreError::ShuttingDown)
    }

    async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError> {
        if let Ok(mut statuses) = self.statuses.lock() {
            statuses.push((user, status));
        }
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        let state = self
            .state
            .lock()
            .map_err(|_| CoreError::Refused("poisoned".into()))?;
        Ok(state.get(key).cloned())
    }

    async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| CoreError::Refused("poisoned".into()))?;
        match value {
            Some(value) => state.insert(key.to_owned(), value),
            None => state.remove(key),
        };
        Ok(())
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

    /// The next message the bridge delivered, waiting up to `timeout`.
    pub async fn next_delivered(&self, timeout: Duration) -> Option<IncomingMessage> {
        let mut receiver = self.receiver.lock().await;
        tokio::time::timeout(timeout, receiver.recv())
            .await
            .ok()
            .flatten()
    }

    /// Every status the bridge pushed with [`Core::set_status`], oldest first.
    pub fn statuses(&self) -> Vec<(UserJid, UserStatus)> {
        self.statuses
            .lock()
            .map(|statuses| statuses.clone())
            .unwrap_or_default()
    }
}
