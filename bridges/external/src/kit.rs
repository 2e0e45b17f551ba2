//! Playing the core against a bridge process without an XMPP server or a database:
//! `jabbridge doctor`'s check of an external bridge ([`check_setup`]), and the conformance
//! kit, `jabbridge bridge-test` ([`run_checks`], [`render`]): checks with stable ids, run against
//! a real process, each MUST or SHOULD.

use std::time::Duration;

use jabbridge_sdk::Checked;
use serde_json::Value;

use crate::child::{self, CallError};
use crate::protocol::{self, to_bridge};
use crate::{ExternalConfig, accept_handshake, initialize_params};

/// `jabbridge doctor`: starts the process in `check` mode, runs its `setup/check`, stops it.
pub async fn check_setup(
    config: &ExternalConfig,
    domain: &str,
    public_url: Option<&str>,
) -> Vec<Checked> {
    let what = format!("bridge process {:?}", config.command);
    // Nothing the process asks of the core is answered in check mode.
    let noise = child::NoiseLimit(config.noise_limit);
    let started = match child::start(&config.spawn(), config.limits(), noise, || {}, |_, _| {}) {
        Ok(started) => started,
        Err(error) => {
            return vec![Checked {
                what,
                outcome: Err(format!(
                    "does not start: {error} (check `command` and `cwd`)"
                )),
            }];
        }
    };
    let child::Started {
        connection,
        mut process,
    } = started;
    let params = initialize_params(config, domain, public_url, "check");
    let answer = connection
        .call::<_, protocol::InitializeResult>(to_bridge::INITIALIZE, &params, config.start_timeout)
        .await
        .map_err(|error| describe_refusal(&error))
        .and_then(accept_handshake);
    let mut checks = Vec::new();
    match answer {
        Ok(handshake) => {
            checks.push(Checked {
                what,
                outcome: Ok(format!(
                    "{} {} speaks protocol {}",
                    handshake.answer.bridge.name,
                    handshake.answer.bridge.version.as_deref().unwrap_or(""),
                    handshake.answer.protocol.version
                )),
            });
            connection.mark_initialized();
            connection.notify(to_bridge::INITIALIZED, &protocol::Empty {});
            let own = connection
                .call::<_, protocol::SetupResult>(
                    to_bridge::SETUP_CHECK,
                    &protocol::Empty {},
                    config.request_timeout,
                )
                .await;
            match own {
                Ok(result) => checks.extend(result.checks.into_iter().map(|check| Checked {
                    what: check.what,
                    outcome: if check.ok {
                        Ok(check.detail)
                    } else {
                        Err(check.detail)
                    },
                })),
                Err(CallError::Refused(error))
                    if error.code == protocol::codes::METHOD_NOT_FOUND => {}
                Err(error) => checks.push(Checked {
                    what: "the bridge's own checks (setup/check)".into(),
                    outcome: Err(error.to_string()),
                }),
            }
        }
        Err(why) => checks.push(Checked {
            what,
            outcome: Err(why),
        }),
    }
    child::stop(&connection, &mut process, config.shutdown_grace, "stop").await;
    checks
}

/// A refused `initialize` in words, naming the config keys the bridge names
/// (`data.errors: [{key, message}]`).
fn describe_refusal(error: &CallError) -> String {
    let CallError::Refused(refusal) = error else {
        return error.to_string();
    };
    let keys: Vec<String> = serde_json::to_value(&refusal.data)
        .ok()
        .and_then(|data| data.get("errors").cloned())
        .and_then(|errors| errors.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|error| {
            Some(format!(
                "settings.{}: {}",
                error.get("key")?.as_str()?,
                error
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("wrong")
            ))
        })
        .collect();
    if keys.is_empty() {
        refusal.text().to_owned()
    } else {
        keys.join("; ")
    }
}

/// How important a check is: a failed MUST fails the run; a failed SHOULD is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Required.
    Must,
    /// Recommended.
    Should,
}

/// What became of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// It held.
    Pass,
    /// It did not.
    Fail,
    /// It does not apply (the bridge does not declare the feature).
    Skip,
}

/// One check's outcome.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Its stable id, e.g. `JB-LIFE-001`.
    pub id: &'static str,
    /// MUST or SHOULD.
    pub level: Level,
    /// What it checks.
    pub title: &'static str,
    /// Pass, fail or skip.
    pub verdict: Verdict,
    /// What was seen.
    pub detail: String,
    /// Listed in `--expected-failures`.
    pub expected_failure: bool,
}

/// The checks, in the order they run: `(id, level, title)`.
pub const CHECKS: &[(&str, Level, &str)] = &[
    (
        "JB-LIFE-001",
        Level::Must,
        "answers initialize within 10 s with a valid result and an offered version",
    ),
    (
        "JB-LIFE-002",
        Level::Must,
        "offered only versions it does not speak: answers an error, then exits non-zero",
    ),
    (
        "JB-LIFE-003",
        Level::Should,
        "sends no request before `initialized`",
    ),
    ("JB-LIFE-004", Level::Must, "answers ping within 1 s"),
    (
        "JB-LIFE-005",
        Level::Must,
        "shutdown answered null within the deadline; exits 0 within 2 s of exit",
    ),
    (
        "JB-LIFE-006",
        Level::Must,
        "exits within 5 s when stdin reaches EOF",
    ),
    (
        "JB-FRAME-001",
        Level::Must,
        "every stdout line is one JSON-RPC 2.0 object (nothing else on stdout)",
    ),
    (
        "JB-FRAME-002",
        Level::Must,
        "echoes request ids exactly (strings, 2^53-1), one response each",
    ),
    (
        "JB-FRAME-003",
        Level::Must,
        "takes CRLF, empty lines, a 512 KiB line, and NUL, U+2028, emoji and RTL in strings",
    ),
    (
        "JB-FRAME-004",
        Level::Must,
        "unknown request: -32601; unknown notification and unknown fields: ignored",
    ),
    (
        "JB-FRAME-005",
        Level::Must,
        "survives garbage and 200 malformed requests, answering each request",
    ),
    (
        "JB-FRAME-006",
        Level::Should,
        "answers 20 pipelined requests",
    ),
    (
        "JB-ERR-001",
        Level::Must,
        "application errors are typed: a known RFC 6120 condition in data.condition",
    ),
    (
        "JB-REG-001",
        Level::Must,
        "register/submit: a done step, a next step with its step_id, or a typed refusal",
    ),
    (
        "JB-MSG-001",
        Level::Must,
        "message/send: `sent` or `report_follows`, or a typed error",
    ),
    (
        "JB-MSG-002",
        Level::Should,
        "the same txn_id sent again (attempt 2) gets the same answer",
    ),
    (
        "JB-MSG-003",
        Level::Must,
        "message/received events are valid: event_id, user, contact, text, RFC 3339 ts",
    ),
    (
        "JB-MSG-004",
        Level::Should,
        "a message/received the core failed (503, wait) is sent again with the same event_id",
    ),
    (
        "JB-GRP-001",
        Level::Must,
        "rooms: join answers the nick among the occupants; a post is answered and echoed as promised",
    ),
    (
        "JB-GRP-002",
        Level::Should,
        "rooms: a second user asking for a taken nick gets 409 conflict, or another nick",
    ),
    (
        "JB-SEC-001",
        Level::Must,
        "a secret in the config never appears on stdout or stderr",
    ),
    (
        "JB-ROB-001",
        Level::Should,
        "still answers ping within 5 s after a burst of 1,000 notifications",
    ),
];

const CONDITIONS: &[&str] = &[
    "bad-request",
    "conflict",
    "feature-not-implemented",
    "forbidden",
    "gone",
    "internal-server-error",
    "item-not-found",
    "jid-malformed",
    "not-acceptable",
    "not-allowed",
    "not-authorized",
    "policy-violation",
    "recipient-unavailable",
    "redirect",
    "registration-required",
    "remote-server-not-found",
    "remote-server-timeout",
    "resource-constraint",
    "service-unavailable",
    "subscription-required",
    "undefined-condition",
    "unexpected-request",
];

const CANARY_KEY: &str = "kit_canary";

/// The main session's checks take seconds; past this the bridge is stuck.
const SESSION_DEADLINE: Duration = Duration::from_secs(180);

/// What the kit saw on the bridge's stdout.
enum Seen {
    Frame(Value),
    Noise(String),
}

/// The bridge under test, driven line by line: the kit writes what it wants (malformed
/// included), reads everything, and answers the bridge's own requests as a core would.
struct Peer {
    process: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    lines: Vec<String>,
    noise: Vec<String>,
    requests: Vec<(String, Value)>,
    errors: Vec<Value>,
    next: u64,
    /// Answer the next message/received with a 503 (JB-MSG-004).
    fail_next_received: bool,
    /// Requests seen before `initialized` was sent (JB-LIFE-003).
    early_requests: usize,
    initialized: bool,
}

const MAX_LINE: usize = 16 * 1024 * 1024;

impl Peer {
    fn start(command: &[String]) -> std::io::Result<Self> {
        use std::process::Stdio;
        let (program, args) = command.split_first().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no command given")
        })?;
        let mut process = tokio::process::Command::new(program)
            .args(args)
            .env("JABBRIDGE_BRIDGE", "1")
            .env("JABBRIDGE_PROTOCOL", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.stderr.take(),
        ) else {
            return Err(std::io::Error::other("pipes not opened"));
        };
        let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = tokio::io::BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match child::read_line(&mut reader, &mut line, MAX_LINE).await {
                    Ok(child::Line::Eof) | Err(_) => return,
                    Ok(child::Line::Oversized) => {
                        let _ = tx.send(Seen::Noise("(a line over 16 MiB)".into()));
                    }
                    Ok(child::Line::Whole) => {
                        let text = String::from_utf8_lossy(&line)
                            .trim_end_matches('\r')
                            .to_owned();
                        let parsed = protocol::Frame::parse(text.as_bytes())
                            .ok()
                            .and_then(|_| serde_json::from_str::<Value>(&text).ok());
                        let _ = tx.send(match parsed {
                            Some(frame) => Seen::Frame(frame),
                            None => Seen::Noise(text),
                        });
                    }
                }
            }
        });
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stderr = stderr;
            let mut buffer = vec![0; 8192];
            while let Ok(read) = stderr.read(&mut buffer).await {
                if read == 0 {
                    return;
                }
                let mut log = sink
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if log.len() < 4 * 1024 * 1024 {
                    log.push_str(&String::from_utf8_lossy(&buffer[..read]));
                }
            }
        });
        Ok(Self {
            process,
            stdin: Some(stdin),
            seen,
            stderr: log,
            lines: Vec::new(),
            noise: Vec::new(),
            requests: Vec::new(),
            errors: Vec::new(),
            next: 1,
            fail_next_received: false,
            early_requests: 0,
            initialized: false,
        })
    }

    async fn write(&mut self, line: &str) -> bool {
        use tokio::io::AsyncWriteExt;
        let Some(stdin) = &mut self.stdin else {
            return false;
        };
        // A bridge that stops reading must not hang the kit.
        let written =
            async { stdin.write_all(line.as_bytes()).await.is_ok() && stdin.flush().await.is_ok() };
        tokio::time::timeout(Duration::from_secs(5), written)
            .await
            .unwrap_or(false)
    }

    async fn send(&mut self, frame: Value) -> bool {
        let line = frame.to_string() + "\n";
        self.write(&line).await
    }

    fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Sends a request; waits for its response (the whole frame).
    async fn call(&mut self, method: &str, params: Value, wait: Duration) -> Option<Value> {
        let id = Value::from(self.next);
        self.next += 1;
        self.call_with_id(id, method, params, wait).await
    }

    async fn call_with_id(
        &mut self,
        id: Value,
        method: &str,
        params: Value,
        wait: Duration,
    ) -> Option<Value> {
        let frame =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if !self.send(frame).await {
            return None;
        }
        self.response_to(&id, wait).await
    }

    async fn notify(&mut self, method: &str, params: Value) -> bool {
        self.send(serde_json::json!({"jsonrpc": "2.0", "method": method, "params": params}))
            .await
    }

    /// Reads until the response to `id`, answering the bridge's requests meanwhile.
    async fn response_to(&mut self, id: &Value, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let seen = tokio::time::timeout_at(deadline, self.seen.recv())
                .await
                .ok()??;
            if let Some(response) = self.take(seen).await
                && response.get("id") == Some(id)
            {
                return Some(response);
            }
        }
    }

    /// Reads for `wait`, answering the bridge's requests; returns the responses seen.
    async fn pump(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut responses = Vec::new();
        while let Ok(Some(seen)) = tokio::time::timeout_at(deadline, self.seen.recv()).await {
            if let Some(response) = self.take(seen).await {
                responses.push(response);
            }
        }
        responses
    }

    /// Records one line; answers a request from the bridge; returns a response.
    async fn take(&mut self, seen: Seen) -> Option<Value> {
        let frame = match seen {
            Seen::Noise(text) => {
                self.lines.push(text.clone());
                self.noise.push(text);
                return None;
            }
            Seen::Frame(frame) => frame,
        };
        self.lines.push(frame.to_string());
        if let Some(error) = frame.get("error") {
            self.errors.push(error.clone());
        }
        let Some(method) = frame.get("method").and_then(Value::as_str) else {
            return Some(frame);
        };
        let method = method.to_owned();
        let params = frame.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = frame.get("id").cloned() else {
            self.requests.push((method, params));
            return None;
        };
        if !self.initialized {
            self.early_requests += 1;
        }
        self.requests.push((method.clone(), params));
        let answer = if method == protocol::to_core::MESSAGE_RECEIVED && self.fail_next_received {
            self.fail_next_received = false;
            let mut error = protocol::RpcError::typed(
                503,
                "service-unavailable",
                "wait",
                "the kit fails this once",
            );
            if let Some(data) = &mut error.data {
                data.retry_after_ms = Some(200);
            }
            serde_json::json!({"jsonrpc": "2.0", "id": id, "error": error})
        } else {
            let result = match method.as_str() {
                protocol::to_core::STATE_LOAD => serde_json::json!({"value": null}),
                protocol::to_core::OWNER_GET => serde_json::json!({"user": null}),
                protocol::to_core::IDENTITIES_LIST => serde_json::json!({"identities": []}),
                protocol::to_core::REGISTRATION_GET => serde_json::json!({"registration": null}),
                _ => serde_json::json!({}),
            };
            serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})
        };
        self.send(answer).await;
        None
    }

    /// Waits up to `wait` for the process to exit.
    async fn exited(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                status = self.process.wait() => return status.ok(),
                seen = self.seen.recv() => match seen {
                    Some(seen) => { self.take(seen).await; }
                    None => {
                        return tokio::time::timeout_at(deadline, self.process.wait()).await.ok()?.ok();
                    }
                },
                () = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn initialize_for_kit(
    versions: &[u32],
    settings: &serde_json::Map<String, Value>,
    canary: &str,
) -> Value {
    let mut config = settings.clone();
    config.insert(CANARY_KEY.into(), Value::from(canary));
    serde_json::json!({
        "protocol": {"name": protocol::NAME, "versions": versions},
        "core": {"name": "jabbridge-bridge-test", "version": env!("CARGO_PKG_VERSION")},
        "domain": "bridge-test.localhost",
        "config": config,
        "limits": {"max_message_bytes": 1024 * 1024, "max_inflight": 64, "request_timeout_ms": 10000},
        "mode": "run",
    })
}

fn is_result(response: &Option<Value>) -> bool {
    response
        .as_ref()
        .is_some_and(|frame| frame.get("result").is_some())
}

fn error_of(response: &Option<Value>) -> Option<&Value> {
    response.as_ref().and_then(|frame| frame.get("error"))
}

/// Whether an error object is typed (a known condition) or a JSON-RPC protocol error.
fn typed(error: &Value) -> bool {
    let code = error.get("code").and_then(Value::as_i64);
    let condition = error
        .pointer("/data/condition")
        .and_then(Value::as_str)
        .is_some_and(|condition| CONDITIONS.contains(&condition));
    match code {
        Some(code) if (-32768..=-32000).contains(&code) => true,
        Some(_) => condition,
        None => false,
    }
}

struct Report {
    outcomes: Vec<Outcome>,
}

impl Report {
    fn set(&mut self, id: &str, verdict: Verdict, detail: impl Into<String>) {
        if let Some(outcome) = self.outcomes.iter_mut().find(|outcome| outcome.id == id) {
            outcome.verdict = verdict;
            outcome.detail = detail.into();
        }
    }

    fn check(&mut self, id: &str, passed: bool, detail: impl Into<String>) {
        self.set(
            id,
            if passed { Verdict::Pass } else { Verdict::Fail },
            detail,
        );
    }
}

/// Runs every check against the bridge started with `command`; `expected` lists check ids
/// known to fail.
pub async fn run_checks(
    command: &[String],
    settings: &serde_json::Map<String, Value>,
    expected: &[String],
) -> Vec<Outcome> {
    let mut report = Report {
        outcomes: CHECKS
            .iter()
            .map(|(id, level, title)| Outcome {
                id,
                level: *level,
                title,
                verdict: Verdict::Skip,
                detail: "not reached".into(),
                expected_failure: expected.iter().any(|known| known == id),
            })
            .collect(),
    };
    let session = main_session(command, settings, &mut report);
    if tokio::time::timeout(SESSION_DEADLINE, session)
        .await
        .is_err()
    {
        for outcome in &mut report.outcomes {
            if outcome.detail == "not reached" {
                outcome.verdict = Verdict::Fail;
                outcome.detail = format!(
                    "not reached: the bridge stopped answering (the kit gave up after {} s)",
                    SESSION_DEADLINE.as_secs()
                );
            }
        }
    }
    version_refusal(command, settings, &mut report).await;
    eof_exit(command, settings, &mut report).await;
    report.outcomes
}

async fn main_session(
    command: &[String],
    settings: &serde_json::Map<String, Value>,
    report: &mut Report,
) {
    let canary = format!("canary-{}", std::process::id() ^ 0x5eed_1e55);
    let mut peer = match Peer::start(command) {
        Ok(peer) => peer,
        Err(error) => {
            report.check("JB-LIFE-001", false, format!("does not start: {error}"));
            return;
        }
    };
    // JB-LIFE-001
    let answer = peer
        .call(
            to_bridge::INITIALIZE,
            initialize_for_kit(protocol::VERSIONS, settings, &canary),
            Duration::from_secs(10),
        )
        .await;
    let handshake = answer
        .as_ref()
        .and_then(|frame| frame.get("result"))
        .ok_or_else(|| format!("no result: {answer:?}"))
        .and_then(|result| {
            serde_json::from_value::<protocol::InitializeResult>(result.clone())
                .map_err(|error| format!("the result does not read: {error}"))
        })
        .and_then(accept_handshake);
    let handshake = match handshake {
        Ok(handshake) => {
            report.check(
                "JB-LIFE-001",
                true,
                format!(
                    "{} speaks protocol {}",
                    handshake.answer.bridge.name, handshake.answer.protocol.version
                ),
            );
            handshake
        }
        Err(why) => {
            report.check("JB-LIFE-001", false, why);
            return;
        }
    };
    // JB-LIFE-003: a moment before `initialized`, in which the bridge must not call us.
    peer.pump(Duration::from_millis(300)).await;
    report.check(
        "JB-LIFE-003",
        peer.early_requests == 0,
        format!("{} request(s) before initialized", peer.early_requests),
    );
    peer.initialized = true;
    peer.notify(to_bridge::INITIALIZED, serde_json::json!({}))
        .await;

    // JB-LIFE-004
    let started = std::time::Instant::now();
    let pong = peer
        .call(
            to_bridge::PING,
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await;
    let took = started.elapsed();
    report.check(
        "JB-LIFE-004",
        is_result(&pong) && took <= Duration::from_secs(1),
        format!("answered in {} ms", took.as_millis()),
    );

    // JB-FRAME-002
    let mut echoed = Vec::new();
    for id in [
        Value::from("x y"),
        Value::from(9_007_199_254_740_991_u64),
        Value::from(""),
    ] {
        let answer = peer
            .call_with_id(
                id.clone(),
                to_bridge::PING,
                serde_json::json!({}),
                Duration::from_secs(5),
            )
            .await;
        echoed.push(answer.is_some());
    }
    let extra = peer.pump(Duration::from_millis(200)).await;
    report.check(
        "JB-FRAME-002",
        echoed.iter().all(|ok| *ok) && extra.is_empty(),
        format!("ids echoed: {echoed:?}; {} extra response(s)", extra.len()),
    );

    // JB-FRAME-003
    let odd = "nul \u{0} line\nsep \u{2028} emoji 🦀 rtl שלום";
    let crlf = format!(
        "{}\r\n\n",
        serde_json::json!({"jsonrpc": "2.0", "id": "crlf", "method": "ping", "params": {"x-note": odd}})
    );
    peer.write(&crlf).await;
    let crlf_ok = is_result(
        &peer
            .response_to(&Value::from("crlf"), Duration::from_secs(5))
            .await,
    );
    let big = "b".repeat(512 * 1024);
    let big_ok = is_result(
        &peer
            .call(
                to_bridge::PING,
                serde_json::json!({"x-padding": big}),
                Duration::from_secs(10),
            )
            .await,
    );
    report.check(
        "JB-FRAME-003",
        crlf_ok && big_ok,
        format!("CRLF and odd characters: {crlf_ok}; 512 KiB line: {big_ok}"),
    );

    // JB-FRAME-004
    let unknown = peer
        .call(
            "x-kit/no-such-method",
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await;
    let unknown_code = error_of(&unknown)
        .and_then(|error| error.get("code"))
        .and_then(Value::as_i64);
    peer.notify("x-kit/unknown-notification", serde_json::json!({"a": 1}))
        .await;
    peer.notify("$/x-unknown", serde_json::json!({})).await;
    let still = is_result(
        &peer
            .call(
                to_bridge::PING,
                serde_json::json!({"unknown_field": [1, 2]}),
                Duration::from_secs(5),
            )
            .await,
    );
    report.check(
        "JB-FRAME-004",
        unknown_code == Some(protocol::codes::METHOD_NOT_FOUND) && still,
        format!(
            "unknown method answered {unknown_code:?}; alive after unknown notifications: {still}"
        ),
    );

    // JB-FRAME-006
    let first = peer.next;
    for _ in 0..20 {
        let id = peer.next;
        peer.next += 1;
        peer.send(serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "ping", "params": {}}))
            .await;
    }
    let mut answered = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while answered.len() < 20 && tokio::time::Instant::now() < deadline {
        for response in peer.pump(Duration::from_millis(100)).await {
            if let Some(id) = response.get("id").and_then(Value::as_u64)
                && (first..first + 20).contains(&id)
            {
                answered.insert(id);
            }
        }
    }
    report.check(
        "JB-FRAME-006",
        answered.len() == 20,
        format!("{} of 20 answered", answered.len()),
    );

    // JB-REG-001
    match &handshake.answer.registration {
        None => report.set("JB-REG-001", Verdict::Skip, "no registration form declared"),
        Some(form) => {
            let values: serde_json::Map<String, Value> = form
                .fields
                .iter()
                .map(|field| {
                    let value = match field.kind.as_str() {
                        "boolean" => "true".to_owned(),
                        "list-single" => field.options.first().cloned().unwrap_or_default(),
                        _ => "kit".to_owned(),
                    };
                    (field.var.clone(), Value::from(value))
                })
                .collect();
            let answer = peer
                .call(
                    to_bridge::REGISTER_SUBMIT,
                    serde_json::json!({"user": "kit@bridge-test.localhost", "values": values}),
                    Duration::from_secs(10),
                )
                .await;
            let done = answer
                .as_ref()
                .and_then(|frame| frame.get("result"))
                .and_then(|result| {
                    serde_json::from_value::<protocol::RegisterResult>(result.clone()).ok()
                })
                .is_some_and(|result| match result.step.kind.as_str() {
                    "done" => true,
                    // One more step: it must say which, to have its answer back.
                    "form" | "waiting" => result.step.step_id.is_some(),
                    _ => false,
                });
            let refused = error_of(&answer).is_some_and(typed);
            report.check(
                "JB-REG-001",
                done || refused,
                format!("answer: {}", shorten(&answer)),
            );
        }
    }

    // JB-MSG-001, JB-MSG-002, JB-MSG-004 (with the kit failing the first event once)
    peer.fail_next_received = true;
    let send = serde_json::json!({
        "txn_id": "kit-1", "attempt": 1, "user": "kit@bridge-test.localhost", "contact": "kit-contact",
        "text": "hello from the kit", "ts": "2026-01-01T00:00:00.000Z", "registration": null,
    });
    let first_answer = peer
        .call(
            to_bridge::MESSAGE_SEND,
            send.clone(),
            Duration::from_secs(10),
        )
        .await;
    let read = |answer: &Option<Value>| {
        answer
            .as_ref()
            .and_then(|frame| frame.get("result"))
            .and_then(|result| serde_json::from_value::<protocol::SendResult>(result.clone()).ok())
    };
    let ok = read(&first_answer)
        .is_some_and(|result| matches!(result.status.as_str(), "sent" | "report_follows"));
    let refused = error_of(&first_answer).is_some_and(typed);
    report.check(
        "JB-MSG-001",
        ok || refused,
        format!("answer: {}", shorten(&first_answer)),
    );
    // The kit failed the first message/received (if any) with a 503: is it sent again?
    peer.pump(Duration::from_millis(1500)).await;
    let received: Vec<Value> = peer
        .requests
        .iter()
        .filter(|(method, _)| method == protocol::to_core::MESSAGE_RECEIVED)
        .map(|(_, params)| params.clone())
        .collect();
    if received.is_empty() {
        report.set(
            "JB-MSG-004",
            Verdict::Skip,
            "the bridge sent no message/received to fail",
        );
    } else {
        let first_event = received[0].get("event_id").cloned();
        let retried = received
            .iter()
            .skip(1)
            .any(|params| params.get("event_id") == first_event.as_ref());
        report.check(
            "JB-MSG-004",
            retried,
            format!(
                "{} message/received within 1.5 s; the failed one sent again: {retried}",
                received.len()
            ),
        );
    }
    let mut again = send;
    again["attempt"] = Value::from(2);
    let second_answer = peer
        .call(to_bridge::MESSAGE_SEND, again, Duration::from_secs(10))
        .await;
    let same = match (read(&first_answer), read(&second_answer)) {
        (Some(first), Some(second)) => first == second,
        _ => error_of(&first_answer).is_some() && error_of(&second_answer).is_some(),
    };
    report.check(
        "JB-MSG-002",
        same,
        format!(
            "first {}, second {}",
            shorten(&first_answer),
            shorten(&second_answer)
        ),
    );
    peer.pump(Duration::from_millis(500)).await;

    // JB-GRP-001, JB-GRP-002
    rooms(&mut peer, &handshake, report).await;

    // JB-MSG-003: every message/received seen so far.
    let received: Vec<Value> = peer
        .requests
        .iter()
        .filter(|(method, _)| method == protocol::to_core::MESSAGE_RECEIVED)
        .map(|(_, params)| params.clone())
        .collect();
    let invalid: Vec<String> = received
        .iter()
        .filter_map(|params| {
            let parsed: protocol::ReceivedParams = match serde_json::from_value(params.clone()) {
                Ok(parsed) => parsed,
                Err(error) => return Some(error.to_string()),
            };
            if parsed.event_id.is_empty() || parsed.event_id.len() > 1024 {
                return Some("event_id empty or over 1024 bytes".into());
            }
            if let Some(ts) = &parsed.ts
                && crate::convert::parse_timestamp(ts).is_none()
            {
                return Some(format!("ts '{ts}' is not RFC 3339"));
            }
            None
        })
        .collect();
    if received.is_empty() {
        report.set(
            "JB-MSG-003",
            Verdict::Skip,
            "the bridge sent no message/received",
        );
    } else {
        report.check(
            "JB-MSG-003",
            invalid.is_empty(),
            format!("{} seen; invalid: {invalid:?}", received.len()),
        );
    }

    // JB-FRAME-005: garbage, then malformed requests built from the real ones.
    for line in [
        "this is not json\n",
        "[1,2,3]\n",
        "{\"jsonrpc\":\"1.0\",\"id\":5}\n",
        "{}\n",
        "\"a string\"\n",
        "{\"jsonrpc\":\"2.0\",\"id\":{},\"method\":7}\n",
    ] {
        peer.write(line).await;
    }
    let malformed = malformed_requests();
    let mut unanswered = 0;
    for (index, (method, params)) in malformed.iter().enumerate() {
        let id = Value::from(format!("fuzz-{index}"));
        let answer = peer
            .call_with_id(id, method, params.clone(), Duration::from_secs(5))
            .await;
        if answer.is_none() {
            unanswered += 1;
            if unanswered > 3 {
                break;
            }
        }
    }
    let alive = is_result(
        &peer
            .call(
                to_bridge::PING,
                serde_json::json!({}),
                Duration::from_secs(5),
            )
            .await,
    );
    report.check(
        "JB-FRAME-005",
        unanswered == 0 && alive,
        format!(
            "{} malformed requests, {unanswered} unanswered; alive after: {alive}",
            malformed.len()
        ),
    );

    // JB-ROB-001
    for index in 0..1000 {
        peer.notify(
            to_bridge::PRESENCE_USER,
            serde_json::json!({"user": format!("kit{index}@bridge-test.localhost"), "online": index % 2 == 0}),
        )
        .await;
    }
    let started = std::time::Instant::now();
    let pong = peer
        .call(
            to_bridge::PING,
            serde_json::json!({}),
            Duration::from_secs(5),
        )
        .await;
    report.check(
        "JB-ROB-001",
        is_result(&pong),
        format!(
            "ping after the burst answered in {} ms",
            started.elapsed().as_millis()
        ),
    );

    // JB-ERR-001: every error it answered so far.
    let untyped: Vec<String> = peer
        .errors
        .iter()
        .filter(|error| !typed(error))
        .map(Value::to_string)
        .collect();
    report.check(
        "JB-ERR-001",
        untyped.is_empty(),
        if untyped.is_empty() {
            format!("{} error(s), all typed", peer.errors.len())
        } else {
            format!("untyped: {}", untyped.join(" | "))
        },
    );

    // JB-LIFE-005
    let stopped = peer
        .call(
            to_bridge::SHUTDOWN,
            serde_json::json!({"reason": "stop", "deadline_ms": 5000}),
            Duration::from_secs(5),
        )
        .await;
    let null = stopped
        .as_ref()
        .and_then(|frame| frame.get("result"))
        .is_some_and(Value::is_null);
    peer.notify(to_bridge::EXIT, serde_json::json!({})).await;
    let status = peer.exited(Duration::from_secs(2)).await;
    report.check(
        "JB-LIFE-005",
        null && status.is_some_and(|status| status.success()),
        format!(
            "shutdown answered {}; exit status {status:?}",
            shorten(&stopped)
        ),
    );
    if status.is_none() {
        let _ = peer.process.kill().await;
    }

    // JB-FRAME-001 and JB-SEC-001, over everything seen.
    report.check(
        "JB-FRAME-001",
        peer.noise.is_empty(),
        match peer.noise.first() {
            None => format!("{} lines, all JSON-RPC", peer.lines.len()),
            Some(first) => format!(
                "{} line(s) of noise, the first: {}",
                peer.noise.len(),
                cut(first)
            ),
        },
    );
    let leaked_out = peer.lines.iter().any(|line| line.contains(&canary));
    let leaked_err = peer.stderr().contains(&canary);
    report.check(
        "JB-SEC-001",
        !leaked_out && !leaked_err,
        format!("in stdout: {leaked_out}; in stderr: {leaked_err}"),
    );
}

async fn rooms(peer: &mut Peer, handshake: &crate::Handshake, report: &mut Report) {
    let room_pattern = handshake.answer.addressing.room_pattern.as_deref();
    let room = ["#kit", "kit-room", "#bridge-test", "!kit:bridge-test"]
        .into_iter()
        .find(|candidate| {
            handshake
                .room
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(candidate))
        });
    let (true, Some(room)) = (handshake.info.capabilities.rooms, room) else {
        let why = format!("no rooms, or no sample address matches room_pattern {room_pattern:?}");
        report.set("JB-GRP-001", Verdict::Skip, why.clone());
        report.set("JB-GRP-002", Verdict::Skip, why);
        return;
    };
    let join = |user: &str, nick: &str| serde_json::json!({"user": user, "room": room, "nick": nick, "history": {}, "registration": null});
    let joined = peer
        .call(
            to_bridge::ROOM_JOIN,
            join("kit@bridge-test.localhost", "kit"),
            Duration::from_secs(10),
        )
        .await;
    let result = joined
        .as_ref()
        .and_then(|frame| frame.get("result"))
        .and_then(|result| serde_json::from_value::<protocol::JoinResult>(result.clone()).ok());
    let Some(result) = result else {
        report.check(
            "JB-GRP-001",
            false,
            format!("join answered {}", shorten(&joined)),
        );
        return;
    };
    let listed = result
        .occupants
        .iter()
        .any(|occupant| occupant.nick == result.nick);
    let post = peer
        .call(
            to_bridge::ROOM_SEND,
            serde_json::json!({"txn_id": "kit-post-1", "user": "kit@bridge-test.localhost", "room": room, "text": "hello room", "registration": null}),
            Duration::from_secs(10),
        )
        .await;
    let posted = post
        .as_ref()
        .and_then(|frame| frame.get("result"))
        .and_then(|result| serde_json::from_value::<protocol::RoomSendResult>(result.clone()).ok());
    peer.pump(Duration::from_millis(500)).await;
    let echoed = peer.requests.iter().any(|(method, params)| {
        method == protocol::to_core::ROOM_EVENT
            && params.pointer("/event/echo_of").and_then(Value::as_str) == Some("kit-post-1")
    });
    let post_ok = match posted.as_ref().map(|posted| posted.status.as_str()) {
        Some("reflect") => true,
        Some("echo_follows") => echoed,
        _ => error_of(&post).is_some_and(typed),
    };
    report.check(
        "JB-GRP-001",
        listed && post_ok,
        format!(
            "nick among occupants: {listed}; post answered {} (echo seen: {echoed})",
            shorten(&post)
        ),
    );
    let taken = peer
        .call(
            to_bridge::ROOM_JOIN,
            join("kit2@bridge-test.localhost", &result.nick),
            Duration::from_secs(10),
        )
        .await;
    let conflict = error_of(&taken)
        .and_then(|error| error.pointer("/data/condition"))
        .and_then(Value::as_str)
        == Some("conflict");
    // Or the network gave them another nick (IRC's `_`), which the core shows (status 210).
    let renamed = taken
        .as_ref()
        .and_then(|frame| frame.pointer("/result/nick"))
        .and_then(Value::as_str)
        .is_some_and(|nick| nick != result.nick);
    report.check(
        "JB-GRP-002",
        conflict || renamed,
        format!("answer: {}", shorten(&taken)),
    );
    let _ = peer
        .call(
            to_bridge::ROOM_LEAVE,
            serde_json::json!({"user": "kit@bridge-test.localhost", "room": room}),
            Duration::from_secs(5),
        )
        .await;
}

/// 200 requests built from the real methods with their params broken: missing, of the wrong
/// type, or replaced by other JSON.
fn malformed_requests() -> Vec<(&'static str, Value)> {
    let methods = [
        to_bridge::MESSAGE_SEND,
        to_bridge::REGISTER_SUBMIT,
        to_bridge::ROOM_JOIN,
        to_bridge::ROOM_SEND,
        to_bridge::SESSION_START,
        to_bridge::COMMAND_RUN,
        to_bridge::HTTP_REQUEST,
        to_bridge::ROOM_LEAVE,
    ];
    let breakers: [Value; 25] = [
        serde_json::json!({}),
        serde_json::json!([]),
        serde_json::json!([1, "two"]),
        serde_json::json!({"txn_id": 5}),
        serde_json::json!({"user": null}),
        serde_json::json!({"user": 7, "values": "x"}),
        serde_json::json!({"text": {"nested": true}}),
        serde_json::json!({"room": ["#a"], "nick": false}),
        serde_json::json!({"txn_id": "t", "attempt": "one", "user": "a@b", "contact": "c", "text": 3, "ts": 0}),
        serde_json::json!({"txn_id": "t", "attempt": -1, "user": "a@b", "contact": "", "text": "", "ts": "yesterday"}),
        serde_json::json!({"values": {"a": [1]}}),
        serde_json::json!({"user": "a@b", "room": "", "nick": ""}),
        serde_json::json!({"user": "a@b", "room": "#x", "nick": "n", "history": "all"}),
        serde_json::json!({"node": 9}),
        serde_json::json!({"method": "POST", "path": 3}),
        serde_json::json!({"user": "a@b", "registration": "not an object"}),
        serde_json::json!({"a": {"b": {"c": {"d": {"e": {"f": [[[[[]]]]]}}}}}}),
        serde_json::json!({"user": "\u{0}", "contact": "\u{fffe}", "text": "\u{1}"}),
        serde_json::json!({"txn_id": "x".repeat(5000)}),
        serde_json::json!({"emojis": "👍"}),
        serde_json::json!(null),
        serde_json::json!({"user": 1.5e308}),
        serde_json::json!({"user": true, "room": {}, "text": []}),
        serde_json::json!({"__proto__": {"polluted": true}}),
        serde_json::json!({"constructor": "x", "toString": 1}),
    ];
    let mut requests = Vec::new();
    for method in methods {
        for params in &breakers {
            requests.push((method, params.clone()));
        }
    }
    requests
}

/// A fresh process of the bridge, offered `versions`: it and its answer to `initialize`.
async fn initialized(
    command: &[String],
    versions: &[u32],
    settings: &serde_json::Map<String, Value>,
) -> Option<(Peer, Option<Value>)> {
    let mut peer = Peer::start(command).ok()?;
    let answer = peer
        .call(
            to_bridge::INITIALIZE,
            initialize_for_kit(versions, settings, "none"),
            Duration::from_secs(10),
        )
        .await;
    Some((peer, answer))
}

async fn version_refusal(
    command: &[String],
    settings: &serde_json::Map<String, Value>,
    report: &mut Report,
) {
    let Some((mut peer, answer)) = initialized(command, &[99], settings).await else {
        report.check("JB-LIFE-002", false, "does not start");
        return;
    };
    let refused = error_of(&answer).is_some();
    let status = peer.exited(Duration::from_secs(5)).await;
    report.check(
        "JB-LIFE-002",
        refused && status.is_some_and(|status| !status.success()),
        format!("answered {}; exit status {status:?}", shorten(&answer)),
    );
    if status.is_none() {
        let _ = peer.process.kill().await;
    }
}

async fn eof_exit(
    command: &[String],
    settings: &serde_json::Map<String, Value>,
    report: &mut Report,
) {
    let Some((mut peer, _)) = initialized(command, protocol::VERSIONS, settings).await else {
        report.check("JB-LIFE-006", false, "does not start");
        return;
    };
    peer.close_stdin();
    let status = peer.exited(Duration::from_secs(5)).await;
    report.check(
        "JB-LIFE-006",
        status.is_some(),
        format!("exit status {status:?}"),
    );
    if status.is_none() {
        let _ = peer.process.kill().await;
    }
}

fn cut(text: &str) -> String {
    text.chars().take(160).collect()
}

fn shorten(answer: &Option<Value>) -> String {
    match answer {
        None => "nothing (timeout)".into(),
        Some(frame) => cut(&frame.to_string()),
    }
}

/// Reads an `--expected-failures` file: check ids, one per line, `#` comments.
pub fn read_expected(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or("").trim())
        .filter(|line| !line.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The table, the summary, and whether the run failed: a MUST failing unexpectedly, an
/// expected failure passing (the file is stale), or an id in the file no check has.
pub fn render(outcomes: &[Outcome], expected: &[String]) -> (String, bool) {
    let mut text = String::new();
    let mut failed = false;
    for outcome in outcomes {
        let mark = match (outcome.verdict, outcome.expected_failure) {
            (Verdict::Pass, false) => "pass ",
            (Verdict::Pass, true) => {
                failed = true;
                "XPASS"
            }
            (Verdict::Fail, true) => "xfail",
            (Verdict::Fail, false) => {
                if outcome.level == Level::Must {
                    failed = true;
                }
                "FAIL "
            }
            (Verdict::Skip, _) => "skip ",
        };
        let level = match outcome.level {
            Level::Must => "MUST  ",
            Level::Should => "SHOULD",
        };
        text.push_str(&format!(
            "{mark} {:<12} {level} {}\n      {}\n",
            outcome.id, outcome.title, outcome.detail
        ));
    }
    for id in expected {
        if !outcomes.iter().any(|outcome| outcome.id == id.as_str()) {
            failed = true;
            text.push_str(&format!(
                "STALE {id}: no such check (remove it from the expected failures)\n"
            ));
        }
    }
    let count = |verdict: Verdict| {
        outcomes
            .iter()
            .filter(|outcome| outcome.verdict == verdict)
            .count()
    };
    text.push_str(&format!(
        "\n{} passed, {} failed ({} expected), {} skipped; protocol {}, revision {}: {}\n",
        count(Verdict::Pass),
        count(Verdict::Fail),
        outcomes
            .iter()
            .filter(|outcome| outcome.verdict == Verdict::Fail && outcome.expected_failure)
            .count(),
        count(Verdict::Skip),
        protocol::VERSIONS
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        protocol::REVISION,
        if failed { "FAILED" } else { "conformant" },
    ));
    (text, failed)
}
