//! The gateway's decisions, asserted as the exact stanzas that come back, in-process
//! ([`crate::testing::Harness`]): access, registration, size, rate, capabilities, commands,
//! presence, and a bridge call that never returns. Time is tokio's paused clock, moved by
//! the tests ([`Harness::advance`]).

use std::sync::Arc;
use std::time::Duration;

use jabbridge_sdk::{
    AddressError, Bridge, BridgeInfo, Field, FieldKind, ForeignId, Form, FormValues,
    OutgoingMessage, RegistrationData, RegistrationError, SendError, SendOutcome, UserJid,
    async_trait,
};

use crate::config::{CallLimits, RateLimit, SpendLimit};
use crate::store::Queue;
use crate::testing::{DOMAIN, Harness, Options, body, condition, error_type, real_sleep};

#[tokio::test(start_paused = true)]
async fn a_stranger_is_forbidden_and_nothing_else_happens() {
    let mut harness = Harness::start(Options::default()).await;
    harness
        .receive("<message type='chat' from='eve@elsewhere/x' to='bob@echo.test' id='e1'><body>hi</body></message>")
        .await;
    let refused = harness.next().await;
    assert_eq!(refused.name(), "message");
    assert_eq!(refused.attr("type"), Some("error"));
    assert_eq!(refused.attr("id"), Some("e1"));
    assert_eq!(refused.attr("to"), Some("eve@elsewhere/x"));
    assert_eq!(refused.attr("from"), Some("bob@echo.test"));
    assert_eq!(condition(&refused).as_deref(), Some("forbidden"));
    assert_eq!(error_type(&refused).as_deref(), Some("auth"));
    harness.nothing_for(Duration::from_millis(200)).await;
    assert_eq!(
        harness
            .gateway
            .store
            .pending(crate::store::Queue::Outbox, DOMAIN)
            .await
            .unwrap(),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn an_unregistered_user_is_told_to_register() {
    let mut harness = Harness::start(Options::default()).await;
    harness
        .receive("<message type='chat' from='alice@test/r' to='bob@echo.test' id='u1'><body>hi</body></message>")
        .await;
    let refused = harness.next().await;
    assert_eq!(
        condition(&refused).as_deref(),
        Some("registration-required")
    );
}

#[tokio::test(start_paused = true)]
async fn a_registered_user_gets_the_echo_and_a_receipt() {
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    harness
        .receive(
            "<message type='chat' from='alice@test/r' to='bob@echo.test' id='m1'><body>hi</body>\
             <request xmlns='urn:xmpp:receipts'/></message>",
        )
        .await;
    let (mut receipt, mut echo) = (None, None);
    for _ in 0..2 {
        let stanza = harness.next().await;
        if stanza.has_child("received", "urn:xmpp:receipts") {
            receipt = Some(stanza);
        } else {
            echo = Some(stanza);
        }
    }
    let receipt = receipt.expect("a receipt");
    let received = receipt
        .get_child("received", "urn:xmpp:receipts")
        .expect("received");
    assert_eq!(received.attr("id"), Some("m1"));
    assert_eq!(receipt.attr("to"), Some("alice@test/r"));
    assert_eq!(receipt.attr("from"), Some("bob@echo.test"));
    let echo = echo.expect("the echo");
    assert_eq!(echo.attr("type"), Some("chat"));
    assert_eq!(echo.attr("to"), Some("alice@test"));
    assert_eq!(echo.attr("from"), Some("bob@echo.test"));
    assert_eq!(body(&echo).as_deref(), Some("> hi"));
    let origin = echo
        .get_child("origin-id", "urn:xmpp:sid:0")
        .expect("origin-id");
    assert_eq!(origin.attr("id"), echo.attr("id"));
    // The same message again (same id) is not sent again.
    harness
        .receive("<message type='chat' from='alice@test/r' to='bob@echo.test' id='m1'><body>hi</body></message>")
        .await;
    harness.nothing_for(Duration::from_millis(300)).await;
}

/// Typing both ways (XEP-0085): the echo contact types back while the user types to it. A
/// stranger's typing goes nowhere.
#[tokio::test(start_paused = true)]
async fn typing_reaches_the_bridge_and_a_contacts_typing_reaches_the_user() {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    for state in ["composing", "paused"] {
        harness
            .receive(&format!(
                "<message type='chat' from='alice@test/r' to='bob@echo.test'>\
                 <{state} xmlns='{CHATSTATES}'/></message>"
            ))
            .await;
        let typing = harness.next().await;
        assert_eq!(typing.attr("type"), Some("chat"));
        assert_eq!(typing.attr("from"), Some("bob@echo.test"));
        assert_eq!(typing.attr("to"), Some("alice@test"));
        assert!(typing.has_child(state, CHATSTATES), "{typing:?}");
        assert!(typing.has_child("no-store", "urn:xmpp:hints"));
        assert_eq!(body(&typing), None);
    }
    harness
        .receive(&format!(
            "<message type='chat' from='eve@elsewhere/x' to='bob@echo.test'>\
             <composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    harness.nothing_for(Duration::from_millis(100)).await;
}

#[tokio::test(start_paused = true)]
async fn oversized_texts_groupchat_and_corrections_are_refused_precisely() {
    // A network that carries no corrections.
    let mut harness = Harness::start(Options {
        echo: vec![("edits", false.into())],
        ..Options::default()
    })
    .await;
    harness.register("alice@test").await;
    let big = "x".repeat(crate::delivery::MAX_TEXT + 1);
    harness
        .receive(&format!(
            "<message type='chat' from='alice@test/r' to='bob@echo.test' id='big'><body>{big}</body></message>"
        ))
        .await;
    let refused = harness.next().await;
    assert_eq!(condition(&refused).as_deref(), Some("not-acceptable"));
    assert_eq!(refused.attr("id"), Some("big"));

    harness
        .receive("<message type='groupchat' from='alice@test/r' to='room@echo.test' id='g'><body>hi</body></message>")
        .await;
    let refused = harness.next().await;
    assert_eq!(
        condition(&refused).as_deref(),
        Some("feature-not-implemented")
    );

    harness
        .receive(
            "<message type='chat' from='alice@test/r' to='bob@echo.test' id='c'><body>fixed</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='m0'/></message>",
        )
        .await;
    let refused = harness.next().await;
    assert_eq!(
        condition(&refused).as_deref(),
        Some("feature-not-implemented")
    );
    assert_eq!(error_type(&refused).as_deref(), Some("cancel"));
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_answers_resource_constraint() {
    let mut harness = Harness::start(Options {
        rate_limit: Some(RateLimit {
            count: 2,
            per: Duration::from_secs(60),
        }),
        ..Options::default()
    })
    .await;
    harness.register("alice@test").await;
    for number in 0..3 {
        harness
            .receive(&format!(
                "<message type='chat' from='alice@test/r' to='bob@echo.test' id='f{number}'><body>{number}</body></message>"
            ))
            .await;
    }
    let mut refused = None;
    let mut echoes = 0;
    for _ in 0..3 {
        let stanza = harness.next().await;
        if stanza.attr("type") == Some("error") {
            refused = Some(stanza);
        } else {
            echoes += 1;
        }
    }
    let refused = refused.expect("the third is refused");
    assert_eq!(refused.attr("id"), Some("f2"));
    assert_eq!(condition(&refused).as_deref(), Some("resource-constraint"));
    assert_eq!(error_type(&refused).as_deref(), Some("wait"));
    assert_eq!(echoes, 2);
    // Two per minute: one more a half minute later, and not before.
    harness.advance(Duration::from_secs(29)).await;
    let early = "<message type='chat' from='alice@test/r' to='bob@echo.test' id='f3'><body>3</body></message>";
    harness.receive(early).await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("id"), Some("f3"));
    assert_eq!(condition(&refused).as_deref(), Some("resource-constraint"));
    harness.advance(Duration::from_secs(2)).await;
    harness
        .receive("<message type='chat' from='alice@test/r' to='bob@echo.test' id='f4'><body>4</body></message>")
        .await;
    let echo = harness.next().await;
    assert_eq!(body(&echo).as_deref(), Some("> 4"), "{echo:?}");
}

#[tokio::test(start_paused = true)]
async fn help_lists_what_each_role_may_run() {
    let mut harness = Harness::start(Options {
        allow: vec!["test".into()],
        ..Options::default()
    })
    .await;
    harness
        .receive("<message type='chat' from='alice@test/r' to='echo.test' id='h'><body>help</body></message>")
        .await;
    let user_help = body(&harness.next().await).expect("help");
    assert!(user_help.contains("register"), "{user_help}");
    assert!(!user_help.contains("remove-user"), "{user_help}");
    harness
        .receive("<message type='chat' from='admin@test/r' to='echo.test' id='h'><body>help</body></message>")
        .await;
    let admin_help = body(&harness.next().await).expect("help");
    assert!(admin_help.contains("remove-user"), "{admin_help}");
}

#[tokio::test(start_paused = true)]
async fn a_registered_user_subscribing_to_the_gateway_is_approved_with_its_presence() {
    let mut harness = Harness::start(Options::default()).await;
    harness.register("alice@test").await;
    harness
        .receive("<presence type='subscribe' from='alice@test' to='echo.test'/>")
        .await;
    let subscribed = harness.next().await;
    assert_eq!(subscribed.attr("type"), Some("subscribed"));
    assert_eq!(subscribed.attr("to"), Some("alice@test"));
    let presence = harness.next().await;
    assert_eq!(presence.name(), "presence");
    assert_eq!(presence.attr("type"), None, "available: {presence:?}");
    assert_eq!(presence.attr("from"), Some("echo.test"));
    // A stranger's subscription is refused.
    harness
        .receive("<presence type='subscribe' from='eve@elsewhere' to='echo.test'/>")
        .await;
    let refused = harness.next().await;
    assert_eq!(condition(&refused).as_deref(), Some("forbidden"));
}

/// A bridge whose registration never returns.
struct Stuck;

#[async_trait]
impl Bridge for Stuck {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "stuck".into(),
            name: "Stuck gateway".into(),
            capabilities: Default::default(),
            registration: Some(Form {
                title: "Register".into(),
                instructions: String::new(),
                fields: vec![
                    Field {
                        var: "token".into(),
                        label: "Token".into(),
                        kind: FieldKind::Text,
                        required: false,
                    },
                    Field {
                        var: "password".into(),
                        label: "Password".into(),
                        kind: FieldKind::Secret,
                        required: false,
                    },
                ],
            }),
            prompt: Default::default(),
        }
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        Ok(ForeignId::new(localpart))
    }

    async fn register(
        &self,
        _user: &UserJid,
        _form: &FormValues,
    ) -> Result<RegistrationData, RegistrationError> {
        std::future::pending().await
    }

    async fn send_message(&self, _message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        Ok(SendOutcome::Sent)
    }
}

#[tokio::test(start_paused = true)]
async fn a_stuck_registration_times_out_and_holds_up_no_one_else() {
    let mut harness = Harness::start(Options {
        calls: CallLimits {
            concurrency: 4,
            timeout: Duration::from_secs(30),
        },
        bridge: Some(Arc::new(Stuck)),
        ..Options::default()
    })
    .await;
    harness
        .receive(&format!(
            "<iq type='set' from='alice@test/r' to='{DOMAIN}' id='stuck'>\
             <query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
             <field var='token'><value>t</value></field></x></query></iq>"
        ))
        .await;
    // Bob is answered while alice's registration waits on the bridge.
    harness
        .receive(&format!(
            "<iq type='get' from='bob@test/r' to='{DOMAIN}' id='disco'>\
             <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
        ))
        .await;
    let first = harness.next().await;
    assert_eq!(first.attr("id"), Some("disco"), "{first:?}");
    assert_eq!(first.attr("type"), Some("result"));
    // Alice waits the whole call timeout, and no longer.
    harness.nothing_for(Duration::from_secs(29)).await;
    harness.advance(Duration::from_secs(1)).await;
    let stuck = harness.next().await;
    assert_eq!(stuck.attr("id"), Some("stuck"));
    assert_eq!(condition(&stuck).as_deref(), Some("remote-server-timeout"));
    assert_eq!(error_type(&stuck).as_deref(), Some("wait"));
}

/// A bridge without registration that refuses every message for good.
struct Refusing;

#[async_trait]
impl Bridge for Refusing {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "refusing".into(),
            name: "Refusing gateway".into(),
            capabilities: Default::default(),
            registration: None,
            prompt: Default::default(),
        }
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        Ok(ForeignId::new(localpart))
    }

    async fn send_message(&self, _message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        Err(SendError::Permanent {
            reason: "no such number".into(),
        })
    }
}

/// The error telling a user their message was not delivered is stored with the failure,
/// in one transaction: a gateway that stops before writing it sends it after its restart.
#[tokio::test(start_paused = true)]
async fn an_error_notice_is_stored_with_the_failure_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("jabbridge.db").display());
    let options = || Options {
        bridge: Some(Arc::new(Refusing)),
        database: Some(database.clone()),
        ..Options::default()
    };
    let first = Harness::start(options()).await;
    first
        .receive("<message type='chat' from='alice@test/r' to='bob@echo.test' id='m1'><body>hi</body></message>")
        .await;
    let store = first.gateway.store.clone();
    for _ in 0..500 {
        if store.finished(Queue::Outbox, DOMAIN, false).await.unwrap() == 1 {
            break;
        }
        real_sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        store.finished(Queue::Outbox, DOMAIN, false).await.unwrap(),
        1
    );
    // The notice is queued, and the link never wrote it (nothing reads this one).
    assert_eq!(store.pending(Queue::Inbox, DOMAIN).await.unwrap(), 1);
    drop(first);

    let mut second = Harness::start(options()).await;
    let error = second.next().await;
    assert_eq!(error.name(), "message");
    assert_eq!(error.attr("type"), Some("error"));
    assert_eq!(error.attr("id"), Some("m1"));
    assert_eq!(error.attr("to"), Some("alice@test/r"));
    assert_eq!(error.attr("from"), Some("bob@echo.test"));
    assert_eq!(condition(&error).as_deref(), Some("service-unavailable"));
    assert!(String::from(&error).contains("no such number"), "{error:?}");
    for _ in 0..500 {
        if store.pending(Queue::Inbox, DOMAIN).await.unwrap() == 0 {
            break;
        }
        real_sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.pending(Queue::Inbox, DOMAIN).await.unwrap(), 0);
    second.nothing_for(Duration::from_secs(1)).await;
}

/// `spend_limit` caps the messages sent per day, per user and for the whole bridge, with a
/// `resource-constraint` that says which cap was reached.
#[tokio::test(start_paused = true)]
async fn a_spend_limit_refuses_messages_past_its_daily_caps() {
    let mut harness = Harness::start(Options {
        spend: Some(SpendLimit {
            per_day: Some(3),
            per_user_per_day: Some(2),
        }),
        ..Options::default()
    })
    .await;
    harness.register("alice@test").await;
    harness.register("bob@test").await;
    let message = |user: &str, id: &str| {
        format!(
            "<message type='chat' from='{user}/r' to='bob@echo.test' id='{id}'><body>{id}</body></message>"
        )
    };
    let mut answers = Vec::new();
    for (user, id) in [
        ("alice@test", "a1"),
        ("alice@test", "a2"),
        ("alice@test", "a3"),
    ] {
        harness.receive(&message(user, id)).await;
    }
    for _ in 0..3 {
        answers.push(harness.next().await);
    }
    let refused: Vec<&xmpp_parsers::minidom::Element> = answers
        .iter()
        .filter(|stanza| stanza.attr("type") == Some("error"))
        .collect();
    assert_eq!(refused.len(), 1, "{answers:?}");
    assert_eq!(refused[0].attr("id"), Some("a3"));
    assert_eq!(
        condition(refused[0]).as_deref(),
        Some("resource-constraint")
    );
    assert!(String::from(refused[0]).contains("you have sent the 2 messages"));
    // Bob has his own two, but the bridge only one more today.
    harness.receive(&message("bob@test", "b1")).await;
    let echo = harness.next().await;
    assert_eq!(body(&echo).as_deref(), Some("> b1"), "{echo:?}");
    harness.receive(&message("bob@test", "b2")).await;
    let refused = harness.next().await;
    assert_eq!(refused.attr("id"), Some("b2"));
    assert!(
        String::from(&refused).contains("echo.test has sent the 3 messages"),
        "{refused:?}"
    );
}

/// `register password=…` by chat would leave the secret in the user's archive: refused at
/// once, before the bridge sees it (this one would never answer), saying what to do.
#[tokio::test(start_paused = true)]
async fn secrets_are_refused_by_chat() {
    let mut harness = Harness::start(Options {
        bridge: Some(Arc::new(Stuck)),
        ..Options::default()
    })
    .await;
    harness
        .receive(&format!(
            "<message type='chat' from='alice@test/r' to='{DOMAIN}' id='c1'>\
             <body>register token=t password=hunter2</body></message>"
        ))
        .await;
    let answer = harness.next().await;
    let text = body(&answer).unwrap_or_default();
    assert!(text.starts_with("password is a secret"), "{text}");
    assert!(text.contains("not by chat"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
    harness.nothing_for(Duration::from_secs(60)).await;
}

/// A bridge with registration that records the sessions the core starts and stops.
#[derive(Default)]
struct Sessions {
    calls: std::sync::Mutex<Vec<String>>,
}

#[async_trait]
impl Bridge for Sessions {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "sessions".into(),
            name: "Sessions gateway".into(),
            capabilities: Default::default(),
            registration: Some(Form {
                title: "Register".into(),
                instructions: String::new(),
                fields: vec![Field {
                    var: "prefix".into(),
                    label: "Prefix".into(),
                    kind: FieldKind::Text,
                    required: false,
                }],
            }),
            prompt: Default::default(),
        }
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        Ok(ForeignId::new(localpart))
    }

    async fn send_message(&self, _message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        Ok(SendOutcome::Sent)
    }

    async fn start_session(&self, user: &UserJid, _registration: &RegistrationData) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("start {user}"));
        }
    }

    async fn stop_session(&self, user: &UserJid, why: jabbridge_sdk::SessionEnd) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(format!("stop {user} {why:?}"));
        }
    }
}

/// A session starts on registration and for every registered user at start, and stops on
/// unregistering.
#[tokio::test(start_paused = true)]
async fn sessions_start_with_registration_and_at_start_and_stop_when_unregistered() {
    let dir = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite://{}", dir.path().join("jabbridge.db").display());
    let first_bridge = Arc::new(Sessions::default());
    let options = |bridge: Arc<Sessions>| Options {
        bridge: Some(bridge),
        database: Some(database.clone()),
        ..Options::default()
    };
    let mut first = Harness::start(options(first_bridge.clone())).await;
    first.register("alice@test").await;
    let calls = || first_bridge.calls.lock().unwrap().clone();
    assert_eq!(calls(), ["start alice@test"]);
    drop(first);
    let second_bridge = Arc::new(Sessions::default());
    let mut second = Harness::start(options(second_bridge.clone())).await;
    assert_eq!(
        second_bridge.calls.lock().unwrap().clone(),
        ["start alice@test"]
    );
    second
        .receive(
            "<iq type='set' from='alice@test/r' to='echo.test' id='u'>\
             <query xmlns='jabber:iq:register'><remove/></query></iq>",
        )
        .await;
    for _ in 0..4 {
        let stanza = second.next().await;
        if stanza.name() == "iq" {
            assert_eq!(stanza.attr("type"), Some("result"), "{stanza:?}");
            break;
        }
    }
    assert_eq!(
        second_bridge.calls.lock().unwrap().clone(),
        ["start alice@test", "stop alice@test Unregistered"]
    );
    // Removed elsewhere (the CLI, another instance): the watcher stops the session.
    second.register("bob@test").await;
    second
        .gateway
        .store
        .delete_registration(DOMAIN, "bob@test", true)
        .await
        .unwrap();
    second.advance(Duration::from_secs(11)).await;
    for _ in 0..100 {
        if second_bridge.calls.lock().unwrap().len() == 4 {
            break;
        }
        real_sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        second_bridge.calls.lock().unwrap()[2..],
        ["start bob@test", "stop bob@test Removed"]
    );
}
