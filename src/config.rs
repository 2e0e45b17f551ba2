//! The configuration file: its typed shape, `JABBRIDGE_SECTION__KEY` environment overrides,
//! and errors that name the file and the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use jabbridge_sdk::Settings;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// Prefix of environment variables that override config keys.
pub const ENV_PREFIX: &str = "JABBRIDGE_";

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// How to reach the XMPP server.
    pub xmpp: XmppConfig,
    /// Where Jabbridge keeps its state.
    #[serde(default)]
    pub database: DatabaseConfig,
    /// The HTTP listener for health, metrics and webhooks.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// How queued messages are delivered.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// One section per bridge, each its own XMPP component.
    #[serde(default)]
    pub bridge: Vec<BridgeConfig>,
}

/// `[xmpp]`: the XMPP server's component port and how to keep the link up.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppConfig {
    /// `host:port` of the server's component listener (XEP-0114), e.g. `127.0.0.1:5347`.
    pub server: String,
    /// Silence on the link after which Jabbridge pings the server.
    #[serde(default = "defaults::keepalive", with = "humantime_serde")]
    pub keepalive: Duration,
    /// How long a ping may go unanswered before the link is declared dead and reconnected.
    #[serde(default = "defaults::keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// The longest wait between two reconnection attempts (backoff doubles up to this).
    #[serde(default = "defaults::reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How many stanzas may wait per bridge while its link is down; producers wait beyond.
    #[serde(default = "defaults::queue", deserialize_with = "number_or_string")]
    pub queue: usize,
}

/// `[delivery]`: the durable outbox and inbox.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How long an instance may go without a heartbeat before another instance (or itself,
    /// restarted, on PostgreSQL) takes over the messages it held. A live instance renews its
    /// heartbeat every third of this.
    #[serde(default = "defaults::lease", with = "humantime_serde")]
    pub lease: Duration,
    /// Attempts of a message to the foreign network before the user is told it failed.
    #[serde(
        default = "defaults::max_attempts",
        deserialize_with = "number_or_string"
    )]
    pub max_attempts: u32,
    /// The longest wait between two attempts (backoff doubles up to this).
    #[serde(default = "defaults::retry_max", with = "humantime_serde")]
    pub retry_max: Duration,
    /// No longer used, accepted so that older configs still load: every conversation is
    /// delivered side by side now, up to `[[bridge]] concurrency` calls into the bridge.
    #[serde(default = "defaults::workers", deserialize_with = "number_or_string")]
    pub workers: usize,
    /// How long delivered messages are kept so that a repeat of one is recognised.
    #[serde(default = "defaults::keep_delivered", with = "humantime_serde")]
    pub keep_delivered: Duration,
}

/// `[database]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created if missing) or `postgres://user@host/db`.
    #[serde(default = "defaults::database_url")]
    pub url: SecretString,
    /// Connections in the pool; by default [`DatabaseConfig::connections`] chooses.
    #[serde(default, deserialize_with = "some_number_or_string")]
    pub max_connections: Option<u32>,
}

impl DatabaseConfig {
    /// The pool's size: `max_connections` when set, else 2 on SQLite and 8 on PostgreSQL.
    /// SQLite writes one transaction at a time (the group commit's, on its own connection)
    /// and its reads take microseconds: more readers wait on the same CPUs, and each costs
    /// memory (its page cache, statements and schema, and a thread: ~150 KiB), opened by
    /// the first burst of users and kept. PostgreSQL's readers run in its own processes.
    pub fn connections(&self) -> u32 {
        self.max_connections.unwrap_or_else(|| {
            if self.url.expose_secret().starts_with("sqlite:") {
                defaults::SQLITE_CONNECTIONS
            } else {
                defaults::POSTGRES_CONNECTIONS
            }
        })
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Where to listen, e.g. `127.0.0.1:8080`.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// The URL the outside world reaches `listen` at (behind a reverse proxy), used by
    /// bridges to build webhook URLs and check signatures.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The largest request body accepted, in bytes.
    #[serde(
        default = "defaults::body_limit",
        deserialize_with = "number_or_string"
    )]
    pub body_limit: usize,
    /// How long one request may take before it is answered 408.
    #[serde(default = "defaults::request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long a client may take to send a request's headers, and how long a kept-alive
    /// connection may sit idle before the next request: then the connection is closed.
    #[serde(default = "defaults::header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Open connections at most; one more is answered 503 and closed.
    #[serde(
        default = "defaults::http_max_connections",
        deserialize_with = "number_or_string"
    )]
    pub max_connections: usize,
    /// Requests handled at once per bridge's routes (and for `/ready` and `/metrics`
    /// together); one more is answered 503 with `Retry-After`.
    #[serde(
        default = "defaults::http_concurrency",
        deserialize_with = "number_or_string"
    )]
    pub concurrency: usize,
}

/// `[log]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A level (`info`) or a filter (`info,jabbridge::xmpp=debug`); `RUST_LOG` wins.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    /// `text` for people, `json` for log collectors.
    #[serde(default)]
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// One `[[bridge]]` section. Keys the core does not own are the bridge's own, parsed (and
/// checked for typos) by the bridge.
#[derive(Debug, Deserialize)]
pub struct BridgeConfig {
    /// Which bridge: `echo`, …
    pub kind: String,
    /// The component's domain, e.g. `sms.example.org`.
    pub domain: String,
    /// The component secret shared with the XMPP server.
    pub secret: SecretString,
    /// This bridge's own component port, when it is not `[xmpp] server`. ejabberd routes
    /// every host of one `ejabberd_service` listener to each connection on it, so there each
    /// bridge needs a listener of its own.
    #[serde(default)]
    pub server: Option<String>,
    /// Who may use the bridge: bare JIDs (`alice@example.org`) and domains (`example.org`).
    /// Empty means nobody but the admins.
    #[serde(default, deserialize_with = "list_or_string")]
    pub allow: Vec<String>,
    /// Bare JIDs that may use the admin commands (and the bridge).
    #[serde(default, deserialize_with = "list_or_string")]
    pub admins: Vec<String>,
    /// Messages per user and period, e.g. `30/min`; beyond it messages are refused with
    /// `resource-constraint`. Absent: no limit.
    #[serde(default, deserialize_with = "rate_limit")]
    pub rate_limit: Option<RateLimit>,
    /// Messages to the foreign network per UTC day, for the whole bridge and per user,
    /// counted in the database so that every instance shares the count, e.g.
    /// `{ per_day = 1000, per_user_per_day = 100 }`. Beyond it messages are refused with
    /// `resource-constraint`. Absent: no cap.
    #[serde(default)]
    pub spend_limit: Option<SpendLimit>,
    /// Calls into the bridge (registrations, commands, presence hooks, sends) that may run at
    /// once, for all users together (1 to 1024). Each user's stanzas are handled in order,
    /// and different users' at the same time, up to this limit.
    #[serde(
        default = "defaults::concurrency",
        deserialize_with = "number_or_string"
    )]
    pub concurrency: usize,
    /// How long one call into the bridge may take. Past it the user is told
    /// (`remote-server-timeout`), and a message send counts as a temporary failure, retried.
    #[serde(default = "defaults::call_timeout", with = "humantime_serde")]
    pub call_timeout: Duration,
    /// `[bridge.rooms]`: group chats, for bridges that have them.
    #[serde(default)]
    pub rooms: RoomsConfig,
    /// The bridge's own keys.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

impl BridgeConfig {
    /// How the core calls into this bridge.
    pub fn call_limits(&self) -> CallLimits {
        CallLimits {
            concurrency: self.concurrency,
            timeout: self.call_timeout,
        }
    }

    /// The bridge's own keys, for its build function.
    pub fn settings(&self) -> Settings {
        Settings::new(self.rest.clone().into_iter().collect())
    }
}

/// How the core calls into one bridge: `[[bridge]] concurrency` and `call_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallLimits {
    /// Calls that may run at once.
    pub concurrency: usize,
    /// How long one call may take.
    pub timeout: Duration,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            concurrency: defaults::concurrency(),
            timeout: defaults::call_timeout(),
        }
    }
}

/// `[bridge.rooms]`: how the core keeps a bridge's group chats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsConfig {
    /// How long after a user's last resource left a room the bridge leaves the foreign room:
    /// a phone that reconnects meanwhile does not part and rejoin.
    #[serde(default = "defaults::leave_grace", with = "humantime_serde")]
    pub leave_grace: Duration,
    /// How long room messages are kept in the archive (history on join).
    #[serde(default = "defaults::keep_history", with = "humantime_serde")]
    pub keep_history: Duration,
    /// Messages of history a joining client gets when it does not say how many (0 to 1000).
    #[serde(
        default = "defaults::history_on_join",
        deserialize_with = "number_or_string"
    )]
    pub history_on_join: u32,
    /// Rooms one user may be in at once on this bridge (1 to 10,000); past it a join gets
    /// `resource-constraint`.
    #[serde(
        default = "defaults::rooms_per_user",
        deserialize_with = "number_or_string"
    )]
    pub rooms_per_user: usize,
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self {
            leave_grace: defaults::leave_grace(),
            keep_history: defaults::keep_history(),
            history_on_join: defaults::history_on_join(),
            rooms_per_user: defaults::rooms_per_user(),
        }
    }
}

/// `[[bridge]] spend_limit`: messages to the foreign network per UTC day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendLimit {
    /// For the whole bridge.
    #[serde(default)]
    pub per_day: Option<u32>,
    /// For each user.
    #[serde(default)]
    pub per_user_per_day: Option<u32>,
}

/// A number of events per period: `30/min`, `5/s`, `1000/hour`, `10/day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed per period (and the burst).
    pub count: u32,
    /// The period.
    pub per: Duration,
}

impl std::str::FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let wrong = || format!("'{text}' is not a rate such as 30/min (per s, min, hour or day)");
        let (count, unit) = text.trim().split_once('/').ok_or_else(wrong)?;
        let count: u32 = count.trim().parse().map_err(|_| wrong())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            "d" | "day" => Duration::from_secs(86_400),
            _ => return Err(wrong()),
        };
        if count == 0 {
            return Err(format!(
                "'{text}' allows nothing; remove the bridge instead"
            ));
        }
        Ok(Self { count, per })
    }
}

fn rate_limit<'de, D>(deserializer: D) -> Result<Option<RateLimit>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let text = String::deserialize(deserializer)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A list from TOML, or a comma-separated string from an environment variable.
fn list_or_string<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        String(String),
    }
    Ok(match ListOrString::deserialize(deserializer)? {
        ListOrString::List(list) => list,
        ListOrString::String(text) => text
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

mod defaults {
    use super::*;

    pub fn lease() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_attempts() -> u32 {
        10
    }
    pub fn retry_max() -> Duration {
        Duration::from_secs(300)
    }
    pub fn workers() -> usize {
        4
    }
    pub fn keep_delivered() -> Duration {
        Duration::from_secs(7 * 86_400)
    }
    pub fn concurrency() -> usize {
        64
    }
    pub fn call_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn leave_grace() -> Duration {
        Duration::from_secs(60)
    }
    pub fn keep_history() -> Duration {
        Duration::from_secs(30 * 86_400)
    }
    pub fn history_on_join() -> u32 {
        20
    }
    pub fn rooms_per_user() -> usize {
        100
    }

    pub fn keepalive() -> Duration {
        Duration::from_secs(60)
    }
    pub fn keepalive_timeout() -> Duration {
        Duration::from_secs(20)
    }
    pub fn reconnect_max() -> Duration {
        Duration::from_secs(30)
    }
    pub fn queue() -> usize {
        10_000
    }
    pub fn database_url() -> SecretString {
        SecretString::from("sqlite://jabbridge.db")
    }
    /// The pool's size on SQLite, unless `max_connections` says.
    pub const SQLITE_CONNECTIONS: u32 = 2;
    /// The pool's size on PostgreSQL, unless `max_connections` says.
    pub const POSTGRES_CONNECTIONS: u32 = 8;
    pub fn listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn body_limit() -> usize {
        1024 * 1024
    }
    pub fn request_timeout() -> Duration {
        Duration::from_secs(15)
    }
    pub fn header_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn http_max_connections() -> usize {
        1024
    }
    pub fn http_concurrency() -> usize {
        256
    }
    pub fn log_level() -> String {
        "info".into()
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            lease: defaults::lease(),
            max_attempts: defaults::max_attempts(),
            retry_max: defaults::retry_max(),
            workers: defaults::workers(),
            keep_delivered: defaults::keep_delivered(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: defaults::database_url(),
            max_connections: None,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: defaults::listen(),
            public_url: None,
            body_limit: defaults::body_limit(),
            request_timeout: defaults::request_timeout(),
            header_timeout: defaults::header_timeout(),
            max_connections: defaults::http_max_connections(),
            concurrency: defaults::http_concurrency(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: defaults::log_level(),
            format: LogFormat::default(),
        }
    }
}

/// Environment variables hold strings; numbers are accepted as either.
fn number_or_string<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + TryFrom<i64>,
    T::Err: fmt::Display,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrString {
        Number(i64),
        String(String),
    }
    match NumberOrString::deserialize(deserializer)? {
        NumberOrString::Number(number) => T::try_from(number)
            .map_err(|_| serde::de::Error::custom(format!("{number} is out of range"))),
        NumberOrString::String(text) => text.trim().parse().map_err(serde::de::Error::custom),
    }
}

/// [`number_or_string`] for an optional key (with `#[serde(default)]`).
fn some_number_or_string<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr + TryFrom<i64>,
    T::Err: fmt::Display,
{
    number_or_string(deserializer).map(Some)
}

/// A config file that cannot be used, saying where and why.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The key, e.g. `bridge[0].secret`, when the fault is in one key.
    pub key: Option<String>,
    /// The environment variable that set the key, when one did.
    pub env: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        if let Some(env) = &self.env {
            write!(f, " (set by ${env})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl Config {
    /// Reads `path`, applies overrides from the process environment, and checks the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// [`Config::load`] with an explicit environment, for tests.
    pub fn load_with_env(
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let error = |key: Option<String>, env: Option<String>, message: String| ConfigError {
            file: path.to_owned(),
            key,
            env,
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|io| error(None, None, format!("cannot read: {io}")))?;
        let mut document: toml::Table = toml::from_str(&text)
            .map_err(|parse| error(None, None, parse.to_string().trim_end().to_owned()))?;
        let mut overridden = BTreeMap::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            // JABBRIDGE_CONFIG names the file itself; it is not a key in it.
            if rest == "CONFIG" {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            apply_override(&mut document, &path, value)
                .map_err(|message| error(Some(path.join(".")), Some(name.clone()), message))?;
            overridden.insert(display_key(&path), name);
        }
        let config: Config = serde_path_to_error::deserialize(toml::Value::Table(document))
            .map_err(|failure| {
                let key = failure.path().to_string();
                let env = overridden.get(&key).cloned();
                error(Some(key), env, failure.into_inner().to_string())
            })?;
        config
            .validate()
            .map_err(|(key, message)| error(Some(key), None, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let positive = |key: &str, duration: Duration| {
            // Also rejects durations so long that deadlines would overflow.
            if duration.is_zero() || duration > Duration::from_secs(86_400 * 365) {
                Err((key.to_owned(), "must be between 1ms and a year".to_owned()))
            } else {
                Ok(())
            }
        };
        positive("xmpp.keepalive", self.xmpp.keepalive)?;
        positive("xmpp.keepalive_timeout", self.xmpp.keepalive_timeout)?;
        positive("xmpp.reconnect_max", self.xmpp.reconnect_max)?;
        positive("http.request_timeout", self.http.request_timeout)?;
        positive("http.header_timeout", self.http.header_timeout)?;
        if !(1..=65_536).contains(&self.http.max_connections) {
            return Err((
                "http.max_connections".into(),
                "must be between 1 and 65536".into(),
            ));
        }
        if !(1..=65_536).contains(&self.http.concurrency) {
            return Err((
                "http.concurrency".into(),
                "must be between 1 and 65536".into(),
            ));
        }
        positive("delivery.lease", self.delivery.lease)?;
        positive("delivery.retry_max", self.delivery.retry_max)?;
        positive("delivery.keep_delivered", self.delivery.keep_delivered)?;
        if self.delivery.max_attempts == 0 {
            return Err(("delivery.max_attempts".into(), "must be at least 1".into()));
        }
        if !(1..=64).contains(&self.delivery.workers) {
            return Err(("delivery.workers".into(), "must be between 1 and 64".into()));
        }
        if let Some(url) = &self.http.public_url {
            let scheme = url.split_once("://").map(|(scheme, _)| scheme);
            let host = url
                .split_once("://")
                .map(|(_, rest)| rest)
                .unwrap_or_default();
            if !matches!(scheme, Some("http" | "https")) || host.is_empty() || host.starts_with('/')
            {
                return Err((
                    "http.public_url".into(),
                    format!("'{url}' is not an http(s) URL such as https://gw.example.org"),
                ));
            }
        }
        if self.xmpp.queue == 0 {
            return Err(("xmpp.queue".into(), "must be at least 1".into()));
        }
        let url = self.database.url.expose_secret();
        if !["sqlite:", "postgres://", "postgresql://"]
            .iter()
            .any(|scheme| url.starts_with(scheme))
        {
            // The URL may hold a password: it is not repeated.
            return Err((
                "database.url".into(),
                "must be sqlite://PATH or postgres://USER@HOST/DB".into(),
            ));
        }
        if self.database.max_connections == Some(0) {
            return Err((
                "database.max_connections".into(),
                "must be at least 1".into(),
            ));
        }
        if self.http.body_limit < 1024 {
            return Err((
                "http.body_limit".into(),
                "must be at least 1024 bytes".into(),
            ));
        }
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err((
                "log.level".into(),
                format!(
                    "'{}' is not a level (error, warn, info, debug, trace) or filter: {error}",
                    self.log.level
                ),
            ));
        }
        if !self.xmpp.server.contains(':') {
            return Err((
                "xmpp.server".into(),
                "must be host:port of the server's component listener, e.g. 127.0.0.1:5347".into(),
            ));
        }
        for (index, bridge) in self.bridge.iter().enumerate() {
            if let Err(reason) = crate::xmpp::jid::check_domain(&bridge.domain) {
                return Err((format!("bridge[{index}].domain"), reason));
            }
            if bridge.secret.expose_secret().is_empty() {
                return Err((
                    format!("bridge[{index}].secret"),
                    "must be the component secret in the server's config, not empty".into(),
                ));
            }
            if let Some(first) = self.bridge[..index]
                .iter()
                .position(|other| other.domain == bridge.domain)
            {
                return Err((
                    format!("bridge[{index}].domain"),
                    format!(
                        "{} is already the domain of bridge[{first}]: each bridge needs its own",
                        bridge.domain
                    ),
                ));
            }
            for (key, entries) in [("allow", &bridge.allow), ("admins", &bridge.admins)] {
                for (position, entry) in entries.iter().enumerate() {
                    if let Err(reason) = crate::access::check_entry(entry, key == "admins") {
                        return Err((format!("bridge[{index}].{key}[{position}]"), reason));
                    }
                }
            }
            positive(
                &format!("bridge[{index}].call_timeout"),
                bridge.call_timeout,
            )?;
            if !(1..=1024).contains(&bridge.concurrency) {
                return Err((
                    format!("bridge[{index}].concurrency"),
                    "must be between 1 and 1024".into(),
                ));
            }
            if bridge.rooms.leave_grace > Duration::from_secs(86_400) {
                return Err((
                    format!("bridge[{index}].rooms.leave_grace"),
                    "must be at most a day".into(),
                ));
            }
            positive(
                &format!("bridge[{index}].rooms.keep_history"),
                bridge.rooms.keep_history,
            )?;
            if !(1..=10_000).contains(&bridge.rooms.rooms_per_user) {
                return Err((
                    format!("bridge[{index}].rooms.rooms_per_user"),
                    "must be between 1 and 10000".into(),
                ));
            }
            if bridge.rooms.history_on_join > 1000 {
                return Err((
                    format!("bridge[{index}].rooms.history_on_join"),
                    "must be between 0 and 1000".into(),
                ));
            }
            if let Some(spend) = bridge.spend_limit {
                let counts = [spend.per_day, spend.per_user_per_day];
                if counts.iter().all(Option::is_none) || counts.contains(&Some(0)) {
                    return Err((
                        format!("bridge[{index}].spend_limit"),
                        "give per_day and/or per_user_per_day, each at least 1".into(),
                    ));
                }
            }
            if crate::bridges::find(&bridge.kind).is_none() {
                return Err((
                    format!("bridge[{index}].kind"),
                    format!(
                        "unknown bridge kind '{}'; known: {}",
                        bridge.kind,
                        crate::bridges::kinds().join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for segment in path {
        if segment.parse::<usize>().is_ok() {
            key.push_str(&format!("[{segment}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(segment);
        }
    }
    key
}

/// Sets `path` in the document to `value`, creating tables on the way. A numeric segment
/// indexes an array of tables (`JABBRIDGE_BRIDGE__0__SECRET`). The value keeps the type of
/// the key it replaces, so that `JABBRIDGE_HTTP__BODY_LIMIT=5` stays a number.
fn apply_override(
    document: &mut toml::Table,
    path: &[String],
    value: String,
) -> Result<(), String> {
    if path.is_empty() || path.iter().any(String::is_empty) {
        return Err("empty key segment (use exactly two underscores between keys)".into());
    }
    set_in_table(document, path, value)
}

fn set_in_table(table: &mut toml::Table, path: &[String], value: String) -> Result<(), String> {
    let (segment, rest) = match path.split_first() {
        Some(split) => split,
        None => return Err("empty key".into()),
    };
    if rest.is_empty() {
        let typed = match table.get(segment) {
            Some(toml::Value::Integer(_)) => value
                .parse()
                .map(toml::Value::Integer)
                .map_err(|_| format!("expected a whole number, got '{value}'"))?,
            Some(toml::Value::Boolean(_)) => value
                .parse()
                .map(toml::Value::Boolean)
                .map_err(|_| format!("expected true or false, got '{value}'"))?,
            _ => toml::Value::String(value),
        };
        table.insert(segment.clone(), typed);
        return Ok(());
    }
    let entry = table
        .entry(segment.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(inner) => set_in_table(inner, rest, value),
        toml::Value::Array(array) => {
            let (index, rest) = rest.split_first().ok_or("missing index")?;
            let index: usize = index
                .parse()
                .map_err(|_| format!("`{segment}` is a list: the next key must be its index"))?;
            match array.get_mut(index) {
                Some(toml::Value::Table(item)) if !rest.is_empty() => {
                    set_in_table(item, rest, value)
                }
                _ => Err(format!(
                    "there is no [[{segment}]] number {index} in the file to override"
                )),
            }
        }
        _ => Err(format!("`{segment}` is not a section")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), text).unwrap();
        file
    }

    const MINIMAL: &str = r#"
[xmpp]
server = "127.0.0.1:5347"
[[bridge]]
kind = "echo"
domain = "echo.localhost"
secret = "s3cret"
"#;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let file = write(MINIMAL);
        let config = Config::load_with_env(file.path(), env(&[])).unwrap();
        assert_eq!(config.xmpp.keepalive, Duration::from_secs(60));
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.database.url.expose_secret(), "sqlite://jabbridge.db");
        assert_eq!(config.bridge[0].secret.expose_secret(), "s3cret");
    }

    #[test]
    fn the_pool_is_sized_by_engine_unless_the_file_says() {
        let pool = |extra: &str, vars: &[(&str, &str)]| {
            let file = write(&format!("{MINIMAL}[database]\n{extra}"));
            Config::load_with_env(file.path(), env(vars)).map(|c| c.database.connections())
        };
        assert_eq!(pool("", &[]).unwrap(), 2);
        assert_eq!(pool("url = \"postgres://jb@db/jb\"\n", &[]).unwrap(), 8);
        assert_eq!(pool("max_connections = 5\n", &[]).unwrap(), 5);
        let postgres = "url = \"postgres://jb@db/jb\"\nmax_connections = 3\n";
        assert_eq!(pool(postgres, &[]).unwrap(), 3);
        let from_env = [("JABBRIDGE_DATABASE__MAX_CONNECTIONS", "6")];
        assert_eq!(pool("", &from_env).unwrap(), 6);
        let refused = pool("max_connections = 0\n", &[]).unwrap_err();
        assert_eq!(refused.key.as_deref(), Some("database.max_connections"));
    }

    #[test]
    fn environment_overrides_any_key_and_keeps_types() {
        let file = write(MINIMAL);
        let config = Config::load_with_env(
            file.path(),
            env(&[
                ("JABBRIDGE_XMPP__SERVER", "10.0.0.1:5275"),
                ("JABBRIDGE_XMPP__KEEPALIVE", "5s"),
                ("JABBRIDGE_HTTP__BODY_LIMIT", "2048"),
                ("JABBRIDGE_BRIDGE__0__SECRET", "from-env"),
                ("JABBRIDGE_BRIDGE__0__PREFIX", "+15551234567"),
                ("UNRELATED", "x"),
                ("JABBRIDGE_CONFIG", "/elsewhere.toml"),
            ]),
        )
        .unwrap();
        assert_eq!(config.xmpp.server, "10.0.0.1:5275");
        assert_eq!(config.xmpp.keepalive, Duration::from_secs(5));
        assert_eq!(config.http.body_limit, 2048);
        assert_eq!(config.bridge[0].secret.expose_secret(), "from-env");
        // A phone number stays a string.
        assert_eq!(
            config.bridge[0].rest.get("prefix"),
            Some(&serde_json::Value::String("+15551234567".into()))
        );
    }

    #[test]
    fn errors_name_file_key_and_variable() {
        let file = write(&MINIMAL.replace("[xmpp]", "[xmpp]\nkeepalive = \"soon\""));
        let error = Config::load_with_env(file.path(), env(&[])).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("xmpp.keepalive"));
        assert!(
            error
                .to_string()
                .starts_with(&file.path().display().to_string())
        );

        let file = write(&MINIMAL.replace("[xmpp]", "[xmpp]\nsevrer = \"x\""));
        let error = Config::load_with_env(file.path(), env(&[])).unwrap_err();
        assert!(error.message.contains("unknown field `sevrer`"), "{error}");

        let file = write(MINIMAL);
        let error = Config::load_with_env(file.path(), env(&[("JABBRIDGE_XMPP__QUEUE", "many")]))
            .unwrap_err();
        assert_eq!(error.key.as_deref(), Some("xmpp.queue"));
        assert_eq!(error.env.as_deref(), Some("JABBRIDGE_XMPP__QUEUE"));

        let file = write(&format!(
            "{MINIMAL}{}",
            MINIMAL.replace("[xmpp]\nserver = \"127.0.0.1:5347\"", "")
        ));
        let error = Config::load_with_env(file.path(), env(&[])).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("bridge[1].domain"));

        for url in ["gw.example.org", "ftp://gw.example.org", "https://"] {
            let file = write(&format!("{MINIMAL}[http]\npublic_url = \"{url}\"\n"));
            let error = Config::load_with_env(file.path(), env(&[])).unwrap_err();
            assert_eq!(error.key.as_deref(), Some("http.public_url"), "{url}");
        }
        let file = write(&format!(
            "{MINIMAL}[http]\npublic_url = \"https://gw.example.org/\"\n"
        ));
        assert!(Config::load_with_env(file.path(), env(&[])).is_ok());

        let file = write(&MINIMAL.replace("\"echo\"", "\"carrier-pigeon\""));
        let error = Config::load_with_env(file.path(), env(&[])).unwrap_err();
        assert_eq!(error.key.as_deref(), Some("bridge[0].kind"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let file = write(MINIMAL);
        let config = Config::load_with_env(file.path(), env(&[])).unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
