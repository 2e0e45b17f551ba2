//! Group chats through a real XMPP server, joined with slixmpp's XEP-0045 plugin: the join a
//! client waits for, two users talking, exactly-once reflection, private messages, nick
//! changes, a kick by the network, the subject, self-pings, history, Jabbridge killed with
//! users in a room, and two instances behind ejabberd where the one running the sessions
//! dies.

use std::time::Duration;

use xmpp_parsers::minidom::Element;

use crate::Echo;
use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_condition};

const WAIT: Duration = Duration::from_secs(10);
const ROOM: &str = "#lobby@echo.localhost";
const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

crate::on_both_servers!(a_room_works_end_to_end);
crate::on_both_echoes!(a_room_basics);

/// The `muc#user` status codes of a stanza.
pub fn codes(stanza: &Element) -> Vec<String> {
    stanza
        .get_child("x", MUC_USER)
        .map(|x| {
            x.children()
                .filter(|child| child.name() == "status")
                .filter_map(|status| status.attr("code").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn is_from(stanza: &Element, jid: &str) -> bool {
    stanza.attr("from") == Some(jid)
}

/// Self-pings `nick` in the room from `client`, at most `attempts` times a quarter second
/// apart, each answer awaited up to 5 s (a stanza handed off waits for the takeover; one
/// ejabberd routed to a connection that just died is lost, and the next ping goes): whether
/// an answer said joined.
async fn pinged_joined(
    client: &mut crate::harness::Client,
    nick: &str,
    tag: &str,
    attempts: usize,
) -> bool {
    for attempt in 0..attempts {
        let id = format!("{tag}-{attempt}");
        client.send(&ping(&id, &format!("{ROOM}/{nick}"))).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            let Some(stanza) = client.next_stanza(left).await else {
                break;
            };
            if stanza.name() == "iq" && stanza.attr("id").is_some_and(|id| id.starts_with(tag)) {
                if stanza.attr("type") == Some("result") {
                    return true;
                }
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

fn ping(id: &str, to: &str) -> String {
    format!("<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>")
}

/// Alice talks in the room: her post comes back to her once, with her origin-id and stanza
/// id, and reaches Bob from her occupant JID; the bot repeats it to both. Then she corrects
/// it: Bob's client gets the correction naming the message it replaces, and the bot corrects
/// its repeat for both. Then Bob replies to it.
async fn talk_and_correct(alice: &mut crate::harness::Client, bob: &mut crate::harness::Client) {
    alice
        .send(&format!(
            "<message type='groupchat' to='{ROOM}' id='a1'><body>hello room</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='origin-a1'/></message>"
        ))
        .await;
    let mine = |s: &Element| {
        s.name() == "message" && is_from(s, &format!("{ROOM}/alice")) && body(s).is_some()
    };
    let reflection = alice.expect(WAIT, mine).await;
    assert_eq!(reflection.attr("id"), Some("a1"));
    assert_eq!(body(&reflection).as_deref(), Some("hello room"));
    let origin = reflection
        .get_child("origin-id", "urn:xmpp:sid:0")
        .and_then(|origin| origin.attr("id"));
    assert_eq!(origin, Some("origin-a1"));
    let copy = bob.expect(WAIT, mine).await;
    assert_eq!(body(&copy).as_deref(), Some("hello room"));
    for client in [&mut *alice, &mut *bob] {
        let repeat = client
            .expect(WAIT, |s| {
                is_from(s, &format!("{ROOM}/echo")) && body(s).is_some()
            })
            .await;
        assert_eq!(body(&repeat).as_deref(), Some("hello room"));
    }
    alice.expect_none(Duration::from_secs(1), mine).await;

    // Alice corrects it: Bob's client gets the correction naming the message it replaces.
    alice
        .send(&format!(
            "<message type='groupchat' to='{ROOM}' id='a2'><body>hello, room</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='origin-a1'/></message>"
        ))
        .await;
    let correction = bob
        .expect(WAIT, |s| {
            is_from(s, &format!("{ROOM}/alice")) && body(s).as_deref() == Some("hello, room")
        })
        .await;
    let replaced = correction
        .get_child("replace", "urn:xmpp:message-correct:0")
        .and_then(|replace| replace.attr("id"));
    assert_eq!(replaced, Some("origin-a1"));
    // The bot corrects its repeat, for both.
    for client in [&mut *alice, &mut *bob] {
        let repeat = client
            .expect(WAIT, |s| {
                is_from(s, &format!("{ROOM}/echo")) && body(s).as_deref() == Some("hello, room")
            })
            .await;
        assert!(repeat.has_child("replace", "urn:xmpp:message-correct:0"));
    }

    // Bob replies to it, his client quoting it: both get the reply alone, naming her message
    // by the room's stanza id, and the bot's repeat replies to it too.
    const REPLY: &str = "urn:xmpp:reply:0";
    let hers = copy
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .and_then(|id| id.attr("id"))
        .expect("a stanza id")
        .to_owned();
    bob.send(&format!(
        "<message type='groupchat' to='{ROOM}' id='b1'><body>&gt; hello room\nhi</body>\
         <reply xmlns='{REPLY}' to='{ROOM}/alice' id='{hers}'/>\
         <fallback xmlns='urn:xmpp:fallback:0' for='{REPLY}'><body start='0' end='13'/>\
         </fallback></message>"
    ))
    .await;
    for client in [&mut *alice, &mut *bob] {
        for who in ["bob", "echo"] {
            let reply = client
                .expect(WAIT, |s| {
                    is_from(s, &format!("{ROOM}/{who}")) && body(s).as_deref() == Some("hi")
                })
                .await;
            let replied = reply.get_child("reply", REPLY).expect("a reply");
            assert_eq!(replied.attr("id"), Some(hers.as_str()), "{reply:?}");
            assert_eq!(replied.attr("to"), Some(format!("{ROOM}/alice").as_str()));
        }
    }
}

/// What every echo bridge does with a room, in-process or external: joins with the bot,
/// arrivals, a post reflected once and repeated by the bot, a correction of both, typing (the
/// bot types along), a private message to the bot, a taken nick refused.
async fn a_room_basics(kind: ServerKind, echo: Echo) {
    let server = XmppServer::start(kind, &["echo.localhost"], &["alice", "bob"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(
        dir.path(),
        &crate::config_for_echo(&server, dir.path(), &["echo.localhost"], echo),
    )
    .await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let mut bob = crate::registered(&server, "bob", &["echo.localhost"]).await;

    let joined = alice.join(ROOM, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["codes"], serde_json::json!([110]));
    assert_eq!(joined["occupants"], serde_json::json!(["alice", "echo"]));
    let taken = bob.join(ROOM, "alice", serde_json::json!({})).await;
    assert_eq!(taken["event"], "join_error", "{taken}");
    assert_eq!(taken["condition"], "conflict", "{taken}");
    let joined = bob.join(ROOM, "bob", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(
        joined["occupants"],
        serde_json::json!(["alice", "bob", "echo"])
    );
    alice
        .expect(WAIT, |s| {
            s.name() == "presence" && is_from(s, &format!("{ROOM}/bob"))
        })
        .await;

    talk_and_correct(&mut alice, &mut bob).await;

    // Alice types: Bob sees it from her at once, and both see the bot type along; nobody
    // gets it twice, and she never sees her own.
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    alice
        .send(&format!(
            "<message type='groupchat' to='{ROOM}'><composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    let typing = |who: &'static str| {
        move |s: &Element| {
            s.name() == "message"
                && is_from(s, &format!("{ROOM}/{who}"))
                && s.has_child("composing", CHATSTATES)
                && body(s).is_none()
        }
    };
    bob.expect(WAIT, typing("alice")).await;
    for client in [&mut alice, &mut bob] {
        client.expect(WAIT, typing("echo")).await;
    }
    alice
        .expect_none(Duration::from_millis(500), |s| {
            typing("alice")(s) || typing("echo")(s)
        })
        .await;

    // A ping to the bot is answered (the external bridge is asked with `contact/ping`, which
    // bridges/external's own test tells apart; the in-process one lets the core answer); one
    // to nobody in the room is refused.
    let ping = |id: &str, nick: &str| {
        format!("<iq type='get' id='{id}' to='{ROOM}/{nick}'><ping xmlns='urn:xmpp:ping'/></iq>")
    };
    let answer = bob.iq("g1", &ping("g1", "echo")).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    let answer = bob.iq("g2", &ping("g2", "nobody")).await;
    assert_eq!(answer.attr("type"), Some("error"), "{answer:?}");

    bob.send(&format!(
        "<message type='chat' to='{ROOM}/echo' id='q1'><body>just us</body></message>"
    ))
    .await;
    let private = bob
        .expect(WAIT, |s| {
            is_from(s, &format!("{ROOM}/echo")) && body(s).is_some()
        })
        .await;
    assert_eq!(private.attr("type"), Some("chat"));
    assert_eq!(
        body(&private).as_deref(),
        Some("echo.localhost says: just us")
    );
}

async fn a_room_works_end_to_end(kind: ServerKind) {
    let server = XmppServer::start(kind, &["echo.localhost"], &["alice", "bob"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut jabbridge = Jabbridge::start(
        dir.path(),
        &crate::config_for(&server, dir.path(), &["echo.localhost"]),
    )
    .await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let mut bob = crate::registered(&server, "bob", &["echo.localhost"]).await;

    // Alice joins: the plugin sees the bot, herself (110), and the (empty) subject.
    let joined = alice.join(ROOM, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["nick"], "alice");
    assert_eq!(joined["codes"], serde_json::json!([110]));
    assert_eq!(joined["occupants"], serde_json::json!(["alice", "echo"]));
    // Bob joins; Alice sees him come.
    let joined = bob.join(ROOM, "bob", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(
        joined["occupants"],
        serde_json::json!(["alice", "bob", "echo"])
    );
    let came = alice
        .expect(WAIT, |s| {
            s.name() == "presence" && is_from(s, &format!("{ROOM}/bob"))
        })
        .await;
    assert!(codes(&came).is_empty());

    talk_and_correct(&mut alice, &mut bob).await;

    // Bob writes privately to the bot: the answer comes from the bot's occupant JID, and
    // the room never sees it.
    bob.send(&format!(
        "<message type='chat' to='{ROOM}/echo' id='p1'><body>just us</body></message>"
    ))
    .await;
    let private = bob
        .expect(WAIT, |s| {
            is_from(s, &format!("{ROOM}/echo")) && body(s).is_some()
        })
        .await;
    assert_eq!(private.attr("type"), Some("chat"));
    assert_eq!(
        body(&private).as_deref(),
        Some("echo.localhost says: just us")
    );
    alice
        .expect_none(Duration::from_secs(1), |s| {
            body(s).is_some_and(|text| text.contains("just us"))
        })
        .await;

    // Bob sets the subject; Alice gets it from him.
    bob.send(&format!(
        "<message type='groupchat' to='{ROOM}' id='s1'><subject>tea time</subject></message>"
    ))
    .await;
    let subject = alice
        .expect(WAIT, |s| {
            s.children().any(|child| child.name() == "subject")
        })
        .await;
    assert!(is_from(&subject, &format!("{ROOM}/bob")));

    // Alice changes nick: Bob sees 303 with the new nick.
    alice.send(&format!("<presence to='{ROOM}/alicia'/>")).await;
    let renamed = bob
        .expect(WAIT, |s| {
            s.name() == "presence" && s.attr("type") == Some("unavailable")
        })
        .await;
    assert_eq!(codes(&renamed), ["303"]);
    bob.expect(WAIT, |s| {
        s.name() == "presence" && is_from(s, &format!("{ROOM}/alicia"))
    })
    .await;

    // Bob has the network kick her: she is told (307, 110), and her self-ping says she is out
    // while his says he is in.
    bob.send(&format!(
        "<message type='groupchat' to='{ROOM}' id='k1'><body>!kick alicia enough</body></message>"
    ))
    .await;
    let kicked = alice
        .expect(WAIT, |s| {
            s.name() == "presence"
                && s.attr("type") == Some("unavailable")
                && !codes(s).is_empty()
                && codes(s).contains(&"307".to_owned())
        })
        .await;
    assert_eq!(codes(&kicked), ["307", "110"]);
    let answer = alice
        .iq("sp1", &ping("sp1", &format!("{ROOM}/alicia")))
        .await;
    assert_eq!(error_condition(&answer).as_deref(), Some("not-acceptable"));
    let answer = bob.iq("sp2", &ping("sp2", &format!("{ROOM}/bob"))).await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");

    // Alice comes back and asks for two messages of history.
    let joined = alice
        .join(ROOM, "alice", serde_json::json!({ "maxstanzas": 2 }))
        .await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(
        joined["history"].as_array().map(Vec::len),
        Some(2),
        "{joined}"
    );
    assert_eq!(joined["subject"], "tea time");

    // Jabbridge is killed with both in the room. After the restart it rejoins: their
    // self-pings still say "joined", a client that joins again gets a resync, and talking
    // goes on.
    jabbridge.kill().await;
    jabbridge.restart().await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    assert!(
        pinged_joined(&mut bob, "bob", "after", 20).await,
        "bob's self-ping never said joined after the restart"
    );
    let joined = bob
        .join(ROOM, "bob", serde_json::json!({ "maxstanzas": 0 }))
        .await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(
        joined["occupants"],
        serde_json::json!(["alice", "bob", "echo"])
    );
    bob.send(&format!(
        "<message type='groupchat' to='{ROOM}' id='b9'><body>still here</body></message>"
    ))
    .await;
    let seen = alice
        .expect(WAIT, |s| body(s).as_deref() == Some("still here"))
        .await;
    assert!(is_from(&seen, &format!("{ROOM}/bob")));
}

/// Two instances share PostgreSQL behind ejabberd, which gives each half of the stanzas.
/// Alice's and Bob's sessions run in the first: what reaches the second is handed off to it,
/// so their room works as with one instance. The first is killed: after `delivery.lease` the
/// second takes their sessions over and rejoins the room for them, and they go on talking
/// without joining again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_outlives_the_instance_running_its_sessions() {
    let Some(url) = crate::harness::postgres_database().await else {
        return;
    };
    let server =
        XmppServer::start(ServerKind::Ejabberd, &["echo.localhost"], &["alice", "bob"]).await;
    let start = async |dir: &std::path::Path| {
        let config = crate::config_for(&server, dir, &["echo.localhost"]);
        let config = crate::on_database(&config, dir, &url) + "\n[delivery]\nlease = \"2s\"\n";
        let jabbridge = Jabbridge::start(dir, &config).await;
        jabbridge.wait_ready(Duration::from_secs(20)).await;
        jabbridge
    };
    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Registered while only the first runs, both sessions run there.
    let mut first = start(first_dir.path()).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let mut bob = crate::registered(&server, "bob", &["echo.localhost"]).await;
    let second = start(second_dir.path()).await;

    let joined = alice.join(ROOM, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    let joined = bob.join(ROOM, "bob", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(
        joined["occupants"],
        serde_json::json!(["alice", "bob", "echo"])
    );
    let talk =
        async |alice: &mut crate::harness::Client, bob: &mut crate::harness::Client, id: &str| {
            alice
            .send(&format!(
                "<message type='groupchat' to='{ROOM}' id='{id}'><body>said {id}</body></message>"
            ))
            .await;
            let text = format!("said {id}");
            let mine = |s: &Element| {
                is_from(s, &format!("{ROOM}/alice")) && body(s).as_deref() == Some(text.as_str())
            };
            let reflection = alice.expect(Duration::from_secs(20), mine).await;
            assert_eq!(reflection.attr("id"), Some(id));
            bob.expect(Duration::from_secs(20), mine).await;
        };
    for number in 0..8 {
        talk(&mut alice, &mut bob, &format!("before-{number}")).await;
    }
    let handed = "jabbridge_handoffs_total{bridge=\"echo.localhost\"}";
    assert!(
        second.metric(handed).await > 0.0,
        "ejabberd gave the second instance nothing to hand off\n{}",
        second.log()
    );
    assert_eq!(
        first.metric(handed).await,
        0.0,
        "the sessions run in the first"
    );

    first.kill().await;
    assert!(
        pinged_joined(&mut bob, "bob", "failover", 40).await,
        "bob's self-ping never said joined after the failover\n{}",
        second.log()
    );
    assert!(
        second.log().contains("took over the sessions"),
        "{}",
        second.log()
    );
    for number in 0..4 {
        talk(&mut alice, &mut bob, &format!("after-{number}")).await;
    }
    // Nothing went twice.
    alice
        .expect_none(Duration::from_secs(1), |s| {
            is_from(s, &format!("{ROOM}/alice")) && body(s).is_some()
        })
        .await;
}
