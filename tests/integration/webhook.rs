//! The webhook bridge against a real XMPP server, a slixmpp client and a real HTTP receiver
//! (axum, in this process) that checks Standard Webhooks signatures with its own HMAC code,
//! not the bridge's: signed delivery with receipts, a receiver down then back, 410 Gone,
//! incoming webhooks with good and bad credentials and bodies, and kill -9 with messages
//! queued.

use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use xmpp_parsers::minidom::Element;

use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_text, free_port};
use crate::{ADMIN, config_for, on_both_servers};

const HOOKS: &str = "hooks.localhost";
const WAIT: Duration = Duration::from_secs(15);
/// The key outgoing requests are signed with (Standard Webhooks: `whsec_` + base64).
const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The key incoming requests to the `signed` endpoint are signed with.
const INBOUND_SECRET: &str = "whsec_c2lnbmVkLWluYm91bmQta2V5LWZvci10ZXN0cw==";
const INBOUND_TOKEN: &str = "inbound-token";
const PENDING_OUTBOX: &str =
    "jabbridge_pending_messages{bridge=\"hooks.localhost\",queue=\"outbox\"}";

on_both_servers!(incoming_webhooks_reach_the_client_and_bad_ones_change_nothing);

/// HMAC-SHA256 of `id.timestamp.body` with a `whsec_` key, base64: the Standard Webhooks
/// signature, computed here independently of the bridge and of the `standardwebhooks` crate.
fn signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = base64::engine::general_purpose::STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .expect("base64 key");
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    /// The signature matched and the timestamp was within five minutes.
    verified: bool,
    payload: serde_json::Value,
}

struct ReceiverState {
    /// The status the receiver answers with.
    status: AtomicU16,
    /// Every request, in arrival order.
    received: Mutex<Vec<Received>>,
}

/// A webhook receiver on a fixed loopback port that can go down and come back.
struct Receiver {
    port: u16,
    state: Arc<ReceiverState>,
    task: Option<tokio::task::JoinHandle<()>>,
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (id, timestamp) = (header("webhook-id"), header("webhook-timestamp"));
    let expected = format!("v1,{}", signature(SIGNING_SECRET, &id, &timestamp, &body));
    let fresh = timestamp
        .parse::<i64>()
        .is_ok_and(|at| (unix_now() - at).abs() <= 300);
    let verified = fresh
        && header("content-type") == "application/json"
        && header("webhook-signature")
            .split(' ')
            .any(|candidate| candidate == expected);
    let payload = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    state.received.lock().expect("lock").push(Received {
        id,
        verified,
        payload,
    });
    let status = StatusCode::from_u16(state.status.load(Ordering::SeqCst))
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    // No keep-alive: when the receiver goes down, no open connection outlives it.
    (
        status,
        [("connection", "close"), ("retry-after", "1")],
        "receiver says hi",
    )
}

impl Receiver {
    /// A receiver on a free port, not yet listening.
    fn new() -> Receiver {
        Receiver {
            port: free_port(),
            state: Arc::new(ReceiverState {
                status: AtomicU16::new(200),
                received: Mutex::default(),
            }),
            task: None,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the receiver");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(self.state.clone());
        self.task = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }

    async fn down(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }

    /// Waits until `count` requests arrived; returns them all.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let received = self.received();
            if received.len() >= count {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "the receiver got {} of {count}: {received:#?}",
                received.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A config with the webhook bridge: `alerts` (both ways, to the receiver) and `signed`
/// (incoming only, Standard Webhooks), fast retries.
fn hooks_config(server: &XmppServer, dir: &std::path::Path, receiver: &Receiver) -> String {
    let port = server.component_port_for(HOOKS);
    config_for(server, dir, &[])
        + &format!(
            r#"
[[bridge]]
kind = "webhook"
domain = "{HOOKS}"
secret = "{secret}"
server = "127.0.0.1:{port}"
allow = ["localhost"]
admins = ["{ADMIN}"]
max_body = 4096

[[bridge.endpoint]]
name = "alerts"
url = "{url}"
signing_secret = "{SIGNING_SECRET}"
timeout = "2s"
inbound_token = "{INBOUND_TOKEN}"
deliver_to = ["alice@localhost"]

[[bridge.endpoint]]
name = "signed"
inbound_signing_secret = "{INBOUND_SECRET}"
deliver_to = ["alice@localhost"]

[delivery]
lease = "2s"
retry_max = "1s"
max_attempts = 100
"#,
            secret = crate::harness::SECRET,
            url = receiver.url(),
        )
}

async fn hooks_setup(
    kind: ServerKind,
    users: &[&str],
) -> (XmppServer, Jabbridge, Receiver, tempfile::TempDir) {
    let server = XmppServer::start(kind, &[HOOKS], users).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let receiver = Receiver::new();
    let jabbridge =
        Jabbridge::start(dir.path(), &hooks_config(&server, dir.path(), &receiver)).await;
    jabbridge.wait_ready(WAIT).await;
    (server, jabbridge, receiver, dir)
}

fn chat(to: &str, id: &str, text: &str) -> String {
    format!("<message type='chat' to='{to}' id='{id}'><body>{text}</body></message>")
}

fn from_is(stanza: &Element, from: &str) -> bool {
    stanza
        .attr("from")
        .is_some_and(|jid| jid.split('/').next() == Some(from))
}

/// The `data.text` of each received request, in arrival order, once per webhook-id.
fn texts_once_per_id(received: &[Received]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    received
        .iter()
        .filter(|request| seen.insert(request.id.clone()))
        .map(|request| {
            request.payload["data"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_messages_are_signed_and_receipted_and_refusals_reach_the_sender() {
    let (server, _jabbridge, mut receiver, _dir) =
        hooks_setup(ServerKind::Prosody, &["alice"]).await;
    receiver.up().await;
    let mut alice = server.client("alice").await;
    alice
        .send(&format!(
            "<message type='chat' to='alerts@{HOOKS}' id='w1'><body>disk full https://files.example/a.png</body>\
             <request xmlns='urn:xmpp:receipts'/>\
             <x xmlns='jabber:x:oob'><url>https://files.example/a.png</url><desc>graph</desc></x></message>"
        ))
        .await;
    let receipt = alice
        .expect(WAIT, |stanza| {
            stanza
                .get_child("received", "urn:xmpp:receipts")
                .is_some_and(|received| received.attr("id") == Some("w1"))
        })
        .await;
    assert!(from_is(&receipt, &format!("alerts@{HOOKS}")), "{receipt:?}");
    let received = receiver.wait_for(1).await;
    let request = &received[0];
    assert!(
        request.verified,
        "signature or timestamp wrong: {request:?}"
    );
    assert!(request.id.starts_with("msg_"), "{request:?}");
    let payload = &request.payload;
    assert_eq!(payload["type"], "message");
    assert_eq!(payload["data"]["id"], request.id.as_str());
    assert_eq!(payload["data"]["message_id"], "w1");
    assert_eq!(payload["data"]["endpoint"], "alerts");
    assert_eq!(payload["data"]["from"], "alice@localhost");
    assert_eq!(
        payload["data"]["text"],
        "disk full https://files.example/a.png"
    );
    assert_eq!(
        payload["data"]["attachments"],
        serde_json::json!([{"url": "https://files.example/a.png", "description": "graph"}])
    );
    let stamp = payload["timestamp"].as_str().unwrap_or_default();
    let stamp = humantime::parse_rfc3339(stamp).expect("an RFC 3339 timestamp");
    assert!(stamp.elapsed().unwrap_or_default() < Duration::from_secs(60));

    // A 4xx other than 408/429 is final: the sender hears it, with the status.
    receiver.answer(422);
    alice
        .send(&chat(&format!("alerts@{HOOKS}"), "w2", "bad one"))
        .await;
    let error = alice
        .expect(WAIT, |stanza| {
            stanza.attr("type") == Some("error") && stanza.attr("id") == Some("w2")
        })
        .await;
    let text = error_text(&error);
    assert!(
        text.contains("422 Unprocessable Entity") && text.contains("receiver says hi"),
        "{text}"
    );
    assert_eq!(receiver.received().len(), 2, "a 422 is not retried");

    // An endpoint that does not exist is refused at once.
    alice
        .send(&chat(&format!("nobody@{HOOKS}"), "w3", "hello?"))
        .await;
    let error = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("w3"))
        .await;
    assert!(
        error_text(&error).contains("no endpoint 'nobody'"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_while_gets_every_message_once_in_order() {
    let (server, jabbridge, mut receiver, _dir) =
        hooks_setup(ServerKind::Prosody, &["alice"]).await;
    let mut alice = server.client("alice").await;
    const SENT: usize = 8;
    let expected: Vec<String> = (0..SENT).map(|number| format!("event {number}")).collect();
    let alerts = format!("alerts@{HOOKS}");
    receiver.up().await;
    alice.send(&chat(&alerts, "d0", &expected[0])).await;
    receiver.wait_for(1).await;
    receiver.down().await;
    for (number, text) in expected.iter().enumerate().skip(1) {
        alice
            .send(&chat(&alerts, &format!("d{number}"), text))
            .await;
    }
    // Connection refused a few times…
    let transient =
        "jabbridge_bridge_deliveries_total{bridge=\"hooks.localhost\",outcome=\"transient\"}";
    let deadline = Instant::now() + WAIT;
    while jabbridge.metric(transient).await < 3.0 {
        assert!(Instant::now() < deadline, "no failed attempts counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // …then up, but overloaded: one 503 with Retry-After, then fine.
    receiver.answer(503);
    receiver.up().await;
    receiver.wait_for(2).await;
    receiver.answer(200);
    let received = receiver.wait_for(SENT + 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received_later = receiver.received();
    assert_eq!(received_later.len(), SENT + 1, "{received_later:#?}");
    assert!(received.iter().all(|request| request.verified));
    // The 503'd message came again under the same webhook-id.
    assert_eq!(received[1].id, received[2].id);
    assert_eq!(texts_once_per_id(&received), expected);
    alice
        .expect_none(Duration::from_millis(300), |stanza| {
            stanza.attr("type") == Some("error")
        })
        .await;
    assert_eq!(jabbridge.metric(PENDING_OUTBOX).await, 0.0);
}

/// The foreign side down for a minute under load: a user sends as fast as she can, with
/// receipts requested, while the webhook receiver is gone for 60 s; once it is back it gets
/// every message, once per webhook-id, in order, and every receipt came after its 2xx.
/// Prints the counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_for_a_minute_under_load_gets_everything_once() {
    let (server, _jabbridge, mut receiver, _dir) =
        hooks_setup(ServerKind::Prosody, &["alice"]).await;
    let mut alice = server.client("alice").await;
    const SENT: usize = 300;
    const DOWN_AFTER: usize = 100;
    const DOWN_FOR: Duration = Duration::from_secs(60);
    let alerts = format!("alerts@{HOOKS}");
    let expected: Vec<String> = (0..SENT).map(|number| format!("load {number}")).collect();
    receiver.up().await;
    let mut receipts = std::collections::BTreeSet::new();
    let mut down_since = None;
    for (number, text) in expected.iter().enumerate() {
        if number == DOWN_AFTER {
            receiver.down().await;
            down_since = Some(Instant::now());
        }
        alice
            .send(&format!(
                "<message type='chat' to='{alerts}' id='w{number}'><body>{text}</body>\
                 <request xmlns='urn:xmpp:receipts'/></message>"
            ))
            .await;
        while let Some(stanza) = alice.next_stanza(Duration::from_millis(1)).await {
            if let Some(received) = stanza.get_child("received", "urn:xmpp:receipts") {
                receipts.insert(received.attr("id").unwrap_or_default().to_owned());
            }
        }
    }
    let before_up = receiver.received().len();
    if let Some(since) = down_since {
        tokio::time::sleep(DOWN_FOR.saturating_sub(since.elapsed())).await;
    }
    let receipts_while_down = receipts.len();
    receiver.up().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    while texts_once_per_id(&receiver.received()).len() < SENT {
        assert!(
            Instant::now() < deadline,
            "the receiver got {} of {SENT}",
            texts_once_per_id(&receiver.received()).len()
        );
        while let Some(stanza) = alice.next_stanza(Duration::from_millis(100)).await {
            if let Some(received) = stanza.get_child("received", "urn:xmpp:receipts") {
                receipts.insert(received.attr("id").unwrap_or_default().to_owned());
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while let Some(stanza) = alice.next_stanza(Duration::from_millis(500)).await {
        if let Some(received) = stanza.get_child("received", "urn:xmpp:receipts") {
            receipts.insert(received.attr("id").unwrap_or_default().to_owned());
        }
    }
    let received = receiver.received();
    let delivered = texts_once_per_id(&received);
    let mut ids_per_text: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for request in &received {
        let text = request.payload["data"]["text"].as_str().unwrap_or_default();
        ids_per_text
            .entry(text.to_owned())
            .or_default()
            .insert(request.id.clone());
    }
    let twice = ids_per_text.values().filter(|ids| ids.len() > 1).count();
    eprintln!(
        "fault under load (webhook receiver down {} s): {SENT} sent, {} receipts ({} before it \
         came back, for the {before_up} it had taken), {} requests, {} delivered, {} lost, \
         {twice} under two ids",
        DOWN_FOR.as_secs(),
        receipts.len(),
        receipts_while_down,
        received.len(),
        delivered.len(),
        SENT - delivered.len()
    );
    assert_eq!(delivered, expected, "each once, in order");
    assert_eq!(twice, 0);
    assert!(receipts_while_down <= before_up, "a receipt before its 2xx");
    assert_eq!(receipts.len(), SENT, "a receipt for each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_an_admin_enables_it() {
    let (server, _jabbridge, mut receiver, _dir) =
        hooks_setup(ServerKind::Prosody, &["alice", "admin"]).await;
    receiver.up().await;
    receiver.answer(410);
    let mut alice = server.client("alice").await;
    let alerts = format!("alerts@{HOOKS}");
    alice.send(&chat(&alerts, "g1", "first")).await;
    let error = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("g1"))
        .await;
    let text = error_text(&error);
    assert!(
        text.contains("410 Gone") && text.contains("disabled"),
        "{text}"
    );
    // Disabled: refused without a request.
    receiver.answer(200);
    alice.send(&chat(&alerts, "g2", "second")).await;
    let error = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("g2"))
        .await;
    assert!(error_text(&error).contains("enable-endpoint"), "{error:?}");
    assert_eq!(receiver.received().len(), 1);
    // `help` says so; the user may not re-enable it; an admin may.
    alice.send(&chat(HOOKS, "h1", "help")).await;
    let help = alice
        .expect(WAIT, |stanza| {
            from_is(stanza, HOOKS) && body(stanza).is_some()
        })
        .await;
    let help = body(&help).unwrap_or_default();
    assert!(
        help.contains(&format!("{alerts} (posts to 127.0.0.1) — DISABLED")),
        "{help}"
    );
    assert!(
        !help.contains("enable-endpoint"),
        "users do not see admin commands: {help}"
    );
    alice
        .send(&chat(HOOKS, "h2", "enable-endpoint endpoint=alerts"))
        .await;
    let refused = alice
        .expect(WAIT, |stanza| {
            from_is(stanza, HOOKS) && body(stanza).is_some()
        })
        .await;
    assert!(
        body(&refused)
            .unwrap_or_default()
            .contains("for the admins"),
        "{refused:?}"
    );
    // The admin re-enables it with the ad-hoc command: a form to choose the endpoint, then done.
    let mut admin = server.client("admin").await;
    let commands = "http://jabber.org/protocol/commands";
    let form = admin
        .iq(
            "a1",
            &format!(
                "<iq type='set' to='{HOOKS}' id='a1'><command xmlns='{commands}' \
                 node='enable-endpoint' action='execute'/></iq>"
            ),
        )
        .await;
    let command = form.get_child("command", commands).expect("a command");
    assert_eq!(command.attr("status"), Some("executing"), "{form:?}");
    let field = command
        .get_child("x", "jabber:x:data")
        .and_then(|x| {
            x.children()
                .find(|field| field.attr("var") == Some("endpoint"))
        })
        .expect("an endpoint field");
    assert_eq!(field.attr("type"), Some("list-single"));
    let session = command.attr("sessionid").unwrap_or_default();
    let done = admin
        .iq(
            "a2",
            &format!(
                "<iq type='set' to='{HOOKS}' id='a2'><command xmlns='{commands}' \
                 node='enable-endpoint' sessionid='{session}' action='complete'>\
                 <x xmlns='jabber:x:data' type='submit'><field var='endpoint'><value>alerts</value></field>\
                 </x></command></iq>"
            ),
        )
        .await;
    let command = done.get_child("command", commands).expect("a command");
    assert_eq!(command.attr("status"), Some("completed"), "{done:?}");
    assert_eq!(
        command
            .get_child("note", commands)
            .map(Element::text)
            .as_deref(),
        Some("alerts@hooks.localhost is enabled again.")
    );
    alice.send(&chat(&alerts, "g3", "third")).await;
    let received = receiver.wait_for(2).await;
    assert_eq!(received[1].payload["data"]["text"], "third");
}

async fn post_incoming(
    jabbridge: &Jabbridge,
    endpoint: &str,
    headers: &[(&str, String)],
    body: impl Into<reqwest::Body>,
) -> (u16, String) {
    let mut request = reqwest::Client::new().post(format!(
        "http://127.0.0.1:{}/bridges/{HOOKS}/endpoints/{endpoint}",
        jabbridge.http_port
    ));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

/// Request headers, by name.
type Headers = Vec<(&'static str, String)>;

fn signed_headers(id: &str, timestamp: i64, body: &str) -> Headers {
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            format!(
                "v1,{}",
                signature(INBOUND_SECRET, id, &timestamp.to_string(), body.as_bytes())
            ),
        ),
    ]
}

async fn incoming_webhooks_reach_the_client_and_bad_ones_change_nothing(kind: ServerKind) {
    let (server, jabbridge, _receiver, _dir) = hooks_setup(kind, &["alice"]).await;
    let mut alice = server.client("alice").await;
    let bearer = |token: &str| vec![("authorization", format!("Bearer {token}"))];
    let good = r#"{"text": "deploy finished"}"#;

    let refused: Vec<(&str, Headers, String, u16)> = vec![
        ("alerts", vec![], good.into(), 401),
        ("alerts", bearer("forged-token"), good.into(), 401),
        ("alerts", bearer(INBOUND_TOKEN), "{not json".into(), 400),
        (
            "alerts",
            bearer(INBOUND_TOKEN),
            r#"{"text": ""}"#.into(),
            400,
        ),
        (
            "alerts",
            bearer(INBOUND_TOKEN),
            r#"{"text": "x", "to": "mallory@localhost"}"#.into(),
            403,
        ),
        (
            "alerts",
            bearer(INBOUND_TOKEN),
            format!(r#"{{"text": "{}"}}"#, "x".repeat(5000)),
            413,
        ),
        ("nowhere", bearer(INBOUND_TOKEN), good.into(), 404),
        // A signature by another key; a good signature replayed after the tolerance.
        (
            "signed",
            signed_headers("evt_bad", unix_now(), r#"{"text": "other"}"#),
            good.into(),
            401,
        ),
        (
            "signed",
            signed_headers("evt_old", unix_now() - 600, good),
            good.into(),
            401,
        ),
        ("signed", bearer(INBOUND_TOKEN), good.into(), 401),
    ];
    for (endpoint, headers, body, expected) in refused {
        let (status, answer) = post_incoming(&jabbridge, endpoint, &headers, body.clone()).await;
        assert_eq!(
            status, expected,
            "{endpoint} {headers:?} {body:.60}: {answer}"
        );
        let error: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error");
        assert!(
            error["error"].as_str().is_some_and(|text| !text.is_empty()),
            "{answer}"
        );
    }

    // A good token: one message from the endpoint's contact.
    let (status, answer) = post_incoming(&jabbridge, "alerts", &bearer(INBOUND_TOKEN), good).await;
    assert_eq!(status, 202, "{answer}");
    let message = alice
        .expect(WAIT, |stanza| {
            stanza.name() == "message" && body(stanza).is_some()
        })
        .await;
    assert!(from_is(&message, &format!("alerts@{HOOKS}")), "{message:?}");
    assert_eq!(body(&message).as_deref(), Some("deploy finished"));

    // Slack's form shape, and a signed request sent twice: each delivered once.
    let form = [("payload", r#"{"text": "from slack", "username": "ci"}"#)];
    let response = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/bridges/{HOOKS}/endpoints/alerts",
            jabbridge.http_port
        ))
        .bearer_auth(INBOUND_TOKEN)
        .form(&form)
        .send()
        .await
        .expect("POST form");
    assert_eq!(response.status().as_u16(), 202);
    let signed_body = r#"{"text": "signed hello"}"#;
    let headers = signed_headers("evt_1", unix_now(), signed_body);
    for _ in 0..2 {
        let (status, answer) = post_incoming(&jabbridge, "signed", &headers, signed_body).await;
        assert_eq!(status, 202, "{answer}");
    }
    let mut texts = Vec::new();
    for _ in 0..2 {
        let message = alice
            .expect(WAIT, |stanza| {
                stanza.name() == "message" && body(stanza).is_some()
            })
            .await;
        texts.push((
            message.attr("from").unwrap_or_default().to_owned(),
            body(&message).unwrap_or_default(),
        ));
    }
    texts.sort();
    assert_eq!(
        texts,
        [
            (format!("alerts@{HOOKS}"), "from slack".to_owned()),
            (format!("signed@{HOOKS}"), "signed hello".to_owned()),
        ]
    );
    // Nothing else: none of the refused requests, no second copy of the signed one.
    alice
        .expect_none(Duration::from_secs(1), |stanza| {
            stanza.name() == "message" && body(stanza).is_some()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_with_messages_queued_delivers_them_after_restart() {
    let (server, mut jabbridge, mut receiver, _dir) =
        hooks_setup(ServerKind::Prosody, &["alice"]).await;
    let mut alice = server.client("alice").await;
    const SENT: usize = 5;
    let expected: Vec<String> = (0..SENT).map(|number| format!("queued {number}")).collect();
    for (number, text) in expected.iter().enumerate() {
        alice
            .send(&chat(
                &format!("alerts@{HOOKS}"),
                &format!("q{number}"),
                text,
            ))
            .await;
    }
    let deadline = Instant::now() + WAIT;
    while jabbridge.metric(PENDING_OUTBOX).await < SENT as f64 {
        assert!(
            Instant::now() < deadline,
            "the messages were not all queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    jabbridge.kill().await;
    receiver.up().await;
    jabbridge.restart().await;
    let received = receiver.wait_for(SENT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        SENT,
        "{:#?}",
        receiver.received()
    );
    assert!(received.iter().all(|request| request.verified));
    assert_eq!(texts_once_per_id(&received), expected);
    drop(alice);
}
