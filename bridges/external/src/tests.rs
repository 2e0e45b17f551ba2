//! The external bridge against real child processes: the Python reference bridge, and small
//! shell scripts that misbehave.

use std::time::{Duration, SystemTime};

use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{
    Bridge, ForeignId, FormValues, JoinRequest, MessageId, OutgoingMessage, RoomActionError,
    RoomEvent, RoomId, RoomPost, SendError, SendOutcome, Shutdown, UserJid,
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

/// Waits until the script that appends a line to `starts` each time it starts was started
/// twice: the supervisor restarted it.
async fn restarted(starts: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let started = std::fs::read_to_string(starts)
            .unwrap_or_default()
            .lines()
            .count();
        if started >= 2 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never restarted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

    // "sent": the receipt waits for a delivery report about the bridge's id.
    let sent = bridge.send_message(message("m1", "hello")).await;
    assert_eq!(
        sent,
        Ok(SendOutcome::ReportFollows(MessageId::new(
            "echo-alice@localhost m1"
        )))
    );
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
    // A ping to the bot is answered (`contact/ping`); to nobody, with the bridge's refusal.
    let alice = UserJid::new("alice@localhost");
    let lobby = RoomId::new("#lobby");
    let bot = ForeignId::new("echo");
    assert_eq!(
        bridge.ping_contact(&alice, &bot, Some(&lobby)).await,
        Ok(())
    );
    let nobody = ForeignId::new("nobody");
    assert!(matches!(
        bridge.ping_contact(&alice, &nobody, Some(&lobby)).await,
        Err(RoomActionError::NoSuchOccupant(_))
    ));
    let posted = bridge
        .send_room_message(RoomPost {
            id: MessageId::new("p1"),
            user: UserJid::new("alice@localhost"),
            room: RoomId::new("#lobby"),
            text: "hi room".into(),
            registration: None,
            replaces: None,
            reply_to: None,
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

    // The room's history: the latest two, then those before the second of them.
    let history = |before: Option<(MessageId, std::time::SystemTime)>, limit: u32| {
        bridge.room_history(jabbridge_sdk::HistoryRequest {
            user: UserJid::new("alice@localhost"),
            room: RoomId::new("#lobby"),
            before,
            limit,
        })
    };
    let latest = history(None, 2).await.expect("history");
    let texts: Vec<&str> = latest.iter().map(|line| line.text.as_str()).collect();
    assert_eq!(texts, ["long ago 3", "long ago 4"]);
    assert!(latest.iter().all(|line| line.nick == "echo"));
    let second = latest[1].timestamp.expect("a time");
    let older = history(Some((latest[1].foreign_id.clone(), second)), 10)
        .await
        .expect("history");
    let texts: Vec<&str> = older.iter().map(|line| line.text.as_str()).collect();
    assert_eq!(
        texts,
        ["long ago 0", "long ago 1", "long ago 2", "long ago 3"]
    );

    // Alice shows away in the room, then back: the pretend network shows her so.
    let alice = UserJid::new("alice@localhost");
    let lobby = RoomId::new("#lobby");
    bridge
        .room_presence(&alice, &lobby, Some("at lunch".into()))
        .await;
    bridge.room_presence(&alice, &lobby, None).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let aways: Vec<Option<String>> = running
            .core
            .room_events()
            .into_iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Occupant(occupant) if occupant.nick == "alice" => Some(occupant.away),
                _ => None,
            })
            .collect();
        // Her join, then away, then back.
        if aways.len() == 3 {
            assert_eq!(aways, [None, Some("at lunch".into()), None]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{aways:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Alice invites carol, who comes at once; twice is a conflict.
    let carol = ForeignId::new("carol");
    bridge
        .invite(&alice, &lobby, &carol)
        .await
        .expect("invited");
    assert!(matches!(
        bridge.invite(&alice, &lobby, &carol).await,
        Err(RoomActionError::Forbidden(_))
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while !running.core.room_events().iter().any(
        |(_, event)| matches!(event, RoomEvent::Occupant(occupant) if occupant.nick == "carol"),
    ) {
        assert!(tokio::time::Instant::now() < deadline, "carol did not come");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What software a contact, the room's bot, or nobody uses.
    let (bob, echo, nobody) = (
        ForeignId::new("bob"),
        ForeignId::new("echo"),
        ForeignId::new("nobody"),
    );
    assert_eq!(
        bridge.contact_version(&alice, &bob, None).await.as_deref(),
        Ok("Python echo contact 1.0")
    );
    assert_eq!(
        (bridge.contact_version(&alice, &echo, Some(&lobby)).await).as_deref(),
        Ok("Python echo bot 1.0")
    );
    assert!(matches!(
        bridge.contact_version(&alice, &nobody, Some(&lobby)).await,
        Err(RoomActionError::NoSuchOccupant(_))
    ));
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
    assert_eq!(
        second,
        Ok(SendOutcome::ReportFollows(MessageId::new(
            "echo-alice@localhost c1"
        )))
    );
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
    assert_eq!(sent, Ok(SendOutcome::ReportFollows(MessageId::new("n1"))));
    // g1's second answer is noise, not g2's answer.
    let sent = running.bridge.send_message(message("g2", "x")).await;
    assert_eq!(sent, Ok(SendOutcome::ReportFollows(MessageId::new("n1"))));
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
    restarted(&starts).await;
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

/// Each schema example read into the Rust type of its method, and written back unchanged.
fn round_trip(method: &str, part: &str, value: &serde_json::Value) {
    use crate::protocol::*;
    fn check<T: serde::de::DeserializeOwned + serde::Serialize>(
        method: &str,
        part: &str,
        value: &serde_json::Value,
    ) {
        let read: T = serde_json::from_value(value.clone())
            .unwrap_or_else(|error| panic!("{method} {part}: {error}\n{value}"));
        let written = serde_json::to_value(&read).expect("serialises");
        assert_eq!(&written, value, "{method} {part} does not round-trip");
    }
    match (method, part) {
        ("initialize", "params") => check::<InitializeParams>(method, part, value),
        ("initialize", "result") => check::<InitializeResult>(method, part, value),
        ("shutdown", "params") => check::<ShutdownParams>(method, part, value),
        ("shutdown", "result") => assert!(value.is_null(), "shutdown answers null"),
        ("$/cancel", "params") => check::<CancelParams>(method, part, value),
        ("register/submit", "params") => check::<RegisterParams>(method, part, value),
        ("register/submit", "result") => check::<RegisterResult>(method, part, value),
        ("session/start", "params") => check::<SessionStartParams>(method, part, value),
        ("session/stop", "params") => check::<SessionStopParams>(method, part, value),
        ("session/state", "params") => check::<SessionStateParams>(method, part, value),
        ("presence/user", "params") => check::<PresenceParams>(method, part, value),
        ("room/history", "params") => {
            check::<crate::protocol::RoomHistoryParams>(method, part, value)
        }
        ("room/history", "result") => {
            check::<crate::protocol::RoomHistoryResult>(method, part, value)
        }
        ("room/presence", "params") => {
            check::<crate::protocol::RoomPresenceParams>(method, part, value)
        }
        ("contact/subscribe", "params") => check::<SubscribeParams>(method, part, value),
        ("contact/subscribe", "result") => check::<SubscribeResult>(method, part, value),
        ("contact/version", "params") => {
            check::<crate::protocol::VersionParams>(method, part, value)
        }
        ("contact/version", "result") => {
            check::<crate::protocol::VersionResult>(method, part, value)
        }
        ("contact/ping", "params") => check::<VersionParams>(method, part, value),
        ("chat/typing", "params") => check::<TypingParams>(method, part, value),
        ("room/typing", "params") => check::<RoomTypingParams>(method, part, value),
        ("message/send", "params") => check::<SendParams>(method, part, value),
        ("message/send", "result") => check::<SendResult>(method, part, value),
        ("message/received", "params") => check::<ReceivedParams>(method, part, value),
        ("delivery/report", "params") => check::<ReportParams>(method, part, value),
        ("room/join", "params") => check::<JoinParams>(method, part, value),
        ("room/join", "result") => check::<JoinResult>(method, part, value),
        ("room/leave", "params") => check::<LeaveParams>(method, part, value),
        ("room/send", "params") => check::<RoomSendParams>(method, part, value),
        ("room/send", "result") => check::<RoomSendResult>(method, part, value),
        ("rooms/list", "params") => check::<UserParams>(method, part, value),
        ("rooms/list", "result") => check::<RoomsResult>(method, part, value),
        ("room/moderate", "params") => check::<ModerateParams>(method, part, value),
        ("room/invite", "params") => check::<InviteParams>(method, part, value),
        ("room/nick", "params") => check::<NickParams>(method, part, value),
        ("room/subject", "params") => check::<SubjectParams>(method, part, value),
        ("room/retract", "params") => check::<RetractParams>(method, part, value),
        ("room/react", "params") => check::<ReactParams>(method, part, value),
        ("room/event", "params") => check::<RoomEventParams>(method, part, value),
        ("command/run", "params") => check::<CommandParams>(method, part, value),
        ("command/run", "result") => check::<CommandResultWire>(method, part, value),
        ("command/current", "params") => check::<CommandParams>(method, part, value),
        ("command/current", "result") => check::<CurrentResult>(method, part, value),
        ("http/request", "params") => check::<HttpRequestParams>(method, part, value),
        ("http/request", "result") => check::<HttpResponseWire>(method, part, value),
        ("setup/check", "result") => check::<SetupResult>(method, part, value),
        ("state/load", "params") => check::<KeyParams>(method, part, value),
        ("state/load", "result") => check::<ValueResult>(method, part, value),
        ("state/save", "params") => check::<SaveParams>(method, part, value),
        ("owner/get", "params") => check::<IdentityParams>(method, part, value),
        ("owner/get", "result") => check::<OwnerResult>(method, part, value),
        ("owner/set", "params") => check::<SetOwnerParams>(method, part, value),
        ("identities/list", "params") => check::<UserParams>(method, part, value),
        ("identities/list", "result") => check::<IdentitiesResult>(method, part, value),
        ("registration/get", "params") => check::<UserParams>(method, part, value),
        ("registration/get", "result") => check::<RegistrationResult>(method, part, value),
        ("log", "params") => check::<LogParams>(method, part, value),
        // Methods that carry nothing.
        (_, _) => check::<crate::protocol::Empty>(method, part, value),
    }
}

fn schema() -> serde_json::Value {
    let path = format!(
        "{}/../../docs/bridge-protocol/v1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).expect("docs/bridge-protocol/v1.json");
    serde_json::from_str(&text).expect("the schema is JSON")
}

#[test]
fn the_schema_lists_every_method_and_its_examples_round_trip() {
    use crate::protocol::{to_bridge, to_core};
    let schema = schema();
    let methods = schema["x-methods"].as_object().expect("x-methods");
    let mut ours: Vec<&str> = to_bridge::ALL.iter().chain(to_core::ALL).copied().collect();
    ours.sort_unstable();
    // `chat/typing` goes both ways.
    ours.dedup();
    let mut theirs: Vec<&str> = methods.keys().map(String::as_str).collect();
    theirs.sort_unstable();
    assert_eq!(ours, theirs, "the Rust catalogue and the schema's differ");
    let mut examples = 0;
    for (name, method) in methods {
        let direction = method["direction"].as_str().expect("direction");
        let rust_direction = match (
            to_bridge::ALL.contains(&name.as_str()),
            to_core::ALL.contains(&name.as_str()),
        ) {
            _ if name == to_bridge::PING => "both",
            (true, false) => "core-to-bridge",
            (false, true) => "bridge-to-core",
            _ => "both",
        };
        assert_eq!(direction, rust_direction, "{name}");
        for example in method["examples"].as_array().expect("examples") {
            round_trip(name, "params", &example["params"]);
            if let Some(result) = example.get("result") {
                round_trip(name, "result", result);
            }
            examples += 1;
        }
        assert!(
            !method["examples"].as_array().is_some_and(Vec::is_empty),
            "{name} has no example"
        );
    }
    assert!(examples >= methods.len());
    // The prose document has a section, with examples, for each.
    let prose = std::fs::read_to_string(format!(
        "{}/../../docs/bridge-protocol.md",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("docs/bridge-protocol.md");
    for name in methods.keys() {
        assert!(
            prose.contains(&format!("#### `{name}`")),
            "{name} is not documented"
        );
    }
}

#[test]
fn the_schema_is_valid_and_every_example_validates_against_it() {
    let path = format!(
        "{}/../../docs/bridge-protocol/v1.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let script = r#"
import json, sys
try:
    import jsonschema
except ImportError:
    sys.exit("python3-jsonschema is missing (scripts/test installs it)")
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
count = 0
for name, method in schema["x-methods"].items():
    for example in method["examples"]:
        for part in ("params", "result"):
            if part in method and part in example:
                sub = dict(method[part]); sub["$defs"] = schema["$defs"]
                jsonschema.Draft202012Validator(sub).validate(example[part])
                count += 1
        frame = {"jsonrpc": "2.0", "method": name, "params": example["params"]}
        if method["kind"] == "request":
            frame["id"] = 1
        jsonschema.Draft202012Validator(schema).validate(frame)
print(count)
"#;
    let output = std::process::Command::new("/usr/bin/python3")
        .args(["-c", script, &path])
        .output()
        .expect("python3 runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn a_child_flooding_garbage_is_restarted() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Answers the handshake, then writes nothing but garbage.
    let flood = script(
        &dir,
        "flood.sh",
        r#"
IFS= read -r line
id=$(printf '%s' "$line" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
printf '%s\n' "{\"jsonrpc\":\"2.0\",\"id\":$id,\"result\":{\"protocol\":{\"version\":1},\"bridge\":{\"name\":\"Flood\",\"gateway_type\":\"echo\"}}}"
date +%s%N >> "$0.starts"
while :; do echo 'garbage garbage garbage'; sleep 0.01; done
"#,
    );
    let running = run(json!({
        "command": ["sh", flood.clone()],
        "noise_limit": 20,
        "ping_every": "200ms",
        "shutdown_grace": "200ms",
    }))
    .await;
    let starts = format!("{flood}.starts");
    restarted(&starts).await;
    running.stop().await;
}

#[tokio::test]
async fn http_requests_are_checked_by_the_core_and_forwarded_with_the_verdict() {
    use jabbridge_sdk::http::{Request, StatusCode};
    let dir = tempfile::tempdir().expect("temp dir");
    // The reference bridge with an HTTP route that says what it was told.
    let wrapper = script(
        &dir,
        "http.py",
        &format!(
            r#"import json, runpy
ns = runpy.run_path({path:?})
initialize = ns["HANDLERS"]["initialize"]
def with_http(p):
    answer = initialize(p)
    answer["capabilities"]["http"] = True
    return answer
def http(p):
    return {{"status": 202, "headers": {{"content-type": "application/json"}},
             "body_text": json.dumps({{"verified": p.get("verified"), "body": p.get("body_text"),
                                      "path": p["path"], "authorization": "authorization" in p["headers"]}})}}
ns["HANDLERS"]["initialize"] = with_http
ns["HANDLERS"]["http/request"] = http
ns["main"]()
"#,
            path = reference_bridge()
        ),
    );
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let running = run(json!({
        "command": ["python3", wrapper],
        "http_token": "t0ken",
        "http_signing_secret": secret,
    }))
    .await;
    let post = |headers: &[(&str, String)], body: &str| {
        let mut request = Request::builder().method("POST").uri("/inbound");
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let request: jabbridge_sdk::HttpRequest =
            request.body(body.to_owned().into()).expect("request");
        request
    };
    let body = r#"{"from":"bob"}"#;
    let answer = running.bridge.handle_http(post(&[], body)).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);

    let signer = standardwebhooks::Webhook::new(secret).expect("key");
    let now = i64::try_from(
        SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs(),
    )
    .expect("seconds");
    let signature = signer.sign("msg_1", now, body.as_bytes()).expect("signs");
    let signed = |signature: &str| {
        vec![
            ("webhook-id", "msg_1".to_owned()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", signature.to_owned()),
        ]
    };
    let forged = running
        .bridge
        .handle_http(post(
            &signed("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
            body,
        ))
        .await;
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let answer = running
        .bridge
        .handle_http(post(&signed(&signature), body))
        .await;
    assert_eq!(answer.status(), StatusCode::ACCEPTED);
    let seen: serde_json::Value = serde_json::from_slice(answer.body()).expect("JSON");
    assert_eq!(
        seen["verified"],
        json!({"scheme": "standard-webhooks", "id": "msg_1"})
    );
    assert_eq!(seen["body"], body);
    assert_eq!(seen["path"], "/inbound");

    let bearer = [("authorization", "Bearer t0ken".to_owned())];
    let answer = running.bridge.handle_http(post(&bearer, body)).await;
    let seen: serde_json::Value = serde_json::from_slice(answer.body()).expect("JSON");
    assert_eq!(seen["verified"], json!({"scheme": "bearer"}));
    assert_eq!(seen["authorization"], false, "the token stays in the core");
    let wrong = [("authorization", "Bearer nope".to_owned())];
    let answer = running.bridge.handle_http(post(&wrong, body)).await;
    assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    running.stop().await;
}
