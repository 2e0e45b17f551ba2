//! Text between the two sides: IRC formatting codes become XEP-0393 styling (bold `*`,
//! italics `_`, strike `~`, monospace `` ` ``) or go, colours go, and what XML cannot carry
//! goes; CTCP (`ACTION` is `/me`) is wrapped and unwrapped.

/// IRC's formatting codes.
const BOLD: char = '\u{2}';
const COLOUR: char = '\u{3}';
const HEX_COLOUR: char = '\u{4}';
const RESET: char = '\u{f}';
const MONOSPACE: char = '\u{11}';
const REVERSE: char = '\u{16}';
const ITALIC: char = '\u{1d}';
const STRIKE: char = '\u{1e}';
const UNDERLINE: char = '\u{1f}';

/// The CTCP delimiter.
pub const CTCP: char = '\u{1}';

/// `text` from IRC as XMPP shows it: bold, italics, strike and monospace as XEP-0393 marks
/// (closed where IRC closes them, or at a reset or the end), colours and the other codes
/// dropped, and every character XML 1.0 forbids dropped.
pub fn from_irc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    // The marks open now, in the order they opened.
    let mut open: Vec<char> = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let mark = match c {
            BOLD => Some('*'),
            ITALIC => Some('_'),
            STRIKE => Some('~'),
            MONOSPACE => Some('`'),
            _ => None,
        };
        if let Some(mark) = mark {
            if let Some(at) = open.iter().position(|&m| m == mark) {
                // Close this one and the ones opened after it (styling spans nest).
                for m in open.drain(at..).rev() {
                    out.push(m);
                }
            } else if chars.peek().is_some_and(|next| !next.is_whitespace()) {
                open.push(mark);
                out.push(mark);
            }
            continue;
        }
        match c {
            COLOUR => skip_colour(&mut chars, |c| c.is_ascii_digit(), 2),
            HEX_COLOUR => skip_colour(&mut chars, |c| c.is_ascii_hexdigit(), 6),
            RESET => {
                for m in open.drain(..).rev() {
                    out.push(m);
                }
            }
            REVERSE | UNDERLINE => {}
            '\t' | '\n' => out.push(c),
            c if xml_char(c) => out.push(c),
            _ => {}
        }
    }
    for m in open.drain(..).rev() {
        out.push(m);
    }
    out
}

/// Skips a colour's `FG[,BG]` after its code: up to `digits` characters each.
fn skip_colour(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    is_digit: impl Fn(char) -> bool,
    digits: usize,
) {
    let take = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let mut taken = 0;
        while taken < digits && chars.peek().is_some_and(|&c| is_digit(c)) {
            chars.next();
            taken += 1;
        }
        taken
    };
    if take(chars) > 0 {
        let mut ahead = chars.clone();
        if ahead.next() == Some(',') && ahead.peek().is_some_and(|&c| is_digit(c)) {
            chars.next();
            take(chars);
        }
    }
}

/// Whether XML 1.0 allows `c` in text (tab and line breaks aside, which callers handle).
fn xml_char(c: char) -> bool {
    let forbidden_control = c.is_control() && !matches!(c, '\t' | '\n' | '\r');
    !forbidden_control && !matches!(c, '\u{fffe}' | '\u{ffff}')
}

/// What a `PRIVMSG` or `NOTICE` text is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said<'a> {
    /// Plain text.
    Text(&'a str),
    /// `/me` (CTCP `ACTION`): the action's text.
    Action(&'a str),
    /// Another CTCP request or reply: its command (upper-cased by the sender, usually) and
    /// argument.
    Ctcp(&'a str, &'a str),
}

/// Reads a `PRIVMSG` or `NOTICE` text.
pub fn said(text: &str) -> Said<'_> {
    let Some(inner) = text.strip_prefix(CTCP) else {
        return Said::Text(text);
    };
    let inner = inner.strip_suffix(CTCP).unwrap_or(inner);
    let (command, argument) = inner.split_once(' ').unwrap_or((inner, ""));
    if command.eq_ignore_ascii_case("ACTION") {
        Said::Action(argument)
    } else {
        Said::Ctcp(command, argument)
    }
}

/// The text XMPP shows for what was said: `/me …` for an action.
pub fn shown(said: &Said<'_>) -> Option<String> {
    match said {
        Said::Text(text) => Some(from_irc(text)),
        Said::Action(action) => Some(format!("/me {}", from_irc(action))),
        Said::Ctcp(..) => None,
    }
}

/// An XMPP user's text as IRC lines' texts: `/me` becomes a CTCP `ACTION` per line; `None`
/// for a text with a control character IRC must not get (line breaks aside: each ends a
/// line), with that character.
pub fn to_irc(text: &str, budget: usize) -> Result<Vec<String>, char> {
    if let Some(bad) = crate::wire::forbidden_char(text) {
        return Err(bad);
    }
    if let Some(action) = text.strip_prefix("/me ") {
        // "\x01ACTION " and "\x01" take 9 bytes of each line.
        return Ok(crate::wire::split_text(action, budget.saturating_sub(9))
            .into_iter()
            .map(|line| format!("{CTCP}ACTION {line}{CTCP}"))
            .collect());
    }
    Ok(crate::wire::split_text(text, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_becomes_styling_or_goes() {
        assert_eq!(from_irc("a \u{2}bold\u{2} word"), "a *bold* word");
        assert_eq!(
            from_irc("\u{1d}it\u{1d} and \u{1e}gone\u{f}"),
            "_it_ and ~gone~"
        );
        assert_eq!(from_irc("\u{2}\u{1d}both\u{f} after"), "*_both_* after");
        assert_eq!(from_irc("\u{2}open to the end"), "*open to the end*");
        assert_eq!(
            from_irc("\u{3}4,12red\u{3} and \u{3}3green"),
            "red and green"
        );
        assert_eq!(from_irc("\u{3},x"), ",x");
        assert_eq!(from_irc("\u{4}ff00aa,001122hex"), "hex");
        assert_eq!(from_irc("nul\u{0}bell\u{7}esc\u{1b}"), "nulbellesc");
        assert_eq!(from_irc("\u{16}rev\u{1f}under"), "revunder");
        assert_eq!(from_irc("\u{2} spaced"), " spaced");
    }

    #[test]
    fn ctcp_reads_and_writes() {
        assert_eq!(said("\u{1}ACTION waves\u{1}"), Said::Action("waves"));
        assert_eq!(said("\u{1}VERSION\u{1}"), Said::Ctcp("VERSION", ""));
        assert_eq!(said("\u{1}PING 123"), Said::Ctcp("PING", "123"));
        assert_eq!(said("plain"), Said::Text("plain"));
        assert_eq!(
            shown(&said("\u{1}ACTION waves\u{1}")).as_deref(),
            Some("/me waves")
        );
        assert_eq!(
            to_irc("/me waves\nand smiles", 100),
            Ok(vec![
                "\u{1}ACTION waves\u{1}".to_owned(),
                "\u{1}ACTION and smiles\u{1}".to_owned()
            ])
        );
        assert_eq!(to_irc("bell\u{7}", 100), Err('\u{7}'));
        assert_eq!(
            to_irc("a\r\nb", 100),
            Ok(vec!["a".to_owned(), "b".to_owned()])
        );
    }
}
