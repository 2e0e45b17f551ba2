//! Typing notifications both ways (IRCv3's `+typing` client tag, on `TAGMSG`): which of the
//! user's are said again every few seconds while they last (IRC clients forget one after
//! six), and which of the network's were reported to the core, so that each change is
//! reported once and a typist whose refreshes stopped is reported paused.

use std::time::{Duration, Instant};

use jabbridge_sdk::ChatState;

/// The client tag.
pub const TAG: &str = "+typing";
/// The tag's name while the specification was a draft, which some clients still send.
pub const DRAFT_TAG: &str = "+draft/typing";
/// How often the user's typing is said again while it lasts (the specification: not more
/// often than every 3 s, and receivers forget it after 6).
pub const REFRESH: Duration = Duration::from_secs(3);
/// How long the user's typing lasts without news from their client, after which it is said
/// paused (XEP-0085: a client pauses after 30 s without a keystroke).
pub const OURS_LAST: Duration = Duration::from_secs(30);
/// How long someone's typing lasts on IRC without its refresh (the specification's 6 s).
pub const THEIRS_LAST: Duration = Duration::from_secs(6);
/// The most typists kept each way per connection; more are not carried.
const MOST: usize = 32;

/// What a `+typing` tag's value says, as a chat state: `active` is typing, `paused`
/// stopped, `done` (the text sent or cleared) back to merely present.
pub fn of_tag(value: &str) -> Option<ChatState> {
    match value {
        "active" => Some(ChatState::Composing),
        "paused" => Some(ChatState::Paused),
        "done" => Some(ChatState::Active),
        _ => None,
    }
}

/// The user's typing toward one target.
struct Ours {
    /// The target, folded.
    folded: String,
    /// As written.
    target: String,
    /// When their client last said they type.
    typed: Instant,
    /// When it was last said on IRC.
    told: Instant,
}

/// Someone's typing that was reported.
struct Theirs {
    /// Where: a folded channel, or empty for a private one.
    target: String,
    /// Their nick as they spell it, and folded.
    nick: String,
    folded: String,
    /// When their client last said they type.
    heard: Instant,
}

/// A connection's typists, both ways. Rarely any: the connection boxes it while there are.
#[derive(Default)]
pub struct Typing {
    ours: Vec<Ours>,
    theirs: Vec<Theirs>,
}

impl Typing {
    /// Whether nobody types either way.
    pub fn is_empty(&self) -> bool {
        self.ours.is_empty() && self.theirs.is_empty()
    }

    /// The user's chat state toward `target` (`folded` as the server folds it): the tag value
    /// to say on IRC now, if any. Typing is said at once, then again only after
    /// [`REFRESH`]; a pause or an end only for a target they were typing to.
    pub fn ours(
        &mut self,
        folded: &str,
        target: &str,
        state: ChatState,
        now: Instant,
    ) -> Option<&'static str> {
        let at = self.ours.iter().position(|ours| ours.folded == folded);
        match (state, at) {
            (ChatState::Composing, Some(at)) => {
                let ours = &mut self.ours[at];
                ours.typed = now;
                if now.saturating_duration_since(ours.told) < REFRESH {
                    return None;
                }
                ours.told = now;
                Some("active")
            }
            (ChatState::Composing, None) => {
                if self.ours.len() >= MOST {
                    return None;
                }
                self.ours.push(Ours {
                    folded: folded.to_owned(),
                    target: target.to_owned(),
                    typed: now,
                    told: now,
                });
                Some("active")
            }
            (_, None) => None,
            (ChatState::Paused, Some(at)) => {
                self.ours.swap_remove(at);
                Some("paused")
            }
            (ChatState::Active | ChatState::Inactive | ChatState::Gone, Some(at)) => {
                self.ours.swap_remove(at);
                Some("done")
            }
        }
    }

    /// The user said something to `folded`, or the server refused their typing there: it
    /// ended. Whether they were typing there.
    pub fn said(&mut self, folded: &str) -> bool {
        let before = self.ours.len();
        self.ours.retain(|ours| ours.folded != folded);
        self.ours.len() < before
    }

    /// The user's typing due to be said again at `now`: each target as written and the tag
    /// value; typing without news for [`OURS_LAST`] is said paused, and forgotten.
    pub fn due_ours(&mut self, now: Instant) -> Vec<(String, &'static str)> {
        let mut due = Vec::new();
        self.ours.retain_mut(|ours| {
            if now.saturating_duration_since(ours.told) < REFRESH {
                return true;
            }
            if now.saturating_duration_since(ours.typed) >= OURS_LAST {
                due.push((std::mem::take(&mut ours.target), "paused"));
                return false;
            }
            ours.told = now;
            due.push((ours.target.clone(), "active"));
            true
        });
        due
    }

    /// `nick`'s typing tag, heard in `target` (a folded channel, or empty for a private
    /// one): the chat state to report, if it changed. Repeated typing is reported once, and
    /// a pause or an end only after typing that was.
    pub fn theirs(
        &mut self,
        target: &str,
        nick: &str,
        folded: &str,
        state: ChatState,
        now: Instant,
    ) -> Option<ChatState> {
        let at = (self.theirs.iter())
            .position(|theirs| theirs.target == target && theirs.folded == folded);
        match (state, at) {
            (ChatState::Composing, Some(at)) => {
                self.theirs[at].heard = now;
                None
            }
            (ChatState::Composing, None) => {
                if self.theirs.len() >= MOST {
                    return None;
                }
                self.theirs.push(Theirs {
                    target: target.to_owned(),
                    nick: nick.to_owned(),
                    folded: folded.to_owned(),
                    heard: now,
                });
                Some(ChatState::Composing)
            }
            (_, None) => None,
            (state, Some(at)) => {
                self.theirs.swap_remove(at);
                Some(state)
            }
        }
    }

    /// `folded` spoke in `target`, left it, or (`None`) quit or changed nick: their typing
    /// there (everywhere) ended unreported, as their message or their leaving says as much.
    pub fn forget(&mut self, target: Option<&str>, folded: &str) {
        self.theirs.retain(|theirs| {
            theirs.folded != folded || target.is_some_and(|target| theirs.target != target)
        });
    }

    /// Typing whose refreshes stopped by `now` ([`THEIRS_LAST`]), forgotten: each target and
    /// nick as spelled, to report paused.
    pub fn run_out(&mut self, now: Instant) -> Vec<(String, String)> {
        let mut out = Vec::new();
        self.theirs.retain_mut(|theirs| {
            if now.saturating_duration_since(theirs.heard) < THEIRS_LAST {
                return true;
            }
            out.push((
                std::mem::take(&mut theirs.target),
                std::mem::take(&mut theirs.nick),
            ));
            false
        });
        out
    }

    /// When something is next due: a refresh of the user's typing, or someone's running out.
    pub fn next(&self) -> Option<Instant> {
        let ours = self.ours.iter().map(|ours| ours.told + REFRESH);
        let theirs = self.theirs.iter().map(|theirs| theirs.heard + THEIRS_LAST);
        ours.chain(theirs).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_typing_is_said_once_then_refreshed_then_paused_when_news_stop() {
        let mut typing = Typing::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        assert_eq!(
            typing.ours("#rust", "#Rust", ChatState::Composing, start),
            Some("active")
        );
        // Their client repeats itself within the refresh: nothing more on IRC.
        assert_eq!(
            typing.ours("#rust", "#Rust", ChatState::Composing, at(1)),
            None
        );
        assert_eq!(typing.next(), Some(at(3)));
        assert!(typing.due_ours(at(2)).is_empty());
        assert_eq!(typing.due_ours(at(3)), vec![("#Rust".to_owned(), "active")]);
        // Thirty seconds after the client's last word, the typing is said paused.
        let mut said = Vec::new();
        for secs in (6..=33).step_by(3) {
            said.extend(typing.due_ours(at(secs)));
        }
        assert_eq!(said.last(), Some(&("#Rust".to_owned(), "paused")));
        assert!(
            said[..said.len() - 1]
                .iter()
                .all(|(_, value)| *value == "active")
        );
        assert!(typing.is_empty());
        // A pause or an end for a target they were not typing to says nothing.
        assert_eq!(
            typing.ours("#rust", "#Rust", ChatState::Paused, at(40)),
            None
        );
        assert_eq!(typing.ours("#rust", "#Rust", ChatState::Gone, at(40)), None);
    }

    #[test]
    fn the_users_typing_ends_with_done_paused_or_their_message() {
        let mut typing = Typing::default();
        let now = Instant::now();
        typing.ours("bob", "Bob", ChatState::Composing, now);
        assert_eq!(
            typing.ours("bob", "Bob", ChatState::Active, now),
            Some("done")
        );
        typing.ours("bob", "Bob", ChatState::Composing, now);
        assert_eq!(
            typing.ours("bob", "Bob", ChatState::Paused, now),
            Some("paused")
        );
        typing.ours("bob", "Bob", ChatState::Composing, now);
        assert!(typing.said("bob"));
        assert!(!typing.said("bob"));
        assert!(typing.is_empty());
        assert_eq!(typing.next(), None);
    }

    #[test]
    fn someones_typing_is_reported_once_per_change_and_runs_out() {
        let mut typing = Typing::default();
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let heard = |typing: &mut Typing, state, secs| {
            typing.theirs("#rust", "Bob", "bob", state, at(secs))
        };
        assert_eq!(
            heard(&mut typing, ChatState::Composing, 0),
            Some(ChatState::Composing)
        );
        assert_eq!(heard(&mut typing, ChatState::Composing, 3), None);
        assert_eq!(
            heard(&mut typing, ChatState::Active, 4),
            Some(ChatState::Active)
        );
        // An end or a pause nobody was told of a start of is not reported.
        assert_eq!(heard(&mut typing, ChatState::Paused, 5), None);
        heard(&mut typing, ChatState::Composing, 10);
        assert!(typing.run_out(at(15)).is_empty());
        assert_eq!(typing.next(), Some(at(16)));
        assert_eq!(
            typing.run_out(at(16)),
            vec![("#rust".to_owned(), "Bob".to_owned())]
        );
        // Speaking, leaving or quitting ends it unreported.
        heard(&mut typing, ChatState::Composing, 20);
        typing.theirs("", "Bob", "bob", ChatState::Composing, at(20));
        typing.forget(Some("#rust"), "bob");
        assert_eq!(typing.theirs.len(), 1);
        typing.forget(None, "bob");
        assert!(typing.is_empty());
    }

    #[test]
    fn a_flood_of_typists_is_bounded() {
        let mut typing = Typing::default();
        let now = Instant::now();
        for n in 0..100 {
            let nick = format!("n{n}");
            typing.theirs("#rust", &nick, &nick, ChatState::Composing, now);
            typing.ours(&nick, &nick, ChatState::Composing, now);
        }
        assert_eq!(typing.theirs.len(), MOST);
        assert_eq!(typing.ours.len(), MOST);
        assert_eq!(of_tag("typing"), None);
    }
}
