//! JID localparts for foreign addresses: XEP-0106 escaping both ways (jid 0.12 only
//! unescapes), and the check of a bridge's domain.

/// The characters XEP-0106 escapes, with their escape codes.
const ESCAPES: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

fn code_of(character: char) -> Option<&'static str> {
    ESCAPES
        .iter()
        .find(|(escaped, _)| *escaped == character)
        .map(|(_, code)| *code)
}

fn char_of(code: &str) -> Option<char> {
    ESCAPES
        .iter()
        .find(|(_, escape)| escape.eq_ignore_ascii_case(code))
        .map(|(character, _)| *character)
}

/// Escapes a foreign address for use as a JID localpart (XEP-0106 §4.2): the ten special
/// characters become `\XX`; a backslash is escaped only where it would otherwise read as an
/// escape sequence, so that `unescape(escape(s)) == s` for every `s`.
pub fn escape(raw: &str) -> String {
    let mut escaped = String::with_capacity(raw.len());
    let characters: Vec<char> = raw.chars().collect();
    for (index, &character) in characters.iter().enumerate() {
        let needs_escape = match character {
            '\\' => {
                let following: String = characters[index + 1..].iter().take(2).collect();
                following.len() == 2 && char_of(&following).is_some()
            }
            other => code_of(other).is_some(),
        };
        if needs_escape {
            escaped.push('\\');
            escaped.push_str(code_of(character).unwrap_or("5c"));
        } else {
            escaped.push(character);
        }
    }
    escaped
}

/// Reverses [`escape`] (XEP-0106 §4.3): every `\XX` that is one of the ten codes becomes its
/// character; any other backslash stays as it is.
pub fn unescape(escaped: &str) -> String {
    let mut raw = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(position) = rest.find('\\') {
        raw.push_str(&rest[..position]);
        let after = &rest[position + 1..];
        match after.get(..2).and_then(char_of) {
            Some(character) => {
                raw.push(character);
                rest = &after[2..];
            }
            None => {
                raw.push('\\');
                rest = after;
            }
        }
    }
    raw.push_str(rest);
    raw
}

/// Checks that a configured bridge domain is a plain domain JID (no `@`, no `/`).
pub fn check_domain(domain: &str) -> Result<(), String> {
    match xmpp_parsers::jid::BareJid::new(domain) {
        Ok(jid) if jid.node().is_none() => Ok(()),
        Ok(_) => Err(format!(
            "'{domain}' is a user address; a bridge domain has no '@'"
        )),
        Err(error) => Err(format!("'{domain}' is not a valid domain: {error}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_as_xep_0106_examples() {
        // Examples from XEP-0106 §5.1.
        assert_eq!(escape("space cadet"), "space\\20cadet");
        assert_eq!(
            escape("call me \"ishmael\""),
            "call\\20me\\20\\22ishmael\\22"
        );
        assert_eq!(escape("at&t guy"), "at\\26t\\20guy");
        assert_eq!(escape("d'artagnan"), "d\\27artagnan");
        assert_eq!(escape("/.fanboy"), "\\2f.fanboy");
        assert_eq!(escape("::foo::"), "\\3a\\3afoo\\3a\\3a");
        assert_eq!(escape("<foo>"), "\\3cfoo\\3e");
        assert_eq!(escape("user@host"), "user\\40host");
        assert_eq!(escape("c:\\net"), "c\\3a\\net");
        assert_eq!(escape("c:\\\\net"), "c\\3a\\\\net");
        assert_eq!(escape("c:\\cool stuff"), "c\\3a\\cool\\20stuff");
        assert_eq!(escape("c:\\5commas"), "c\\3a\\5c5commas");
        assert_eq!(escape("+15551234567"), "+15551234567");
        assert_eq!(escape("#rust%irc.libera.chat"), "#rust%irc.libera.chat");
    }

    #[test]
    fn unescape_reverses_escape() {
        for raw in [
            "space cadet",
            "c:\\5commas",
            "c:\\net",
            "a\\",
            "\\",
            "\\5",
            "user@host/res",
            " lead",
            "trail ",
            "ünïcödé@x",
        ] {
            assert_eq!(unescape(&escape(raw)), raw, "{raw}");
        }
        assert_eq!(unescape("\\5cx\\zz"), "\\x\\zz");
    }

    #[test]
    fn domains() {
        assert!(check_domain("sms.example.org").is_ok());
        assert!(check_domain("a@b").is_err());
        assert!(check_domain("").is_err());
    }

    proptest::proptest! {
        /// Every foreign address survives escaping (XEP-0106), and an escaped one has none of
        /// the characters a JID localpart forbids.
        #[test]
        fn escaping_round_trips(raw in "\\PC{0,40}|[\\\\a-f0-9 @&'\"/:<>]{0,20}") {
            let escaped = escape(&raw);
            proptest::prop_assert_eq!(unescape(&escaped), raw);
            proptest::prop_assert!(!escaped.contains([' ', '"', '&', '\'', '/', ':', '<', '>', '@']));
        }
    }
}
