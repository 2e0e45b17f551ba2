//! Start-up and shutdown: builds every bridge with its link and gateway, serves HTTP, and on
//! shutdown stops taking work, flushes the links, closes the streams and the database.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use jabbridge_sdk::plumbing::{self, CoreSink};
use jabbridge_sdk::{
    Bridge, BridgeError, ChatState, Core, CoreError, DeliveryReport, ForeignId, IncomingMessage,
    MessageId, RegistrationData, RoomEvent, RoomId, Shutdown, UserJid, UserStatus, async_trait,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::access::Access;
use crate::bridges;
use crate::config::{BridgeConfig, Config};
use crate::delivery::commit::Committer;
use crate::delivery::recovery;
use crate::gateway::core_link::CoreLink;
use crate::gateway::{Gateway, Policy, Wiring};
use crate::http::{self, HttpBridge, HttpState};
use crate::store::{Store, StoreError};
use crate::systemd::Notifier;
use crate::xmpp::session::{self, LinkConfig, LinkState, backoff};
use crate::{memory, metrics};

/// Why Jabbridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bridge refused its config section.
    #[error("bridge[{index}] ({domain}): {error}")]
    Bridge {
        /// Its index in the file.
        index: usize,
        /// Its domain.
        domain: String,
        /// What it said.
        error: BridgeError,
    },
    /// The HTTP listener could not bind.
    #[error("cannot listen on http.listen = {address}: {error}")]
    Listen {
        /// Where.
        address: std::net::SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// Why `jabbridge identities` cannot name a foreign identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No bridge has that domain.
    #[error("no [[bridge]] has domain = \"{0}\"")]
    UnknownDomain(String),
    /// The bridge's section does not build.
    #[error(transparent)]
    Bridge(#[from] StartError),
    /// The bridge does not accept the address.
    #[error("'{address}' is not an address on {domain}: {reason}")]
    Invalid {
        /// What was given.
        address: String,
        /// The bridge.
        domain: String,
        /// The bridge's reason.
        reason: String,
    },
}

/// How often, at most, the registered users are compared with the running sessions, and
/// (with several instances) the sessions of dead instances taken over: every half
/// `delivery.lease` when that is shorter.
const SESSIONS_WATCH: Duration = Duration::from_secs(10);

/// How long shutdown may take before the remaining tasks are abandoned.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// A core sink for builds that never run (`check-config`): it refuses every event.
struct Unwired;

#[async_trait]
impl CoreSink for Unwired {
    async fn deliver(&self, _message: IncomingMessage) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn room_event(&self, _room: RoomId, _event: RoomEvent) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn set_status(&self, _user: UserJid, _status: UserStatus) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn chat_state(
        &self,
        _user: UserJid,
        _contact: ForeignId,
        _state: ChatState,
    ) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn load(&self, _key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn save(&self, _key: &str, _value: Option<serde_json::Value>) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn report(
        &self,
        _message: MessageId,
        _sender: Option<UserJid>,
        _report: DeliveryReport,
    ) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn owner(&self, _identity: ForeignId) -> Result<Option<UserJid>, CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn set_owner(
        &self,
        _identity: ForeignId,
        _owner: Option<UserJid>,
    ) -> Result<(), CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn identities(&self, _user: UserJid) -> Result<Vec<ForeignId>, CoreError> {
        Err(CoreError::ShuttingDown)
    }

    async fn registration(&self, _user: UserJid) -> Result<Option<RegistrationData>, CoreError> {
        Err(CoreError::ShuttingDown)
    }
}

/// Builds every bridge without running anything, so that `check-config` reports each
/// bridge's own config errors.
pub fn check_bridges(config: &Config) -> Result<(), StartError> {
    built_bridges(config).map(|_| ())
}

/// Every bridge, built but not run, with a core that refuses every event (for
/// `check-config` and `doctor`).
pub fn built_bridges(config: &Config) -> Result<Vec<Arc<dyn Bridge>>, StartError> {
    config
        .bridge
        .iter()
        .enumerate()
        .map(|(index, section)| {
            build_bridge(
                index,
                section,
                plumbing::core(
                    &section.domain,
                    Arc::new(Unwired),
                    config.http.public_url.clone(),
                ),
            )
        })
        .collect()
}

/// The foreign identity `address` names on the bridge at `domain`, as that bridge writes it
/// (e.g. `(555) 123-4567` → `+15551234567` on an SMS bridge): what `jabbridge identities`
/// stores, so that the CLI and the bridge agree.
pub fn normalize_identity(
    config: &Config,
    domain: &str,
    address: &str,
) -> Result<String, IdentityError> {
    let Some((index, section)) = config
        .bridge
        .iter()
        .enumerate()
        .find(|(_, section)| section.domain == domain)
    else {
        return Err(IdentityError::UnknownDomain(domain.to_owned()));
    };
    let bridge = build_bridge(
        index,
        section,
        plumbing::core(&section.domain, Arc::new(Unwired), None),
    )?;
    let parsed = bridge
        .parse_address(address)
        .map_err(|error| IdentityError::Invalid {
            address: address.to_owned(),
            domain: domain.to_owned(),
            reason: error.to_string(),
        })?;
    Ok(parsed.as_str().to_owned())
}

fn build_bridge(
    index: usize,
    section: &crate::config::BridgeConfig,
    core: Core,
) -> Result<Arc<dyn Bridge>, StartError> {
    let error = |error| StartError::Bridge {
        index,
        domain: section.domain.clone(),
        error,
    };
    // Config validation has already checked that the kind exists.
    let build = bridges::find(&section.kind).ok_or_else(|| {
        error(BridgeError::Failed(format!(
            "unknown kind {}",
            section.kind
        )))
    })?;
    build(&section.settings(), core).map_err(error)
}

/// What every bridge of this process shares.
struct Shared {
    store: Store,
    committer: Committer,
    /// Where admins' `reload` commands go.
    reloads: crate::gateway::Reloads,
    /// The whole process's shutdown; each bridge also has its own.
    stopping: Shutdown,
    http: Arc<HttpState>,
    /// Each bridge's link, for systemd's status line.
    links: Links,
}

/// The bridges' links, by domain.
type Links = Arc<std::sync::Mutex<Vec<(String, Arc<LinkState>)>>>;

/// One running bridge: its gateway, what stops it, and its tasks.
struct Running {
    /// Holds the bridge's gateway (and so the committer) until its tasks are done.
    gateway: Arc<Gateway>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    /// Dropped (a shutdown that ran out of time), it aborts them.
    tasks: JoinSet<()>,
}

/// Starts the bridge of `config.bridge[index]`: its link, gateway, queues and tasks, and its
/// HTTP routes. It stops when the process does, or when [`stop_bridge`] stops it.
async fn start_bridge(
    shared: &Shared,
    config: &Config,
    index: usize,
) -> Result<(String, Running), StartError> {
    let section = &config.bridge[index];
    let domain = section.domain.clone();
    let (stop, stopping) = Shutdown::new();
    let stop = Arc::new(stop);
    {
        let stop = stop.clone();
        let global = shared.stopping.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = global.wait() => { let _ = stop.send(true); }
                () = stop.closed() => {}
            }
        });
    }
    let mut tasks = JoinSet::new();
    let (incoming, incoming_receiver) = mpsc::channel(1024);
    let (link, link_task) = session::spawn(
        LinkConfig {
            server: section
                .server
                .clone()
                .unwrap_or_else(|| config.xmpp.server.clone()),
            domain: domain.clone(),
            secret: section.secret.clone(),
            index,
            keepalive: config.xmpp.keepalive,
            keepalive_timeout: config.xmpp.keepalive_timeout,
            reconnect_max: config.xmpp.reconnect_max,
        },
        config.xmpp.queue,
        incoming,
        stopping.clone(),
    );
    tasks.spawn(async move {
        let _ = link_task.await;
    });
    let (core_link, core_requests) = CoreLink::new(&domain, shared.store.clone());
    let core = plumbing::core(&domain, Arc::new(core_link), config.http.public_url.clone());
    let bridge = build_bridge(index, section, core)?;
    let gateway = Gateway::new(
        domain.clone(),
        bridge.clone(),
        Wiring {
            link: link.clone(),
            store: shared.store.clone(),
            committer: shared.committer.clone(),
            shutdown: stopping.clone(),
        },
        Policy {
            access: Access::new(&domain, &section.allow, &section.admins, section.rate_limit),
            delivery: config.delivery.clone(),
            calls: section.call_limits(),
            spend: section.spend_limit,
            rooms: section.rooms,
            reload: Some(shared.reloads.clone()),
            step_key: step_key(&domain, &section.secret),
        },
    );
    let span = gateway.span();
    // Before anything new is accepted, so that old messages reach their lanes first.
    recovery::recover(&gateway.delivery, true)
        .instrument(span.clone())
        .await;
    if section.allow.is_empty() {
        tracing::warn!(bridge = %domain, "bridge.allow is empty: only its admins may use it");
    }
    tracing::info!(bridge = %domain, kind = %section.kind, gateway_type = %gateway.info().gateway_type, "bridge configured");
    recovery::spawn_workers(&gateway.delivery, &mut tasks);
    tasks.spawn(gateway.clone().run(incoming_receiver, core_requests));
    // Once the gateway serves the bridge's events: a rejoin reports some.
    let rejoining = gateway.clone();
    tasks.spawn(
        async move {
            crate::gateway::sessions::start_all(&rejoining).await;
        }
        .instrument(span.clone()),
    );
    tasks.spawn(
        crate::gateway::rooms::maintain(gateway.clone(), stopping.clone()).instrument(span.clone()),
    );
    tasks.spawn(
        crate::gateway::sessions::watch(
            gateway.clone(),
            SESSIONS_WATCH.min(config.delivery.lease / 2),
            stopping.clone(),
        )
        .instrument(span.clone()),
    );
    tasks.spawn(run_bridge(bridge.clone(), stopping.clone()).instrument(span));
    shared.http.set_bridge(
        &domain,
        Some(HttpBridge::new(
            bridge,
            link.clone(),
            config.http.concurrency,
        )),
    );
    lock_links(&shared.links).push((domain.clone(), link.state.clone()));
    Ok((
        domain,
        Running {
            gateway,
            stop,
            tasks,
        },
    ))
}

fn lock_links(links: &Links) -> std::sync::MutexGuard<'_, Vec<(String, Arc<LinkState>)>> {
    links
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops a bridge (a reload removed or rebuilt it): its queues are flushed, its link
/// closed, its sessions handed back, within [`SHUTDOWN_GRACE`].
async fn stop_bridge(shared: &Shared, domain: &str, running: Running) {
    shared.http.set_bridge(domain, None);
    lock_links(&shared.links).retain(|(linked, _)| linked != domain);
    let _ = running.stop.send(true);
    let mut tasks = running.tasks;
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if stopped.is_err() {
        tracing::warn!(
            bridge = domain,
            "the bridge did not stop in time; abandoning its tasks"
        );
        tasks.abort_all();
    }
    drop(running.gateway);
}

/// The key a bridge's registration steps are sealed with: every instance of the bridge
/// derives the same one from its component secret, which users never see.
fn step_key(domain: &str, secret: &secrecy::SecretString) -> [u8; 32] {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(b"jabbridge registration steps\0");
    hash.update(domain.as_bytes());
    hash.update([0]);
    hash.update(secret.expose_secret().as_bytes());
    hash.finalize().into()
}

/// Whether two sections of one bridge differ only in what changes in place: `allow`,
/// `admins` and `rate_limit`.
fn same_apart_from_access(old: &BridgeConfig, new: &BridgeConfig) -> bool {
    use secrecy::ExposeSecret;
    old.kind == new.kind
        && old.domain == new.domain
        && old.secret.expose_secret() == new.secret.expose_secret()
        && old.server == new.server
        && format!("{:?}", old.spend_limit) == format!("{:?}", new.spend_limit)
        && old.concurrency == new.concurrency
        && old.call_timeout == new.call_timeout
        && format!("{:?}", old.rooms) == format!("{:?}", new.rooms)
        && old.rest == new.rest
}

/// The sections a reload cannot change in a running process.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    use secrecy::ExposeSecret;
    let mut changed = Vec::new();
    if format!("{:?}", old.xmpp) != format!("{:?}", new.xmpp) {
        changed.push("[xmpp]");
    }
    if old.database.url.expose_secret() != new.database.url.expose_secret()
        || old.database.connections() != new.database.connections()
    {
        changed.push("[database]");
    }
    if format!("{:?}", old.http) != format!("{:?}", new.http) {
        changed.push("[http]");
    }
    if format!("{:?}", old.delivery) != format!("{:?}", new.delivery) {
        changed.push("[delivery]");
    }
    if format!("{:?}", old.log.format) != format!("{:?}", new.log.format) {
        changed.push("log.format");
    }
    changed
}

/// Reads the config at `path` again and applies it: bridges added start, bridges removed
/// stop (queues flushed), bridges whose section changed are rebuilt, and `allow`, `admins`,
/// `rate_limit` and `[log] level` change in place; unchanged bridges keep their links. A
/// config that does not validate changes nothing and comes back as the error
/// `check-config` would print. What will change, in one line, goes to the admin command
/// that asked before the bridges are stopped and started; should the asking bridge be one
/// of them, it stops once the command's answer is on its way. Bridges stop together, so a
/// reload takes one stop's grace at most before the new ones start.
async fn reload(
    path: &std::path::Path,
    current: &mut Config,
    shared: &Shared,
    running: &mut BTreeMap<String, Running>,
    request: Option<crate::gateway::ReloadRequest>,
) {
    let (asking, answer) = match request {
        Some(request) => (Some(request.from), Some(request.answer)),
        None => (None, None),
    };
    let tell = |answer: Option<tokio::sync::oneshot::Sender<_>>,
                outcome: Result<String, String>| {
        match &outcome {
            Ok(summary) => tracing::info!(%summary, "configuration reloaded"),
            Err(error) => {
                tracing::error!(%error, "the configuration was not reloaded; the running one stays")
            }
        }
        if let Some(answer) = answer {
            let _ = answer.send(outcome);
        }
    };
    let mut new = match Config::load(path)
        .map_err(|error| error.to_string())
        .and_then(|new| {
            check_bridges(&new).map_err(|error| error.to_string())?;
            Ok(new)
        }) {
        Ok(new) => new,
        Err(error) => return tell(answer, Err(error)),
    };
    let mut done = Vec::new();
    let restart = needs_restart(current, &new);
    if !restart.is_empty() {
        done.push(format!(
            "{} changed but need a restart (kept as they were)",
            restart.join(", ")
        ));
    }
    if new.log.level != current.log.level {
        match crate::logging::set_level(&new.log.level) {
            Ok(true) => done.push(format!("log level {}", new.log.level)),
            Ok(false) => done.push("log level kept (RUST_LOG sets it)".to_owned()),
            Err(error) => return tell(answer, Err(error)),
        }
        current.log.level = new.log.level.clone();
    }
    let old_bridges = std::mem::take(&mut current.bridge);
    current.bridge = std::mem::take(&mut new.bridge);
    // The plan first: what goes, what is rebuilt, what only changes in place.
    let removed: Vec<String> = old_bridges
        .iter()
        .filter(|old| current.bridge.iter().all(|new| new.domain != old.domain))
        .map(|old| old.domain.clone())
        .collect();
    let (mut added, mut rebuilt, mut updated) = (Vec::new(), Vec::new(), Vec::new());
    for (index, section) in current.bridge.iter().enumerate() {
        match old_bridges.iter().find(|old| old.domain == section.domain) {
            Some(old) if same_apart_from_access(old, section) => updated.push(index),
            Some(_) => rebuilt.push(index),
            None => added.push(index),
        }
    }
    done.insert(
        0,
        format!(
            "{} bridge(s) added, {} removed, {} rebuilt, {} updated in place",
            added.len(),
            removed.len(),
            rebuilt.len(),
            updated.len()
        ),
    );
    tell(answer, Ok(done.join("; ")));
    for index in updated {
        let section = &current.bridge[index];
        if let Some(bridge) = running.get(&section.domain) {
            bridge
                .gateway
                .access
                .update(&section.allow, &section.admins, section.rate_limit);
        }
    }
    let mut stopping = Vec::new();
    for domain in &removed {
        if let Some(bridge) = running.remove(domain) {
            tracing::info!(bridge = %domain, "reload: the bridge was removed; it stops");
            stopping.push((domain.clone(), bridge, true));
        }
    }
    for index in &rebuilt {
        let domain = &current.bridge[*index].domain;
        if let Some(bridge) = running.remove(domain) {
            tracing::info!(bridge = %domain, "reload: the bridge's section changed; it is rebuilt");
            stopping.push((domain.clone(), bridge, false));
        }
    }
    futures::future::join_all(stopping.into_iter().map(|(domain, bridge, removed)| {
        let asked_here = asking.as_deref() == Some(domain.as_str());
        async move {
            if asked_here {
                // The admin's answer leaves through this bridge's link: let it go first.
                bridge.gateway.settle(Duration::from_secs(5)).await;
            }
            stop_bridge(shared, &domain, bridge).await;
            if removed {
                metrics::bridge_removed(&domain);
            }
        }
    }))
    .await;
    let mut failed = Vec::new();
    for index in rebuilt.into_iter().chain(added) {
        let domain = current.bridge[index].domain.clone();
        match start_bridge(shared, current, index).await {
            Ok((domain, bridge)) => {
                running.insert(domain, bridge);
            }
            Err(error) => {
                tracing::error!(%error, "reload: a bridge could not start");
                failed.push(domain);
            }
        }
    }
    // Not running: the next reload starts them as added.
    current
        .bridge
        .retain(|section| !failed.contains(&section.domain));
}

/// Runs Jabbridge until `shutdown` resolves, then stops cleanly. With `config_path`, SIGHUP
/// reloads the configuration from it ([`reload`]).
pub async fn run(
    config: Config,
    config_path: Option<std::path::PathBuf>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let mut config = config;
    check_bridges(&config)?;
    #[cfg(unix)]
    let mut hangups = match &config_path {
        Some(_) => tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        None => None,
    };
    let systemd = Arc::new(Notifier::from_env());
    let prometheus = metrics::install();
    let upkeep = tokio::spawn(metrics::upkeep(prometheus.clone()));
    let trimmer = tokio::spawn(memory::trim());
    let store = Store::connect(&config.database.url, config.database.connections()).await?;
    store.migrate().await?;
    // This process's name on the rows it holds; alive while its heartbeat is recent.
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4());
    store.heartbeat(&owner).await?;
    let (committer, committer_task) = Committer::spawn(store.clone(), owner.clone());
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .map_err(|error| StartError::Listen {
            address: config.http.listen,
            error,
        })?;

    let (stop, stopping) = Shutdown::new();
    let http_state = Arc::new(HttpState::new(
        store.clone(),
        BTreeMap::new(),
        prometheus,
        config.http.concurrency,
    ));
    let (reloads, mut reload_requests) = mpsc::channel(4);
    let shared = Shared {
        store: store.clone(),
        committer,
        reloads,
        stopping: stopping.clone(),
        http: http_state.clone(),
        links: Links::default(),
    };
    let mut running = BTreeMap::new();
    for index in 0..config.bridge.len() {
        let (domain, bridge) = start_bridge(&shared, &config, index).await?;
        running.insert(domain, bridge);
    }

    let mut tasks = JoinSet::new();
    let watched = store.clone();
    let watching = stopping.clone();
    tasks.spawn(async move {
        watched.watch_directory(DIRECTORY_WATCH, watching).await;
    });
    tasks.spawn(heartbeat(
        store.clone(),
        owner.clone(),
        config.delivery.lease,
        stopping.clone(),
    ));
    let app = http::app(http_state, &config.http);
    let http_stopping = stopping.clone();
    let http_config = config.http.clone();
    tracing::info!(listen = %config.http.listen, "HTTP listening");
    tasks.spawn(async move {
        http::serve(listener, app, &http_config, http_stopping).await;
    });
    tasks.spawn(tell_systemd(
        systemd.clone(),
        shared.links.clone(),
        stopping.clone(),
    ));

    tokio::pin!(shutdown);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hangups.as_mut() {
                Some(hangups) => {
                    hangups.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<()>();
        tokio::select! {
            () = &mut shutdown => break,
            () = hangup => {
                let Some(path) = &config_path else { continue };
                systemd.notify("RELOADING=1");
                reload(path, &mut config, &shared, &mut running, None).await;
                systemd.notify("READY=1");
            }
            Some(request) = reload_requests.recv() => {
                let Some(path) = &config_path else {
                    let _ = request.answer.send(Err("this process was started without a config file".into()));
                    continue;
                };
                systemd.notify("RELOADING=1");
                reload(path, &mut config, &shared, &mut running, Some(request)).await;
                systemd.notify("READY=1");
            }
        }
    }
    tracing::info!("shutting down: flushing queues and closing links");
    systemd.notify("STOPPING=1\nSTATUS=flushing the queues and closing the links");
    // An admin's `reload` from now on is answered at once (the channel is closed).
    reload_requests.close();
    let _ = stop.send(true);
    let bridges = futures::future::join_all(std::mem::take(&mut running).into_iter().map(
        |(domain, bridge)| {
            let shared = &shared;
            async move { stop_bridge(shared, &domain, bridge).await }
        },
    ));
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async {
        bridges.await;
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!("some tasks did not stop in time; abandoning them");
        tasks.abort_all();
    }
    // The committer ends once the last gateway is gone and what was submitted is written.
    drop(shared);
    if tokio::time::timeout(SHUTDOWN_GRACE, committer_task)
        .await
        .is_err()
    {
        tracing::warn!("some writes were not committed in time; their messages are sent again");
    }
    if let Err(error) = store.forget_instances(Some(&owner), 0).await {
        tracing::warn!(%error, "cannot remove this instance's heartbeat");
    }
    store.close().await;
    upkeep.abort();
    trimmer.abort();
    tracing::info!("stopped");
    Ok(())
}

/// How often the cached registrations and identities are checked against the database's
/// `directory_version` (changes by the CLI or another instance).
const DIRECTORY_WATCH: Duration = Duration::from_millis(100);

/// Keeps this instance's heartbeat fresh, so that no other instance takes over its messages.
async fn heartbeat(store: Store, owner: String, lease: Duration, stopping: Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(lease / 3) => {}
            () = stopping.clone().wait() => return,
        }
        if let Err(error) = store.heartbeat(&owner).await {
            tracing::warn!(%error, "cannot record this instance's heartbeat; after delivery.lease another instance may take over its messages");
        }
    }
}

/// How long start-up waits for every link to be up or retrying before telling systemd it is
/// ready anyway.
const READY_WAIT: Duration = Duration::from_secs(30);
/// How often systemd's status line is brought up to date.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Tells systemd (when it asked) that Jabbridge is ready once every component link is up or
/// retrying, then keeps its status line and watchdog fed until shutdown.
async fn tell_systemd(systemd: Arc<Notifier>, links: Links, stopping: Shutdown) {
    let status = || {
        let links = lock_links(&links).clone();
        let up = links.iter().filter(|(_, link)| link.is_connected()).count();
        let down: Vec<&str> = links
            .iter()
            .filter(|(_, link)| !link.is_connected())
            .map(|(domain, _)| domain.as_str())
            .collect();
        match down.is_empty() {
            true => format!("STATUS={up} of {} component links up", links.len()),
            false => format!(
                "STATUS={up} of {} component links up; retrying {}",
                links.len(),
                down.join(", ")
            ),
        }
    };
    let settled = async {
        while !lock_links(&links)
            .iter()
            .all(|(_, link)| link.is_connected() || link.last_error().is_some())
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = tokio::time::timeout(READY_WAIT, settled) => {}
        () = stopping.clone().wait() => return,
    }
    systemd.notify(&format!("READY=1\n{}", status()));
    let watchdog = systemd.watchdog_every();
    let tick = watchdog.map_or(STATUS_EVERY, |every| every.min(STATUS_EVERY));
    let mut since_status = Duration::ZERO;
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = stopping.clone().wait() => return,
        }
        since_status += tick;
        if watchdog.is_some() {
            systemd.notify("WATCHDOG=1");
        }
        if since_status >= STATUS_EVERY {
            since_status = Duration::ZERO;
            systemd.notify(&status());
        }
    }
}

/// Runs a bridge's `run`, restarting it with backoff if it fails, until shutdown.
async fn run_bridge(bridge: Arc<dyn Bridge>, stopping: Shutdown) {
    let mut failures = 0;
    loop {
        match bridge.run(stopping.clone()).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, "bridge stopped with an error; restarting");
                failures += 1;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff(failures, Duration::from_secs(60))) => {}
            () = stopping.clone().wait() => return,
        }
    }
}
