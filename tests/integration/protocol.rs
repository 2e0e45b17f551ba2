//! The gateway protocol as users meet it: the gateway in the roster (XEP-0100), adding a
//! contact with `jabber:iq:gateway`, commands (ad-hoc and by chat), strangers and floods
//! refused, receipts and corrections; and the durable flow: kill -9 with messages in both
//! queues (SQLite and PostgreSQL), two instances sharing PostgreSQL behind ejabberd.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use xmpp_parsers::minidom::Element;

use crate::harness::{Client, Jabbridge, ServerKind, XmppServer, body, error_condition};
use crate::{ADMIN, SAY_TOKEN, config_for, echo_setup, on_both_servers, register_set, registered};

const WAIT: Duration = Duration::from_secs(10);
const ECHO: &str = "echo.localhost";

on_both_servers!(
    the_gateway_joins_the_roster_after_registering,
    jabber_iq_gateway_turns_what_users_type_into_a_jid,
    commands_work_ad_hoc_and_by_chat,
    strangers_and_floods_are_refused,
    receipts_corrections_and_chat_states,
    a_message_the_users_server_sends_back_is_recorded_as_failed,
    a_server_restart_under_load_loses_nothing_accepted,
);

/// Waits until every predicate has matched some stanza, in any order.
async fn expect_each(client: &mut Client, wanted: &[&dyn Fn(&Element) -> bool]) {
    let mut seen = vec![false; wanted.len()];
    while seen.iter().any(|seen| !seen) {
        let stanza = client
            .expect(WAIT, |stanza| {
                wanted
                    .iter()
                    .zip(&seen)
                    .any(|(wanted, seen)| !seen && wanted(stanza))
            })
            .await;
        for (index, wanted) in wanted.iter().enumerate() {
            if wanted(&stanza) {
                seen[index] = true;
            }
        }
    }
}

fn child<'a>(stanza: &'a Element, name: &str) -> Option<&'a Element> {
    stanza.children().find(|child| child.name() == name)
}

async fn the_gateway_joins_the_roster_after_registering(kind: ServerKind) {
    let (server, _jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = server.client("alice").await;
    alice.send(&register_set(ECHO, "r1", "")).await;
    // The gateway asks to subscribe; the client approves and subscribes back; the gateway
    // approves and says it is available.
    let both = |stanza: &Element| {
        stanza.name() == "iq"
            && child(stanza, "query")
                .and_then(|query| child(query, "item"))
                .is_some_and(|item| {
                    item.attr("jid") == Some(ECHO) && item.attr("subscription") == Some("both")
                })
    };
    let available = |stanza: &Element| {
        stanza.name() == "presence"
            && stanza.attr("from") == Some(ECHO)
            && stanza.attr("type").is_none()
    };
    expect_each(&mut alice, &[&both, &available]).await;
    let roster = alice
        .iq(
            "ro1",
            "<iq type='get' id='ro1'><query xmlns='jabber:iq:roster'/></iq>",
        )
        .await;
    let item = child(&roster, "query")
        .and_then(|query| query.children().find(|item| item.attr("jid") == Some(ECHO)))
        .expect("the gateway is in the roster");
    assert_eq!(item.attr("subscription"), Some("both"));

    // Adding a contact is approved (the echo bridge approves everyone), with presence.
    alice
        .send("<presence type='subscribe' to='carol@echo.localhost'/>")
        .await;
    let carol_both = |stanza: &Element| {
        stanza.name() == "iq"
            && child(stanza, "query")
                .and_then(|query| child(query, "item"))
                .is_some_and(|item| {
                    item.attr("jid") == Some("carol@echo.localhost")
                        && matches!(item.attr("subscription"), Some("to" | "both"))
                })
    };
    let carol_available = |stanza: &Element| {
        stanza.name() == "presence"
            && stanza.attr("from") == Some("carol@echo.localhost")
            && stanza.attr("type").is_none()
    };
    expect_each(&mut alice, &[&carol_both, &carol_available]).await;
}

async fn jabber_iq_gateway_turns_what_users_type_into_a_jid(kind: ServerKind) {
    let (server, _jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = server.client("alice").await;
    let prompt = alice
        .iq(
            "g1",
            "<iq type='get' to='echo.localhost' id='g1'><query xmlns='jabber:iq:gateway'/></iq>",
        )
        .await;
    let query = child(&prompt, "query").expect("query");
    assert_eq!(
        child(query, "prompt").map(Element::text).as_deref(),
        Some("Name")
    );
    assert!(child(query, "desc").is_some());

    let answer = alice
        .iq(
            "g2",
            "<iq type='set' to='echo.localhost' id='g2'><query xmlns='jabber:iq:gateway'>\
             <prompt>John Doe@home</prompt></query></iq>",
        )
        .await;
    let jid = child(&answer, "query")
        .and_then(|query| child(query, "jid"))
        .map(Element::text);
    // XEP-0106: the space and the @ are escaped; nodeprep folds the case.
    assert_eq!(jid.as_deref(), Some("john\\20doe\\40home@echo.localhost"));

    let empty = alice
        .iq(
            "g3",
            "<iq type='set' to='echo.localhost' id='g3'><query xmlns='jabber:iq:gateway'><prompt/></query></iq>",
        )
        .await;
    assert_eq!(error_condition(&empty).as_deref(), Some("bad-request"));
}

fn command(id: &str, node: &str, inner: &str) -> String {
    format!(
        "<iq type='set' to='echo.localhost' id='{id}'>\
         <command xmlns='http://jabber.org/protocol/commands' node='{node}' {inner}</iq>"
    )
}

async fn chat(client: &mut Client, text: &str) -> String {
    client
        .send(&format!(
            "<message type='chat' to='echo.localhost'><body>{text}</body></message>"
        ))
        .await;
    let reply = client
        .expect(WAIT, |stanza| {
            stanza.name() == "message"
                && stanza.attr("from") == Some(ECHO)
                && body(stanza).is_some()
        })
        .await;
    body(&reply).unwrap_or_default()
}

async fn commands_work_ad_hoc_and_by_chat(kind: ServerKind) {
    let admin_user = ADMIN.split('@').next().unwrap_or_default();
    let server = XmppServer::start(kind, &[ECHO], &["alice", admin_user]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(dir.path(), &config_for(&server, dir.path(), &[ECHO])).await;
    jabbridge.wait_ready(WAIT).await;
    let mut alice = server.client("alice").await;

    let list = alice
        .iq(
            "l1",
            "<iq type='get' to='echo.localhost' id='l1'>\
             <query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>",
        )
        .await;
    let nodes: Vec<String> = child(&list, "query")
        .map(|query| {
            query
                .children()
                .filter_map(|item| item.attr("node").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(nodes.contains(&"register".to_owned()), "{nodes:?}");
    assert!(!nodes.contains(&"stats".to_owned()), "{nodes:?}");

    // Two steps: the form, then the submission.
    let step = alice
        .iq("c1", &command("c1", "register", "action='execute'/>"))
        .await;
    let first = child(&step, "command").expect("command");
    assert_eq!(first.attr("status"), Some("executing"), "{step:?}");
    let session = first.attr("sessionid").expect("session id").to_owned();
    assert!(child(first, "x").is_some_and(|x| {
        x.children()
            .any(|field| field.attr("var") == Some("prefix"))
    }));
    let done = alice
        .iq(
            "c2",
            &command(
                "c2",
                "register",
                &format!(
                    "sessionid='{session}' action='complete'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='prefix'><value>cmd: </value></field></x></command>"
                ),
            ),
        )
        .await;
    let completed = child(&done, "command").expect("command");
    assert_eq!(completed.attr("status"), Some("completed"), "{done:?}");
    alice
        .send("<message type='chat' to='bob@echo.localhost'><body>hi</body></message>")
        .await;
    alice
        .expect(WAIT, |stanza| body(stanza).as_deref() == Some("cmd: hi"))
        .await;

    // The same commands by chat.
    let help = chat(&mut alice, "help").await;
    assert!(
        help.contains("register") && help.contains("status"),
        "{help}"
    );
    assert!(!help.contains("remove-user"), "{help}");
    let status = chat(&mut alice, "status").await;
    assert!(status.contains("You are registered"), "{status}");
    let refused = chat(&mut alice, "stats").await;
    assert!(refused.contains("for the admins"), "{refused}");
    let updated = chat(&mut alice, "register prefix=chat:").await;
    assert!(updated.contains("updated"), "{updated}");
    alice
        .send("<message type='chat' to='bob@echo.localhost'><body>yo</body></message>")
        .await;
    alice
        .expect(WAIT, |stanza| body(stanza).as_deref() == Some("chat:yo"))
        .await;

    // Admin commands, for the admin only.
    let mut admin = server.client(admin_user).await;
    let stats = chat(&mut admin, "stats").await;
    assert!(stats.contains("Registered users: 1"), "{stats}");
    let users = admin
        .iq("c3", &command("c3", "users", "action='execute'/>"))
        .await;
    assert!(
        format!("{users:?}").contains("alice@localhost"),
        "{users:?}"
    );
    let removed = chat(&mut admin, "remove-user jid=alice@localhost").await;
    assert!(removed.contains("unregistered"), "{removed}");
    let status = chat(&mut alice, "status").await;
    assert!(status.contains("not registered"), "{status}");
}

/// A message the user's server sends back as an error (here: to an account that does not
/// exist) was not delivered: its row is kept as failed, counted, and shown to the admin, and
/// everything else goes on.
async fn a_message_the_users_server_sends_back_is_recorded_as_failed(kind: ServerKind) {
    let admin_user = ADMIN.split('@').next().unwrap_or_default();
    let server = XmppServer::start(kind, &[ECHO], &["alice", admin_user]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(dir.path(), &config_for(&server, dir.path(), &[ECHO])).await;
    jabbridge.wait_ready(WAIT).await;
    let to_ghost = serde_json::json!({
        "id": "g1", "user": "ghost@localhost", "contact": "ci", "text": "anyone there?",
    });
    assert_eq!(crate::say(&jabbridge, SAY_TOKEN, to_ghost).await, 202);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, metrics) = jabbridge.get("/metrics").await;
        if metrics.contains("jabbridge_bounces_total{bridge=\"echo.localhost\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no bounce counted:\n{metrics}\n{}",
            jabbridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut admin = server.client(admin_user).await;
    let mut stats = chat(&mut admin, "stats").await;
    // The bounce is written with the next batch.
    for _ in 0..50 {
        if stats.contains("1 failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stats = chat(&mut admin, "stats").await;
    }
    assert!(
        stats.contains("To XMPP: 0 waiting, 0 delivered, 1 failed"),
        "{stats}"
    );
    assert!(
        stats.contains("Sent back by users' servers: 1, for ghost@localhost"),
        "{stats}"
    );
    assert!(
        jabbridge.log().contains("the account is not there"),
        "{}",
        jabbridge.log()
    );
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    alice
        .send(&format!(
            "<message type='chat' to='bob@{ECHO}'><body>still here</body></message>"
        ))
        .await;
    alice
        .expect(WAIT, |stanza| {
            body(stanza).is_some_and(|text| text.ends_with("still here"))
        })
        .await;
}

/// Posts `POSTS` `say` messages as fast as they are answered, texts `{prefix} {number}`:
/// the texts answered 202 come out of the receiver; the task returns how many were not.
fn load_say(
    http_port: u16,
    prefix: &'static str,
) -> (
    tokio::task::JoinHandle<usize>,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (accepted, receiver) = tokio::sync::mpsc::unbounded_channel::<String>();
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut refused = 0;
        for number in 0..POSTS {
            let text = format!("{prefix} {number}");
            let body = serde_json::json!({
                "id": format!("{prefix}-{number}"), "user": "alice@localhost", "contact": "hook",
                "text": text,
            });
            let posted = client
                .post(format!("http://127.0.0.1:{http_port}/bridges/{ECHO}/say"))
                .bearer_auth(SAY_TOKEN)
                .body(body.to_string())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if posted.is_ok_and(|answer| answer.status().as_u16() == 202) {
                let _ = accepted.send(text);
            } else {
                refused += 1;
            }
        }
        refused
    });
    (sender, receiver)
}

/// Messages posted by [`load_say`] in a fault test.
const POSTS: usize = 400;
/// How many are accepted before the fault.
const FAULT_AFTER: usize = 100;

/// What a client received: text -> the stanza ids it came under, and how many times.
#[derive(Default)]
struct Received(BTreeMap<String, (BTreeSet<String>, usize)>);

impl Received {
    fn record(&mut self, stanza: Element) {
        if stanza.attr("type") != Some("error")
            && let Some(text) = body(&stanza)
        {
            let seen = self.0.entry(text).or_default();
            seen.0
                .insert(stanza.attr("id").unwrap_or_default().to_owned());
            seen.1 += 1;
        }
    }

    /// Reads what `client` gets until [`FAULT_AFTER`] posts were accepted; their texts.
    async fn while_accepting(
        &mut self,
        client: &mut Client,
        accepted: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> BTreeSet<String> {
        let mut texts = BTreeSet::new();
        while texts.len() < FAULT_AFTER {
            texts.insert(accepted.recv().await.expect("the sender runs"));
            while let Some(stanza) = client.next_stanza(Duration::from_millis(1)).await {
                self.record(stanza);
            }
        }
        texts
    }

    /// Reads `client` until every text of `accepted` came (or a minute passed), then for two
    /// quiet seconds.
    async fn until_all(&mut self, client: &mut Client, accepted: &BTreeSet<String>) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !accepted.iter().all(|text| self.0.contains_key(text)) && Instant::now() < deadline {
            if let Some(stanza) = client.next_stanza(Duration::from_millis(500)).await {
                self.record(stanza);
            }
        }
        while let Some(stanza) = client.next_stanza(Duration::from_secs(2)).await {
            self.record(stanza);
        }
    }

    /// Prints the counts of a fault under load, and asserts that nothing accepted was lost
    /// and nothing came under two ids (the same id again is a write repeated after the link
    /// broke, which clients drop).
    fn report(&self, fault: &str, accepted: &BTreeSet<String>, refused: usize, log: &str) {
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|text| !self.0.contains_key(*text))
            .collect();
        let again = self.0.values().filter(|(_, count)| *count > 1).count();
        let twice = self.0.values().filter(|(ids, _)| ids.len() > 1).count();
        eprintln!(
            "fault under load ({fault}): {POSTS} posted, {} accepted (202), {refused} refused \
             while it was down, {} delivered, {} lost, {again} repeated under the same id, \
             {twice} under two ids",
            accepted.len(),
            self.0.len(),
            missing.len()
        );
        assert!(
            missing.is_empty(),
            "accepted but never delivered: {missing:?}\n{log}"
        );
        assert_eq!(twice, 0);
    }
}

/// The XMPP server restarts while a webhook sender posts as fast as it can: every message
/// answered 202 reaches the user once she is back, none twice. Prints the counts.
async fn a_server_restart_under_load_loses_nothing_accepted(kind: ServerKind) {
    let (mut server, jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    let (sender, mut accepted_rx) = load_say(jabbridge.http_port, "restart");
    let mut received = Received::default();
    let mut accepted = received.while_accepting(&mut alice, &mut accepted_rx).await;
    server.restart().await;
    // What her first session received before the server went away.
    for stanza in alice.remaining(Duration::from_millis(500)).await {
        received.record(stanza);
    }
    let refused = sender.await.expect("the sender");
    while let Ok(text) = accepted_rx.try_recv() {
        accepted.insert(text);
    }
    drop(alice);
    let mut alice = server.client("alice").await;
    received.until_all(&mut alice, &accepted).await;
    received.report(
        &format!("{kind:?} restarted"),
        &accepted,
        refused,
        &jabbridge.log(),
    );
}

async fn strangers_and_floods_are_refused(kind: ServerKind) {
    let server = XmppServer::start(kind, &[ECHO], &["alice", "eve"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &[ECHO])
        .replace("allow = [\"localhost\"]", "allow = [\"alice@localhost\"]")
        .replace(
            &format!("say_token = \"{SAY_TOKEN}\"\n"),
            &format!("say_token = \"{SAY_TOKEN}\"\nrate_limit = \"3/min\"\n"),
        );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(WAIT).await;

    let mut eve = server.client("eve").await;
    eve.send("<message type='chat' to='bob@echo.localhost' id='s1'><body>hi</body></message>")
        .await;
    let refused = eve
        .expect(WAIT, |stanza| stanza.attr("id") == Some("s1"))
        .await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    let refused = eve.iq("s2", &register_set(ECHO, "s2", "")).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    let refused = eve
        .iq(
            "s3",
            "<iq type='get' to='echo.localhost' id='s3'><query xmlns='jabber:iq:gateway'/></iq>",
        )
        .await;
    assert_eq!(error_condition(&refused).as_deref(), Some("forbidden"));
    // Nor can the network write to a stranger.
    let spam = serde_json::json!({"user": "eve@localhost", "contact": "bob", "text": "spam"});
    let status = crate::say(&jabbridge, SAY_TOKEN, spam).await;
    assert_eq!(status, 400);

    let mut alice = registered(&server, "alice", &[ECHO]).await;
    for number in 1..=4 {
        alice
            .send(&format!(
                "<message type='chat' to='bob@echo.localhost' id='f{number}'><body>flood {number}</body></message>"
            ))
            .await;
    }
    // The refusal and the three echoes come in any order.
    let limited = |stanza: &Element| {
        stanza.attr("id") == Some("f4")
            && error_condition(stanza).as_deref() == Some("resource-constraint")
    };
    let echoes: Vec<String> = (1..=3)
        .map(|number| format!("{ECHO} says: flood {number}"))
        .collect();
    let echoed = |number: usize| {
        let expected = echoes[number].clone();
        move |stanza: &Element| body(stanza).as_deref() == Some(expected.as_str())
    };
    let (first, second, third) = (echoed(0), echoed(1), echoed(2));
    expect_each(&mut alice, &[&limited, &first, &second, &third]).await;
}

async fn receipts_corrections_and_chat_states(kind: ServerKind) {
    let (server, _jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    alice
        .send(
            "<message type='chat' to='bob@echo.localhost' id='rc1'><body>with receipt</body>\
             <request xmlns='urn:xmpp:receipts'/></message>",
        )
        .await;
    let receipt = alice
        .expect(WAIT, |stanza| child(stanza, "received").is_some())
        .await;
    assert_eq!(receipt.attr("from"), Some("bob@echo.localhost"));
    assert_eq!(
        child(&receipt, "received").and_then(|received| received.attr("id")),
        Some("rc1")
    );

    // The echo network carries corrections (it echoes the corrected text; a network without
    // them is refused with feature-not-implemented, see gateway_tests).
    alice
        .send(
            "<message type='chat' to='bob@echo.localhost' id='rc2'><body>with receipt!</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='rc1'/></message>",
        )
        .await;
    alice
        .expect(WAIT, |stanza| {
            body(stanza).as_deref() == Some("echo.localhost says: with receipt!")
        })
        .await;

    // Typing reaches the network: the echo contact types back (a chat state alone, not to
    // be stored), and is never answered with an error.
    alice
        .send(
            "<message type='chat' to='bob@echo.localhost' id='rc3'>\
             <composing xmlns='http://jabber.org/protocol/chatstates'/></message>",
        )
        .await;
    let typing = alice
        .expect(WAIT, |stanza| child(stanza, "composing").is_some())
        .await;
    assert_eq!(typing.attr("from"), Some("bob@echo.localhost"));
    assert_eq!(typing.attr("type"), Some("chat"));
    assert_eq!(body(&typing), None);
    assert!(typing.has_child("no-store", "urn:xmpp:hints"));
    alice
        .expect_none(Duration::from_secs(1), |stanza| {
            stanza.attr("id") == Some("rc3")
        })
        .await;
}

/// The webhook messages `w0`…`w2` ("webhook 0"…), each accepted.
async fn say_webhooks(jabbridge: &Jabbridge) -> BTreeSet<String> {
    let mut texts = BTreeSet::new();
    for number in 0..3 {
        let text = format!("webhook {number}");
        let body = serde_json::json!({
            "id": format!("w{number}"), "user": "alice@localhost", "contact": "bob", "text": text,
        });
        assert_eq!(crate::say(jabbridge, SAY_TOKEN, body).await, 202);
        texts.insert(text);
    }
    texts
}

/// Receives message bodies until every one of `expected` arrived, failing on any body seen
/// twice; then checks that nothing more comes.
async fn receive_each_once(client: &mut Client, expected: &BTreeSet<String>) {
    receive_each_once_besides(client, expected, &BTreeMap::new()).await;
}

/// [`receive_each_once`], where a message of `before` (text and stanza id, received before
/// a crash whose server acknowledgement may not have come back) may come once more under
/// the same id, which clients recognise; under another id it fails.
async fn receive_each_once_besides(
    client: &mut Client,
    expected: &BTreeSet<String>,
    before: &BTreeMap<String, String>,
) {
    let mut received = BTreeSet::new();
    let is_text = |stanza: &Element| stanza.name() == "message" && body(stanza).is_some();
    let repeated = |message: &Element| {
        let text = body(message).unwrap_or_default();
        let again = before.get(&text);
        assert!(
            again.is_none_or(|id| message.attr("id") == Some(id.as_str())),
            "{text:?} came again under another id"
        );
        again.is_some()
    };
    while received.len() < expected.len() {
        let message = client.expect(Duration::from_secs(30), is_text).await;
        if repeated(&message) {
            continue;
        }
        let text = body(&message).unwrap_or_default();
        assert!(expected.contains(&text), "unexpected message {text:?}");
        assert!(received.insert(text.clone()), "{text:?} arrived twice");
    }
    client
        .expect_none(Duration::from_secs(3), |stanza| {
            is_text(stanza) && !before.contains_key(&body(stanza).unwrap_or_default())
        })
        .await;
}

const PENDING_OUTBOX: &str =
    "jabbridge_pending_messages{bridge=\"echo.localhost\",queue=\"outbox\"}";
const PENDING_INBOX: &str = "jabbridge_pending_messages{bridge=\"echo.localhost\",queue=\"inbox\"}";

/// kill -9 with messages in the outbox (the bridge is slow) and in the inbox (the XMPP server
/// is down): after a restart every message arrives, none twice, and webhooks the network
/// retries after the crash are not delivered again.
async fn kill_9_loses_and_doubles_nothing(database_url: Option<String>) {
    let mut server = XmppServer::start(ServerKind::Prosody, &[ECHO], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(&server, dir.path(), &[ECHO]).replace(
        &format!("say_token = \"{SAY_TOKEN}\"\n"),
        &format!("say_token = \"{SAY_TOKEN}\"\ndelay_ms = 300\n"),
    ) + "\n[delivery]\nlease = \"2s\"\n";
    if let Some(url) = database_url {
        config = crate::on_database(&config, dir.path(), &url);
    }
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(WAIT).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;

    const SENT: usize = 12;
    let mut expected = BTreeSet::new();
    for number in 0..SENT {
        alice
            .send(&format!(
                "<message type='chat' to='bob@echo.localhost' id='k{number}'><body>msg {number}</body></message>"
            ))
            .await;
        expected.insert(format!("{ECHO} says: msg {number}"));
    }
    // Received before the kill, by text and stanza id.
    let mut early = BTreeMap::new();
    for _ in 0..2 {
        let echo = alice
            .expect(WAIT, |stanza| {
                body(stanza).is_some_and(|text| text.contains("msg"))
            })
            .await;
        early.insert(
            body(&echo).unwrap_or_default(),
            echo.attr("id").unwrap_or_default().to_owned(),
        );
    }
    drop(alice);
    server.stop().await;
    expected.extend(say_webhooks(&jabbridge).await);
    let outbox = jabbridge.metric(PENDING_OUTBOX).await;
    let inbox = jabbridge.metric(PENDING_INBOX).await;
    assert!(
        outbox >= 1.0 && inbox >= 3.0,
        "outbox {outbox}, inbox {inbox}"
    );
    jabbridge.kill().await;

    server.restart().await;
    jabbridge.restart().await;
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    // The network retries webhooks it did not see acknowledged: still one delivery each.
    say_webhooks(&jabbridge).await;
    let mut alice = server.client("alice").await;
    let rest: BTreeSet<String> = expected
        .iter()
        .filter(|text| !early.contains_key(*text))
        .cloned()
        .collect();
    receive_each_once_besides(&mut alice, &rest, &early).await;
    assert_eq!(jabbridge.metric(PENDING_OUTBOX).await, 0.0);
    assert_eq!(jabbridge.metric(PENDING_INBOX).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_and_doubles_nothing_on_sqlite() {
    kill_9_loses_and_doubles_nothing(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_and_doubles_nothing_on_postgres() {
    if let Some(url) = crate::harness::postgres_database().await {
        kill_9_loses_and_doubles_nothing(Some(url)).await;
    }
}

/// kill -9 under load: a client sends as fast as it can with receipts requested while a
/// webhook sender posts (retrying until it sees a 2xx, as networks do); Jabbridge is killed
/// mid-stream and restarted. Every message that got a receipt has its echo delivered, every
/// webhook that got a 2xx is delivered, and nothing arrives under two different ids.
async fn kill_9_under_load(database_url: Option<String>) {
    let server = XmppServer::start(ServerKind::Prosody, &[ECHO], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = config_for(&server, dir.path(), &[ECHO]) + "\n[delivery]\nlease = \"2s\"\n";
    if let Some(url) = database_url {
        config = crate::on_database(&config, dir.path(), &url);
    }
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(WAIT).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;

    const MESSAGES: usize = 1500;
    const WEBHOOKS: usize = 300;
    // Killed three times, at a quarter, half and three quarters of the sending, each time
    // once this many more receipts came back: the race between a write and its kill is
    // short, so it is run into several times.
    const KILLS: usize = 3;
    const KILL_AFTER: usize = 50;
    let http_port = jabbridge.http_port;
    let mut restarted = Some(jabbridge);
    let mut restarting: Option<tokio::task::JoinHandle<Jabbridge>> = None;
    let webhooks = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut accepted = BTreeSet::new();
        for number in 0..WEBHOOKS {
            let body = serde_json::json!({
                "id": format!("h{number}"), "user": "alice@localhost", "contact": "hook",
                "text": format!("hook {number}"),
            });
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let posted = client
                    .post(format!("http://127.0.0.1:{http_port}/bridges/{ECHO}/say"))
                    .bearer_auth(SAY_TOKEN)
                    .body(body.to_string())
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                if posted.is_ok_and(|answer| answer.status().as_u16() == 202) {
                    accepted.insert(format!("hook {number}"));
                    break;
                }
                assert!(Instant::now() < deadline, "hook {number} never accepted");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        accepted
    });

    let mut receipts = BTreeSet::new();
    // Body -> the ids it arrived under.
    let mut bodies: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut sent = 0;
    let mut kills = 0;
    let record = |stanza: &Element,
                  receipts: &mut BTreeSet<String>,
                  bodies: &mut BTreeMap<String, BTreeSet<String>>| {
        if let Some(received) = stanza.get_child("received", "urn:xmpp:receipts")
            && let Some(id) = received.attr("id")
        {
            receipts.insert(id.to_owned());
        }
        if stanza.attr("type") != Some("error")
            && let Some(text) = body(stanza)
        {
            let id = stanza.attr("id").unwrap_or_default().to_owned();
            bodies.entry(text).or_default().insert(id);
        }
    };
    while sent < MESSAGES {
        for _ in 0..25 {
            alice
                .send(&format!(
                    "<message type='chat' to='bob@{ECHO}' id='L{sent}'><body>load {sent}</body>\
                     <request xmlns='urn:xmpp:receipts'/></message>"
                ))
                .await;
            sent += 1;
        }
        while let Some(stanza) = alice.next_stanza(Duration::from_millis(5)).await {
            record(&stanza, &mut receipts, &mut bodies);
        }
        if kills < KILLS && sent >= MESSAGES * (kills + 1) / (KILLS + 1) {
            while receipts.len() < KILL_AFTER * (kills + 1) {
                let stanza = alice.next_stanza(WAIT).await.expect("receipts");
                record(&stanza, &mut receipts, &mut bodies);
            }
            let mut instance = match restarting.take() {
                Some(restart) => {
                    let instance = restart.await.expect("restarted");
                    instance.wait_ready(Duration::from_secs(30)).await;
                    instance
                }
                None => restarted.take().expect("running"),
            };
            eprintln!(
                "kill {} after {sent} sent and {} receipts",
                kills + 1,
                receipts.len()
            );
            // The client goes on sending while Jabbridge is down and coming back.
            restarting = Some(tokio::spawn(async move {
                instance.kill().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                instance.restart().await;
                instance
            }));
            kills += 1;
        }
    }
    let jabbridge = restarting.expect("killed").await.expect("restarted");
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    let accepted = webhooks.await.expect("webhook sender");
    // Everything owed arrives; then nothing more for a while.
    let owed = |receipts: &BTreeSet<String>| -> BTreeSet<String> {
        receipts
            .iter()
            .filter_map(|id| id.strip_prefix('L'))
            .map(|number| format!("{ECHO} says: load {number}"))
            .chain(accepted.iter().cloned())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !owed(&receipts).iter().all(|text| bodies.contains_key(text)) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for what was acknowledged"
        );
        if let Some(stanza) = alice.next_stanza(Duration::from_millis(500)).await {
            record(&stanza, &mut receipts, &mut bodies);
        }
    }
    while let Some(stanza) = alice.next_stanza(Duration::from_secs(3)).await {
        record(&stanza, &mut receipts, &mut bodies);
    }
    let owed = owed(&receipts);
    let missing: Vec<&String> = owed
        .iter()
        .filter(|text| !bodies.contains_key(*text))
        .collect();
    let twice: Vec<(&String, &BTreeSet<String>)> =
        bodies.iter().filter(|(_, ids)| ids.len() > 1).collect();
    eprintln!(
        "kill -9 under load: {sent} sent, {} receipts, {} webhooks accepted, {} bodies received, \
         {} owed, {} missing, {} under two ids",
        receipts.len(),
        accepted.len(),
        bodies.len(),
        owed.len(),
        missing.len(),
        twice.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged but never delivered: {missing:?}"
    );
    assert!(twice.is_empty(), "delivered under two ids: {twice:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_sqlite() {
    kill_9_under_load(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_on_postgres() {
    if let Some(url) = crate::harness::postgres_database().await {
        kill_9_under_load(Some(url)).await;
    }
}

/// PostgreSQL restarts while a webhook sender posts as fast as it can: posts wait out the
/// restart (or are refused, and the sender retries), and every one answered 202 reaches the
/// user, none under two ids. Prints the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_under_load_loses_nothing_accepted() {
    let Some(database) = crate::harness::PostgresServer::start().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[ECHO], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::on_database(
        &config_for(&server, dir.path(), &[ECHO]),
        dir.path(),
        &database.url(),
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(WAIT).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    let (sender, mut accepted_rx) = load_say(jabbridge.http_port, "database");
    let mut received = Received::default();
    let mut accepted = received.while_accepting(&mut alice, &mut accepted_rx).await;
    database.restart().await;
    let refused = sender.await.expect("the sender");
    while let Ok(text) = accepted_rx.try_recv() {
        accepted.insert(text);
    }
    received.until_all(&mut alice, &accepted).await;
    received.report("PostgreSQL restarted", &accepted, refused, &jabbridge.log());
}

/// A tmpfs of `size`, unmounted when dropped; `None` where this process may not mount.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|output| output.status.success());
        mounted.then_some(SmallDisk(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .args(["-l"])
            .arg(self.0.path())
            .output();
    }
}

/// SQLite on a disk that fills up while a webhook sender posts: posts that cannot be stored
/// are refused with a clear 503 (so the sender retries), the daemon stays up, nothing
/// accepted before is lost, and once there is room again posts are accepted. Prints the
/// counts. Needs to mount a tmpfs (root, as `scripts/test` runs); skipped where it cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_messages_and_loses_nothing_accepted() {
    let Some(disk) = SmallDisk::mount("6m") else {
        assert!(std::env::var("CI").is_err(), "cannot mount a tmpfs in CI");
        eprintln!("cannot mount a tmpfs here: skipping the full-disk test");
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[ECHO], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}/jabbridge.db", disk.0.path().display());
    let config = crate::on_database(&config_for(&server, dir.path(), &[ECHO]), dir.path(), &url);
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(WAIT).await;
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    // Fill the disk, leaving a little room.
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).expect("filler");
        let chunk = vec![0u8; 16 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let length = file.metadata().expect("size").len();
        file.set_len(length.saturating_sub(512 * 1024))
            .expect("make room");
    }
    let client = reqwest::Client::new();
    let post = |number: usize| {
        let client = client.clone();
        async move {
            let body = serde_json::json!({
                "id": format!("f{number}"), "user": "alice@localhost", "contact": "hook",
                "text": format!("full {number} {}", "z".repeat(4000)),
            });
            let answer = client
                .post(format!(
                    "http://127.0.0.1:{}/bridges/{ECHO}/say",
                    jabbridge.http_port
                ))
                .bearer_auth(SAY_TOKEN)
                .body(body.to_string())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .expect("an answer within 30 s");
            let status = answer.status().as_u16();
            (status, answer.text().await.unwrap_or_default())
        }
    };
    let mut accepted = BTreeSet::new();
    let (mut refused, mut in_a_row, mut number) = (0, 0, 0);
    while in_a_row < 20 && number < 3000 {
        let (status, text) = post(number).await;
        if status == 202 {
            accepted.insert(format!("full {number}"));
            in_a_row = 0;
        } else {
            assert_eq!(status, 503, "{text}");
            assert!(text.contains("cannot store"), "{text}");
            refused += 1;
            in_a_row += 1;
        }
        number += 1;
    }
    assert!(refused > 0, "the disk never filled");
    let (status, _) = jabbridge.get("/health").await;
    assert_eq!(status, 200);
    // Room again: accepted again.
    std::fs::remove_file(&filler).expect("remove the filler");
    let mut after = 0;
    for extra in 0..10 {
        let (status, text) = post(10_000 + extra).await;
        if status == 202 {
            accepted.insert(format!("full {}", 10_000 + extra));
            after += 1;
        } else {
            eprintln!("after making room: {status} {text}");
        }
    }
    assert!(after > 0, "nothing was accepted once there was room again");
    let mut bodies = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !accepted.iter().all(|text| bodies.contains(text)) && Instant::now() < deadline {
        if let Some(stanza) = alice.next_stanza(Duration::from_millis(500)).await
            && let Some(text) = body(&stanza)
        {
            bodies.insert(text.split(' ').take(2).collect::<Vec<_>>().join(" "));
        }
    }
    let missing: Vec<&String> = accepted
        .iter()
        .filter(|text| !bodies.contains(*text))
        .collect();
    eprintln!(
        "fault under load (SQLite disk full): {number} posted while filling, {} accepted (202), \
         {refused} refused (503), {after} of 10 accepted once there was room, {} lost",
        accepted.len() - after,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "accepted but never delivered: {missing:?}\n{}",
        jabbridge.log()
    );
}

/// ejabberd load-balances one component domain over two Jabbridge instances sharing one
/// PostgreSQL: each message reaches the bridge exactly once, and each echo the user once.
/// Alice's session runs in one instance: what ejabberd gives the other is handed off to it,
/// so that one instance sends all her messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_postgres_behind_ejabberd() {
    let Some(url) = crate::harness::postgres_database().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Ejabberd, &[ECHO], &["alice"]).await;
    let mut instances = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().expect("temp dir");
        let config =
            crate::on_database(&config_for(&server, dir.path(), &[ECHO]), dir.path(), &url);
        let jabbridge = Jabbridge::start(dir.path(), &config).await;
        jabbridge.wait_ready(WAIT).await;
        instances.push(jabbridge);
        dirs.push(dir);
    }
    let mut alice = registered(&server, "alice", &[ECHO]).await;
    const SENT: usize = 40;
    let mut expected = BTreeSet::new();
    for number in 0..SENT {
        alice
            .send(&format!(
                "<message type='chat' to='bob{}@echo.localhost' id='t{number}'><body>two {number}</body></message>",
                number % 4
            ))
            .await;
        expected.insert(format!("{ECHO} says: two {number}"));
    }
    receive_each_once(&mut alice, &expected).await;
    let delivered = "jabbridge_bridge_deliveries_total{bridge=\"echo.localhost\",outcome=\"ok\"}";
    let mut per_instance = Vec::new();
    for jabbridge in &instances {
        per_instance.push(jabbridge.metric(delivered).await);
    }
    assert_eq!(
        per_instance.iter().sum::<f64>(),
        SENT as f64,
        "deliveries per instance: {per_instance:?}"
    );
    assert!(
        per_instance.contains(&0.0),
        "both instances sent alice's messages: {per_instance:?}"
    );
    let handed = "jabbridge_handoffs_total{bridge=\"echo.localhost\"}";
    let mut handoffs = Vec::new();
    for jabbridge in &instances {
        handoffs.push(jabbridge.metric(handed).await);
    }
    assert!(
        handoffs.iter().sum::<f64>() > 0.0,
        "ejabberd gave the other instance nothing to hand off: {handoffs:?}"
    );
}
