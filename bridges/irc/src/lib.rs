//! The IRC bridge (`kind = "irc"`): every XMPP user gets their own IRC connection per
//! server, channels are rooms, people are contacts, with Biboumi's addresses
//! (`#chan%irc.example.net@irc.gw`, `nick%irc.example.net@irc.gw`).
//!
//! Layout:
//! - [`config`]: the bridge's keys: the servers users may reach, flood control.
//! - [`address`]: reading and writing addresses.
//! - [`wire`], [`reader`]: the IRC line format, and reading a server's lines with bounded
//!   memory.
//! - [`connection`]: one registered connection (TCP, TLS, CAP, SASL).
//! - [`client`]: one user's connection as a task: reconnection, flood control, and what
//!   the server says turned into room events and messages.
//! - [`state`]: what the connections of one server share (channels, members, who reports).
//! - [`settings`]: each user's own settings per server (`irc-settings`), secrets sealed.
//! - [`text`]: formatting codes, CTCP and `/me`.
//! - [`typing`], [`reactions`]: typing and reactions as client tags on `TAGMSG`.
//! - [`mailbox`]: a connection's commands, in order, bounded.
//! - [`identd`]: the ident service (RFC 1413) for connections being registered.
//! - [`meters`]: what `/metrics` counts per server.

pub mod address;
pub mod client;
pub mod config;
pub mod connection;
pub mod identd;
pub mod mailbox;
pub mod meters;
pub mod reactions;
pub mod reader;
pub mod settings;
pub mod state;
pub mod text;
pub mod typing;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, ChatState, Core, ForeignId,
    HistoryRequest, JoinError, JoinRequest, Joined, MessageId, Moderation, OutgoingMessage, Posted,
    Prompt, RoomActionError, RoomId, RoomListing, RoomMessage, RoomPost, SendError, SendOutcome,
    SessionEnd, Settings, UserJid, async_trait,
};
use tokio::sync::oneshot;

use crate::address::{Address, Addressing};
use crate::client::{Client, Command, Reach, Setup};
use crate::config::{IrcConfig, NetworkConfig};
use crate::connection::{Registration, Sasl, Target};
use crate::settings::{SaslMode, UserSettings, Vault};
use crate::state::{ClientHandle, Network};
use jabbridge_sdk::secrecy::SecretString;
use jabbridge_sdk::{CommandError, CommandResult, FormValues};

/// How long a connection with no channel stays open after the last private message.
const IDLE_CLOSE: Duration = Duration::from_secs(600);

/// How long `jabbridge doctor` waits for a server to be reached (its checks of a bridge
/// get 10 s in all; the servers are tried at once).
const PROBE_WAIT: Duration = Duration::from_secs(8);

/// How long a CTCP question (`VERSION`, `PING`) waits for its answer (the core's call
/// times out later).
const CTCP_WAIT: Duration = Duration::from_secs(8);

/// Builds the bridge from its `[[bridge]]` section.
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config: IrcConfig = settings.parse()?;
    config.validate()?;
    let vault = config
        .secret_key
        .as_ref()
        .map(Vault::new)
        .transpose()
        .map_err(|message| jabbridge_sdk::SettingsError {
            key: "secret_key".into(),
            message,
        })?;
    Ok(Arc::new_cyclic(|me| {
        IrcBridge::new(config, core, vault, me.clone())
    }))
}

/// One configured server and the state its connections share.
struct Server {
    config: Arc<NetworkConfig>,
    shared: Arc<Network>,
    /// Where and how its connections are made, shared by them.
    reach: Arc<Reach>,
}

/// The bridge.
pub struct IrcBridge {
    core: Core,
    config: IrcConfig,
    addressing: Addressing,
    servers: BTreeMap<String, Server>,
    /// Seals users' passwords; none without `secret_key`.
    vault: Option<Vault>,
    /// The connections being registered, for the ident service; none without `identd`.
    idents: Option<Arc<identd::Idents>>,
    /// The bridge itself, for its commands.
    me: Weak<IrcBridge>,
}

impl IrcBridge {
    fn new(mut config: IrcConfig, core: Core, vault: Option<Vault>, me: Weak<IrcBridge>) -> Self {
        let networks = std::mem::take(&mut config.network);
        let addressing = Addressing::new(
            networks
                .iter()
                .map(|network| network.name.clone())
                .collect(),
            config.fixed_server.clone(),
        );
        let idents = config.identd.map(|_| Arc::new(identd::Idents::default()));
        let servers = networks
            .into_iter()
            .map(|network| {
                let reach = Arc::new(Reach {
                    network: network.name.clone(),
                    target: Target {
                        address: network.address(),
                        host: network.host().to_owned(),
                        tls: network.tls,
                        client: None,
                        idents: idents.clone(),
                    },
                    flood: config.flood,
                    connect_timeout: config.connect_timeout,
                    reconnect_max: config.reconnect_max,
                    idle_close: IDLE_CLOSE,
                    addressing: addressing.clone(),
                    meters: meters::Meters::new(core.domain(), &network.name),
                });
                let server = Server {
                    config: Arc::new(network),
                    shared: Arc::new(Network::default()),
                    reach,
                };
                (server.config.name.clone(), server)
            })
            .collect();
        Self {
            core,
            config,
            addressing,
            servers,
            vault,
            idents,
            me,
        }
    }

    /// `user`'s settings for `network`; the defaults when none are stored or they do not
    /// read.
    async fn settings_of(&self, user: &UserJid, network: &str) -> UserSettings {
        let key = UserSettings::key(network, user.as_str());
        match self.core.load_as::<UserSettings>(&key).await {
            Ok(settings) => settings.unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "cannot read a user's IRC settings; using the defaults");
                UserSettings::default()
            }
        }
    }

    /// A secret of the user's, opened; `None` (logged) when it does not open.
    fn open(&self, sealed: Option<&settings::Sealed>) -> Option<SecretString> {
        let (vault, sealed) = (self.vault.as_ref()?, sealed?);
        vault
            .open(sealed)
            .map_err(|error| tracing::warn!(%error, "a stored IRC password does not open"))
            .ok()
    }

    /// The server a command's form names.
    fn server_in(&self, values: &FormValues) -> Result<String, CommandError> {
        values
            .get("server")
            .and_then(|name| {
                self.servers
                    .keys()
                    .find(|known| known.eq_ignore_ascii_case(name))
            })
            .cloned()
            .ok_or_else(|| CommandError::Rejected("choose one of the gateway's servers".into()))
    }

    /// What the `irc-settings` form shows filled in: the user's settings for the server
    /// `known` names (on its address), or for the only server; nothing when it could be any.
    async fn current_settings(&self, user: &UserJid, known: &FormValues) -> FormValues {
        let network = match self.server_in(known) {
            Ok(network) => network,
            Err(_) if self.servers.len() == 1 => match self.servers.keys().next() {
                Some(only) => only.clone(),
                None => return FormValues::default(),
            },
            Err(_) => return FormValues::default(),
        };
        let mut shown = self.settings_of(user, &network).await.shown();
        shown.0.insert("server".into(), network);
        shown
    }

    /// The `irc-connection-info` command (Biboumi's "get connection information").
    async fn connection_info(&self, user: &UserJid, values: &FormValues) -> CommandResult {
        let network = self.server_in(values)?;
        let Some(handle) = self.existing(user, &network) else {
            return Ok(format!(
                "You have no connection to {network}: joining one of its channels, or writing \
                 to someone there, opens one."
            ));
        };
        Self::ask(&handle, |reply| Command::Info { reply })
            .await
            .ok_or_else(|| CommandError::Failed(format!("the connection to {network} closed")))
    }

    /// The `irc-reconnect` command: quits and connects again with the user's settings now,
    /// joining their channels again.
    async fn reconnect(&self, user: &UserJid, values: &FormValues) -> CommandResult {
        let network = self.server_in(values)?;
        let Some(handle) = self.existing(user, &network) else {
            return Ok(format!(
                "You have no connection to {network}: the next one opens with your settings."
            ));
        };
        // The connection has the user's latest settings: `configure` hands them over.
        Self::ask(&handle, |reply| Command::Reconnect { reply })
            .await
            .ok_or_else(|| CommandError::Failed(format!("the connection to {network} closed")))?;
        Ok(format!(
            "Reconnecting to {network} with your current settings; your channels are joined \
             again."
        ))
    }

    /// The `irc-disconnect` command: quits the server and leaves its rooms (as Biboumi's
    /// "disconnect" does); the next join or private message connects again.
    async fn disconnect(&self, user: &UserJid, values: &FormValues) -> CommandResult {
        let network = self.server_in(values)?;
        let Some(handle) = self.existing(user, &network) else {
            return Ok(format!("You have no connection to {network}."));
        };
        Self::ask(&handle, |reply| Command::Disconnect { reply })
            .await
            .ok_or_else(|| CommandError::Failed(format!("the connection to {network} closed")))?;
        Ok(format!(
            "Disconnected from {network}; you left its rooms. Joining one connects again."
        ))
    }

    /// The `irc-settings` command: stores what the form says, and tells what is set now.
    async fn configure(&self, user: &UserJid, values: &FormValues) -> CommandResult {
        let network = self.server_in(values)?;
        let key = UserSettings::key(&network, user.as_str());
        let mut settings = self.settings_of(user, &network).await;
        settings
            .apply(values, self.vault.as_ref(), self.config.raw_commands)
            .map_err(CommandError::Rejected)?;
        self.core
            .save_as(&key, Some(&settings))
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        // The connection takes them for its next attempt: at once when it is down (a refused
        // login, say), keeping the user's rooms.
        let mut when = "the next time you connect to it (irc-reconnect does that now)";
        if let Some(handle) = self.existing(user, &network)
            && let Some(setup) = self.setup_for(user, &network, None).await
        {
            let down = !handle.up.load(std::sync::atomic::Ordering::Relaxed);
            if handle
                .commands
                .send(Box::new(Command::Reconfigure(Box::new(setup))))
                .await
                .is_ok()
                && down
            {
                when = "now: the connection that was down tries again with them";
            }
        }
        Ok(format!(
            "Your settings for {network}: {}. They apply {when}.",
            settings.describe()
        ))
    }

    /// `user`'s connection to `network`, started if there is none: with the nick of their
    /// settings, else `nick` (the one they join with), else the network's template.
    async fn client(
        &self,
        user: &UserJid,
        network: &str,
        nick: Option<&str>,
    ) -> Option<ClientHandle> {
        let server = self.servers.get(network)?;
        if let Some(handle) = self.existing(user, network)
            && !handle.commands.is_closed()
        {
            return Some(handle);
        }
        let setup = self.setup_for(user, network, nick).await?;
        let (client, handle) = Client::new(
            user.clone(),
            setup,
            server.shared.clone(),
            self.core.clone(),
        );
        {
            let mut shared = server.shared.lock();
            // Another call may have started one while the settings were read.
            if let Some(existing) = shared.clients.get(user)
                && !existing.commands.is_closed()
            {
                return Some(existing.clone());
            }
            shared.clients.insert(user.clone(), handle.clone());
        }
        tokio::spawn(Box::new(client).run());
        Some(handle)
    }

    /// How `user` connects to `network`: the network's config and the user's settings.
    async fn setup_for(&self, user: &UserJid, network: &str, nick: Option<&str>) -> Option<Setup> {
        let server = self.servers.get(network)?;
        let own = self.settings_of(user, network).await;
        let config = &server.config;
        let jid = user.as_str();
        let nick = own
            .nick
            .clone()
            .or_else(|| {
                nick.filter(|nick| address::check_nick(nick).is_ok())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| config::fill(&config.nick, jid));
        let username: String = own
            .username
            .clone()
            .unwrap_or_else(|| config::fill(&config.username, jid))
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect();
        let sasl = match (own.sasl, &own.account) {
            (SaslMode::Plain, Some(account)) => {
                self.open(own.password.as_ref())
                    .map(|password| Sasl::Plain {
                        account: account.clone(),
                        password,
                    })
            }
            (SaslMode::External, _) => Some(Sasl::External),
            _ => None,
        };
        // SASL EXTERNAL presents the user's certificate; one that cannot be opened (the
        // secret_key changed) is logged, and the server then refuses the login.
        let client = match (own.sasl, &own.certificate, &self.vault) {
            (SaslMode::External, Some(certificate), Some(vault)) => match certificate.open(vault) {
                Ok(client) => Some(Arc::new(client)),
                Err(error) => {
                    tracing::warn!(%error, "cannot open a user's client certificate");
                    None
                }
            },
            _ => None,
        };
        let setup = Setup {
            reach: server.reach.clone(),
            certificate: client,
            registration: Registration {
                nick,
                username: if username.is_empty() {
                    "jabbridge".into()
                } else {
                    username
                },
                realname: own
                    .realname
                    .clone()
                    .unwrap_or_else(|| config::fill(&config.realname, jid)),
                // The user's own (a bouncer login) in place of the network's.
                password: self
                    .open(own.server_password.as_ref())
                    .or_else(|| config.password.clone()),
                sasl,
                webirc: config
                    .webirc
                    .as_ref()
                    .and_then(|webirc| Some((webirc.password.clone(), webirc.address_of(jid)?))),
            },
            identify: self
                .open(own.nickserv.as_ref())
                .map(|password| (config.nickserv.clone(), password)),
            encoding: (own.encoding.as_deref())
                .and_then(|label| encoding_rs::Encoding::for_label(label.as_bytes())),
            channel_encodings: (own.channel_encodings.iter())
                .filter_map(|(channel, label)| {
                    let encoding = encoding_rs::Encoding::for_label(label.as_bytes())?;
                    Some((channel.to_ascii_lowercase(), encoding))
                })
                .collect(),
            after_connect: if self.config.raw_commands {
                own.after_connect.clone()
            } else {
                Vec::new()
            },
            autojoin: own.autojoin.clone(),
            nick_chosen: own.nick.is_some(),
        };
        Some(setup)
    }

    /// The connection `user` already has to `network`, if any.
    fn existing(&self, user: &UserJid, network: &str) -> Option<ClientHandle> {
        let server = self.servers.get(network)?;
        server.shared.lock().clients.get(user).cloned()
    }

    /// `user`'s connection to `network`, for an action that needs one (it opens none).
    fn connected(&self, user: &UserJid, network: &str) -> Result<ClientHandle, RoomActionError> {
        self.existing(user, network).ok_or_else(|| {
            RoomActionError::Unavailable(format!("you are not connected to {network}"))
        })
    }

    /// `room`'s network and channel.
    fn channel_of(&self, room: &RoomId) -> Option<(String, String)> {
        match self.addressing.parse(room.as_str()) {
            Ok(Address::Channel { network, channel }) => Some((network, channel)),
            _ => None,
        }
    }

    /// The mask that bans `nick` from `channel`: their host where it is known and nobody
    /// else in the channel shares it (`*!*@host`, which a new nick does not evade; a shared
    /// host is a gateway's or a bouncer's, and banning it would ban the others), else the
    /// nick.
    fn ban_mask(&self, network: &str, channel: &str, nick: &str) -> String {
        let host = self.servers.get(network).and_then(|server| {
            let shared = server.shared.lock();
            let channel = shared.channels.get(&shared.fold(channel))?;
            let host = channel.members.get(&shared.fold(nick))?.host.as_deref()?;
            let sharing = channel
                .members
                .values()
                .filter(|member| member.host.as_deref() == Some(host))
                .count();
            (sharing == 1).then(|| host.to_owned())
        });
        match host {
            Some(host) => format!("*!*@{host}"),
            None => format!("{nick}!*@*"),
        }
    }

    /// [`IrcBridge::channel_of`] for a room action, which a non-channel cannot take.
    fn room_channel(&self, room: &RoomId) -> Result<(String, String), RoomActionError> {
        self.channel_of(room)
            .ok_or_else(|| RoomActionError::NotSupported("not a channel".into()))
    }

    /// Sends a command to a user's connection and waits for the answer.
    async fn ask<T>(
        handle: &ClientHandle,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Option<T> {
        let (reply, answer) = oneshot::channel();
        handle.commands.send(Box::new(make(reply))).await.ok()?;
        answer.await.ok()
    }

    /// Tells `user`'s connection to `network`, if they have one, that they type to `target`:
    /// never waiting, a full mailbox drops it.
    fn type_to(&self, user: &UserJid, network: &str, target: String, state: ChatState) {
        if let Some(handle) = self.existing(user, network) {
            let _ = (handle.commands).try_send(Box::new(Command::Typing { target, state }));
        }
    }

    /// Asks `contact` (with `room`: the occupant of that nick) a CTCP `question` for `user`,
    /// on the user's connection: their answer's text, within [`CTCP_WAIT`].
    async fn ask_ctcp(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
        question: &'static str,
    ) -> Result<String, RoomActionError> {
        let (network, nick) = match room {
            Some(room) => {
                let (network, _) = self.channel_of(room).ok_or_else(|| {
                    RoomActionError::NotSupported(format!("'{room}' is not a channel"))
                })?;
                (network, contact.as_str().to_owned())
            }
            None => match self.addressing.parse(contact.as_str()) {
                Ok(Address::Nick { network, nick }) => (network, nick),
                _ => {
                    return Err(RoomActionError::NotSupported(format!(
                        "only someone on IRC can be asked ('{contact}' is not)"
                    )));
                }
            },
        };
        address::check_nick(&nick).map_err(RoomActionError::NoSuchOccupant)?;
        let handle = self.connected(user, &network)?;
        let asked = Self::ask(&handle, |reply| Command::Ask {
            nick: nick.clone(),
            question,
            reply,
        });
        match tokio::time::timeout(CTCP_WAIT, asked).await {
            Ok(Some(text)) => Ok(text),
            Ok(None) => Err(RoomActionError::Unavailable(format!(
                "the connection to {network} closed"
            ))),
            Err(_) => Err(RoomActionError::Unavailable(format!(
                "{nick} did not say within {} s",
                CTCP_WAIT.as_secs()
            ))),
        }
    }

    /// Sends a raw command for `user` on `network`, when they are connected there.
    async fn send_command(
        &self,
        user: &UserJid,
        network: &str,
        command: &str,
        params: Vec<String>,
    ) -> Result<(), RoomActionError> {
        let handle = self.connected(user, network)?;
        let sent = Self::ask(&handle, |reply| Command::Send {
            command: command.to_owned(),
            params,
            reply,
        })
        .await;
        Self::acted(sent, network, RoomActionError::Forbidden)
    }

    /// A connection's answer to an action on `network`: its refusal as `refused` says, or
    /// the connection closed before answering.
    fn acted(
        answer: Option<Result<(), String>>,
        network: &str,
        refused: fn(String) -> RoomActionError,
    ) -> Result<(), RoomActionError> {
        match answer {
            Some(Ok(())) => Ok(()),
            Some(Err(reason)) => Err(refused(reason)),
            None => Err(RoomActionError::Unavailable(format!(
                "the connection to {network} closed"
            ))),
        }
    }
}

#[async_trait]
impl Bridge for IrcBridge {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "irc".into(),
            name: "IRC gateway".into(),
            capabilities: self.capabilities(),
            registration: None,
            prompt: Prompt {
                description: "Enter a nick and its server, e.g. alice%irc.example.net".into(),
                prompt: "Nick".into(),
            },
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut capabilities = Capabilities::default();
        capabilities.rooms = true;
        capabilities.chat_states = true;
        capabilities.reactions = true;
        capabilities.replies = true;
        capabilities.retractions = true;
        capabilities
    }

    fn registers(&self) -> bool {
        false
    }

    async fn run(&self, shutdown: jabbridge_sdk::Shutdown) -> Result<(), BridgeError> {
        if let (Some(address), Some(idents)) = (self.config.identd, &self.idents) {
            match tokio::net::TcpListener::bind(address).await {
                Ok(listener) => {
                    tracing::info!(%address, "identd: answering the servers' ident questions");
                    let answers = meters::ident_answers(self.core.domain());
                    let serving =
                        identd::serve(listener, idents.clone(), answers, shutdown.clone());
                    tokio::spawn(serving);
                }
                // The users still connect, shown with a `~` where the server wanted ident.
                Err(error) => tracing::error!(
                    %address,
                    %error,
                    "identd: cannot listen (port 113 needs CAP_NET_BIND_SERVICE); servers \
                     will see no ident"
                ),
            }
        }
        shutdown.wait().await;
        for server in self.servers.values() {
            let clients: Vec<ClientHandle> =
                server.shared.lock().clients.values().cloned().collect();
            for client in clients {
                client.stop.notify_one();
            }
        }
        Ok(())
    }

    /// Each server reachable as configured (TCP, then TLS by its policy; nothing sent), and
    /// the ident service's address free to listen on.
    async fn check_setup(&self) -> Vec<jabbridge_sdk::Checked> {
        // All servers at once: the doctor gives a bridge's checks 10 s in all.
        let probes: Vec<_> = (self.servers.iter())
            .map(|(name, server)| {
                let (name, target) = (name.clone(), server.reach.target.clone());
                tokio::spawn(async move {
                    let probe = connection::probe(&target);
                    let outcome = match tokio::time::timeout(PROBE_WAIT, probe).await {
                        Ok(Ok(seen)) => Ok(seen),
                        Ok(Err(error)) => Err(format!(
                            "{error} (check [[bridge.network]] '{name}': host, port, tls)"
                        )),
                        Err(_) => Err(format!(
                            "no answer within {} s (check [[bridge.network]] '{name}': host, \
                             port)",
                            PROBE_WAIT.as_secs()
                        )),
                    };
                    jabbridge_sdk::Checked {
                        what: format!("IRC server {name}"),
                        outcome,
                    }
                })
            })
            .collect();
        let mut checks = Vec::new();
        for probe in probes {
            if let Ok(checked) = probe.await {
                checks.push(checked);
            }
        }
        if let Some(address) = self.config.identd {
            let outcome = match tokio::net::TcpListener::bind(address).await {
                Ok(_) => Ok(format!("{address} is free to listen on")),
                Err(error) => Err(format!(
                    "cannot listen on {address}: {error} (identd: port 113 needs \
                     CAP_NET_BIND_SERVICE; in use if a Jabbridge already runs)"
                )),
            };
            checks.push(jabbridge_sdk::Checked {
                what: "ident service".into(),
                outcome,
            });
        }
        checks
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        match self.addressing.parse(localpart).map_err(AddressError)? {
            Address::Channel { .. } => Err(AddressError(format!(
                "'{localpart}' is a channel: join it as a room"
            ))),
            Address::Nick { network, nick } => {
                Ok(ForeignId::new(self.addressing.format(&network, &nick)))
            }
            Address::Server { network } => {
                Ok(ForeignId::new(self.addressing.format_server(&network)))
            }
        }
    }

    fn parse_room(&self, localpart: &str) -> Option<RoomId> {
        let Ok(Address::Channel { network, channel }) = self.addressing.parse(localpart) else {
            return None;
        };
        let server = self.servers.get(&network)?;
        let folded = server.shared.lock().fold(&channel);
        Some(RoomId::new(self.addressing.format(&network, &folded)))
    }

    fn describe(&self, _user: &jabbridge_sdk::UserJid) -> Option<String> {
        let names: Vec<&str> = self.servers.keys().map(String::as_str).collect();
        Some(if self.config.fixed_server.is_some() {
            "Join a channel as the room #channel@this-gateway; write to nick@this-gateway."
                .to_owned()
        } else {
            format!(
                "Join a channel as the room #channel%server@this-gateway; write to \
                 nick%server@this-gateway. Servers: {}.",
                names.join(", ")
            )
        })
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        // A private message to a room's occupant (XEP-0045 §7.5) is a query to their nick.
        let address = match &message.room {
            Some(room) => {
                let (network, _) = self.channel_of(room).ok_or_else(|| SendError::Permanent {
                    reason: format!("'{room}' is not a channel"),
                })?;
                let nick = message.contact.as_str().to_owned();
                address::check_nick(&nick).map_err(|reason| SendError::Permanent { reason })?;
                Address::Nick { network, nick }
            }
            None => self
                .addressing
                .parse(message.contact.as_str())
                .map_err(|reason| SendError::Permanent { reason })?,
        };
        let (network, target) = match address {
            Address::Nick { network, nick } => (network, nick),
            Address::Channel { .. } => {
                return Err(SendError::Permanent {
                    reason: "join the channel as a room to talk in it".into(),
                });
            }
            Address::Server { network } => {
                return self.raw(&message.user, &network, &message.text).await;
            }
        };
        let handle = self
            .client(&message.user, &network, None)
            .await
            .ok_or_else(|| SendError::Permanent {
                reason: format!("'{network}' is not an IRC server this gateway reaches"),
            })?;
        let said = Self::ask(&handle, |reply| Command::Say {
            target,
            text: message.text,
            reply,
        })
        .await;
        match said {
            Some(Ok(())) => Ok(SendOutcome::Sent),
            Some(Err(error)) => Err(error),
            None => Err(SendError::Transient {
                reason: format!("the connection to {network} closed"),
                retry_after: Some(Duration::from_secs(2)),
            }),
        }
    }

    fn commands(&self) -> Vec<jabbridge_sdk::Command> {
        use jabbridge_sdk::Command as Run;
        let networks: Vec<String> = self.servers.keys().cloned().collect();
        // Each is also on a server's address, which fills its form's `server`.
        let on_servers = |command: Run, form| command.with_form(form).on_contacts("server");
        vec![
            on_servers(
                Run::on(
                    "irc-settings",
                    "Your IRC settings for one server (nick, SASL, NickServ, autojoin)",
                    &self.me,
                    |bridge, user, values| async move { bridge.configure(&user, &values).await },
                )
                .with_current({
                    let me = self.me.clone();
                    move |user, known| {
                        let bridge = me.upgrade();
                        async move {
                            match bridge {
                                Some(bridge) => bridge.current_settings(&user, &known).await,
                                None => FormValues::default(),
                            }
                        }
                    }
                }),
                settings::form(networks.clone(), self.config.raw_commands),
            ),
            on_servers(
                Run::on(
                    "irc-connection-info",
                    "How your connection to one IRC server stands",
                    &self.me,
                    |bridge, user, values| async move { bridge.connection_info(&user, &values).await },
                ),
                settings::server_form("IRC connection", networks.clone()),
            ),
            on_servers(
                Run::on(
                    "irc-reconnect",
                    "Reconnect to one IRC server now, with your current settings",
                    &self.me,
                    |bridge, user, values| async move { bridge.reconnect(&user, &values).await },
                ),
                settings::server_form("Reconnect", networks.clone()),
            ),
            on_servers(
                Run::on(
                    "irc-disconnect",
                    "Disconnect from one IRC server now, leaving its rooms",
                    &self.me,
                    |bridge, user, values| async move { bridge.disconnect(&user, &values).await },
                ),
                settings::server_form("Disconnect", networks),
            ),
        ]
    }

    /// The settings command is also on each server's address, as in Biboumi.
    fn offers_commands(&self, contact: &ForeignId) -> bool {
        matches!(
            self.addressing.parse(contact.as_str()),
            Ok(Address::Server { .. })
        )
    }

    async fn stop_session(&self, user: &UserJid, _why: SessionEnd) {
        for server in self.servers.values() {
            let handle = server.shared.lock().clients.get(user).cloned();
            if let Some(handle) = handle {
                handle.stop.notify_one();
            }
        }
    }

    async fn join_room(&self, request: JoinRequest) -> Result<Joined, JoinError> {
        let (network, channel) = self
            .channel_of(&request.room)
            .ok_or_else(|| JoinError::NoSuchRoom(format!("'{}' is not a channel", request.room)))?;
        let handle = self
            .client(&request.user, &network, Some(&request.nick))
            .await
            .ok_or_else(|| {
                JoinError::NoSuchRoom(format!("'{network}' is not a server this gateway reaches"))
            })?;
        let room = request.room.clone();
        let key = request.password;
        let joined = Self::ask(&handle, |reply| Command::Join {
            channel,
            room,
            key,
            reply,
        })
        .await;
        joined.unwrap_or_else(|| {
            Err(JoinError::Unavailable(format!(
                "the connection to {network} closed"
            )))
        })
    }

    async fn list_rooms(&self, user: &UserJid) -> Result<Vec<RoomListing>, RoomActionError> {
        // The servers the user is connected to list their channels; none is dialled for it.
        let mut listed = Vec::new();
        for network in self.servers.keys() {
            let Some(handle) = self.existing(user, network) else {
                continue;
            };
            if let Some(rooms) = Self::ask(&handle, |reply| Command::List { reply }).await {
                listed.extend(rooms);
            }
        }
        Ok(listed)
    }

    async fn room_presence(&self, user: &UserJid, room: &RoomId, away: Option<String>) {
        let Some((network, _)) = self.channel_of(room) else {
            return;
        };
        if let Some(handle) = self.existing(user, &network) {
            let _ = handle.commands.send(Box::new(Command::Away(away))).await;
        }
    }

    async fn send_chat_state(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
        state: ChatState,
    ) {
        // To an occupant privately, a query to their nick, as their messages are. Only on a
        // connection the user has: typing opens none.
        let address = match room.and_then(|room| self.channel_of(room)) {
            Some((network, _)) => Ok(Address::Nick {
                network,
                nick: contact.as_str().to_owned(),
            }),
            None => self.addressing.parse(contact.as_str()),
        };
        if let Ok(Address::Nick { network, nick }) = address {
            self.type_to(user, &network, nick, state);
        }
    }

    async fn room_chat_state(&self, user: &UserJid, room: &RoomId, state: ChatState) {
        if let Some((network, channel)) = self.channel_of(room) {
            self.type_to(user, &network, channel, state);
        }
    }

    async fn retract_room_message(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
    ) -> Result<(), RoomActionError> {
        let (network, channel) = self.room_channel(room)?;
        let handle = self.connected(user, &network)?;
        let redacted = Self::ask(&handle, |reply| Command::Redact {
            channel,
            message: message.as_str().to_owned(),
            reply,
        })
        .await;
        redacted.unwrap_or_else(|| {
            Err(RoomActionError::Unavailable(format!(
                "the connection to {network} closed"
            )))
        })
    }

    async fn react_in_room(
        &self,
        user: &UserJid,
        room: &RoomId,
        message: &MessageId,
        emojis: &[String],
    ) -> Result<(), RoomActionError> {
        let (network, channel) = self.room_channel(room)?;
        let handle = self.connected(user, &network)?;
        let reacted = Self::ask(&handle, |reply| Command::React {
            channel,
            message: message.as_str().to_owned(),
            emojis: emojis.into(),
            reply,
        })
        .await;
        Self::acted(reacted, &network, RoomActionError::NotSupported)
    }

    async fn leave_room(&self, user: &UserJid, room: &RoomId) {
        let Some((network, channel)) = self.channel_of(room) else {
            return;
        };
        if let Some(handle) = self.existing(user, &network) {
            let _ = handle
                .commands
                .send(Box::new(Command::Part { channel }))
                .await;
        }
    }

    async fn send_room_message(&self, post: RoomPost) -> Result<Posted, SendError> {
        let (network, channel) =
            self.channel_of(&post.room)
                .ok_or_else(|| SendError::Permanent {
                    reason: format!("'{}' is not a channel", post.room),
                })?;
        let handle = self
            .existing(&post.user, &network)
            .ok_or_else(|| SendError::Permanent {
                reason: format!("you are not connected to {network}: join the room again"),
            })?;
        let posted = Self::ask(&handle, |reply| Command::Post {
            channel,
            text: post.text,
            id: post.id,
            reply_to: post.reply_to.map(Box::new),
            reply,
        })
        .await;
        posted.unwrap_or_else(|| {
            Err(SendError::Permanent {
                reason: format!("the connection to {network} closed before the message went"),
            })
        })
    }

    async fn set_subject(
        &self,
        user: &UserJid,
        room: &RoomId,
        subject: &str,
    ) -> Result<(), RoomActionError> {
        let (network, channel) = self.room_channel(room)?;
        let topic: String = subject.replace(['\r', '\n'], " ");
        self.send_command(user, &network, "TOPIC", vec![channel, topic])
            .await
    }

    async fn contact_version(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
    ) -> Result<String, RoomActionError> {
        self.ask_ctcp(user, contact, room, "VERSION").await
    }

    async fn ping_contact(
        &self,
        user: &UserJid,
        contact: &ForeignId,
        room: Option<&RoomId>,
    ) -> Result<(), RoomActionError> {
        self.ask_ctcp(user, contact, room, "PING").await.map(drop)
    }

    async fn change_nick(
        &self,
        user: &UserJid,
        room: &RoomId,
        nick: &str,
    ) -> Result<(), RoomActionError> {
        let (network, _) = self.room_channel(room)?;
        address::check_nick(nick).map_err(RoomActionError::Forbidden)?;
        self.send_command(user, &network, "NICK", vec![nick.to_owned()])
            .await
    }

    async fn room_history(
        &self,
        request: HistoryRequest,
    ) -> Result<Vec<RoomMessage>, RoomActionError> {
        let (network, channel) = self.room_channel(&request.room)?;
        let handle = self.connected(&request.user, &network)?;
        let answer = Self::ask(&handle, |reply| Command::History {
            channel,
            before: request.before.map(|(_, at)| at),
            limit: request.limit,
            reply,
        })
        .await;
        match answer {
            Some(Ok(lines)) => Ok(lines),
            Some(Err(reason)) => Err(RoomActionError::Unavailable(reason)),
            None => Err(RoomActionError::Unavailable(format!(
                "the connection to {network} closed"
            ))),
        }
    }

    async fn moderate(
        &self,
        user: &UserJid,
        room: &RoomId,
        action: Moderation,
    ) -> Result<(), RoomActionError> {
        let (network, channel) = self.room_channel(room)?;
        let reason = |reason: Option<String>| reason.unwrap_or_default().replace(['\r', '\n'], " ");
        match action {
            Moderation::Kick { nick, reason: why } => {
                self.send_command(user, &network, "KICK", vec![channel, nick, reason(why)])
                    .await
            }
            Moderation::Ban { nick, reason: why } => {
                let mask = self.ban_mask(&network, &channel, &nick);
                self.send_command(
                    user,
                    &network,
                    "MODE",
                    vec![channel.clone(), "+b".into(), mask],
                )
                .await?;
                self.send_command(user, &network, "KICK", vec![channel, nick, reason(why)])
                    .await
            }
            Moderation::SetRole { nick, role } => {
                let mode = match role {
                    jabbridge_sdk::Role::Moderator => "+o",
                    jabbridge_sdk::Role::Participant => "-o",
                    jabbridge_sdk::Role::Visitor => "-v",
                };
                self.send_command(user, &network, "MODE", vec![channel, mode.into(), nick])
                    .await
            }
        }
    }

    async fn invite(
        &self,
        user: &UserJid,
        room: &RoomId,
        contact: &ForeignId,
    ) -> Result<(), RoomActionError> {
        let (network, channel) = self.room_channel(room)?;
        match self.addressing.parse(contact.as_str()) {
            Ok(Address::Nick {
                network: theirs,
                nick,
            }) if theirs == network => {
                self.send_command(user, &network, "INVITE", vec![nick, channel])
                    .await
            }
            _ => Err(RoomActionError::NotSupported(format!(
                "only someone on {network} can be invited to {channel}"
            ))),
        }
    }
}

impl IrcBridge {
    /// A user's line to a server's address: a raw command where the admin allows them.
    async fn raw(
        &self,
        user: &UserJid,
        network: &str,
        text: &str,
    ) -> Result<SendOutcome, SendError> {
        if !self.config.raw_commands {
            return Err(SendError::Permanent {
                reason: "raw IRC commands are turned off on this gateway".into(),
            });
        }
        let (command, params) = wire::parse_command(text);
        let handle =
            self.client(user, network, None)
                .await
                .ok_or_else(|| SendError::Permanent {
                    reason: format!("'{network}' is not an IRC server this gateway reaches"),
                })?;
        let sent = Self::ask(&handle, |reply| Command::Send {
            command,
            params,
            reply,
        })
        .await;
        match sent {
            Some(Ok(())) => Ok(SendOutcome::Sent),
            Some(Err(reason)) => Err(SendError::Permanent { reason }),
            None => Err(SendError::Transient {
                reason: format!("the connection to {network} closed"),
                retry_after: Some(Duration::from_secs(2)),
            }),
        }
    }
}
