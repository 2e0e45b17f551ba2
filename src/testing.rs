//! An in-process harness for the gateway's own decisions: a [`Gateway`] wired as `app.rs`
//! wires it (sender lanes, committer, durable queues, a real bridge) but with a link over a
//! channel and SQLite in memory, so that tests hand it stanzas and assert the exact stanzas
//! that come back, in milliseconds. Interop with real servers stays in `tests/integration`.
//!
//! Timers run on tokio's paused clock (`#[tokio::test(start_paused = true)]`), held still
//! while the harness lives: time moves only when a test calls [`Harness::advance`], so a
//! 30 s call timeout or a rate limit's refill is tested in no time and never races the
//! database thread. Waiting for a stanza is bounded in real time instead.

use std::sync::Arc;
use std::time::Duration;

use jabbridge_sdk::{Bridge, Settings, Shutdown};
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use xmpp_parsers::minidom::Element;

use crate::access::Access;
use crate::config::{CallLimits, DeliveryConfig, RateLimit, RoomsConfig, SpendLimit};
use crate::delivery::commit::Committer;
use crate::gateway::core_link::CoreLink;
use crate::gateway::{Gateway, Policy, Wiring};
use crate::store::Store;
use crate::xmpp::session::{self, Outgoing};

/// The component's namespace, which every stanza handed in gets.
pub const NS: &str = "jabber:component:accept";
/// The bridge's domain in the harness.
pub const DOMAIN: &str = "echo.test";

/// How the harness's gateway is set up.
pub struct Options {
    /// `allow`.
    pub allow: Vec<String>,
    /// `admins`.
    pub admins: Vec<String>,
    /// `rate_limit`.
    pub rate_limit: Option<RateLimit>,
    /// `concurrency` and `call_timeout`.
    pub calls: CallLimits,
    /// `spend_limit`.
    pub spend: Option<SpendLimit>,
    /// The bridge; the echo bridge (prefix `> `) when `None`.
    pub bridge: Option<Arc<dyn Bridge>>,
    /// `[bridge.rooms]`.
    pub rooms: RoomsConfig,
    /// The database URL; SQLite in memory when `None`. A file lets a test start a second
    /// gateway on what the first left, as a restart would.
    pub database: Option<String>,
    /// More keys of the echo bridge's section (when `bridge` is `None`).
    pub echo: Vec<(&'static str, serde_json::Value)>,
    /// The database's connections (1 unless `database` names a file).
    pub connections: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            allow: vec!["test".into()],
            admins: vec!["admin@test".into()],
            rate_limit: None,
            calls: CallLimits::default(),
            spend: None,
            bridge: None,
            database: None,
            rooms: RoomsConfig::default(),
            echo: Vec::new(),
            connections: 1,
        }
    }
}

/// A running gateway with a channel for a link.
pub struct Harness {
    /// The gateway under test.
    pub gateway: Arc<Gateway>,
    incoming: mpsc::Sender<Element>,
    outgoing: mpsc::Receiver<Outgoing>,
    _stop: watch::Sender<bool>,
    gateway_task: JoinHandle<()>,
    /// The rooms' upkeep (cursors, retention), as `app.rs` runs it.
    upkeep: JoinHandle<()>,
    /// Dropped to let go of the clock (see [`hold_the_clock`]).
    _clock: std::sync::mpsc::Sender<()>,
}

/// Keeps tokio's paused clock from advancing by itself while the returned sender lives: a
/// running blocking task stops the current-thread runtime from auto-advancing, so only
/// [`Harness::advance`] moves time.
fn hold_the_clock() -> std::sync::mpsc::Sender<()> {
    let (hold, held) = std::sync::mpsc::channel::<()>();
    tokio::task::spawn_blocking(move || {
        // Returns once the sender is dropped.
        let _ = held.recv();
    });
    hold
}

/// Sleeps in real time (on the blocking pool, which the paused clock does not touch): for
/// work on the database's thread to finish.
pub async fn real_sleep(wait: Duration) {
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(wait)).await;
}

/// How long [`Harness::next`] waits for a stanza, in real time, in steps.
const STEP: Duration = Duration::from_millis(10);
const STEPS: usize = 500;

impl Harness {
    /// A gateway on a fresh in-memory database.
    pub async fn start(options: Options) -> Harness {
        let clock = hold_the_clock();
        // One connection: an in-memory SQLite database lives as long as its connection.
        let url = options.database.as_deref().unwrap_or("sqlite::memory:");
        // The clock jumps when a test moves it: a statement waiting for the one connection
        // meanwhile must not time out.
        let year = Duration::from_secs(365 * 86_400);
        let store = Store::connect_waiting(&SecretString::from(url), options.connections, year)
            .await
            .expect("SQLite");
        store.migrate().await.expect("migrations");
        let (committer, _committing) =
            Committer::spawn(store.clone(), format!("harness-{}", uuid::Uuid::new_v4()));
        let (stop, stopping) = Shutdown::new();
        let (link, outgoing) = session::detached(1024);
        let (core_link, core_requests) = CoreLink::new(DOMAIN, store.clone());
        let core = jabbridge_sdk::plumbing::core(DOMAIN, Arc::new(core_link), None);
        let bridge = match options.bridge {
            Some(bridge) => bridge,
            None => {
                let build = crate::bridges::find("echo").expect("the echo bridge");
                let mut keys = serde_json::Map::new();
                keys.insert("prefix".into(), "> ".into());
                for (key, value) in options.echo {
                    keys.insert(key.into(), value);
                }
                build(&Settings::new(keys), core).expect("echo")
            }
        };
        let gateway = Gateway::new(
            DOMAIN.into(),
            bridge,
            Wiring {
                link,
                store,
                committer,
                shutdown: stopping.clone(),
            },
            Policy {
                access: Access::new(DOMAIN, &options.allow, &options.admins, options.rate_limit),
                delivery: DeliveryConfig::default(),
                calls: options.calls,
                spend: options.spend,
                rooms: options.rooms,
                reload: None,
                step_key: [7; 32],
            },
        );
        // As at start-up: what an earlier gateway left goes to its lanes first.
        crate::delivery::recovery::recover(&gateway.delivery, true).await;
        let (incoming, receiver) = mpsc::channel(64);
        let gateway_task = tokio::spawn(gateway.clone().run(receiver, core_requests));
        // As at start-up, once the gateway serves the bridge's events.
        crate::gateway::sessions::start_all(&gateway).await;
        let upkeep = tokio::spawn({
            let gateway = gateway.clone();
            async move {
                let every = Duration::from_secs(10);
                tokio::join!(
                    crate::gateway::rooms::maintain(gateway.clone(), stopping.clone()),
                    crate::gateway::sessions::watch(gateway, every, stopping),
                );
            }
        });
        Harness {
            gateway,
            incoming,
            outgoing,
            _stop: stop,
            gateway_task,
            upkeep,
            _clock: clock,
        }
    }

    /// Hands the gateway `xml` as if the server had sent it (the component namespace is
    /// added to its top element).
    pub async fn receive(&self, xml: &str) {
        let name_end = xml.find([' ', '>', '/']).expect("an element");
        let namespaced = format!("{} xmlns='{NS}'{}", &xml[..name_end], &xml[name_end..]);
        let element: Element = namespaced
            .parse()
            .unwrap_or_else(|error| panic!("{namespaced}: {error}"));
        self.incoming.send(element).await.expect("the gateway runs");
    }

    /// The next stanza the gateway sends, marked written as a link would; fails after 5 s
    /// of real time.
    pub async fn next(&mut self) -> Element {
        for _ in 0..STEPS {
            tokio::select! {
                outgoing = self.outgoing.recv() => {
                    return outgoing.expect("the link handle is alive").written();
                }
                () = real_sleep(STEP) => {}
            }
        }
        panic!("no stanza within {:?}", STEP * STEPS as u32);
    }

    /// Moves the clock on by `wait`, firing the timers due meanwhile.
    pub async fn advance(&self, wait: Duration) {
        tokio::time::advance(wait).await;
    }

    /// Asserts that the gateway sends nothing while the clock moves on by `wait` (and a
    /// moment of real time passes, for work in flight on the database thread).
    pub async fn nothing_for(&mut self, wait: Duration) {
        self.advance(wait).await;
        for _ in 0..20 {
            tokio::select! {
                Some(outgoing) = self.outgoing.recv() => {
                    panic!("unexpected stanza: {}", String::from(&outgoing.written()));
                }
                () = real_sleep(STEP) => {}
            }
        }
    }

    /// Registers `user` (a bare JID) with the XEP-0077 form, and takes the answers: the
    /// gateway's subscription request and the iq result.
    pub async fn register(&mut self, user: &str) {
        self.receive(&format!(
            "<iq type='set' from='{user}/r' to='{DOMAIN}' id='reg'>\
             <query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
             <field var='prefix'><value/></field></x></query></iq>"
        ))
        .await;
        // The subscription request goes out before the iq result.
        let subscribe = self.next().await;
        assert_eq!(subscribe.attr("type"), Some("subscribe"), "{subscribe:?}");
        let result = self.next().await;
        assert_eq!(result.attr("type"), Some("result"), "{result:?}");
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.gateway_task.abort();
        self.upkeep.abort();
    }
}

/// The defined condition of an error stanza, e.g. `forbidden`.
pub fn condition(stanza: &Element) -> Option<String> {
    let error = stanza.children().find(|child| child.name() == "error")?;
    error
        .children()
        .find(|child| child.name() != "text")
        .map(|child| child.name().to_owned())
}

/// The `type` of an error stanza's `<error/>`, e.g. `auth`.
pub fn error_type(stanza: &Element) -> Option<String> {
    let error = stanza.children().find(|child| child.name() == "error")?;
    error.attr("type").map(str::to_owned)
}

/// The body of a message.
pub fn body(stanza: &Element) -> Option<String> {
    stanza
        .children()
        .find(|child| child.name() == "body")
        .map(Element::text)
}
