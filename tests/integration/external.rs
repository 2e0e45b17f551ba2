//! External bridges through a real Prosody: the Python reference bridge killed with a user
//! in a room (the message sent meanwhile arrives, the room is joined again), and a bridge
//! whose process never starts, next to an in-process one that keeps working.

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
