//! Bridges in any language: `kind = "external"` runs a child process that speaks protocol v1
//! (JSON-RPC 2.0, one message per line on stdin and stdout; see `docs/bridge-protocol.md`),
//! and implements the SDK's [`Bridge`] by talking to it, so the core does not know the
//! difference. It supervises the child (restarts with backoff, replays sessions and rooms,
//! pings it, bounds what it may write) and [`kit`] plays the core against any bridge
//! (`jabbridge bridge-test`).
//!
//! Layout: [`protocol`] (the wire types), [`child`] (one process and its connection),
//! `convert` (SDK ↔ wire), `lanes` (ordering of the child's requests), [`kit`] (the
//! conformance kit); this file holds the config, the supervisor and the [`Bridge`] impl.

pub mod child;
mod convert;
pub mod kit;
mod lanes;
pub mod protocol;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use jabbridge_sdk::http::StatusCode;
use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, Checked, Command, CommandError,
    Core, DeliveryReport, ForeignId, FormValues, HistoryRequest, HttpRequest, HttpResponse,
    IncomingMessage, JoinError, JoinRequest, Joined, MessageId, Moderation, OutgoingMessage,
    Posted, Prompt, RegistrationData, RegistrationError, RegistrationStep, RoomActionError,
    RoomEvent, RoomId, RoomListing, RoomMessage, RoomPost, SendError, SendOutcome, SessionEnd,
    Settings, SettingsError, Shutdown, UserJid, UserStatus, async_trait, auth, respond,
};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::child::{CallError, Connection, Inbound, Spawn, inbound_lane_of_room};
use crate::protocol::{RpcError, codes, to_bridge, to_core};

/// The `[[bridge]]` keys of `kind = "external"`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalConfig {
    /// The program and its arguments, e.g. `["python3", "bridge.py"]`.
    pub command: Vec<String>,
    /// Extra environment variables for it (not for secrets: those go in `settings`).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Its working directory.
    #[serde(default)]
    pub cwd: Option<PathBuf>,
    /// The bridge's own settings, handed to it in `initialize` (secrets included).
    #[serde(default)]
    pub settings: serde_json::Map<String, Value>,
    /// The gateway's name until the process first answers.
    #[serde(default)]
    pub name: Option<String>,
    /// How long a call may take before it is cancelled.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long the process has to answer `initialize`.
    #[serde(default = "default_start_timeout", with = "humantime_serde")]
    pub start_timeout: Duration,
    /// A silent process is pinged this often; three missed pings restart it.
    #[serde(default = "default_ping_every", with = "humantime_serde")]
    pub ping_every: Duration,
    /// How long it has to stop after `shutdown` before SIGTERM.
    #[serde(default = "default_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// The longest line either side may write.
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
    /// The most unanswered requests either side may have.
    #[serde(default = "default_max_inflight")]
    pub max_inflight: usize,
    /// Lines of noise per minute after which the process is restarted.
    #[serde(default = "default_noise_limit")]
    pub noise_limit: u64,
    /// Send the user a XEP-0184 receipt as soon as the network took a message, for a
    /// bridge that declares `receipts_on_accept` (otherwise receipts wait for the bridge's
    /// `delivered` report).
    #[serde(default)]
    pub receipts_on_accept: bool,
    /// When set, HTTP requests to the bridge's routes need `Authorization: Bearer <token>`;
    /// the core checks it and tells the bridge (`verified`).
    #[serde(default)]
    pub http_token: Option<SecretString>,
    /// When set (`whsec_…`), HTTP requests to the bridge's routes may be signed per Standard
    /// Webhooks instead: the core checks the signature and its timestamp (5 minutes) and
    /// tells the bridge (`verified`, with the `webhook-id`). With `http_token` too, either
    /// is enough.
    #[serde(default)]
    pub http_signing_secret: Option<SecretString>,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_start_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_ping_every() -> Duration {
    Duration::from_secs(30)
}
fn default_grace() -> Duration {
    Duration::from_secs(5)
}
fn default_max_message_bytes() -> usize {
    1024 * 1024
}
fn default_max_inflight() -> usize {
    64
}
fn default_noise_limit() -> u64 {
    100
}

impl ExternalConfig {
    /// Parses and checks the keys.
    pub fn parse(settings: &Settings) -> Result<Self, SettingsError> {
        let config: Self = settings.parse()?;
        let bad = |key: &str, message: &str| SettingsError {
            key: key.into(),
            message: message.into(),
        };
        if config
            .command
            .first()
            .is_none_or(|program| program.is_empty())
        {
            return Err(bad(
                "command",
                "must name a program, e.g. [\"python3\", \"bridge.py\"]",
            ));
        }
        if !(4096..=16 * 1024 * 1024).contains(&config.max_message_bytes) {
            return Err(bad("max_message_bytes", "must be between 4096 and 16 MiB"));
        }
        if let Some(secret) = &config.http_signing_secret
            && standardwebhooks::Webhook::new(secret.expose_secret()).is_err()
        {
            return Err(bad(
                "http_signing_secret",
                "not a Standard Webhooks key: expected whsec_ followed by base64",
            ));
        }
        if !(1..=1024).contains(&config.max_inflight) {
            return Err(bad("max_inflight", "must be between 1 and 1024"));
        }
        for (key, value) in [
            ("request_timeout", config.request_timeout),
            ("start_timeout", config.start_timeout),
            ("ping_every", config.ping_every),
        ] {
            if value < Duration::from_millis(100) {
                return Err(bad(key, "must be at least 100ms"));
            }
        }
        Ok(config)
    }

    /// How to start the process.
    pub fn spawn(&self) -> Spawn {
        Spawn {
            command: self.command.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
        }
    }

    /// The limits announced in `initialize`.
    pub fn limits(&self) -> protocol::Limits {
        protocol::Limits {
            max_message_bytes: self.max_message_bytes,
            max_inflight: self.max_inflight,
            request_timeout_ms: u64::try_from(self.request_timeout.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// `initialize`'s params for `domain` in `mode` (`run` or `check`).
pub fn initialize_params(
    config: &ExternalConfig,
    domain: &str,
    public_url: Option<&str>,
    mode: &str,
) -> protocol::InitializeParams {
    protocol::InitializeParams {
        protocol: protocol::ProtocolOffer {
            name: protocol::NAME.into(),
            versions: protocol::VERSIONS.to_vec(),
        },
        core: protocol::Software {
            name: "jabbridge".into(),
            version: Some(env!("CARGO_PKG_VERSION").into()),
        },
        domain: domain.into(),
        config: Value::Object(config.settings.clone()),
        public_url: public_url.map(str::to_owned),
        limits: config.limits(),
        mode: mode.into(),
    }
}

/// What the process said in the handshake, ready for use.
#[derive(Debug)]
pub struct Handshake {
    /// As the core shows it.
    pub info: BridgeInfo,
    /// The raw answer.
    pub answer: protocol::InitializeResult,
    contact: Option<regex::Regex>,
    room: Option<regex::Regex>,
}

/// Checks an `initialize` answer: a version we offered, patterns that compile.
pub fn accept_handshake(answer: protocol::InitializeResult) -> Result<Handshake, String> {
    if !protocol::VERSIONS.contains(&answer.protocol.version) {
        return Err(format!(
            "the bridge speaks protocol {}; this Jabbridge speaks {:?}: upgrade one of them",
            answer.protocol.version,
            protocol::VERSIONS
        ));
    }
    let compile = |key: &str, pattern: &Option<String>| {
        pattern
            .as_deref()
            .map(|pattern| {
                regex::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|error| format!("addressing.{key} does not compile: {error}"))
            })
            .transpose()
    };
    let contact = compile("contact_pattern", &answer.addressing.contact_pattern)?;
    let room = compile("room_pattern", &answer.addressing.room_pattern)?;
    let wire = answer.capabilities;
    let mut capabilities = Capabilities::default();
    capabilities.rooms = wire.rooms;
    capabilities.corrections = wire.corrections;
    capabilities.retractions = wire.retractions;
    capabilities.reactions = wire.reactions;
    capabilities.replies = wire.replies;
    capabilities.chat_states = wire.chat_states;
    capabilities.registration_steps = wire.registration_steps;
    let info = BridgeInfo {
        gateway_type: answer.bridge.gateway_type.clone(),
        name: answer.bridge.name.clone(),
        capabilities,
        registration: answer.registration.as_ref().map(convert::form),
        prompt: answer
            .bridge
            .prompt
            .as_ref()
            .map(|prompt| Prompt {
                description: prompt.description.clone(),
                prompt: prompt.prompt.clone(),
            })
            .unwrap_or_default(),
    };
    Ok(Handshake {
        info,
        answer,
        contact,
        room,
    })
}

/// The state of the process, as calls see it.
#[derive(Clone)]
enum Phase {
    Down(String),
    Up(Arc<Connection>),
}

/// How long the process must have run for its restarts to count from zero again.
const STABLE: Duration = Duration::from_secs(60);
/// The core's id of a user's message for the bridge: the client's id is unique per user
/// only, so the user goes with it, readable, unless that would pass the 1,024 bytes an id
/// may have (a hash then).
fn txn_id(user: &UserJid, id: &MessageId) -> String {
    let readable = format!("{user} {id}");
    if readable.len() <= 1024 {
        return readable;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(readable.as_bytes());
    let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("sha256:{hex}")
}

/// Attempt counts kept for messages in flight, at most.
const MAX_ATTEMPTS_KEPT: usize = 10_000;

/// Checks an id the process gave: 1 to 1,024 bytes, no NUL (the database indexes ids, and a
/// bad one must not fail other writes).
fn check_id(id: &str, what: &str) -> Result<(), RpcError> {
    if id.is_empty() || id.len() > 1024 || id.contains('\0') {
        return Err(invalid_params(format!(
            "{what}: an id has 1 to 1024 bytes and no NUL"
        )));
    }
    Ok(())
}

/// The ids a room event carries, named.
fn event_ids(event: &protocol::RoomEventWire) -> Vec<(&'static str, &str)> {
    use protocol::RoomEventWire as Event;
    match event {
        Event::Message {
            event_id,
            echo_of,
            replaces,
            reply_to,
            ..
        } => {
            let mut ids = vec![("event_id", event_id.as_str())];
            ids.extend(echo_of.as_deref().map(|id| ("echo_of", id)));
            ids.extend(replaces.as_deref().map(|id| ("replaces", id)));
            ids.extend(reply_to.as_deref().map(|id| ("reply_to", id)));
            ids
        }
        Event::Retracted { target } | Event::Reacted { target, .. } => vec![("target", target)],
        _ => Vec::new(),
    }
}

/// A user's status while the process is down.
const RESTARTING: &str = "the bridge process is restarting";

/// An external bridge: the process, what is replayed to it when it restarts, and what it
/// said about itself.
pub struct External {
    core: Core,
    config: ExternalConfig,
    phase: watch::Sender<Phase>,
    handshake: RwLock<Option<Arc<Handshake>>>,
    sessions: Mutex<BTreeMap<UserJid, Option<Value>>>,
    joined: Mutex<BTreeMap<(UserJid, RoomId), protocol::JoinParams>>,
    statuses: Mutex<HashMap<UserJid, UserStatus>>,
    attempts: Mutex<HashMap<String, u32>>,
    missed: Mutex<Vec<Missed>>,
    lanes: lanes::Lanes,
    myself: Weak<External>,
}

/// Builds an external bridge (no process yet: that starts in `run`).
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config = ExternalConfig::parse(settings)?;
    Ok(Arc::new_cyclic(|myself| External {
        core,
        config,
        phase: watch::Sender::new(Phase::Down("not started yet".into())),
        handshake: RwLock::new(None),
        sessions: Mutex::default(),
        joined: Mutex::default(),
        statuses: Mutex::default(),
        attempts: Mutex::default(),
        missed: Mutex::default(),
        lanes: lanes::Lanes::default(),
        myself: myself.clone(),
    }))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn invalid_params(error: impl std::fmt::Display) -> RpcError {
    RpcError::protocol(codes::INVALID_PARAMS, format!("invalid params: {error}"))
}

fn parse<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(invalid_params)
}

fn ok() -> Result<Value, RpcError> {
    Ok(json!({}))
}

/// What a replay told the process.
struct Replayed {
    sessions: BTreeMap<UserJid, Option<Value>>,
}

/// A call the process missed because it was down; made once it is back.
enum Missed {
    Stop(protocol::SessionStopParams),
    Leave(protocol::LeaveParams),
}

/// How a run of the process ended.
enum Ended {
    Shutdown,
    Failed(String),
}

impl External {
    fn handshake(&self) -> Option<Arc<Handshake>> {
        self.handshake
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn domain(&self) -> &str {
        self.core.domain()
    }

    /// The connection, waiting a little for a process that is starting.
    async fn connection(&self) -> Result<Arc<Connection>, CallError> {
        let mut phase = self.phase.subscribe();
        let waited = tokio::time::timeout(
            self.config.request_timeout,
            // A connection that closed is on its way down: wait for the next one.
            phase.wait_for(|phase| matches!(phase, Phase::Up(up) if !up.is_closed())),
        )
        .await;
        match waited {
            Ok(Ok(phase)) => match &*phase {
                Phase::Up(connection) => Ok(connection.clone()),
                Phase::Down(why) => Err(CallError::Down(why.clone())),
            },
            _ => match &*self.phase.borrow() {
                Phase::Down(why) => Err(CallError::Down(why.clone())),
                Phase::Up(connection) => Ok(connection.clone()),
            },
        }
    }

    async fn call<P: serde::Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, CallError> {
        let connection = self.connection().await?;
        connection
            .call(method, params, self.config.request_timeout)
            .await
    }

    /// Sends a notification if the process is up (notifications are never replayed).
    fn notify<P: serde::Serialize>(&self, method: &str, params: &P) {
        if let Phase::Up(connection) = &*self.phase.borrow() {
            connection.notify(method, params);
        }
    }

    /// One run of the process: start, handshake, replay, serve until it dies or shutdown.
    async fn serve_once(&self, shutdown: &Shutdown) -> Ended {
        let domain = self.domain().to_owned();
        let noise_domain = domain.clone();
        let myself = self.myself.clone();
        let started = child::start(
            &self.config.spawn(),
            self.config.limits(),
            child::NoiseLimit(self.config.noise_limit),
            move || {
                metrics::counter!("jabbridge_bridge_protocol_noise_total", "bridge" => noise_domain.clone())
                    .increment(1);
            },
            move |connection, request| {
                if let Some(bridge) = myself.upgrade() {
                    bridge.dispatch(connection, request);
                }
            },
        );
        let child::Started {
            connection,
            mut process,
        } = match started {
            Ok(started) => started,
            Err(error) => {
                return Ended::Failed(format!(
                    "could not start {:?}: {error}",
                    self.config.command
                ));
            }
        };
        let params = initialize_params(&self.config, &domain, self.core.public_url(), "run");
        let answer = connection
            .call::<_, protocol::InitializeResult>(
                to_bridge::INITIALIZE,
                &params,
                self.config.start_timeout,
            )
            .await;
        let handshake = match answer
            .map_err(|error| error.to_string())
            .and_then(accept_handshake)
        {
            Ok(handshake) => Arc::new(handshake),
            Err(why) => {
                child::stop(
                    &connection,
                    &mut process,
                    self.config.shutdown_grace,
                    "restart",
                )
                .await;
                return Ended::Failed(format!("the handshake failed: {why}"));
            }
        };
        tracing::info!(
            name = %handshake.answer.bridge.name,
            version = handshake.answer.bridge.version.as_deref().unwrap_or("?"),
            protocol = handshake.answer.protocol.version,
            "bridge process ready"
        );
        *self
            .handshake
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(handshake);
        connection.mark_initialized();
        connection.notify(to_bridge::INITIALIZED, &protocol::Empty {});
        let replayed = tokio::select! {
            replayed = self.replay(&connection) => replayed,
            () = shutdown.clone().wait() => {
                child::stop(&connection, &mut process, self.config.shutdown_grace, "stop").await;
                return Ended::Shutdown;
            }
            () = connection.closed() => {
                child::stop(&connection, &mut process, self.config.shutdown_grace, "restart").await;
                return Ended::Failed(format!("during the replay: {}", connection.close_reason()));
            }
        };
        self.phase.send_replace(Phase::Up(connection.clone()));
        self.reconcile(&connection, replayed).await;
        metrics::gauge!("jabbridge_bridge_process_up", "bridge" => domain.clone()).set(1.0);
        self.clear_restarting().await;
        let ended = self.watch(&connection, &mut process, shutdown).await;
        self.phase.send_replace(Phase::Down(match &ended {
            Ended::Shutdown => "Jabbridge is stopping".into(),
            Ended::Failed(why) => why.clone(),
        }));
        metrics::gauge!("jabbridge_bridge_process_up", "bridge" => domain).set(0.0);
        ended
    }

    /// Serves until the process dies, stops answering pings, writes too much noise, or
    /// shutdown.
    async fn watch(
        &self,
        connection: &Arc<Connection>,
        process: &mut tokio::process::Child,
        shutdown: &Shutdown,
    ) -> Ended {
        let grace = self.config.shutdown_grace;
        let every = self.config.ping_every;
        let mut misses = 0;
        loop {
            tokio::select! {
                () = shutdown.clone().wait() => {
                    child::stop(connection, process, grace, "stop").await;
                    return Ended::Shutdown;
                }
                status = process.wait() => {
                    connection.close("the process exited");
                    return Ended::Failed(match status {
                        Ok(status) => format!("the process exited ({status})"),
                        Err(error) => format!("the process was lost: {error}"),
                    });
                }
                () = connection.closed() => {
                    child::stop(connection, process, grace, "restart").await;
                    return Ended::Failed(connection.close_reason());
                }
                () = tokio::time::sleep(every) => {}
            }
            // A child the core is slow to serve is not silent: the reader waits on the core.
            if connection.silent_for() >= every && !connection.waiting_on_core() {
                let pinged = connection
                    .call_value(
                        to_bridge::PING,
                        &protocol::Empty {},
                        every.min(Duration::from_secs(10)),
                    )
                    .await;
                if pinged.is_ok() || connection.silent_for() < every || connection.waiting_on_core()
                {
                    misses = 0;
                } else {
                    misses += 1;
                    tracing::warn!(misses, "the bridge process did not answer a ping");
                    if misses >= 3 {
                        child::stop(connection, process, grace, "restart").await;
                        return Ended::Failed("the process stopped answering pings".into());
                    }
                }
            }
        }
    }

    /// After a (re)start: every session, then every room join, as they were, at most
    /// `max_inflight` at once. Returns what it replayed, for [`External::reconcile`].
    async fn replay(&self, connection: &Arc<Connection>) -> Replayed {
        let timeout = self.config.request_timeout;
        // At most max_inflight calls at once, each timed from when it is sent.
        let slots = Arc::new(tokio::sync::Semaphore::new(self.config.max_inflight));
        let sessions = lock(&self.sessions).clone();
        let mut calls = tokio::task::JoinSet::new();
        for (user, registration) in &sessions {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let connection = connection.clone();
            let user = user.clone();
            let params = protocol::SessionStartParams {
                user: user.to_string(),
                registration: registration.clone(),
            };
            calls.spawn(async move {
                let started = connection
                    .call_value(to_bridge::SESSION_START, &params, timeout)
                    .await;
                drop(slot);
                match started {
                    Ok(_) => Some((user, params.registration)),
                    Err(error) => {
                        tracing::warn!(%user, %error, "replaying a session failed");
                        None
                    }
                }
            });
        }
        // Only what the process took counts as replayed: the rest is tried again after.
        let mut replayed = BTreeMap::new();
        while let Some(outcome) = calls.join_next().await {
            if let Ok(Some((user, registration))) = outcome {
                replayed.insert(user, registration);
            }
        }
        let joins: Vec<_> = lock(&self.joined)
            .iter()
            .map(|(key, join)| (key.clone(), join.clone()))
            .collect();
        let mut rejoins = tokio::task::JoinSet::new();
        for ((user, room), join) in joins {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let connection = connection.clone();
            rejoins.spawn(async move {
                let joined = connection
                    .call::<_, protocol::JoinResult>(to_bridge::ROOM_JOIN, &join, timeout)
                    .await;
                drop(slot);
                (user, room, join.nick, joined.err())
            });
        }
        while let Some(Ok((user, room, nick, failed))) = rejoins.join_next().await {
            let Some(error) = failed else { continue };
            tracing::warn!(%user, %room, %error, "rejoining a room failed: the user is out");
            lock(&self.joined).remove(&(user.clone(), room.clone()));
            let kicked = RoomEvent::Kicked {
                nick,
                by: None,
                reason: Some(format!(
                    "the bridge restarted and could not rejoin: {error}"
                )),
            };
            let _ = self.core.room_event(&room, kicked).await;
        }
        Replayed { sessions: replayed }
    }

    /// What changed while the process was down or being replayed, told to it now: sessions
    /// started (or started again with other data), sessions stopped, rooms left.
    async fn reconcile(&self, connection: &Connection, replayed: Replayed) {
        let timeout = self.config.request_timeout;
        let now = lock(&self.sessions).clone();
        for (user, registration) in &now {
            if replayed.sessions.get(user) != Some(registration) {
                let params = protocol::SessionStartParams {
                    user: user.to_string(),
                    registration: registration.clone(),
                };
                let _ = connection
                    .call_value(to_bridge::SESSION_START, &params, timeout)
                    .await;
            }
        }
        let missed = std::mem::take(&mut *lock(&self.missed));
        for call in missed {
            let _ = match call {
                Missed::Stop(params) if !now.contains_key(&UserJid::new(params.user.clone())) => {
                    connection
                        .call_value(to_bridge::SESSION_STOP, &params, timeout)
                        .await
                }
                Missed::Leave(params) => {
                    connection
                        .call_value(to_bridge::ROOM_LEAVE, &params, timeout)
                        .await
                }
                Missed::Stop(_) => continue,
            };
        }
    }

    /// Users whose status was "restarting" are connected again (unless the process said
    /// otherwise meanwhile).
    async fn clear_restarting(&self) {
        let cleared: Vec<UserJid> = {
            let mut statuses = lock(&self.statuses);
            let cleared: Vec<UserJid> = statuses
                .iter()
                .filter(|(_, status)| matches!(status, UserStatus::Unavailable(why) if why == RESTARTING))
                .map(|(user, _)| user.clone())
                .collect();
            for user in &cleared {
                statuses.remove(user);
            }
            cleared
        };
        for user in cleared {
            let _ = self
                .core
                .set_status(user, UserStatus::Connected(None))
                .await;
        }
    }

    /// While the process is down, its users see the gateway unavailable.
    async fn mark_restarting(&self) {
        let users: Vec<UserJid> = lock(&self.sessions).keys().cloned().collect();
        for user in users {
            let status = UserStatus::Unavailable(RESTARTING.into());
            lock(&self.statuses).insert(user.clone(), status.clone());
            let _ = self.core.set_status(user, status).await;
        }
    }

    /// Answers one request (or acts on one notification) from the process.
    async fn handle(&self, method: &str, params: Value) -> Result<Value, RpcError> {
        let core = &self.core;
        match method {
            to_core::MESSAGE_RECEIVED => {
                let p: protocol::ReceivedParams = parse(params)?;
                check_id(&p.event_id, "event_id")?;
                check_id(&p.contact, "contact")?;
                if let Some(room) = &p.room {
                    check_id(room, "room")?;
                }
                let message = IncomingMessage {
                    foreign_id: MessageId::new(p.event_id),
                    contact: ForeignId::new(p.contact),
                    user: UserJid::new(p.user),
                    text: p.text,
                    attachments: convert::attachments_in(p.attachments),
                    timestamp: p.ts.as_deref().and_then(convert::parse_timestamp),
                    room: p.room.map(RoomId::new),
                };
                core.deliver(message).await.map_err(convert::core_error)?;
                ok()
            }
            to_core::DELIVERY_REPORT => {
                let p: protocol::ReportParams = parse(params)?;
                check_id(&p.id, "id")?;
                let report = match p.status.as_str() {
                    "delivered" => DeliveryReport::Delivered,
                    "failed" => DeliveryReport::Failed(
                        p.text
                            .unwrap_or_else(|| "the network could not deliver it".into()),
                    ),
                    other => return Err(invalid_params(format!("unknown status '{other}'"))),
                };
                let id = MessageId::new(p.id);
                match p.sender {
                    Some(sender) => core.report_for(&id, &UserJid::new(sender), report).await,
                    None => core.report(&id, report).await,
                }
                .map_err(convert::core_error)?;
                ok()
            }
            to_core::ROOM_EVENT => {
                let p: protocol::RoomEventParams = parse(params)?;
                check_id(&p.room, "room")?;
                for (what, id) in event_ids(&p.event) {
                    check_id(id, what)?;
                }
                let room = RoomId::new(p.room.clone());
                self.follow_own(&room, &p.event);
                let event = convert::room_event(p.event);
                core.room_event(&room, event)
                    .await
                    .map_err(convert::core_error)?;
                ok()
            }
            to_core::CHAT_TYPING => {
                let p: protocol::TypingParams = parse(params)?;
                check_id(&p.contact, "contact")?;
                let state = convert::chat_state(p.state);
                core.chat_state(&UserJid::new(p.user), &ForeignId::new(p.contact), state)
                    .await
                    .map_err(convert::core_error)?;
                ok()
            }
            to_core::SESSION_STATE => {
                let p: protocol::SessionStateParams = parse(params)?;
                let text = p.text.unwrap_or_default();
                let status = match p.state.as_str() {
                    "connected" => UserStatus::Connected((!text.is_empty()).then_some(text)),
                    "unavailable" => UserStatus::Unavailable(text),
                    "bad_credentials" => UserStatus::BadCredentials(text),
                    other => return Err(invalid_params(format!("unknown state '{other}'"))),
                };
                let user = UserJid::new(p.user);
                // Kept (for presence probes) only for users with a session here.
                if lock(&self.sessions).contains_key(&user) {
                    lock(&self.statuses).insert(user.clone(), status.clone());
                }
                core.set_status(user, status)
                    .await
                    .map_err(convert::core_error)?;
                ok()
            }
            to_core::STATE_LOAD => {
                let p: protocol::KeyParams = parse(params)?;
                let value = core.load(&p.key).await.map_err(convert::core_error)?;
                Ok(json!({ "value": value }))
            }
            to_core::STATE_SAVE => {
                let p: protocol::SaveParams = parse(params)?;
                core.save(&p.key, p.value)
                    .await
                    .map_err(convert::core_error)?;
                ok()
            }
            to_core::OWNER_GET => {
                let p: protocol::IdentityParams = parse(params)?;
                let owner = core
                    .owner(&ForeignId::new(p.identity))
                    .await
                    .map_err(convert::core_error)?;
                Ok(json!({ "user": owner.map(|owner| owner.to_string()) }))
            }
            to_core::OWNER_SET => {
                let p: protocol::SetOwnerParams = parse(params)?;
                let owner = p.user.map(UserJid::new);
                core.set_owner(&ForeignId::new(p.identity), owner.as_ref())
                    .await
                    .map_err(convert::core_error)?;
                ok()
            }
            to_core::IDENTITIES_LIST => {
                let p: protocol::UserParams = parse(params)?;
                let identities = core
                    .identities(&UserJid::new(p.user))
                    .await
                    .map_err(convert::core_error)?;
                let identities: Vec<String> =
                    identities.iter().map(|id| id.as_str().to_owned()).collect();
                Ok(json!({ "identities": identities }))
            }
            to_core::REGISTRATION_GET => {
                let p: protocol::UserParams = parse(params)?;
                let registration = core
                    .registration(&UserJid::new(p.user))
                    .await
                    .map_err(convert::core_error)?;
                Ok(json!({ "registration": registration.map(|data| data.as_json().clone()) }))
            }
            to_core::LOG => {
                let p: protocol::LogParams = parse(params)?;
                child::log_at(&p.level, &p.message);
                ok()
            }
            to_bridge::PING => ok(),
            other => Err(RpcError::protocol(
                codes::METHOD_NOT_FOUND,
                format!("method not found: {other}"),
            )),
        }
    }

    /// Checks an HTTP request to the bridge's routes as configured: a bearer token or a
    /// Standard Webhooks signature (either, when both are set); `Ok(None)` when neither is.
    fn authenticate(&self, request: &HttpRequest) -> Result<Option<protocol::Verified>, String> {
        let headers = request.headers();
        let signer = self
            .config
            .http_signing_secret
            .as_ref()
            .and_then(|secret| standardwebhooks::Webhook::new(secret.expose_secret()).ok());
        let signed = headers.contains_key(standardwebhooks::HEADER_WEBHOOK_SIGNATURE);
        if let (Some(signer), true) = (&signer, signed) {
            signer
                .verify(request.body(), headers)
                .map_err(|error| format!("bad Standard Webhooks signature: {error}"))?;
            let id = headers
                .get(standardwebhooks::HEADER_WEBHOOK_ID)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            return Ok(Some(protocol::Verified {
                scheme: "standard-webhooks".into(),
                id,
            }));
        }
        match (&self.config.http_token, auth::bearer_token(headers)) {
            (Some(token), Some(presented)) if auth::secret_matches(presented, token) => {
                Ok(Some(protocol::Verified {
                    scheme: "bearer".into(),
                    id: None,
                }))
            }
            (Some(_), Some(_)) => Err("wrong bearer token".into()),
            (Some(_), None) => Err("missing credentials: send 'Authorization: Bearer …'".into()),
            (None, _) if signer.is_some() => {
                Err("missing credentials: send Standard Webhooks signature headers".into())
            }
            (None, _) => Ok(None),
        }
    }

    /// Keeps the joins replayed after a restart true to what the process reported about our
    /// own users: out when kicked, banned or gone, under their new nick when renamed.
    fn follow_own(&self, room: &RoomId, event: &protocol::RoomEventWire) {
        use protocol::RoomEventWire as Event;
        let mut joined = lock(&self.joined);
        match event {
            Event::Kicked { nick, .. } | Event::Banned { nick, .. } | Event::Left { nick, .. } => {
                joined
                    .retain(|(_, joined_room), join| !(joined_room == room && &join.nick == nick));
            }
            Event::Renamed { old, new } => {
                for ((_, joined_room), join) in joined.iter_mut() {
                    if joined_room == room && &join.nick == old {
                        join.nick.clone_from(new);
                    }
                }
            }
            _ => {}
        }
    }

    /// Hands one of the process's requests to [`External::handle`]: in order per room or
    /// chat, at once otherwise; a request is answered when handled.
    fn dispatch(self: Arc<Self>, connection: Arc<Connection>, request: Inbound) {
        let lane = request.lane();
        let bridge = self.clone();
        let job = async move {
            let mut request = request;
            let method = std::mem::take(&mut request.method);
            let params = std::mem::take(&mut request.params);
            let outcome = bridge.handle(&method, params).await;
            if request.id.is_none() {
                if let Err(error) = outcome {
                    tracing::warn!(method, %error, "a notification from the bridge process failed");
                }
                return;
            }
            connection.respond(request, outcome).await;
        };
        match lane {
            Some(key) => self.lanes.push(key, job.in_current_span()),
            None => {
                tokio::spawn(job.in_current_span());
            }
        }
    }

    /// Waits until the events about `room` the process sent so far are handled: what it
    /// reported before answering a call (a join's own arrival) reaches the core before the
    /// answer does, as with an in-process bridge.
    async fn settle(&self, room: &RoomId) {
        let (done, settled) = tokio::sync::oneshot::channel();
        self.lanes
            .push(inbound_lane_of_room(room.as_str()), async move {
                let _ = done.send(());
            });
        let _ = tokio::time::timeout(self.config.request_timeout, settled).await;
    }

    async fn run_command(
        &self,
        node: String,
        user: UserJid,
        values: FormValues,
    ) -> Result<String, CommandError> {
        let params = protocol::CommandParams {
            node,
            user: user.to_string(),
            values: values.0,
        };
        self.call::<_, protocol::CommandResultWire>(to_bridge::COMMAND_RUN, &params)
            .await
            .map(|result| result.text)
            .map_err(convert::command_error)
    }

    /// What a command's form shows filled in, as the process says (nothing when it cannot).
    async fn current_values(&self, node: String, user: UserJid, known: FormValues) -> FormValues {
        let params = protocol::CommandParams {
            node,
            user: user.to_string(),
            values: known.0,
        };
        let current = self.call::<_, protocol::CurrentResult>(to_bridge::COMMAND_CURRENT, &params);
        match current.await {
            Ok(current) => FormValues(current.values),
            Err(error) => {
                tracing::debug!(%error, "the bridge did not say what a command's form holds");
                FormValues::default()
            }
        }
    }

    fn registration_json(registration: Option<&RegistrationData>) -> Option<Value> {
        registration.map(|data| data.as_json().clone())
    }

    async fn room_call(
        &self,
        method: &str,
        params: &impl serde::Serialize,
    ) -> Result<(), RoomActionError> {
        self.call::<_, Value>(method, params)
            .await
            .map(drop)
            .map_err(convert::room_action_error)
    }
}

use tracing::Instrument;

fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500).saturating_mul(1 << failures.min(7));
    let jitter = Duration::from_millis(u64::from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |now| now.subsec_millis())
            % 250,
    ));
    base.min(Duration::from_secs(60)) + jitter
}

#[async_trait]
impl Bridge for External {
    fn info(&self) -> BridgeInfo {
        match self.handshake() {
            Some(handshake) => handshake.info.clone(),
            None => BridgeInfo {
                gateway_type: "external".into(),
                name: self
                    .config
                    .name
                    .clone()
                    .unwrap_or_else(|| "External bridge".into()),
                capabilities: Capabilities::default(),
                registration: None,
                prompt: Prompt::default(),
            },
        }
    }

    async fn run(&self, shutdown: Shutdown) -> Result<(), BridgeError> {
        let mut failures = 0;
        loop {
            if shutdown.is_stopping() {
                return Ok(());
            }
            let started = Instant::now();
            match self.serve_once(&shutdown).await {
                Ended::Shutdown => return Ok(()),
                Ended::Failed(why) => {
                    tracing::error!(%why, "the bridge process stopped; restarting it");
                    self.phase.send_replace(Phase::Down(why));
                    metrics::counter!("jabbridge_bridge_process_restarts_total", "bridge" => self.domain().to_owned())
                        .increment(1);
                    self.mark_restarting().await;
                }
            }
            if started.elapsed() >= STABLE {
                failures = 0;
            }
            let wait = backoff(failures);
            failures += 1;
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.clone().wait() => return Ok(()),
            }
        }
    }

    fn health(&self) -> Result<(), String> {
        match &*self.phase.borrow() {
            Phase::Up(_) => Ok(()),
            Phase::Down(why) => Err(format!("bridge process down: {why}")),
        }
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        if localpart.is_empty() || localpart.len() > 1024 {
            return Err(AddressError("an address has 1 to 1024 bytes".into()));
        }
        let Some(handshake) = self.handshake() else {
            return Ok(ForeignId::new(localpart));
        };
        if handshake
            .contact
            .as_ref()
            .is_some_and(|pattern| !pattern.is_match(localpart))
        {
            let hint = handshake.answer.addressing.contact_hint.clone();
            return Err(AddressError(hint.unwrap_or_else(|| {
                format!("'{localpart}' is not an address on this network")
            })));
        }
        Ok(ForeignId::new(localpart))
    }

    fn parse_room(&self, localpart: &str) -> Option<RoomId> {
        let handshake = self.handshake()?;
        let pattern = handshake.room.as_ref()?;
        (handshake.info.capabilities.rooms && pattern.is_match(localpart))
            .then(|| RoomId::new(localpart))
    }

    async fn register(
        &self,
        user: &UserJid,
        form: &FormValues,
    ) -> Result<RegistrationData, RegistrationError> {
        match self.register_step(user, None, form).await? {
            RegistrationStep::Done(data) => Ok(data),
            RegistrationStep::Next { .. } => Err(RegistrationError::Rejected(
                "this registration has several steps".into(),
            )),
        }
    }

    async fn register_step(
        &self,
        user: &UserJid,
        step: Option<&str>,
        form: &FormValues,
    ) -> Result<RegistrationStep, RegistrationError> {
        let params = protocol::RegisterParams {
            user: user.to_string(),
            values: form.0.clone(),
            step_id: step.map(str::to_owned),
        };
        let answer: protocol::RegisterResult = self
            .call(to_bridge::REGISTER_SUBMIT, &params)
            .await
            .map_err(convert::registration_error)?;
        let step = answer.step;
        match (step.kind.as_str(), step.step_id) {
            ("done", _) => Ok(RegistrationStep::Done(RegistrationData::from_json(
                step.data.unwrap_or_else(|| json!({})),
            ))),
            ("form" | "waiting", Some(step_id)) => Ok(RegistrationStep::Next {
                step: step_id,
                form: convert::form(&protocol::FormWire {
                    title: step.title.unwrap_or_else(|| "Registration".into()),
                    instructions: step.instructions.unwrap_or_default(),
                    fields: step.fields,
                }),
            }),
            (kind, _) => Err(RegistrationError::Unavailable(format!(
                "the bridge answered a registration step of type '{kind}' (without step_id?), \
                 which this Jabbridge cannot show"
            ))),
        }
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        let txn_id = txn_id(&message.user, &message.id);
        let attempt = {
            let mut attempts = lock(&self.attempts);
            if attempts.len() >= MAX_ATTEMPTS_KEPT {
                // Messages the outbox gave up on; their counts are only informative.
                attempts.clear();
            }
            let attempt = attempts.entry(txn_id.clone()).or_insert(0);
            *attempt += 1;
            *attempt
        };
        let params = protocol::SendParams {
            txn_id: txn_id.clone(),
            attempt,
            user: message.user.to_string(),
            contact: message.contact.as_str().to_owned(),
            room: message.room.as_ref().map(|room| room.as_str().to_owned()),
            text: message.text,
            attachments: convert::attachments_out(&message.attachments),
            ts: convert::timestamp(message.accepted_at),
            registration: Self::registration_json(message.registration.as_ref()),
            replaces: message.replaces.map(|replaces| protocol::ReplacesWire {
                xmpp_id: replaces.xmpp_id.to_string(),
                foreign_id: replaces.foreign_id.map(|id| id.to_string()),
            }),
        };
        let answer = self
            .call::<_, protocol::SendResult>(to_bridge::MESSAGE_SEND, &params)
            .await
            .map_err(convert::send_error);
        if !matches!(answer, Err(SendError::Transient { .. })) {
            lock(&self.attempts).remove(&txn_id);
        }
        let answer = answer?;
        if let Some(id) = &answer.id {
            check_id(id, "id").map_err(|error| SendError::Permanent {
                reason: format!(
                    "the bridge answered message/send with a bad {}",
                    error.message
                ),
            })?;
        }
        let on_accept = self.config.receipts_on_accept
            && self
                .handshake()
                .is_some_and(|handshake| handshake.answer.capabilities.receipts_on_accept);
        match (answer.status.as_str(), answer.id) {
            ("sent", None) if on_accept => Ok(SendOutcome::Sent),
            ("sent", Some(id)) if on_accept => Ok(SendOutcome::SentAs(MessageId::new(id))),
            // A receipt only on the bridge's word that it arrived.
            ("sent" | "report_follows", id) => Ok(SendOutcome::ReportFollows(MessageId::new(
                id.unwrap_or(txn_id),
            ))),
            (status, _) => Err(SendError::Permanent {
                reason: format!("the bridge answered message/send with status '{status}'"),
            }),
        }
    }

    async fn subscription_requested(&self, user: &UserJid, contact: &ForeignId) -> bool {
        let params = protocol::SubscribeParams {
            user: user.to_string(),
            contact: contact.as_str().to_owned(),
        };
        match self
            .call::<_, protocol::SubscribeResult>(to_bridge::CONTACT_SUBSCRIBE, &params)
            .await
        {
            Ok(answer) => answer.approved,
            Err(CallError::Refused(error)) if error.code == codes::METHOD_NOT_FOUND => true,
            Err(error) => {
                tracing::warn!(%error, "contact/subscribe failed: refusing the subscription");
                false
            }
        }
    }

    fn user_status(&self, user: &UserJid) -> UserStatus {
        lock(&self.statuses)
            .get(user)
            .cloned()
            .unwrap_or(UserStatus::Connected(None))
    }

    async fn check_setup(&self) -> Vec<Checked> {
        kit::check_setup(&self.config, self.domain(), self.core.public_url()).await
    }

    async fn start_session(&self, user: &UserJid, registration: &RegistrationData) {
        let registration = Some(registration.as_json().clone());
        lock(&self.sessions).insert(user.clone(), registration.clone());
        // A stop the process missed while down is overtaken by this start.
        lock(&self.missed)
            .retain(|missed| !matches!(missed, Missed::Stop(stop) if stop.user == user.as_str()));
        if !matches!(&*self.phase.borrow(), Phase::Up(_)) {
            return; // replayed when the process is up
        }
        let params = protocol::SessionStartParams {
            user: user.to_string(),
            registration,
        };
        if let Err(error) = self
            .call::<_, Value>(to_bridge::SESSION_START, &params)
            .await
        {
            tracing::warn!(%user, %error, "session/start failed");
        }
    }

    async fn stop_session(&self, user: &UserJid, why: SessionEnd) {
        lock(&self.sessions).remove(user);
        lock(&self.statuses).remove(user);
        lock(&self.joined).retain(|(who, _), _| who != user);
        let reason = match why {
            SessionEnd::Unregistered => "unregistered",
            SessionEnd::Removed => "removed",
            SessionEnd::Moved => "moved",
            _ => "shutdown",
        };
        let params = protocol::SessionStopParams {
            user: user.to_string(),
            reason: reason.into(),
        };
        if !matches!(&*self.phase.borrow(), Phase::Up(_)) {
            lock(&self.missed).push(Missed::Stop(params));
            return;
        }
        if let Err(error) = self
            .call::<_, Value>(to_bridge::SESSION_STOP, &params)
            .await
        {
            tracing::warn!(%user, %error, "session/stop failed");
        }
    }

    async fn user_presence(&self, user: &UserJid, online: bool) {
        let params = protocol::PresenceParams {
            user: user.to_string(),
            online,
        };
        self.notify(to_bridge::PRESENCE_USER, &params);
    }

    async fn send_chat_state(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
        state: jabbridge_sdk::ChatState,
    ) {
        let params = protocol::TypingParams {
            user: user.to_string(),
            contact: contact.as_str().to_owned(),
            room: room.map(|room| room.as_str().to_owned()),
            state: convert::typing_state(state),
        };
        self.notify(to_bridge::CHAT_TYPING, &params);
    }

    async fn room_chat_state(
        &self,
        user: &UserJid,
        room: &RoomId,
        state: jabbridge_sdk::ChatState,
    ) {
        let params = protocol::RoomTypingParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            state: convert::typing_state(state),
        };
        self.notify(to_bridge::ROOM_TYPING, &params);
    }

    fn describe(&self, _user: &UserJid) -> Option<String> {
        self.handshake()?.answer.bridge.describe.clone()
    }

    fn commands(&self) -> Vec<Command> {
        let Some(handshake) = self.handshake() else {
            return Vec::new();
        };
        handshake
            .answer
            .commands
            .iter()
            .map(|declared| {
                let node = declared.node.clone();
                let mut command = Command::on(
                    declared.node.clone(),
                    declared.name.clone(),
                    &self.myself,
                    move |bridge: Arc<External>, user, values| {
                        let node = node.clone();
                        async move { bridge.run_command(node, user, values).await }
                    },
                );
                if declared.admin {
                    command = command.for_admins();
                }
                if let Some(form) = &declared.form {
                    command = command.with_form(convert::form(form));
                }
                if declared.current {
                    let node = declared.node.clone();
                    let myself = self.myself.clone();
                    command = command.with_current(move |user, known| {
                        let (node, myself) = (node.clone(), myself.clone());
                        async move {
                            match myself.upgrade() {
                                Some(bridge) => bridge.current_values(node, user, known).await,
                                None => FormValues::default(),
                            }
                        }
                    });
                }
                command
            })
            .collect()
    }

    async fn join_room(&self, request: JoinRequest) -> Result<Joined, JoinError> {
        // A leave the process missed while down is overtaken by this join.
        lock(&self.missed).retain(|missed| {
            !matches!(missed, Missed::Leave(leave)
                if leave.user == request.user.as_str() && leave.room == request.room.as_str())
        });
        let params = protocol::JoinParams {
            user: request.user.to_string(),
            room: request.room.as_str().to_owned(),
            nick: request.nick.clone(),
            password: request
                .password
                .as_ref()
                .map(|password| password.expose_secret().to_owned()),
            history: protocol::HistoryWire {
                max_stanzas: request.history.max_stanzas,
                since: request.history.since.map(convert::timestamp),
            },
            registration: Self::registration_json(request.registration.as_ref()),
        };
        let joined: protocol::JoinResult = self
            .call(to_bridge::ROOM_JOIN, &params)
            .await
            .map_err(convert::join_error)?;
        self.settle(&request.room).await;
        let mut replayed = params;
        replayed.nick = joined.nick.clone();
        lock(&self.joined).insert((request.user, request.room), replayed);
        Ok(Joined {
            nick: joined.nick,
            occupants: joined
                .occupants
                .into_iter()
                .map(convert::occupant)
                .collect(),
            subject: joined.subject.map(convert::subject),
        })
    }

    async fn leave_room(&self, user: &UserJid, room: &RoomId) {
        lock(&self.joined).remove(&(user.clone(), room.clone()));
        let params = protocol::LeaveParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
        };
        if !matches!(&*self.phase.borrow(), Phase::Up(_)) {
            lock(&self.missed).push(Missed::Leave(params));
            return;
        }
        if let Err(error) = self.call::<_, Value>(to_bridge::ROOM_LEAVE, &params).await {
            tracing::warn!(%user, %room, %error, "room/leave failed");
        }
    }

    async fn room_presence(&self, user: &UserJid, room: &RoomId, away: Option<String>) {
        let params = protocol::RoomPresenceParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            away,
        };
        self.notify(to_bridge::ROOM_PRESENCE, &params);
    }

    async fn send_room_message(&self, post: RoomPost) -> Result<Posted, SendError> {
        let params = protocol::RoomSendParams {
            txn_id: post.id.to_string(),
            user: post.user.to_string(),
            room: post.room.as_str().to_owned(),
            text: post.text,
            registration: Self::registration_json(post.registration.as_ref()),
            replaces: post.replaces.map(|id| id.to_string()),
            reply_to: post.reply_to.map(|to| protocol::ReplyToWire {
                event_id: to.id.to_string(),
                nick: to.nick,
            }),
        };
        let answer: protocol::RoomSendResult = self
            .call(to_bridge::ROOM_SEND, &params)
            .await
            .map_err(convert::send_error)?;
        if let Some(id) = &answer.id {
            check_id(id, "id").map_err(|error| SendError::Permanent {
                reason: format!("the bridge answered room/send with a bad {}", error.message),
            })?;
        }
        match answer.status.as_str() {
            "reflect" => Ok(Posted::Reflect {
                foreign_id: answer.id.map(MessageId::new),
            }),
            "echo_follows" => Ok(Posted::EchoFollows),
            other => Err(SendError::Permanent {
                reason: format!("the bridge answered room/send with status '{other}'"),
            }),
        }
    }

    async fn room_history(
        &self,
        request: HistoryRequest,
    ) -> Result<Vec<RoomMessage>, RoomActionError> {
        let params = protocol::RoomHistoryParams {
            user: request.user.to_string(),
            room: request.room.as_str().to_owned(),
            before: request.before.map(|(id, at)| protocol::BeforeWire {
                event_id: id.to_string(),
                ts: convert::timestamp(at),
            }),
            limit: request.limit,
        };
        let answer: protocol::RoomHistoryResult =
            match self.call(to_bridge::ROOM_HISTORY, &params).await {
                Ok(answer) => answer,
                // A bridge without history has none, as the SDK's default says.
                Err(CallError::Refused(error)) if error.code == codes::METHOD_NOT_FOUND => {
                    return Ok(Vec::new());
                }
                Err(error) => return Err(convert::room_action_error(error)),
            };
        Ok(answer
            .messages
            .into_iter()
            .filter_map(|wire| match convert::room_event(wire) {
                RoomEvent::Message(message) => Some(message),
                _ => None,
            })
            .collect())
    }

    async fn list_rooms(&self, user: &UserJid) -> Result<Vec<RoomListing>, RoomActionError> {
        let params = protocol::UserParams {
            user: user.to_string(),
        };
        let answer: protocol::RoomsResult = match self.call(to_bridge::ROOMS_LIST, &params).await {
            Ok(answer) => answer,
            // A bridge without a list lists nothing, as the SDK's default does.
            Err(CallError::Refused(error)) if error.code == codes::METHOD_NOT_FOUND => {
                return Ok(Vec::new());
            }
            Err(error) => return Err(convert::room_action_error(error)),
        };
        Ok(answer
            .rooms
            .into_iter()
            .map(|room| RoomListing {
                room: RoomId::new(room.room),
                name: room.name,
                occupants: room.occupants,
            })
            .collect())
    }

    async fn moderate(
        &self,
        user: &UserJid,
        room: &RoomId,
        action: Moderation,
    ) -> Result<(), RoomActionError> {
        let (action, nick, reason, role) = match action {
            Moderation::Kick { nick, reason } => ("kick", nick, reason, None),
            Moderation::Ban { nick, reason } => ("ban", nick, reason, None),
            Moderation::SetRole { nick, role } => (
                "role",
                nick,
                None,
                Some(convert::role_name(role).to_owned()),
            ),
        };
        let params = protocol::ModerateParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            action: action.into(),
            nick,
            reason,
            role,
        };
        self.room_call(to_bridge::ROOM_MODERATE, &params).await
    }

    async fn invite(
        &self,
        user: &UserJid,
        room: &RoomId,
        contact: &ForeignId,
    ) -> Result<(), RoomActionError> {
        let params = protocol::InviteParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            contact: contact.to_string(),
        };
        self.room_call(to_bridge::ROOM_INVITE, &params).await
    }

    async fn contact_version(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
    ) -> Result<String, RoomActionError> {
        let params = convert::asked(user, contact, room);
        self.call::<_, protocol::VersionResult>(to_bridge::CONTACT_VERSION, &params)
            .await
            .map(|answer| answer.software)
            .map_err(convert::room_action_error)
    }

    async fn ping_contact(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
    ) -> Result<(), RoomActionError> {
        let params = convert::asked(user, contact, room);
        self.room_call(to_bridge::CONTACT_PING, &params).await
    }

    async fn change_nick(
        &self,
        user: &UserJid,
        room: &RoomId,
        nick: &str,
    ) -> Result<(), RoomActionError> {
        let params = protocol::NickParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            nick: nick.into(),
        };
        self.room_call(to_bridge::ROOM_NICK, &params).await?;
        if let Some(join) = lock(&self.joined).get_mut(&(user.clone(), room.clone())) {
            join.nick = nick.into();
        }
        Ok(())
    }

    async fn set_subject(
        &self,
        user: &UserJid,
        room: &RoomId,
        subject: &str,
    ) -> Result<(), RoomActionError> {
        let params = protocol::SubjectParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            subject: subject.into(),
        };
        self.room_call(to_bridge::ROOM_SUBJECT, &params).await
    }

    async fn retract_room_message(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
    ) -> Result<(), RoomActionError> {
        let params = protocol::RetractParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            target: message.to_string(),
        };
        self.room_call(to_bridge::ROOM_RETRACT, &params).await
    }

    async fn react_in_room(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
        emojis: &[String],
    ) -> Result<(), RoomActionError> {
        let params = protocol::ReactParams {
            user: user.to_string(),
            room: room.as_str().to_owned(),
            target: message.to_string(),
            emojis: emojis.to_vec(),
        };
        self.room_call(to_bridge::ROOM_REACT, &params).await
    }

    async fn handle_http(&self, request: HttpRequest) -> HttpResponse {
        let declared = self
            .handshake()
            .is_some_and(|handshake| handshake.answer.capabilities.http);
        if !declared {
            return respond(StatusCode::NOT_FOUND, "not found\n");
        }
        let verified = match self.authenticate(&request) {
            Ok(verified) => verified,
            Err(why) => return respond(StatusCode::UNAUTHORIZED, format!("{why}\n")),
        };
        let params = http_params(&request, verified);
        match self
            .call::<_, protocol::HttpResponseWire>(to_bridge::HTTP_REQUEST, &params)
            .await
        {
            Ok(answer) => http_response(answer),
            Err(CallError::Down(_)) => {
                let mut answer = respond(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the bridge is restarting\n",
                );
                answer.headers_mut().insert(
                    jabbridge_sdk::http::header::RETRY_AFTER,
                    jabbridge_sdk::http::HeaderValue::from_static("5"),
                );
                answer
            }
            Err(CallError::TimedOut(_)) => respond(
                StatusCode::GATEWAY_TIMEOUT,
                "the bridge did not answer in time\n",
            ),
            Err(CallError::Refused(error)) => {
                let status = u16::try_from(error.code)
                    .ok()
                    .and_then(|code| StatusCode::from_u16(code).ok())
                    .filter(|status| status.is_client_error() || status.is_server_error())
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                respond(status, format!("{}\n", error.text()))
            }
            Err(error @ CallError::Malformed { .. }) => {
                tracing::warn!(%error, "http/request");
                respond(
                    StatusCode::BAD_GATEWAY,
                    "the bridge answered with a malformed response\n",
                )
            }
        }
    }
}

/// An HTTP request on the wire: lowercase header names, repeated headers joined, the body
/// as text when it is UTF-8.
fn http_params(
    request: &HttpRequest,
    verified: Option<protocol::Verified>,
) -> protocol::HttpRequestParams {
    use base64::Engine as _;
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in request.headers() {
        if name == jabbridge_sdk::http::header::AUTHORIZATION && verified.is_some() {
            continue; // the core checked it; the token stays here
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert(value);
    }
    let (body_text, body_b64) = match std::str::from_utf8(request.body()) {
        Ok("") => (None, None),
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(request.body())),
        ),
    };
    protocol::HttpRequestParams {
        method: request.method().as_str().to_owned(),
        path: request.uri().path().to_owned(),
        query: request.uri().query().map(str::to_owned),
        headers,
        body_text,
        body_b64,
        verified,
    }
}

fn http_response(answer: protocol::HttpResponseWire) -> HttpResponse {
    use base64::Engine as _;
    let body = match (answer.body_text, answer.body_b64) {
        (Some(text), _) => text.into_bytes(),
        (None, Some(encoded)) => match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(body) => body,
            Err(_) => {
                return respond(
                    StatusCode::BAD_GATEWAY,
                    "the bridge answered with bad base64\n",
                );
            }
        },
        (None, None) => Vec::new(),
    };
    let Ok(status) = StatusCode::from_u16(answer.status) else {
        return respond(
            StatusCode::BAD_GATEWAY,
            "the bridge answered with a bad status\n",
        );
    };
    let mut response = respond(status, body);
    for (name, value) in answer.headers {
        let (Ok(name), Ok(value)) = (
            jabbridge_sdk::http::HeaderName::from_bytes(name.as_bytes()),
            jabbridge_sdk::http::HeaderValue::from_str(&value),
        ) else {
            continue;
        };
        response.headers_mut().append(name, value);
    }
    response
}

#[cfg(test)]
mod tests;
