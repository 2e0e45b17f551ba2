//! The IRC wire format: lines as RFC 1459/2812 define them, with IRCv3 message tags.
//! Reading takes whatever a server sends (stray spaces, invalid UTF-8, odd tags) without
//! panicking; writing builds only lines that cannot smuggle a second command (no CR, LF or
//! NUL anywhere, parameters that cannot shift) and fit in 512 bytes. A user's text is cut
//! into such lines at line breaks, then at word boundaries, never inside a UTF-8 character.
//! Text is UTF-8 both ways unless a user chose another encoding for a server.

use std::borrow::Cow;
use std::fmt;

use encoding_rs::Encoding;

/// The longest line a client may send, CR LF included, tags aside (RFC 2812 §2.3).
pub const MAX_LINE: usize = 512;

/// The most bytes of tags a client may send (IRCv3 message-tags), `@` and space aside.
pub const MAX_CLIENT_TAGS: usize = 4094;

/// The longest line read from a server: 8,191 bytes of tags (IRCv3) and a 512-byte line.
/// The reader drops what goes beyond.
pub const MAX_INCOMING: usize = 8191 + MAX_LINE;

/// A line as read from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// IRCv3 tags, in order, their values unescaped (`None`: a tag without a value).
    pub tags: Vec<(String, Option<String>)>,
    /// Who sent it (`nick!user@host`, or a server name), when the line says.
    pub source: Option<String>,
    /// The command, upper-cased (`PRIVMSG`), or a three-digit numeric (`005`).
    pub command: String,
    /// The parameters, the trailing one included.
    pub params: Vec<String>,
}

impl Message {
    /// The value of tag `key`: `Some("")` for a tag present without a value.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(name, _)| name == key)
            .map(|(_, value)| value.as_deref().unwrap_or(""))
    }

    /// The sender's nick: the source up to `!` or `@`.
    pub fn nick(&self) -> Option<&str> {
        let source = self.source.as_deref()?;
        let end = source.find(['!', '@']).unwrap_or(source.len());
        Some(&source[..end])
    }
}

/// Why a line from a server does not parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Nothing but spaces and a line end.
    Empty,
    /// Tags or a source, and no command.
    NoCommand,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "an empty line",
            Self::NoCommand => "a line without a command",
        })
    }
}

impl std::error::Error for ParseError {}

/// The text of a line from a server: UTF-8, or, when it is not valid UTF-8, the user's
/// `fallback` encoding for that server (`windows-1251`…; bytes it cannot read become
/// U+FFFD), else Latin-1 (which maps every byte to a character, so nothing is lost or
/// refused). A 7-bit encoding whose text is also valid UTF-8 (`iso-2022-jp`) reads every
/// line.
pub fn decode<'a>(bytes: &'a [u8], fallback: Option<&'static Encoding>) -> Cow<'a, str> {
    if let Some(encoding) = fallback.filter(|encoding| !encoding.is_ascii_compatible()) {
        return encoding.decode_without_bom_handling(bytes).0;
    }
    match (std::str::from_utf8(bytes), fallback) {
        (Ok(text), _) => Cow::Borrowed(text),
        (Err(_), Some(encoding)) => encoding.decode_without_bom_handling(bytes).0,
        (Err(_), None) => Cow::Owned(bytes.iter().map(|&byte| char::from(byte)).collect()),
    }
}

/// The bytes of a line to write: UTF-8, or the user's `encoding` for that server, where a
/// character it cannot carry becomes `?` (never a longer escape: the line was cut to fit
/// the limit as UTF-8, which no single-byte encoding exceeds; a stateful one's escapes,
/// ISO-2022-JP's, may add a few bytes to a line that mixes scripts).
pub fn encode<'a>(line: &'a str, encoding: Option<&'static Encoding>) -> Cow<'a, [u8]> {
    let Some(encoding) = encoding.filter(|encoding| *encoding != encoding_rs::UTF_8) else {
        return Cow::Borrowed(line.as_bytes());
    };
    // The line end goes after the encoder's last escape (ISO-2022-JP returns to ASCII at
    // the end): an escape after it would start the next line.
    let (body, end) = match line.strip_suffix("\r\n") {
        Some(body) => (body, &b"\r\n"[..]),
        None => (line, &b""[..]),
    };
    let mut encoder = encoding.new_encoder();
    let mut out = Vec::with_capacity(line.len() + 8);
    let mut rest = body;
    loop {
        let room = encoder
            .max_buffer_length_from_utf8_without_replacement(rest.len())
            .unwrap_or(rest.len() * 4 + 16);
        out.reserve(room);
        let (result, read) =
            encoder.encode_from_utf8_to_vec_without_replacement(rest, &mut out, true);
        rest = &rest[read..];
        match result {
            encoding_rs::EncoderResult::InputEmpty => {
                out.extend_from_slice(end);
                return Cow::Owned(out);
            }
            encoding_rs::EncoderResult::Unmappable(_) => out.push(b'?'),
            encoding_rs::EncoderResult::OutputFull => {}
        }
    }
}

/// Parses one line (its CR LF, if any, is ignored).
pub fn parse(line: &str) -> Result<Message, ParseError> {
    let line = line.trim_end_matches(['\r', '\n']);
    let mut rest = line.trim_start_matches(' ');
    if rest.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut tags = Vec::new();
    if let Some(after) = rest.strip_prefix('@') {
        let (raw, tail) = after.split_once(' ').unwrap_or((after, ""));
        tags = raw
            .split(';')
            .filter(|tag| !tag.is_empty())
            .map(|tag| match tag.split_once('=') {
                Some((key, value)) => (key.to_owned(), Some(unescape_tag(value))),
                None => (tag.to_owned(), None),
            })
            .collect();
        rest = tail.trim_start_matches(' ');
    }
    let mut source = None;
    if let Some(after) = rest.strip_prefix(':') {
        let (raw, tail) = after.split_once(' ').unwrap_or((after, ""));
        source = Some(raw.to_owned());
        rest = tail.trim_start_matches(' ');
    }
    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if command.is_empty() {
        return Err(ParseError::NoCommand);
    }
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing.to_owned());
            break;
        }
        let (param, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        params.push(param.to_owned());
        rest = tail;
    }
    Ok(Message {
        tags,
        source,
        command: command.to_ascii_uppercase(),
        params,
    })
}

/// A tag value as written on the wire, unescaped (IRCv3 message-tags): `\:` is `;`, `\s` a
/// space, `\\` a backslash, `\r` and `\n` CR and LF; a backslash before anything else is
/// dropped, and so is one at the end.
fn unescape_tag(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// A tag value escaped for the wire (the inverse of reading it).
fn escape_tag(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            ';' => out.push_str("\\:"),
            ' ' => out.push_str("\\s"),
            '\\' => out.push_str("\\\\"),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            other => out.push(other),
        }
    }
    out
}

/// Why a line cannot be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// A CR, LF or NUL, which would end the line (or the server's reading of it) early.
    LineBreak,
    /// The command is not letters or digits.
    BadCommand(String),
    /// A parameter other than the last is empty, holds a space, or starts with `:`: it
    /// would shift the ones after it.
    BadParameter(String),
    /// A tag key that is not `[+][vendor/]name` of letters, digits, `-`, `.` and `/`.
    BadTag(String),
    /// Longer than [`MAX_LINE`] bytes (tags aside): this many.
    TooLong(usize),
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::LineBreak => f.write_str("a line break or NUL cannot be sent to IRC"),
            Self::BadCommand(command) => write!(f, "'{command}' is not an IRC command"),
            Self::BadParameter(param) => write!(f, "'{param}' cannot be an IRC parameter here"),
            Self::BadTag(key) => write!(f, "'{key}' is not an IRCv3 tag name"),
            Self::TooLong(length) => {
                write!(f, "the line would be {length} bytes; IRC takes {MAX_LINE}")
            }
        }
    }
}

impl std::error::Error for LineError {}

/// Reads a raw command as a user writes it (`MODE alice +R`, `PRIVMSG bob :two words`):
/// the command, upper-cased, and its parameters, the one after a `:` running to the end.
/// [`line`] checks them.
pub fn parse_command(text: &str) -> (String, Vec<String>) {
    let text = text.trim();
    let (command, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut params = Vec::new();
    let mut rest = rest.trim_start();
    while !rest.is_empty() {
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing.to_owned());
            break;
        }
        let (param, more) = rest.split_once(' ').unwrap_or((rest, ""));
        params.push(param.to_owned());
        rest = more.trim_start();
    }
    (command.to_ascii_uppercase(), params)
}

/// Writes `COMMAND p1 p2 … :last` and CR LF, with `tags` in front when there are any. The
/// last parameter goes as a trailing one when it must (empty, with a space, or starting
/// with `:`); every other must be a plain word.
pub fn line(
    tags: &[(&str, Option<&str>)],
    command: &str,
    params: &[&str],
) -> Result<String, LineError> {
    if command.is_empty() || !command.bytes().all(|byte| byte.is_ascii_alphanumeric()) {
        return Err(LineError::BadCommand(command.to_owned()));
    }
    let forbidden = |text: &str| text.contains(['\r', '\n', '\0']);
    let mut out = String::new();
    if !tags.is_empty() {
        out.push('@');
        for (index, (key, value)) in tags.iter().enumerate() {
            let name = key.strip_prefix('+').unwrap_or(key);
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b"-./".contains(&byte));
            if !valid {
                return Err(LineError::BadTag((*key).to_owned()));
            }
            if index > 0 {
                out.push(';');
            }
            out.push_str(key);
            if let Some(value) = value {
                if value.contains('\0') {
                    return Err(LineError::LineBreak);
                }
                out.push('=');
                out.push_str(&escape_tag(value));
            }
        }
        // IRCv3 message-tags: at most 4,094 bytes of client tags, `@` and space aside.
        if out.len() - 1 > MAX_CLIENT_TAGS {
            return Err(LineError::TooLong(out.len() - 1));
        }
        out.push(' ');
    }
    let start = out.len();
    out.push_str(command);
    for (index, param) in params.iter().enumerate() {
        if forbidden(param) {
            return Err(LineError::LineBreak);
        }
        out.push(' ');
        let last = index + 1 == params.len();
        let plain = !param.is_empty() && !param.contains(' ') && !param.starts_with(':');
        if !last && !plain {
            return Err(LineError::BadParameter((*param).to_owned()));
        }
        if !plain {
            out.push(':');
        }
        out.push_str(param);
    }
    out.push_str("\r\n");
    let length = out.len() - start;
    if length > MAX_LINE {
        return Err(LineError::TooLong(length));
    }
    Ok(out)
}

/// The first character of `text` that cannot go to IRC: a control character other than
/// tab and the line breaks (which become separate lines), or DEL.
pub fn forbidden_char(text: &str) -> Option<char> {
    text.chars()
        .find(|&c| (c.is_control() && !matches!(c, '\t' | '\n' | '\r')) || c == '\u{7f}')
}

/// The bytes a `PRIVMSG` (or `NOTICE`) to `target` has for its text, once the server puts
/// the sender (`source_len` bytes of `nick!user@host`) in front as it relays it.
pub fn text_budget(source_len: usize, command: &str, target: &str) -> usize {
    // ":" source " " command " " target " :" text "\r\n"
    let overhead = 1 + source_len + 1 + command.len() + 1 + target.len() + 2 + 2;
    MAX_LINE.saturating_sub(overhead)
}

/// Cuts `text` into the pieces one message each can carry: one per line of the text (CR LF,
/// LF and CR end a line; empty lines are dropped), each line cut to at most `budget` bytes
/// at the last space that fits (the space goes) or, without one, at the last character
/// boundary that fits. A budget under 4 bytes counts as 4, so that any character fits.
pub fn split_text(text: &str, budget: usize) -> Vec<String> {
    let budget = budget.max(4);
    let mut pieces = Vec::new();
    for line in text.split(['\r', '\n']) {
        let mut rest = line;
        while rest.len() > budget {
            let mut cut = budget;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            match rest[..cut].rfind(' ').filter(|&space| space > 0) {
                Some(space) => {
                    pieces.push(rest[..space].to_owned());
                    rest = &rest[space + 1..];
                }
                None => {
                    pieces.push(rest[..cut].to_owned());
                    rest = &rest[cut..];
                }
            }
        }
        if !rest.is_empty() {
            pieces.push(rest.to_owned());
        }
    }
    pieces
}

/// How a server compares nicks and channel names (ISUPPORT `CASEMAPPING`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CaseMapping {
    /// Only A-Z fold to a-z.
    Ascii,
    /// A-Z and `[]\~` fold to a-z and `{}|^` (the default of RFC 1459 servers).
    #[default]
    Rfc1459,
    /// A-Z and `[]\` fold to a-z and `{}|`.
    StrictRfc1459,
}

impl CaseMapping {
    /// The mapping an ISUPPORT `CASEMAPPING` value names; RFC 1459's for anything unknown.
    pub fn from_isupport(value: &str) -> Self {
        match value.to_ascii_lowercase().as_str() {
            "ascii" => Self::Ascii,
            "strict-rfc1459" => Self::StrictRfc1459,
            _ => Self::Rfc1459,
        }
    }

    /// `name` folded, so that two names the server takes for one compare equal.
    pub fn fold(self, name: &str) -> String {
        name.chars()
            .map(|c| match (self, c) {
                (_, 'A'..='Z') => c.to_ascii_lowercase(),
                (Self::Rfc1459 | Self::StrictRfc1459, '[') => '{',
                (Self::Rfc1459 | Self::StrictRfc1459, ']') => '}',
                (Self::Rfc1459 | Self::StrictRfc1459, '\\') => '|',
                (Self::Rfc1459, '~') => '^',
                _ => c,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn lines_parse_with_tags_source_and_trailing_parameters() {
        let message = parse(
            "@time=2026-12-02T10:00:00.000Z;msgid=a\\sb\\:c;+draft/reply :alice!a@host \
             privmsg  #rust :hello there :)\r\n",
        )
        .unwrap();
        assert_eq!(message.tag("time"), Some("2026-12-02T10:00:00.000Z"));
        assert_eq!(message.tag("msgid"), Some("a b;c"));
        assert_eq!(message.tag("+draft/reply"), Some(""));
        assert_eq!(message.tag("account"), None);
        assert_eq!(message.nick(), Some("alice"));
        assert_eq!(message.command, "PRIVMSG");
        assert_eq!(message.params, ["#rust", "hello there :)"]);

        let numeric =
            parse(":irc.example.net 005 bob CASEMAPPING=ascii CHANTYPES=# :are supported").unwrap();
        assert_eq!(numeric.nick(), Some("irc.example.net"));
        assert_eq!(numeric.command, "005");
        assert_eq!(
            numeric.params,
            ["bob", "CASEMAPPING=ascii", "CHANTYPES=#", "are supported"]
        );
        let ping = parse("PING token").unwrap();
        assert_eq!((ping.source, ping.params), (None, vec!["token".to_owned()]));
        assert_eq!(parse("PRIVMSG #c :").unwrap().params, ["#c", ""]);
        assert_eq!(parse("  \r\n"), Err(ParseError::Empty));
        assert_eq!(parse("@a=b :server"), Err(ParseError::NoCommand));
        assert_eq!(unescape_tag("end\\"), "end");
        assert_eq!(unescape_tag("\\x\\\\"), "x\\");
    }

    #[test]
    fn text_that_is_not_utf8_is_read_as_latin1_or_the_users_encoding() {
        assert_eq!(decode(b"caf\xe9", None), "café");
        assert_eq!(decode("café".as_bytes(), None), "café");
        let cp1251 = Some(encoding_rs::WINDOWS_1251);
        assert_eq!(decode(b"\xcf\xf0\xe8\xe2\xe5\xf2", cp1251), "Привет");
        // UTF-8 stays UTF-8 whatever the user chose.
        assert_eq!(decode("Привет".as_bytes(), cp1251), "Привет");
        let jis = Some(encoding_rs::ISO_2022_JP);
        assert_eq!(decode(b"\x1b$B$3$s$K$A$O\x1b(B!", jis), "こんにちは!");
    }

    #[test]
    fn written_lines_go_in_the_users_encoding_unmappable_characters_as_question_marks() {
        assert_eq!(
            &*encode("PRIVMSG #a :hé\r\n", None),
            "PRIVMSG #a :hé\r\n".as_bytes()
        );
        let cp1251 = Some(encoding_rs::WINDOWS_1251);
        assert_eq!(
            &*encode("Привет 🙂!\r\n", cp1251),
            b"\xcf\xf0\xe8\xe2\xe5\xf2 ?!\r\n"
        );
        let jis = Some(encoding_rs::ISO_2022_JP);
        assert_eq!(&*encode("こんにちは!", jis), b"\x1b$B$3$s$K$A$O\x1b(B!");
        // Back to ASCII before the line ends, not after (the next line would start with it).
        assert_eq!(&*encode("¥\r\n", jis), b"\x1b(J\\\x1b(B\r\n");
        // Lines of many unmappable characters: every one a '?', nothing lost around them.
        let long = format!("a{}b", "🙂".repeat(300));
        let written = encode(&long, cp1251);
        assert_eq!(written.len(), 302);
        assert!(written.starts_with(b"a?") && written.ends_with(b"?b"));
    }

    #[test]
    fn written_lines_cannot_carry_a_second_command() {
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", "hi\r\nQUIT :bye"]),
            Err(LineError::LineBreak)
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", "a\0b"]),
            Err(LineError::LineBreak)
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust x", "hi"]),
            Err(LineError::BadParameter("#rust x".into()))
        );
        assert_eq!(
            line(&[], "PRIVMSG", &[":#rust", "hi"]),
            Err(LineError::BadParameter(":#rust".into()))
        );
        assert_eq!(
            line(&[], "PRI VMSG", &[]),
            Err(LineError::BadCommand("PRI VMSG".into()))
        );
        assert_eq!(
            line(&[("bad key", None)], "PING", &["x"]),
            Err(LineError::BadTag("bad key".into()))
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", "hi"]).unwrap(),
            "PRIVMSG #rust hi\r\n"
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", "hi there"]).unwrap(),
            "PRIVMSG #rust :hi there\r\n"
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", ""]).unwrap(),
            "PRIVMSG #rust :\r\n"
        );
        assert_eq!(
            line(&[], "PRIVMSG", &["#rust", ":)"]).unwrap(),
            "PRIVMSG #rust ::)\r\n"
        );
        assert_eq!(
            line(
                &[("label", Some("a;b c")), ("+draft/reply", None)],
                "PRIVMSG",
                &["#r", "x"]
            )
            .unwrap(),
            "@label=a\\:b\\sc;+draft/reply PRIVMSG #r x\r\n"
        );
        assert_eq!(
            line(&[("label", Some("a\0b"))], "PING", &["x"]),
            Err(LineError::LineBreak)
        );
        let huge = "v".repeat(MAX_CLIENT_TAGS);
        assert!(matches!(
            line(&[("label", Some(&huge))], "PING", &["x"]),
            Err(LineError::TooLong(_))
        ));
        let long = "x".repeat(MAX_LINE);
        assert!(matches!(
            line(&[], "PRIVMSG", &["#rust", &long]),
            Err(LineError::TooLong(_))
        ));
    }

    #[test]
    fn text_is_cut_at_line_breaks_then_words_never_inside_a_character() {
        assert_eq!(
            split_text("one\r\ntwo\n\nthree\r", 100),
            ["one", "two", "three"]
        );
        assert_eq!(split_text("hello wide world", 11), ["hello wide", "world"]);
        assert_eq!(split_text("abcdefghij", 4), ["abcd", "efgh", "ij"]);
        // "é" is two bytes: a 5-byte budget cannot end between them.
        assert_eq!(split_text("aéééé", 5), ["aéé", "éé"]);
        assert_eq!(split_text("🦀🦀", 1), ["🦀", "🦀"]);
        assert!(split_text("", 10).is_empty());
        assert_eq!(forbidden_char("tab\tand lines\r\n"), None);
        assert_eq!(forbidden_char("bell\u{7}"), Some('\u{7}'));
        assert_eq!(forbidden_char("del\u{7f}"), Some('\u{7f}'));
        let budget = text_budget("alice!alice@example.org".len(), "PRIVMSG", "#rust");
        assert_eq!(budget, 512 - (1 + 23 + 1 + 7 + 1 + 5 + 2 + 2));
    }

    #[test]
    fn case_mappings_fold_as_isupport_says() {
        let rfc = CaseMapping::from_isupport("rfc1459");
        assert_eq!(rfc.fold("#Rust[]\\~"), "#rust{}|^");
        assert_eq!(
            CaseMapping::from_isupport("strict-rfc1459").fold("[~]"),
            "{~}"
        );
        assert_eq!(
            CaseMapping::from_isupport("ascii").fold("#Rust[~]"),
            "#rust[~]"
        );
        assert_eq!(CaseMapping::from_isupport("unknown"), CaseMapping::Rfc1459);
    }

    proptest! {
        /// In whatever encoding a user chose, a written line's bytes end it once: the
        /// encoding adds no CR, LF or NUL (unmappable characters become '?').
        #[test]
        fn any_line_in_any_encoding_stays_one_line(
            text in "\\PC{0,300}",
            label in prop::sample::select(vec![
                "utf-8", "windows-1251", "koi8-r", "iso-8859-15", "shift_jis", "gbk",
                "big5", "euc-kr", "iso-2022-jp", "euc-jp",
            ]),
        ) {
            let encoding = Encoding::for_label(label.as_bytes());
            prop_assert!(encoding.is_some());
            if let Ok(written) = line(&[], "PRIVMSG", &["#rust", &text]) {
                let bytes = encode(&written, encoding);
                prop_assert!(bytes.ends_with(b"\r\n"));
                let breaks = bytes.iter().filter(|b| matches!(b, b'\r' | b'\n' | 0)).count();
                prop_assert_eq!(breaks, 2);
            }
        }

        /// Whatever a user writes, every line sent carries one command, fits in 512
        /// bytes, and together the lines say the text (less the spaces cut at).
        #[test]
        fn any_text_becomes_safe_lines_that_keep_it(text in "\\PC{0,2000}|[ a-zé\\r\\n🦀]{0,2000}", source in 1usize..120) {
            let budget = text_budget(source, "PRIVMSG", "#rust");
            let pieces = split_text(&text, budget);
            for piece in &pieces {
                prop_assert!(piece.len() <= budget.max(4));
                prop_assert!(!piece.is_empty());
                if !piece.contains('\0') {
                    let written = line(&[], "PRIVMSG", &["#rust", piece]).unwrap();
                    prop_assert_eq!(written.matches("\r\n").count(), 1);
                    // The server adds ":" source " " in front.
                    prop_assert!(written.len() + source + 2 <= MAX_LINE);
                }
            }
            let kept: String = pieces.concat().chars().filter(|c| *c != ' ').collect();
            let said: String = text.chars().filter(|c| !matches!(c, ' ' | '\r' | '\n')).collect();
            prop_assert_eq!(kept, said);
        }

        /// Any bytes from a server are read without a panic, and a written line reads back
        /// as what was written.
        #[test]
        fn any_bytes_parse_and_written_lines_read_back(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
            middle in "[a-z#&]{1,10}",
            last in "[^\\r\\n\\x00]{0,100}",
        ) {
            let _ = parse(&decode(&bytes, None));
            let written = line(&[], "PRIVMSG", &[&middle, &last]).unwrap();
            let read = parse(&written).unwrap();
            prop_assert_eq!(read.command, "PRIVMSG");
            prop_assert_eq!(read.params, vec![middle, last]);
        }
    }
}
