//! Reactions in a channel (IRCv3's `+draft/react` and `+draft/unreact` client tags, with
//! `+draft/reply` naming the message, on `TAGMSG`): each person's reactions to the channel's
//! recent messages, so that the core is told a person's whole set (XEP-0444 speaks in
//! sets, IRC in single reactions), and a user's own, so that their new set is said on IRC as
//! what it adds and what it takes back.

use std::collections::VecDeque;

/// The tag of a reaction.
pub const REACT: &str = "+draft/react";
/// The tag of a reaction taken back.
pub const UNREACT: &str = "+draft/unreact";
/// The tag naming the message reacted to, by its `msgid`.
pub const REPLY: &str = "+draft/reply";
/// The most messages of a channel whose reactions are kept: older ones are forgotten (a
/// reaction to one is then someone's first).
const MESSAGES: usize = 64;
/// The most people whose reactions to one message are kept.
const PEOPLE: usize = 32;
/// The most reactions of one person to one message (the core carries at most 20).
const EACH: usize = 20;
/// The longest reaction carried, in bytes.
pub const LONGEST: usize = 64;

/// One message's reactions: each person (folded nick) and theirs.
type Reacted = (String, Vec<(String, Vec<String>)>);

/// A channel's reactions to its recent messages. Rarely any: a channel boxes it once some
/// come.
#[derive(Debug, Default)]
pub struct Reactions {
    messages: VecDeque<Reacted>,
}

impl Reactions {
    /// The reactions of `folded` to `message`, found or made room for.
    fn of(&mut self, message: &str, folded: &str) -> Option<&mut Vec<String>> {
        let at = match self.messages.iter().position(|(id, _)| id == message) {
            Some(at) => at,
            None => {
                if self.messages.len() >= MESSAGES {
                    self.messages.pop_front();
                }
                self.messages.push_back((message.to_owned(), Vec::new()));
                self.messages.len() - 1
            }
        };
        let people = &mut self.messages[at].1;
        let at = match people.iter().position(|(nick, _)| nick == folded) {
            Some(at) => at,
            None if people.len() >= PEOPLE => return None,
            None => {
                people.push((folded.to_owned(), Vec::new()));
                people.len() - 1
            }
        };
        Some(&mut people[at].1)
    }

    /// Someone's (`folded`) reaction `emoji` to `message`, added or taken back: their
    /// reactions to it now, in full, or `None` when nothing changed.
    pub fn heard(
        &mut self,
        message: &str,
        folded: &str,
        emoji: &str,
        added: bool,
    ) -> Option<Vec<String>> {
        if emoji.is_empty() || emoji.len() > LONGEST {
            return None;
        }
        let theirs = self.of(message, folded)?;
        let known = theirs.iter().position(|had| had == emoji);
        match (added, known) {
            (true, None) if theirs.len() < EACH => theirs.push(emoji.to_owned()),
            (false, Some(at)) => {
                theirs.remove(at);
            }
            _ => return None,
        }
        Some(theirs.clone())
    }

    /// A user's (`folded`) new set of reactions to `message`: the lines to say, each a tag
    /// ([`REACT`] or [`UNREACT`]) and a reaction, what it adds first. (On a message with
    /// too many people's reactions to keep theirs, the whole set is said.)
    pub fn set(
        &mut self,
        message: &str,
        folded: &str,
        emojis: &[String],
    ) -> Vec<(&'static str, String)> {
        let Some(theirs) = self.of(message, folded) else {
            return emojis.iter().map(|emoji| (REACT, emoji.clone())).collect();
        };
        let added = emojis.iter().filter(|emoji| !theirs.contains(emoji));
        let taken = theirs.iter().filter(|had| !emojis.contains(had));
        let lines = (added.map(|emoji| (REACT, emoji.clone())))
            .chain(taken.map(|emoji| (UNREACT, emoji.clone())))
            .collect();
        theirs.clone_from(&emojis.to_vec());
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|item| (*item).to_owned()).collect()
    }

    #[test]
    fn someones_reactions_are_told_as_their_whole_set_and_repeats_change_nothing() {
        let mut reactions = Reactions::default();
        assert_eq!(
            reactions.heard("m1", "bob", "👍", true),
            Some(strings(&["👍"]))
        );
        assert_eq!(reactions.heard("m1", "bob", "👍", true), None);
        assert_eq!(
            reactions.heard("m1", "bob", "🎉", true),
            Some(strings(&["👍", "🎉"]))
        );
        // Another person, another message: sets of their own.
        assert_eq!(
            reactions.heard("m1", "carol", "🎉", true),
            Some(strings(&["🎉"]))
        );
        assert_eq!(
            reactions.heard("m2", "bob", "👀", true),
            Some(strings(&["👀"]))
        );
        assert_eq!(
            reactions.heard("m1", "bob", "👍", false),
            Some(strings(&["🎉"]))
        );
        assert_eq!(reactions.heard("m1", "bob", "👍", false), None);
        assert_eq!(reactions.heard("m1", "bob", "", true), None);
        assert_eq!(reactions.heard("m1", "bob", &"x".repeat(65), true), None);
    }

    #[test]
    fn a_users_new_set_is_said_as_what_it_adds_and_takes_back() {
        let mut reactions = Reactions::default();
        assert_eq!(
            reactions.set("m1", "alice", &strings(&["👍", "🎉"])),
            [(REACT, "👍".to_owned()), (REACT, "🎉".to_owned())]
        );
        assert_eq!(
            reactions.set("m1", "alice", &strings(&["🎉", "👀"])),
            [(REACT, "👀".to_owned()), (UNREACT, "👍".to_owned())]
        );
        assert!(
            reactions
                .set("m1", "alice", &strings(&["🎉", "👀"]))
                .is_empty()
        );
        assert_eq!(
            reactions.set("m1", "alice", &[]),
            [(UNREACT, "🎉".to_owned()), (UNREACT, "👀".to_owned())]
        );
    }

    #[test]
    fn what_is_kept_is_bounded() {
        let mut reactions = Reactions::default();
        for message in 0..100 {
            for person in 0..50 {
                for emoji in 0..30 {
                    let emoji = format!("e{emoji}");
                    reactions.heard(&format!("m{message}"), &format!("p{person}"), &emoji, true);
                }
            }
        }
        assert_eq!(reactions.messages.len(), MESSAGES);
        assert!(
            reactions
                .messages
                .iter()
                .all(|(_, people)| people.len() == PEOPLE)
        );
        assert!(
            (reactions.messages.iter())
                .all(|(_, people)| people.iter().all(|(_, theirs)| theirs.len() == EACH))
        );
        // The oldest were forgotten: the first message's reactions start over.
        assert_eq!(
            reactions.heard("m0", "p0", "e0", true),
            Some(strings(&["e0"]))
        );
    }
}
