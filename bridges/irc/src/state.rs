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
//! the leaver is still reading the lines before. A line is therefore reported once, however
//! far apart the connections are. Only a connection that drops hands over at once (no such
//! line comes soon); its successor lists the members again, and the lines it had not read
//! are lost to the room (Biboumi loses them as well).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use jabbridge_sdk::{Affiliation, ForeignId, Occupant, Role, RoomId, Subject, UserJid};
use tokio::sync::mpsc;

use crate::client::Command;
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
}

impl Member {
    /// A member without prefixes or account.
    pub fn new(nick: &str) -> Self {
        Self {
            nick: nick.to_owned(),
            prefixes: String::new(),
            account: None,
            away: None,
        }
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
        let id = match &self.account {
            Some(account) => format!("account:{account}"),
            None => format!("nick:{}", self.nick),
        };
        Occupant {
            nick: self.nick.clone(),
            id: ForeignId::new(id),
            role,
            affiliation,
            away: self.away.clone(),
        }
    }
}

/// One channel on the server, as our users in it see it.
#[derive(Debug)]
pub struct Channel {
    /// The room it is.
    pub room: RoomId,
    /// Its name as the server spells it.
    pub name: String,
    /// Its members, by folded nick.
    pub members: HashMap<String, Member>,
    /// Its topic, if it has one.
    pub topic: Option<Subject>,
    /// Our users in it, in the order they joined.
    pub users: Vec<UserJid>,
    /// Those of them not in it on IRC now: their connection is down, or rejoining.
    pub away: HashSet<UserJid>,
    /// Whether `members` was filled from a NAMES reply.
    pub synced: bool,
    /// Who reports its events.
    pub reporter: Reporter,
    /// Who reports the lines after the reporter's leave line while the reporter still
    /// reads those before (`Nobody` when the reporter is not leaving).
    pub heir: Reporter,
}

/// Who reports a channel's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reporter {
    /// Nobody: the next of our users whose join is read takes it.
    Nobody,
    /// This user's connection reports every line it reads.
    User(UserJid),
    /// The reporter (this nick, folded) left: whoever of ours reads its leave line first
    /// reports from there, or, if none of ours was in the channel to read it, the next to
    /// join who does not find the nick in the channel's NAMES.
    Leaving(String),
}

impl Reporter {
    /// Whether this is `user`'s connection (checked for every line read: no allocation).
    pub fn is(&self, user: &UserJid) -> bool {
        matches!(self, Reporter::User(reporter) if reporter == user)
    }
}

impl Channel {
    /// The members as occupants.
    pub fn occupants(&self) -> Vec<Occupant> {
        self.members.values().map(Member::occupant).collect()
    }
}

/// A user's connection to the server, as the others see it.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    /// Where its commands go, boxed: the channel's slots are allocated 32 at a time per
    /// connection, so a small slot keeps an idle connection small.
    pub commands: mpsc::Sender<Box<Command>>,
    /// Whether it is registered with the server now.
    pub up: Arc<AtomicBool>,
    /// Tells it to quit.
    pub stop: Arc<tokio::sync::Notify>,
}

/// What the connections of one server share.
#[derive(Debug, Default)]
pub struct Shared {
    /// How the server folds names.
    pub casemapping: CaseMapping,
    /// Channels with one of our users in them, by folded name.
    pub channels: HashMap<String, Channel>,
    /// Our users' nicks now, folded.
    pub own: HashMap<String, UserJid>,
    /// Our users' connections.
    pub clients: HashMap<UserJid, ClientHandle>,
}

impl Shared {
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

    /// Whether `user`'s connection reports the lines it reads of `channel` now: it is the
    /// reporter, or the reporter's heir.
    pub fn reports(&self, channel: &Channel, user: &UserJid) -> bool {
        channel.reporter.is(user) || channel.heir.is(user)
    }

    /// `user`'s connection read, in the channel `folded`, that `nick` (folded) left it. If
    /// `nick` was reporting the channel (or inheriting it), `user` reports the lines after
    /// this one (when it is in the channel itself). Returns whether it took over.
    pub fn read_leave(&mut self, folded: &str, nick: &str, user: &UserJid) -> bool {
        let Some(channel) = self.channels.get_mut(folded) else {
            return false;
        };
        if !channel.users.contains(user) || channel.away.contains(user) {
            return false;
        }
        let me = Reporter::User(user.clone());
        if channel.heir == Reporter::Leaving(nick.to_owned()) {
            channel.heir = me;
            return true;
        }
        if let Reporter::User(reporter) = &channel.reporter
            && channel.heir == Reporter::Nobody
            && reporter != user
            && self.own.get(nick) == Some(reporter)
        {
            // The reporter may still be reading the lines before this one.
            channel.heir = me;
            return true;
        }
        if channel.reporter == Reporter::Leaving(nick.to_owned()) {
            channel.reporter = me;
            return true;
        }
        false
    }

    /// `user` joined the channel `folded` and the server listed `listed` (folded nicks) in
    /// it: a leaver it did not find left before this join, so none of ours may ever read
    /// its leave; `user` reports from here instead.
    pub fn joined_after_leave(&mut self, folded: &str, listed: &HashSet<String>, user: &UserJid) {
        let Some(channel) = self.channels.get_mut(folded) else {
            return;
        };
        if !channel.users.contains(user) {
            return;
        }
        for hand in [&mut channel.heir, &mut channel.reporter] {
            if let Reporter::Leaving(leaver) = hand
                && !listed.contains(leaver.as_str())
            {
                *hand = Reporter::User(user.clone());
            }
        }
        if channel.reporter == channel.heir {
            channel.heir = Reporter::Nobody;
        }
    }

    /// `user` (now `nick`, folded) read its own leave of the channel `folded`: the lines
    /// after it are its heir's, or, without one, those of the first of ours to read it.
    pub fn leave_reporting(&mut self, folded: &str, nick: &str, user: &UserJid) {
        let Some(channel) = self.channels.get_mut(folded) else {
            return;
        };
        let me = Reporter::User(user.clone());
        if channel.reporter == me {
            channel.reporter = match std::mem::replace(&mut channel.heir, Reporter::Nobody) {
                Reporter::Nobody => Reporter::Leaving(nick.to_owned()),
                heir => heir,
            };
        } else if channel.heir == me {
            channel.heir = Reporter::Leaving(nick.to_owned());
        }
    }

    /// `user`'s connection dropped: what it reported goes at once to the first other of our
    /// users in the channel whose connection is up (no leave line comes soon to hand it over
    /// at). Returns the channels handed over, with who took each, to list members again.
    pub fn drop_reporting(&mut self, user: &UserJid) -> Vec<(String, UserJid)> {
        let me = Reporter::User(user.clone());
        let mut handed = Vec::new();
        for (folded, channel) in &mut self.channels {
            if channel.reporter != me && channel.heir != me {
                continue;
            }
            let next = channel.users.iter().find(|other| {
                *other != user
                    && channel.reporter != Reporter::User((*other).clone())
                    && !channel.away.contains(*other)
                    && self
                        .clients
                        .get(*other)
                        .is_some_and(|client| client.up.load(Ordering::Relaxed))
            });
            let next = match next {
                Some(next) => {
                    handed.push((folded.clone(), next.clone()));
                    Reporter::User(next.clone())
                }
                None => Reporter::Nobody,
            };
            if channel.heir == me {
                channel.heir = next;
            } else {
                channel.reporter = match std::mem::replace(&mut channel.heir, Reporter::Nobody) {
                    Reporter::Nobody => next,
                    heir => heir,
                };
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
    if entry.len() > 2 * MAX_NICK {
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
    Some(member)
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
    fn names_read_with_every_prefix_and_without_hosts() {
        let symbols = "~&@%+";
        assert_eq!(
            parse_name("@+alice!a@host", symbols),
            Some(Member {
                nick: "alice".into(),
                prefixes: "@+".into(),
                account: None,
                away: None
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
