//! The malformed-input corpus, in-process: hundreds of generated stanzas (bad types, missing
//! and junk children, deep nesting, huge attributes, invalid JIDs, wrong namespaces, every
//! iq namespace the core answers with garbage inside, strangers, other domains), each
//! handed to a gateway with the answer it must get. No input may crash the gateway or go
//! unanswered where RFC 6120 requires an answer, and no error may be a vague one
//! (`internal-server-error`, `undefined-condition`). Prints the counts.

use std::collections::BTreeMap;
use std::time::Duration;

use xmpp_parsers::minidom::Element;

use crate::testing::{DOMAIN, Harness, Options, condition, real_sleep};

/// What a case must get back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// An error with exactly this condition.
    Error(&'static str),
    /// An iq result.
    Result,
    /// Exactly one answer (iq result or error), any precise condition.
    Answered,
    /// Whatever the protocol allows (possibly nothing), as long as any error is precise.
    Any,
    /// No stanza at all.
    Nothing,
}

struct Case {
    name: String,
    xml: String,
    sender: &'static str,
    expect: Expect,
}

const ALICE: &str = "alice@test/r";
const EVE: &str = "eve@elsewhere/x";
/// Conditions that tell the sender nothing about what was wrong.
const VAGUE: [&str; 2] = ["internal-server-error", "undefined-condition"];

/// The iq payloads the core answers, plus one it does not.
const NAMESPACES: [(&str, &str); 9] = [
    ("query", "http://jabber.org/protocol/disco#info"),
    ("query", "http://jabber.org/protocol/disco#items"),
    ("query", "jabber:iq:version"),
    ("ping", "urn:xmpp:ping"),
    ("query", "jabber:iq:register"),
    ("query", "jabber:iq:gateway"),
    ("command", "http://jabber.org/protocol/commands"),
    ("vCard", "vcard-temp"),
    ("query", "urn:x-unknown"),
];

/// Ways to spoil a payload `<name xmlns='ns'/>`.
fn payloads(name: &str, ns: &str) -> Vec<(String, String)> {
    // Under the parser's 8 KiB token limit: longer ones the link cuts before the gateway (see
    // `link::huge_attributes_and_names_leave_the_link_up`).
    let big = "x".repeat(4 * 1024);
    vec![
        ("empty".into(), format!("<{name} xmlns='{ns}'/>")),
        (
            "junk child".into(),
            format!("<{name} xmlns='{ns}'><junk xmlns='urn:x-junk'/></{name}>"),
        ),
        (
            "many children".into(),
            format!("<{name} xmlns='{ns}'>{}</{name}>", "<j/>".repeat(300)),
        ),
        (
            "huge attribute".into(),
            format!("<{name} xmlns='{ns}' node='{big}' a='{big}'/>"),
        ),
        ("wrong name".into(), format!("<nope xmlns='{ns}'/>")),
        (
            "nested".into(),
            format!(
                "<{name} xmlns='{ns}'>{}{}</{name}>",
                "<a>".repeat(40),
                "</a>".repeat(40)
            ),
        ),
        (
            "text".into(),
            format!("<{name} xmlns='{ns}'>garbage &amp; more</{name}>"),
        ),
        (
            "bad form".into(),
            format!(
                "<{name} xmlns='{ns}' node='register' action='complete'><x xmlns='jabber:x:data' \
                 type='submit'><field var='FORM_TYPE'><value>urn:x</value></field><field/>\
                 <field var='prefix'><value>a</value><value>b</value></field></x></{name}>"
            ),
        ),
        (
            "bad prompt".into(),
            format!("<{name} xmlns='{ns}'><prompt><b/></prompt><jid>@@</jid></{name}>"),
        ),
    ]
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let mut add = |name: String, xml: String, sender: &'static str, expect: Expect| {
        cases.push(Case {
            name,
            xml,
            sender,
            expect,
        })
    };
    // Every namespace, both types, both targets, every spoilt payload, from a user.
    for (name, ns) in NAMESPACES {
        for type_ in ["get", "set"] {
            for to in [DOMAIN.to_owned(), format!("bob@{DOMAIN}")] {
                for (spoilt, payload) in payloads(name, ns) {
                    let plain_get = type_ == "get" && spoilt == "empty";
                    let expect = if ns == "urn:x-unknown" || spoilt == "wrong name" {
                        Expect::Error("service-unavailable")
                    } else if plain_get
                        && (ns == "urn:xmpp:ping" || (ns == "jabber:iq:version" && to == DOMAIN))
                    {
                        Expect::Result
                    } else {
                        Expect::Answered
                    };
                    add(
                        format!("iq {type_} {ns} to {to}: {spoilt}"),
                        format!(
                            "<iq type='{type_}' from='{ALICE}' to='{to}' id='ID'>{payload}</iq>"
                        ),
                        ALICE,
                        expect,
                    );
                }
            }
        }
    }
    // Bad iq shapes.
    for type_ in ["", "bogus", "GET", "results"] {
        for (name, ns) in &NAMESPACES[..4] {
            add(
                format!("iq type '{type_}' {ns}"),
                format!(
                    "<iq type='{type_}' from='{ALICE}' to='{DOMAIN}' id='ID'><{name} xmlns='{ns}'/></iq>"
                ),
                ALICE,
                Expect::Error("bad-request"),
            );
        }
    }
    for (what, body) in [
        ("no payload", String::new()),
        (
            "two payloads",
            "<ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/>".into(),
        ),
    ] {
        add(
            format!("iq get with {what}"),
            format!("<iq type='get' from='{ALICE}' to='{DOMAIN}' id='ID'>{body}</iq>"),
            ALICE,
            Expect::Error("bad-request"),
        );
    }
    for type_ in ["result", "error"] {
        for (name, ns) in NAMESPACES {
            add(
                format!("unsolicited iq {type_} {ns}"),
                format!(
                    "<iq type='{type_}' from='{ALICE}' to='{DOMAIN}' id='ID'><{name} xmlns='{ns}'/></iq>"
                ),
                ALICE,
                Expect::Nothing,
            );
        }
    }
    // Messages: every type, spoilt bodies, every target, users and strangers.
    let big = "y".repeat(70 * 1024);
    let bodies: Vec<(&str, String)> = vec![
        ("no body", String::new()),
        ("empty body", "<body/>".into()),
        ("blank body", "<body>   </body>".into()),
        ("oversized body", format!("<body>{big}</body>")),
        ("body with a child", "<body>hi<b>x</b></body>".into()),
        (
            "two bodies",
            "<body xml:lang='en'>a</body><body xml:lang='fr'>b</body>".into(),
        ),
        (
            "junk payload",
            "<junk xmlns='urn:x'>".to_owned() + &"<a>".repeat(30) + &"</a>".repeat(30) + "</junk>",
        ),
    ];
    for type_ in ["chat", "normal", "headline", "groupchat", "error", "bogus"] {
        for (spoilt, body) in &bodies {
            for to in [
                DOMAIN.to_owned(),
                format!("bob@{DOMAIN}"),
                "x@other.test".to_owned(),
            ] {
                for sender in [ALICE, EVE] {
                    let has_text = matches!(*spoilt, "oversized body" | "two bodies");
                    // The domain is checked first: another domain's stanza is refused
                    // whatever it is (errors are never answered).
                    let expect = match (type_, to.as_str(), sender) {
                        ("error", _, _) => Expect::Nothing,
                        (_, "x@other.test", _) => Expect::Error("service-unavailable"),
                        ("bogus", _, _) => Expect::Error("bad-request"),
                        (_, _, EVE) if has_text => Expect::Error("forbidden"),
                        (_, _, EVE) if *spoilt == "body with a child" => Expect::Any,
                        (_, _, EVE) => Expect::Nothing,
                        ("groupchat", to, _) if to != DOMAIN && has_text => {
                            Expect::Error("feature-not-implemented")
                        }
                        (_, to, _) if to != DOMAIN && *spoilt == "oversized body" => {
                            Expect::Error("not-acceptable")
                        }
                        _ => Expect::Any,
                    };
                    add(
                        format!("message {type_} to {to} from {sender}: {spoilt}"),
                        format!(
                            "<message type='{type_}' from='{sender}' to='{to}' id='ID'>{body}</message>"
                        ),
                        sender,
                        expect,
                    );
                }
            }
        }
    }
    // Presence: every type, every target, users and strangers.
    for type_ in [
        "",
        "unavailable",
        "subscribe",
        "subscribed",
        "unsubscribe",
        "unsubscribed",
        "probe",
        "error",
        "bogus",
    ] {
        for to in [
            DOMAIN.to_owned(),
            format!("bob@{DOMAIN}"),
            "x@other.test".to_owned(),
        ] {
            for sender in [ALICE, EVE] {
                let expect = match (type_, to.as_str(), sender) {
                    ("error", _, _) => Expect::Nothing,
                    (_, "x@other.test", _) => Expect::Error("service-unavailable"),
                    ("bogus", _, _) => Expect::Error("bad-request"),
                    ("subscribe", _, EVE) => Expect::Error("forbidden"),
                    (_, _, EVE) => Expect::Nothing,
                    _ => Expect::Any,
                };
                let type_attr = if type_.is_empty() {
                    String::new()
                } else {
                    format!(" type='{type_}'")
                };
                add(
                    format!("presence '{type_}' to {to} from {sender}"),
                    format!("<presence{type_attr} from='{sender}' to='{to}' id='ID'/>"),
                    sender,
                    expect,
                );
            }
        }
    }
    // Invalid addresses, and what is no stanza at all.
    for (from, to) in [
        ("@@", DOMAIN),
        ("", DOMAIN),
        (ALICE, "a@b@c"),
        (ALICE, ""),
        (ALICE, "@echo.test"),
        (ALICE, "bob@echo.test/"),
        ("alice@test/r", "bob@ECHO.TEST"),
    ] {
        for kind in ["message", "presence", "iq"] {
            let inner = match kind {
                "message" => "<body>hi</body>",
                "iq" => "<ping xmlns='urn:xmpp:ping'/>",
                _ => "",
            };
            add(
                format!("{kind} from '{from}' to '{to}'"),
                format!(
                    "<{kind} type='{}' from='{from}' to='{to}' id='ID'>{inner}</{kind}>",
                    if kind == "iq" {
                        "get"
                    } else if kind == "message" {
                        "chat"
                    } else {
                        "probe"
                    }
                ),
                ALICE,
                Expect::Any,
            );
        }
    }
    room_cases(&mut add, &bodies);
    for other in [
        "<foo/>",
        "<db:result xmlns:db='jabber:server:dialback'/>",
        "<handshake/>",
    ] {
        add(
            format!("non-stanza {other}"),
            other.to_owned(),
            ALICE,
            Expect::Nothing,
        );
    }
    cases
}

/// The room's address in the corpus (the echo bridge's rooms start with `#`).
const ROOM: &str = "#den";

/// Stanzas to a room and to its occupants, from a registered user who never joined and from
/// a stranger: spoilt iq payloads of every namespace the core answers there (MAM and
/// muc#admin too), every message type and body, then presences (the user's last available
/// one joins, so it comes last).
fn room_cases(
    add: &mut impl FnMut(String, String, &'static str, Expect),
    bodies: &[(&str, String)],
) {
    let room = format!("{ROOM}@{DOMAIN}");
    let occupant = format!("{room}/nick");
    let mut namespaces = NAMESPACES.to_vec();
    namespaces.push(("query", "urn:xmpp:mam:2"));
    namespaces.push(("query", "http://jabber.org/protocol/muc#admin"));
    for (name, ns) in namespaces {
        for type_ in ["get", "set"] {
            for to in [&room, &occupant] {
                for (spoilt, payload) in payloads(name, ns) {
                    let expect = if ns == "urn:x-unknown" || spoilt == "wrong name" {
                        Expect::Error("service-unavailable")
                    } else {
                        Expect::Answered
                    };
                    add(
                        format!("iq {type_} {ns} to {to}: {spoilt}"),
                        format!(
                            "<iq type='{type_}' from='{ALICE}' to='{to}' id='ID'>{payload}</iq>"
                        ),
                        ALICE,
                        expect,
                    );
                }
            }
        }
    }
    for type_ in ["chat", "normal", "groupchat", "error", "bogus"] {
        for (spoilt, body) in bodies {
            for to in [&room, &occupant] {
                for sender in [ALICE, EVE] {
                    let has_text = matches!(*spoilt, "oversized body" | "two bodies");
                    let expect = match (type_, sender) {
                        ("error", _) => Expect::Nothing,
                        ("bogus", _) => Expect::Error("bad-request"),
                        // A stranger to the room's address is refused whatever they send.
                        ("groupchat", EVE) => Expect::Error("forbidden"),
                        // A user not in the room may not post in it...
                        ("groupchat", _) => Expect::Error("not-acceptable"),
                        (_, EVE) if has_text => Expect::Error("forbidden"),
                        (_, EVE) => Expect::Any,
                        // ... nor write privately to its occupants, nor to the room as chat.
                        (_, _) if has_text => Expect::Error("not-acceptable"),
                        _ => Expect::Any,
                    };
                    add(
                        format!("message {type_} to {to} from {sender}: {spoilt}"),
                        format!(
                            "<message type='{type_}' from='{sender}' to='{to}' id='ID'>{body}</message>"
                        ),
                        sender,
                        expect,
                    );
                }
            }
        }
    }
    for type_ in ["unavailable", "subscribe", "probe", "error", "bogus", ""] {
        for to in [&room, &occupant] {
            for sender in [EVE, ALICE] {
                let expect = match (type_, to == &room, sender) {
                    ("", true, ALICE) => Expect::Error("jid-malformed"),
                    ("", _, EVE) => Expect::Error("forbidden"),
                    ("", _, _) => Expect::Any,
                    _ => Expect::Nothing,
                };
                let type_attr = if type_.is_empty() {
                    String::new()
                } else {
                    format!(" type='{type_}'")
                };
                add(
                    format!("presence '{type_}' to {to} from {sender}"),
                    format!(
                        "<presence{type_attr} from='{sender}' to='{to}' id='ID'>\
                         <x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='-1'/>\
                         <password>{}</password></x></presence>",
                        "p".repeat(2000)
                    ),
                    sender,
                    expect,
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn the_malformed_input_corpus_is_answered_precisely() {
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    let cases = cases();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for (number, case) in cases.iter().enumerate() {
        let id = format!("c{number}");
        harness
            .receive(&case.xml.replace("'ID'", &format!("'{id}'")))
            .await;
        // A ping from the same sender follows it in the sender's lane: what comes before
        // its answer is the case's.
        let sentinel = format!("s{number}");
        harness
            .receive(&format!(
                "<iq type='get' from='{}' to='{DOMAIN}' id='{sentinel}'><ping xmlns='urn:xmpp:ping'/></iq>",
                case.sender
            ))
            .await;
        let mut answers: Vec<Element> = Vec::new();
        loop {
            let stanza = harness.next().await;
            if stanza.attr("id") == Some(sentinel.as_str()) {
                break;
            }
            // An echo of an earlier case that was accepted comes when its inbox lane gets
            // to it, not in the sender's lane: it answers none of the cases.
            if stanza.has_child("origin-id", "urn:xmpp:sid:0") {
                continue;
            }
            answers.push(stanza);
        }
        // Echoes and presences of accepted cases may come later; errors come in the lane.
        real_sleep(Duration::from_millis(1)).await;
        let errors: Vec<String> = answers
            .iter()
            .filter(|answer| answer.attr("type") == Some("error"))
            .map(|answer| condition(answer).unwrap_or_default())
            .collect();
        let results = answers
            .iter()
            .filter(|answer| answer.name() == "iq" && answer.attr("type") == Some("result"))
            .count();
        let verdict = match case.expect {
            Expect::Error(wanted) => errors.len() == 1 && errors[0] == wanted,
            Expect::Result => results == 1 && errors.is_empty(),
            Expect::Answered => results + errors.len() == 1,
            Expect::Any | Expect::Nothing => true,
        } && (case.expect != Expect::Nothing || answers.is_empty())
            && errors.iter().all(|error| !VAGUE.contains(&error.as_str()));
        if !verdict {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                case.name,
                case.expect,
                answers.iter().map(String::from).collect::<Vec<_>>()
            ));
        }
        let outcome = match (errors.first(), results) {
            (Some(error), _) => format!("error {error}"),
            (None, 1..) => "result".into(),
            (None, 0) if answers.is_empty() => "nothing".into(),
            (None, 0) => "other answer".into(),
        };
        *tally.entry(outcome).or_default() += 1;
    }
    // Still up, and still right.
    harness
        .receive(&format!(
            "<iq type='get' from='{ALICE}' to='{DOMAIN}' id='last'><query xmlns='jabber:iq:version'/></iq>"
        ))
        .await;
    let last = loop {
        let stanza = harness.next().await;
        if stanza.attr("id") == Some("last") {
            break stanza;
        }
    };
    assert_eq!(last.attr("type"), Some("result"));
    eprintln!(
        "malformed-input corpus (stanzas): {} cases, {} failures, 0 crashes; answers: {tally:?}",
        cases.len(),
        failures.len()
    );
    assert!(cases.len() >= 500, "only {} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every key of `config/echo.toml` given values of the wrong kind or out of range, keys that
/// do not exist in every section, and required keys left out: each file is refused with an
/// error naming the key, or (where the value happens to be valid) accepted.
#[test]
fn the_config_corpus_is_refused_naming_the_key() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/echo.toml"))
        .expect("config/echo.toml");
    let lines: Vec<&str> = example.lines().collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jabbridge.toml");
    let check = |text: &str| -> Result<(), String> {
        std::fs::write(&path, text).expect("write");
        let config = crate::config::Config::load_with_env(&path, Vec::new())
            .map_err(|error| error.to_string())?;
        crate::app::check_bridges(&config).map_err(|error| error.to_string())
    };
    assert_eq!(check(&example), Ok(()), "the example itself");
    let bad_values = [
        "\"\"",
        "-1",
        "0",
        "[1, 2]",
        "{ a = 1 }",
        "\"not a thing\"",
        "99999999999999999999",
        "true",
        "\"1 parsec\"",
        "\"30/fortnight\"",
        "1.5",
    ];
    let (mut refused, mut accepted, mut vague) = (0, 0, Vec::new());
    let mut section = String::new();
    for (number, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.starts_with('[') {
            section = line.trim_matches(|c| c == '[' || c == ']').to_owned();
            // A key no section has.
            let mut text = lines.clone();
            text.insert(number + 1, "no_such_key = 1");
            match check(&text.join("\n")) {
                Err(error) if error.contains("no_such_key") => refused += 1,
                Err(error) => vague.push(format!("[{section}] no_such_key: {error}")),
                Ok(()) => vague.push(format!("[{section}] no_such_key was accepted")),
            }
            continue;
        }
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if line.starts_with('#') {
            continue;
        }
        for value in bad_values {
            let mut text = lines.clone();
            let mutated = format!("{key} = {value}");
            text[number] = &mutated;
            match check(&text.join("\n")) {
                Ok(()) => accepted += 1,
                Err(error) if error.contains(key) => refused += 1,
                Err(error) => vague.push(format!("[{section}] {mutated}: {error}")),
            }
        }
        if ["server", "domain", "secret", "kind"].contains(&key) {
            let mut text = lines.clone();
            text.remove(number);
            match check(&text.join("\n")) {
                Err(error) if error.contains(key) => refused += 1,
                Err(error) => vague.push(format!("[{section}] without {key}: {error}")),
                Ok(()) => vague.push(format!("[{section}] without {key} was accepted")),
            }
        }
    }
    eprintln!(
        "malformed-input corpus (config): {} cases, {refused} refused naming the key, {accepted} \
         accepted (valid after all), {} imprecise, 0 crashes",
        refused + accepted + vague.len(),
        vague.len()
    );
    assert!(vague.is_empty(), "{}", vague.join("\n"));
}
