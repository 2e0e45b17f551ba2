//! What one IRC server's connections share: each channel's members, topic and our users in
//! it, kept once per channel rather than once per connection (memory grows with users, not
//! users², as it does in Biboumi), our users' nicks, and who reports a channel's events.
//!
//! Every connection in a channel sees its events; only one reports them to the core, the
//! channel's *reporter*. Events about our own users (their joins, parts, quits, nick
//! changes, kicks) are reported by their own connection, never by the reporter, so a user
//! whose connection drops is not shown leaving.
//!
//! Each connection reads the channel's lines at its own pace, so the reporter changes hands
//! at a line every connection reads in the same place of its stream: the reporter's own
//! leave (its `PART`, `KICK` or `QUIT`). It reports every line before its leave; whoever of
//! ours reads that leave line first (its *heir*) reports every line after it, even while
//! the leaver is still reading the lines before; and so on down a chain of hands
//! ([`Channel::hands`]), each reporting from the leave of the one before to its own. A line
//! is therefore reported once, however far apart the connections are. The leaver is known
//! by the nick its hand records, which whoever of ours first reads a `NICK` line moves, at
//! that line. Only a connection that drops hands over at once (no such line comes soon);
//! its successor lists the members again, and the lines it had not read are lost to the
//! room (Biboumi loses them as well). All of this needs one server's order of lines: a
//! network name that resolves to several servers gives each connection its own.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jabbridge_sdk::{Affiliation, ForeignId, Occupant, Role, RoomId, Subject, UserJid};

use crate::client::Command;
use crate::mailbox;
use crate::wire::CaseMapping;

/// The most members kept per channel: a hostile server's endless NAMES costs this much.
pub const MAX_MEMBERS: usize = 20_000;

/// The most channels kept per server.
pub const MAX_CHANNELS: usize = 10_000;

/// The longest nick kept (servers say 9 to 30; a longer one is a hostile server's).
pub const MAX_NICK: usize = 64;

/// Someone in a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Their nick as the server spells it.
    pub nick: String,
    /// Their channel prefixes (`@`, `+`…), highest first.
    pub prefixes: String,
    /// Their account, when the server says (`extended-join`, `account-tag`).
    pub account: Option<String>,
    /// Their away message, while they are away (`away-notify`).
    pub away: Option<String>,
    /// Their host, when a line said it (`JOIN`, `userhost-in-names`, `CHGHOST`).
    pub host: Option<Box<str>>,
    /// Their real name, when a line said it (`extended-join`, `SETNAME`).
    pub realname: Option<Box<str>>,
}

impl Member {
    /// A member without prefixes or account.
    pub fn new(nick: &str) -> Self {
        Self {
            nick: nick.to_owned(),
            prefixes: String::new(),
            account: None,
            away: None,
            host: None,
            realname: None,
        }
    }

    /// Their stable id: their account's while they have one, else their nick's.
    pub fn occupant_id(&self) -> ForeignId {
        ForeignId::new(match &self.account {
            Some(account) => format!("account:{account}"),
            None => format!("nick:{}", self.nick),
        })
    }

    /// The member as an occupant: ops moderate, voice participates (as Biboumi maps them).
    pub fn occupant(&self) -> Occupant {
        let (role, affiliation) = match self.prefixes.chars().next() {
            Some('~') => (Role::Moderator, Affiliation::Owner),
            Some('&' | '@') => (Role::Moderator, Affiliation::Admin),
            Some('%') => (Role::Moderator, Affiliation::Member),
            Some('+') => (Role::Participant, Affiliation::Member),
            _ => (Role::Participant, Affiliation::None),
        };
        Occupant {
            nick: self.nick.clone(),
            id: self.occupant_id(),
            role,
            affiliation,
            away: self.away.clone(),
            host: self.host.as_deref().map(str::to_owned),
            realname: self.realname.as_deref().map(str::to_owned),
        }
    }
}

/// The longest host kept (a hostname is at most 253; a longer one is a hostile server's).
pub const MAX_HOST: usize = 255;

/// The longest real name kept, in characters.
pub const MAX_REALNAME: usize = 200;

/// The host of a `nick!user@host` source (or NAMES entry), when it has a sane one.
pub fn host_of(source: &str) -> Option<Box<str>> {
    let (_, host) = source.rsplit_once('@')?;
    valid_host(host).then(|| host.into())
}

/// Whether `host` is one to keep and show: not empty, bounded, no spaces or controls.
pub fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= MAX_HOST
        && !host.contains(|c: char| c.is_control() || c.is_whitespace())
}

/// A real name from IRC, cleaned of formatting and bounded; `None` when empty.
pub fn realname_of(text: &str) -> Option<Box<str>> {
    let text = crate::text::from_irc(text);
    let text: String = text.trim().chars().take(MAX_REALNAME).collect();
    (!text.is_empty()).then(|| text.into())
}

/// One channel on the server, as our users in it see it.
#[derive(Debug)]
pub struct Channel {
    /// The room it is.
    pub room: RoomId,
    /// Its name as the server spells it.
    pub name: String,
    /// Its members, by folded nick. Boxed: a table's slot is the size of its value and a
    /// table has free slots (three of four for a channel of one, ~600 bytes unboxed).
    pub members: HashMap<String, Box<Member>>,
    /// Its topic, if it has one.
    pub topic: Option<Subject>,
    /// Our users in it, in the order they joined.
    pub users: Vec<UserJid>,
    /// Those of them not in it on IRC now: their connection is down, or rejoining.
    pub away: HashSet<UserJid>,
    /// Whether `members` was filled from a NAMES reply.
    pub synced: bool,
    /// Who reports its lines, in stream order: each hand from the leave of the one before
    /// (the first: from where it is) up to its own leave. Empty: nobody, and the next of
    /// our users whose join is read takes it.
    pub hands: Vec<Hand>,
    /// Reactions to its recent messages, once there are any.
    pub reactions: Option<Box<crate::reactions::Reactions>>,
}

/// One hand of a channel's reporters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hand {
    /// This user's connection reports the lines it reads in its part of the stream.
    User {
        /// The user.
        user: UserJid,
        /// Their nick, folded, as of the last `NICK` line of theirs read.
        nick: String,
    },
    /// The last hand (this nick, folded) read its own leave: whoever of ours reads that
    /// leave first takes the lines after it, or, if none of ours was in the channel to
    /// read it, the next to join who does not find the nick in the channel's NAMES.
    Leaving(String),
}

impl Hand {
    /// Whether this is `user`'s connection (checked for every line read: no allocation).
    pub fn is(&self, user: &UserJid) -> bool {
        matches!(self, Hand::User { user: hand, .. } if hand == user)
    }

    /// Whether this hand leaves when `nick` (folded) does.
    fn named(&self, nick: &str) -> bool {
        match self {
            Hand::User { nick: hand, .. } | Hand::Leaving(hand) => hand == nick,
        }
    }
}

impl Channel {
    /// The members as occupants.
    pub fn occupants(&self) -> Vec<Occupant> {
        self.members
            .values()
            .map(|member| member.occupant())
            .collect()
    }
}

/// A user's connection to the server, as the others see it.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    /// Where its commands go, boxed: a queued command's slot stays allocated while the
    /// connection lives, so a small slot keeps an idle connection small.
    pub commands: mailbox::Sender<Box<Command>>,
    /// Whether it is registered with the server now.
    pub up: Arc<AtomicBool>,
    /// Tells it to quit.
    pub stop: Arc<tokio::sync::Notify>,
}

/// What a server says of itself at registration that its connections read: its name and
/// the ISUPPORT values they use. The same for every connection to it, so they share one
/// copy ([`Shared::share_traits`]) instead of a handful of strings each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTraits {
    /// The server's name, as it gives it in `001`'s source ("" before one registered).
    pub name: String,
    /// PREFIX: the modes and their symbols.
    pub prefix_modes: (String, String),
    /// CHANMODES: the four lists.
    pub chanmodes: [String; 4],
    /// CHANTYPES.
    pub chantypes: String,
    /// STATUSMSG: the prefixes of a message to a channel's ops or voiced.
    pub statusmsg: String,
    /// CHANNELLEN: the longest channel name, when the server says.
    pub channellen: Option<usize>,
    /// How many lines one `CHATHISTORY` may ask for, where the server has it.
    pub history_max: Option<u32>,
    /// WHOX: a `WHO` can ask for accounts.
    pub whox: bool,
}

impl Default for ServerTraits {
    /// What a connection assumes before a server said otherwise.
    fn default() -> Self {
        Self {
            name: String::new(),
            prefix_modes: prefix_modes(None),
            chanmodes: Default::default(),
            chantypes: "#&".into(),
            statusmsg: "@+".into(),
            channellen: None,
            history_max: None,
            whox: false,
        }
    }
}

/// What the connections of one server share.
#[derive(Debug, Default)]
pub struct Shared {
    /// How the server folds names.
    pub casemapping: CaseMapping,
    /// What the server said of itself to the last connection that registered.
    pub traits: Option<Arc<ServerTraits>>,
    /// Channels with one of our users in them, by folded name.
    pub channels: HashMap<String, Channel>,
    /// Our users' nicks now, folded.
    pub own: HashMap<String, UserJid>,
    /// Our users' connections.
    pub clients: HashMap<UserJid, ClientHandle>,
}

impl Shared {
    /// The shared copy of `traits`: the one kept when it says the same, else `traits`, kept
    /// from now on.
    pub fn share_traits(&mut self, traits: ServerTraits) -> Arc<ServerTraits> {
        match &self.traits {
            Some(kept) if **kept == traits => kept.clone(),
            _ => {
                let traits = Arc::new(traits);
                self.traits = Some(traits.clone());
                traits
            }
        }
    }

    /// Folds a nick or channel name as the server does.
    pub fn fold(&self, name: &str) -> String {
        self.casemapping.fold(name)
    }

    /// Whether `user`'s connection reports the events of the channel `folded`.
    pub fn reports_in(&self, folded: &str, user: &UserJid) -> bool {
        self.channels
            .get(folded)
            .is_some_and(|channel| self.reports(channel, user))
    }

    /// Whether `user`'s connection reports the lines it reads of `channel` now: it holds
    /// one of its hands.
    pub fn reports(&self, channel: &Channel, user: &UserJid) -> bool {
        channel.hands.iter().any(|hand| hand.is(user))
    }

    /// Whether `user` (other than `except`) is in `channel` and connected: one of ours who
    /// reads its lines now.
    fn reads(&self, channel: &Channel, user: &UserJid, except: &UserJid) -> bool {
        user != except
            && !channel.away.contains(user)
            && self
                .clients
                .get(user)
                .is_some_and(|client| client.up.load(Ordering::Relaxed))
    }

    /// `user` (nick `nick`, folded) read its own join of the channel `folded`: it reports
    /// the channel if nobody does.
    pub fn joined(&mut self, folded: &str, nick: &str, user: &UserJid) {
        if let Some(channel) = self.channels.get_mut(folded)
            && channel.hands.is_empty()
        {
            channel.hands.push(Hand::User {
                user: user.clone(),
                nick: nick.to_owned(),
            });
        }
    }

    /// Whether the last hand of the channel `folded` left and nobody has taken over yet.
    pub fn handing(&self, folded: &str) -> bool {
        self.channels
            .get(folded)
            .is_some_and(|channel| matches!(channel.hands.last(), Some(Hand::Leaving(_))))
    }

    /// `user`'s connection (nick `own`, folded) read, in the channel `folded`, that `nick`
    /// (folded) left it. If `nick` held the last hand, `user` takes the lines after this
    /// one (when it is in the channel itself). Returns whether it took over.
    pub fn read_leave(&mut self, folded: &str, nick: &str, user: &UserJid, own: &str) -> bool {
        let Some(channel) = self.channels.get_mut(folded) else {
            return false;
        };
        if !channel.users.contains(user)
            || channel.away.contains(user)
            || channel.hands.iter().any(|hand| hand.is(user))
        {
            return false;
        }
        let me = Hand::User {
            user: user.clone(),
            nick: own.to_owned(),
        };
        match channel.hands.last() {
            Some(Hand::Leaving(leaver)) if leaver == nick => {
                channel.hands.pop();
                channel.hands.push(me);
                true
            }
            // The hand may still be reading the lines before this one.
            Some(last @ Hand::User { .. }) if last.named(nick) => {
                channel.hands.push(me);
                true
            }
            _ => false,
        }
    }

    /// Someone's nick changed from `old` to `new` (folded), as read by one of ours: a hand
    /// known by `old` is known by `new` from this line on (the first reader moves it).
    pub fn read_nick(&mut self, old: &str, new: &str) {
        for channel in self.channels.values_mut() {
            for hand in &mut channel.hands {
                if let Hand::User { nick, .. } = hand
                    && nick == old
                {
                    new.clone_into(nick);
                }
            }
        }
    }

    /// `user` joined the channel `folded` and the server listed `listed` (folded nicks) in
    /// it: a leaver it did not find left before this join, so none of ours may ever read
    /// its leave; `user` (nick `own`) reports from here instead.
    pub fn joined_after_leave(
        &mut self,
        folded: &str,
        listed: &HashSet<String>,
        user: &UserJid,
        own: &str,
    ) {
        let Some(channel) = self.channels.get_mut(folded) else {
            return;
        };
        if !channel.users.contains(user) || channel.hands.iter().any(|hand| hand.is(user)) {
            return;
        }
        if let Some(Hand::Leaving(leaver)) = channel.hands.last()
            && !listed.contains(leaver.as_str())
        {
            channel.hands.pop();
            channel.hands.push(Hand::User {
                user: user.clone(),
                nick: own.to_owned(),
            });
        }
    }

    /// `user` (now `nick`, folded) read its own leave of the channel `folded`: it reports no
    /// more; the lines after it are its heir's, or the first of ours to read the leave. If
    /// none of ours reads the channel now, nobody reports it, and the next to join does.
    pub fn leave_reporting(&mut self, folded: &str, nick: &str, user: &UserJid) {
        let Some(channel) = self.channels.get(folded) else {
            return;
        };
        let Some(at) = channel.hands.iter().position(|hand| hand.is(user)) else {
            return;
        };
        let last = at + 1 == channel.hands.len();
        let readers = channel
            .users
            .iter()
            .any(|other| self.reads(channel, other, user));
        let Some(channel) = self.channels.get_mut(folded) else {
            return;
        };
        match (last, readers) {
            (false, _) => {
                channel.hands.remove(at);
            }
            (true, true) => channel.hands[at] = Hand::Leaving(nick.to_owned()),
            // Nobody of ours reads on: the hands before stop too (their last lines, if
            // any are left, go unreported).
            (true, false) => channel.hands.clear(),
        }
    }

    /// `user`'s connection dropped: what it reported goes at once to the first other of our
    /// users in the channel whose connection is up (no leave line comes soon to hand it over
    /// at). Returns the channels handed over, with who took each, to list members again.
    pub fn drop_reporting(&mut self, user: &UserJid) -> Vec<(String, UserJid)> {
        let mut handed = Vec::new();
        let folded: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, channel)| channel.hands.iter().any(|hand| hand.is(user)))
            .map(|(folded, _)| folded.clone())
            .collect();
        for folded in folded {
            let Some(channel) = self.channels.get(&folded) else {
                continue;
            };
            let Some(at) = channel.hands.iter().position(|hand| hand.is(user)) else {
                continue;
            };
            let last = at + 1 == channel.hands.len();
            let next = channel
                .users
                .iter()
                .find(|other| {
                    self.reads(channel, other, user)
                        && !channel.hands.iter().any(|hand| hand.is(other))
                })
                .cloned();
            let nick = next.as_ref().and_then(|next| {
                self.own
                    .iter()
                    .find(|(_, owner)| *owner == next)
                    .map(|(nick, _)| nick.clone())
            });
            let Some(channel) = self.channels.get_mut(&folded) else {
                continue;
            };
            channel.hands.remove(at);
            if last && let (Some(next), Some(nick)) = (next, nick) {
                channel.hands.push(Hand::User {
                    user: next.clone(),
                    nick,
                });
                handed.push((folded, next));
            }
        }
        handed
    }

    /// Whether `nick` is one of our users.
    pub fn is_own(&self, nick: &str) -> bool {
        self.own.contains_key(&self.fold(nick))
    }
}

/// The shared state of one server, behind a lock never held across an await.
#[derive(Debug, Default)]
pub struct Network {
    shared: Mutex<Shared>,
}

impl Network {
    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panic while holding the lock leaves the maps usable: take them as they are.
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Parses a NAMES entry: prefixes (all of them with `multi-prefix`), then the nick (and
/// `!user@host` with `userhost-in-names`, dropped).
pub fn parse_name(entry: &str, symbols: &str) -> Option<Member> {
    if entry.len() > 2 * MAX_NICK + MAX_HOST {
        return None;
    }
    let nick_start = entry
        .find(|c: char| !symbols.contains(c))
        .unwrap_or(entry.len());
    let (prefixes, rest) = entry.split_at(nick_start);
    let nick = rest.split(['!', '@']).next().unwrap_or("");
    if nick.is_empty() || nick.len() > MAX_NICK {
        return None;
    }
    let mut member = Member::new(nick);
    member.prefixes = sort_prefixes(prefixes, symbols);
    member.host = host_of(rest);
    Some(member)
}

/// The fields our WHOX queries ask for (token, channel, user, host, nick, flags, account,
/// real name) and the token that tells their replies (`354`) from others'.
pub const WHOX_QUERY: &str = "%tcuhnfar,152";

/// The token of [`WHOX_QUERY`].
const WHOX_TOKEN: &str = "152";

/// What a `WHO` reply line says of a channel's member: `352` (RFC 1459), or `354` (WHOX)
/// with its account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The channel, as the line spells it.
    pub channel: String,
    /// The nick.
    pub nick: String,
    /// Their account: only WHOX says (`Some(None)`: not logged in).
    pub account: Option<Option<String>>,
    /// Their host, when sane.
    pub host: Option<Box<str>>,
    /// Their real name, cleaned.
    pub realname: Option<Box<str>>,
    /// Whether they are away (the flags' `G`, "gone").
    pub away: bool,
}

impl Who {
    /// Reads a `352` (`me channel user host server nick flags :hops realname`) or a `354`
    /// of ours (`me token channel user host nick flags account :realname`); `None` for
    /// anything else, or a nick no server would give.
    pub fn parse(command: &str, params: &[String]) -> Option<Self> {
        let param = |index: usize| params.get(index).map(String::as_str);
        let (channel, host, nick, flags, account, realname) = match command {
            "352" => {
                // The real name follows the hop count.
                let realname = param(7)?.split_once(' ').map_or("", |(_, name)| name);
                (param(1)?, param(3)?, param(5)?, param(6)?, None, realname)
            }
            "354" if param(1) == Some(WHOX_TOKEN) => {
                let account = param(7)?;
                let account = (account != "0" && account != "*" && valid_account(account))
                    .then(|| account.to_owned());
                (
                    param(2)?,
                    param(4)?,
                    param(5)?,
                    param(6)?,
                    Some(account),
                    param(8)?,
                )
            }
            _ => return None,
        };
        if nick.is_empty() || nick.len() > MAX_NICK || nick.contains(['!', '@', ' ']) {
            return None;
        }
        Some(Self {
            channel: channel.to_owned(),
            nick: nick.to_owned(),
            account,
            host: valid_host(host).then(|| host.into()),
            realname: realname_of(realname),
            away: flags.starts_with('G'),
        })
    }

    /// Brings `member` up to what this line says; whether anything changed. An away
    /// message known (`away-notify`) is kept while they stay away.
    pub fn update(&self, member: &mut Member) -> bool {
        let before = member.clone();
        if let Some(account) = &self.account {
            member.account.clone_from(account);
        }
        if self.host.is_some() {
            member.host.clone_from(&self.host);
        }
        if self.realname.is_some() {
            member.realname.clone_from(&self.realname);
        }
        if !self.away {
            member.away = None;
        } else if member.away.is_none() {
            member.away = Some(String::new());
        }
        *member != before
    }
}

/// Whether an account name from the server is one to keep: bounded, no spaces or controls.
pub fn valid_account(account: &str) -> bool {
    !account.is_empty()
        && account.len() <= MAX_NICK
        && !account.contains(|c: char| c.is_control() || c.is_whitespace())
}

/// `prefixes` in the server's order (highest first), each once.
pub fn sort_prefixes(prefixes: &str, symbols: &str) -> String {
    symbols.chars().filter(|c| prefixes.contains(*c)).collect()
}

/// ISUPPORT `PREFIX`, e.g. `(ov)@+`: the modes and their symbols, highest first.
pub fn prefix_modes(isupport: Option<&str>) -> (String, String) {
    let value = isupport.unwrap_or("(ov)@+");
    match value
        .strip_prefix('(')
        .and_then(|rest| rest.split_once(')'))
    {
        Some((modes, symbols)) if modes.chars().count() == symbols.chars().count() => {
            (modes.to_owned(), symbols.to_owned())
        }
        _ => ("ov".into(), "@+".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_to_one_server_share_what_it_says_of_itself() {
        let mut shared = Shared::default();
        let said = |name: &str| ServerTraits {
            name: name.into(),
            statusmsg: "@".into(),
            ..ServerTraits::default()
        };
        let first = shared.share_traits(said("irc.example"));
        let second = shared.share_traits(said("irc.example"));
        assert!(Arc::ptr_eq(&first, &second));
        // A server that says otherwise (a name that resolves to several) gets its own, and
        // is the one shared from then on.
        let other = shared.share_traits(said("irc2.example"));
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.name, "irc2.example");
        assert!(Arc::ptr_eq(
            &other,
            &shared.share_traits(said("irc2.example"))
        ));
        assert_eq!(first.name, "irc.example");
    }

    /// A channel with our users r, h and t (nicks the same), all connected, r reporting.
    fn three_of_ours() -> (Shared, [UserJid; 3]) {
        let users = ["r", "h", "t"].map(|name| UserJid::new(format!("{name}@localhost")));
        let mut shared = Shared::default();
        for (user, nick) in users.iter().zip(["r", "h", "t"]) {
            let (commands, _) = crate::mailbox::channel();
            shared.clients.insert(
                user.clone(),
                ClientHandle {
                    commands,
                    up: Arc::new(AtomicBool::new(true)),
                    stop: Arc::default(),
                },
            );
            shared.own.insert(nick.into(), user.clone());
        }
        shared.channels.insert(
            "#c".into(),
            Channel {
                room: RoomId::new("#c%net"),
                name: "#c".into(),
                members: HashMap::new(),
                topic: None,
                users: users.to_vec(),
                away: HashSet::new(),
                synced: true,
                hands: Vec::new(),
                reactions: None,
            },
        );
        shared.joined("#c", "r", &users[0]);
        (shared, users)
    }

    /// Who reports the lines each of r, h and t reads now.
    fn reporting(shared: &Shared, users: &[UserJid; 3]) -> [bool; 3] {
        users.clone().map(|user| shared.reports_in("#c", &user))
    }

    #[test]
    fn two_leaves_in_a_row_hand_over_down_a_chain() {
        let (mut shared, users) = three_of_ours();
        let [r, h, t] = &users;
        // An op kicks r, then h. h reads r's kick first: it reports what follows.
        assert!(shared.read_leave("#c", "r", h, "h"));
        assert_eq!(reporting(&shared, &users), [true, true, false]);
        // t reads both kicks: not r's hand to take any more, but h's.
        assert!(!shared.read_leave("#c", "r", t, "t"));
        assert!(shared.read_leave("#c", "h", t, "t"));
        assert_eq!(reporting(&shared, &users), [true, true, true]);
        // Each reads its own kick, in any order: t is left reporting.
        shared.leave_reporting("#c", "h", h);
        shared.leave_reporting("#c", "r", r);
        assert_eq!(reporting(&shared, &users), [false, false, true]);
    }

    #[test]
    fn a_renamed_reporter_is_known_by_its_new_nick_from_the_rename_on() {
        let (mut shared, users) = three_of_ours();
        let [r, h, _] = &users;
        // h reads r's NICK and PART before r read its NICK.
        shared.read_nick("r", "r2");
        assert!(shared.read_leave("#c", "r2", h, "h"));
        // r reads its NICK (nothing moves twice), then its PART.
        shared.read_nick("r", "r2");
        shared.leave_reporting("#c", "r2", r);
        assert_eq!(reporting(&shared, &users), [false, true, false]);
        // A stranger who takes the old nick and leaves hands nothing over.
        let (mut shared, users) = three_of_ours();
        shared.read_nick("r", "r2");
        assert!(!shared.read_leave("#c", "r", &users[1], "h"));
    }

    #[test]
    fn a_leaver_with_nobody_of_ours_reading_leaves_the_channel_to_the_next_join() {
        let (mut shared, users) = three_of_ours();
        let [r, h, t] = &users;
        for user in [h, t] {
            if let Some(client) = shared.clients.get(user) {
                client.up.store(false, Ordering::Relaxed);
            }
        }
        shared.leave_reporting("#c", "r", r);
        assert_eq!(reporting(&shared, &users), [false, false, false]);
        assert!(!shared.handing("#c"));
        // h comes back and reads its own join: it reports.
        if let Some(client) = shared.clients.get(h) {
            client.up.store(true, Ordering::Relaxed);
        }
        shared.joined("#c", "h", h);
        assert_eq!(reporting(&shared, &users), [false, true, false]);
    }

    #[test]
    fn a_dropped_reporter_hands_over_at_once_to_one_who_reads() {
        let (mut shared, users) = three_of_ours();
        let [r, h, _] = &users;
        if let Some(client) = shared.clients.get(r) {
            client.up.store(false, Ordering::Relaxed);
        }
        let handed = shared.drop_reporting(r);
        assert_eq!(handed, [("#c".to_owned(), h.clone())]);
        assert_eq!(reporting(&shared, &users), [false, true, false]);
    }

    #[test]
    fn names_read_with_every_prefix_and_their_hosts() {
        let symbols = "~&@%+";
        assert_eq!(
            parse_name("@+alice!a@host", symbols),
            Some(Member {
                nick: "alice".into(),
                prefixes: "@+".into(),
                account: None,
                away: None,
                host: Some("host".into()),
                realname: None,
            })
        );
        assert_eq!(
            parse_name("+@bob", symbols).map(|m| m.prefixes),
            Some("@+".into())
        );
        assert_eq!(
            parse_name("carol", symbols).map(|m| m.nick),
            Some("carol".into())
        );
        assert_eq!(parse_name("@", symbols), None);
        assert_eq!(
            prefix_modes(Some("(qaohv)~&@%+")),
            ("qaohv".into(), "~&@%+".into())
        );
        assert_eq!(prefix_modes(Some("(ov")), ("ov".into(), "@+".into()));
    }

    #[test]
    fn who_lines_say_accounts_real_names_hosts_and_absence() {
        let params = |line: &str| -> Vec<String> {
            let (head, last) = line.split_once(" :").unwrap_or((line, ""));
            head.split(' ').chain([last]).map(str::to_owned).collect()
        };
        // WHOX: the account (`0`: none), and `G`: away.
        let bob = Who::parse(
            "354",
            &params("me 152 #c b 10.0.0.2 bob G@ bob_acct :Bob \x02B\x02"),
        )
        .expect("a WHOX line");
        assert_eq!(
            (bob.channel.as_str(), bob.nick.as_str(), bob.away),
            ("#c", "bob", true)
        );
        assert_eq!(bob.account, Some(Some("bob_acct".into())));
        assert_eq!(bob.host.as_deref(), Some("10.0.0.2"));
        assert_eq!(bob.realname.as_deref(), Some("Bob *B*"));
        let carol = Who::parse("354", &params("me 152 #c c h carol H 0 :")).expect("a WHOX line");
        assert_eq!(
            (carol.account, carol.realname, carol.away),
            (Some(None), None, false)
        );
        // Another client's WHOX (another token), a hostile nick, a short line: nothing.
        assert_eq!(Who::parse("354", &params("me 7 #c c h carol H 0 :C")), None);
        assert_eq!(Who::parse("354", &params("me 152 #c c h a!b H 0 :C")), None);
        assert_eq!(Who::parse("354", &params("me 152 #c c h")), None);
        // RFC 1459's: no account, the real name after the hops.
        let dave = Who::parse("352", &params("me #c d host.example s dave H+ :0 Dave D"))
            .expect("a WHO line");
        assert_eq!(
            (dave.account.clone(), dave.realname.as_deref()),
            (None, Some("Dave D"))
        );

        // Bringing members up to date: a known away message stays while they are away;
        // what a plain WHO cannot say (the account) is kept.
        let mut member = Member::new("bob");
        member.away = Some("lunch".into());
        assert!(bob.update(&mut member));
        assert_eq!(member.away.as_deref(), Some("lunch"));
        assert_eq!(member.occupant().id.as_str(), "account:bob_acct");
        assert!(!bob.update(&mut member), "nothing new");
        let mut member = Member::new("dave");
        member.account = Some("dave_acct".into());
        member.away = Some("gone".into());
        assert!(dave.update(&mut member));
        assert_eq!(member.account.as_deref(), Some("dave_acct"));
        assert_eq!(member.away, None);
    }

    #[test]
    fn prefixes_become_roles_and_affiliations() {
        let op = parse_name("@op", "@+").map(|m| m.occupant());
        assert_eq!(
            op.map(|o| (o.role, o.affiliation)),
            Some((Role::Moderator, Affiliation::Admin))
        );
        let voiced = parse_name("+v", "@+").map(|m| m.occupant());
        assert_eq!(
            voiced.map(|o| (o.role, o.affiliation)),
            Some((Role::Participant, Affiliation::Member))
        );
        let mut member = Member::new("dave");
        assert_eq!(member.occupant().id.as_str(), "nick:dave");
        member.account = Some("dave_acct".into());
        assert_eq!(member.occupant().id.as_str(), "account:dave_acct");
    }
}
