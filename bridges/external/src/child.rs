//! One child process and the JSON-RPC connection to it: spawning it, framing lines with a
//! size bound, matching responses to requests, re-logging its stderr, and stopping it
//! (`shutdown` → `exit` → stdin closed → SIGTERM → SIGKILL).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStderr};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::protocol::{self, Frame, FrameError, Limits, RpcError, codes, to_bridge};

/// How to start the child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: BTreeMap<String, String>,
    /// The working directory; the core's when `None`.
    pub cwd: Option<PathBuf>,
}

/// The longest stderr line re-logged whole; longer ones are cut.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Why a call to the child did not get an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The child is not running (or stopped while the call was in flight).
    #[error("the bridge process is not running: {0}")]
    Down(String),
    /// No answer in time; the request was cancelled (`$/cancel`).
    #[error("the bridge process did not answer {0} in time")]
    TimedOut(String),
    /// The child answered with an error.
    #[error("{0}")]
    Refused(RpcError),
    /// The child answered, but not with what the method returns.
    #[error("the bridge process answered {method} with a malformed result: {reason}")]
    Malformed {
        /// The method.
        method: String,
        /// What is wrong.
        reason: String,
    },
}

/// A request or notification from the child, for the bridge to act on. A request holds one
/// of the connection's inbound slots until it is answered ([`Connection::respond`]).
#[derive(Debug)]
pub struct Inbound {
    /// The request's id; `None` for a notification.
    pub id: Option<Value>,
    /// The method.
    pub method: String,
    /// The params.
    pub params: Value,
    /// Held until answered: the child's requests in flight are bounded.
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Inbound {
    /// The ordering key: events about the same room, or the same user and contact, are
    /// handled in the order they came; others at once.
    pub fn lane(&self) -> Option<String> {
        let field = |name: &str| self.params.get(name).and_then(Value::as_str);
        match (field("room"), field("user"), field("contact")) {
            (Some(room), _, _) => Some(inbound_lane_of_room(room)),
            (None, Some(user), Some(contact)) => Some(format!("chat {user} {contact}")),
            _ => None,
        }
    }
}

/// The lane of the child's requests about `room`.
pub fn inbound_lane_of_room(room: &str) -> String {
    format!("room {room}")
}

type Waiting = oneshot::Sender<Result<Value, RpcError>>;

/// Lines waiting for the child to read them. Past that, answers and calls wait (within
/// their timeouts) and notifications are dropped: a child that stops reading its stdin
/// cannot make the core's memory grow.
const OUT_QUEUE: usize = 256;

/// How many of a child's noise lines in a minute close the connection (it is restarted).
#[derive(Debug, Clone, Copy)]
pub struct NoiseLimit(pub u64);

/// The JSON-RPC connection to one running child.
pub struct Connection {
    out: mpsc::Sender<String>,
    pending: std::sync::Mutex<HashMap<u64, Waiting>>,
    next_id: AtomicU64,
    outbound: Arc<Semaphore>,
    inbound: Arc<Semaphore>,
    limits: Limits,
    noise_limit: NoiseLimit,
    started: Instant,
    heard_ms: AtomicU64,
    noise: AtomicU64,
    /// Noise lines in the current minute, and when it began (ms since `started`).
    noise_window: std::sync::Mutex<(u64, u64)>,
    /// The reader waits for the core to handle the child's earlier requests.
    waiting_on_core: AtomicBool,
    /// The core sent `initialized`: the child may send requests.
    initialized: AtomicBool,
    closed: AtomicBool,
    close_reason: std::sync::Mutex<String>,
    closed_notify: tokio::sync::Notify,
}

/// A started child: its connection and the process.
pub struct Started {
    /// The connection.
    pub connection: Arc<Connection>,
    /// The process.
    pub process: Child,
}

/// Starts the child. `on_inbound` gets its requests and notifications, in the order they
/// came, from the task that reads its stdout: it must not block (queue or spawn), and what
/// it queues is queued before the response that follows it on the line reaches its caller.
/// `on_noise` counts lines that are not protocol messages.
pub fn start(
    spawn: &Spawn,
    limits: Limits,
    noise_limit: NoiseLimit,
    on_noise: impl Fn() + Send + Sync + 'static,
    on_inbound: impl Fn(Arc<Connection>, Inbound) + Send + Sync + 'static,
) -> std::io::Result<Started> {
    let (program, args) = spawn.command.split_first().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "`command` is empty")
    })?;
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .envs(&spawn.env)
        .env("JABBRIDGE_BRIDGE", "1")
        .env("JABBRIDGE_PROTOCOL", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: stopping it stops what it started (`sh -c`, `npm start`).
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spawn.cwd {
        command.current_dir(cwd);
    }
    let mut process = command.spawn()?;
    let (Some(mut stdin), Some(stdout), Some(stderr)) = (
        process.stdin.take(),
        process.stdout.take(),
        process.stderr.take(),
    ) else {
        return Err(std::io::Error::other("the child's pipes were not opened"));
    };
    let (out, mut lines) = mpsc::channel::<String>(OUT_QUEUE);
    let connection = Arc::new(Connection {
        out,
        pending: std::sync::Mutex::default(),
        next_id: AtomicU64::new(1),
        outbound: Arc::new(Semaphore::new(limits.max_inflight)),
        inbound: Arc::new(Semaphore::new(limits.max_inflight)),
        limits,
        noise_limit,
        started: Instant::now(),
        heard_ms: AtomicU64::new(0),
        noise: AtomicU64::new(0),
        noise_window: std::sync::Mutex::new((0, 0)),
        waiting_on_core: AtomicBool::new(false),
        initialized: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        close_reason: std::sync::Mutex::default(),
        closed_notify: tokio::sync::Notify::new(),
    });
    let writer = connection.clone();
    tokio::spawn(
        async move {
            let mut closing = false;
            loop {
                let first = tokio::select! {
                    biased;
                    line = lines.recv() => line,
                    () = writer.closed(), if !closing => {
                        closing = true;
                        lines.try_recv().ok()
                    }
                };
                let Some(first) = first else { break };
                // Write what is queued before flushing: one flush per burst.
                let mut burst = first;
                burst.push('\n');
                while let Ok(more) = lines.try_recv() {
                    burst.push_str(&more);
                    burst.push('\n');
                    if burst.len() > 64 * 1024 {
                        break;
                    }
                }
                if stdin.write_all(burst.as_bytes()).await.is_err() || stdin.flush().await.is_err()
                {
                    writer.close("its stdin closed");
                    break;
                }
                if closing && lines.is_empty() {
                    break;
                }
            }
            // Dropping stdin closes it: the child reads EOF.
        }
        .in_current_span(),
    );
    let reader = connection.clone();
    tokio::spawn(
        async move {
            reader
                .read(BufReader::new(stdout), on_inbound, on_noise)
                .await;
        }
        .in_current_span(),
    );
    tokio::spawn(relog(stderr).in_current_span());
    Ok(Started {
        connection,
        process,
    })
}

impl Connection {
    /// Calls `method` and waits for its result, at most `timeout` (then `$/cancel`s it).
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let value = self.call_value(method, params, timeout).await?;
        serde_json::from_value(value).map_err(|error| CallError::Malformed {
            method: method.into(),
            reason: error.to_string(),
        })
    }

    /// [`Connection::call`] returning the raw result.
    pub async fn call_value<P: Serialize>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<Value, CallError> {
        let params = serde_json::to_value(params).map_err(|error| CallError::Malformed {
            method: method.into(),
            reason: error.to_string(),
        })?;
        let started = tokio::time::Instant::now();
        let Ok(Ok(_turn)) = tokio::time::timeout(timeout, self.outbound.acquire()).await else {
            return Err(CallError::TimedOut(method.into()));
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        // Removes the entry however this call ends (answered, timed out, dropped).
        let _forget = Forget {
            connection: self,
            id,
        };
        if self.closed.load(Ordering::Acquire) {
            return Err(CallError::Down("it stopped".into()));
        }
        let line = Frame::Request {
            id: id.into(),
            method: method.into(),
            params,
        }
        .to_line();
        if line.len() > self.limits.max_message_bytes {
            return Err(CallError::Malformed {
                method: method.into(),
                reason: format!(
                    "the request has {} bytes, over max_message_bytes ({})",
                    line.len(),
                    self.limits.max_message_bytes
                ),
            });
        }
        let deadline = started + timeout;
        if !self.write_until(line, deadline).await {
            return Err(CallError::TimedOut(method.into()));
        }
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(CallError::Refused(error)),
            Ok(Err(_)) => Err(CallError::Down("it stopped while answering".into())),
            Err(_) => {
                self.notify(to_bridge::CANCEL, &protocol::CancelParams { id: id.into() });
                Err(CallError::TimedOut(method.into()))
            }
        }
    }

    /// Sends a notification; dropped (and logged) while the child does not read.
    pub fn notify<P: Serialize>(&self, method: &str, params: &P) {
        let params = serde_json::to_value(params).unwrap_or(Value::Null);
        self.write(&Frame::Notification {
            method: method.into(),
            params,
        });
    }

    /// Answers one of the child's requests. Its inbound slot is freed once the answer is
    /// queued for the child; a child that reads nothing for `request_timeout` is closed.
    pub async fn respond(&self, request: Inbound, outcome: Result<Value, RpcError>) {
        let Some(id) = request.id else { return };
        let line = Frame::Response { id, outcome }.to_line();
        let wait = Duration::from_millis(self.limits.request_timeout_ms);
        if !self
            .write_until(line, tokio::time::Instant::now() + wait)
            .await
        {
            self.close("it stopped reading its input");
        }
    }

    /// The core sent `initialized`: requests from the child are taken from now on.
    pub fn mark_initialized(&self) {
        self.initialized.store(true, Ordering::Release);
    }

    /// Whether the reader is waiting for the core to handle the child's earlier requests
    /// (the child is not silent then: the core is slow).
    pub fn waiting_on_core(&self) -> bool {
        self.waiting_on_core.load(Ordering::Relaxed)
    }

    /// Why the connection closed.
    pub fn close_reason(&self) -> String {
        self.close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Whether the connection is closed (the child's stdout ended, or it was closed).
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Resolves once the connection is closed.
    pub async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// How long ago the child last wrote a line.
    pub fn silent_for(&self) -> Duration {
        let now = self.started.elapsed();
        now.saturating_sub(Duration::from_millis(self.heard_ms.load(Ordering::Relaxed)))
    }

    /// How many lines of noise (not protocol, oversized, answers to nothing) it wrote.
    pub fn noise(&self) -> u64 {
        self.noise.load(Ordering::Relaxed)
    }

    /// Closes the connection: every call in flight fails with [`CallError::Down`].
    pub fn close(&self, why: &str) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        *self
            .close_reason
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why.to_owned();
        tracing::debug!(why, "connection to the bridge process closed");
        // Dropping the senders fails the waiting calls.
        self.lock_pending().clear();
        self.closed_notify.notify_waiters();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues a line if there is room: for what may be lost (notifications, answers to
    /// noise).
    fn write(&self, frame: &Frame) {
        if self.out.try_send(frame.to_line()).is_err() && !self.is_closed() {
            tracing::warn!(
                "the bridge process does not read its input: a notification was dropped"
            );
        }
    }

    /// Queues a line, waiting for room until `deadline`; whether it was queued.
    async fn write_until(&self, line: String, deadline: tokio::time::Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline, self.out.send(line)).await,
            Ok(Ok(()))
        )
    }

    fn noisy(&self, on_noise: &(impl Fn() + Send + Sync), what: &str, line: &[u8]) {
        self.noise.fetch_add(1, Ordering::Relaxed);
        on_noise();
        let shown = String::from_utf8_lossy(&line[..line.len().min(200)]).into_owned();
        tracing::warn!(line = %shown, "the bridge process wrote {what}: ignored");
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let over = {
            let mut window = self
                .noise_window
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if now.saturating_sub(window.1) >= 60_000 {
                *window = (0, now);
            }
            window.0 += 1;
            window.0 > self.noise_limit.0
        };
        if over {
            self.close(&format!(
                "the process wrote more than {} lines of noise in a minute",
                self.noise_limit.0
            ));
        }
    }

    /// A slot for one of the child's requests: waits while the core handles earlier ones
    /// (backpressure: the reader stops, the pipe fills, the child's writes wait), up to the
    /// request timeout; `None` after that.
    ///
    /// A long line weighs more (one slot per 64 KiB, at most all of them): what waits in
    /// memory stays near `max_inflight` small requests, however long the lines.
    async fn inbound_permit(&self, bytes: usize) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let weight = (1 + bytes / (64 * 1024)).min(self.limits.max_inflight.max(1));
        let weight = u32::try_from(weight).unwrap_or(1);
        if let Ok(permit) = self.inbound.clone().try_acquire_many_owned(weight) {
            return Some(permit);
        }
        self.waiting_on_core.store(true, Ordering::Relaxed);
        let wait = Duration::from_millis(self.limits.request_timeout_ms);
        let permit =
            tokio::time::timeout(wait, self.inbound.clone().acquire_many_owned(weight)).await;
        self.waiting_on_core.store(false, Ordering::Relaxed);
        permit.ok().and_then(Result::ok)
    }

    async fn read(
        self: Arc<Self>,
        mut stdout: impl AsyncBufRead + Unpin,
        on_inbound: impl Fn(Arc<Connection>, Inbound),
        on_noise: impl Fn() + Send + Sync,
    ) {
        let mut line = Vec::new();
        loop {
            line.clear();
            let read = read_line(&mut stdout, &mut line, self.limits.max_message_bytes).await;
            let oversized = match read {
                Ok(Line::Eof) | Err(_) => break,
                Ok(Line::Whole) => false,
                Ok(Line::Oversized) => true,
            };
            let heard = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.heard_ms.store(heard, Ordering::Relaxed);
            if oversized {
                self.noisy(&on_noise, "a line over max_message_bytes", &line);
                continue;
            }
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match Frame::parse(&line) {
                Ok(Frame::Response { id, outcome }) => {
                    let waiting = id.as_u64().and_then(|id| self.lock_pending().remove(&id));
                    match waiting {
                        Some(waiting) => {
                            let _ = waiting.send(outcome);
                        }
                        None => self.noisy(
                            &on_noise,
                            "an answer to no request (answered twice, or too late)",
                            &line,
                        ),
                    }
                }
                Ok(Frame::Request { id, method, params }) => {
                    if !self.initialized.load(Ordering::Acquire) {
                        self.write(&Frame::Response {
                            id,
                            outcome: Err(RpcError::protocol(
                                codes::NOT_INITIALIZED,
                                "no requests before `initialized`",
                            )),
                        });
                        continue;
                    }
                    let Some(permit) = self.inbound_permit(line.len()).await else {
                        let mut error = RpcError::typed(
                            429,
                            "resource-constraint",
                            "wait",
                            "the core is busy: send it again later",
                        );
                        error.code = codes::OVERLOADED;
                        if let Some(data) = &mut error.data {
                            data.retry_after_ms = Some(1000);
                        }
                        self.write(&Frame::Response {
                            id,
                            outcome: Err(error),
                        });
                        continue;
                    };
                    on_inbound(
                        self.clone(),
                        Inbound {
                            id: Some(id),
                            method,
                            params,
                            _permit: Some(permit),
                        },
                    );
                }
                Ok(Frame::Notification { method, params }) => {
                    let Some(permit) = self.inbound_permit(line.len()).await else {
                        tracing::warn!(
                            method,
                            "the core is busy: a notification of the bridge process was dropped"
                        );
                        continue;
                    };
                    on_inbound(
                        self.clone(),
                        Inbound {
                            id: None,
                            method,
                            params,
                            _permit: Some(permit),
                        },
                    );
                }
                Err(FrameError::Invalid {
                    id: Some(id),
                    reason,
                }) if id
                    .as_u64()
                    .and_then(|id| self.lock_pending().remove(&id))
                    .map(|waiting| {
                        // An answer to one of our calls that does not read fails that call.
                        let _ = waiting.send(Err(RpcError::protocol(
                            codes::INVALID_REQUEST,
                            format!("a malformed answer: {reason}"),
                        )));
                    })
                    .is_some() =>
                {
                    self.noisy(&on_noise, "a malformed answer", &line);
                }
                Err(FrameError::Invalid {
                    id: Some(id),
                    reason,
                }) => {
                    self.noisy(&on_noise, "an invalid message", &line);
                    self.write(&Frame::Response {
                        id,
                        outcome: Err(RpcError::protocol(codes::INVALID_REQUEST, reason)),
                    });
                }
                Err(_) => self.noisy(&on_noise, "a line that is not JSON-RPC", &line),
            }
        }
        self.close("its stdout ended");
    }
}

/// Drops a call's entry in `pending` when the call ends.
struct Forget<'a> {
    connection: &'a Connection,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.connection.lock_pending().remove(&self.id);
    }
}

/// What [`read_line`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    /// A whole line (the `\n` removed), in the buffer.
    Whole,
    /// A line longer than the limit: the buffer holds its start; the rest was skipped.
    Oversized,
    /// The stream ended (a last line without `\n` counts as whole first).
    Eof,
}

/// Reads one `\n`-terminated line into `line`, keeping at most `max` bytes of it: memory stays
/// bounded whatever the child writes.
pub async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    let mut oversized = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(match (line.is_empty() && !oversized, oversized) {
                (true, _) => Line::Eof,
                (false, true) => Line::Oversized,
                (false, false) => Line::Whole,
            });
        }
        let (chunk, found) = match buffer.iter().position(|byte| *byte == b'\n') {
            Some(at) => (&buffer[..at], Some(at)),
            None => (buffer, None),
        };
        let room = max.saturating_sub(line.len());
        if chunk.len() > room {
            oversized = true;
        }
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let used = found.map_or(buffer.len(), |at| at + 1);
        reader.consume(used);
        if found.is_some() {
            return Ok(if oversized {
                Line::Oversized
            } else {
                Line::Whole
            });
        }
    }
}

/// Re-logs the child's stderr: JSON objects with `level` and `msg` (or `message`) at their
/// level, other lines as warnings.
async fn relog(stderr: ChildStderr) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line, MAX_LOG_LINE).await {
            Ok(Line::Eof) | Err(_) => return,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end();
        if text.is_empty() {
            continue;
        }
        log_line(text);
    }
}

/// Logs one line the child wrote to stderr, or sent as a `log` notification.
pub fn log_line(text: &str) {
    let parsed: Option<serde_json::Map<String, Value>> = serde_json::from_str(text).ok();
    let (level, message) = match &parsed {
        Some(object) => (
            object
                .get("level")
                .and_then(Value::as_str)
                .unwrap_or("info"),
            object
                .get("msg")
                .or_else(|| object.get("message"))
                .and_then(Value::as_str)
                .unwrap_or(text),
        ),
        None => ("warn", text),
    };
    log_at(level, message);
}

/// Logs `message` from the child at `level` (an unknown level: info).
pub fn log_at(level: &str, message: &str) {
    match level.to_ascii_lowercase().as_str() {
        "error" | "critical" | "fatal" => tracing::error!(from = "bridge process", "{message}"),
        "warn" | "warning" => tracing::warn!(from = "bridge process", "{message}"),
        "debug" => tracing::debug!(from = "bridge process", "{message}"),
        "trace" => tracing::trace!(from = "bridge process", "{message}"),
        _ => tracing::info!(from = "bridge process", "{message}"),
    }
}

/// Stops the child: `shutdown` (answered within `grace`), `exit`, stdin closed, then SIGTERM
/// and, 2 s later, SIGKILL, all within `grace` plus 2 s. Returns its exit status if known.
pub async fn stop(
    connection: &Connection,
    process: &mut Child,
    grace: Duration,
    reason: &str,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + grace;
    if !connection.is_closed() {
        let params = protocol::ShutdownParams {
            reason: reason.into(),
            deadline_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        };
        let _ = connection
            .call_value(to_bridge::SHUTDOWN, &params, grace)
            .await;
        connection.notify(to_bridge::EXIT, &protocol::Empty {});
    }
    // Closing our side of the writer channel ends the writer task, which closes stdin.
    connection.close("stopping it");
    if let Ok(status) = tokio::time::timeout_at(deadline, process.wait()).await {
        return status.ok();
    }
    let pid = process
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        // The group: what the child started goes too.
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::TERM);
    }
    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), process.wait()).await {
        return status.ok();
    }
    tracing::warn!("the bridge process ignored SIGTERM: killing it");
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
    let _ = process.kill().await;
    process.wait().await.ok()
}
