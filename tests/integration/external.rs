//! External bridges through a real Prosody: the Python reference bridge killed with a user
//! in a room (the message sent meanwhile arrives, the room is joined again), and a bridge
//! whose process never starts, next to an in-process one that keeps working; a command's
//! form filled in by the bridge; and the conformance kit, `jabbridge bridge-test`, against
//! the reference bridge and worse.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{Jabbridge, ServerKind, XmppServer, body, error_condition};

const WAIT: Duration = Duration::from_secs(30);
const ROOM: &str = "#lobby@echo.localhost";

/// An external echo bridge started through `wrapper` (a shell script in `dir`), with fast
/// retries: a message waiting for the process is tried again within a second or two.
fn config(server: &XmppServer, dir: &std::path::Path, wrapper: &str) -> String {
    format!(
        "{head}\n[delivery]\nretry_max = \"1s\"\n\n[[bridge]]\nkind = \"external\"\ndomain = \"echo.localhost\"\nsecret = \"{secret}\"\nserver = \"127.0.0.1:{port}\"\nallow = [\"localhost\"]\ncommand = [\"sh\", \"{wrapper}\"]\nsettings = {{ prefix = \"echo.localhost says: \" }}\n",
        head = crate::config_head(server, dir),
        secret = crate::harness::SECRET,
        port = server.component_port_for("echo.localhost"),
    )
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_bridge_process_comes_back_with_its_rooms_and_nothing_is_lost() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // A copy of our own, so that killing it kills no other test's bridge; it starts only
    // while the flag file exists.
    let bridge = dir.path().join("bridge.py");
    std::fs::copy(crate::python_bridge(), &bridge).expect("copy the bridge");
    let flag = dir.path().join("may-start");
    std::fs::write(&flag, "").expect("flag");
    let wrapper = dir.path().join("run.sh");
    std::fs::write(
        &wrapper,
        format!(
            "[ -f '{}' ] || exit 1\nexec python3 '{}'\n",
            flag.display(),
            bridge.display()
        ),
    )
    .expect("wrapper");
    let jabbridge = Jabbridge::start(
        dir.path(),
        &config(&server, dir.path(), &wrapper.display().to_string()),
    )
    .await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let joined = alice.join(ROOM, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");

    std::fs::remove_file(&flag).expect("remove the flag");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &bridge.display().to_string()])
        .status()
        .expect("pkill");
    assert!(killed.success(), "the bridge process was running");
    wait_until("/ready names the bridge process", WAIT, async || {
        let (status, text) = jabbridge.get("/ready").await;
        status == 503 && text.contains("bridge process down")
    })
    .await;
    // Accepted while the process is down: no error comes back...
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='d1'><body>while down</body></message>")
        .await;
    alice
        .expect_none(Duration::from_secs(2), |s| error_condition(s).is_some())
        .await;
    // ... and it arrives once the process is back.
    std::fs::write(&flag, "").expect("flag");
    let echoed = alice
        .expect(WAIT, |s| {
            body(s).is_some_and(|text| text.ends_with("while down"))
        })
        .await;
    assert_eq!(
        body(&echoed).as_deref(),
        Some("echo.localhost says: while down")
    );
    assert_eq!(echoed.attr("from"), Some("bob@echo.localhost"));
    jabbridge.wait_ready(WAIT).await;

    // The room was joined again for her: her post is repeated by the bot.
    alice
        .send(&format!(
            "<message type='groupchat' to='{ROOM}' id='r1'><body>still here</body></message>"
        ))
        .await;
    let repeat = alice
        .expect(WAIT, |s| {
            s.attr("from") == Some(&format!("{ROOM}/echo")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&repeat).as_deref(), Some("still here"));
    let restarts = jabbridge
        .metric("jabbridge_bridge_process_restarts_total{bridge=\"echo.localhost\"}")
        .await;
    assert!(restarts >= 1.0, "restarts counted: {restarts}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_process_that_never_starts_harms_no_other_bridge() {
    let server = XmppServer::start(
        ServerKind::Prosody,
        &["echo.localhost", "broken.localhost"],
        &["alice"],
    )
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = crate::config_for(&server, dir.path(), &["echo.localhost"]);
    config.push_str(&format!(
        "\n[[bridge]]\nkind = \"external\"\ndomain = \"broken.localhost\"\nsecret = \"{}\"\nserver = \"127.0.0.1:{}\"\nallow = [\"localhost\"]\nname = \"Broken\"\ncommand = [\"{}/no-such-program\"]\n",
        crate::harness::SECRET,
        server.component_port_for("broken.localhost"),
        dir.path().display(),
    ));
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    wait_until("/ready names the broken bridge", WAIT, async || {
        let (status, text) = jabbridge.get("/ready").await;
        status == 503 && text.contains("could not start")
    })
    .await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='e1'><body>fine</body></message>")
        .await;
    let echoed = alice
        .expect(Duration::from_secs(10), |s| body(s).is_some())
        .await;
    assert_eq!(body(&echoed).as_deref(), Some("echo.localhost says: fine"));
    // The broken gateway still answers disco, under the name from its config.
    let info = alice
        .iq(
            "d1",
            "<iq type='get' to='broken.localhost' id='d1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>",
        )
        .await;
    assert_eq!(info.attr("type"), Some("result"), "{info:?}");
    assert!(format!("{info:?}").contains("Broken"), "{info:?}");
}

/// `jabbridge bridge-test` against the Python reference bridge with its known gaps; against
/// a "bridge" that is not one (`cat` writes back what it reads); and with a stale entry in
/// the expected failures.
#[test]
fn the_conformance_kit_passes_the_reference_and_fails_what_is_wrong() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/external-python");
    let known = example.join("expected-failures.txt");
    let bridge = crate::python_bridge();
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let (ok, output) = crate::cli::jabbridge(&[
        "bridge-test",
        "--expected-failures",
        known.to_str().expect("utf-8"),
        "--json",
        json.to_str().expect("utf-8"),
        "--",
        "python3",
        &bridge,
    ]);
    assert!(ok, "{output}");
    assert!(output.contains("pass  JB-LIFE-001"), "{output}");
    assert!(output.contains("xfail JB-MSG-004"), "{output}");
    assert!(output.contains(": conformant"), "{output}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("report")).expect("JSON");
    assert_eq!(report.as_array().map(Vec::len), Some(22), "{report}");

    // `cat` answers nothing a core expects: the handshake fails, the run fails.
    let (ok, output) = crate::cli::jabbridge(&["bridge-test", "--", "cat"]);
    assert!(!ok, "{output}");
    assert!(output.contains("FAIL  JB-LIFE-001"), "{output}");
    assert!(output.contains("FAILED"), "{output}");

    // An expected failure that passes makes the file stale: the run fails until it is fixed.
    let stale = dir.path().join("stale.txt");
    std::fs::write(
        &stale,
        "JB-MSG-004\nJB-LIFE-004  # answered in time, in fact\n",
    )
    .expect("write");
    let (ok, output) = crate::cli::jabbridge(&[
        "bridge-test",
        "--expected-failures",
        stale.to_str().expect("utf-8"),
        "--",
        "python3",
        &bridge,
    ]);
    assert!(!ok, "{output}");
    assert!(output.contains("XPASS JB-LIFE-004"), "{output}");
}

/// The Node.js reference bridge (`examples/external-node/bridge.js`) between Prosody and a
/// real ngircd: a channel both ways, line breaks that never reach IRC as commands, private
/// messages both ways; and the conformance kit against it with the same ngircd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_bridge_carries_a_real_irc_channel_both_ways() {
    use crate::irc::{IrcUser, Ngircd};
    let Some(ircd) = Ngircd::start().await else {
        return;
    };
    let domain = "nodeirc.localhost";
    let bridge = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/external-node/bridge.js");
    let server = XmppServer::start(ServerKind::Prosody, &[domain], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "{head}\n[[bridge]]\nkind = \"external\"\ndomain = \"{domain}\"\nsecret = \"{secret}\"\nserver = \"127.0.0.1:{port}\"\nallow = [\"localhost\"]\ncommand = [\"node\", \"{bridge}\"]\nsettings = {{ server = \"127.0.0.1:{irc}\" }}\n",
        head = crate::config_head(&server, dir.path()),
        secret = crate::harness::SECRET,
        port = server.component_port_for(domain),
        bridge = bridge.display(),
        irc = ircd.port,
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #nodes").await;
    bob.expect(|line| line.contains(" 366 ")).await;

    let room = format!("#nodes@{domain}");
    let mut alice = server.client("alice").await;
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["occupants"], serde_json::json!(["alice", "bob"]));
    bob.expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;

    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='n1'><body>hello irc\nQUIT :injected</body></message>"
        ))
        .await;
    bob.expect(|line| line.ends_with("PRIVMSG #nodes :hello irc"))
        .await;
    bob.expect(|line| line.ends_with("PRIVMSG #nodes :QUIT :injected"))
        .await;
    let mine = alice
        .expect(Duration::from_secs(10), |s| {
            s.attr("from") == Some(&format!("{room}/alice")) && body(s).is_some()
        })
        .await;
    assert_eq!(mine.attr("id"), Some("n1"));

    bob.send("PRIVMSG #nodes :hi alice").await;
    let said = alice
        .expect(Duration::from_secs(10), |s| {
            s.attr("from") == Some(&format!("{room}/bob")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&said).as_deref(), Some("hi alice"));

    bob.send("PRIVMSG alice :psst").await;
    let private = alice
        .expect(Duration::from_secs(10), |s| {
            s.attr("from") == Some(&format!("bob@{domain}")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&private).as_deref(), Some("psst"));
    alice
        .send(&format!(
            "<message type='chat' to='bob@{domain}' id='n2'><body>back at you</body></message>"
        ))
        .await;
    bob.expect(|line| line.ends_with("PRIVMSG bob :back at you"))
        .await;

    let settings = serde_json::json!({"server": format!("127.0.0.1:{}", ircd.port)}).to_string();
    let (ok, output) = crate::cli::jabbridge(&[
        "bridge-test",
        "--settings",
        &settings,
        "--",
        "node",
        bridge.to_str().expect("utf-8"),
    ]);
    assert!(ok, "{output}");
    assert!(output.contains("pass  JB-GRP-001"), "{output}");
}

/// A `<command/>` iq to the gateway `echo.localhost`.
fn command(id: &str, inner: &str) -> String {
    format!(
        "<iq type='set' to='echo.localhost' id='{id}'>\
         <command xmlns='http://jabber.org/protocol/commands' node='register' {inner}</iq>"
    )
}

fn submit(session: &str, fields: &str) -> String {
    format!(
        "sessionid='{session}' action='complete'><x xmlns='jabber:x:data' type='submit'>{fields}</x></command>"
    )
}

/// A registration in three steps (the form, a code, a wait) through XEP-0050, by the Python
/// reference bridge with its `register/submit` replaced; XEP-0077, which has one form, is
/// told to use the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_in_several_steps_goes_through_the_register_command() {
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("steps.py");
    std::fs::write(
        &wrapper,
        format!(
            r#"import runpy
ns = runpy.run_path({bridge:?})
initialize = ns["HANDLERS"]["initialize"]
def with_steps(p):
    answer = initialize(p)
    answer["capabilities"]["registration_steps"] = True
    return answer
asked = [0]
def register(p):
    step = p.get("step_id")
    if step is None:
        asked[0] += 1
        return {{"step": {{"type": "form", "step_id": "code", "title": "Confirm",
                 "instructions": "Enter the code: 42 (asked %d)" % asked[0],
                 "fields": [{{"var": "code", "label": "Code", "required": True}}]}}}}
    if step == "code":
        if p["values"].get("code") != "42":
            raise ns["Refused"](406, "not-acceptable", "modify", "wrong code")
        return {{"step": {{"type": "waiting", "step_id": "wait", "title": "Almost there",
                 "instructions": "Approve it on your phone, then press Complete."}}}}
    return {{"step": {{"type": "done", "data": {{"prefix": "steps: "}}}}}}
ns["HANDLERS"]["register/submit"] = register
ns["HANDLERS"]["initialize"] = with_steps
ns["main"]()
"#,
            bridge = crate::python_bridge()
        ),
    )
    .expect("wrapper");
    let config = crate::config_for_echo(
        &server,
        dir.path(),
        &["echo.localhost"],
        crate::Echo::External,
    )
    .replace(&crate::python_bridge(), &wrapper.display().to_string());
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = server.client("alice").await;

    let first = alice.iq("s1", &command("s1", "action='execute'/>")).await;
    let step = first.children().next().expect("command");
    let session = step.attr("sessionid").expect("session").to_owned();
    let second = alice
        .iq(
            "s2",
            &command(
                "s2",
                &submit(&session, "<field var='prefix'><value>x</value></field>"),
            ),
        )
        .await;
    let step = second.children().next().expect("command");
    assert_eq!(step.attr("status"), Some("executing"), "{second:?}");
    let session = step.attr("sessionid").expect("session").to_owned();
    assert!(
        session.contains("/step/") && session.ends_with(".code"),
        "{session}"
    );
    // A step the bridge did not offer (the client may write any session id) is refused.
    let forged = session.replace(".code", ".wait");
    let refused = alice.iq("s2b", &command("s2b", &submit(&forged, ""))).await;
    assert_eq!(
        error_condition(&refused).as_deref(),
        Some("not-acceptable"),
        "{refused:?}"
    );
    assert!(
        format!("{refused:?}").contains("not offered to you"),
        "{refused:?}"
    );
    assert!(
        format!("{second:?}").contains("Enter the code: 42 (asked 1)"),
        "{second:?}"
    );

    let wrong = alice
        .iq(
            "s3",
            &command(
                "s3",
                &submit(&session, "<field var='code'><value>41</value></field>"),
            ),
        )
        .await;
    assert_eq!(
        error_condition(&wrong).as_deref(),
        Some("not-acceptable"),
        "{wrong:?}"
    );
    assert!(format!("{wrong:?}").contains("wrong code"), "{wrong:?}");
    let third = alice
        .iq(
            "s4",
            &command(
                "s4",
                &submit(&session, "<field var='code'><value>42</value></field>"),
            ),
        )
        .await;
    let step = third.children().next().expect("command");
    let session = step.attr("sessionid").expect("session").to_owned();
    assert!(session.ends_with(".wait"), "{third:?}");
    assert!(format!("{third:?}").contains("press Complete"), "{third:?}");
    let done = alice.iq("s5", &command("s5", &submit(&session, ""))).await;
    let step = done.children().next().expect("command");
    assert_eq!(step.attr("status"), Some("completed"), "{done:?}");

    alice
        .send("<message type='chat' to='bob@echo.localhost' id='m1'><body>hi</body></message>")
        .await;
    alice
        .expect(Duration::from_secs(10), |s| {
            body(s).as_deref() == Some("steps: hi")
        })
        .await;

    // XEP-0077 has one form: the user is sent to the command, and the bridge is not asked
    // (a real one might have sent a code).
    let refused = alice
        .iq("r1", &crate::register_set("echo.localhost", "r1", "y"))
        .await;
    assert_eq!(error_condition(&refused).as_deref(), Some("not-acceptable"));
    assert!(
        format!("{refused:?}").contains("several steps"),
        "{refused:?}"
    );
    let first = alice.iq("s6", &command("s6", "action='execute'/>")).await;
    let session = first
        .children()
        .next()
        .and_then(|step| step.attr("sessionid"))
        .expect("session")
        .to_owned();
    let again = alice
        .iq(
            "s7",
            &command(
                "s7",
                &submit(&session, "<field var='prefix'><value>x</value></field>"),
            ),
        )
        .await;
    assert!(format!("{again:?}").contains("(asked 2)"), "{again:?}");
}

/// A command the bridge declared with `current`: its form shows what the bridge says is set
/// (`command/current`), and run it changes what the contacts reply. The Python reference
/// bridge's `prefix`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_form_shows_what_the_bridge_says_is_set() {
    const COMMANDS: &str = "http://jabber.org/protocol/commands";
    let server = XmppServer::start(ServerKind::Prosody, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = crate::config_for_echo(
        &server,
        dir.path(),
        &["echo.localhost"],
        crate::Echo::External,
    );
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = crate::registered(&server, "alice", &["echo.localhost"]).await;
    let mut shown = Vec::new();
    for (round, prefix) in [(1, "bot: "), (2, "again: ")] {
        let form = alice
            .iq(
                &format!("p{round}"),
                &format!(
                    "<iq type='set' to='echo.localhost' id='p{round}'><command \
                     xmlns='{COMMANDS}' node='prefix' action='execute'/></iq>"
                ),
            )
            .await;
        let command = form.get_child("command", COMMANDS).expect("a command");
        let value = command
            .get_child("x", "jabber:x:data")
            .and_then(|x| {
                x.children()
                    .find(|field| field.attr("var") == Some("prefix"))
            })
            .and_then(|field| field.get_child("value", "jabber:x:data"))
            .map(|value| value.text());
        shown.push(value);
        let session = command.attr("sessionid").unwrap_or_default();
        let done = alice
            .iq(
                &format!("q{round}"),
                &format!(
                    "<iq type='set' to='echo.localhost' id='q{round}'><command \
                     xmlns='{COMMANDS}' node='prefix' sessionid='{session}' \
                     action='complete'><x xmlns='jabber:x:data' type='submit'>\
                     <field var='prefix'><value>{prefix}</value></field></x></command></iq>"
                ),
            )
            .await;
        assert_eq!(done.attr("type"), Some("result"), "{done:?}");
    }
    // The configured prefix first, then the one set.
    assert_eq!(
        shown,
        [
            Some("echo.localhost says: ".to_owned()),
            Some("bot: ".to_owned())
        ]
    );
    alice
        .send("<message type='chat' to='bob@echo.localhost' id='m1'><body>hi</body></message>")
        .await;
    let reply = alice
        .expect(WAIT, |stanza| {
            body(stanza).is_some_and(|text| text.ends_with("hi"))
        })
        .await;
    assert_eq!(body(&reply).as_deref(), Some("again: hi"));
}
