//! One user's connection to one IRC server, as a task of its own: it connects (and
//! reconnects with backoff and jitter, rejoining every channel), takes the bridge's
//! [`Command`]s, paces what it writes with a token bucket (flood control that never holds up
//! another user), and turns what the server says into room events and messages for the
//! core, for the channels it reports ([`crate::state`]) and for itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};

use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use jabbridge_sdk::{
    ChatState, Core, ForeignId, IncomingMessage, JoinError, Joined, MessageId, Posted, ReplyTo,
    RoomActionError, RoomEvent, RoomId, RoomListing, RoomMessage, SendError, Subject, UserJid,
    UserStatus,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use crate::address::{Addressing, CHANNEL_PREFIXES};
use crate::config::Flood;
use crate::config::Tls;
use crate::connection::{
    Caps, ClientAuth, ConnectError, Connection, ReadHalf, Registration, Target, WANTED_CAPS,
    WriteHalf,
};
use crate::mailbox;
use crate::reactions;
use crate::reader::LineReader;
use crate::state::{self, Channel, Member, Network, ServerTraits};
use crate::text::{self, Said};
use crate::typing::{self, Typing};
use crate::wire::{self, Message};

/// What the bridge asks of a user's connection.
#[derive(Debug)]
pub enum Command {
    /// Join a channel; the answer comes once the server listed its members.
    Join {
        /// The channel.
        channel: String,
        /// The room it is.
        room: RoomId,
        /// Its key, if the user gave one.
        key: Option<SecretString>,
        /// The answer.
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
    /// Leave a channel.
    Part {
        /// The channel.
        channel: String,
    },
    /// Say something in a channel for the user.
    Post {
        /// The channel.
        channel: String,
        /// The user's text.
        text: String,
        /// The post's id, for the echo.
        id: MessageId,
        /// The message it replies to, and who said it (boxed: rare, and every command would
        /// be as large).
        reply_to: Option<Box<ReplyTo>>,
        /// The answer: once the lines are written, or echoed with `echo-message`.
        reply: oneshot::Sender<Result<Posted, SendError>>,
    },
    /// Say something to a nick (a query), or to a channel without a room (a raw target).
    Say {
        /// The nick.
        target: String,
        /// The user's text.
        text: String,
        /// The answer, once the lines are written.
        reply: oneshot::Sender<Result<(), SendError>>,
    },
    /// Send a command as it is (a topic, a kick, a nick change, a user's raw line).
    Send {
        /// The command.
        command: String,
        /// Its parameters.
        params: Vec<String>,
        /// The answer, once it is written.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// List a channel's members again and report the difference (this connection now
    /// reports the channel, and the one that did went down).
    Resync {
        /// The channel, folded.
        channel: String,
    },
    /// Connect with this from the next attempt on (the user changed their settings); a
    /// connection that is down tries again at once.
    Reconfigure(Box<Setup>),
    /// Show the user away with this text (`AWAY`), or back with `None`; kept across
    /// reconnections.
    Away(Option<String>),
    /// Say how the connection stands (the `irc-connection-info` command).
    Info {
        /// The answer, in words.
        reply: oneshot::Sender<String>,
    },
    /// Quit and connect again at once, with the settings the user has now; the rooms are
    /// joined again (the `irc-reconnect` command).
    Reconnect {
        /// Told once the quit is under way.
        reply: oneshot::Sender<()>,
    },
    /// Quit the server and leave every room, until the user joins one again or writes to
    /// someone on it (the `irc-disconnect` command).
    Disconnect {
        /// Told once the rooms are left and the quit written.
        reply: oneshot::Sender<()>,
    },
    /// Read a channel's lines said before a time (`CHATHISTORY BEFORE`; the latest with
    /// `None`), for a MAM query that reached the start of the core's archive.
    History {
        /// The channel.
        channel: String,
        /// Lines said before then.
        before: Option<SystemTime>,
        /// At most this many (and at most what the server allows).
        limit: u32,
        /// The lines, or why there are none to be had now.
        reply: oneshot::Sender<Result<Vec<RoomMessage>, String>>,
    },
    /// List the server's channels (`LIST`), at most [`MAX_LISTED`] of them.
    List {
        /// The answer, once the list ended (or the most were read).
        reply: oneshot::Sender<Vec<RoomListing>>,
    },
    /// Tell a channel or a nick that the user types, or stopped (`+typing`, where the
    /// server carries client tags); dropped when it would wait behind other lines.
    Typing {
        /// The channel or nick.
        target: String,
        /// What the user does.
        state: ChatState,
    },
    /// Set the user's reactions to a channel's message (`+draft/react` and `+draft/unreact`,
    /// where the server carries client tags).
    React {
        /// The channel.
        channel: String,
        /// The message's `msgid`.
        message: String,
        /// The user's reactions to it now, in full (boxed: a `Vec` would make every command,
        /// and so every connection's task, 8 bytes larger).
        emojis: Box<[String]>,
        /// The answer, once the last of its lines is written.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Retract one of the user's messages in a channel (`REDACT`, where the server offers
    /// `draft/message-redaction`).
    Redact {
        /// The channel.
        channel: String,
        /// The message's `msgid`.
        message: String,
        /// The answer, once the server took it (or refused it).
        reply: oneshot::Sender<Result<(), RoomActionError>>,
    },
    /// Ask a nick a CTCP question: what software they use (`VERSION`), or whether they are
    /// there (`PING`).
    Ask {
        /// The nick.
        nick: String,
        /// `VERSION` or `PING`.
        question: &'static str,
        /// Their reply's text, once it comes (dropped unanswered after [`ASKED`] more
        /// questions).
        reply: oneshot::Sender<String>,
    },
}

/// The most CTCP questions of a connection waiting for their answer: a newer one drops the
/// oldest.
const ASKED: usize = 8;

/// A `LIST` being read: the channels so far, who waits for them, and since when. Boxed in
/// the connection: rarely one.
type Listing = (Vec<RoomListing>, oneshot::Sender<Vec<RoomListing>>, Instant);

/// A CTCP question waiting for its answer: the nick asked (folded), the question, and who
/// waits.
type Asked = (String, &'static str, oneshot::Sender<String>);

/// The most channels a `LIST` answer keeps.
pub const MAX_LISTED: usize = 1000;

/// The most lines waiting for their turn (flood control): a post beyond it is refused.
const MAX_QUEUED: usize = 200;
/// The most lines one message may make.
const MAX_POST_LINES: usize = 100;
/// The most posts per channel waiting for their echo.
const MAX_ECHOES: usize = 32;
/// After this much silence from the server it is pinged…
const SILENCE: Duration = Duration::from_secs(90);
/// …and after this much the connection counts as lost.
const DEAD: Duration = Duration::from_secs(180);
/// How long one write may take before the connection counts as lost.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a join, an echo or a LIST may wait for the server.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// After the server refused the login (SASL), a join tries again at once when the last
/// attempt is at least this old (the user may have fixed the account meanwhile); a join
/// sooner gets the refusal. Other commands wait for the backoff.
const RETRY_REFUSED_ON_JOIN: Duration = Duration::from_secs(3);
/// The most lines asked for with `CHATHISTORY LATEST` when a channel is joined.
const HISTORY_ON_JOIN: u32 = 100;

/// Writes `bytes`, within [`WRITE_TIMEOUT`] (a server that stops reading must not wedge the
/// connection's task).
async fn write(writer: &mut WriteHalf, bytes: &[u8]) -> std::io::Result<()> {
    tokio::time::timeout(WRITE_TIMEOUT, writer.write_all(bytes))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "the server stopped reading")
        })?
}

/// How every connection to one network is made and paced: built once per network and
/// shared by its users' connections (a copy per user cost ~0.4 KiB of each one's task and
/// a handful of strings).
#[derive(Debug)]
pub struct Reach {
    /// The network's configured name.
    pub network: String,
    /// Where to connect (without a client certificate: those are the user's).
    pub target: Target,
    /// Flood control.
    pub flood: Flood,
    /// How long registration may take.
    pub connect_timeout: Duration,
    /// The longest wait between attempts.
    pub reconnect_max: Duration,
    /// How long a connection with no channel stays open after the last private message.
    pub idle_close: Duration,
    /// How addresses are written.
    pub addressing: Addressing,
    /// What `/metrics` counts of the server.
    pub meters: crate::meters::Meters,
}

/// How one user's connection to a network is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The network's part, shared.
    pub reach: Arc<Reach>,
    /// The user's client certificate (SASL EXTERNAL), if any.
    pub certificate: Option<Arc<ClientAuth>>,
    /// Who to register as.
    pub registration: Registration,
    /// Where the user's NickServ password goes and the password, sent after registration
    /// when SASL did not log in.
    pub identify: Option<(String, SecretString)>,
    /// Raw commands to send on connecting, after logging in and before joining.
    pub after_connect: Vec<String>,
    /// The encoding of what is written, and of what is read when it is not UTF-8 (`None`:
    /// UTF-8, reading Latin-1).
    pub encoding: Option<&'static encoding_rs::Encoding>,
    /// Channels of an encoding of their own (lower-cased), in place of `encoding` there.
    pub channel_encodings: Vec<(String, &'static encoding_rs::Encoding)>,
    /// Channels to join on connecting.
    pub autojoin: Vec<String>,
    /// Whether the user chose the nick in their settings (else it came from a join or the
    /// network's template, and a new setup keeps the one in use).
    pub nick_chosen: bool,
}

/// Connects and registers as `setup` says: to the network's target, with the user's
/// certificate where they have one.
async fn connect(setup: &Setup) -> Result<Connection, ConnectError> {
    let reach = &setup.reach;
    let own;
    let target = match &setup.certificate {
        Some(certificate) => {
            own = Target {
                client: Some(certificate.clone()),
                ..reach.target.clone()
            };
            &own
        }
        None => &reach.target,
    };
    Connection::connect(target, &setup.registration, reach.connect_timeout).await
}

/// The channels a connection is in, folded → as spelled: a short list, exactly as long as
/// it needs (a user is in a few; a hash map's smallest table has four slots, ~220 bytes).
#[derive(Debug, Default)]
struct InChannels(Vec<(String, Option<String>)>);

impl InChannels {
    fn position(&self, folded: &str) -> Option<usize> {
        self.0.iter().position(|(key, _)| key == folded)
    }

    fn contains_key(&self, folded: &str) -> bool {
        self.position(folded).is_some()
    }

    /// The channel's name as spelled.
    fn get(&self, folded: &str) -> Option<&String> {
        self.position(folded).map(|at| {
            let (key, spelled) = &self.0[at];
            spelled.as_ref().unwrap_or(key)
        })
    }

    fn insert(&mut self, folded: String, spelled: String) {
        let spelled = (spelled != folded).then_some(spelled);
        match self.position(&folded) {
            Some(at) => self.0[at].1 = spelled,
            None => {
                self.0.reserve_exact(1);
                self.0.push((folded, spelled));
            }
        }
    }

    /// Forgets the channel; returns its name as spelled, if it was there.
    fn remove(&mut self, folded: &str) -> Option<String> {
        let (key, spelled) = self.0.swap_remove(self.position(folded)?);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(spelled.unwrap_or(key))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(key, _)| key)
    }

    fn values(&self) -> impl Iterator<Item = &String> {
        self.0
            .iter()
            .map(|(key, spelled)| spelled.as_ref().unwrap_or(key))
    }

    /// Folded → as spelled.
    fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0
            .iter()
            .map(|(key, spelled)| (key, spelled.as_ref().unwrap_or(key)))
    }

    fn into_keys(self) -> impl Iterator<Item = String> {
        self.0.into_iter().map(|(key, _)| key)
    }
}

/// What a connection assumes of a server before one registered: one copy for all.
static UNKNOWN_SERVER: LazyLock<Arc<ServerTraits>> = LazyLock::new(Arc::default);

/// What the server named `name` says of itself in `isupport`, with the defaults where it
/// says nothing.
fn server_traits(name: String, isupport: &HashMap<String, String>) -> ServerTraits {
    let defaults = ServerTraits::default();
    ServerTraits {
        name,
        prefix_modes: state::prefix_modes(isupport.get("PREFIX").map(String::as_str)),
        chanmodes: match isupport.get("CHANMODES") {
            Some(modes) => {
                let mut lists = modes.split(',').map(str::to_owned);
                std::array::from_fn(|_| lists.next().unwrap_or_default())
            }
            None => ["beI".into(), "k".into(), "l".into(), "imnpst".into()],
        },
        chantypes: isupport
            .get("CHANTYPES")
            .cloned()
            .unwrap_or(defaults.chantypes),
        statusmsg: isupport
            .get("STATUSMSG")
            .cloned()
            .unwrap_or(defaults.statusmsg),
        channellen: isupport
            .get("CHANNELLEN")
            .and_then(|value| value.parse().ok())
            .filter(|&longest: &usize| longest > 0),
        // 0: no maximum.
        history_max: isupport
            .get("CHATHISTORY")
            .and_then(|value| value.parse::<u32>().ok())
            .map(|most| {
                if most == 0 {
                    HISTORY_ON_JOIN
                } else {
                    most.min(HISTORY_ON_JOIN)
                }
            }),
        whox: isupport.contains_key("WHOX"),
    }
}

/// A channel's members being read after our join: its NAMES, then its WHO.
enum Reading {
    /// `353` lines, up to the `366`.
    Names(Vec<Member>),
    /// `352`/`354` lines, up to the `315` or [`WHO_TIMEOUT`] after `since`.
    Who {
        said: Vec<state::Who>,
        /// Whether what they change is reported (the room showed the members already: a
        /// rejoin).
        told: bool,
        since: Instant,
    },
}

/// How long a join waits for the end of its WHO before it goes on without it (a server
/// that does not answer WHO, or answers it slowly under load).
pub(crate) const WHO_TIMEOUT: Duration = Duration::from_secs(10);

/// A join waiting for the server's answer.
struct PendingJoin {
    room: RoomId,
    reply: oneshot::Sender<Result<Joined, JoinError>>,
    since: Instant,
}

/// A post waiting for its echo (`echo-message`): the lines still to come back, matched by
/// their text.
struct PendingEcho {
    id: MessageId,
    text: String,
    lines: VecDeque<String>,
    /// Its number, when its lines went out labelled (`labeled-response`: `label=N.i` for
    /// its line `i`): the server's answers then say which post they are about.
    label: Option<u64>,
    /// The first line's id and time, which the reflection carries.
    first: Option<(MessageId, Option<SystemTime>)>,
    /// The network's id of the message it replies to.
    reply_to: Option<MessageId>,
    reply: oneshot::Sender<Result<Posted, SendError>>,
    since: Instant,
}

/// A private message written to a nick, waiting for the server to show it took it: the
/// answer to the `PING` written after it (the server handles a connection's lines in
/// order), or an error about the nick before that (401 no such nick).
struct PendingSay {
    /// The `PING`'s token.
    token: String,
    /// The nick (or, for a `REDACT`, the channel), folded.
    target: String,
    reply: Waiting,
    since: Instant,
    /// The server's refusal, once one came: the answer at the PONG.
    refused: Option<String>,
}

/// Who waits for a confirmation: a private message's sender, or a retraction's.
enum Waiting {
    Said(oneshot::Sender<Result<(), SendError>>),
    Redacted(oneshot::Sender<Result<(), RoomActionError>>),
}

impl PendingSay {
    /// Tells its sender: the server's refusal if one came, else `otherwise`.
    fn answer(self, otherwise: Result<(), SendError>) {
        match self.reply {
            Waiting::Said(reply) => {
                let answer = match self.refused {
                    Some(reason) => Err(SendError::Permanent { reason }),
                    None => otherwise,
                };
                let _ = reply.send(answer);
            }
            Waiting::Redacted(reply) => {
                let answer = match (self.refused, otherwise) {
                    (Some(reason), _) => Err(RoomActionError::Forbidden(reason)),
                    (None, Ok(())) => Ok(()),
                    (None, Err(error)) => Err(RoomActionError::Unavailable(error.to_string())),
                };
                let _ = reply.send(answer);
            }
        }
    }
}

/// A batch open on the connection that matters to us.
enum Batch {
    /// `chathistory` lines answering a join: history, reported to the room.
    History,
    /// `chathistory` lines answering a [`Command::History`]: collected for it.
    Fetched,
    /// `labeled-response`: the label its lines answer.
    Label(String),
}

/// A [`Command::History`] waiting for its batch.
struct Fetch {
    /// The channel, folded.
    channel: String,
    /// The batch that answers it, once opened.
    batch: Option<String>,
    lines: Vec<RoomMessage>,
    /// At most this many lines are kept.
    limit: usize,
    reply: oneshot::Sender<Result<Vec<RoomMessage>, String>>,
    since: Instant,
}

/// Numerics that refuse a private message to a nick: no such nick or channel (401), cannot
/// send (404), the user accepts messages only from registered users (486, 492, 531 on some
/// servers).
const REFUSING_NUMERICS: &[&str] = &["401", "404", "486", "492", "531"];

/// A line waiting for its turn (flood control), and who to tell when it is written.
struct Queued {
    /// The line as written: in the user's encoding for the server, if not UTF-8.
    line: Vec<u8>,
    done: Option<Done>,
}

enum Done {
    Posted(oneshot::Sender<Result<Posted, SendError>>),
    Said(oneshot::Sender<Result<(), SendError>>),
    Sent(oneshot::Sender<Result<(), String>>),
}

/// What [`Client::serve`] tells the user first, from [`Client::adopt`].
struct Adopted {
    /// The user's status line: connected, and as which account.
    status: String,
    /// The server's notices and MOTD, on the first connection only.
    greeting: Option<String>,
    /// The nick before this connection (the one asked for, or the last connection's).
    previous: String,
    /// Whether `previous` was still ours in the shared state.
    still_ours: bool,
}

/// What woke a served connection up.
enum Event {
    /// A line from the server, the end of its stream, or a read error.
    Line(std::io::Result<Option<crate::reader::Line>>),
    /// The bridge stops the client.
    Stop,
    /// A command from the bridge; `None` once every handle is gone.
    Command(Option<Box<Command>>),
    /// Flood control lets queued lines go (or a deadline moved later: nothing is due).
    Flush,
    /// The connection sat idle past `idle_close`, with no channel.
    Idle,
    /// The server said nothing for a while.
    Silent,
    /// Waits to expire (answers that never came).
    Housekeeping,
}

/// Why serving a connection ended.
enum End {
    /// The user quit (or the bridge stops, or the connection sat idle).
    Quit,
    /// The connection was lost: reconnect.
    Lost(String),
}

/// A source of ids for messages the server gave none.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn made_up_id(network: &str) -> MessageId {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let count = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    MessageId::new(format!("{network}:{now:x}:{count:x}"))
}

/// The `msgid` a channel line replies to (its `+draft/reply` tag), when it names one.
fn replied_to(message: &Message) -> Option<MessageId> {
    message
        .tag(reactions::REPLY)
        .filter(|id| !id.is_empty())
        .map(MessageId::new)
}

/// Frees an emptied map's table (a map keeps its capacity otherwise).
fn shed_if_empty<K, V>(map: &mut HashMap<K, V>) {
    if map.is_empty() && map.capacity() > 0 {
        *map = HashMap::new();
    }
}

/// The time of a line (IRCv3 `server-time`), when it has one.
fn server_time(message: &Message) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(message.tag("time")?).ok()
}

/// One user's connection to one server.
pub struct Client {
    user: UserJid,
    setup: Setup,
    network: Arc<Network>,
    core: Core,
    up: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<tokio::sync::Notify>,
    commands: mailbox::Receiver<Box<Command>>,
    /// The nick the server gave us.
    nick: String,
    caps: Caps,
    account: Option<String>,
    /// The server's name and ISUPPORT, shared with the other connections to it.
    server: Arc<ServerTraits>,
    /// Whether the user got the server's greeting (MOTD) already.
    greeted: bool,
    /// The batches we read open now, by reference.
    batches: HashMap<String, Batch>,
    /// A read of a channel's older lines, waiting for the server.
    fetching: Option<Box<Fetch>>,
    /// Channels we are in (or rejoining), folded → as spelled.
    channels: InChannels,
    /// Channels being rejoined after a reconnection.
    rejoining: HashMap<String, Instant>,
    /// Channels we asked to leave.
    parting: HashSet<String>,
    pending_joins: HashMap<String, PendingJoin>,
    /// NAMES or WHO being read, per folded channel.
    names: HashMap<String, Reading>,
    echoes: HashMap<String, VecDeque<PendingEcho>>,
    /// Private messages to nicks the server has not confirmed yet, oldest first.
    confirming: VecDeque<PendingSay>,
    /// Numbers handed out so far: confirmation `PING`s' tokens, and posts' labels.
    serial: u64,
    /// A `LIST` being read, and who waits for it.
    listing: Option<Box<Listing>>,
    /// CTCP questions waiting for their answer (rarely any).
    asked: Vec<Asked>,
    queue: VecDeque<Queued>,
    tokens: f64,
    refilled: Instant,
    /// The last private message either way, or the last channel left.
    active: Instant,
    /// The user's away text, while they show away (`AWAY`).
    away: Option<String>,
    /// A join that made a refused connection try again: taken once connected.
    held: Option<Box<Command>>,
    /// When the connection in use registered.
    connected_at: SystemTime,
    /// Typing either way, while anyone types (rarely): boxed.
    typing: Option<Box<Typing>>,
}

impl Client {
    /// A connection for `user`, not started: [`Client::run`] it in a task. Returns the
    /// handle others use.
    pub fn new(
        user: UserJid,
        setup: Setup,
        network: Arc<Network>,
        core: Core,
    ) -> (Self, state::ClientHandle) {
        let (sender, commands) = mailbox::channel();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(tokio::sync::Notify::new());
        let handle = state::ClientHandle {
            commands: sender,
            up: up.clone(),
            stop: stop.clone(),
        };
        let nick = setup.registration.nick.clone();
        let burst = f64::from(setup.reach.flood.burst);
        let client = Self {
            user,
            setup,
            network,
            core,
            up,
            stop,
            commands,
            nick,
            caps: Caps::default(),
            account: None,
            server: UNKNOWN_SERVER.clone(),
            greeted: false,
            batches: HashMap::new(),
            fetching: None,
            channels: InChannels::default(),
            rejoining: HashMap::new(),
            parting: HashSet::new(),
            pending_joins: HashMap::new(),
            names: HashMap::new(),
            echoes: HashMap::new(),
            confirming: VecDeque::new(),
            serial: 0,
            listing: None,
            asked: Vec::new(),
            queue: VecDeque::new(),
            tokens: burst,
            refilled: Instant::now(),
            active: Instant::now(),
            away: None,
            held: None,
            connected_at: SystemTime::now(),
            typing: None,
        };
        (client, handle)
    }

    /// Connects, serves, reconnects, until told to quit. The client is boxed: an `async fn`
    /// taking it by value would keep it twice in its future (as argument and as local).
    pub async fn run(mut self: Box<Self>) {
        let mut failures: u32 = 0;
        loop {
            // Boxed: registration's state is large and lives only while connecting.
            let attempt = Box::pin(connect(&self.setup));
            // Commands wait while connecting, except a quit.
            let stop = self.stop.clone();
            let mut refused = false;
            let mut was_up = false;
            // Taken apart in a scope of its own: the registered connection (~240 bytes) is
            // not kept in the task while it is served.
            let adopted = {
                let connected = tokio::select! {
                    connected = attempt => connected,
                    () = stop.notified() => break,
                };
                match connected {
                    Ok(connection) => Ok(self.adopt(connection)),
                    Err(error) => {
                        refused = matches!(error, ConnectError::Sasl(_));
                        Err(error.to_string())
                    }
                }
            };
            let end = match adopted {
                Ok((writer, reader, adopted)) => {
                    failures = 0;
                    was_up = true;
                    self.setup.reach.meters.connections.increment(1.0);
                    let end = self.serve(writer, reader, adopted).await;
                    self.setup.reach.meters.connections.decrement(1.0);
                    end
                }
                Err(reason) => End::Lost(reason),
            };
            let reason = match end {
                End::Quit => break,
                End::Lost(reason) => reason,
            };
            self.went_down(&reason, refused, was_up).await;
            if let Some(held) = self.held.take() {
                self.refuse(*held, &reason);
            }
            let attempted = Instant::now();
            // Credentials the server refused stay refused: wait the longest.
            failures = if refused {
                u32::MAX
            } else {
                failures.saturating_add(1)
            };
            let wait = backoff(failures, self.setup.reach.reconnect_max);
            tracing::info!(user = %self.user, network = %self.setup.reach.network, %reason,
                wait = ?wait, "IRC connection down; reconnecting");
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => break,
                    () = stop.notified() => {
                        self.forget().await;
                        return;
                    }
                    command = self.commands.recv() => {
                        let Some(command) = command else {
                            self.forget().await;
                            return;
                        };
                        // Taken apart before any await: a command kept across one would
                        // size every connection's task as its largest kind.
                        let disconnect = match *command {
                            Command::Reconfigure(setup) => {
                                self.reconfigure(*setup);
                                break;
                            }
                            Command::Reconnect { reply } => {
                                let _ = reply.send(());
                                break;
                            }
                            Command::Disconnect { reply } => Some(reply),
                            command @ Command::Join { .. }
                                if refused && attempted.elapsed() >= RETRY_REFUSED_ON_JOIN =>
                            {
                                self.held = Some(Box::new(command));
                                break;
                            }
                            command => {
                                self.refuse(command, &reason);
                                None
                            }
                        };
                        if let Some(reply) = disconnect {
                            Box::pin(self.leave_every_room()).await;
                            self.forget().await;
                            let _ = reply.send(());
                            return;
                        }
                    }
                }
            }
        }
        self.forget().await;
    }

    /// Answers a command while the connection is down.
    fn refuse(&mut self, command: Command, reason: &str) {
        let why = format!(
            "{} is not reachable now ({reason})",
            self.setup.reach.network
        );
        match command {
            Command::Join { reply, .. } => {
                let _ = reply.send(Err(JoinError::Unavailable(why)));
            }
            Command::Post { reply, .. } => {
                let _ = reply.send(Err(SendError::Permanent { reason: why }));
            }
            Command::Say { reply, .. } => {
                let _ = reply.send(Err(SendError::Transient {
                    reason: why,
                    retry_after: Some(Duration::from_secs(5)),
                }));
            }
            Command::Send { reply, .. } | Command::React { reply, .. } => {
                let _ = reply.send(Err(why));
            }
            Command::Redact { reply, .. } => {
                let _ = reply.send(Err(RoomActionError::Unavailable(why)));
            }
            Command::Part { channel } => {
                let folded = self.fold(&channel);
                self.channels.remove(&folded);
                self.rejoining.remove(&folded);
                self.left_channel(&folded);
            }
            Command::List { reply } => {
                let _ = reply.send(Vec::new());
            }
            // Dropped: the asker is told the connection is down.
            Command::Ask { .. } => {}
            Command::Typing { .. } => {}
            Command::History { reply, .. } => {
                let _ = reply.send(Err(why));
            }
            Command::Reconfigure(setup) => self.reconfigure(*setup),
            // Said once connected again.
            Command::Away(away) => self.away = away,
            Command::Info { reply } => {
                let _ = reply.send(format!("Not connected: {why}; it tries again by itself."));
            }
            Command::Reconnect { reply } | Command::Disconnect { reply } => {
                let _ = reply.send(());
            }
            Command::Resync { .. } => {}
        }
    }

    /// Takes a new setup for the next connection attempt, keeping the nick in use unless
    /// the user chose one.
    fn reconfigure(&mut self, mut setup: Setup) {
        if !setup.nick_chosen {
            setup.registration.nick = self.setup.registration.nick.clone();
        }
        self.setup = setup;
    }

    /// Takes the client out of the shared state: its nick, its channels, its handle.
    async fn forget(&mut self) {
        self.up.store(false, Ordering::Relaxed);
        let mut net = self.network.lock();
        let folded = net.fold(&self.nick);
        // It quit: the channels it reported (those it was leaving too) go to whoever reads
        // its QUIT first.
        for channel in self.channels.keys().chain(&self.parting) {
            net.leave_reporting(channel, &folded, &self.user);
        }
        if net.own.get(&folded) == Some(&self.user) {
            net.own.remove(&folded);
        }
        if net
            .clients
            .get(&self.user)
            .is_some_and(|client| Arc::ptr_eq(&client.up, &self.up))
        {
            net.clients.remove(&self.user);
        }
        drop(net);
        for folded in std::mem::take(&mut self.channels).into_keys() {
            self.left_channel(&folded);
        }
    }

    /// Takes the user out of a channel's shared state (and the channel, when they were the
    /// last of ours in it).
    fn left_channel(&self, folded: &str) {
        let mut net = self.network.lock();
        let own = net.fold(&self.nick);
        let empty = match net.channels.get_mut(folded) {
            Some(channel) => {
                channel.users.retain(|user| *user != self.user);
                channel.away.remove(&self.user);
                channel.members.remove(&own);
                channel.users.is_empty()
            }
            None => false,
        };
        if empty {
            net.channels.remove(folded);
        }
    }

    /// Tells each of the user's rooms that they left it: their connection closes at their
    /// word. (Its state goes with [`Client::forget`], after the quit.)
    async fn leave_every_room(&mut self) {
        let rooms: Vec<RoomId> = self
            .channels
            .keys()
            .filter_map(|folded| self.room_of(folded))
            .collect();
        let reason = format!(
            "disconnected from {}, as you asked",
            self.setup.reach.network
        );
        for room in rooms {
            let event = RoomEvent::Left {
                nick: self.nick.clone(),
                reason: Some(reason.clone()),
            };
            self.report(&room, event).await;
        }
    }

    /// The connection went down: fail what waits, hand the channels this connection
    /// reported to another, and tell the user.
    async fn went_down(&mut self, reason: &str, refused: bool, was_up: bool) {
        self.up.store(false, Ordering::Relaxed);
        self.setup.reach.meters.lost.increment(1);
        self.parting.clear();
        // Who typed is news of a connection that is gone.
        self.typing = None;
        for (_, pending) in self.pending_joins.drain() {
            let _ = pending.reply.send(Err(JoinError::Unavailable(format!(
                "the connection to {} was lost: {reason}",
                self.setup.reach.network
            ))));
        }
        if let Some(fetch) = self.fetching.take() {
            let _ = fetch
                .reply
                .send(Err(format!("the connection to IRC was lost: {reason}")));
        }
        for (_, echoes) in self.echoes.drain() {
            for echo in echoes {
                let _ = echo.reply.send(Err(SendError::Permanent {
                    reason: format!(
                        "the connection to IRC was lost before the message was sent: {reason}"
                    ),
                }));
            }
        }
        for queued in std::mem::take(&mut self.queue) {
            fail(
                queued.done,
                "the connection to IRC was lost before the message was sent",
            );
        }
        for pending in self.confirming.drain(..) {
            pending.answer(Err(SendError::Transient {
                reason: format!(
                    "the connection to IRC was lost before the server confirmed the message: \
                     {reason}"
                ),
                retry_after: Some(Duration::from_secs(5)),
            }));
        }
        if let Some((listed, reply, _)) = self.listing.take().map(|listing| *listing) {
            let _ = reply.send(listed);
        }
        self.names.clear();
        let text = format!(
            "Disconnected from {} ({reason}); reconnecting.",
            self.setup.reach.network
        );
        let status = if refused {
            UserStatus::BadCredentials(format!(
                "{} refused your login ({reason}): check your IRC settings",
                self.setup.reach.network
            ))
        } else {
            UserStatus::Unavailable(text.clone())
        };
        let _ = self.core.set_status(self.user.clone(), status).await;
        if !was_up {
            // Another failed attempt: the rooms heard it already.
            return;
        }
        // Whoever reports the channels this connection reported now lists their members
        // again: events were missed.
        let resyncs: Vec<_> = {
            let mut net = self.network.lock();
            for folded in self.channels.keys() {
                if let Some(channel) = net.channels.get_mut(folded) {
                    channel.away.insert(self.user.clone());
                }
            }
            net.drop_reporting(&self.user)
                .into_iter()
                .filter_map(|(folded, taker)| {
                    let handle = net.clients.get(&taker)?;
                    Some((handle.commands.clone(), folded))
                })
                .collect()
        };
        for (commands, channel) in resyncs {
            let _ = commands.try_send(Box::new(Command::Resync { channel }));
        }
        self.tell_rooms(&text).await;
    }

    /// Tells the user, in each of their rooms, what happened to their connection.
    async fn tell_rooms(&self, text: &str) {
        let rooms: Vec<RoomId> = {
            let net = self.network.lock();
            self.channels
                .keys()
                .filter_map(|folded| net.channels.get(folded).map(|c| c.room.clone()))
                .collect()
        };
        for room in rooms {
            let notice = RoomEvent::Notice {
                user: Some(self.user.clone()),
                text: text.to_owned(),
            };
            if let Err(error) = self.core.room_event(&room, notice).await {
                tracing::debug!(%error, "could not tell a room");
            }
        }
    }

    /// Takes in a registered connection: its nick, caps, ISUPPORT and greeting into the
    /// client, and the nick's ownership in the shared state. Returns the line halves, and
    /// what [`Client::serve`] tells the user first. Not async: what it handles is not kept in
    /// every connection's task while the connection is served.
    fn adopt(&mut self, connection: Connection) -> (WriteHalf, LineReader<ReadHalf>, Adopted) {
        let Connection {
            reader,
            writer,
            nick,
            isupport,
            caps,
            account,
            server_name,
            greeting,
        } = connection;
        let previous = std::mem::replace(&mut self.nick, nick);
        self.caps = caps;
        self.batches.clear();
        self.connected_at = SystemTime::now();
        self.account = account;
        // What ISUPPORT says is read, and shared with the other connections to the server:
        // the map itself is not kept while the connection is served (a couple of KiB per
        // connection).
        self.server = self
            .network
            .lock()
            .share_traits(server_traits(server_name, &isupport));
        let casemapping = isupport
            .get("CASEMAPPING")
            .map(|mapping| wire::CaseMapping::from_isupport(mapping));
        drop(isupport);
        let still_ours;
        {
            let mut net = self.network.lock();
            if let Some(casemapping) = casemapping {
                net.casemapping = casemapping;
            }
            let old = net.fold(&previous);
            // Whether the old nick's member is still ours: not if a ghost's quit freed the
            // nick meanwhile (a stranger may hold it now).
            still_ours = net.own.get(&old) == Some(&self.user);
            if still_ours {
                net.own.remove(&old);
            }
            let folded = net.fold(&self.nick);
            net.own.insert(folded, self.user.clone());
        }
        self.up.store(true, Ordering::Relaxed);
        let status = match &self.account {
            Some(account) => format!("Connected to {} as {account}", self.setup.reach.network),
            None => format!("Connected to {}", self.setup.reach.network),
        };
        // The server's notices and MOTD, once per connection's life, from its address; not
        // kept while the connection is served.
        let first = !std::mem::replace(&mut self.greeted, true);
        let greeting = (first && !greeting.is_empty()).then(|| {
            let text: Vec<String> = greeting.iter().map(|line| text::from_irc(line)).collect();
            text.join("\n")
        });
        let adopted = Adopted {
            status,
            greeting,
            previous,
            still_ours,
        };
        (writer, reader, adopted)
    }

    /// Serves one registered connection (its halves, from [`Client::adopt`]) until it ends.
    async fn serve(
        &mut self,
        mut writer: WriteHalf,
        mut reader: LineReader<ReadHalf>,
        adopted: Adopted,
    ) -> End {
        let Adopted {
            status,
            greeting,
            previous,
            still_ours,
        } = adopted;
        let _ = self
            .core
            .set_status(self.user.clone(), UserStatus::Connected(Some(status)))
            .await;
        // Boxed, here and below: once per connection, and as large as the rest of `serve`.
        if let Some(greeting) = greeting {
            Box::pin(self.server_says_plain(&greeting)).await;
        }
        if let Some((services, password)) = self.setup.identify.clone()
            && self.account.is_none()
        {
            let identify = format!("IDENTIFY {}", password.expose_secret());
            self.enqueue("PRIVMSG", &[&services, &identify], None);
        }
        for text in self.setup.after_connect.clone() {
            let (command, params) = wire::parse_command(&text);
            let params: Vec<&str> = params.iter().map(String::as_str).collect();
            self.enqueue(&command, &params, None);
        }
        for channel in self.setup.autojoin.clone() {
            let folded = self.fold(&channel);
            if !self.channels.contains_key(&folded) {
                self.enqueue("JOIN", &[&channel], None);
            }
        }
        if let Some(text) = self.away.clone() {
            self.say_away(Some(&text));
        }
        if !self.channels.is_empty() {
            // A reconnection: the user keeps their rooms, under the nick they have now.
            if previous != self.nick {
                Box::pin(self.renamed_self(&previous, Some(still_ours))).await;
            }
            let channels: Vec<_> = self
                .channels
                .iter()
                .map(|(folded, name)| (folded.clone(), name.clone()))
                .collect();
            for (folded, name) in channels {
                self.enqueue("JOIN", &[&name], None);
                let due = self.due();
                self.rejoining.insert(folded, due);
            }
        }
        if let Some(held) = self.held.take() {
            self.on_command(*held);
        }
        let stop = self.stop.clone();
        let mut last_read = Instant::now();
        let mut pinged = false;
        // One timer for every deadline below (flood control, idleness, silence, answers
        // that never came), set to the earliest: a timer is ~100 bytes of every
        // connection's task, and registering one costs a lock on the timer wheel, four per
        // line and per command before. It is moved only to an earlier deadline or once it
        // fired: a deadline that moved later (silence, at every line) is looked at again
        // when the timer fires early.
        let timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(timer);
        loop {
            let next_flush = self.next_flush();
            let idle = self.channels.is_empty() && self.pending_joins.is_empty();
            let idle_until =
                tokio::time::Instant::from_std(self.active + self.setup.reach.idle_close);
            let silent_until =
                tokio::time::Instant::from_std(last_read + if pinged { DEAD } else { SILENCE });
            let housekeeping = self.next_expiry().map(tokio::time::Instant::from_std);
            let wake = [next_flush, idle.then_some(idle_until), housekeeping]
                .into_iter()
                .flatten()
                .fold(silent_until, std::cmp::min);
            if timer.is_elapsed() || wake < timer.deadline() {
                timer.as_mut().reset(wake);
            }
            // The select only says what happened; it is handled after it, once its futures
            // are dropped: handlers' awaits (reading the server out after a QUIT, say) would
            // otherwise sit beside them in every connection's task.
            let event = tokio::select! {
                line = reader.next_line() => Event::Line(line),
                () = stop.notified() => Event::Stop,
                command = self.commands.recv() => Event::Command(command),
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= silent_until {
                        Event::Silent
                    } else if idle && now >= idle_until {
                        Event::Idle
                    } else if housekeeping.is_some_and(|at| at <= now) {
                        Event::Housekeeping
                    } else {
                        // Flood control lets lines go, or a deadline moved later.
                        Event::Flush
                    }
                }
            };
            match event {
                Event::Line(line) => {
                    last_read = Instant::now();
                    pinged = false;
                    self.setup.reach.meters.lines_in.increment(1);
                    let message = match line {
                        Ok(Some(line)) => match wire::parse(&line.text) {
                            Ok(message) => match self.read_again(&line, &message) {
                                Some(text) => match wire::parse(&text) {
                                    Ok(message) => message,
                                    Err(_) => continue,
                                },
                                None => message,
                            },
                            Err(_) => continue,
                        },
                        Ok(None) => return End::Lost("the server closed the connection".into()),
                        Err(error) => return End::Lost(error.to_string()),
                    };
                    if message.command == "PING" {
                        let token = message.params.first().map(String::as_str).unwrap_or("");
                        if let Ok(pong) = wire::line(&[], "PONG", &[token])
                            && let Err(error) = write(&mut writer, pong.as_bytes()).await
                        {
                            return End::Lost(error.to_string());
                        }
                        continue;
                    }
                    if message.command == "ERROR" {
                        let reason = message.params.last().cloned().unwrap_or_default();
                        return End::Lost(format!("the server said: {reason}"));
                    }
                    // Boxed: the handlers of every kind of line together are the largest
                    // state here, and would size every connection's task (~1.1 KiB each).
                    Box::pin(self.on_message(message)).await;
                }
                Event::Stop | Event::Command(None) => {
                    self.quit(&mut writer).await;
                    // Rare and large: boxed, so that it does not size every task.
                    Box::pin(self.read_out(&mut reader)).await;
                    return End::Quit;
                }
                Event::Command(Some(command)) => match *command {
                    Command::Reconnect { reply } => {
                        let _ = reply.send(());
                        self.quit(&mut writer).await;
                        Box::pin(self.read_out(&mut reader)).await;
                        return End::Lost("reconnecting, as you asked".into());
                    }
                    Command::Disconnect { reply } => {
                        // The rooms hear it first, then the server: nothing the server
                        // says after our QUIT is shown to the user as still in them.
                        Box::pin(self.leave_every_room()).await;
                        self.quit(&mut writer).await;
                        Box::pin(self.read_out(&mut reader)).await;
                        let _ = reply.send(());
                        return End::Quit;
                    }
                    command => self.on_command(command),
                },
                Event::Flush => {}
                Event::Idle => {
                    self.quit(&mut writer).await;
                    return End::Quit;
                }
                Event::Silent => {
                    if pinged {
                        return End::Lost(format!(
                            "the server said nothing for {} s",
                            DEAD.as_secs()
                        ));
                    }
                    pinged = true;
                    if let Ok(ping) = wire::line(&[], "PING", &["jabbridge"])
                        && let Err(error) = write(&mut writer, ping.as_bytes()).await
                    {
                        return End::Lost(error.to_string());
                    }
                }
                // Rare, and the largest await here: boxed.
                Event::Housekeeping => Box::pin(self.expire()).await,
            }
            if let Err(error) = self.flush(&mut writer).await {
                return End::Lost(error.to_string());
            }
        }
    }

    /// Leaves the server: `QUIT` written at once (flood control aside), what waited failed.
    async fn quit(&mut self, writer: &mut WriteHalf) {
        for queued in std::mem::take(&mut self.queue) {
            fail(
                queued.done,
                "the connection to IRC was closed before the message was sent",
            );
        }
        if let Ok(line) = wire::line(&[], "QUIT", &["Leaving"]) {
            let _ = tokio::time::timeout(Duration::from_secs(2), writer.write_all(line.as_bytes()))
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), writer.shutdown()).await;
    }

    /// After our `QUIT`: the lines the server sent before it handled it are still this
    /// connection's to report (it may hold a channel's hand up to its QUIT), up to the
    /// server's `ERROR` or the end, for at most 2 s.
    async fn read_out(&mut self, reader: &mut LineReader<ReadHalf>) {
        let until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Ok(Some(line))) = tokio::time::timeout_at(until, reader.next_line()).await {
            let Ok(message) = wire::parse(&line.text) else {
                continue;
            };
            match message.command.as_str() {
                "ERROR" => break,
                "PING" => {}
                _ => self.on_message(message).await,
            }
        }
    }

    /// When the next wait for the server's answer expires: a join's WHO after
    /// [`WHO_TIMEOUT`], the rest (a join, a rejoin, an echo, a LIST…) after
    /// [`ANSWER_TIMEOUT`].
    fn next_expiry(&self) -> Option<Instant> {
        let who = self.names.values().filter_map(|reading| match reading {
            Reading::Who { since, .. } => Some(*since + WHO_TIMEOUT),
            Reading::Names(_) => None,
        });
        let typing = self.typing.as_deref().and_then(Typing::next);
        self.oldest_wait()
            .map(|since| since + ANSWER_TIMEOUT)
            .into_iter()
            .chain(who)
            .chain(typing)
            .min()
    }

    /// The oldest wait for the server's answer (a join, a rejoin, an echo, a LIST).
    fn oldest_wait(&self) -> Option<Instant> {
        let joins = self.pending_joins.values().map(|pending| pending.since);
        let rejoins = self.rejoining.values().copied();
        let echoes = self
            .echoes
            .values()
            .filter_map(|queue| queue.front().map(|echo| echo.since));
        let listing = self.listing.as_deref().map(|(_, _, since)| *since);
        let said = self.confirming.front().map(|pending| pending.since);
        let fetch = self.fetching.as_ref().map(|fetch| fetch.since);
        joins
            .chain(rejoins)
            .chain(echoes)
            .chain(listing)
            .chain(said)
            .chain(fetch)
            .min()
    }

    /// Gives up on what waited longer than [`ANSWER_TIMEOUT`] for the server: such joins and
    /// posts fail, a rejoin that never came back takes the user out of the room, and a LIST
    /// answers with what came.
    async fn expire(&mut self) {
        let now = Instant::now();
        if self.typing.is_some() {
            self.typing_due(now).await;
        }
        let late = |since: Instant| now.saturating_duration_since(since) >= ANSWER_TIMEOUT;
        // The server joined us but did not end its WHO in time: the join is done without it.
        let unended: Vec<String> = self
            .names
            .iter()
            .filter(|(_, reading)| {
                matches!(reading, Reading::Who { since, .. }
                    if now.saturating_duration_since(*since) >= WHO_TIMEOUT)
            })
            .map(|(folded, _)| folded.clone())
            .collect();
        for folded in unended {
            self.end_of_who(&folded).await;
        }
        let joins: Vec<String> = self
            .pending_joins
            .iter()
            .filter(|(_, pending)| late(pending.since))
            .map(|(channel, _)| channel.clone())
            .collect();
        for channel in joins {
            if let Some(pending) = self.pending_joins.remove(&channel) {
                let _ = pending.reply.send(Err(JoinError::Unavailable(format!(
                    "{} did not answer the join of {channel}",
                    self.setup.reach.network
                ))));
            }
        }
        for queue in self.echoes.values_mut() {
            while queue.front().is_some_and(|echo| late(echo.since)) {
                if let Some(echo) = queue.pop_front() {
                    let _ = echo.reply.send(Err(SendError::Permanent {
                        reason: "the IRC server did not confirm the message".into(),
                    }));
                }
            }
        }
        self.echoes.retain(|_, queue| !queue.is_empty());
        // Never confirmed: sent again later (it may arrive twice rather than never).
        while self
            .confirming
            .front()
            .is_some_and(|pending| late(pending.since))
        {
            if let Some(pending) = self.confirming.pop_front() {
                pending.answer(Err(SendError::Transient {
                    reason: "the IRC server did not confirm the message".into(),
                    retry_after: Some(Duration::from_secs(5)),
                }));
            }
        }
        if self
            .fetching
            .as_ref()
            .is_some_and(|fetch| late(fetch.since))
            && let Some(fetch) = self.fetching.take()
        {
            let _ = fetch.reply.send(Err(
                "the IRC server did not answer the history asked for".into()
            ));
        }
        if self
            .listing
            .as_deref()
            .is_some_and(|(_, _, since)| late(*since))
            && let Some((listed, reply, _)) = self.listing.take().map(|listing| *listing)
        {
            let _ = reply.send(listed);
        }
        let lost: Vec<String> = self
            .rejoining
            .iter()
            .filter(|(_, since)| late(**since))
            .map(|(channel, _)| channel.clone())
            .collect();
        for folded in lost {
            self.rejoining.remove(&folded);
            let room = self.room_of(&folded);
            self.channels.remove(&folded);
            self.left_channel(&folded);
            if let Some(room) = room {
                let event = RoomEvent::Left {
                    nick: self.nick.clone(),
                    reason: Some("the channel could not be joined again".into()),
                };
                self.report(&room, event).await;
            }
        }
    }

    /// This connection's channels whose events it reports now, folded (with those it is
    /// leaving: it reports them up to its own leave line).
    fn reported_channels(&self, net: &state::Shared) -> Vec<String> {
        self.channels
            .keys()
            .chain(&self.parting)
            .filter(|folded| net.reports_in(folded, &self.user))
            .cloned()
            .collect()
    }

    fn fold(&self, name: &str) -> String {
        self.network.lock().fold(name)
    }

    fn is_channel(&self, target: &str) -> bool {
        target
            .chars()
            .next()
            .is_some_and(|c| self.server.chantypes.contains(c) || CHANNEL_PREFIXES.contains(&c))
    }

    /// When the next queued line may go; `None` when nothing waits.
    fn next_flush(&self) -> Option<tokio::time::Instant> {
        if self.queue.is_empty() {
            return None;
        }
        if self.setup.reach.flood.per_second <= 0.0 || self.tokens >= 1.0 {
            return Some(tokio::time::Instant::now());
        }
        let wait = (1.0 - self.tokens) / self.setup.reach.flood.per_second;
        Some(tokio::time::Instant::from_std(
            self.refilled + Duration::from_secs_f64(wait),
        ))
    }

    /// Tells the server the user is away with `text`, or back with `None`.
    fn say_away(&mut self, text: Option<&str>) {
        match text {
            // `AWAY` with an empty text means back: an away without words says so.
            Some(text) => {
                // One line, as IRC needs (line breaks and control characters go), of at most
                // 300 bytes (servers cut at their AWAYLEN anyway).
                let mut line = String::new();
                for c in text.chars().map(|c| if c.is_control() { ' ' } else { c }) {
                    if line.len() + c.len_utf8() > 300 {
                        break;
                    }
                    line.push(c);
                }
                let line = match line.trim() {
                    "" => "Away",
                    words => words,
                };
                self.enqueue("AWAY", &[line], None);
            }
            None => self.enqueue("AWAY", &[], None),
        }
    }

    /// Queues one line (checked by [`wire::line`]); `done` hears when it is written.
    fn enqueue(&mut self, command: &str, params: &[&str], done: Option<Done>) {
        self.enqueue_tagged(&[], command, params, done);
    }

    /// [`Client::enqueue`] with tags in front.
    fn enqueue_tagged(
        &mut self,
        tags: &[(&str, Option<&str>)],
        command: &str,
        params: &[&str],
        done: Option<Done>,
    ) {
        match wire::line(tags, command, params) {
            Ok(line) => {
                let line = self.encoded(line, params.first().copied());
                self.queue.push_back(Queued { line, done });
            }
            Err(error) => fail(done, &error.to_string()),
        }
    }

    /// The encoding of `target`'s text: its own, if the user gave it one, else the server's.
    fn encoding_of(&self, target: Option<&str>) -> Option<&'static encoding_rs::Encoding> {
        let own = target
            .filter(|_| !self.setup.channel_encodings.is_empty())
            .and_then(|target| {
                let folded = self.fold(target);
                (self.setup.channel_encodings.iter())
                    .find(|(channel, _)| self.fold(channel) == folded)
                    .map(|(_, encoding)| *encoding)
            });
        own.or(self.setup.encoding)
    }

    /// A line read again in the encoding the user chose for its target (a channel's own,
    /// else the server's), once parsed: `None` when it stands as read (UTF-8, or Latin-1
    /// where they chose none).
    fn read_again(&self, line: &crate::reader::Line, message: &Message) -> Option<String> {
        if self.setup.encoding.is_none() && self.setup.channel_encodings.is_empty() {
            return None;
        }
        let target = match message.command.as_str() {
            "PRIVMSG" | "NOTICE" | "TOPIC" | "PART" | "KICK" => message.params.first(),
            "332" => message.params.get(1),
            _ => None,
        };
        let encoding = self.encoding_of(target.map(String::as_str))?;
        if line.latin1 {
            // Latin-1 read each byte as the character of its value.
            let bytes: Vec<u8> = (line.text.chars())
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?'))
                .collect();
            return Some(wire::decode(&bytes, Some(encoding)).into_owned());
        }
        // Valid UTF-8 stays so (borrowed), but for a 7-bit encoding's text, which reads as
        // UTF-8 too and is read in it.
        match wire::decode(line.text.as_bytes(), Some(encoding)) {
            std::borrow::Cow::Owned(text) => Some(text),
            std::borrow::Cow::Borrowed(_) => None,
        }
    }

    /// `line`'s bytes as written to `target`: in the encoding of its text, if not UTF-8.
    fn encoded(&self, line: String, target: Option<&str>) -> Vec<u8> {
        match wire::encode(&line, self.encoding_of(target)) {
            std::borrow::Cow::Borrowed(_) => line.into_bytes(),
            std::borrow::Cow::Owned(bytes) => bytes,
        }
    }

    /// Writes what the flood control lets go now, in one write.
    async fn flush(&mut self, writer: &mut WriteHalf) -> std::io::Result<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let flood = self.setup.reach.flood;
        let count = if flood.per_second <= 0.0 {
            self.queue.len()
        } else {
            let now = Instant::now();
            self.tokens = self.tokens_at(now);
            self.refilled = now;
            (self.tokens.floor() as usize).min(self.queue.len())
        };
        if count == 0 {
            return Ok(());
        }
        if flood.per_second > 0.0 {
            self.tokens -= count as f64;
        }
        self.setup.reach.meters.lines_out.increment(count as u64);
        if count == 1 {
            // The usual case (a user's lines mostly go one at a time): the line as it is.
            let Some(Queued { line, done }) = self.queue.pop_front() else {
                return Ok(());
            };
            self.forget_queue_if_empty();
            write(writer, &line).await?;
            if let Some(done) = done {
                self.sent(done);
            }
            return Ok(());
        }
        let mut out = Vec::new();
        let mut done = Vec::new();
        for queued in self.queue.drain(..count) {
            out.extend_from_slice(&queued.line);
            done.extend(queued.done);
        }
        self.forget_queue_if_empty();
        write(writer, &out).await?;
        for done in done {
            self.sent(done);
        }
        Ok(())
    }

    /// Flood control's tokens at `now`: those left, refilled since, at most a burst's.
    fn tokens_at(&self, now: Instant) -> f64 {
        let flood = self.setup.reach.flood;
        let gained = now.duration_since(self.refilled).as_secs_f64() * flood.per_second;
        (self.tokens + gained).min(f64::from(flood.burst))
    }

    /// A calm connection keeps no slots for lines: a user's lines mostly go one at a time,
    /// and the slots would stay allocated for nothing.
    fn forget_queue_if_empty(&mut self) {
        if self.queue.is_empty() {
            self.queue = VecDeque::new();
        }
    }

    /// Tells whoever waits for a line that it was written.
    fn sent(&self, done: Done) {
        match done {
            Done::Posted(reply) => {
                // An id of our own: a client reusing its message ids still sees each post
                // reflected (the core takes a repeated foreign id for a repeat).
                let foreign_id = Some(made_up_id(&self.setup.reach.network));
                let _ = reply.send(Ok(Posted::Reflect { foreign_id }));
            }
            Done::Said(reply) => {
                let _ = reply.send(Ok(()));
            }
            Done::Sent(reply) => {
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// The bytes of text one `PRIVMSG` to `target` carries, once the server puts our
    /// `nick!user@host` in front (the host taken at its longest, 63 bytes).
    fn budget(&self, target: &str) -> usize {
        let source = self.nick.len() + 1 + self.setup.registration.username.len() + 1 + 1 + 63;
        wire::text_budget(source, "PRIVMSG", target)
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Join {
                channel,
                room,
                key,
                reply,
            } => {
                let folded = self.fold(&channel);
                if self.channels.contains_key(&folded) && !self.rejoining.contains_key(&folded) {
                    let joined = self.joined(&folded);
                    let _ = reply.send(joined.ok_or_else(|| {
                        JoinError::Unavailable("the channel is not known yet".into())
                    }));
                    return;
                }
                let rejoining = self.rejoining.contains_key(&folded);
                if let Some(longest) = self.server.channellen
                    && channel.len() > longest
                {
                    let _ = reply.send(Err(JoinError::NoSuchRoom(format!(
                        "{channel}: {} takes channel names of at most {longest} bytes",
                        self.setup.reach.network
                    ))));
                    return;
                }
                let pending = PendingJoin {
                    room,
                    reply,
                    // Counted from when the JOIN goes out (flood control may hold it).
                    since: self.due(),
                };
                if let Some(pending) = self.pending_joins.insert(folded, pending) {
                    let _ = pending.reply.send(Err(JoinError::Unavailable(
                        "another join of this channel came first".into(),
                    )));
                }
                // The rejoin's answer answers this join too.
                if rejoining {
                    return;
                }
                let line = match &key {
                    Some(key) => wire::line(&[], "JOIN", &[&channel, key.expose_secret()]),
                    None => wire::line(&[], "JOIN", &[&channel]),
                };
                match line {
                    Ok(line) => {
                        let line = self.encoded(line, Some(&channel));
                        self.queue.push_back(Queued { line, done: None });
                    }
                    Err(error) => {
                        if let Some(pending) = self.pending_joins.remove(&self.fold(&channel)) {
                            let _ = pending
                                .reply
                                .send(Err(JoinError::PasswordRequired(error.to_string())));
                        }
                    }
                }
            }
            Command::Part { channel } => {
                let folded = self.fold(&channel);
                if self.channels.remove(&folded).is_some() {
                    self.parting.insert(folded.clone());
                    self.left_channel(&folded);
                    self.enqueue("PART", &[&channel], None);
                }
                self.rejoining.remove(&folded);
                if self.channels.is_empty() {
                    self.active = Instant::now();
                }
            }
            Command::Post {
                channel,
                text,
                id,
                reply_to,
                reply,
            } => {
                self.typing_ended(&channel);
                let text = match &reply_to {
                    Some(to) => self.addressed(&to.nick, text),
                    None => text,
                };
                let lines = match self.lines(&channel, &text) {
                    Ok(lines) => lines,
                    Err(error) => {
                        let _ = reply.send(Err(error));
                        return;
                    }
                };
                if self.caps.contains("echo-message") {
                    let folded = self.fold(&channel);
                    let waiting = self.echoes.get(&folded).map_or(0, VecDeque::len);
                    if waiting >= MAX_ECHOES {
                        let _ = reply.send(Err(SendError::Transient {
                            reason: "too many messages wait for the IRC server".into(),
                            retry_after: Some(Duration::from_secs(5)),
                        }));
                        return;
                    }
                    let label = self.caps.contains("labeled-response").then(|| {
                        self.serial += 1;
                        self.serial
                    });
                    let replied = self.reply_tag(reply_to.as_deref());
                    for (index, line) in lines.iter().enumerate() {
                        let label = label.map(|post| format!("{post}.{index}"));
                        let label = label.as_deref().map(|label| ("label", Some(label)));
                        let replied = replied.filter(|_| index == 0);
                        match [label, replied] {
                            [Some(one), Some(other)] => self.enqueue_tagged(
                                &[one, other],
                                "PRIVMSG",
                                &[&channel, line],
                                None,
                            ),
                            [Some(tag), None] | [None, Some(tag)] => {
                                self.enqueue_tagged(&[tag], "PRIVMSG", &[&channel, line], None)
                            }
                            [None, None] => self.enqueue("PRIVMSG", &[&channel, line], None),
                        }
                    }
                    // Counted from when the last line goes out.
                    let since = self.due();
                    self.echoes
                        .entry(folded)
                        .or_default()
                        .push_back(PendingEcho {
                            id,
                            text,
                            lines: lines.into(),
                            label,
                            first: None,
                            reply_to: reply_to.map(|to| to.id),
                            reply,
                            since,
                        });
                } else {
                    let replied = self.reply_tag(reply_to.as_deref());
                    self.say_lines(&channel, &lines, replied, Done::Posted(reply));
                }
            }
            Command::Say {
                target,
                text,
                reply,
            } => {
                self.active = Instant::now();
                self.typing_ended(&target);
                match self.lines(&target, &text) {
                    Ok(lines) if self.is_channel(&target) => {
                        self.say_lines(&target, &lines, None, Done::Said(reply));
                    }
                    Ok(lines) => {
                        for line in &lines {
                            self.enqueue("PRIVMSG", &[&target, line], None);
                        }
                        let folded = self.fold(&target);
                        self.confirm("said", folded, Waiting::Said(reply));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(error));
                    }
                }
            }
            Command::Typing { target, state } => self.type_to(&target, state),
            Command::React {
                channel,
                message,
                emojis,
                reply,
            } => self.react(&channel, &message, &emojis, reply),
            Command::Redact {
                channel,
                message,
                reply,
            } => self.redact(&channel, &message, reply),
            Command::Send {
                command,
                params,
                reply,
            } => {
                let params: Vec<&str> = params.iter().map(String::as_str).collect();
                self.enqueue(&command, &params, Some(Done::Sent(reply)));
            }
            Command::Reconfigure(setup) => self.reconfigure(*setup),
            Command::History {
                channel,
                before,
                limit,
                reply,
            } => self.fetch(&channel, before, limit, reply),
            Command::Ask {
                nick,
                question,
                reply,
            } => {
                // A PING carries a token that its answer repeats.
                let asked = match question {
                    "PING" => format!(
                        "PING {}",
                        self.connected_at.elapsed().unwrap_or_default().as_millis()
                    ),
                    other => other.to_owned(),
                };
                let asked = format!("{}{asked}{}", text::CTCP, text::CTCP);
                self.enqueue("PRIVMSG", &[&nick, &asked], None);
                let folded = self.fold(&nick);
                self.asked.retain(|(_, _, waiting)| !waiting.is_closed());
                if self.asked.len() >= ASKED {
                    self.asked.remove(0);
                }
                self.asked.push((folded, question, reply));
            }
            Command::List { reply } => {
                if self.listing.is_some() {
                    let _ = reply.send(Vec::new());
                    return;
                }
                self.enqueue("LIST", &[], None);
                let due = self.due();
                self.listing = Some(Box::new((Vec::new(), reply, due)));
            }
            Command::Away(away) => {
                if away != self.away {
                    self.say_away(away.as_deref());
                    self.away = away;
                }
            }
            Command::Resync { channel } => {
                if let Some(name) = self.channels.get(&channel).cloned() {
                    self.names.insert(channel, Reading::Names(Vec::new()));
                    self.enqueue("NAMES", &[&name], None);
                }
            }
            Command::Info { reply } => {
                let _ = reply.send(self.info());
            }
            // Taken by `serve`, which quits first.
            Command::Reconnect { reply } | Command::Disconnect { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// How the connection stands, in words: server, nick, account, security, since when,
    /// channels, capabilities, away.
    fn info(&self) -> String {
        let network = &self.setup.reach.network;
        let mut parts = vec![format!(
            "Connected to {network} ({}) as {}",
            if self.server.name.is_empty() {
                "?"
            } else {
                &self.server.name
            },
            self.nick
        )];
        if let Some(account) = &self.account {
            parts.push(format!("logged in as {account}"));
        }
        let tls = self.setup.reach.target.tls;
        let security = match tls {
            Tls::Off => "without TLS",
            Tls::SelfSigned => "over TLS (any certificate taken)",
            Tls::Verify => "over TLS (certificate verified)",
        };
        let certificate = !matches!(tls, Tls::Off) && self.setup.certificate.is_some();
        parts.push(if certificate {
            format!("{security}, with your client certificate")
        } else {
            security.to_owned()
        });
        parts.push(format!(
            "since {}",
            humantime::format_rfc3339_seconds(self.connected_at)
        ));
        let mut channels: Vec<&str> = self.channels.values().map(String::as_str).collect();
        channels.sort_unstable();
        parts.push(if channels.is_empty() {
            "in no channel".to_owned()
        } else {
            format!("in {}", channels.join(" "))
        });
        let caps: Vec<&str> = self.caps.iter().collect();
        if !caps.is_empty() {
            parts.push(format!("IRCv3: {}", caps.join(" ")));
        }
        if let Some(away) = &self.away {
            parts.push(format!("away ({away})"));
        }
        parts.join("; ") + "."
    }

    /// A user's `text` to `target` as the texts of IRC lines, or why it cannot go.
    fn lines(&self, target: &str, text: &str) -> Result<Vec<String>, SendError> {
        let lines =
            text::to_irc(text, self.budget(target)).map_err(|bad| SendError::Permanent {
                reason: format!(
                    "IRC cannot carry the control character U+{:04X}",
                    u32::from(bad)
                ),
            })?;
        if lines.is_empty() {
            return Err(SendError::Permanent {
                reason: "the message has no text IRC can carry".into(),
            });
        }
        self.room_for(lines.len())?;
        Ok(lines)
    }

    /// A reply's text as IRC people address someone, `nick: text`, unless it names them
    /// first already (`nick`, then the end, a space or punctuation no nick has), is an
    /// action (`/me`), or the message was the user's own.
    fn addressed(&self, nick: &str, text: String) -> String {
        let named = text.get(..nick.len()).is_some_and(|start| {
            self.fold(start) == self.fold(nick)
                && text[nick.len()..].chars().next().is_none_or(|next| {
                    next.is_whitespace() || matches!(next, ':' | ',' | '.' | '!' | '?' | ';' | '\'')
                })
        });
        if named || text.starts_with("/me ") || self.fold(nick) == self.fold(&self.nick) {
            return text;
        }
        format!("{nick}: {text}")
    }

    /// The `+draft/reply` tag naming the message a post replies to, where the server carries
    /// client tags and the message has the server's `msgid` (not one made up here).
    fn reply_tag<'a>(
        &self,
        reply_to: Option<&'a ReplyTo>,
    ) -> Option<(&'static str, Option<&'a str>)> {
        let id = reply_to?.id.as_str();
        let network = &self.setup.reach.network;
        let made_up = id
            .strip_prefix(network.as_str())
            .is_some_and(|rest| rest.starts_with(':'));
        (self.caps.contains("message-tags") && !made_up).then_some((reactions::REPLY, Some(id)))
    }

    /// Queues `PRIVMSG target :line` for each line, the first with tag `first` if any;
    /// `done` hears when the last is written.
    fn say_lines(
        &mut self,
        target: &str,
        lines: &[String],
        first: Option<(&str, Option<&str>)>,
        done: Done,
    ) {
        let mut done = Some(done);
        let last = lines.len().saturating_sub(1);
        for (index, line) in lines.iter().enumerate() {
            let this = if index == last { done.take() } else { None };
            match first.filter(|_| index == 0) {
                Some(tag) => self.enqueue_tagged(&[tag], "PRIVMSG", &[target, line], this),
                None => self.enqueue("PRIVMSG", &[target, line], this),
            }
        }
    }

    /// When the last line queued now goes out, as flood control paces the queue.
    fn due(&self) -> Instant {
        let rate = self.setup.reach.flood.per_second;
        let waiting = self.queue.len() as f64 - self.tokens.max(0.0);
        if rate <= 0.0 || waiting <= 0.0 {
            return Instant::now();
        }
        Instant::now() + Duration::from_secs_f64(waiting / rate)
    }

    /// Whether `lines` more lines may wait for their turn: a message of too many lines is
    /// refused, and so is any while too many wait (a retry later may go).
    fn room_for(&self, lines: usize) -> Result<(), SendError> {
        if lines > MAX_POST_LINES {
            return Err(SendError::Permanent {
                reason: format!(
                    "the message makes {lines} IRC lines; at most {MAX_POST_LINES} are sent at once"
                ),
            });
        }
        if self.queue.len() + lines > MAX_QUEUED {
            return Err(SendError::Transient {
                reason: "too many lines wait for their turn toward the IRC server".into(),
                retry_after: Some(Duration::from_secs(10)),
            });
        }
        Ok(())
    }

    /// The room as the user sees it now, from the shared state.
    fn joined(&self, folded: &str) -> Option<Joined> {
        let net = self.network.lock();
        let channel = net.channels.get(folded)?;
        Some(Joined {
            nick: self.nick.clone(),
            occupants: channel.occupants(),
            subject: channel.topic.clone(),
        })
    }

    async fn report(&self, room: &RoomId, event: RoomEvent) {
        if let Err(error) = self.core.room_event(room, event).await {
            tracing::warn!(%error, %room, "the core did not take a room event");
        }
    }

    /// Handles one line from the server.
    async fn on_message(&mut self, message: Message) {
        let param = |index: usize| message.params.get(index).map(String::as_str);
        match message.command.as_str() {
            "JOIN" => self.on_join(&message).await,
            "PART" => {
                let (Some(nick), Some(channel)) = (message.nick(), param(0)) else {
                    return;
                };
                let reason = param(1)
                    .filter(|reason| !reason.is_empty())
                    .map(str::to_owned);
                self.on_leave(nick, channel, |nick| RoomEvent::Left { nick, reason })
                    .await;
            }
            "KICK" => {
                let (Some(channel), Some(victim)) = (param(0), param(1)) else {
                    return;
                };
                let by = message.nick().map(str::to_owned);
                let reason = param(2)
                    .filter(|reason| !reason.is_empty())
                    .map(str::to_owned);
                self.on_leave(victim, channel, |nick| RoomEvent::Kicked {
                    nick,
                    by,
                    reason,
                })
                .await;
            }
            "QUIT" => self.on_quit(&message).await,
            "AWAY" => self.on_away(&message).await,
            // `chghost`: `CHGHOST user host`; `setname`: `SETNAME :real name`.
            "CHGHOST" => {
                let host = param(1).filter(|host| state::valid_host(host));
                if let Some(host) = host {
                    let host: Box<str> = host.into();
                    self.member_changed(&message, |member| {
                        let changed = member.host.as_deref() != Some(&host);
                        member.host = Some(host.clone());
                        changed
                    })
                    .await;
                }
            }
            // `account-notify`: `ACCOUNT name` on login, `ACCOUNT *` on logout. The
            // occupant's id follows (it is the account's while they have one).
            "ACCOUNT" => {
                let account = param(0)
                    .filter(|account| *account != "*" && state::valid_account(account))
                    .map(str::to_owned);
                self.member_changed(&message, |member| {
                    let changed = member.account != account;
                    member.account.clone_from(&account);
                    changed
                })
                .await;
            }
            // `INVITE us #channel`: the user gets an invitation to its room.
            "INVITE" => {
                let (Some(invited), Some(channel), Some(by)) = (param(0), param(1), message.nick())
                else {
                    return;
                };
                if self.fold(invited) != self.fold(&self.nick) || !self.is_channel(channel) {
                    return;
                }
                let reach = &self.setup.reach;
                let room =
                    RoomId::new(reach.addressing.format(&reach.network, &self.fold(channel)));
                let by = ForeignId::new(reach.addressing.format(&reach.network, by));
                let user = self.user.clone();
                self.report(&room, RoomEvent::Invited { user, by }).await;
            }
            "SETNAME" => {
                let realname = param(0).and_then(state::realname_of);
                self.member_changed(&message, |member| {
                    let changed = member.realname != realname;
                    member.realname.clone_from(&realname);
                    changed
                })
                .await;
            }
            "NICK" => self.on_nick(&message).await,
            "MODE" => self.on_mode(&message).await,
            "TOPIC" => {
                let (Some(channel), Some(topic)) = (param(0), param(1)) else {
                    return;
                };
                let by = message.nick().map(str::to_owned);
                let folded = self.fold(channel);
                let room = {
                    let mut net = self.network.lock();
                    let reports = net.reports_in(&folded, &self.user);
                    let Some(channel) = net.channels.get_mut(&folded).filter(|_| reports) else {
                        return;
                    };
                    let subject = Subject {
                        text: text::from_irc(topic),
                        by,
                    };
                    channel.topic = Some(subject.clone());
                    (channel.room.clone(), subject)
                };
                self.report(&room.0, RoomEvent::Subject(room.1)).await;
            }
            "332" => {
                let (Some(channel), Some(topic)) = (param(1), param(2)) else {
                    return;
                };
                let folded = self.fold(channel);
                if let Some(channel) = self.network.lock().channels.get_mut(&folded) {
                    let by = channel.topic.take().and_then(|topic| topic.by);
                    channel.topic = Some(Subject {
                        text: text::from_irc(topic),
                        by,
                    });
                }
            }
            "333" => {
                let (Some(channel), Some(by)) = (param(1), param(2)) else {
                    return;
                };
                let folded = self.fold(channel);
                if let Some(topic) = self
                    .network
                    .lock()
                    .channels
                    .get_mut(&folded)
                    .and_then(|channel| channel.topic.as_mut())
                {
                    let nick = by.split(['!', '@']).next().unwrap_or(by);
                    topic.by = Some(nick.to_owned());
                }
            }
            "353" => {
                let (Some(channel), Some(names)) = (param(2), param(3)) else {
                    return;
                };
                let folded = self.fold(channel);
                let symbols = self.server.prefix_modes.1.clone();
                if let Some(Reading::Names(list)) = self.names.get_mut(&folded) {
                    for entry in names.split_whitespace() {
                        if list.len() >= state::MAX_MEMBERS {
                            break;
                        }
                        list.extend(state::parse_name(entry, &symbols));
                    }
                }
            }
            "366" => {
                let Some(channel) = param(1) else {
                    return;
                };
                let folded = self.fold(channel);
                self.end_of_names(&folded).await;
            }
            "352" | "354" => {
                let Some(who) = state::Who::parse(&message.command, &message.params) else {
                    return;
                };
                let folded = self.fold(&who.channel);
                if let Some(Reading::Who { said, .. }) = self.names.get_mut(&folded)
                    && said.len() < state::MAX_MEMBERS
                {
                    said.push(who);
                }
            }
            "315" => {
                let Some(channel) = param(1) else {
                    return;
                };
                let folded = self.fold(channel);
                self.end_of_who(&folded).await;
            }
            // WHO refused (for now, or not known): our joins waiting on one go on without.
            "263" | "421" if param(1) == Some("WHO") => {
                let waiting: Vec<String> = self
                    .names
                    .iter()
                    .filter(|(_, reading)| matches!(reading, Reading::Who { .. }))
                    .map(|(folded, _)| folded.clone())
                    .collect();
                for folded in waiting {
                    self.end_of_who(&folded).await;
                }
            }
            // Join refused: no such channel, too many channels, full, invite only, banned,
            // bad key, bad name, registered nicks only, a nick or channel held, secure only.
            "403" | "405" | "470" | "471" | "473" | "474" | "475" | "476" | "477" | "437"
            | "479" | "480" | "489" | "515" | "520" => {
                let Some(channel) = param(1) else {
                    return;
                };
                let folded = self.fold(channel);
                let reason = message.params.last().cloned().unwrap_or_default();
                let reason = format!("{channel}: {reason}");
                if let Some(pending) = self.pending_joins.remove(&folded) {
                    let error = match message.command.as_str() {
                        "474" => JoinError::Banned(reason),
                        "475" => JoinError::PasswordRequired(reason),
                        "473" | "477" | "489" | "520" => JoinError::MembersOnly(reason),
                        "403" | "476" => JoinError::NoSuchRoom(reason),
                        _ => JoinError::Unavailable(reason),
                    };
                    let _ = pending.reply.send(Err(error));
                } else if self.rejoining.remove(&folded).is_some() {
                    let room = self.room_of(&folded);
                    self.channels.remove(&folded);
                    self.left_channel(&folded);
                    if let Some(room) = room {
                        let nick = self.nick.clone();
                        self.report(
                            &room,
                            RoomEvent::Left {
                                nick,
                                reason: Some(reason),
                            },
                        )
                        .await;
                    }
                } else if message.command == "403" {
                    self.server_says(&reason, &message).await;
                }
            }
            // About a nick a private message of ours waits on: the oldest such message (those
            // before it were confirmed) is refused, answered at its PONG; the refusals of its
            // other lines say the same and are not shown again.
            code if REFUSING_NUMERICS.contains(&code)
                && param(1).is_some_and(|nick| {
                    let folded = self.fold(nick);
                    self.confirming
                        .iter()
                        .any(|pending| pending.target == folded)
                }) =>
            {
                let folded = param(1).map(|nick| self.fold(nick)).unwrap_or_default();
                let text = text::from_irc(&message.params.get(1..).unwrap_or_default().join(": "));
                let network = self.setup.reach.network.clone();
                if let Some(pending) = self
                    .confirming
                    .iter_mut()
                    .find(|pending| pending.target == folded)
                    && pending.refused.is_none()
                {
                    pending.refused = Some(format!("{network} refused it: {text}"));
                }
            }
            // Cannot send to the channel (moderated, banned, not in it).
            "404" => {
                let Some(channel) = param(1) else {
                    return;
                };
                // A moderated channel refuses typing too: it is not said there again (the
                // refusal itself is shown once, below, as for a post).
                self.typing_ended(channel);
                let folded = self.fold(channel);
                let reason = message.params.last().cloned().unwrap_or_default();
                // The post it refuses: the one its label names, else the oldest waiting.
                let label = self.label_of(&message);
                let echo = self.echoes.get_mut(&folded).and_then(|queue| match label {
                    Some(post) => {
                        let index = queue.iter().position(|echo| echo.label == Some(post))?;
                        queue.remove(index)
                    }
                    None => queue.pop_front(),
                });
                match echo {
                    Some(echo) => {
                        let _ = echo.reply.send(Err(SendError::Permanent {
                            reason: format!("{channel}: {reason}"),
                        }));
                    }
                    None => {
                        self.server_says(&format!("{channel}: {reason}"), &message)
                            .await;
                    }
                }
            }
            "PRIVMSG" | "NOTICE" => self.on_said(&message).await,
            "REDACT" => self.on_redact(&message).await,
            // A retraction of ours the server refused: answered at its PONG.
            "FAIL" if param(0) == Some("REDACT") => {
                let folded = param(2).map(|target| self.fold(target)).unwrap_or_default();
                let text = text::from_irc(message.params.last().map_or("", String::as_str));
                let network = self.setup.reach.network.clone();
                if let Some(pending) = (self.confirming.iter_mut())
                    .find(|pending| pending.target == folded && pending.refused.is_none())
                {
                    pending.refused = Some(format!("{network} refused it: {text}"));
                }
            }
            "TAGMSG" => self.on_tagmsg(&message).await,
            // A read of older lines refused (standard replies: `FAIL CHATHISTORY code …`).
            "FAIL" if param(0) == Some("CHATHISTORY") => {
                if self
                    .fetching
                    .as_ref()
                    .is_some_and(|fetch| fetch.batch.is_none())
                    && let Some(fetch) = self.fetching.take()
                {
                    let reason = message.params.last().cloned().unwrap_or_default();
                    let _ = fetch
                        .reply
                        .send(Err(format!("the server refused: {reason}")));
                }
            }
            "BATCH" => {
                let reference = param(0).unwrap_or("");
                if let Some(opened) = reference.strip_prefix('+') {
                    // A hostile server opening batches without end costs a bounded map.
                    let room = self.batches.len() < 16;
                    let kind = match param(1) {
                        Some("chathistory") if room => Some(self.history_batch(opened, param(2))),
                        Some("labeled-response") => message
                            .tag("label")
                            .map(|label| Batch::Label(label.to_owned())),
                        _ => None,
                    };
                    if let Some(kind) = kind.filter(|_| room) {
                        self.batches.insert(opened.to_owned(), kind);
                    }
                } else if let Some(closed) = reference.strip_prefix('-') {
                    if let Some(Batch::Fetched) = self.batches.remove(closed)
                        && let Some(fetch) = self.fetching.take()
                    {
                        let _ = fetch.reply.send(Ok(fetch.lines));
                    }
                    shed_if_empty(&mut self.batches);
                }
            }
            // LIST: one channel, then the end.
            "322" => {
                let (Some(channel), Some((listed, _, _))) = (param(1), self.listing.as_deref_mut())
                else {
                    return;
                };
                if listed.len() < MAX_LISTED {
                    let topic = param(3)
                        .map(text::from_irc)
                        .filter(|topic| !topic.is_empty());
                    listed.push(RoomListing {
                        room: RoomId::new(self.setup.reach.addressing.format(
                            &self.setup.reach.network,
                            &self.network.lock().fold(channel),
                        )),
                        name: topic,
                        occupants: param(2).and_then(|count| count.parse().ok()),
                    });
                }
                // Enough: the answer goes now, and the rest of the list is dropped.
                if listed.len() >= MAX_LISTED
                    && let Some((listed, reply, _)) = self.listing.take().map(|listing| *listing)
                {
                    let _ = reply.send(listed);
                }
            }
            // LIST refused for now: what came is the answer.
            "263" if param(1) == Some("LIST") => {
                if let Some((listed, reply, _)) = self.listing.take().map(|listing| *listing) {
                    let _ = reply.send(listed);
                }
            }
            "323" => {
                if let Some((listed, reply, _)) = self.listing.take().map(|listing| *listing) {
                    let _ = reply.send(listed);
                }
            }
            "CAP" => self.on_cap(&message),
            "PONG" => {
                // Every private message written before this PING was taken.
                let token = message.params.last().map(String::as_str);
                if let Some(at) = self
                    .confirming
                    .iter()
                    .position(|pending| Some(pending.token.as_str()) == token)
                {
                    for pending in self.confirming.drain(..=at) {
                        pending.answer(Ok(()));
                    }
                }
            }
            // Errors and replies the user should see, from the server's address.
            "442" if param(1).is_some_and(|channel| self.parting.contains(&self.fold(channel))) => {
                // Not in it after all: its last line in the channel, as a PART would be.
                if let Some(channel) = param(1) {
                    let folded = self.fold(channel);
                    self.parting.remove(&folded);
                    let mut net = self.network.lock();
                    let nick = net.fold(&self.nick);
                    net.leave_reporting(&folded, &nick, &self.user);
                }
            }
            // Refused in a channel the user is in (a topic or a mode without ops): said in
            // the room, to them, where they tried it.
            "442" | "482" if self.joined_room(param(1)).is_some() => {
                if let Some(room) = self.joined_room(param(1)) {
                    let notice = RoomEvent::Notice {
                        user: Some(self.user.clone()),
                        text: param(2).unwrap_or("refused by the server").to_owned(),
                    };
                    self.report(&room, notice).await;
                }
            }
            // No such nick for the user's typing alone (a private message's is taken above):
            // they stop being told, and the user is not shown a refusal every 3 s.
            "401" if param(1).is_some_and(|nick| self.typing_ended(nick)) => {}
            "401" | "406" | "412" | "421" | "432" | "433" | "442" | "443" | "461" | "481"
            | "482" | "301" => {
                let text = message.params.get(1..).unwrap_or_default().join(" ");
                self.server_says(&text, &message).await;
            }
            _ => {}
        }
    }

    /// The room of `channel`, when this connection is in it.
    fn joined_room(&self, channel: Option<&str>) -> Option<RoomId> {
        let folded = self.fold(channel?);
        if !self.channels.contains_key(&folded) {
            return None;
        }
        self.room_of(&folded)
    }

    fn room_of(&self, folded: &str) -> Option<RoomId> {
        self.network
            .lock()
            .channels
            .get(folded)
            .map(|channel| channel.room.clone())
    }

    async fn on_join(&mut self, message: &Message) {
        if let Some((room, occupant)) = self.joined_line(message) {
            self.report(&room, RoomEvent::Occupant(occupant)).await;
        }
    }

    /// A `JOIN`: ours fills our state; someone else's is the occupant to report, when this
    /// connection reports the channel.
    fn joined_line(&mut self, message: &Message) -> Option<(RoomId, jabbridge_sdk::Occupant)> {
        let (Some(nick), Some(channel)) = (message.nick(), message.params.first()) else {
            return None;
        };
        let account = message
            .params
            .get(1)
            .filter(|account| *account != "*")
            .cloned()
            .or_else(|| message.tag("account").map(str::to_owned));
        let host = message.source.as_deref().and_then(state::host_of);
        // `extended-join`: `JOIN #channel account :real name`.
        let realname = message
            .params
            .get(2)
            .and_then(|text| state::realname_of(text));
        let mut net = self.network.lock();
        let folded = net.fold(channel);
        let own_nick = net.fold(&self.nick);
        if net.fold(nick) == own_nick {
            // A server folding names its own way (CASEMAPPING=rfc8265): the join it answers
            // is the one asked for under another spelling.
            if !self.pending_joins.contains_key(&folded)
                && let Some(asked) = self
                    .pending_joins
                    .keys()
                    .find(|asked| asked.to_lowercase() == channel.to_lowercase())
                    .cloned()
                && let Some(pending) = self.pending_joins.remove(&asked)
            {
                self.pending_joins.insert(folded.clone(), pending);
            }
            let expected = self.pending_joins.contains_key(&folded)
                || self.rejoining.contains_key(&folded)
                || self
                    .setup
                    .autojoin
                    .iter()
                    .any(|wanted| net.fold(wanted) == folded);
            if !expected
                || (net.channels.len() >= state::MAX_CHANNELS
                    && !net.channels.contains_key(&folded))
            {
                // A join nobody asked for (a forward to another channel, an oper's SAJOIN),
                // or one too many: no room shows it, so leave it.
                drop(net);
                if let Some(pending) = self.pending_joins.remove(&folded) {
                    let _ = pending.reply.send(Err(JoinError::Unavailable(
                        "the gateway is in too many channels of this server".into(),
                    )));
                }
                self.enqueue("PART", &[channel], None);
                return None;
            }
            self.parting.remove(&folded);
            self.channels.insert(folded.clone(), channel.clone());
            let room = match self.pending_joins.get(&folded) {
                Some(pending) => pending.room.clone(),
                None => RoomId::new(
                    self.setup
                        .reach
                        .addressing
                        .format(&self.setup.reach.network, &folded),
                ),
            };
            let entry = net
                .channels
                .entry(folded.clone())
                .or_insert_with(|| Channel {
                    room,
                    name: channel.clone(),
                    members: HashMap::new(),
                    topic: None,
                    users: Vec::new(),
                    away: HashSet::new(),
                    synced: false,
                    hands: Vec::new(),
                    reactions: None,
                });
            let own = Member {
                account: self.account.clone(),
                host,
                realname,
                ..Member::new(&self.nick)
            };
            entry.members.insert(own_nick.clone(), Box::new(own));
            if !entry.users.contains(&self.user) {
                entry.users.push(self.user.clone());
            }
            entry.away.remove(&self.user);
            let synced = entry.synced;
            net.joined(&folded, &own_nick, &self.user);
            // The reporter left: whether it left before this join shows in the NAMES.
            let handing = net.handing(&folded);
            let reports = net.reports_in(&folded, &self.user);
            drop(net);
            if !synced || handing || (self.rejoining.contains_key(&folded) && reports) {
                self.names.insert(folded, Reading::Names(Vec::new()));
            }
            return None;
        }
        let folded_nick = net.fold(nick);
        if net.own.contains_key(&folded_nick) {
            return None;
        }
        let reports = net.reports_in(&folded, &self.user);
        let channel = net.channels.get_mut(&folded).filter(|_| reports)?;
        if channel.members.len() >= state::MAX_MEMBERS {
            return None;
        }
        let member = Member {
            account,
            host,
            realname,
            ..Member::new(nick)
        };
        let occupant = member.occupant();
        channel.members.insert(folded_nick, Box::new(member));
        Some((channel.room.clone(), occupant))
    }

    /// Someone left a channel (`PART`) or was put out (`KICK`): `event` makes the report.
    async fn on_leave(
        &mut self,
        nick: &str,
        channel: &str,
        event: impl FnOnce(String) -> RoomEvent,
    ) {
        let folded = self.fold(channel);
        self.typing_stopped(Some(&folded), nick);
        let own = self.fold(nick) == self.fold(&self.nick);
        if own {
            let room = self.room_of(&folded);
            {
                // Its last line in the channel: whoever of ours reads this leave reports on.
                let mut net = self.network.lock();
                let nick = net.fold(&self.nick);
                net.leave_reporting(&folded, &nick, &self.user);
            }
            self.channels.remove(&folded);
            self.rejoining.remove(&folded);
            self.left_channel(&folded);
            if self.channels.is_empty() {
                self.active = Instant::now();
            }
            // A part we asked for was shown when the user left; any other is news.
            if !self.parting.remove(&folded)
                && let Some(room) = room
            {
                self.report(&room, event(self.nick.clone())).await;
            }
            return;
        }
        let room = {
            let mut net = self.network.lock();
            let folded_nick = net.fold(nick);
            let own = net.fold(&self.nick);
            net.read_leave(&folded, &folded_nick, &self.user, &own);
            if net.own.contains_key(&folded_nick) {
                return;
            }
            let reports = net.reports_in(&folded, &self.user);
            let Some(channel) = net.channels.get_mut(&folded).filter(|_| reports) else {
                return;
            };
            let Some(member) = channel.members.remove(&folded_nick) else {
                return;
            };
            (channel.room.clone(), member.nick)
        };
        self.report(&room.0, event(room.1)).await;
    }

    /// Someone went away or came back (`away-notify`): they show so in the channels this
    /// connection reports.
    async fn on_away(&mut self, message: &Message) {
        let Some(nick) = message.nick() else {
            return;
        };
        let away = message.params.first().map(|text| {
            let text = text::from_irc(text);
            text.chars().take(200).collect::<String>()
        });
        let changed: Vec<(RoomId, jabbridge_sdk::Occupant)> = {
            let mut net = self.network.lock();
            let folded_nick = net.fold(nick);
            if net.own.contains_key(&folded_nick) {
                return;
            }
            let mine = self.reported_channels(&net);
            mine.iter()
                .filter_map(|folded| {
                    let channel = net.channels.get_mut(folded)?;
                    let member = channel.members.get_mut(&folded_nick)?;
                    if member.away == away {
                        return None;
                    }
                    member.away.clone_from(&away);
                    Some((channel.room.clone(), member.occupant()))
                })
                .collect()
        };
        for (room, occupant) in changed {
            self.report(&room, RoomEvent::Occupant(occupant)).await;
        }
    }

    /// The sender of `message` changed (`change` says whether it did): every room that
    /// shows them hears their occupant again. Our own users' changes are reported by their
    /// own connection, in its channels; others' by the channels' reporters.
    async fn member_changed(&mut self, message: &Message, change: impl Fn(&mut Member) -> bool) {
        let Some(nick) = message.nick() else {
            return;
        };
        let changed: Vec<(RoomId, jabbridge_sdk::Occupant)> = {
            let mut net = self.network.lock();
            let folded_nick = net.fold(nick);
            let channels = if folded_nick == net.fold(&self.nick) {
                self.channels.keys().cloned().collect()
            } else if net.own.contains_key(&folded_nick) {
                return;
            } else {
                self.reported_channels(&net)
            };
            channels
                .iter()
                .filter_map(|folded| {
                    let channel = net.channels.get_mut(folded)?;
                    let member = channel.members.get_mut(&folded_nick)?;
                    change(member).then(|| (channel.room.clone(), member.occupant()))
                })
                .collect()
        };
        for (room, occupant) in changed {
            self.report(&room, RoomEvent::Occupant(occupant)).await;
        }
    }

    async fn on_quit(&mut self, message: &Message) {
        let Some(nick) = message.nick() else {
            return;
        };
        self.typing_stopped(None, nick);
        let reason = message
            .params
            .first()
            .filter(|reason| !reason.is_empty())
            .cloned();
        let gone: Vec<(RoomId, String)> = {
            let mut net = self.network.lock();
            let folded_nick = net.fold(nick);
            let own = net.fold(&self.nick);
            for folded in self.channels.keys() {
                net.read_leave(folded, &folded_nick, &self.user, &own);
            }
            if let Some(owner) = net.own.get(&folded_nick).cloned() {
                // One of ours. Their own connection knows when it is up; a quit seen while
                // it is down is their old connection's ghost leaving: forget the nick, so
                // that whoever takes it next is seen.
                let up = net
                    .clients
                    .get(&owner)
                    .is_some_and(|client| client.up.load(Ordering::Relaxed));
                if !up {
                    net.own.remove(&folded_nick);
                    for channel in net.channels.values_mut() {
                        channel.members.remove(&folded_nick);
                    }
                }
                return;
            }
            let mine = self.reported_channels(&net);
            mine.iter()
                .filter_map(|folded| {
                    let channel = net.channels.get_mut(folded)?;
                    let member = channel.members.remove(&folded_nick)?;
                    Some((channel.room.clone(), member.nick))
                })
                .collect()
        };
        for (room, nick) in gone {
            let reason = reason.clone();
            self.report(&room, RoomEvent::Left { nick, reason }).await;
        }
    }

    /// Our nick changed while connected (or across a reconnection): every room hears it.
    /// `ours`: whether the old nick's member is ours to move (`None`: ours unless another of
    /// our users holds the nick).
    async fn renamed_self(&mut self, old: &str, ours: Option<bool>) {
        let renames: Vec<RoomId> = {
            let mut net = self.network.lock();
            let old_folded = net.fold(old);
            // The old nick's member is ours unless another of our users holds it now.
            let ours = ours.unwrap_or_else(|| {
                net.own
                    .get(&old_folded)
                    .is_none_or(|owner| *owner == self.user)
            });
            if net.own.get(&old_folded) == Some(&self.user) {
                net.own.remove(&old_folded);
            }
            let new_folded = net.fold(&self.nick);
            net.read_nick(&old_folded, &new_folded);
            net.own.insert(new_folded.clone(), self.user.clone());
            self.channels
                .keys()
                .filter_map(|folded| {
                    let channel = net.channels.get_mut(folded)?;
                    let moved = if ours {
                        channel.members.remove(&old_folded)
                    } else {
                        None
                    };
                    let mut member = moved.unwrap_or_else(|| Box::new(Member::new(old)));
                    member.nick.clone_from(&self.nick);
                    channel.members.insert(new_folded.clone(), member);
                    Some(channel.room.clone())
                })
                .collect()
        };
        let new = self.nick.clone();
        self.report_renamed(&renames, old, &new).await;
    }

    /// Reports `old`'s new nick `new` in each of `rooms`.
    async fn report_renamed(&self, rooms: &[RoomId], old: &str, new: &str) {
        for room in rooms {
            let event = RoomEvent::Renamed {
                old: old.to_owned(),
                new: new.to_owned(),
            };
            self.report(room, event).await;
        }
    }

    async fn on_nick(&mut self, message: &Message) {
        let (Some(old), Some(new)) = (message.nick(), message.params.first()) else {
            return;
        };
        self.typing_stopped(None, old);
        if self.fold(old) == self.fold(&self.nick) {
            self.nick.clone_from(new);
            self.renamed_self(old, None).await;
            return;
        }
        let renames: Vec<RoomId> = {
            let mut net = self.network.lock();
            let (old_folded, new_folded) = (net.fold(old), net.fold(new));
            // Whoever of ours reads it first moves a hand known by the old nick.
            net.read_nick(&old_folded, &new_folded);
            if net.own.contains_key(&old_folded) || net.own.contains_key(&new_folded) {
                return;
            }
            let mine = self.reported_channels(&net);
            mine.iter()
                .filter_map(|folded| {
                    let channel = net.channels.get_mut(folded)?;
                    let mut member = channel.members.remove(&old_folded)?;
                    member.nick.clone_from(new);
                    channel.members.insert(new_folded.clone(), member);
                    Some(channel.room.clone())
                })
                .collect()
        };
        self.report_renamed(&renames, old, new).await;
    }

    async fn on_mode(&mut self, message: &Message) {
        let Some(target) = message.params.first() else {
            return;
        };
        if !self.is_channel(target) {
            return;
        }
        let (modes, symbols) = self.server.prefix_modes.clone();
        let changes: Vec<(RoomId, jabbridge_sdk::Occupant)> = {
            let mut net = self.network.lock();
            let folded = net.fold(target);
            let reports = net.reports_in(&folded, &self.user);
            if !reports {
                return;
            }
            let mut args = message.params.iter().skip(2);
            let mut adding = true;
            let mut changed: Vec<String> = Vec::new();
            let Some(spec) = message.params.get(1) else {
                return;
            };
            let mut updates: Vec<(String, char, bool)> = Vec::new();
            for letter in spec.chars() {
                match letter {
                    '+' => adding = true,
                    '-' => adding = false,
                    _ => {
                        if let Some(index) = modes.find(letter) {
                            if let Some(nick) = args.next()
                                && let Some(symbol) = symbols.chars().nth(index)
                            {
                                updates.push((net.fold(nick), symbol, adding));
                            }
                        } else if self.server.chanmodes[0].contains(letter)
                            || self.server.chanmodes[1].contains(letter)
                            || (adding && self.server.chanmodes[2].contains(letter))
                        {
                            args.next();
                        }
                    }
                }
            }
            let Some(channel) = net.channels.get_mut(&folded) else {
                return;
            };
            for (nick, symbol, adding) in updates {
                let Some(member) = channel.members.get_mut(&nick) else {
                    continue;
                };
                let mut prefixes = member.prefixes.clone();
                if adding {
                    prefixes.push(symbol);
                } else {
                    prefixes.retain(|c| c != symbol);
                }
                member.prefixes = state::sort_prefixes(&prefixes, &symbols);
                if !changed.contains(&nick) {
                    changed.push(nick);
                }
            }
            changed
                .iter()
                .filter_map(|nick| {
                    let member = channel.members.get(nick)?;
                    Some((channel.room.clone(), member.occupant()))
                })
                .collect()
        };
        for (room, occupant) in changes {
            self.report(&room, RoomEvent::Occupant(occupant)).await;
        }
    }

    /// After our join (or rejoin) of a channel this connection reports, where the server
    /// keeps history (`draft/chathistory`): its latest lines, which come in a `chathistory`
    /// batch. The archive keeps each once (by its msgid); those said while none of our
    /// users was there reach the room with their time (a delay).
    fn ask_history(&mut self, folded: &str) {
        let Some(most) = self.server.history_max else {
            return;
        };
        let joining =
            self.pending_joins.contains_key(folded) || self.rejoining.contains_key(folded);
        if !joining || !self.caps.contains("draft/chathistory") {
            return;
        }
        let reports = self.network.lock().reports_in(folded, &self.user);
        if let (true, Some(name)) = (reports, self.channels.get(folded).cloned()) {
            self.enqueue(
                "CHATHISTORY",
                &["LATEST", &name, "*", &most.to_string()],
                None,
            );
        }
    }

    /// The end of a NAMES reply: fill or correct the channel's members, and answer a join
    /// (after its WHO, where we ask one: [`Client::end_of_who`]).
    async fn end_of_names(&mut self, folded: &str) {
        let listed = match self.names.remove(folded) {
            Some(Reading::Names(listed)) => Some(listed),
            Some(who @ Reading::Who { .. }) => {
                // Not ours to end (a server's stray 366).
                self.names.insert(folded.to_owned(), who);
                return;
            }
            None => None,
        };
        let asked = listed.is_some();
        let mut told = false;
        let mut events = Vec::new();
        let room = {
            let mut net = self.network.lock();
            let own_nicks: HashSet<String> = net.own.keys().cloned().collect();
            let casemapping = net.casemapping;
            // Only while a leaver's hand waits for a taker (NAMES can be 20,000 long).
            if let Some(listed) = listed.as_ref().filter(|_| net.handing(folded)) {
                let listed: HashSet<String> = listed
                    .iter()
                    .map(|member| casemapping.fold(&member.nick))
                    .collect();
                let own = net.fold(&self.nick);
                net.joined_after_leave(folded, &listed, &self.user, &own);
            }
            let reports = net.reports_in(folded, &self.user);
            let Some(channel) = net.channels.get_mut(folded) else {
                drop(net);
                if let Some(pending) = self.pending_joins.remove(folded) {
                    let _ = pending.reply.send(Err(JoinError::Unavailable(
                        "the server listed a channel we are not in".into(),
                    )));
                }
                return;
            };
            if let Some(listed) = listed {
                let mut members: HashMap<String, Box<Member>> = listed
                    .into_iter()
                    .map(|member| (casemapping.fold(&member.nick), Box::new(member)))
                    .collect();
                // What NAMES does not say (accounts, absence, real names: from joins and
                // notices) stays known, and a host it does not give.
                for (nick, member) in &mut members {
                    if let Some(old) = channel.members.get(nick) {
                        member.account.clone_from(&old.account);
                        member.away.clone_from(&old.away);
                        member.realname.clone_from(&old.realname);
                        if member.host.is_none() {
                            member.host.clone_from(&old.host);
                        }
                    }
                }
                // Only the channel's reporter tells the difference, once.
                told = channel.synced && reports;
                if told {
                    for (nick, old) in &channel.members {
                        if !members.contains_key(nick) && !own_nicks.contains(nick) {
                            events.push(RoomEvent::Left {
                                nick: old.nick.clone(),
                                reason: None,
                            });
                        }
                    }
                    for (nick, new) in &members {
                        if own_nicks.contains(nick) {
                            continue;
                        }
                        if channel.members.get(nick) != Some(new) {
                            events.push(RoomEvent::Occupant(new.occupant()));
                        }
                    }
                }
                // Our users stay members until their own connection says otherwise.
                for (nick, member) in &channel.members {
                    if own_nicks.contains(nick) && !members.contains_key(nick) {
                        members.insert(nick.clone(), member.clone());
                    }
                }
                channel.members = members;
                channel.synced = true;
            }
            channel.room.clone()
        };
        for event in events {
            self.report(&room, event).await;
        }
        // Our join's list says no accounts, real names or absence: WHO does, before the
        // room shows its occupants (ahead of the history asked next, answered in order).
        let joining = self.pending_joins.contains_key(folded)
            || self.rejoining.contains_key(folded)
            || (self.setup.autojoin.iter()).any(|wanted| self.fold(wanted) == folded);
        let who = asked && joining;
        if who {
            let name = self.channels.get(folded).cloned().unwrap_or_default();
            if self.server.whox {
                self.enqueue("WHO", &[&name, state::WHOX_QUERY], None);
            } else {
                self.enqueue("WHO", &[&name], None);
            }
            let since = self.due();
            let said = Vec::new();
            (self.names).insert(folded.to_owned(), Reading::Who { said, told, since });
        }
        self.ask_history(folded);
        if !who {
            self.joined_fully(folded).await;
        }
    }

    /// The end of our join's WHO (or its refusal, or the wait's end): the members are
    /// brought up to date with what it said, and the join answered.
    async fn end_of_who(&mut self, folded: &str) {
        // (A stray 315 leaves a NAMES being read alone.)
        if !matches!(self.names.get(folded), Some(Reading::Who { .. })) {
            return;
        }
        let Some(Reading::Who { said, told, .. }) = self.names.remove(folded) else {
            return;
        };
        let changed = {
            let mut net = self.network.lock();
            let casemapping = net.casemapping;
            let shared = &mut *net;
            let own = &shared.own;
            shared.channels.get_mut(folded).map(|channel| {
                let mut events = Vec::new();
                for who in &said {
                    let nick = casemapping.fold(&who.nick);
                    // Our users' occupants are their own connections' to show, not a
                    // change the reporter tells.
                    if let Some(member) = channel.members.get_mut(&nick)
                        && who.update(member)
                        && told
                        && !own.contains_key(&nick)
                    {
                        events.push(RoomEvent::Occupant(member.occupant()));
                    }
                }
                (channel.room.clone(), events)
            })
        };
        if let Some((room, events)) = changed {
            for event in events {
                self.report(&room, event).await;
            }
        }
        self.joined_fully(folded).await;
    }

    /// Our join (or rejoin) of a channel is done: the user is told, the join answered.
    async fn joined_fully(&mut self, folded: &str) {
        if self.rejoining.remove(folded).is_some()
            && let Some(room) = self.room_of(folded)
        {
            let name = self.channels.get(folded).cloned().unwrap_or_default();
            let notice = RoomEvent::Notice {
                user: Some(self.user.clone()),
                text: format!(
                    "Reconnected to {}; back in {name}.",
                    self.setup.reach.network
                ),
            };
            self.report(&room, notice).await;
        }
        if let Some(pending) = self.pending_joins.remove(folded) {
            let joined = self
                .joined(folded)
                .ok_or_else(|| JoinError::Unavailable("the channel was left meanwhile".into()));
            let _ = pending.reply.send(joined);
        }
        // Joins are rare: the table of the last one is not kept for the connection's life
        // (and likewise the rejoins' after a reconnection, and the NAMES being read).
        shed_if_empty(&mut self.pending_joins);
        shed_if_empty(&mut self.rejoining);
        shed_if_empty(&mut self.names);
    }

    /// A `PRIVMSG` or `NOTICE`.
    async fn on_said(&mut self, message: &Message) {
        let (Some(target), Some(said)) = (message.params.first(), message.params.get(1)) else {
            return;
        };
        let Some(source) = message.source.as_deref() else {
            return;
        };
        let nick = message.nick().unwrap_or(source);
        let from_server = !source.contains('!')
            && (source.contains('.') || source == self.server.name || nick == "*");
        // STATUSMSG: `@#chan` is said to the channel's ops (ISUPPORT says which prefixes).
        let channel_target = if self.is_channel(target) {
            Some(target.as_str())
        } else {
            let stripped = target.trim_start_matches(|c| self.server.statusmsg.contains(c));
            (stripped.len() < target.len() && self.is_channel(stripped)).then_some(stripped)
        };
        let is_self = self.fold(nick) == self.fold(&self.nick);
        let timestamp = server_time(message);
        let id = message.tag("msgid").map(MessageId::new);
        if let Some(channel) = channel_target {
            let folded = self.fold(channel);
            self.typing_stopped(Some(&folded), nick);
            let batch = message
                .tag("batch")
                .and_then(|batch| self.batches.get(batch));
            let history = matches!(batch, Some(Batch::History));
            if matches!(batch, Some(Batch::Fetched)) {
                self.fetched(nick, said, message, id, timestamp);
                return;
            }
            if is_self {
                // Our own earlier lines in a history batch are no echoes of posts waiting.
                if !history {
                    let label = self.label_of(message);
                    self.echoed(&folded, said, id, timestamp, label).await;
                }
                return;
            }
            let Some(shown) = text::shown(&text::said(said)) else {
                return;
            };
            if from_server {
                // The server's notice to a channel is the room's own.
                let room = {
                    let net = self.network.lock();
                    net.channels
                        .get(&folded)
                        .filter(|channel| net.reports(channel, &self.user))
                        .map(|channel| channel.room.clone())
                };
                if let Some(room) = room {
                    let notice = RoomEvent::Notice {
                        user: None,
                        text: shown,
                    };
                    self.report(&room, notice).await;
                }
                return;
            }
            let report = {
                let net = self.network.lock();
                if net.is_own(nick) {
                    return;
                }
                let Some(channel) = net.channels.get(&folded) else {
                    return;
                };
                if !net.reports(channel, &self.user) {
                    return;
                }
                // A member's id is the one their occupant shows (WHO, joins and
                // `account-notify` keep its account); the account tag names a sender who
                // is not a member.
                let sender = match (channel.members.get(&net.fold(nick)), message.tag("account")) {
                    (Some(member), _) => member.occupant_id(),
                    (None, Some(account)) if !account.is_empty() => {
                        ForeignId::new(format!("account:{account}"))
                    }
                    (None, _) => ForeignId::new(format!("nick:{nick}")),
                };
                (channel.room.clone(), sender)
            };
            let event = RoomEvent::Message(RoomMessage {
                foreign_id: id.unwrap_or_else(|| made_up_id(&self.setup.reach.network)),
                nick: nick.to_owned(),
                sender: report.1,
                text: shown,
                timestamp,
                echo_of: None,
                replaces: None,
                reply_to: replied_to(message),
            });
            self.report(&report.0, event).await;
            return;
        }
        if is_self {
            // The echo of a private message of ours.
            return;
        }
        self.typing_stopped(Some(""), nick);
        if from_server {
            self.server_says(&text::from_irc(said), message).await;
            return;
        }
        let parsed = text::said(said);
        if let Said::Ctcp(command, argument) = &parsed {
            // Answers wait behind nothing else: a flood of requests gets only a few.
            if message.command == "PRIVMSG" && self.queue.len() < 5 {
                self.answer_ctcp(nick, command, argument);
            }
            // The answer to a question of ours: to the first who asked that nick.
            if message.command == "NOTICE" {
                let folded = self.fold(nick);
                let answers = |(asked, question, _): &Asked| {
                    *asked == folded && command.eq_ignore_ascii_case(question)
                };
                if let Some(at) = self.asked.iter().position(answers) {
                    let (_, _, reply) = self.asked.remove(at);
                    let _ = reply.send(text::from_irc(argument));
                    if self.asked.is_empty() {
                        // A calm connection keeps no room for questions.
                        self.asked = Vec::new();
                    }
                }
            }
            return;
        }
        let Some(shown) = text::shown(&parsed) else {
            return;
        };
        self.active = Instant::now();
        let incoming = IncomingMessage {
            foreign_id: id.unwrap_or_else(|| made_up_id(&self.setup.reach.network)),
            contact: ForeignId::new(
                self.setup
                    .reach
                    .addressing
                    .format(&self.setup.reach.network, nick),
            ),
            user: self.user.clone(),
            text: shown,
            attachments: Vec::new(),
            timestamp,
            room: None,
        };
        if let Err(error) = self.core.deliver(incoming).await {
            tracing::warn!(%error, "the core did not take a private message from IRC");
        }
    }

    /// Sets the user's reactions to `message` in `channel`: what the set adds and takes back,
    /// said with `+draft/react` and `+draft/unreact` where the server carries client tags.
    fn react(
        &mut self,
        channel: &str,
        message: &str,
        emojis: &[String],
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        if !self.caps.contains("message-tags") {
            let network = &self.setup.reach.network;
            let why = format!("{network} does not carry reactions (IRCv3 message-tags)");
            let _ = reply.send(Err(why));
            return;
        }
        let folded = self.fold(channel);
        if !self.channels.contains_key(&folded) {
            let _ = reply.send(Err(format!("you are not in {channel}")));
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            let _ = reply.send(Err("too many lines wait for the IRC server".into()));
            return;
        }
        let lines = {
            let mut net = self.network.lock();
            let mine = net.fold(&self.nick);
            match net.channels.get_mut(&folded) {
                Some(known) => {
                    (known.reactions.get_or_insert_default()).set(message, &mine, emojis)
                }
                None => Vec::new(),
            }
        };
        let mut reply = Some(reply);
        let count = lines.len();
        for (at, (tag, emoji)) in lines.into_iter().enumerate() {
            let tags = [
                (reactions::REPLY, Some(message)),
                (tag, Some(emoji.as_str())),
            ];
            let done = (at + 1 == count)
                .then(|| reply.take().map(Done::Sent))
                .flatten();
            self.enqueue_tagged(&tags, "TAGMSG", &[channel], done);
        }
        if let Some(reply) = reply {
            let _ = reply.send(Ok(()));
        }
    }

    /// Retracts the user's message `message` in `channel` with `REDACT`, where the server
    /// offers `draft/message-redaction`; answered once the server took it (the `PONG` of a
    /// `PING` after it) or refused it (`FAIL REDACT`).
    fn redact(
        &mut self,
        channel: &str,
        message: &str,
        reply: oneshot::Sender<Result<(), RoomActionError>>,
    ) {
        if !self.caps.contains("draft/message-redaction") {
            let network = &self.setup.reach.network;
            let why = format!("{network} does not carry retractions (IRCv3 message-redaction)");
            let _ = reply.send(Err(RoomActionError::NotSupported(why)));
            return;
        }
        let folded = self.fold(channel);
        if !self.channels.contains_key(&folded) || self.queue.len() >= MAX_QUEUED {
            let why = format!("you are not in {channel}, or too much waits for the server");
            let _ = reply.send(Err(RoomActionError::Unavailable(why)));
            return;
        }
        self.enqueue("REDACT", &[channel, message], None);
        self.confirm("redact", folded, Waiting::Redacted(reply));
    }

    /// Queues a `PING` behind what was just queued for `target` (folded): the server handles
    /// a connection's lines in order, so its `PONG` says it took them, and `reply` is then
    /// answered (or with the refusal about `target` that came before it).
    fn confirm(&mut self, what: &str, target: String, reply: Waiting) {
        self.serial += 1;
        let token = format!("jabbridge-{what}-{}", self.serial);
        self.enqueue("PING", &[&token], None);
        let since = self.due();
        self.confirming.push_back(PendingSay {
            token,
            target,
            reply,
            since,
            refused: None,
        });
    }

    /// The user types to `target`, or stopped: said with `+typing` where the server carries
    /// client tags, to a channel only once joined.
    fn type_to(&mut self, target: &str, state: ChatState) {
        if !self.caps.contains("message-tags") {
            return;
        }
        let folded = self.fold(target);
        if self.is_channel(target) && !self.channels.contains_key(&folded) {
            return;
        }
        let typing = self.typing.get_or_insert_default();
        if let Some(value) = typing.ours(&folded, target, state, Instant::now()) {
            self.say_typing(target, value);
        }
        self.shed_typing();
    }

    /// Writes a `+typing` tag to `target`, unless it would wait: typing never holds up a
    /// message, nor spends flood control's tokens that a message is waiting for.
    fn say_typing(&mut self, target: &str, value: &str) {
        let unpaced = self.setup.reach.flood.per_second <= 0.0;
        if self.queue.is_empty() && (unpaced || self.tokens_at(Instant::now()) >= 1.0) {
            self.enqueue_tagged(&[(typing::TAG, Some(value))], "TAGMSG", &[target], None);
        }
    }

    /// The user said something to `target` (or the server refused their typing there): their
    /// typing there ended with it. Whether they were typing there.
    fn typing_ended(&mut self, target: &str) -> bool {
        if self.typing.is_none() {
            return false;
        }
        let folded = self.fold(target);
        let ended = (self.typing.as_deref_mut()).is_some_and(|typing| typing.said(&folded));
        self.shed_typing();
        ended
    }

    /// A connection nobody types on keeps no room for typists.
    fn shed_typing(&mut self) {
        if self.typing.as_deref().is_some_and(Typing::is_empty) {
            self.typing = None;
        }
    }

    /// Typing due at `now`: the user's said again (or paused), others' run out reported
    /// paused.
    async fn typing_due(&mut self, now: Instant) {
        let Some(typing) = self.typing.as_deref_mut() else {
            return;
        };
        let ours = typing.due_ours(now);
        let theirs = typing.run_out(now);
        for (target, value) in ours {
            self.say_typing(&target, value);
        }
        for (target, nick) in theirs {
            self.report_typing(&target, &nick, ChatState::Paused).await;
        }
        self.shed_typing();
    }

    /// A `TAGMSG`: someone's reaction (`+draft/react`, `+draft/unreact`), or their typing
    /// (`+typing`) in a channel this connection reports or to the user, each reported once
    /// per change. Other client tags are not carried.
    async fn on_tagmsg(&mut self, message: &Message) {
        let reaction = (message.tag(reactions::REACT).map(|emoji| (emoji, true)))
            .or_else(|| message.tag(reactions::UNREACT).map(|emoji| (emoji, false)));
        if let (Some((emoji, added)), Some(to)) = (reaction, message.tag(reactions::REPLY)) {
            self.on_reaction(message, to, emoji, added).await;
        }
        let Some(state) = (message.tag(typing::TAG))
            .or_else(|| message.tag(typing::DRAFT_TAG))
            .and_then(typing::of_tag)
        else {
            return;
        };
        let (Some(target), Some(nick)) = (message.params.first(), message.nick()) else {
            return;
        };
        let folded_nick = self.fold(nick);
        // Our own, echoed; or replayed history.
        if folded_nick == self.fold(&self.nick) || message.tag("batch").is_some() {
            return;
        }
        let target = match self.is_channel(target) {
            // The core shows its own users' typing in a room itself.
            true if self.network.lock().is_own(nick) => return,
            true => self.fold(target),
            false => String::new(),
        };
        let typing = self.typing.get_or_insert_default();
        let changed = typing.theirs(&target, nick, &folded_nick, state, Instant::now());
        if let Some(state) = changed {
            self.report_typing(&target, nick, state).await;
        }
        self.shed_typing();
    }

    /// A `REDACT` in a channel this connection reports, by someone not of ours (the core shows
    /// our users' own retractions): the message is retracted in the room.
    async fn on_redact(&mut self, message: &Message) {
        let (Some(channel), Some(target), Some(nick)) = (
            message.params.first(),
            message.params.get(1),
            message.nick(),
        ) else {
            return;
        };
        if !self.is_channel(channel) || message.tag("batch").is_some() {
            return;
        }
        let folded = self.fold(channel);
        let room = {
            let net = self.network.lock();
            if net.is_own(nick) {
                return;
            }
            (net.channels.get(&folded))
                .filter(|known| net.reports(known, &self.user))
                .map(|known| known.room.clone())
        };
        if let Some(room) = room {
            let foreign_id = MessageId::new(target.as_str());
            self.report(&room, RoomEvent::Retracted { foreign_id })
                .await;
        }
    }

    /// Someone's reaction to the message `to` in a channel this connection reports (not one of
    /// our users': the core shows theirs), reported as their whole set of reactions to it.
    async fn on_reaction(&mut self, message: &Message, to: &str, emoji: &str, added: bool) {
        let (Some(target), Some(nick)) = (message.params.first(), message.nick()) else {
            return;
        };
        if !self.is_channel(target) || message.tag("batch").is_some() {
            return;
        }
        let folded = self.fold(target);
        let reacted = {
            let mut net = self.network.lock();
            let folded_nick = net.fold(nick);
            if net.is_own(nick) {
                return;
            }
            let reports =
                (net.channels.get(&folded)).is_some_and(|known| net.reports(known, &self.user));
            let Some(known) = net.channels.get_mut(&folded).filter(|_| reports) else {
                return;
            };
            let sender = match known.members.get(&folded_nick) {
                Some(member) => member.occupant_id(),
                None => ForeignId::new(format!("nick:{nick}")),
            };
            let reactions = known.reactions.get_or_insert_default();
            let Some(emojis) = reactions.heard(to, &folded_nick, emoji, added) else {
                return;
            };
            let reaction = jabbridge_sdk::Reaction {
                to: MessageId::new(to),
                nick: nick.to_owned(),
                sender,
                emojis,
            };
            (known.room.clone(), reaction)
        };
        self.report(&reacted.0, RoomEvent::Reacted(reacted.1)).await;
    }

    /// Reports `nick`'s typing in `target` (a folded channel, or empty: to the user): a room
    /// event where this connection reports the channel.
    async fn report_typing(&self, target: &str, nick: &str, state: ChatState) {
        if target.is_empty() {
            let reach = &self.setup.reach;
            let contact = ForeignId::new(reach.addressing.format(&reach.network, nick));
            if let Err(error) = self.core.chat_state(&self.user, &contact, state).await {
                tracing::debug!(%error, "the core did not take a typing notification");
            }
            return;
        }
        let room = {
            let net = self.network.lock();
            (net.channels.get(target))
                .filter(|channel| net.reports(channel, &self.user))
                .map(|channel| channel.room.clone())
        };
        if let Some(room) = room {
            let nick = nick.to_owned();
            self.report(&room, RoomEvent::Typing { nick, state }).await;
        }
    }

    /// Someone spoke in or left `target` (a folded channel; `None`: they quit or changed
    /// nick): their typing there ended without a word to report.
    fn typing_stopped(&mut self, target: Option<&str>, nick: &str) {
        if self.typing.is_some() {
            let folded = self.fold(nick);
            if let Some(typing) = self.typing.as_deref_mut() {
                typing.forget(target, &folded);
            }
            self.shed_typing();
        }
    }

    /// Answers a CTCP request (`VERSION`, `PING`, `TIME`, `CLIENTINFO`); others are dropped.
    fn answer_ctcp(&mut self, nick: &str, command: &str, argument: &str) {
        let answer = match command.to_ascii_uppercase().as_str() {
            "VERSION" => format!("VERSION Jabbridge {}", env!("CARGO_PKG_VERSION")),
            "PING" => format!("PING {argument}"),
            "TIME" => format!(
                "TIME {}",
                humantime::format_rfc3339_seconds(SystemTime::now())
            ),
            "CLIENTINFO" => "CLIENTINFO ACTION CLIENTINFO PING TIME VERSION".to_owned(),
            _ => return,
        };
        let answer: String = answer.chars().filter(|c| !c.is_control()).collect();
        let text = format!("{}{answer}{}", text::CTCP, text::CTCP);
        self.enqueue("NOTICE", &[nick, &text], None);
    }

    /// The echo of a line we said in a channel (`echo-message`): a post is reflected once
    /// all its lines came back.
    async fn echoed(
        &mut self,
        folded: &str,
        said: &str,
        id: Option<MessageId>,
        timestamp: Option<SystemTime>,
        label: Option<u64>,
    ) {
        let Some(queue) = self.echoes.get_mut(folded) else {
            return;
        };
        let index = match label {
            // Labelled: the post its label names; none is one that expired already.
            Some(post) => {
                let Some(index) = queue.iter().position(|echo| echo.label == Some(post)) else {
                    return;
                };
                index
            }
            None => {
                // The post this line belongs to: the first whose next line it is (a line
                // the server dropped leaves its post waiting until it expires).
                let said = said.trim_end();
                // A server that rewrites text (a word filter) echoes what matches nothing:
                // the oldest post is the best guess.
                queue
                    .iter()
                    .position(|echo| {
                        echo.lines
                            .front()
                            .is_some_and(|line| line.trim_end() == said)
                    })
                    .unwrap_or(0)
            }
        };
        let Some(echo) = queue.get_mut(index) else {
            return;
        };
        echo.lines.pop_front();
        if echo.first.is_none() {
            echo.first = Some((
                id.unwrap_or_else(|| made_up_id(&self.setup.reach.network)),
                timestamp,
            ));
        }
        if !echo.lines.is_empty() {
            return;
        }
        let Some(echo) = queue.remove(index) else {
            return;
        };
        if queue.is_empty() {
            self.echoes.remove(folded);
        }
        let Some(room) = self.room_of(folded) else {
            let _ = echo.reply.send(Ok(Posted::Reflect {
                foreign_id: Some(made_up_id(&self.setup.reach.network)),
            }));
            return;
        };
        let (foreign_id, timestamp) = echo
            .first
            .unwrap_or_else(|| (made_up_id(&self.setup.reach.network), None));
        let sender = ForeignId::new(match &self.account {
            Some(account) => format!("account:{account}"),
            None => format!("nick:{}", self.nick),
        });
        let event = RoomEvent::Message(RoomMessage {
            foreign_id,
            nick: self.nick.clone(),
            sender,
            text: echo.text,
            timestamp,
            echo_of: Some(echo.id),
            replaces: None,
            reply_to: echo.reply_to,
        });
        self.report(&room, event).await;
        let _ = echo.reply.send(Ok(Posted::EchoFollows));
    }

    /// Asks for `channel`'s lines said before `before` (the latest with `None`), once at a
    /// time, where the server keeps history and the channel is not being joined.
    fn fetch(
        &mut self,
        channel: &str,
        before: Option<SystemTime>,
        limit: u32,
        reply: oneshot::Sender<Result<Vec<RoomMessage>, String>>,
    ) {
        let folded = self.fold(channel);
        let (Some(most), true) = (
            self.server.history_max,
            self.caps.contains("draft/chathistory"),
        ) else {
            let _ = reply.send(Ok(Vec::new()));
            return;
        };
        let busy = self.fetching.is_some()
            || self.names.contains_key(&folded)
            || self.rejoining.contains_key(&folded)
            || self.pending_joins.contains_key(&folded);
        let Some(name) = self.channels.get(&folded).cloned().filter(|_| !busy) else {
            let _ = reply.send(Err(format!("{channel} cannot be read back now")));
            return;
        };
        let limit = limit.min(most).max(1);
        let count = limit.to_string();
        match before {
            Some(at) => {
                let stamp = format!("timestamp={}", humantime::format_rfc3339_millis(at));
                self.enqueue("CHATHISTORY", &["BEFORE", &name, &stamp, &count], None);
            }
            None => self.enqueue("CHATHISTORY", &["LATEST", &name, "*", &count], None),
        }
        let since = self.due();
        self.fetching = Some(Box::new(Fetch {
            channel: folded,
            batch: None,
            lines: Vec::new(),
            limit: limit as usize,
            reply,
            since,
        }));
    }

    /// What a `chathistory` batch opening now (`reference`, about `target`) is: the answer
    /// to the read waiting for that channel, else a join's history.
    fn history_batch(&mut self, reference: &str, target: Option<&str>) -> Batch {
        let folded = target.map(|target| self.fold(target));
        match self.fetching.as_mut() {
            Some(fetch) if fetch.batch.is_none() && folded.as_ref() == Some(&fetch.channel) => {
                fetch.batch = Some(reference.to_owned());
                Batch::Fetched
            }
            _ => Batch::History,
        }
    }

    /// A line of a read channel's history: kept for the answer, as the room would show it.
    fn fetched(
        &mut self,
        nick: &str,
        said: &str,
        message: &Message,
        id: Option<MessageId>,
        timestamp: Option<SystemTime>,
    ) {
        let Some(fetch) = self.fetching.as_mut() else {
            return;
        };
        let Some(text) = text::shown(&text::said(said)) else {
            return;
        };
        if fetch.lines.len() >= fetch.limit || message.command != "PRIVMSG" {
            return;
        }
        let sender = match message.tag("account") {
            Some(account) if !account.is_empty() => format!("account:{account}"),
            _ => format!("nick:{nick}"),
        };
        fetch.lines.push(RoomMessage {
            foreign_id: id.unwrap_or_else(|| made_up_id(&self.setup.reach.network)),
            nick: nick.to_owned(),
            sender: ForeignId::new(sender),
            text,
            timestamp,
            echo_of: None,
            replaces: None,
            reply_to: replied_to(message),
        });
    }

    /// The post a line answers (`labeled-response`): its own label, or its batch's, when
    /// it is one of ours (`N.i`).
    fn label_of(&self, message: &Message) -> Option<u64> {
        let label = message.tag("label").or_else(|| {
            let batch = message.tag("batch")?;
            match self.batches.get(batch)? {
                Batch::Label(label) => Some(label.as_str()),
                _ => None,
            }
        })?;
        label.split_once('.')?.0.parse().ok()
    }

    /// A notice or an error for the user, from the server's address.
    async fn server_says(&self, text: &str, message: &Message) {
        let id = message.tag("msgid").map(MessageId::new);
        self.deliver_from_server(text, id, server_time(message))
            .await;
    }

    /// The MOTD and notices of registration, for the user.
    async fn server_says_plain(&self, text: &str) {
        self.deliver_from_server(text, None, None).await;
    }

    async fn deliver_from_server(
        &self,
        text: &str,
        id: Option<MessageId>,
        timestamp: Option<SystemTime>,
    ) {
        if text.trim().is_empty() {
            return;
        }
        let incoming = IncomingMessage {
            foreign_id: id.unwrap_or_else(|| made_up_id(&self.setup.reach.network)),
            contact: ForeignId::new(
                self.setup
                    .reach
                    .addressing
                    .format_server(&self.setup.reach.network),
            ),
            user: self.user.clone(),
            text: text.to_owned(),
            attachments: Vec::new(),
            timestamp,
            room: None,
        };
        if let Err(error) = self.core.deliver(incoming).await {
            tracing::debug!(%error, "the core did not take a server notice");
        }
    }

    /// `CAP NEW`, `DEL`, `ACK` after registration (`cap-notify`).
    fn on_cap(&mut self, message: &Message) {
        let sub = message.params.get(1).map(String::as_str);
        let list = message.params.get(2).map(String::as_str).unwrap_or("");
        match sub {
            Some("NEW") => {
                let wanted: Vec<&str> = list
                    .split_whitespace()
                    .map(|cap| cap.split_once('=').map_or(cap, |(name, _)| name))
                    .filter(|cap| WANTED_CAPS.contains(cap) && !self.caps.contains(cap))
                    .collect();
                if !wanted.is_empty() {
                    let wanted = wanted.join(" ");
                    self.enqueue("CAP", &["REQ", &wanted], None);
                }
            }
            Some("DEL") => {
                for cap in list.split_whitespace() {
                    self.caps.remove(cap);
                }
            }
            Some("ACK") => {
                for cap in list.split_whitespace() {
                    match cap.strip_prefix('-') {
                        Some(gone) => self.caps.remove(gone),
                        None => self.caps.insert(cap),
                    };
                }
            }
            _ => {}
        }
    }
}

/// Tells whoever waits on `done` that their line was not sent.
fn fail(done: Option<Done>, reason: &str) {
    match done {
        Some(Done::Posted(reply)) => {
            let _ = reply.send(Err(SendError::Permanent {
                reason: reason.to_owned(),
            }));
        }
        Some(Done::Said(reply)) => {
            let _ = reply.send(Err(SendError::Transient {
                reason: reason.to_owned(),
                retry_after: Some(Duration::from_secs(5)),
            }));
        }
        Some(Done::Sent(reply)) => {
            let _ = reply.send(Err(reason.to_owned()));
        }
        None => {}
    }
}

/// The wait before reconnection attempt `failures` (1, 2…): doubling from 1 s up to `max`,
/// with up to a quarter more of jitter so that users of one server do not come back at once.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(max);
    let jitter = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    base + base.mul_f64(f64::from(jitter % 1000) / 4000.0)
}
