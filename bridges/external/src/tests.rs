//! The external bridge against real child processes: the Python reference bridge, and small
//! shell scripts that misbehave.

use std::time::{Duration, SystemTime};

use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{
    Bridge, ForeignId, FormValues, JoinRequest, MessageId, OutgoingMessage, RoomEvent, RoomId,
    RoomPost, SendError, SendOutcome, Shutdown, UserJid,
};
use serde_json::json;

use crate::child::{Line, read_line};
use crate::protocol::{Frame, FrameError};

const WAIT: Duration = Duration::from_secs(10);

fn reference_bridge() -> String {
    format!(
        "{}/../../examples/external-python/bridge.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

struct Running {
    bridge: std::sync::Arc<dyn Bridge>,
    core: TestCore,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

async fn run(settings: serde_json::Value) -> Running {
    let core = TestCore::new("py.localhost");
    let bridge = core.build(crate::build, settings).expect("builds");
    let (stop, shutdown) = Shutdown::new();
    let running = bridge.clone();
    let task = tokio::spawn(async move {
        let _ = running.run(shutdown).await;
    });
    let deadline = tokio::time::Instant::now() + WAIT;
    while bridge.health().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {:?}",
            bridge.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Running {
        bridge,
        core,
        stop,
        task,
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("stops within the grace period")
            .expect("no panic");
    }
}

fn message(id: &str, text: &str) -> OutgoingMessage {
    OutgoingMessage {
        id: MessageId::new(id),
        user: UserJid::new("alice@localhost"),
        contact: ForeignId::new("bob"),
        text: text.into(),
        attachments: Vec::new(),
        accepted_at: SystemTime::now(),
        registration: None,
        replaces: None,
        room: None,
    }
}

fn script(dir: &tempfile::TempDir, name: &str, body: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, body).expect("write the script");
    path.display().to_string()
}

#[tokio::test]
async fn the_reference_bridge_echoes_registers_and_hosts_a_room() {
    let running = run(json!({
        "command": ["python3", reference_bridge()],
        "settings": {"prefix": "py says: "},
    }))
    .await;
    let bridge = &running.bridge;
    let info = bridge.info();
    assert_eq!(info.name, "Python echo");
    assert_eq!(info.gateway_type, "echo");
    assert!(info.capabilities.rooms && info.capabilities.corrections);
    assert_eq!(info.registration.expect("a form").fields[0].var, "prefix");
    assert_eq!(bridge.parse_room("#lobby"), Some(RoomId::new("#lobby")));
    assert_eq!(bridge.parse_room("lobby"), None);

    let sent = bridge.send_message(message("m1", "hello")).await;
    assert_eq!(sent, Ok(SendOutcome::SentAs(MessageId::new("echo-m1"))));
    let echoed = running.core.next_delivered(WAIT).await.expect("an echo");
    assert_eq!(echoed.text, "py says: hello");
    assert_eq!(echoed.contact, ForeignId::new("bob"));
    assert_eq!(echoed.user, UserJid::new("alice@localhost"));

    // A typed refusal reaches the core as a rejection with the bridge's words.
    let mut values = FormValues::default();
    values.0.insert("prefix".into(), "x".repeat(40));
    let refused = bridge
        .register(&UserJid::new("alice@localhost"), &values)
        .await
        .expect_err("too long");
    assert!(refused.to_string().contains("at most 32"), "{refused}");
    values.0.insert("prefix".into(), "mine: ".into());
    let data = bridge
        .register(&UserJid::new("alice@localhost"), &values)
        .await
        .expect("registers");
    assert_eq!(data.as_json(), &json!({"prefix": "mine: "}));

    let joined = bridge
        .join_room(JoinRequest {
            user: UserJid::new("alice@localhost"),
            room: RoomId::new("#lobby"),
            nick: "alice".into(),
            password: None,
            history: Default::default(),
            registration: None,
        })
        .await
        .expect("joins");
    let nicks: Vec<_> = joined.occupants.iter().map(|o| o.nick.as_str()).collect();
    assert_eq!(nicks, ["echo", "alice"]);
    let posted = bridge
        .send_room_message(RoomPost {
            id: MessageId::new("p1"),
            user: UserJid::new("alice@localhost"),
            room: RoomId::new("#lobby"),
            text: "hi room".into(),
            registration: None,
            replaces: None,
        })
        .await;
    assert_eq!(posted, Ok(jabbridge_sdk::Posted::EchoFollows));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = running.core.room_events();
        let texts: Vec<_> = events
            .iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Message(message) => Some((message.nick.clone(), message.text.clone())),
                _ => None,
            })
            .collect();
        if texts.len() == 2 {
            assert_eq!(texts[0], ("alice".into(), "hi room".into()));
            assert_eq!(texts[1], ("echo".into(), "hi room".into()));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{events:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn a_crashing_child_is_restarted_and_the_message_retried_gets_through() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Dies on its first message/send (attempt 1), then behaves: the reference bridge.
    let crasher = script(
        &dir,
        "crash.py",
        &format!(
            r#"import json, runpy, sys
real_stdin = sys.stdin
def tripwire():
    for line in real_stdin:
        if '"message/send"' in line and json.loads(line)["params"]["attempt"] == 1:
            sys.exit(3)
        yield line
sys.stdin = tripwire()
runpy.run_path({path:?}, run_name="__main__")
"#,
            path = reference_bridge()
        ),
    );
    let running = run(json!({"command": ["python3", crasher]})).await;
    let first = running.bridge.send_message(message("c1", "one")).await;
    assert!(
        matches!(first, Err(SendError::Transient { .. })),
        "a crash mid-call is worth a retry: {first:?}"
    );
    // The core's outbox retries: the same txn_id, attempt 2, once the process is back.
    let second = running.bridge.send_message(message("c1", "one")).await;
    assert_eq!(second, Ok(SendOutcome::SentAs(MessageId::new("echo-c1"))));
    let echoed = running.core.next_delivered(WAIT).await.expect("an echo");
    assert_eq!(echoed.text, "one");
    running.stop().await;
}

#[tokio::test]
async fn a_child_answering_twice_or_with_garbage_is_survived() {
    let dir = tempfile::tempdir().expect("temp dir");
    // A shell bridge: answers initialize, then every request twice, with noise around.
    let noisy = script(
        &dir,
        "noisy.sh",
        r#"
while IFS= read -r line; do
  id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
  case "$line" in
    *'"initialize"'*) printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocol\":{\"version\":1},\"bridge\":{\"name\":\"Noisy\",\"gateway_type\":\"echo\"}}}" ;;
    *'"message/send"'*)
      echo 'this is not json'
      echo '[1,2,3]'
      head -c 9000 /dev/zero | tr '\0' 'x'; echo
      printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"status\":\"sent\",\"id\":\"n1\"}}"
      printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"status\":\"sent\",\"id\":\"n2\"}}" ;;
    *'"id"'*) printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{}}" ;;
  esac
done
"#,
    );
    let running = run(json!({"command": ["sh", noisy], "max_message_bytes": 8192})).await;
    let sent = running.bridge.send_message(message("g1", "x")).await;
    assert_eq!(sent, Ok(SendOutcome::SentAs(MessageId::new("n1"))));
    let sent = running.bridge.send_message(message("g2", "x")).await;
    assert_eq!(sent, Ok(SendOutcome::SentAs(MessageId::new("n1"))));
    assert!(
        running.bridge.health().is_ok(),
        "noise below the limit is survived"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_hung_child_is_pinged_killed_and_restarted() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Answers the handshake, then reads nothing more; ignores SIGTERM.
    let hung = script(
        &dir,
        "hung.sh",
        r#"
trap '' TERM
IFS= read -r line
id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocol\":{\"version\":1},\"bridge\":{\"name\":\"Hung\",\"gateway_type\":\"echo\"}}}"
date +%s%N >> "$0.starts"
exec sleep 1000
"#,
    );
    let running = run(json!({
        "command": ["sh", hung.clone()],
        "ping_every": "200ms",
        "request_timeout": "300ms",
        "shutdown_grace": "200ms",
    }))
    .await;
    let sent = running.bridge.send_message(message("h1", "x")).await;
    assert!(matches!(sent, Err(SendError::Transient { .. })), "{sent:?}");
    let starts = format!("{hung}.starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_to_string(&starts)
            .unwrap_or_default()
            .lines()
            .count();
        if started >= 2 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    running.stop().await;
}

#[tokio::test]
async fn a_bridge_speaking_another_version_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().expect("temp dir");
    let future = script(
        &dir,
        "future.sh",
        r#"
IFS= read -r line
printf '%s\n' '{"jsonrpc":"2.0","id":1,"result":{"protocol":{"version":7},"bridge":{"name":"Future","gateway_type":"echo"}}}'
exec cat >/dev/null
"#,
    );
    let config = crate::ExternalConfig::parse(&jabbridge_sdk::Settings::new(
        json!({"command": ["sh", future]})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    ))
    .expect("config");
    let checks = crate::kit::check_setup(&config, "f.localhost", None).await;
    let outcome = &checks[0].outcome;
    assert!(
        outcome
            .as_ref()
            .is_err_and(|why| why.contains("speaks protocol 7")),
        "{checks:?}"
    );
}

#[test]
fn frames_are_sorted_and_bad_ones_named() {
    assert!(matches!(
        Frame::parse(br#"{"jsonrpc":"2.0","id":"x y","method":"ping"}"#),
        Ok(Frame::Request { .. })
    ));
    assert!(matches!(
        Frame::parse(br#"{"jsonrpc":"2.0","id":3,"result":null}"#),
        Ok(Frame::Response {
            outcome: Ok(serde_json::Value::Null),
            ..
        })
    ));
    assert!(matches!(
        Frame::parse(br#"{"jsonrpc":"2.0","method":"log","params":{}}"#),
        Ok(Frame::Notification { .. })
    ));
    assert!(matches!(
        Frame::parse(b"[1]"),
        Err(FrameError::Invalid { id: None, .. })
    ));
    assert!(matches!(
        Frame::parse(br#"{"id":4,"method":"x"}"#),
        Err(FrameError::Invalid { id: Some(_), .. })
    ));
    assert!(matches!(
        Frame::parse(b"{nope"),
        Err(FrameError::NotJson(_))
    ));
}

#[tokio::test]
async fn lines_are_bounded_whatever_the_child_writes() {
    let input = format!("short\r\n{}\nlast", "y".repeat(100));
    let mut reader = tokio::io::BufReader::with_capacity(16, input.as_bytes());
    let mut line = Vec::new();
    assert_eq!(
        read_line(&mut reader, &mut line, 10).await.ok(),
        Some(Line::Whole)
    );
    assert_eq!(line, b"short\r");
    line.clear();
    assert_eq!(
        read_line(&mut reader, &mut line, 10).await.ok(),
        Some(Line::Oversized)
    );
    assert_eq!(line.len(), 10);
    line.clear();
    assert_eq!(
        read_line(&mut reader, &mut line, 10).await.ok(),
        Some(Line::Whole)
    );
    assert_eq!(line, b"last");
    line.clear();
    assert_eq!(
        read_line(&mut reader, &mut line, 10).await.ok(),
        Some(Line::Eof)
    );
}
