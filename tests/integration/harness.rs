//! Real servers for the integration tests: Prosody, ejabberd, PostgreSQL (started by
//! `scripts/test`, one database per test), a slixmpp client, and the `jabbridge` binary.
//! Every server runs as its own unprivileged user, on loopback, on free ports, in a temp dir,
//! and is stopped when its handle drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use xmpp_parsers::minidom::Element;

pub const SECRET: &str = "component-secret";
pub const PASSWORD: &str = "password";

/// A port nothing listens on right now, and that no other test process was given in the
/// last ten minutes.
///
/// Ports come from below the kernel's ephemeral range (32768+), so that no outgoing
/// connection takes one between this call and the server binding it. Each one is reserved
/// with a file created exclusively in a directory shared by every test process (nextest
/// runs each test in its own process): a port the kernel handed to two processes for `bind(0)`
/// let one test's Jabbridge reach another test's Prosody.
pub fn free_port() -> u16 {
    const RESERVED_FOR: Duration = Duration::from_secs(600);
    let dir = std::env::temp_dir().join("jabbridge-test-ports");
    std::fs::create_dir_all(&dir).expect("port reservation dir");
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000u16);
        let marker = dir.join(port.to_string());
        let stale = std::fs::metadata(&marker)
            .and_then(|metadata| metadata.modified())
            .is_ok_and(|at| at.elapsed().unwrap_or_default() > RESERVED_FOR);
        if stale {
            let _ = std::fs::remove_file(&marker);
        }
        let reserved = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok();
        if reserved && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port among 1000 tries");
}

/// Waits until something accepts connections on `port`; false after `timeout`.
pub async fn port_opens(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    true
}

/// Waits until something accepts connections on `port`.
pub async fn wait_for_port(port: u16, timeout: Duration) {
    assert!(
        port_opens(port, timeout).await,
        "nothing listens on port {port}"
    );
}

fn chown(path: &Path, user: &str) {
    let status = std::process::Command::new("chown")
        .args(["-R", user])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success(), "chown {user} {}", path.display());
}

fn signal(child: &Child, name: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status();
    }
}

/// Which XMPP server a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Prosody,
    Ejabberd,
}

/// The code block that follows `<!-- snippet: NAME -->` in docs/admin.md.
fn admin_snippet(name: &str) -> String {
    let guide = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/admin.md"))
        .expect("docs/admin.md");
    let after = guide
        .split_once(&format!("<!-- snippet: {name} -->"))
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("docs/admin.md has no snippet {name}"));
    let code = after
        .split_once("```")
        .and_then(|(_, code)| code.split_once('\n'))
        .and_then(|(_, code)| code.split_once("```"))
        .map(|(code, _)| code)
        .unwrap_or_else(|| panic!("the snippet {name} is not a code block"));
    code.to_owned()
}

/// A running XMPP server with one host `localhost`, users, and component domains.
pub struct XmppServer {
    pub kind: ServerKind,
    pub c2s_port: u16,
    pub component_port: u16,
    /// ejabberd: one `ejabberd_service` listener per component (see `bridge.server`).
    pub component_ports: Vec<(String, u16)>,
    pub dir: tempfile::TempDir,
    process: Option<Child>,
}

impl XmppServer {
    /// Starts a server with `components` (each with [`SECRET`]) and `users` (each with
    /// [`PASSWORD`]) on host `localhost`.
    pub async fn start(kind: ServerKind, components: &[&str], users: &[&str]) -> XmppServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = XmppServer {
            kind,
            c2s_port: free_port(),
            component_port: free_port(),
            component_ports: Vec::new(),
            dir,
            process: None,
        };
        server.component_ports = components
            .iter()
            .enumerate()
            .map(|(index, domain)| {
                let port = match (kind, index) {
                    (ServerKind::Ejabberd, 1..) => free_port(),
                    _ => server.component_port,
                };
                (domain.to_string(), port)
            })
            .collect();
        match kind {
            ServerKind::Prosody => server.configure_prosody(components, users),
            ServerKind::Ejabberd => server.configure_ejabberd(),
        }
        server.launch().await;
        if kind == ServerKind::Ejabberd {
            for user in users {
                server
                    .ejabberdctl(&["register", user, "localhost", PASSWORD])
                    .await;
            }
        }
        server
    }

    fn configure_prosody(&self, components: &[&str], users: &[&str]) {
        let dir = self.dir.path();
        let mut config = format!(
            r#"
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
c2s_direct_tls_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; }}
modules_disabled = {{ "s2s"; "s2s_auth_certs"; }}
authentication = "internal_plain"
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
"#,
            dir = dir.display(),
            c2s = self.c2s_port,
        );
        // The component part is docs/admin.md's snippet, so that what the guide tells
        // admins is what every Prosody test runs.
        let snippet = admin_snippet("prosody");
        let (global, block) = snippet
            .split_once("Component \"")
            .expect("the Prosody snippet has a Component block");
        config.push_str(&global.replace("5347", &self.component_port.to_string()));
        config.push_str("VirtualHost \"localhost\"\n");
        for component in components {
            config.push_str(
                &format!("Component \"{block}")
                    .replace("sms.example.org", component)
                    .replace("change-me", SECRET),
            );
        }
        std::fs::write(dir.join("prosody.cfg.lua"), config).expect("write prosody config");
        let accounts = dir.join("data/localhost/accounts");
        std::fs::create_dir_all(&accounts).expect("accounts dir");
        for user in users {
            std::fs::write(
                accounts.join(format!("{user}.dat")),
                format!("return {{\n\t[\"password\"] = \"{PASSWORD}\";\n}};\n"),
            )
            .expect("write account");
        }
        chown(dir, "prosody:prosody");
    }

    fn configure_ejabberd(&self) {
        let dir = self.dir.path();
        let node = format!("jabbridge{}@localhost", self.c2s_port);
        // Each listener is docs/admin.md's snippet, so that what the guide tells admins is
        // what every ejabberd test runs.
        let snippet = admin_snippet("ejabberd");
        let listener = snippet
            .strip_prefix("listen:\n")
            .expect("the ejabberd snippet starts with listen:");
        let services: String = self
            .component_ports
            .iter()
            .map(|(domain, port)| {
                listener
                    .replace("5347", &port.to_string())
                    .replace("sms.example.org", domain)
                    .replace("change-me", SECRET)
            })
            .collect();
        let config = format!(
            r#"
hosts:
  - localhost
loglevel: info
log_rotate_count: 0
certfiles: []
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    starttls: false
{services}auth_method: internal
auth_password_format: plain
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
modules:
  mod_disco: {{}}
  mod_offline: {{}}
  mod_ping: {{}}
  mod_roster: {{}}
  mod_privilege:
    roster:
      both: all
    message:
      outgoing: all
    presence:
      managed_entity: all
      roster: all
"#,
            c2s = self.c2s_port,
        );
        std::fs::write(dir.join("ejabberd.yml"), config).expect("write ejabberd config");
        std::fs::write(
            dir.join("ejabberdctl.cfg"),
            format!(
                "ERLANG_NODE={node}\nERL_EPMD_ADDRESS=127.0.0.1\nINET_DIST_INTERFACE=127.0.0.1\n\
                 ERL_OPTIONS=\"-setcookie jabbridge-test\"\n"
            ),
        )
        .expect("write ejabberdctl.cfg");
        for sub in ["logs", "spool"] {
            std::fs::create_dir_all(dir.join(sub)).expect("ejabberd dirs");
        }
        chown(dir, "ejabberd:ejabberd");
    }

    fn ejabberd_args(&self) -> Vec<String> {
        let dir = self.dir.path().display().to_string();
        vec![
            "--config-dir".into(),
            dir.clone(),
            "--config".into(),
            format!("{dir}/ejabberd.yml"),
            "--ctl-config".into(),
            format!("{dir}/ejabberdctl.cfg"),
            "--logs".into(),
            format!("{dir}/logs"),
            "--spool".into(),
            format!("{dir}/spool"),
        ]
    }

    async fn ejabberdctl(&self, args: &[&str]) {
        let output = Command::new("ejabberdctl")
            .args(self.ejabberd_args())
            .args(args)
            .env("HOME", self.dir.path())
            .output()
            .await
            .expect("run ejabberdctl");
        assert!(
            output.status.success(),
            "ejabberdctl {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn launch(&mut self) {
        let dir = self.dir.path();
        let child = match self.kind {
            ServerKind::Prosody => Command::new("setpriv")
                .args([
                    "--reuid=prosody",
                    "--regid=prosody",
                    "--init-groups",
                    "prosody",
                    "--config",
                ])
                .arg(dir.join("prosody.cfg.lua"))
                .arg("-F")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start prosody"),
            ServerKind::Ejabberd => Command::new("ejabberdctl")
                .args(self.ejabberd_args())
                .arg("foreground")
                .env("HOME", dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("start ejabberd"),
        };
        self.process = Some(child);
        for port in [self.component_port, self.c2s_port] {
            assert!(
                port_opens(port, Duration::from_secs(30)).await,
                "{:?} did not open port {port}; its log:\n{}\n{}",
                self.kind,
                self.log(),
                std::fs::read_to_string(self.dir.path().join("logs/erlang.log"))
                    .unwrap_or_default()
            );
        }
    }

    /// Stops the server (as an operator would) and waits for it to exit.
    /// The component port a bridge on `domain` connects to (ejabberd: its own listener).
    pub fn component_port_for(&self, domain: &str) -> u16 {
        self.component_ports
            .iter()
            .find(|(name, _)| name == domain)
            .map_or(self.component_port, |(_, port)| *port)
    }

    pub async fn stop(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        match self.kind {
            ServerKind::Prosody => signal(&child, "TERM"),
            ServerKind::Ejabberd => {
                // `ejabberdctl stop` stops the node; the VM then takes a second or two to exit,
                // and a new node of the same name cannot start before it has.
                let _ = Command::new("ejabberdctl")
                    .args(self.ejabberd_args())
                    .arg("stop")
                    .env("HOME", self.dir.path())
                    .output()
                    .await;
            }
        }
        if tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
        // Wait until the port is free so that a restart can take it again.
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.component_port))
            .await
            .is_ok()
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server: its sockets stay open but it answers
    /// nothing, like a host that hangs. Prosody only (ejabberd runs under a wrapper script).
    pub fn freeze(&self, frozen: bool) {
        assert_eq!(self.kind, ServerKind::Prosody, "freeze is for Prosody");
        let child = self.process.as_ref().expect("server runs");
        signal(child, if frozen { "STOP" } else { "CONT" });
    }

    /// Starts the server again on the same ports with the same data.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.launch().await;
    }

    /// The server's log, for assertion messages.
    pub fn log(&self) -> String {
        let path = match self.kind {
            ServerKind::Prosody => self.dir.path().join("prosody.log"),
            ServerKind::Ejabberd => self.dir.path().join("logs/ejabberd.log"),
        };
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// A client logged in as `user@localhost`.
    pub async fn client(&self, user: &str) -> Client {
        Client::connect(&format!("{user}@localhost"), self.c2s_port).await
    }
}

impl Drop for XmppServer {
    fn drop(&mut self) {
        if self.kind == ServerKind::Ejabberd && self.process.is_some() {
            // The Erlang VM outlives a killed ejabberdctl script: stop the node itself.
            let _ = std::process::Command::new("ejabberdctl")
                .args(self.ejabberd_args())
                .arg("stop")
                .env("HOME", self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A slixmpp client driven through `tests/client/xmpp_client.py`.
pub struct Client {
    pub jid: String,
    input: ChildStdin,
    output: tokio::io::Lines<BufReader<ChildStdout>>,
    _process: Child,
}

impl Client {
    async fn connect(jid: &str, port: u16) -> Client {
        // A login can fail on a loaded machine right after a server (re)start; a real client
        // tries again, and so do we, a few times.
        let mut last = String::new();
        for _ in 0..3 {
            match Self::try_connect(jid, port).await {
                Ok(client) => return client,
                Err(event) => last = event,
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("{jid} could not log in: {last}");
    }

    async fn try_connect(jid: &str, port: u16) -> Result<Client, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/client/xmpp_client.py");
        let mut process = Command::new("/usr/bin/python3")
            .arg(script)
            .args([
                "--jid",
                jid,
                "--password",
                PASSWORD,
                "--port",
                &port.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the slixmpp client");
        let input = process.stdin.take().expect("client stdin");
        let output = BufReader::new(process.stdout.take().expect("client stdout")).lines();
        let mut client = Client {
            jid: String::new(),
            input,
            output,
            _process: process,
        };
        let ready = client.next_event(Duration::from_secs(20)).await;
        if ready["event"] != "ready" {
            return Err(ready.to_string());
        }
        client.jid = ready["jid"].as_str().unwrap_or_default().to_owned();
        Ok(client)
    }

    async fn next_event(&mut self, timeout: Duration) -> serde_json::Value {
        let line = tokio::time::timeout(timeout, self.output.next_line())
            .await
            .expect("timed out waiting for the client")
            .expect("read client output")
            .expect("client exited");
        serde_json::from_str(&line).expect("client printed JSON")
    }

    /// Joins `room` as `nick` with slixmpp's XEP-0045 plugin (`extra`: `maxstanzas`,
    /// `password`), and returns the client's `joined`, `join_error` or `join_timeout` event.
    /// Stanzas that arrive meanwhile are skipped (the join's own are in the event).
    pub async fn join(
        &mut self,
        room: &str,
        nick: &str,
        extra: serde_json::Value,
    ) -> serde_json::Value {
        self.join_seeing(room, nick, extra).await.0
    }

    /// [`Client::join`], with the stanzas the client received meanwhile (the occupants'
    /// presences among them).
    pub async fn join_seeing(
        &mut self,
        room: &str,
        nick: &str,
        extra: serde_json::Value,
    ) -> (serde_json::Value, Vec<Element>) {
        let mut command = serde_json::json!({ "join": room, "nick": nick });
        if let (Some(command), Some(extra)) = (command.as_object_mut(), extra.as_object()) {
            command.extend(extra.clone());
        }
        let line = command.to_string() + "\n";
        self.input
            .write_all(line.as_bytes())
            .await
            .expect("write to client");
        self.input.flush().await.expect("flush client");
        let mut seen = Vec::new();
        loop {
            let event = self.next_event(Duration::from_secs(30)).await;
            if event["event"] != "stanza" {
                return (event, seen);
            }
            if let Some(stanza) = event["xml"].as_str().and_then(|xml| xml.parse().ok()) {
                seen.push(stanza);
            }
        }
    }

    /// Sends raw XML exactly as given.
    pub async fn send(&mut self, xml: &str) {
        let line = serde_json::json!({ "send": xml }).to_string() + "\n";
        self.input
            .write_all(line.as_bytes())
            .await
            .expect("write to client");
        self.input.flush().await.expect("flush client");
    }

    /// The next received stanza for which `wanted` holds, skipping others; panics after
    /// `timeout`, listing what was skipped.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Element) -> bool,
    ) -> Element {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let event = match tokio::time::timeout(left, self.output.next_line()).await {
                Ok(Ok(Some(line))) => {
                    serde_json::from_str::<serde_json::Value>(&line).expect("JSON")
                }
                _ => panic!("no matching stanza within {timeout:?}; received: {skipped:#?}"),
            };
            if event["event"] != "stanza" {
                panic!("client event {event} while waiting; received: {skipped:#?}");
            }
            let xml = event["xml"].as_str().unwrap_or_default().to_owned();
            let element: Element = xml
                .parse()
                .unwrap_or_else(|error| panic!("unparseable {xml}: {error}"));
            if wanted(&element) {
                return element;
            }
            skipped.push(xml);
        }
    }

    /// Every stanza the client still has, until it was disconnected or `wait` passes with
    /// nothing more (for a session whose server went away).
    pub async fn remaining(&mut self, wait: Duration) -> Vec<Element> {
        let mut stanzas = Vec::new();
        loop {
            let line = match tokio::time::timeout(wait, self.output.next_line()).await {
                Ok(Ok(Some(line))) => line,
                _ => return stanzas,
            };
            let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if let Some(xml) = event["xml"].as_str()
                && let Ok(stanza) = xml.parse()
            {
                stanzas.push(stanza);
            } else if event["event"] == "disconnected" {
                return stanzas;
            }
        }
    }

    /// The next received stanza, or `None` if none comes within `wait`.
    pub async fn next_stanza(&mut self, wait: Duration) -> Option<Element> {
        loop {
            let line = match tokio::time::timeout(wait, self.output.next_line()).await {
                Err(_) => return None,
                Ok(line) => line.expect("read client output").expect("client exited"),
            };
            let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
            if let Some(xml) = event["xml"].as_str() {
                return Some(xml.parse().unwrap_or_else(|error| panic!("{xml}: {error}")));
            }
            assert_ne!(
                event["event"], "disconnected",
                "the client was disconnected"
            );
        }
    }

    /// Sends an iq and returns the reply with the same id.
    pub async fn iq(&mut self, id: &str, xml: &str) -> Element {
        self.send(xml).await;
        self.expect(Duration::from_secs(10), |stanza| {
            stanza.name() == "iq" && stanza.attr("id") == Some(id)
        })
        .await
    }

    /// Asserts that nothing matching `unwanted` arrives for `quiet`.
    pub async fn expect_none(&mut self, quiet: Duration, unwanted: impl Fn(&Element) -> bool) {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.output.next_line()).await {
                Err(_) => return,
                Ok(Ok(Some(line))) => {
                    let event: serde_json::Value = serde_json::from_str(&line).expect("JSON");
                    if let Some(xml) = event["xml"].as_str()
                        && let Ok(element) = xml.parse::<Element>()
                    {
                        assert!(!unwanted(&element), "unexpected stanza: {xml}");
                    }
                }
                Ok(_) => panic!("client exited"),
            }
        }
    }
}

/// The body text of a message stanza.
pub fn body(stanza: &Element) -> Option<String> {
    stanza
        .children()
        .find(|child| child.name() == "body")
        .map(Element::text)
}

/// The defined condition of an error stanza, e.g. `bad-request`.
pub fn error_condition(stanza: &Element) -> Option<String> {
    let error = stanza.children().find(|child| child.name() == "error")?;
    error
        .children()
        .find(|child| child.name() != "text")
        .map(|child| child.name().to_owned())
}

/// The human-readable text of an error stanza.
pub fn error_text(stanza: &Element) -> String {
    stanza
        .children()
        .find(|child| child.name() == "error")
        .and_then(|error| error.children().find(|child| child.name() == "text"))
        .map(Element::text)
        .unwrap_or_default()
}

/// A running `jabbridge run`.
pub struct Jabbridge {
    pub http_port: u16,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    process: Option<Child>,
    /// More environment for the process (e.g. systemd's NOTIFY_SOCKET).
    env: Vec<(String, String)>,
}

impl Jabbridge {
    /// Writes `config` (with `{http}` replaced by a free port) to `dir` and starts Jabbridge.
    pub async fn start(dir: &Path, config: &str) -> Jabbridge {
        Self::start_with_env(dir, config, &[]).await
    }

    /// [`Jabbridge::start`] with more environment variables.
    pub async fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Jabbridge {
        let http_port = free_port();
        let config_path = dir.join("jabbridge.toml");
        std::fs::write(
            &config_path,
            config.replace("{http}", &http_port.to_string()),
        )
        .expect("write jabbridge config");
        let mut jabbridge = Jabbridge {
            http_port,
            config_path,
            log_path: dir.join("jabbridge.log"),
            process: None,
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
        };
        jabbridge.launch().await;
        jabbridge
    }

    async fn launch(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open jabbridge log");
        let child = Command::new(env!("CARGO_BIN_EXE_jabbridge"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "info,jabbridge=debug")
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start jabbridge");
        self.process = Some(child);
        wait_for_port(self.http_port, Duration::from_secs(20)).await;
    }

    /// `GET path` on the HTTP listener: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://127.0.0.1:{}{path}", self.http_port))
            .await
            .expect("HTTP request");
        let status = response.status().as_u16();
        (status, response.text().await.unwrap_or_default())
    }

    /// Waits until `/ready` says 200.
    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get("/ready").await;
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {timeout:?}: {body}\n--- log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends SIGTERM and returns the exit code and how long the exit took.
    pub async fn terminate(&mut self) -> (Option<i32>, Duration) {
        let mut child = self.process.take().expect("jabbridge runs");
        let started = Instant::now();
        signal(&child, "TERM");
        let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
            .await
            .expect("jabbridge exits after SIGTERM")
            .expect("wait for jabbridge");
        (status.code(), started.elapsed())
    }

    /// Writes `config` (with `{http}` as at start) over the config file, sends SIGHUP, and
    /// returns the log line that tells how the reload went.
    pub async fn reload(&self, config: &str) -> String {
        std::fs::write(
            &self.config_path,
            config.replace("{http}", &self.http_port.to_string()),
        )
        .expect("write jabbridge config");
        let outcomes = |log: &str| {
            log.lines()
                .filter(|line| {
                    line.contains("configuration reloaded") || line.contains("was not reloaded")
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        let before = outcomes(&self.log()).len();
        signal(self.process.as_ref().expect("jabbridge runs"), "HUP");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(line) = outcomes(&self.log()).get(before) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no reload outcome:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills Jabbridge with SIGKILL: no flushing, no clean close, leases left held.
    pub async fn kill(&mut self) {
        let mut child = self.process.take().expect("jabbridge runs");
        signal(&child, "KILL");
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }

    /// Starts Jabbridge again with the same config, database and log.
    pub async fn restart(&mut self) {
        assert!(self.process.is_none(), "stop jabbridge first");
        self.launch().await;
    }

    /// `/metrics` value of the sample that starts with `series` (e.g. a name with labels).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.get("/metrics").await;
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Jabbridge's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A fresh PostgreSQL database on the server `scripts/test` started, or `None` with a
/// message when `JB_TEST_POSTGRES` is not set. Under CI its absence is a failure.
pub async fn postgres_database() -> Option<String> {
    let Ok(base) = std::env::var("JB_TEST_POSTGRES") else {
        assert!(
            std::env::var("CI").is_err(),
            "JB_TEST_POSTGRES is not set: run the tests through scripts/test"
        );
        eprintln!("JB_TEST_POSTGRES is not set: skipping the PostgreSQL half (run scripts/test)");
        return None;
    };
    let name = format!("test_{}", uuid::Uuid::new_v4().simple());
    let output = Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-q", "-c", &format!("CREATE DATABASE {name}")])
        .output()
        .await
        .expect("run psql");
    assert!(
        output.status.success(),
        "create database: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Some(format!("{base}/{name}"))
}

/// A PostgreSQL server of a test's own, which it may restart: as `scripts/test` starts the
/// shared one (the `postgres` user, loopback, a temp dir, a free port). `None` where the
/// PostgreSQL tests are skipped (`JB_TEST_POSTGRES` unset outside CI).
pub struct PostgresServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl PostgresServer {
    /// Starts one; `None` when PostgreSQL tests do not run here.
    pub async fn start() -> Option<PostgresServer> {
        std::env::var("JB_TEST_POSTGRES").ok()?;
        let mut bins: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed")
            .filter_map(|entry| entry.ok().map(|entry| entry.path().join("bin")))
            .collect();
        bins.sort();
        let bin = bins.pop().expect("a PostgreSQL version");
        let dir = tempfile::tempdir().expect("temp dir");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .await
            .expect("chown");
        assert!(chown.success());
        let server = PostgresServer {
            dir,
            bin,
            port: free_port(),
        };
        server
            .run(
                "initdb",
                &["-D", &server.data(), "-A", "trust", "-U", "postgres"],
            )
            .await;
        server.start_again().await;
        Some(server)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    async fn run(&self, tool: &str, args: &[&str]) {
        let output = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(tool))
            .args(args)
            .output()
            .await
            .expect("run a PostgreSQL tool");
        assert!(
            output.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn start_again(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-o",
                &options,
                "-w",
                "start",
            ],
        )
        .await;
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops it (fast: open connections are cut) and starts it again.
    pub async fn restart(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"])
            .await;
        self.start_again().await;
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
