//! The component link survives what real deployments do to it: long silences, server
//! restarts, a server that is not up yet, a wrong secret, an orderly shutdown, text that XML
//! forbids and stanzas nested thousands deep.

use std::time::Duration;

use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_condition, error_text};
use crate::{SAY_TOKEN, config_for, echo_setup, on_both_servers};

const WAIT: Duration = Duration::from_secs(10);

on_both_servers!(
    an_idle_link_outlives_the_read_timeout,
    reconnects_after_the_server_restarts,
    starts_before_the_server_and_connects_when_it_comes_up,
    a_wrong_secret_is_reported_with_the_key_to_fix,
    an_unknown_domain_is_reported_with_the_key_to_fix,
    sigterm_flushes_and_exits_cleanly,
    stanzas_produced_while_down_go_out_after_reconnecting,
    text_that_xml_forbids_is_cleaned_and_the_link_stays_up,
);

async fn round_trip(client: &mut crate::harness::Client, text: &str) {
    client
        .send(&format!(
            "<message type='chat' to='bob@echo.localhost'><body>{text}</body></message>"
        ))
        .await;
    let expected = format!("echo.localhost says: {text}");
    client
        .expect(WAIT, |stanza| {
            body(stanza).as_deref() == Some(expected.as_str())
        })
        .await;
}

async fn an_idle_link_outlives_the_read_timeout(kind: ServerKind) {
    let (server, jabbridge, _dir) = echo_setup(kind).await;
    // keepalive = 2s and keepalive_timeout = 3s: 8 s of silence is several read timeouts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    round_trip(&mut alice, "after a nap").await;
    let log = jabbridge.log();
    assert!(
        log.contains("pinging the server"),
        "no keepalive ping was sent:\n{log}"
    );
    assert!(
        !log.contains("link down"),
        "the idle link was dropped:\n{log}"
    );
}

async fn reconnects_after_the_server_restarts(kind: ServerKind) {
    let (mut server, jabbridge, _dir) = echo_setup(kind).await;
    server.restart().await;
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    round_trip(&mut alice, "back again").await;
    let (_, metrics) = jabbridge.get("/metrics").await;
    assert!(metrics.contains("jabbridge_reconnects_total"), "{metrics}");
}

async fn starts_before_the_server_and_connects_when_it_comes_up(kind: ServerKind) {
    let mut server = XmppServer::start(kind, &["echo.localhost"], &["alice"]).await;
    server.stop().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(
        dir.path(),
        &config_for(&server, dir.path(), &["echo.localhost"]),
    )
    .await;
    let (status, ready) = jabbridge.get("/ready").await;
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("cannot reach the XMPP server"), "{ready}");
    // What is wrong and which key to check, but not the raw error (addresses, OS errors):
    // anyone who reaches the listener may ask. The details are in the log.
    assert!(!ready.contains("os error"), "{ready}");
    assert!(jabbridge.log().contains("os error"), "{}", jabbridge.log());
    let (status, _) = jabbridge.get("/health").await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.restart().await;
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    round_trip(&mut alice, "good morning").await;
}

async fn a_wrong_secret_is_reported_with_the_key_to_fix(kind: ServerKind) {
    let server = XmppServer::start(kind, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"])
        .replace(crate::harness::SECRET, "not-the-secret");
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    wait_for_refusal(&jabbridge, "bridge[0].secret").await;
    assert!(
        !jabbridge.log().contains("not-the-secret"),
        "the secret reached the log"
    );
}

async fn an_unknown_domain_is_reported_with_the_key_to_fix(kind: ServerKind) {
    let server = XmppServer::start(kind, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"]).replace(
        "domain = \"echo.localhost\"",
        "domain = \"elsewhere.localhost\"",
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    wait_for_refusal(&jabbridge, "bridge[0].domain").await;
}

/// Waits until `/ready` says 503 with an error naming `key`.
async fn wait_for_refusal(jabbridge: &Jabbridge, key: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, ready) = jabbridge.get("/ready").await;
        assert_eq!(status, 503);
        if ready.contains(key) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ready}\n{}",
            jabbridge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn sigterm_flushes_and_exits_cleanly(kind: ServerKind) {
    let (server, mut jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    round_trip(&mut alice, "before the end").await;
    let (code, took) = jabbridge.terminate().await;
    assert_eq!(code, Some(0), "{}", jabbridge.log());
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    assert!(jabbridge.log().contains("stopped"), "{}", jabbridge.log());
}

/// Prosody refuses a second connection for a component domain (ejabberd load-balances
/// instead, see README): the second Jabbridge must say so, naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_connection_is_reported_on_prosody() {
    let (server, _first, _first_dir) = echo_setup(ServerKind::Prosody).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let second = Jabbridge::start(
        dir.path(),
        &config_for(&server, dir.path(), &["echo.localhost"]),
    )
    .await;
    wait_for_refusal(&second, "already has a connection").await;
    let (_, ready) = second.get("/ready").await;
    assert!(ready.contains("bridge[0].domain"), "{ready}");
}

async fn say(jabbridge: &Jabbridge, token: &str, text: &str) -> u16 {
    let body = serde_json::json!({"user": "alice@localhost", "contact": "bob", "text": text});
    crate::say(jabbridge, token, body).await
}

/// What a bridge produces while the XMPP server is down waits and goes out once the link is
/// back (the server then stores it offline for alice, who is logged out meanwhile).
async fn stanzas_produced_while_down_go_out_after_reconnecting(kind: ServerKind) {
    let (mut server, jabbridge, _dir) = echo_setup(kind).await;
    server.stop().await;
    let (status, _) = jabbridge.get("/ready").await;
    assert_eq!(status, 503, "the link should be down");
    assert_eq!(say(&jabbridge, "wrong", "forged").await, 401);
    for number in 1..=3 {
        assert_eq!(
            say(
                &jabbridge,
                crate::SAY_TOKEN,
                &format!("while down {number}")
            )
            .await,
            202
        );
    }
    let (_, metrics) = jabbridge.get("/metrics").await;
    assert!(
        metrics.contains("jabbridge_pending_messages{bridge=\"echo.localhost\",queue=\"inbox\"} 3"),
        "{metrics}"
    );
    server.restart().await;
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    // Messages from the network need no registration, only `allow`.
    let mut alice = server.client("alice").await;
    for number in 1..=3 {
        let expected = format!("while down {number}");
        let message = alice
            .expect(WAIT, |stanza| {
                body(stanza).as_deref() == Some(expected.as_str())
            })
            .await;
        assert_eq!(message.attr("from"), Some("bob@echo.localhost"));
    }
    alice
        .expect_none(Duration::from_secs(1), |stanza| {
            body(stanza).as_deref() == Some("forged")
        })
        .await;
}

/// A server that hangs (socket open, nothing answered) is detected by the keepalive within
/// keepalive + keepalive_timeout, and the link comes back once the server does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_is_detected_by_the_keepalive() {
    let (server, jabbridge, _dir) = echo_setup(ServerKind::Prosody).await;
    server.freeze(true);
    // keepalive = 2s, keepalive_timeout = 3s: the link must be declared dead well within 15s.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, ready) = jabbridge.get("/ready").await;
        if status == 503 {
            assert!(
                ready.contains("link to the XMPP server was lost"),
                "{ready}"
            );
            assert!(
                jabbridge.log().contains("timeouts elapsed"),
                "{}",
                jabbridge.log()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "hung server not detected:\n{}",
            jabbridge.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.freeze(false);
    jabbridge.wait_ready(Duration::from_secs(30)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    round_trip(&mut alice, "awake").await;
}

/// ANSI colour codes (ESC is forbidden in XML 1.0) in a webhook's text used to make the
/// stanza unwritable: the link dropped, and the same stanza went first on every reconnect,
/// for good.
async fn text_that_xml_forbids_is_cleaned_and_the_link_stays_up(kind: ServerKind) {
    let (server, jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    for (id, text) in [
        ("c1", "colour \u{1b}[31mred\u{1b}[0m"),
        ("c2", "nul\u{0} bell\u{7} and \u{fffe}"),
    ] {
        let say = serde_json::json!({
            "id": id, "user": "alice@localhost", "contact": "ci", "text": text,
        });
        assert_eq!(crate::say(&jabbridge, SAY_TOKEN, say).await, 202);
    }
    for expected in ["colour [31mred[0m", "nul bell and "] {
        alice
            .expect(WAIT, |stanza| body(stanza).as_deref() == Some(expected))
            .await;
    }
    round_trip(&mut alice, "still here").await;
    let (status, ready) = jabbridge.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    let log = jabbridge.log();
    assert!(!log.contains("link down"), "the link dropped:\n{log}");
}

/// 5,000 nested elements from any user used to overflow a worker's stack and abort the
/// daemon. Now the stanza is answered policy-violation and everything else goes on.
/// Prosody only: ejabberd itself disconnects a client that sends this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_stanza_is_refused_and_the_link_stays_up() {
    let (server, jabbridge, _dir) = echo_setup(ServerKind::Prosody).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let depth = 5_000;
    alice
        .send(&format!(
            "<message type='chat' to='bob@echo.localhost' id='deep'><body>deep</body>{}{}</message>",
            "<a xmlns='urn:example:nest'>".repeat(depth),
            "</a>".repeat(depth)
        ))
        .await;
    let refused = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("deep"))
        .await;
    assert_eq!(refused.attr("type"), Some("error"), "{refused:?}");
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("policy-violation")
    );
    assert!(
        error_text(&refused).contains("nested deeper than 64"),
        "{}",
        error_text(&refused)
    );
    round_trip(&mut alice, "after the deep one").await;
    let log = jabbridge.log();
    assert!(!log.contains("overflowed its stack"), "{log}");
    assert!(!log.contains("link down"), "the link dropped:\n{log}");
}

/// Huge attribute values and names from any user used to end the link (rxml refuses tokens
/// over 8 KiB with an error that ends the stream). Now a stanza with one is refused
/// (policy-violation) when an answer can be addressed, dropped when its own top tag is the
/// long one, and the link stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_attributes_and_names_leave_the_link_up() {
    let (server, jabbridge, _dir) = echo_setup(ServerKind::Prosody).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let long = "x".repeat(20 * 1024);
    alice
        .send(&format!(
            "<message type='chat' to='bob@echo.localhost' id='attr' a='{long}'><body>hi</body></message>"
        ))
        .await;
    for (id, stanza) in [
        (
            "name",
            format!(
                "<message type='chat' to='bob@echo.localhost' id='name'><body>hi</body><{long} xmlns='urn:x'/></message>"
            ),
        ),
        (
            "iq",
            format!(
                "<iq type='get' to='echo.localhost' id='iq'><query xmlns='http://jabber.org/protocol/disco#info' node='{long}'/></iq>"
            ),
        ),
    ] {
        alice.send(&stanza).await;
        let refused = alice
            .expect(WAIT, |stanza| stanza.attr("id") == Some(id))
            .await;
        assert_eq!(refused.attr("type"), Some("error"), "{refused:?}");
        assert_eq!(
            error_condition(&refused).as_deref(),
            Some("policy-violation")
        );
        assert!(
            error_text(&refused).contains("over 8000 bytes"),
            "{}",
            error_text(&refused)
        );
    }
    round_trip(&mut alice, "after the huge ones").await;
    let log = jabbridge.log();
    assert!(!log.contains("link down"), "the link dropped:\n{log}");
}

/// `jabbridge doctor` against a real Prosody: the database and the component pass with the
/// right secret; a wrong secret and a port with nothing on it fail, each naming the key to
/// fix, and the command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_database_and_each_component() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"])
        .replace("{http}", &crate::harness::free_port().to_string());
    let doctor = |config: &str| crate::cli::doctor(dir.path(), config);
    let (ok, output) = doctor(&config);
    assert!(ok, "{output}");
    assert!(
        output.contains("ok    database: SQLite answers"),
        "{output}"
    );
    assert!(
        output.contains("ok    bridge[0] echo.localhost: component") && output.contains("accepted"),
        "{output}"
    );
    let wrong = config.replace(
        &format!("secret = \"{}\"", crate::harness::SECRET),
        "secret = \"not-the-secret\"",
    );
    let (ok, output) = doctor(&wrong);
    assert!(!ok, "{output}");
    assert!(output.contains("FAIL  bridge[0]"), "{output}");
    assert!(output.contains("bridge[0].secret"), "{output}");
    assert!(
        !output.contains("not-the-secret"),
        "the secret was printed: {output}"
    );
    let nowhere = config.replace(
        &format!(
            "server = \"127.0.0.1:{}\"\nallow",
            server.component_port_for("echo.localhost")
        ),
        &format!(
            "server = \"127.0.0.1:{}\"\nallow",
            crate::harness::free_port()
        ),
    );
    assert_ne!(nowhere, config, "the bridge's server line was not found");
    let (ok, output) = doctor(&nowhere);
    assert!(!ok, "{output}");
    assert!(output.contains("cannot reach the XMPP server"), "{output}");
}

/// While Jabbridge runs, `doctor` leaves its components alone and checks that
/// `http.public_url` reaches this very listener (the `/health` seen through it names the
/// same process); a public URL where nothing answers fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_that_the_public_url_reaches_this_listener() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"]).replace(
        "[http]\n",
        "[http]\npublic_url = \"http://127.0.0.1:{http}/\"\n",
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let written = std::fs::read_to_string(dir.path().join("jabbridge.toml")).expect("config");
    let doctor = |config: &str| crate::cli::doctor(dir.path(), config);
    let (ok, output) = doctor(&written);
    assert!(ok, "{output}");
    assert!(
        output.contains(&format!(
            "ok    http.public_url: http://127.0.0.1:{} reaches this listener",
            jabbridge.http_port
        )),
        "{output}"
    );
    assert!(output.contains("not probed"), "{output}");
    let elsewhere = written.replace(
        &format!("public_url = \"http://127.0.0.1:{}/\"", jabbridge.http_port),
        &format!(
            "public_url = \"http://127.0.0.1:{}\"",
            crate::harness::free_port()
        ),
    );
    assert_ne!(elsewhere, written);
    let (ok, output) = doctor(&elsewhere);
    assert!(!ok, "{output}");
    assert!(output.contains("FAIL  http.public_url"), "{output}");
    // Jabbridge itself kept its link through all this.
    let (status, _) = jabbridge.get("/ready").await;
    assert_eq!(status, 200);
}
