//! Group chats as the gateway runs them, asserted as the exact stanzas that come back
//! ([`crate::testing::Harness`], with the echo bridge's rooms): the join's order and status
//! codes, talking, reflection, private messages, nick changes, kicks, subjects, self-pings,
//! history, join errors, a bounced resource, staying in a room, and a restart.

use std::time::Duration;

use xmpp_parsers::minidom::Element;

use crate::testing::{Harness, Options, body, condition};

const MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// A join presence from `user/r` to `room/nick`, with extra `<x/>` content.
fn join(user: &str, room: &str, nick: &str, inside: &str) -> String {
    format!(
        "<presence from='{user}/r' to='{room}@echo.test/{nick}'>\
         <x xmlns='http://jabber.org/protocol/muc'>{inside}</x></presence>"
    )
}

/// A SQLite database in a file of `dir`: it outlives its connections (and the harness).
fn on_a_file(dir: &tempfile::TempDir) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    )
}

/// The next `count` stanzas.
async fn take(harness: &mut Harness, count: usize) -> Vec<Element> {
    let mut stanzas = Vec::with_capacity(count);
    for _ in 0..count {
        stanzas.push(harness.next().await);
    }
    stanzas
}

/// The status codes of a room presence.
fn codes(stanza: &Element) -> Vec<String> {
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

fn item(stanza: &Element) -> Option<&Element> {
    stanza.get_child("x", MUC_USER)?.get_child("item", MUC_USER)
}

fn from(stanza: &Element) -> &str {
    stanza.attr("from").unwrap_or_default()
}

fn to(stanza: &Element) -> &str {
    stanza.attr("to").unwrap_or_default()
}

/// Registers `user` and joins `#lobby` as `nick`, taking the occupants before them (`others`
/// of them), the self-presence and the subject. Returns what came.
async fn enter(harness: &mut Harness, user: &str, nick: &str, others: usize) -> Vec<Element> {
    harness.register(user).await;
    harness.receive(&join(user, "#lobby", nick, "")).await;
    take(harness, others + 2).await
}

#[tokio::test(start_paused = true)]
async fn a_join_gets_occupants_then_itself_then_the_subject() {
    let mut harness = Harness::start(Options::default()).await;
    let joined = enter(&mut harness, "alice@test", "alice", 1).await;
    // The bot, as an occupant (moderator, owner), with an occupant-id.
    assert_eq!(from(&joined[0]), "#lobby@echo.test/echo");
    assert_eq!(to(&joined[0]), "alice@test/r");
    let bot = item(&joined[0]).expect("an item");
    assert_eq!(bot.attr("role"), Some("moderator"));
    assert_eq!(bot.attr("affiliation"), Some("owner"));
    assert!(joined[0].has_child("occupant-id", "urn:xmpp:occupant-id:0"));
    assert!(codes(&joined[0]).is_empty());
    // Where it connects from, as its item's bare JID.
    assert_eq!(bot.attr("jid"), Some("echo.example"));
    // Then themselves, with 110, and no JID (theirs is not shown, nor the network's cloak).
    assert_eq!(from(&joined[1]), "#lobby@echo.test/alice");
    assert_eq!(codes(&joined[1]), ["110"]);
    assert_eq!(item(&joined[1]).and_then(|i| i.attr("jid")), None);
    assert_eq!(
        item(&joined[1]).and_then(|i| i.attr("role")),
        Some("participant")
    );
    // Then the subject (empty), which completes the join.
    assert_eq!(joined[2].attr("type"), Some("groupchat"));
    assert!(joined[2].children().any(|child| child.name() == "subject"));
    assert!(body(&joined[2]).is_none());
    harness.nothing_for(Duration::from_millis(100)).await;
    // The room's disco#info says what it is; the gateway is a conference service too.
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='#lobby@echo.test' id='d1'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    let info = String::from(&harness.next().await);
    assert!(info.contains("category='conference'"), "{info}");
    assert!(info.contains("http://jabber.org/protocol/muc"), "{info}");
    assert!(info.contains("muc#roominfo_occupants"), "{info}");
    // What the echo network carries (edits, replies) is listed.
    for feature in [
        "urn:xmpp:message-correct:0",
        "urn:xmpp:reactions:0",
        "urn:xmpp:reply:0",
    ] {
        assert!(info.contains(feature), "{feature}: {info}");
    }
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='echo.test' id='d2'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    let info = String::from(&harness.next().await);
    assert!(info.contains("category='conference'"), "{info}");
    assert!(info.contains("category='gateway'"), "{info}");
    // An occupant's vCard: their real name and nick, for a resource in the room.
    let card = |from: &str, nick: &str| {
        format!(
            "<iq type='get' from='{from}' to='#lobby@echo.test/{nick}' id='v'>\
             <vCard xmlns='vcard-temp'/></iq>"
        )
    };
    harness.receive(&card("alice@test/r", "echo")).await;
    let answer = harness.next().await;
    let vcard = answer.get_child("vCard", "vcard-temp").expect("a vCard");
    let text = |name: &str| vcard.get_child(name, "vcard-temp").map(Element::text);
    assert_eq!(text("FN").as_deref(), Some("The echo bot"));
    assert_eq!(text("NICKNAME").as_deref(), Some("echo"));
    harness.receive(&card("alice@test/r", "nobody")).await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("item-not-found")
    );
    harness.receive(&card("mallory@test/r", "echo")).await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test(start_paused = true)]
async fn an_invitation_from_the_network_goes_only_to_a_user_of_the_bridge() {
    use jabbridge_sdk::{CoreError, ForeignId, RoomEvent, RoomId, UserJid};
    let mut harness = Harness::start(Options::default()).await;
    let gateway = harness.gateway.clone();
    let invited = |user: &str| RoomEvent::Invited {
        user: UserJid::new(user),
        by: ForeignId::new("bob"),
    };
    // To a user of the bridge, in the room or not: both invitations, from the room.
    crate::gateway::rooms::event(&gateway, RoomId::new("#lobby"), invited("alice@test"))
        .await
        .expect("sent");
    let invitation = harness.next().await;
    assert_eq!(from(&invitation), "#lobby@echo.test");
    assert_eq!(to(&invitation), "alice@test");
    let inviter = invitation
        .get_child("x", MUC_USER)
        .and_then(|x| x.get_child("invite", MUC_USER))
        .and_then(|invite| invite.attr("from"));
    assert_eq!(inviter, Some("bob@echo.test"));
    let direct = invitation
        .get_child("x", "jabber:x:conference")
        .and_then(|x| x.attr("jid"));
    assert_eq!(direct, Some("#lobby@echo.test"));
    // To anyone else: refused, and nothing is sent.
    let refused = crate::gateway::rooms::event(
        &gateway,
        RoomId::new("#lobby"),
        invited("mallory@elsewhere.example"),
    )
    .await;
    assert!(matches!(refused, Err(CoreError::Refused(_))), "{refused:?}");
    harness.nothing_for(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn two_users_talk_and_each_post_is_reflected_once_with_its_origin_id() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    // Alice sees Bob come; Bob gets the bot and Alice, himself, the subject.
    let stanzas = take(&mut harness, 5).await;
    assert_eq!(to(&stanzas[0]), "alice@test/r");
    assert_eq!(from(&stanzas[0]), "#lobby@echo.test/bob");
    assert!(codes(&stanzas[0]).is_empty());
    // Bob's cloak on the network is no domain: escaped (XEP-0106) at the bridge's.
    assert_eq!(
        item(&stanzas[0]).and_then(|i| i.attr("jid")),
        Some("user\\2fbob@echo.test")
    );
    let for_bob: Vec<&str> = stanzas[1..].iter().map(from).collect();
    assert_eq!(
        for_bob,
        [
            "#lobby@echo.test/alice",
            "#lobby@echo.test/echo",
            "#lobby@echo.test/bob",
            "#lobby@echo.test"
        ]
    );
    assert_eq!(codes(&stanzas[3]), ["110"]);
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a1'>\
             <body>hello room</body><origin-id xmlns='urn:xmpp:sid:0' id='o-1'/>\
             <request xmlns='urn:xmpp:receipts'/></message>",
        )
        .await;
    // The network's echo of Alice's post to both, then the bot's repeat to both.
    let stanzas = take(&mut harness, 4).await;
    let (reflection, copy) = if to(&stanzas[0]) == "alice@test/r" {
        (&stanzas[0], &stanzas[1])
    } else {
        (&stanzas[1], &stanzas[0])
    };
    assert_eq!(from(reflection), "#lobby@echo.test/alice");
    assert_eq!(reflection.attr("id"), Some("a1"));
    assert_eq!(body(reflection).as_deref(), Some("hello room"));
    let origin = reflection
        .get_child("origin-id", "urn:xmpp:sid:0")
        .expect("origin-id");
    assert_eq!(origin.attr("id"), Some("o-1"));
    let stanza_id = reflection
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .expect("stanza-id");
    assert_eq!(stanza_id.attr("by"), Some("#lobby@echo.test"));
    assert!(!reflection.has_child("request", "urn:xmpp:receipts"));
    assert_eq!(to(copy), "bob@test/r");
    assert_eq!(from(copy), "#lobby@echo.test/alice");
    assert_eq!(body(copy).as_deref(), Some("hello room"));
    // The same occupant-id for Alice to everyone.
    let occupant = |stanza: &Element| {
        stanza
            .get_child("occupant-id", "urn:xmpp:occupant-id:0")
            .and_then(|id| id.attr("id"))
            .map(str::to_owned)
    };
    assert_eq!(occupant(reflection), occupant(copy));
    for stanza in &stanzas[2..] {
        assert_eq!(from(stanza), "#lobby@echo.test/echo");
        assert_eq!(body(stanza).as_deref(), Some("hello room"));
    }
    harness.nothing_for(Duration::from_millis(100)).await;
    // Not in the room: refused, nothing said.
    harness
        .receive(
            "<message type='groupchat' from='carol@test/r' to='#lobby@echo.test' id='c1'>\
             <body>let me in</body></message>",
        )
        .await;
    let refused = harness.next().await;
    assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn a_private_message_goes_to_the_occupant_never_to_the_room() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(&mut harness, 5).await;
    harness
        .receive(
            "<message type='chat' from='alice@test/r' to='#lobby@echo.test/echo' id='p1'>\
             <body>psst</body></message>",
        )
        .await;
    // The echo bot answers privately, from its occupant JID, marked as a room PM; Bob sees
    // nothing.
    let reply = harness.next().await;
    assert_eq!(reply.attr("type"), Some("chat"));
    assert_eq!(from(&reply), "#lobby@echo.test/echo");
    assert!(to(&reply).starts_with("alice@test"));
    assert_eq!(body(&reply).as_deref(), Some("> psst"));
    assert!(reply.has_child("x", MUC_USER));
    harness.nothing_for(Duration::from_millis(200)).await;
    // To nobody in the room: item-not-found.
    harness
        .receive(
            "<message type='chat' from='alice@test/r' to='#lobby@echo.test/ghost' id='p2'>\
             <body>hello?</body></message>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("item-not-found")
    );
}

#[tokio::test(start_paused = true)]
async fn nick_changes_kicks_and_subjects_carry_their_status_codes() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(&mut harness, 5).await;
    // Alice renames herself: 303 with the new nick (and 110 for her), then the new presence.
    harness
        .receive("<presence from='alice@test/r' to='#lobby@echo.test/alicia'/>")
        .await;
    let stanzas = take(&mut harness, 4).await;
    for stanza in &stanzas {
        assert!(
            from(stanza).starts_with("#lobby@echo.test/ali"),
            "{stanza:?}"
        );
    }
    let gone: Vec<&Element> = stanzas
        .iter()
        .filter(|s| s.attr("type") == Some("unavailable"))
        .collect();
    assert_eq!(gone.len(), 2);
    for stanza in &gone {
        assert_eq!(item(stanza).and_then(|i| i.attr("nick")), Some("alicia"));
        let expected: &[&str] = if to(stanza) == "alice@test/r" {
            &["303", "110"]
        } else {
            &["303"]
        };
        assert_eq!(codes(stanza), expected);
    }
    // A taken nick is a conflict.
    harness
        .receive("<presence from='alice@test/r' to='#lobby@echo.test/bob'/>")
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("conflict")
    );
    // The subject, from who set it, to everyone.
    harness
        .receive(
            "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='s1'>\
             <subject>rust and tea</subject></message>",
        )
        .await;
    for stanza in take(&mut harness, 2).await {
        assert_eq!(from(&stanza), "#lobby@echo.test/bob");
        let subject = stanza
            .children()
            .find(|c| c.name() == "subject")
            .expect("subject");
        assert_eq!(subject.text(), "rust and tea");
    }
    // Bob kicks Alicia through the network (the bot's command): 307 with actor and reason;
    // Alicia is out of the room (110), and her self-ping says so.
    harness
        .receive(
            "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='k1'>\
             <body>!kick alicia too loud</body></message>",
        )
        .await;
    let stanzas = take(&mut harness, 4).await;
    let kicks: Vec<&Element> = stanzas.iter().filter(|s| s.name() == "presence").collect();
    assert_eq!(kicks.len(), 2);
    for kick in kicks {
        assert_eq!(kick.attr("type"), Some("unavailable"));
        assert_eq!(from(kick), "#lobby@echo.test/alicia");
        let item = item(kick).expect("item");
        assert_eq!(item.attr("role"), Some("none"));
        let actor = item
            .children()
            .find(|c| c.name() == "actor")
            .expect("actor");
        assert_eq!(actor.attr("nick"), Some("bob"));
        let reason = item
            .children()
            .find(|c| c.name() == "reason")
            .expect("reason");
        assert_eq!(reason.text(), "too loud");
        let expected: &[&str] = if to(kick) == "alice@test/r" {
            &["307", "110"]
        } else {
            &["307"]
        };
        assert_eq!(codes(kick), expected);
    }
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='#lobby@echo.test/alicia' id='ping1'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test(start_paused = true)]
async fn a_self_ping_is_answered_truthfully() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    let ping = |resource: &str, id: &str| {
        format!(
            "<iq type='get' from='alice@test/{resource}' to='#lobby@echo.test/alice' id='{id}'>\
             <ping xmlns='urn:xmpp:ping'/></iq>"
        )
    };
    harness.receive(&ping("r", "p1")).await;
    let answer = harness.next().await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    // Another resource of hers, not joined: not-acceptable, so that it joins.
    harness.receive(&ping("laptop", "p2")).await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
    // A resource that leaves gets its own unavailable presence (110), and is no longer in.
    harness
        .receive("<presence type='unavailable' from='alice@test/r' to='#lobby@echo.test/alice'/>")
        .await;
    let left = harness.next().await;
    assert_eq!(left.attr("type"), Some("unavailable"));
    assert_eq!(codes(&left), ["110"]);
    harness.receive(&ping("r", "p3")).await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test(start_paused = true)]
async fn joins_that_cannot_be_get_the_error_xep_0045_names() {
    let mut harness = Harness::start(Options::default()).await;
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.name(), "presence");
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(
        condition(&refused).as_deref(),
        Some("registration-required")
    );
    // The join's error carries <x xmlns='…muc'/> (XEP-0045 §7.2): clients match on it.
    assert!(refused.has_child("x", "http://jabber.org/protocol/muc"));
    harness.register("alice@test").await;
    harness
        .receive(&join("alice@test", "#lobby", "echo", ""))
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("conflict")
    );
    harness
        .receive(&join("alice@test", "#secret", "alice", ""))
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-authorized")
    );
    harness
        .receive(&join(
            "alice@test",
            "#secret",
            "alice",
            "<password>sesame</password>",
        ))
        .await;
    let joined = take(&mut harness, 3).await;
    assert_eq!(codes(&joined[1]), ["110"]);
    harness
        .receive(&join("eve@elsewhere", "#lobby", "eve", ""))
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("forbidden")
    );
    harness
        .receive("<presence from='alice@test/r' to='#lobby@echo.test'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("jid-malformed")
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_joiner_gets_history_with_delays_and_honours_maxstanzas() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    for n in 0..3 {
        harness
            .receive(&format!(
                "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='h{n}'>\
                 <body>line {n}</body></message>"
            ))
            .await;
        take(&mut harness, 2).await;
    }
    harness.register("bob@test").await;
    harness
        .receive(&join(
            "bob@test",
            "#lobby",
            "bob",
            "<history maxstanzas='2'/>",
        ))
        .await;
    // Alice sees Bob; Bob gets alice, echo, himself, two messages of history, the subject.
    let stanzas = take(&mut harness, 7).await;
    let history: Vec<&Element> = stanzas
        .iter()
        .filter(|s| s.attr("type") == Some("groupchat") && body(s).is_some())
        .collect();
    assert_eq!(history.len(), 2);
    assert_eq!(body(history[0]).as_deref(), Some("line 2"));
    assert_eq!(from(history[0]), "#lobby@echo.test/alice");
    assert_eq!(body(history[1]).as_deref(), Some("line 2"));
    assert_eq!(from(history[1]), "#lobby@echo.test/echo");
    for message in history {
        assert!(message.has_child("delay", "urn:xmpp:delay"));
    }
    assert!(
        stanzas
            .last()
            .is_some_and(|s| s.children().any(|c| c.name() == "subject"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_bounced_room_message_takes_the_stale_resource_out() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness
        .receive(
            "<message type='error' from='alice@test/r' to='#lobby@echo.test/alice' id='x'>\
             <error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></message>",
        )
        .await;
    let left = harness.next().await;
    assert_eq!(left.attr("type"), Some("unavailable"));
    assert_eq!(codes(&left), ["110"]);
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='#lobby@echo.test/alice' id='p'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
}

#[tokio::test(start_paused = true)]
async fn after_a_restart_joins_stand_and_a_rejoin_resyncs_without_a_second_join() {
    let dir = std::env::temp_dir().join(format!("jabbridge-rooms-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
    let options = || Options {
        database: Some(url.clone()),
        ..Options::default()
    };
    {
        let mut harness = Harness::start(options()).await;
        enter(&mut harness, "alice@test", "alice", 1).await;
        harness
            .receive(
                "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='m1'>\
                 <body>before</body></message>",
            )
            .await;
        take(&mut harness, 2).await;
        // The room's cursor is written within a second: nothing is resent after this.
        harness.advance(Duration::from_secs(2)).await;
        crate::testing::real_sleep(Duration::from_millis(200)).await;
    }
    let mut harness = Harness::start(options()).await;
    // Still in: the self-ping says so, with nothing else sent.
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='#lobby@echo.test/alice' id='p'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(harness.next().await.attr("type"), Some("result"));
    // Her client joins again: occupants, herself, the history, the subject.
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    let stanzas = take(&mut harness, 5).await;
    assert_eq!(from(&stanzas[0]), "#lobby@echo.test/echo");
    assert_eq!(codes(&stanzas[1]), ["110"]);
    assert_eq!(body(&stanzas[2]).as_deref(), Some("before"));
    assert_eq!(body(&stanzas[3]).as_deref(), Some("before"));
    assert!(stanzas[4].children().any(|c| c.name() == "subject"));
    harness.nothing_for(Duration::from_millis(100)).await;
    drop(harness);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(start_paused = true)]
async fn the_archive_is_paged_with_mam_and_rsm() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    for n in 0..3 {
        harness
            .receive(&format!(
                "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='h{n}'>\
                 <body>line {n}</body></message>"
            ))
            .await;
        take(&mut harness, 2).await;
    }
    // Six messages archived: each line from alice, then the bot's repeat.
    let query = |id: &str, set: &str| {
        format!(
            "<iq type='set' from='alice@test/r' to='#lobby@echo.test' id='{id}'>\
             <query xmlns='urn:xmpp:mam:2' queryid='q-{id}'>{set}</query></iq>"
        )
    };
    let rsm = |inner: &str| format!("<set xmlns='http://jabber.org/protocol/rsm'>{inner}</set>");
    let page = async |harness: &mut Harness, count: usize| {
        let stanzas = take(harness, count + 1).await;
        let fin = stanzas.last().cloned().expect("an iq");
        assert_eq!(fin.attr("type"), Some("result"), "{fin:?}");
        let fin = fin
            .get_child("fin", "urn:xmpp:mam:2")
            .cloned()
            .expect("fin");
        let results: Vec<(String, String, String)> = stanzas[..count]
            .iter()
            .map(|message| {
                let result = message
                    .get_child("result", "urn:xmpp:mam:2")
                    .expect("result");
                let forwarded = result
                    .get_child("forwarded", "urn:xmpp:forward:0")
                    .expect("forwarded");
                assert!(forwarded.has_child("delay", "urn:xmpp:delay"));
                let inner = forwarded
                    .get_child("message", "jabber:client")
                    .expect("message");
                (
                    result.attr("id").unwrap_or_default().to_owned(),
                    from(inner).to_owned(),
                    body(inner).unwrap_or_default(),
                )
            })
            .collect();
        (results, fin)
    };
    harness.receive(&query("m1", &rsm("<max>2</max>"))).await;
    let (first, fin) = page(&mut harness, 2).await;
    assert_eq!(fin.attr("complete"), Some("false"));
    assert_eq!(first[0].1, "#lobby@echo.test/alice");
    assert_eq!(first[0].2, "line 0");
    assert_eq!(first[1].1, "#lobby@echo.test/echo");
    let after = &first[1].0;
    harness
        .receive(&query(
            "m2",
            &rsm(&format!("<max>10</max><after>{after}</after>")),
        ))
        .await;
    let (rest, fin) = page(&mut harness, 4).await;
    assert_eq!(fin.attr("complete"), Some("true"));
    assert_eq!(rest[3].2, "line 2");
    // The last page, and only Alice's lines.
    harness
        .receive(&query("m3", &rsm("<max>1</max><before/>")))
        .await;
    let (last, _) = page(&mut harness, 1).await;
    assert_eq!(
        (last[0].1.as_str(), last[0].2.as_str()),
        ("#lobby@echo.test/echo", "line 2")
    );
    harness
        .receive(&query(
            "m4",
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>urn:xmpp:mam:2</value></field>\
             <field var='with'><value>#lobby@echo.test/alice</value></field></x>",
        ))
        .await;
    let (alices, _) = page(&mut harness, 3).await;
    assert!(
        alices
            .iter()
            .all(|(_, from, _)| from == "#lobby@echo.test/alice")
    );
    // An id the archive does not have, and a stranger to the room.
    harness
        .receive(&query("m5", &rsm("<after>nope</after>")))
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("item-not-found")
    );
    harness.register("bob@test").await;
    harness
        .receive(
            "<iq type='set' from='bob@test/r' to='#lobby@echo.test' id='m6'>\
             <query xmlns='urn:xmpp:mam:2'/></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("forbidden")
    );
}

/// The network's older history (the echo network keeps five lines per room): a MAM query
/// paging back past the archive's start reads it, archives it below what the room had, in
/// order, and answers with it; once the network has nothing older, the archive's answer
/// stands.
#[tokio::test(start_paused = true)]
async fn paging_back_past_the_archive_reads_the_networks_older_history() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='n1'>\
             <body>now</body></message>",
        )
        .await;
    take(&mut harness, 2).await;
    let query = |id: &str, set: &str| {
        format!(
            "<iq type='set' from='alice@test/r' to='#lobby@echo.test' id='{id}'>\
             <query xmlns='urn:xmpp:mam:2' queryid='q-{id}'>\
             <set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>"
        )
    };
    // Results until the fin: (stanza id, text), and the fin.
    let answer = async |harness: &mut Harness| {
        let mut results = Vec::new();
        loop {
            let stanza = harness.next().await;
            if stanza.name() == "iq" {
                let fin = stanza
                    .get_child("fin", "urn:xmpp:mam:2")
                    .cloned()
                    .expect("fin");
                return (results, fin);
            }
            let inner = stanza
                .get_child("result", "urn:xmpp:mam:2")
                .and_then(|result| result.get_child("forwarded", "urn:xmpp:forward:0"))
                .and_then(|forwarded| forwarded.get_child("message", "jabber:client"))
                .cloned()
                .expect("a result");
            results.push((stanza_id(&inner), body(&inner).unwrap_or_default()));
        }
    };
    let texts = |results: &[(String, String)]| -> Vec<String> {
        results.iter().map(|(_, text)| text.clone()).collect()
    };
    // The last 3: the archive has two (Alice's line, the bot's repeat); the network one
    // more, the latest it kept.
    harness.receive(&query("h1", "<max>3</max><before/>")).await;
    let (page, fin) = answer(&mut harness).await;
    assert_eq!(texts(&page), ["long ago 4", "now", "now"]);
    assert_eq!(fin.attr("complete"), Some("false"), "{fin:?}");
    // Further back, before the oldest shown: the rest of the network's history, in order.
    let oldest = page[0].0.clone();
    harness
        .receive(&query(
            "h2",
            &format!("<max>10</max><before>{oldest}</before>"),
        ))
        .await;
    let (page, fin) = answer(&mut harness).await;
    assert_eq!(
        texts(&page),
        ["long ago 0", "long ago 1", "long ago 2", "long ago 3"]
    );
    assert_eq!(fin.attr("complete"), Some("true"), "{fin:?}");
    // The archive keeps it: the whole room, oldest first, going forward.
    harness.receive(&query("h3", "<max>20</max>")).await;
    let (page, _) = answer(&mut harness).await;
    assert_eq!(
        texts(&page),
        [
            "long ago 0",
            "long ago 1",
            "long ago 2",
            "long ago 3",
            "long ago 4",
            "now",
            "now"
        ]
    );
    // Nothing older: the same answer again.
    harness
        .receive(&query(
            "h4",
            &format!("<max>10</max><before>{}</before>", page[0].0),
        ))
        .await;
    let (older, fin) = answer(&mut harness).await;
    assert!(older.is_empty(), "{older:?}");
    assert_eq!(fin.attr("complete"), Some("true"));
}

#[tokio::test(start_paused = true)]
async fn the_gateway_lists_its_rooms_page_by_page() {
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    harness
        .receive(&join("alice@test", "#zoo", "alice", ""))
        .await;
    take(&mut harness, 3).await;
    let items = |id: &str, set: &str| {
        format!(
            "<iq type='get' from='alice@test/r' to='echo.test' id='{id}'>\
             <query xmlns='http://jabber.org/protocol/disco#items'>\
             <set xmlns='http://jabber.org/protocol/rsm'>{set}</set></query></iq>"
        )
    };
    let listed = |answer: &Element| -> (Vec<String>, Option<String>) {
        let query = answer.children().next().expect("query");
        let jids = query
            .children()
            .filter(|child| child.name() == "item")
            .filter_map(|item| item.attr("jid").map(str::to_owned))
            .collect();
        let count = query
            .children()
            .find(|child| child.name() == "set")
            .and_then(|set| set.children().find(|child| child.name() == "count"))
            .map(Element::text);
        (jids, count)
    };
    harness.receive(&items("l1", "<max>1</max>")).await;
    let answer = harness.next().await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    assert_eq!(
        listed(&answer),
        (vec!["#lobby@echo.test".to_owned()], Some("2".to_owned()))
    );
    harness
        .receive(&items("l2", "<max>5</max><after>#lobby@echo.test</after>"))
        .await;
    let answer = harness.next().await;
    assert_eq!(listed(&answer).0, ["#zoo@echo.test"]);
    let name = String::from(&answer);
    assert!(name.contains("#zoo (2)"), "{name}");
    harness
        .receive(
            "<iq type='get' from='eve@elsewhere/r' to='echo.test' id='l3'>\
             <query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("forbidden")
    );
}

#[tokio::test(start_paused = true)]
async fn a_moderator_kicks_and_changes_roles_through_the_network() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(&mut harness, 5).await;
    let admin = |id: &str, item: &str| {
        format!(
            "<iq type='set' from='alice@test/r' to='#lobby@echo.test' id='{id}'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query></iq>"
        )
    };
    // Bob becomes a moderator: everyone sees his new role, he with 110.
    harness
        .receive(&admin("a1", "<item nick='bob' role='moderator'/>"))
        .await;
    let stanzas = take(&mut harness, 3).await;
    let result = stanzas.iter().find(|s| s.name() == "iq").expect("a result");
    assert_eq!(result.attr("type"), Some("result"));
    for presence in stanzas.iter().filter(|s| s.name() == "presence") {
        assert_eq!(from(presence), "#lobby@echo.test/bob");
        assert_eq!(
            item(presence).and_then(|i| i.attr("role")),
            Some("moderator")
        );
        let expected: &[&str] = if to(presence) == "bob@test/r" {
            &["110"]
        } else {
            &[]
        };
        assert_eq!(codes(presence), expected);
    }
    // Alice kicks him with a reason.
    harness
        .receive(&admin(
            "a2",
            "<item nick='bob' role='none'><reason>enough</reason></item>",
        ))
        .await;
    let stanzas = take(&mut harness, 3).await;
    for presence in stanzas.iter().filter(|s| s.name() == "presence") {
        assert_eq!(presence.attr("type"), Some("unavailable"));
        let actor = item(presence)
            .and_then(|i| i.children().find(|c| c.name() == "actor"))
            .and_then(|actor| actor.attr("nick"));
        assert_eq!(actor, Some("alice"));
        let expected: &[&str] = if to(presence) == "bob@test/r" {
            &["307", "110"]
        } else {
            &["307"]
        };
        assert_eq!(codes(presence), expected);
    }
    // Nobody of that nick; and a room where users may not moderate.
    harness
        .receive(&admin("a3", "<item nick='ghost' role='none'/>"))
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("item-not-found")
    );
    harness
        .receive(&join("alice@test", "#locked", "alice", ""))
        .await;
    take(&mut harness, 3).await;
    harness
        .receive(
            "<iq type='set' from='alice@test/r' to='#locked@echo.test' id='a4'>\
             <query xmlns='http://jabber.org/protocol/muc#admin'><item nick='echo' role='none'/></query></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-allowed")
    );
}

#[tokio::test(start_paused = true)]
async fn the_last_resource_leaving_leaves_the_foreign_room_only_after_the_grace_period() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(&mut harness, 5).await;
    let leave = "<presence type='unavailable' from='alice@test/r' to='#lobby@echo.test/alice'/>";
    // Alice's phone drops and comes back within the grace period: the network never saw
    // her go (Bob sees nothing), and she gets the room again.
    harness.receive(leave).await;
    assert_eq!(codes(&harness.next().await), ["110"]);
    harness.advance(Duration::from_secs(30)).await;
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    let back = take(&mut harness, 4).await;
    assert!(
        back.iter().all(|stanza| to(stanza) == "alice@test/r"),
        "{back:?}"
    );
    harness.nothing_for(Duration::from_secs(60)).await;
    // She leaves for good: after the grace period (60 s) the bridge leaves the room, and
    // Bob sees her go.
    harness.receive(leave).await;
    assert_eq!(codes(&harness.next().await), ["110"]);
    harness.nothing_for(Duration::from_secs(50)).await;
    harness.advance(Duration::from_secs(11)).await;
    let gone = harness.next().await;
    assert_eq!(to(&gone), "bob@test/r");
    assert_eq!(from(&gone), "#lobby@echo.test/alice");
    assert_eq!(gone.attr("type"), Some("unavailable"));
}

#[tokio::test(start_paused = true)]
async fn what_a_room_archived_but_had_not_sent_before_a_crash_is_sent_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = on_a_file(&dir);
    let options = || Options {
        database: Some(url.clone()),
        ..Options::default()
    };
    {
        let mut harness = Harness::start(options()).await;
        enter(&mut harness, "alice@test", "alice", 1).await;
        harness
            .receive(
                "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='m1'>\
                 <body>before</body></message>",
            )
            .await;
        take(&mut harness, 2).await;
        // The cursors are written every second.
        harness.advance(Duration::from_secs(2)).await;
        crate::testing::real_sleep(Duration::from_millis(200)).await;
    }
    // The crash: a line was archived, and its copies never reached the server.
    // (Between harnesses tokio's paused clock runs free: no timeout that could fire.)
    let year = Duration::from_secs(365 * 86_400);
    let store =
        crate::store::Store::connect_waiting(&secrecy::SecretString::from(url.clone()), 1, year)
            .await
            .expect("the database");
    let lost = crate::store::rooms::NewRoomMessage {
        foreign_id: "lost-1".into(),
        stanza_id: "stanza-lost-1".into(),
        nick: "carl".into(),
        sender: "carl".into(),
        text: "said as it crashed".into(),
        origin_id: None,
        poster: None,
        replaces: None,
        reply_to: None,
        post_id: None,
        said_at: crate::store::now_millis(),
    };
    store
        .rooms()
        .archive(crate::testing::DOMAIN, "#lobby", lost)
        .await
        .expect("archived");
    store.close().await;
    let mut harness = Harness::start(options()).await;
    // Sent once more, to Alice (still joined), with the room's stanza-id; "before", which
    // the server had, is not.
    let resent = harness.next().await;
    assert_eq!(to(&resent), "alice@test/r");
    assert_eq!(from(&resent), "#lobby@echo.test/carl");
    assert_eq!(body(&resent).as_deref(), Some("said as it crashed"));
    let stanza_id = resent
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .and_then(|id| id.attr("id"));
    assert_eq!(stanza_id, Some("stanza-lost-1"));
    harness.nothing_for(Duration::from_millis(200)).await;
    // The network plays them all again (a history replay after the reconnection): none is
    // shown again, neither those sent before the crash nor the one sent after it. A new
    // line is.
    use jabbridge_sdk::{ForeignId, MessageId, RoomEvent, RoomId, RoomMessage};
    let (archived, _) = harness
        .gateway
        .store
        .rooms()
        .page(
            crate::testing::DOMAIN,
            "#lobby",
            &crate::store::rooms::PageQuery {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .expect("the archive");
    let said = |foreign_id: &str, text: &str| {
        RoomEvent::Message(RoomMessage {
            foreign_id: MessageId::new(foreign_id),
            nick: "carl".into(),
            sender: ForeignId::new("carl"),
            text: text.into(),
            timestamp: None,
            echo_of: None,
            replaces: None,
            reply_to: None,
        })
    };
    // Hers, the echo bridge's answer to it, and the one the crash did not send.
    assert_eq!(archived.len(), 3);
    for message in &archived {
        crate::gateway::rooms::event(
            &harness.gateway,
            RoomId::new("#lobby"),
            said(&message.foreign_id, &message.text),
        )
        .await
        .expect("served");
    }
    crate::gateway::rooms::event(
        &harness.gateway,
        RoomId::new("#lobby"),
        said("new-1", "said after it"),
    )
    .await
    .expect("served");
    let new = harness.next().await;
    assert_eq!(body(&new).as_deref(), Some("said after it"));
    harness.nothing_for(Duration::from_millis(200)).await;
}

#[tokio::test(start_paused = true)]
async fn a_user_in_as_many_rooms_as_allowed_is_refused_another() {
    let mut harness = Harness::start(Options {
        rooms: crate::config::RoomsConfig {
            rooms_per_user: 1,
            ..Default::default()
        },
        ..Options::default()
    })
    .await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness
        .receive(&join("alice@test", "#other", "alice", ""))
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(condition(&refused).as_deref(), Some("resource-constraint"));
    // Her client joining the room she is in again is not a new room.
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    assert_eq!(codes(&take(&mut harness, 3).await[1]), ["110"]);
}

#[tokio::test(start_paused = true)]
async fn a_presence_update_without_the_muc_element_joins_nothing() {
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    // What a user's server sends to a room it still thinks she is in (after a kick, say).
    harness
        .receive("<presence from='alice@test/r' to='#lobby@echo.test/alice'><show>away</show></presence>")
        .await;
    harness.nothing_for(Duration::from_millis(200)).await;
    harness
        .receive(
            "<iq type='get' from='alice@test/r' to='#lobby@echo.test/alice' id='p'>\
             <ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(
        condition(&harness.next().await).as_deref(),
        Some("not-acceptable")
    );
}

/// The `stanza-id` a room message carries.
fn stanza_id(stanza: &Element) -> String {
    stanza
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .and_then(|id| id.attr("id"))
        .unwrap_or_default()
        .to_owned()
}

/// The `id` of a child `name` in `namespace`, e.g. what a `<replace/>` names.
fn names(stanza: &Element, name: &str, namespace: &str) -> Option<String> {
    stanza
        .get_child(name, namespace)
        .and_then(|child| child.attr("id"))
        .map(str::to_owned)
}

/// `from/r` sends a groupchat to `#lobby` with `payload`: the condition of the error that
/// answers it (which must carry the stanza's id).
async fn refused_groupchat(harness: &mut Harness, from: &str, id: &str, payload: &str) -> String {
    harness
        .receive(&format!(
            "<message type='groupchat' from='{from}/r' to='#lobby@echo.test' id='{id}'>\
             {payload}</message>"
        ))
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("id"), Some(id));
    condition(&refused).unwrap_or_default()
}

/// Alice and Bob in `#lobby`, with the join's stanzas taken.
async fn alice_and_bob(harness: &mut Harness) {
    enter(harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(harness, 5).await;
}

/// The next `count` stanzas, as (to, from) pairs sorted, with the stanzas in that order.
async fn take_sorted(harness: &mut Harness, count: usize) -> Vec<Element> {
    let mut stanzas = take(harness, count).await;
    stanzas.sort_by(|a, b| (from(a), to(a)).cmp(&(from(b), to(b))));
    stanzas
}

/// A line said in the room while the network still answers a user's first join (an IRC
/// server between our JOIN and the end of its WHO) reaches them once, in the join's history:
/// the room is open while the join runs.
#[tokio::test(start_paused = true)]
async fn what_is_said_while_the_network_answers_a_join_reaches_the_joiner() {
    use jabbridge_sdk::{ForeignId, MessageId, RoomEvent, RoomId, RoomMessage};
    let mut harness = Harness::start(Options {
        echo: vec![("delay_ms", 200.into())],
        ..Options::default()
    })
    .await;
    harness.register("alice@test").await;
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    // The gateway reaches the network's join, which waits for the clock.
    crate::testing::real_sleep(Duration::from_millis(100)).await;
    let said = RoomEvent::Message(RoomMessage {
        foreign_id: MessageId::new("during"),
        nick: "carl".into(),
        sender: ForeignId::new("carl"),
        text: "said during your join".into(),
        timestamp: None,
        echo_of: None,
        replaces: None,
        reply_to: None,
    });
    crate::gateway::rooms::event(&harness.gateway, RoomId::new("#lobby"), said)
        .await
        .expect("taken");
    harness.advance(Duration::from_millis(200)).await;
    // The bot's presence, hers, carl's line, the subject.
    let joined = take(&mut harness, 4).await;
    let line = joined
        .iter()
        .find(|stanza| body(stanza).as_deref() == Some("said during your join"))
        .unwrap_or_else(|| panic!("not shown: {joined:?}"));
    assert_eq!(from(line), "#lobby@echo.test/carl");
    assert!(
        joined[3].children().any(|child| child.name() == "subject"),
        "{joined:?}"
    );
    harness.nothing_for(Duration::from_millis(300)).await;
}

#[tokio::test(start_paused = true)]
async fn a_reply_goes_without_its_quote_and_everyone_sees_what_it_answers_in_history_too() {
    const REPLY: &str = "urn:xmpp:reply:0";
    let mut harness = Harness::start(Options::default()).await;
    alice_and_bob(&mut harness).await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a1'>\
             <body>helo</body></message>",
        )
        .await;
    let posted = take_sorted(&mut harness, 4).await;
    let alices = stanza_id(&posted[1]);
    // Bob replies, his client quoting her message (XEP-0428's fallback marks the quote).
    let reply = |id: &str, to: &str| {
        format!(
            "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='{id}'>\
             <body>&gt; alice: helo\nhi alice</body>\
             <reply xmlns='urn:xmpp:reply:0' to='#lobby@echo.test/alice' id='{to}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
             <body start='0' end='14'/></fallback></message>"
        )
    };
    harness.receive(&reply("b1", &alices)).await;
    // Sorted: bob's reply to alice, to bob; the bot's repeat (a reply to the same) to both.
    let replied = take_sorted(&mut harness, 4).await;
    for stanza in &replied {
        assert_eq!(body(stanza).as_deref(), Some("hi alice"), "{stanza:?}");
        let reply = stanza.get_child("reply", REPLY).expect("a reply");
        assert_eq!(reply.attr("id"), Some(alices.as_str()));
        assert_eq!(reply.attr("to"), Some("#lobby@echo.test/alice"));
    }
    assert_eq!(from(&replied[0]), "#lobby@echo.test/bob");
    assert_eq!(from(&replied[2]), "#lobby@echo.test/echo");

    // A reply to a message the room never had goes as it was written, quote and all.
    harness.receive(&reply("b2", "nope")).await;
    for stanza in take(&mut harness, 4).await {
        assert_eq!(body(&stanza).as_deref(), Some("> alice: helo\nhi alice"));
        assert!(!stanza.has_child("reply", REPLY), "{stanza:?}");
    }

    // The archive keeps what each replied to.
    harness
        .receive(
            "<iq type='set' from='alice@test/r' to='#lobby@echo.test' id='q1'>\
             <query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>",
        )
        .await;
    let results = take(&mut harness, 7).await;
    let replies: Vec<Option<String>> = results[..6]
        .iter()
        .map(|result| {
            let message = result
                .get_child("result", "urn:xmpp:mam:2")
                .and_then(|result| result.get_child("forwarded", "urn:xmpp:forward:0"))
                .and_then(|forwarded| forwarded.get_child("message", "jabber:client"))
                .expect("a forwarded message");
            names(message, "reply", REPLY)
        })
        .collect();
    let to_alices = Some(alices.clone());
    assert_eq!(
        replies,
        [None, None, to_alices.clone(), to_alices, None, None]
    );
}

#[tokio::test(start_paused = true)]
async fn corrections_retractions_and_reactions_reach_the_network_and_everyone() {
    const CORRECT: &str = "urn:xmpp:message-correct:0";
    const RETRACT: &str = "urn:xmpp:message-retract:1";
    const REACTIONS: &str = "urn:xmpp:reactions:0";
    let mut harness = Harness::start(Options::default()).await;
    alice_and_bob(&mut harness).await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a1'>\
             <body>helo</body><origin-id xmlns='urn:xmpp:sid:0' id='o-1'/></message>",
        )
        .await;
    // Sorted: alice's post to alice, to bob; the bot's repeat to alice, to bob.
    let posted = take_sorted(&mut harness, 4).await;
    let alices = stanza_id(&posted[1]);
    let repeat = posted[2].clone();
    assert_eq!(from(&repeat), "#lobby@echo.test/echo");

    // Alice corrects it (naming her origin-id): everyone gets the correction naming the id
    // they saw, and the bot corrects its repeat.
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a2'>\
             <body>hello</body><origin-id xmlns='urn:xmpp:sid:0' id='o-2'/>\
             <replace xmlns='urn:xmpp:message-correct:0' id='o-1'/></message>",
        )
        .await;
    let corrected = take_sorted(&mut harness, 4).await;
    for stanza in &corrected[..2] {
        assert_eq!(from(stanza), "#lobby@echo.test/alice");
        assert_eq!(body(stanza).as_deref(), Some("hello"));
        assert_eq!(names(stanza, "replace", CORRECT).as_deref(), Some("o-1"));
    }
    assert_eq!(corrected[0].attr("id"), Some("a2"), "her reflection");
    for stanza in &corrected[2..] {
        assert_eq!(from(stanza), "#lobby@echo.test/echo");
        assert_eq!(body(stanza).as_deref(), Some("hello"));
        assert_eq!(
            names(stanza, "replace", CORRECT),
            repeat.attr("id").map(str::to_owned)
        );
    }

    // She corrects the correction (naming it): it still names her first message.
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a4'>\
             <body>hello!</body><origin-id xmlns='urn:xmpp:sid:0' id='o-4'/>\
             <replace xmlns='urn:xmpp:message-correct:0' id='o-2'/></message>",
        )
        .await;
    let again = take_sorted(&mut harness, 4).await;
    for stanza in &again[..2] {
        assert_eq!(body(stanza).as_deref(), Some("hello!"));
        assert_eq!(names(stanza, "replace", CORRECT).as_deref(), Some("o-1"));
    }
    for stanza in &again[2..] {
        assert_eq!(
            names(stanza, "replace", CORRECT),
            repeat.attr("id").map(str::to_owned)
        );
    }

    // Bob reacts to Alice's first message (by the room's stanza id): everyone sees it from
    // him, and the bot mirrors it.
    harness
        .receive(&format!(
            "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='b1'>\
             <reactions xmlns='urn:xmpp:reactions:0' id='{alices}'><reaction>👍</reaction>\
             </reactions></message>"
        ))
        .await;
    let reacted = take_sorted(&mut harness, 4).await;
    let senders: Vec<&str> = reacted.iter().map(from).collect();
    assert_eq!(
        senders,
        [
            "#lobby@echo.test/bob",
            "#lobby@echo.test/bob",
            "#lobby@echo.test/echo",
            "#lobby@echo.test/echo"
        ]
    );
    for stanza in &reacted {
        let reactions = stanza.get_child("reactions", REACTIONS).expect("reactions");
        assert_eq!(reactions.attr("id"), Some(alices.as_str()));
        let emojis: Vec<String> = reactions.children().map(Element::text).collect();
        assert_eq!(emojis, ["👍"]);
    }

    // Bob may not correct or retract Alice's message.
    for (id, payload) in [
        (
            "b2",
            "<body>mine now</body><replace xmlns='urn:xmpp:message-correct:0' id='o-1'/>",
        ),
        (
            "b3",
            &format!("<retract xmlns='urn:xmpp:message-retract:1' id='{alices}'/>"),
        ),
    ] {
        let condition = refused_groupchat(&mut harness, "bob@test", id, payload).await;
        assert_eq!(condition, "item-not-found");
    }

    // Alice retracts it: everyone is told, and the bot retracts its repeat.
    harness
        .receive(&format!(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a3'>\
             <retract xmlns='urn:xmpp:message-retract:1' id='{alices}'/></message>"
        ))
        .await;
    let retracted = take_sorted(&mut harness, 4).await;
    for stanza in &retracted[..2] {
        assert_eq!(from(stanza), "#lobby@echo.test/alice");
        assert_eq!(names(stanza, "retract", RETRACT), Some(alices.clone()));
    }
    for stanza in &retracted[2..] {
        assert_eq!(from(stanza), "#lobby@echo.test/echo");
        assert_eq!(names(stanza, "retract", RETRACT), Some(stanza_id(&repeat)));
    }

    // The archive keeps tombstones of it, of its corrections and of the bot's: no text
    // left, the corrections still naming what they corrected.
    harness
        .receive(
            "<iq type='set' from='bob@test/r' to='#lobby@echo.test' id='q'>\
             <query xmlns='urn:xmpp:mam:2' queryid='q'/></iq>",
        )
        .await;
    let page = take(&mut harness, 7).await;
    let inner: Vec<Element> = page[..6]
        .iter()
        .map(|result| {
            result
                .get_child("result", "urn:xmpp:mam:2")
                .and_then(|result| result.get_child("forwarded", "urn:xmpp:forward:0"))
                .and_then(|forwarded| forwarded.get_child("message", "jabber:client"))
                .cloned()
                .expect("a forwarded message")
        })
        .collect();
    for message in &inner {
        assert!(message.has_child("retracted", RETRACT), "{message:?}");
        assert_eq!(body(message), None);
    }
    assert_eq!(names(&inner[2], "replace", CORRECT).as_deref(), Some("o-1"));
    assert_eq!(names(&inner[4], "replace", CORRECT).as_deref(), Some("o-1"));
    assert_eq!(page[6].attr("type"), Some("result"));
    harness.nothing_for(Duration::from_millis(100)).await;
}

/// A user's typing in a room reaches the room's other members at once and the network (the
/// echo bot types along), and an occupant's typing reaches every member but the one of that
/// nick: a chat state from the occupant, without a body, not to be stored.
#[tokio::test(start_paused = true)]
async fn typing_in_a_room_goes_to_the_network_and_an_occupants_to_the_others() {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    let mut harness = Harness::start(Options::default()).await;
    alice_and_bob(&mut harness).await;
    harness
        .receive(&format!(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test'>\
             <composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    let typing = take_sorted(&mut harness, 3).await;
    let shown: Vec<(&str, &str)> = typing.iter().map(|s| (from(s), to(s))).collect();
    assert_eq!(
        shown,
        [
            ("#lobby@echo.test/alice", "bob@test/r"),
            ("#lobby@echo.test/echo", "alice@test/r"),
            ("#lobby@echo.test/echo", "bob@test/r"),
        ]
    );
    for stanza in &typing {
        assert_eq!(stanza.attr("type"), Some("groupchat"));
        assert!(stanza.has_child("composing", CHATSTATES), "{stanza:?}");
        assert!(stanza.has_child("no-store", "urn:xmpp:hints"));
        assert_eq!(body(stanza), None);
    }
    // Bob's typing, as the network reports it under his nick: to Alice, not back to him.
    let typing = jabbridge_sdk::RoomEvent::Typing {
        nick: "bob".into(),
        state: jabbridge_sdk::ChatState::Paused,
    };
    crate::gateway::rooms::event(
        &harness.gateway,
        jabbridge_sdk::RoomId::new("#lobby"),
        typing,
    )
    .await
    .expect("taken");
    let paused = harness.next().await;
    assert_eq!(to(&paused), "alice@test/r");
    assert_eq!(from(&paused), "#lobby@echo.test/bob");
    assert!(paused.has_child("paused", CHATSTATES), "{paused:?}");
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn a_network_without_edits_refuses_them_and_changes_nothing() {
    let mut harness = Harness::start(Options {
        echo: vec![("edits", false.into())],
        ..Options::default()
    })
    .await;
    alice_and_bob(&mut harness).await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a1'>\
             <body>hi</body></message>",
        )
        .await;
    let posted = take_sorted(&mut harness, 4).await;
    let alices = stanza_id(&posted[0]);
    for (id, payload) in [
        (
            "c",
            "<body>hey</body><replace xmlns='urn:xmpp:message-correct:0' id='a1'/>".to_owned(),
        ),
        (
            "r",
            format!("<retract xmlns='urn:xmpp:message-retract:1' id='{alices}'/>"),
        ),
        (
            "e",
            format!(
                "<reactions xmlns='urn:xmpp:reactions:0' id='{alices}'>\
                 <reaction>👍</reaction></reactions>"
            ),
        ),
    ] {
        let condition = refused_groupchat(&mut harness, "alice@test", id, &payload).await;
        assert_eq!(condition, "feature-not-implemented");
    }
    // A reply goes as a plain post, with the quote her client wrote.
    harness
        .receive(&format!(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='p'>\
             <body>&gt; hi\nyes</body><reply xmlns='urn:xmpp:reply:0' id='{alices}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
             <body start='0' end='5'/></fallback></message>"
        ))
        .await;
    for stanza in take(&mut harness, 4).await {
        assert_eq!(body(&stanza).as_deref(), Some("> hi\nyes"));
        assert!(!stanza.has_child("reply", "urn:xmpp:reply:0"), "{stanza:?}");
    }
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn edits_naming_nothing_or_too_much_get_precise_errors() {
    let mut harness = Harness::start(Options::default()).await;
    alice_and_bob(&mut harness).await;
    let many = "<reaction>x</reaction>".repeat(21);
    let long = format!("<reaction>{}</reaction>", "y".repeat(65));
    for (id, payload, expected) in [
        (
            "n1",
            "<retract xmlns='urn:xmpp:message-retract:1'/>".to_owned(),
            "item-not-found",
        ),
        (
            "n2",
            "<retract xmlns='urn:xmpp:message-retract:1' id='nope'/>".to_owned(),
            "item-not-found",
        ),
        (
            "n3",
            "<body>x</body><replace xmlns='urn:xmpp:message-correct:0' id='nope'/>".to_owned(),
            "item-not-found",
        ),
        (
            "n4",
            "<reactions xmlns='urn:xmpp:reactions:0' id='nope'><reaction>x</reaction></reactions>"
                .to_owned(),
            "item-not-found",
        ),
        (
            "n5",
            format!("<reactions xmlns='urn:xmpp:reactions:0' id='nope'>{many}</reactions>"),
            "not-acceptable",
        ),
        (
            "n6",
            format!("<reactions xmlns='urn:xmpp:reactions:0' id='nope'>{long}</reactions>"),
            "not-acceptable",
        ),
    ] {
        let condition = refused_groupchat(&mut harness, "alice@test", id, &payload).await;
        assert_eq!(condition, expected, "{id}");
    }
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn what_another_instance_archived_first_is_still_shown_here_once() {
    use jabbridge_sdk::{ForeignId, MessageId, RoomEvent, RoomId, RoomMessage};
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    let room = RoomId::new("#lobby");
    let archived = |foreign_id: &'static str, said_at: i64| crate::store::rooms::NewRoomMessage {
        foreign_id: foreign_id.into(),
        stanza_id: foreign_id.into(),
        nick: "carl".into(),
        sender: "carl".into(),
        text: "said on the network".into(),
        origin_id: None,
        poster: None,
        said_at,
        replaces: None,
        reply_to: None,
        post_id: None,
    };
    let said = |foreign_id: &str| {
        RoomEvent::Message(RoomMessage {
            foreign_id: MessageId::new(foreign_id),
            nick: "carl".into(),
            sender: ForeignId::new("carl"),
            text: "said on the network".into(),
            timestamp: None,
            echo_of: None,
            replaces: None,
            reply_to: None,
        })
    };
    let tables = harness.gateway.store.rooms();
    let now = crate::store::now_millis();
    // Another instance archived it a moment ago; this one's connection reports it too:
    // Alice, whose session runs here, gets it, with the room's stanza id, once.
    tables
        .archive(crate::testing::DOMAIN, "#lobby", archived("net-1", now))
        .await
        .expect("archived");
    for _ in 0..2 {
        crate::gateway::rooms::event(&harness.gateway, room.clone(), said("net-1"))
            .await
            .expect("served");
    }
    let shown = harness.next().await;
    assert_eq!(from(&shown), "#lobby@echo.test/carl");
    assert_eq!(stanza_id(&shown), "net-1");
    harness.nothing_for(Duration::from_millis(100)).await;
    // An old message played again is not shown again.
    tables
        .archive(
            crate::testing::DOMAIN,
            "#lobby",
            archived("net-old", now - 3_600_000),
        )
        .await
        .expect("archived");
    crate::gateway::rooms::event(&harness.gateway, room.clone(), said("net-old"))
        .await
        .expect("served");
    harness.nothing_for(Duration::from_millis(100)).await;
    // A retraction reported by two connections (the archive's tombstone made by the first)
    // is shown once.
    for _ in 0..2 {
        let retracted = RoomEvent::Retracted {
            foreign_id: MessageId::new("net-1"),
        };
        crate::gateway::rooms::event(&harness.gateway, room.clone(), retracted)
            .await
            .expect("served");
    }
    let retraction = harness.next().await;
    assert_eq!(
        names(&retraction, "retract", "urn:xmpp:message-retract:1").as_deref(),
        Some("net-1")
    );
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn posts_to_a_network_without_echoes_are_reflected_in_order_each_once() {
    let mut harness = Harness::start(Options {
        echo: vec![("echoes", false.into())],
        ..Options::default()
    })
    .await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    // Sent one after another without waiting: the core reflects each (the network does
    // not), archived in batches, in the order posted.
    const POSTS: usize = 30;
    for n in 0..POSTS {
        harness
            .receive(&format!(
                "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='a{n}'>\
                 <body>post {n}</body></message>"
            ))
            .await;
    }
    let stanzas = take(&mut harness, 2 * POSTS).await;
    let of = |nick: &str| -> Vec<(Option<String>, Option<String>)> {
        stanzas
            .iter()
            .filter(|stanza| from(stanza) == format!("#lobby@echo.test/{nick}"))
            .map(|stanza| (stanza.attr("id").map(str::to_owned), body(stanza)))
            .collect()
    };
    let expected: Vec<_> = (0..POSTS)
        .map(|n| (Some(format!("a{n}")), Some(format!("post {n}"))))
        .collect();
    assert_eq!(of("alice"), expected);
    let repeats: Vec<_> = of("echo").into_iter().map(|(_, text)| text).collect();
    let expected: Vec<_> = (0..POSTS).map(|n| Some(format!("post {n}"))).collect();
    assert_eq!(repeats, expected);
    harness.nothing_for(Duration::from_millis(100)).await;
    // Each is in the archive once, in order.
    let page = crate::store::rooms::PageQuery {
        max: 100,
        ..Default::default()
    };
    let (archived, _) = harness
        .gateway
        .store
        .rooms()
        .page(crate::testing::DOMAIN, "#lobby", &page)
        .await
        .expect("the archive");
    let alices: Vec<_> = archived
        .iter()
        .filter(|message| message.nick == "alice")
        .map(|message| message.text.clone())
        .collect();
    let expected: Vec<_> = (0..POSTS).map(|n| format!("post {n}")).collect();
    assert_eq!(alices, expected);
}

#[tokio::test]
async fn a_batch_that_breaks_a_constraint_writes_none_of_its_rows() {
    use crate::store::rooms::{ArchiveRow, NewRoomMessage, PageQuery};
    use crate::store::{Store, Write};
    let dir = tempfile::tempdir().expect("temp dir");
    let url = secrecy::SecretString::from(on_a_file(&dir));
    let store = Store::connect(&url, 4).await.expect("SQLite");
    store.migrate().await.expect("migrations");
    let row = |foreign_id: &str, text: &str| {
        Write::Archive(ArchiveRow {
            bridge: "echo.test".into(),
            room: "#lobby".into(),
            message: NewRoomMessage {
                foreign_id: foreign_id.into(),
                stanza_id: foreign_id.into(),
                nick: "bob".into(),
                sender: "bob".into(),
                text: text.into(),
                origin_id: None,
                poster: None,
                said_at: crate::store::now_millis(),
                replaces: None,
                reply_to: None,
                post_id: None,
            },
        })
    };
    // A constraint the inserts do not handle, as a full disk or a corrupt index would fail
    // a row: the batch's first rows go in, its last breaks it.
    sqlx::query("CREATE UNIQUE INDEX one_text ON room_messages (text)")
        .execute(store.pool())
        .await
        .expect("an index");
    store
        .commit_batch("a", &[row("m1", "taken")])
        .await
        .expect("the first batch");
    let texts = async || -> Vec<String> {
        let page = PageQuery {
            max: 10,
            ..Default::default()
        };
        let (archived, _) = store
            .rooms()
            .page("echo.test", "#lobby", &page)
            .await
            .expect("a page");
        archived.into_iter().map(|message| message.text).collect()
    };
    // One statement, run alone (SQLite would keep the rows before the failure of an
    // `INSERT OR FAIL` that is its own transaction), through the pool and through the
    // committer's writer on its own connection; then two statements in one transaction.
    let mut writer = store.batch_writer();
    let one = [row("m2", "fresh"), row("m3", "taken")];
    assert!(store.commit_batch("a", &one).await.is_err());
    assert!(writer.commit("a", &one).await.is_err());
    let mut two: Vec<Write> = (0..70)
        .map(|n| row(&format!("n{n}"), &format!("new {n}")))
        .collect();
    two.push(row("m4", "taken"));
    assert!(writer.commit("a", &two).await.is_err());
    assert_eq!(texts().await, ["taken"], "nothing of a failed batch");
    // The writer goes on after a failure, on a new connection.
    let ids = writer
        .commit("a", &[row("m5", "fine")])
        .await
        .expect("a good batch");
    assert!(ids[0].is_some());
    assert_eq!(texts().await, ["taken", "fine"]);
}

#[tokio::test(start_paused = true)]
async fn a_post_the_archive_refuses_gets_an_error_and_the_room_goes_on() {
    // On a file: a failed batch closes its connection, which would end a database in memory.
    let dir = tempfile::tempdir().expect("temp dir");
    let url = on_a_file(&dir);
    let mut harness = Harness::start(Options {
        echo: vec![("echoes", false.into())],
        database: Some(url),
        ..Options::default()
    })
    .await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    // A database that fails on one row (as a full disk would on any).
    sqlx::query(
        "CREATE TRIGGER refuse BEFORE INSERT ON room_messages WHEN NEW.text = 'doomed' \
         BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(harness.gateway.store.pool())
    .await
    .expect("a trigger");
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='d1'>\
             <body>doomed</body></message>",
        )
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(refused.attr("id"), Some("d1"));
    assert_eq!(to(&refused), "alice@test/r");
    assert_eq!(condition(&refused).as_deref(), Some("service-unavailable"));
    harness.nothing_for(Duration::from_millis(100)).await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='f1'>\
             <body>fine</body></message>",
        )
        .await;
    let stanzas = take(&mut harness, 2).await;
    let mine = stanzas
        .iter()
        .find(|stanza| from(stanza) == "#lobby@echo.test/alice")
        .expect("the reflection");
    assert_eq!(mine.attr("id"), Some("f1"));
    assert_eq!(body(mine).as_deref(), Some("fine"));
}

#[tokio::test(start_paused = true)]
async fn a_correction_sent_right_after_its_post_finds_it() {
    // Several connections, as in production: the lookup does not queue behind the commit.
    let dir = tempfile::tempdir().expect("temp dir");
    let url = on_a_file(&dir);
    let mut harness = Harness::start(Options {
        echo: vec![("echoes", false.into())],
        database: Some(url),
        connections: 4,
        ..Options::default()
    })
    .await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    // The post's archive commit is not awaited before the next stanza is taken: the
    // correction right behind it must still find it.
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='p1'>\
             <body>helo</body><origin-id xmlns='urn:xmpp:sid:0' id='o-1'/></message>",
        )
        .await;
    harness
        .receive(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='p2'>\
             <body>hello</body><origin-id xmlns='urn:xmpp:sid:0' id='o-2'/>\
             <replace xmlns='urn:xmpp:message-correct:0' id='o-1'/></message>",
        )
        .await;
    let stanzas = take(&mut harness, 4).await;
    let mine: Vec<&Element> = stanzas
        .iter()
        .filter(|stanza| from(stanza) == "#lobby@echo.test/alice")
        .collect();
    assert_eq!(mine.len(), 2, "{stanzas:?}");
    assert_eq!(mine[0].attr("id"), Some("p1"));
    assert_eq!(mine[1].attr("id"), Some("p2"));
    assert_eq!(body(mine[1]).as_deref(), Some("hello"));
    assert_eq!(
        names(mine[1], "replace", "urn:xmpp:message-correct:0").as_deref(),
        Some("o-1")
    );
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn ids_an_archive_cannot_index_are_refused_before_anything_is_sent() {
    use jabbridge_sdk::{CoreError, ForeignId, MessageId, RoomEvent, RoomId, RoomMessage};
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    // A client's over-long origin-id: refused before the network sees the post.
    let long = "x".repeat(600);
    harness
        .receive(&format!(
            "<message type='groupchat' from='alice@test/r' to='#lobby@echo.test' id='l1'>\
             <body>hi</body><origin-id xmlns='urn:xmpp:sid:0' id='{long}'/></message>"
        ))
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("id"), Some("l1"));
    assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
    harness.nothing_for(Duration::from_millis(100)).await;
    // A bridge's message whose sender holds a NUL, or whose id is too long: refused, and
    // nothing shown.
    let said = |foreign_id: String, sender: &str| {
        RoomEvent::Message(RoomMessage {
            foreign_id: MessageId::new(foreign_id),
            nick: "carl".into(),
            sender: ForeignId::new(sender),
            text: "hello".into(),
            timestamp: None,
            echo_of: None,
            replaces: None,
            reply_to: None,
        })
    };
    let room = RoomId::new("#lobby");
    for event in [said("n1".into(), "carl\0"), said(long.clone(), "carl")] {
        let answer = crate::gateway::rooms::event(&harness.gateway, room.clone(), event).await;
        assert!(matches!(answer, Err(CoreError::Refused(_))), "{answer:?}");
    }
    harness.nothing_for(Duration::from_millis(100)).await;
    // A good one still goes through.
    crate::gateway::rooms::event(&harness.gateway, room.clone(), said("n2".into(), "carl"))
        .await
        .expect("shown");
    let shown = harness.next().await;
    assert_eq!(body(&shown).as_deref(), Some("hello"));
}

/// Runs the command on `#lobby`'s address for `user/r`: its form without `persistent`, the
/// change with it. Returns the `<command/>` that came back.
async fn room_settings(harness: &mut Harness, user: &str, persistent: Option<&str>) -> Element {
    let form = persistent.map_or_else(String::new, |value| {
        format!(
            "<x xmlns='jabber:x:data' type='submit'>\
             <field var='persistent'><value>{value}</value></field></x>"
        )
    });
    harness
        .receive(&format!(
            "<iq type='set' from='{user}/r' to='#lobby@echo.test' id='cfg'>\
             <command xmlns='http://jabber.org/protocol/commands' node='configure' \
             action='execute'>{form}</command></iq>"
        ))
        .await;
    let answer = harness.next().await;
    assert_eq!(answer.attr("id"), Some("cfg"));
    match answer.get_child("command", "http://jabber.org/protocol/commands") {
        Some(command) => command.clone(),
        None => answer,
    }
}

/// The value of a form field in a command's answer.
fn field_value(command: &Element, var: &str) -> Option<String> {
    let x = command.get_child("x", "jabber:x:data")?;
    let field = x.children().find(|field| field.attr("var") == Some(var))?;
    Some(field.get_child("value", "jabber:x:data")?.text())
}

/// The note a finished command says.
fn note(command: &Element) -> String {
    command
        .get_child("note", "http://jabber.org/protocol/commands")
        .map(Element::text)
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_user_who_stays_is_kept_in_the_room_while_away_and_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = on_a_file(&dir);
    let options = || Options {
        database: Some(url.clone()),
        ..Options::default()
    };
    {
        let mut harness = Harness::start(options()).await;
        harness.register("alice@test").await;
        // Not in the room: nothing to set.
        let refused = room_settings(&mut harness, "alice@test", None).await;
        assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
        harness
            .receive(&join("alice@test", "#lobby", "alice", ""))
            .await;
        take(&mut harness, 3).await;
        harness.register("bob@test").await;
        harness
            .receive(&join("bob@test", "#lobby", "bob", ""))
            .await;
        take(&mut harness, 5).await;
        // The room offers the command, and says so.
        harness
            .receive(
                "<iq type='get' from='alice@test/r' to='#lobby@echo.test' id='i'>\
                 <query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
            )
            .await;
        let info = harness.next().await;
        let query = info
            .get_child("query", "http://jabber.org/protocol/disco#info")
            .expect("disco#info");
        assert!(
            query.children().any(|feature| {
                feature.attr("var") == Some("http://jabber.org/protocol/commands")
            })
        );
        harness
            .receive(
                "<iq type='get' from='alice@test/r' to='#lobby@echo.test' id='l'>\
                 <query xmlns='http://jabber.org/protocol/disco#items' \
                 node='http://jabber.org/protocol/commands'/></iq>",
            )
            .await;
        let items = harness.next().await;
        let listed: Vec<_> = items
            .get_child("query", "http://jabber.org/protocol/disco#items")
            .expect("disco#items")
            .children()
            .map(|item| (item.attr("jid"), item.attr("node")))
            .collect();
        assert_eq!(listed, [(Some("#lobby@echo.test"), Some("configure"))]);
        // Her form says she does not stay; she says she does.
        let form = room_settings(&mut harness, "alice@test", None).await;
        assert_eq!(form.attr("status"), Some("executing"));
        assert_eq!(field_value(&form, "persistent").as_deref(), Some("0"));
        let done = room_settings(&mut harness, "alice@test", Some("maybe")).await;
        assert_eq!(condition(&done).as_deref(), Some("not-acceptable"));
        let done = room_settings(&mut harness, "alice@test", Some("1")).await;
        assert_eq!(done.attr("status"), Some("completed"));
        assert!(note(&done).contains("You stay in"), "{done:?}");
        // Her client leaves: it is told so; the network is not, long after the grace period.
        harness
            .receive(
                "<presence type='unavailable' from='alice@test/r' to='#lobby@echo.test/alice'/>",
            )
            .await;
        assert_eq!(codes(&harness.next().await), ["110"]);
        harness.advance(Duration::from_secs(600)).await;
        harness.nothing_for(Duration::from_millis(100)).await;
        // Bob talks meanwhile: into the archive (his reflection and the bot's repeat to him;
        // nothing to her).
        harness
            .receive(
                "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='b1'>\
                 <body>while you were out</body></message>",
            )
            .await;
        let said = take(&mut harness, 2).await;
        assert!(said.iter().all(|stanza| to(stanza) == "bob@test/r"));
        harness.nothing_for(Duration::from_millis(100)).await;
        harness.advance(Duration::from_secs(2)).await;
        crate::testing::real_sleep(Duration::from_millis(200)).await;
    }
    // After a restart she is still in (her setting too), and her client joining again finds
    // what Bob said, without a second join on the network.
    let mut harness = Harness::start(options()).await;
    let form = room_settings(&mut harness, "alice@test", None).await;
    assert_eq!(field_value(&form, "persistent").as_deref(), Some("1"));
    harness
        .receive(&join("alice@test", "#lobby", "alice", ""))
        .await;
    let back = take(&mut harness, 6).await;
    assert!(back.iter().all(|stanza| to(stanza) == "alice@test/r"));
    let bodies: Vec<_> = back.iter().filter_map(body).collect();
    assert_eq!(bodies, ["while you were out", "while you were out"]);
    assert!(back[5].children().any(|c| c.name() == "subject"));
    // She stays no more, and her client leaves: after the grace period she is out (Bob,
    // restored too, sees her go), and has nothing to set.
    let done = room_settings(&mut harness, "alice@test", Some("false")).await;
    assert!(note(&done).contains("You leave"), "{done:?}");
    harness
        .receive("<presence type='unavailable' from='alice@test/r' to='#lobby@echo.test/alice'/>")
        .await;
    assert_eq!(codes(&harness.next().await), ["110"]);
    harness.nothing_for(Duration::from_secs(50)).await;
    harness.advance(Duration::from_secs(11)).await;
    let gone = harness.next().await;
    assert_eq!(to(&gone), "bob@test/r");
    assert_eq!(from(&gone), "#lobby@echo.test/alice");
    assert_eq!(gone.attr("type"), Some("unavailable"));
    let refused = room_settings(&mut harness, "alice@test", None).await;
    assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
}

#[tokio::test(start_paused = true)]
async fn a_user_staying_without_a_client_is_out_when_the_network_kicks_them() {
    let mut harness = Harness::start(Options::default()).await;
    enter(&mut harness, "alice@test", "alice", 1).await;
    harness.register("bob@test").await;
    harness
        .receive(&join("bob@test", "#lobby", "bob", ""))
        .await;
    take(&mut harness, 5).await;
    room_settings(&mut harness, "alice@test", Some("1")).await;
    harness
        .receive("<presence type='unavailable' from='alice@test/r' to='#lobby@echo.test/alice'/>")
        .await;
    assert_eq!(codes(&harness.next().await), ["110"]);
    harness.advance(Duration::from_secs(120)).await;
    // Bob kicks her through the network while none of her clients is in: Bob sees it (his
    // post's reflection, the kick), and she is out of the room: nothing to set any more.
    harness
        .receive(
            "<message type='groupchat' from='bob@test/r' to='#lobby@echo.test' id='k1'>\
             <body>!kick alice away too long</body></message>",
        )
        .await;
    let stanzas = take(&mut harness, 2).await;
    assert!(stanzas.iter().all(|stanza| to(stanza) == "bob@test/r"));
    let kick = stanzas
        .iter()
        .find(|stanza| stanza.name() == "presence")
        .expect("the kick");
    assert_eq!(codes(kick), ["307"]);
    let refused = room_settings(&mut harness, "alice@test", None).await;
    assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
    harness.nothing_for(Duration::from_millis(100)).await;
}
