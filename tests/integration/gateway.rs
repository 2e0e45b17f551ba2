//! What a user of the gateway sees: disco, version, ping, echo round trips, errors for
//! malformed stanzas (with the stream staying up), two bridges in one process.

use std::time::Duration;

use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_condition};
use crate::{Echo, config_for, echo_setup, echo_setup_with, on_both_echoes, on_both_servers};

const WAIT: Duration = Duration::from_secs(10);

on_both_servers!(
    malformed_stanzas_are_answered_and_the_link_stays_up,
    two_bridges_in_one_process,
);

on_both_echoes!(
    disco_shows_a_gateway,
    echo_round_trip,
    register_reregister_and_unregister_with_the_form,
);

async fn disco_shows_a_gateway(kind: ServerKind, echo: Echo) {
    let (server, _jabbridge, _dir) = echo_setup_with(kind, echo).await;
    let mut alice = server.client("alice").await;
    let info = alice
        .iq(
            "d1",
            "<iq type='get' to='echo.localhost' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    let query = info.children().next().expect("disco query");
    let identity = query
        .children()
        .find(|child| child.name() == "identity")
        .expect("identity");
    assert_eq!(identity.attr("category"), Some("gateway"));
    assert_eq!(identity.attr("type"), Some("echo"));
    let features: Vec<&str> = query
        .children()
        .filter(|child| child.name() == "feature")
        .filter_map(|feature| feature.attr("var"))
        .collect();
    for feature in [
        "urn:xmpp:ping",
        "jabber:iq:version",
        "http://jabber.org/protocol/disco#items",
    ] {
        assert!(
            features.contains(&feature),
            "{feature} missing from {features:?}"
        );
    }

    let items = alice
        .iq(
            "d2",
            "<iq type='get' to='echo.localhost' id='d2'><query xmlns='http://jabber.org/protocol/disco#items'/></iq>",
        )
        .await;
    assert_eq!(items.attr("type"), Some("result"));

    let version = alice
        .iq(
            "v1",
            "<iq type='get' to='echo.localhost' id='v1'><query xmlns='jabber:iq:version'/></iq>",
        )
        .await;
    let name = version
        .children()
        .next()
        .and_then(|query| query.children().find(|child| child.name() == "name"));
    assert_eq!(name.map(|name| name.text()).as_deref(), Some("Jabbridge"));

    let pong = alice
        .iq(
            "p1",
            "<iq type='get' to='echo.localhost' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>",
        )
        .await;
    assert_eq!(pong.attr("type"), Some("result"));

    let unknown = alice
        .iq(
            "u1",
            "<iq type='get' to='echo.localhost' id='u1'><query xmlns='urn:example:nope'/></iq>",
        )
        .await;
    assert_eq!(unknown.attr("type"), Some("error"));
    assert_eq!(
        error_condition(&unknown).as_deref(),
        Some("service-unavailable")
    );
    let unknown_set = alice
        .iq(
            "u2",
            "<iq type='set' to='bob@echo.localhost' id='u2'><query xmlns='urn:example:nope'/></iq>",
        )
        .await;
    assert_eq!(
        error_condition(&unknown_set).as_deref(),
        Some("service-unavailable")
    );
}

async fn echo_round_trip(kind: ServerKind, echo: Echo) {
    let (server, _jabbridge, _dir) = echo_setup_with(kind, echo).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='e1'><body>hello there</body></message>")
        .await;
    let reply = alice
        .expect(WAIT, |stanza| {
            stanza.name() == "message" && body(stanza).is_some()
        })
        .await;
    assert_eq!(reply.attr("from"), Some("bob@echo.localhost"));
    assert_eq!(
        body(&reply).as_deref(),
        Some("echo.localhost says: hello there")
    );
    assert!(
        reply
            .children()
            .any(|child| child.name() == "origin-id" && child.attr("id").is_some()),
        "replies carry a XEP-0359 origin-id: {reply:?}"
    );

    // An escaped localpart (XEP-0106) reaches the bridge unescaped and comes back escaped.
    alice
        .send("<message type='chat' to='bob\\20smith@echo.localhost' id='e2'><body>spaces</body></message>")
        .await;
    let reply = alice
        .expect(WAIT, |stanza| {
            stanza.name() == "message" && body(stanza).is_some()
        })
        .await;
    assert_eq!(reply.attr("from"), Some("bob\\20smith@echo.localhost"));

    // The bare domain answers with help rather than silence.
    alice
        .send("<message type='chat' to='echo.localhost' id='e3'><body>help</body></message>")
        .await;
    let help = alice
        .expect(WAIT, |stanza| {
            stanza.name() == "message" && stanza.attr("from") == Some("echo.localhost")
        })
        .await;
    assert!(
        body(&help)
            .unwrap_or_default()
            .contains("ADDRESS@echo.localhost"),
        "{help:?}"
    );
}

async fn malformed_stanzas_are_answered_and_the_link_stays_up(kind: ServerKind) {
    let (server, jabbridge, _dir) = echo_setup(kind).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;

    // Each of these ended tokio-xmpp's own Component stream (FACTS.md).
    let error = alice
        .iq("bad3", "<iq type='get' to='echo.localhost' id='bad3'/>")
        .await;
    assert_eq!(error.attr("type"), Some("error"));
    let condition = error_condition(&error);
    assert!(
        matches!(
            condition.as_deref(),
            Some("bad-request") | Some("service-unavailable")
        ),
        "{error:?}"
    );

    alice
        .send("<message type='bogus' to='bob@echo.localhost' id='bad1'><body>x</body></message>")
        .await;
    if kind == ServerKind::Prosody {
        // Prosody passes the bogus type through; we must answer it.
        let error = alice
            .expect(WAIT, |stanza| stanza.attr("id") == Some("bad1"))
            .await;
        assert_eq!(error.attr("type"), Some("error"));
        assert_eq!(error_condition(&error).as_deref(), Some("bad-request"));
    } else {
        // ejabberd rewrites an unknown type to `normal`: the message is simply delivered.
        alice
            .expect(WAIT, |stanza| {
                body(stanza).as_deref() == Some("echo.localhost says: x")
            })
            .await;
    }

    // ejabberd refuses this presence itself (c2s decoding) and never forwards it; Prosody
    // passes it on, and it must be answered by us.
    if kind == ServerKind::Prosody {
        alice
            .send("<presence to='bob@echo.localhost' id='bad2'><priority>abc</priority></presence>")
            .await;
        let error = alice
            .expect(WAIT, |stanza| stanza.attr("id") == Some("bad2"))
            .await;
        assert_eq!(error.name(), "presence");
        assert_eq!(error.attr("from"), Some("bob@echo.localhost"));
        assert_eq!(error_condition(&error).as_deref(), Some("bad-request"));
    }

    // The link is still up and still works.
    alice
        .send("<message type='chat' to='carol@echo.localhost' id='ok1'><body>still here</body></message>")
        .await;
    alice
        .expect(WAIT, |stanza| {
            body(stanza).as_deref() == Some("echo.localhost says: still here")
        })
        .await;
    let log = jabbridge.log();
    assert!(!log.contains("link down"), "the link went down:\n{log}");
    let (_, metrics) = jabbridge.get("/metrics").await;
    assert!(
        metrics.contains("jabbridge_stanza_errors_total"),
        "{metrics}"
    );
    // The echoed messages were committed: the group commit's histograms have buckets (fixed,
    // a few counters), not a summary's quantiles.
    for histogram in ["jabbridge_commit_seconds", "jabbridge_commit_writes"] {
        assert!(
            metrics.contains(&format!("{histogram}_bucket{{le=\"+Inf\"}}"))
                && !metrics.contains(&format!("{histogram}{{quantile=")),
            "{metrics}"
        );
    }
}

async fn two_bridges_in_one_process(kind: ServerKind) {
    let server = XmppServer::start(kind, &["one.localhost", "two.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(
        dir.path(),
        &config_for(&server, dir.path(), &["one.localhost", "two.localhost"]),
    )
    .await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = crate::registered(&server, "alice", &["one.localhost", "two.localhost"]).await;
    for domain in ["one.localhost", "two.localhost"] {
        alice
            .send(&format!(
                "<message type='chat' to='x@{domain}'><body>hi</body></message>"
            ))
            .await;
        let reply = alice.expect(WAIT, |stanza| body(stanza).is_some()).await;
        assert_eq!(reply.attr("from"), Some(format!("x@{domain}").as_str()));
        assert_eq!(body(&reply), Some(format!("{domain} says: hi")));
    }
    let (status, ready) = jabbridge.get("/ready").await;
    assert_eq!(status, 200, "{ready}");
    assert!(
        ready.contains("one.localhost") && ready.contains("two.localhost"),
        "{ready}"
    );
}

/// Bridge routes live under /bridges/{domain}/, behind the body limit; unknown bridges and
/// routes a bridge does not serve are 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_have_limits_and_clear_answers() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"])
        .replace("[http]\n", "[http]\nbody_limit = 1024\n");
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://127.0.0.1:{}{path}", jabbridge.http_port);
    let status = |response: reqwest::Response| response.status().as_u16();

    let small = client
        .post(url("/bridges/echo.localhost/anything"))
        .body(vec![b'x'; 100])
        .send()
        .await
        .expect("request");
    assert_eq!(status(small), 404, "echo serves no routes");
    let large = client
        .post(url("/bridges/echo.localhost/anything"))
        .body(vec![b'x'; 4096])
        .send()
        .await
        .expect("request");
    assert_eq!(status(large), 413);
    let unknown = client
        .post(url("/bridges/nope.localhost/anything"))
        .send()
        .await
        .expect("request");
    assert_eq!(status(unknown), 404);
    let (code, metrics) = jabbridge.get("/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("jabbridge_component_connected{bridge=\"echo.localhost\"} 1"),
        "{metrics}"
    );
}

/// A client that never finishes its headers, or sits idle, is cut off after
/// `http.header_timeout`; past `http.max_connections` a connection is answered 503 at once;
/// places free up as connections close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_are_bounded_in_time_and_number() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"]).replace(
        "[http]\n",
        "[http]\nheader_timeout = \"1s\"\nmax_connections = 2\n",
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    let address = format!("127.0.0.1:{}", jabbridge.http_port);
    let connect = || async { TcpStream::connect(&address).await.expect("connect") };
    async fn answer(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer));
        assert!(read.await.is_ok(), "the server kept the connection open");
        String::from_utf8_lossy(&answer).into_owned()
    }

    // The start-up probes' connections are gone by now: closed by their client, or as idle
    // after header_timeout.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut slow = connect().await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut idle = connect().await;
    // Give the listener a moment to take both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = connect().await;
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let refused = answer(&mut third).await;
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(refused.contains("Retry-After: 1"), "{refused}");
    // Both are closed by the server (header_timeout = 1 s; the read allows 10).
    let slow_answer = answer(&mut slow).await;
    assert!(!slow_answer.contains(" 200 "), "{slow_answer}");
    answer(&mut idle).await;
    let (status, _) = jabbridge.get("/health").await;
    assert_eq!(status, 200);
    let (_, metrics) = jabbridge.get("/metrics").await;
    assert!(
        metrics.contains("jabbridge_http_refused_total{reason=\"connections\"} 1"),
        "{metrics}"
    );
}

/// `[log] format = "json"` writes one JSON object per line, with structured fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config_for(&server, dir.path(), &["echo.localhost"]).replacen(
        "[[bridge]]",
        "[log]\nformat = \"json\"\n\n[[bridge]]",
        1,
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let log = jabbridge.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let connected = lines
        .iter()
        .find(|line| line["message"] == "component connected")
        .unwrap_or_else(|| panic!("no connection event in {log}"));
    assert_eq!(connected["bridge"], "echo.localhost");
    assert_eq!(connected["level"], "INFO");
}

fn register_set(id: &str, prefix: &str) -> String {
    crate::register_set("echo.localhost", id, prefix)
}

async fn echo_text(alice: &mut crate::harness::Client, text: &str) -> String {
    alice
        .send(&format!(
            "<message type='chat' to='bob@echo.localhost'><body>{text}</body></message>"
        ))
        .await;
    let reply = alice
        .expect(WAIT, |stanza| {
            body(stanza).is_some_and(|body| body.ends_with(text))
        })
        .await;
    body(&reply).unwrap_or_default()
}

async fn register_reregister_and_unregister_with_the_form(kind: ServerKind, echo: Echo) {
    let (server, jabbridge, _dir) = echo_setup_with(kind, echo).await;
    let mut alice = server.client("alice").await;
    let get = "<iq type='get' to='echo.localhost' id='r1'><query xmlns='jabber:iq:register'/></iq>";

    let form = alice.iq("r1", get).await;
    assert_eq!(form.attr("type"), Some("result"), "{form:?}");
    let query = form.children().next().expect("query");
    assert!(query.children().all(|child| child.name() != "registered"));
    let x = query
        .children()
        .find(|child| child.name() == "x")
        .expect("data form");
    assert_eq!(x.attr("type"), Some("form"));
    let field = x
        .children()
        .find(|child| child.attr("var") == Some("prefix"))
        .expect("prefix field");
    assert_eq!(field.attr("label"), Some("Reply prefix"));

    // Unregistered users' messages are refused, saying what to do.
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='u1'><body>one</body></message>")
        .await;
    let refused = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("u1"))
        .await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("registration-required")
    );

    // A form the bridge refuses changes nothing and says why.
    let long = "x".repeat(40);
    let refused = alice.iq("r2", &register_set("r2", &long)).await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-acceptable"));
    assert!(format!("{refused:?}").contains("at most 32"), "{refused:?}");

    let registered = alice.iq("r3", &register_set("r3", "first: ")).await;
    assert_eq!(registered.attr("type"), Some("result"), "{registered:?}");
    assert_eq!(echo_text(&mut alice, "two").await, "first: two");
    let form = alice.iq("r1", get).await;
    assert!(
        form.children()
            .next()
            .expect("query")
            .children()
            .any(|child| child.name() == "registered")
    );

    // Re-registering updates.
    let updated = alice.iq("r4", &register_set("r4", "second: ")).await;
    assert_eq!(updated.attr("type"), Some("result"));
    assert_eq!(echo_text(&mut alice, "three").await, "second: three");
    let (ok, users) = crate::cli::jabbridge(&[
        "--config",
        jabbridge.config_path.to_str().expect("path"),
        "users",
        "list",
        "echo.localhost",
    ]);
    assert!(ok && users.contains("alice@localhost"), "{users}");

    // Removing unregisters: the gateway unsubscribes, messages are refused again, and a
    // second removal is an error.
    let remove = "<iq type='set' to='echo.localhost' id='r5'><query xmlns='jabber:iq:register'><remove/></query></iq>";
    alice.send(remove).await;
    alice
        .expect(WAIT, |stanza| {
            stanza.name() == "presence"
                && stanza.attr("from") == Some("echo.localhost")
                && stanza.attr("type") == Some("unsubscribe")
        })
        .await;
    let removed = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("r5"))
        .await;
    assert_eq!(removed.attr("type"), Some("result"));
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='u2'><body>four</body></message>")
        .await;
    let refused = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("u2"))
        .await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("registration-required")
    );
    let again = alice.iq("r5", remove).await;
    assert_eq!(error_condition(&again).as_deref(), Some("item-not-found"));
}

/// Registrations are cached in memory: a user the CLI removes while Jabbridge runs (another
/// process, so no in-process invalidation) must still be refused within moments, as must a
/// user it registers be let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_the_cli_removes_while_running_is_refused() {
    let (server, jabbridge, _dir) = echo_setup(ServerKind::Prosody).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    // Cached now: the router and the outbox both read her registration.
    assert!(echo_text(&mut alice, "cached").await.ends_with("cached"));
    let (ok, output) = crate::cli::jabbridge(&[
        "--config",
        jabbridge.config_path.to_str().expect("path"),
        "users",
        "remove",
        "echo.localhost",
        "alice@localhost",
    ]);
    assert!(ok, "{output}");
    // The cache looks at the database's directory version every 0.1 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice
        .send(
            "<message type='chat' to='bob@echo.localhost' id='gone'><body>still?</body></message>",
        )
        .await;
    let refused = alice
        .expect(WAIT, |stanza| stanza.attr("id") == Some("gone"))
        .await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("registration-required"),
        "{refused:?}"
    );
}
