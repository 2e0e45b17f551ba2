//! The IRC bridge through real servers: Prosody with slixmpp clients on the XMPP side, a real
//! ngircd (throttle off) with raw IRC clients on the other. A user joins a channel, talks
//! both ways (`/me`, a long multi-line message split exactly, a CR/LF injection that stays
//! text), sees nick changes, the topic and a kick, writes privately both ways; the IRC server
//! restarts and the room is rejoined with the user told; Jabbridge is killed and the room is
//! joined again at start.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use xmpp_parsers::minidom::Element;

use crate::harness::{self, Jabbridge, ServerKind, XmppServer, body};
use crate::rooms::codes;

const WAIT: Duration = Duration::from_secs(10);
const DOMAIN: &str = "irc.localhost";
const NETWORK: &str = "irc.test";

/// A throw-away ngircd on loopback, as the `irc` user when we are root, its throttle off.
pub struct Ngircd {
    pub port: u16,
    dir: tempfile::TempDir,
    process: Option<tokio::process::Child>,
    /// Whether it asks each client's ident (port 113 of 127.0.0.1).
    ident: bool,
}

impl Ngircd {
    /// Starts one, or `None` (outside CI) when ngircd is not installed.
    pub async fn start() -> Option<Ngircd> {
        Self::start_asking(false).await
    }

    /// [`Ngircd::start`], asking each client's ident with `ident`.
    pub async fn start_asking(ident: bool) -> Option<Ngircd> {
        if std::process::Command::new("ngircd")
            .arg("--version")
            .output()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "ngircd is needed under CI"
            );
            eprintln!("skipped: no ngircd");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let mut server = Ngircd {
            port: harness::free_port(),
            dir,
            process: None,
            ident,
        };
        server.run().await;
        Some(server)
    }

    async fn run(&mut self) {
        let config = self.dir.path().join("ngircd.conf");
        // ngircd asks ident in its resolver, which runs only with DNS on.
        let ident = if self.ident { "yes" } else { "no" };
        std::fs::write(
            &config,
            format!(
                "[Global]\nName = {NETWORK}\nInfo = test\nListen = 127.0.0.1\nPorts = {}\n\
                 [Limits]\nMaxPenaltyTime = 0\nMaxNickLength = 30\n\
                 [Options]\nPAM = no\nIdent = {ident}\nDNS = {ident}\n",
                self.port,
            ),
        )
        .expect("write the config");
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .is_some_and(|uid| String::from_utf8_lossy(&uid.stdout).trim() == "0");
        let mut command = if root {
            let mut command = tokio::process::Command::new("setpriv");
            command.args(["--reuid=irc", "--regid=irc", "--init-groups", "ngircd"]);
            command
        } else {
            tokio::process::Command::new("ngircd")
        };
        let process = command
            .args(["-n", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start ngircd");
        self.process = Some(process);
        assert!(
            harness::port_opens(self.port, Duration::from_secs(10)).await,
            "ngircd did not listen"
        );
    }

    /// Kills the server (every connection drops) and starts it again on the same port.
    pub async fn restart(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill().await;
            let _ = process.wait().await;
        }
        self.run().await;
    }
}

/// Whether we run as root (then servers run as the `irc` user).
fn root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|uid| String::from_utf8_lossy(&uid.stdout).trim() == "0")
}

/// `program` as the `irc` user when we are root.
fn as_irc(program: &str) -> tokio::process::Command {
    if root() {
        let mut command = tokio::process::Command::new("setpriv");
        command.args(["--reuid=irc", "--regid=irc", "--init-groups", program]);
        command
    } else {
        tokio::process::Command::new(program)
    }
}

/// A throw-away InspIRCd 3 with atheme linked (IRCv3, SASL, NickServ), on loopback, from
/// the templates in `tests/irc-servers/`. InspIRCd registers a client in a once-a-second
/// sweep: each connection takes about a second.
pub struct Inspircd {
    pub port: u16,
    /// The client port with TLS (a self-signed certificate; client certificates asked for).
    pub tls_port: u16,
    dir: tempfile::TempDir,
    _inspircd: tokio::process::Child,
    _atheme: tokio::process::Child,
}

impl Inspircd {
    /// Starts both, or `None` (outside CI) when they are not installed.
    pub async fn start() -> Option<Inspircd> {
        let installed = ["/usr/sbin/inspircd", "/usr/bin/atheme-services"]
            .iter()
            .all(|path| std::path::Path::new(path).exists());
        if !installed {
            assert!(
                std::env::var_os("CI").is_none(),
                "inspircd and atheme-services are needed under CI"
            );
            eprintln!("skipped: no inspircd or atheme-services");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = harness::free_port();
        let tls_port = harness::free_port();
        let link = harness::free_port();
        let made = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=irc.test", "-keyout"])
            .arg(dir.path().join("tls-key.pem"))
            .arg("-out")
            .arg(dir.path().join("tls-cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(
            made.success(),
            "openssl could not make the server's certificate"
        );
        let fill = |template: &str| {
            template
                .replace("@PORT@", &port.to_string())
                .replace("@TLSPORT@", &tls_port.to_string())
                .replace("@LINKPORT@", &link.to_string())
                .replace("@PASSWORD@", "link-secret")
                .replace("@DIR@", &dir.path().display().to_string())
        };
        let inspircd_conf = dir.path().join("inspircd.conf");
        let atheme_conf = dir.path().join("atheme.conf");
        std::fs::write(
            &inspircd_conf,
            fill(include_str!("../irc-servers/inspircd.conf.in")),
        )
        .expect("write inspircd.conf");
        std::fs::write(
            &atheme_conf,
            fill(include_str!("../irc-servers/atheme.conf.in")),
        )
        .expect("write atheme.conf");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        if root() {
            let owned = std::process::Command::new("chown")
                .args(["-R", "irc:irc"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(owned.success());
        }
        let mut inspircd = as_irc("/usr/sbin/inspircd")
            .arg("--config")
            .arg(&inspircd_conf)
            .args(["--nofork", "--nopid"])
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start inspircd");
        let stdout = inspircd.stdout.take().expect("inspircd's stdout");
        let mut lines = BufReader::new(stdout).lines();
        let running = tokio::time::timeout(Duration::from_secs(20), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("is now running as") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(running, Ok(true), "inspircd did not start");
        // Its stdout is drained for as long as it runs.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let atheme = as_irc("atheme-services")
            .arg("-n")
            .arg("-c")
            .arg(&atheme_conf)
            .arg("-D")
            .arg(dir.path())
            .arg("-l")
            .arg(dir.path().join("atheme.log"))
            .arg("-p")
            .arg(dir.path().join("atheme.pid"))
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start atheme");
        let log = dir.path().join("atheme.log");
        let synced = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("finished synching with uplink") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(synced.is_ok(), "atheme did not link to inspircd");
        Some(Inspircd {
            port,
            tls_port,
            dir,
            _inspircd: inspircd,
            _atheme: atheme,
        })
    }

    /// The services' log, for failures.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("atheme.log")).unwrap_or_default()
    }
}

/// A raw IRC client, as people on IRC use it.
pub struct IrcUser {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl IrcUser {
    /// Connects and registers as `nick`.
    pub async fn connect(port: u16, nick: &str) -> IrcUser {
        Self::connect_named(port, nick, nick).await
    }

    /// [`IrcUser::connect`] with a real name.
    pub async fn connect_named(port: u16, nick: &str, realname: &str) -> IrcUser {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to ngircd");
        stream.set_nodelay(true).expect("nodelay");
        let (read, write) = stream.into_split();
        let mut user = IrcUser {
            reader: BufReader::new(read),
            writer: write,
        };
        user.send(&format!("NICK {nick}")).await;
        user.send(&format!("USER {nick} 0 * :{realname}")).await;
        user.expect(|line| line.contains(" 001 ")).await;
        user
    }

    pub async fn send(&mut self, line: &str) {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write to IRC");
    }

    /// The next line for which `wanted` holds (PINGs answered on the way), within 10 s.
    pub async fn expect(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let mut line = String::new();
                let read = self.reader.read_line(&mut line).await.expect("read IRC");
                assert!(read > 0, "the IRC server closed; saw {seen:#?}");
                let line = line.trim_end().to_owned();
                if let Some(token) = line.strip_prefix("PING ") {
                    self.send(&format!("PONG {token}")).await;
                    continue;
                }
                if wanted(&line) {
                    return line;
                }
                seen.push(line);
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no such IRC line within {WAIT:?}; saw {seen:#?}"))
    }
}

/// A Jabbridge config with one IRC bridge reaching `port`, flood control off.
pub fn irc_config(server: &XmppServer, dir: &std::path::Path, port: u16) -> String {
    irc_config_with(server, dir, port, "")
}

/// [`irc_config`] with more keys for the bridge.
pub fn irc_config_with(
    server: &XmppServer,
    dir: &std::path::Path,
    port: u16,
    extra: &str,
) -> String {
    let head = crate::config_head(server, dir);
    format!(
        r#"{head}
[[bridge]]
kind = "irc"
domain = "{DOMAIN}"
secret = "{secret}"
server = "127.0.0.1:{component}"
allow = ["localhost"]
reconnect_max = "2s"
flood = {{ burst = 10, per_second = 0 }}
{extra}

[[bridge.network]]
name = "{NETWORK}"
host = "127.0.0.1"
port = {port}
tls = "off"
"#,
        component = server.component_port_for(DOMAIN),
        secret = harness::SECRET,
    )
}

/// The bridge's key for the secrets of users' settings.
const SECRET_KEY: &str = "secret_key = \"a test key of more than sixteen characters\"";

/// A Jabbridge bridging `server` to the IRC server on `port`, with a [`SECRET_KEY`] (users
/// can keep settings), ready; and its directory.
async fn keyed_jabbridge(server: &XmppServer, port: u16) -> (tempfile::TempDir, Jabbridge) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = irc_config_with(server, dir.path(), port, SECRET_KEY);
    let jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    (dir, jabbridge)
}

fn room() -> String {
    format!("#test%{NETWORK}@{DOMAIN}")
}

/// ngircd, a Prosody with alice, and a Jabbridge bridging them, ready; `None` (the test
/// skipped) where ngircd is missing outside CI.
async fn on_ngircd() -> Option<(Ngircd, XmppServer, tempfile::TempDir, Jabbridge)> {
    let ircd = Ngircd::start().await?;
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(dir.path(), &irc_config(&server, dir.path(), ircd.port)).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    Some((ircd, server, dir, jabbridge))
}

fn from(stanza: &Element, jid: &str) -> bool {
    stanza.attr("from") == Some(jid)
}

/// A presence's `<show/>`.
fn show_of(presence: &Element) -> Option<String> {
    presence
        .get_child("show", "jabber:client")
        .map(Element::text)
}

/// The full name of `occupant`'s vCard (`vcard-temp`), as `client` reads it.
async fn vcard_name(client: &mut harness::Client, occupant: &str) -> Option<String> {
    client
        .send(&format!(
            "<iq type='get' to='{occupant}' id='card'><vCard xmlns='vcard-temp'/></iq>"
        ))
        .await;
    let card = client
        .expect(WAIT, |s| s.name() == "iq" && s.attr("id") == Some("card"))
        .await;
    card.get_child("vCard", "vcard-temp")
        .and_then(|vcard| vcard.get_child("FN", "vcard-temp"))
        .map(Element::text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_is_a_room_both_ways() {
    let Some((ircd, server, _dir, mut jabbridge)) = on_ngircd().await else {
        return;
    };
    let room = room();

    let mut bob = IrcUser::connect_named(ircd.port, "bob", "Bob Builder").await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    bob.send("AWAY :lunch").await;
    bob.expect(|line| line.contains(" 306 ")).await;

    // Alice joins from XMPP: she sees Bob (the channel's op, a moderator) and herself. Bob
    // was there first, and away: WHO says so, and his real name, before she is in.
    let mut alice = server.client("alice").await;
    let bob_occupant = format!("{room}/bob");
    let (joined, seen) = alice
        .join_seeing(&room, "alice", serde_json::json!({}))
        .await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["nick"], "alice");
    assert_eq!(joined["occupants"], serde_json::json!(["alice", "bob"]));
    let shown = seen
        .iter()
        .find(|s| s.name() == "presence" && from(s, &bob_occupant))
        .expect("Bob's presence");
    assert_eq!(show_of(shown).as_deref(), Some("away"), "{shown:?}");
    assert_eq!(
        vcard_name(&mut alice, &bob_occupant).await.as_deref(),
        Some("Bob Builder")
    );
    bob.expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;

    // Bob invites her to another channel: an invitation to its room, from his address.
    bob.send("JOIN #inv").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    bob.send("INVITE alice #inv").await;
    let invited_to = format!("#inv%{NETWORK}@{DOMAIN}");
    let invitation = alice
        .expect(WAIT, |s| s.name() == "message" && from(s, &invited_to))
        .await;
    let inviter = invitation
        .get_child("x", "http://jabber.org/protocol/muc#user")
        .and_then(|x| x.get_child("invite", "http://jabber.org/protocol/muc#user"))
        .and_then(|invite| invite.attr("from"));
    assert_eq!(
        inviter,
        Some(format!("bob%{NETWORK}@{DOMAIN}").as_str()),
        "{invitation:?}"
    );
    let direct = invitation
        .get_child("x", "jabber:x:conference")
        .and_then(|x| x.attr("jid"));
    assert_eq!(direct, Some(invited_to.as_str()), "{invitation:?}");
    // And she invites Carol, on IRC, to the room she is in: an INVITE reaches Carol. A JID
    // that is no one on the network is refused.
    let mut carol = IrcUser::connect(ircd.port, "carol").await;
    alice
        .send(&format!(
            "<message to='{room}' id='inv1'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite to='carol%{NETWORK}@{DOMAIN}'/></x></message>"
        ))
        .await;
    let invite = carol.expect(|line| line.contains(" INVITE ")).await;
    assert!(
        invite.starts_with(":alice!") && invite.ends_with("INVITE carol #test"),
        "{invite}"
    );
    alice
        .send(&format!(
            "<message to='{room}' id='inv2'><x xmlns='http://jabber.org/protocol/muc#user'>\
             <invite to='dave@elsewhere.example'/></x></message>"
        ))
        .await;
    let refused = alice
        .expect(WAIT, |s| {
            s.name() == "message" && s.attr("id") == Some("inv2")
        })
        .await;
    assert_eq!(refused.attr("type"), Some("error"), "{refused:?}");
    assert_eq!(
        harness::error_condition(&refused).as_deref(),
        Some("feature-not-implemented"),
        "{refused:?}"
    );
    carol.send("QUIT").await;

    // Bob talks; Alice reads it from his occupant JID.
    bob.send("PRIVMSG #test :hello alice").await;
    let said = alice
        .expect(WAIT, |s| {
            from(s, &format!("{room}/bob")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&said).as_deref(), Some("hello alice"));
    assert_eq!(said.attr("type"), Some("groupchat"));
    // ngircd carries no client tags: a reaction to it is refused, saying why.
    let said_id = said
        .get_child("stanza-id", "urn:xmpp:sid:0")
        .and_then(|id| id.attr("id"))
        .expect("a stanza id");
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='r1'>\
             <reactions xmlns='urn:xmpp:reactions:0' id='{said_id}'><reaction>👍</reaction>\
             </reactions></message>"
        ))
        .await;
    let refused = alice.expect(WAIT, |s| s.attr("id") == Some("r1")).await;
    assert_eq!(
        harness::error_condition(&refused).as_deref(),
        Some("feature-not-implemented"),
        "{refused:?}"
    );
    assert!(
        harness::error_text(&refused).contains("message-tags"),
        "{refused:?}"
    );

    // Alice talks: Bob gets each line, she gets her reflection once.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='a1'><body>hi bob\nsecond line</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='origin-a1'/></message>"
        ))
        .await;
    let first = bob.expect(|line| line.contains("PRIVMSG #test")).await;
    assert!(first.starts_with(":alice!"), "{first}");
    assert!(first.ends_with("PRIVMSG #test :hi bob"), "{first}");
    let second = bob.expect(|line| line.contains("PRIVMSG #test")).await;
    assert!(second.ends_with("PRIVMSG #test :second line"), "{second}");
    let mine = |s: &Element| from(s, &format!("{room}/alice")) && body(s).is_some();
    let reflection = alice.expect(WAIT, mine).await;
    assert_eq!(body(&reflection).as_deref(), Some("hi bob\nsecond line"));
    alice.expect_none(Duration::from_millis(500), mine).await;
    // ngircd cannot take a retraction back (no message-redaction): refused, saying why.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='x1'>\
             <retract xmlns='urn:xmpp:message-retract:1' id='origin-a1'/></message>"
        ))
        .await;
    let refused = alice.expect(WAIT, |s| s.attr("id") == Some("x1")).await;
    assert_eq!(
        harness::error_condition(&refused).as_deref(),
        Some("feature-not-implemented"),
        "{refused:?}"
    );
    assert!(
        harness::error_text(&refused).contains("message-redaction"),
        "{refused:?}"
    );

    // An injection attempt stays text: a line break makes a second PRIVMSG, never a command.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='a2'><body>x&#13;&#10;QUIT :bye&#13;JOIN #evil</body></message>"
        ))
        .await;
    for expected in [
        "PRIVMSG #test :x",
        "PRIVMSG #test :QUIT :bye",
        "PRIVMSG #test :JOIN #evil",
    ] {
        let line = bob.expect(|line| line.contains("PRIVMSG #test")).await;
        assert!(line.ends_with(expected), "{line} is not {expected}");
    }

    // A long message is cut at words within IRC's line, and nothing is lost.
    let words: Vec<String> = (0..200).map(|n| format!("word{n}")).collect();
    let long = words.join(" ");
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='a3'><body>{long}</body></message>"
        ))
        .await;
    let mut pieces = Vec::new();
    while pieces.join(" ").len() < long.len() {
        let line = bob
            .expect(|line| line.contains("PRIVMSG #test :word"))
            .await;
        assert!(line.len() + 2 <= 512, "{} bytes", line.len());
        let text = line
            .split_once("PRIVMSG #test :")
            .map(|(_, text)| text.to_owned());
        pieces.push(text.expect("a text"));
    }
    assert!(pieces.len() >= 3, "{pieces:?}");
    assert_eq!(pieces.join(" "), long);

    // /me both ways.
    bob.send("PRIVMSG #test :\u{1}ACTION waves\u{1}").await;
    let action = alice
        .expect(WAIT, |s| {
            from(s, &format!("{room}/bob")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&action).as_deref(), Some("/me waves"));
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='a4'><body>/me smiles</body></message>"
        ))
        .await;
    let line = bob.expect(|line| line.contains("PRIVMSG #test")).await;
    assert!(
        line.ends_with("PRIVMSG #test :\u{1}ACTION smiles\u{1}"),
        "{line}"
    );

    // A client reusing its message ids still sees each post reflected, and IRC gets both.
    for text in ["same id, first", "same id, second"] {
        alice
            .send(&format!(
                "<message type='groupchat' to='{room}' id='dup'><body>{text}</body>\
                 <origin-id xmlns='urn:xmpp:sid:0' id='dup'/></message>"
            ))
            .await;
        alice
            .expect(WAIT, |s| mine(s) && body(s).as_deref() == Some(text))
            .await;
        bob.expect(|line| line.contains("PRIVMSG #test") && line.ends_with(text))
            .await;
    }

    // The topic: Bob sets it, Alice gets the subject from him.
    bob.send("TOPIC #test :tea time").await;
    let subject = alice
        .expect(WAIT, |s| {
            s.children().any(|child| child.name() == "subject")
        })
        .await;
    assert!(from(&subject, &format!("{room}/bob")), "{subject:?}");

    // Bob changes nick: Alice sees 303 and him back under the new one.
    bob.send("NICK bobby").await;
    let renamed = alice
        .expect(WAIT, |s| {
            s.name() == "presence" && from(s, &format!("{room}/bob"))
        })
        .await;
    assert_eq!(codes(&renamed), ["303"]);
    alice
        .expect(WAIT, |s| {
            s.name() == "presence" && from(s, &format!("{room}/bobby"))
        })
        .await;

    // Private messages both ways, from and to nick%server.
    bob.send("PRIVMSG alice :psst").await;
    let contact = format!("bobby%{NETWORK}@{DOMAIN}");
    let private = alice.expect(WAIT, |s| from(s, &contact)).await;
    assert_eq!(body(&private).as_deref(), Some("psst"));
    alice
        .send(&format!(
            "<message type='chat' to='{contact}' id='p1'><body>hi there</body></message>"
        ))
        .await;
    let line = bob.expect(|line| line.contains("PRIVMSG bobby")).await;
    assert!(
        line.starts_with(":alice!") && line.ends_with(":hi there"),
        "{line}"
    );

    // A private message to Bob's occupant JID is a query to him.
    alice
        .send(&format!(
            "<message type='chat' to='{room}/bobby' id='p2'><body>via the room</body>\
             <x xmlns='http://jabber.org/protocol/muc#user'/></message>"
        ))
        .await;
    let line = bob.expect(|line| line.contains("PRIVMSG bobby")).await;
    assert!(line.ends_with(":via the room"), "{line}");

    // To a nick nobody has: the server's 401 (one per line) comes back as one error on
    // that message, and as nothing else.
    let nobody = format!("nobody%{NETWORK}@{DOMAIN}");
    alice
        .send(&format!(
            "<message type='chat' to='{nobody}' id='p3'><body>anyone?\nhello?</body></message>"
        ))
        .await;
    let refused = alice
        .expect(WAIT, |s| {
            s.attr("id") == Some("p3") && s.attr("type") == Some("error")
        })
        .await;
    let text = harness::error_text(&refused);
    assert!(text.contains("No such nick"), "{text}");
    alice
        .expect_none(Duration::from_millis(500), |s| {
            s.attr("type") == Some("error")
                || body(s).is_some_and(|text| text.contains("No such nick"))
        })
        .await;

    // The server's channels (LIST) are the gateway's rooms in disco#items.
    let items = alice
        .iq(
            "items",
            &format!(
                "<iq type='get' to='{DOMAIN}' id='items'>\
                 <query xmlns='http://jabber.org/protocol/disco#items'/></iq>"
            ),
        )
        .await;
    let listed: Vec<&str> = items
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .map(|query| {
            query
                .children()
                .filter_map(|item| item.attr("jid"))
                .collect()
        })
        .unwrap_or_default();
    assert!(listed.contains(&room.as_str()), "{items:?}");

    // Alice shows away in the room: IRC sees her away with her status, then back.
    alice
        .send(&format!(
            "<presence to='{room}/alice'><show>xa</show><status>at lunch</status></presence>"
        ))
        .await;
    assert_eq!(
        whois_until(&mut bob, |away| away.is_some())
            .await
            .as_deref(),
        Some("at lunch")
    );
    alice.send(&format!("<presence to='{room}/alice'/>")).await;
    assert_eq!(whois_until(&mut bob, |away| away.is_none()).await, None);
    // Joining another channel already busy sets her away too.
    alice
        .send(&format!(
            "<presence to='#second%{NETWORK}@{DOMAIN}/alice'>\
             <x xmlns='http://jabber.org/protocol/muc'/><show>dnd</show>\
             <status>in a meeting</status></presence>"
        ))
        .await;
    assert_eq!(
        whois_until(&mut bob, |away| away.is_some())
            .await
            .as_deref(),
        Some("in a meeting")
    );

    // Bob (the channel's op) kicks Alice: she is out, with 307 and 110.
    bob.send("KICK #test alice :enough").await;
    let kicked = alice
        .expect(WAIT, |s| {
            s.name() == "presence"
                && s.attr("type") == Some("unavailable")
                && from(s, &format!("{room}/alice"))
        })
        .await;
    let mut kicked_codes = codes(&kicked);
    kicked_codes.sort();
    assert_eq!(kicked_codes, ["110", "307"]);
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_come_back_after_the_irc_server_and_jabbridge_restart() {
    let Some(mut ircd) = Ngircd::start().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut jabbridge =
        Jabbridge::start(dir.path(), &irc_config(&server, dir.path(), ircd.port)).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let room = room();
    let mut alice = server.client("alice").await;
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");

    // The IRC server restarts: Alice is told in the room, and is back in the channel.
    ircd.restart().await;
    let notice = |s: &Element| from(s, &room) && body(s).is_some();
    let down = alice.expect(WAIT, notice).await;
    let text = body(&down).unwrap_or_default();
    assert!(text.contains("Disconnected from irc.test"), "{text}");
    let back = alice.expect(Duration::from_secs(20), notice).await;
    let text = body(&back).unwrap_or_default();
    assert!(text.contains("Reconnected to irc.test"), "{text}");
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #test").await;
    let names = bob.expect(|line| line.contains(" 353 ")).await;
    assert!(names.contains("alice"), "{names}");
    bob.send("PRIVMSG #test :welcome back").await;
    let said = alice
        .expect(WAIT, |s| {
            from(s, &format!("{room}/bob")) && body(s).is_some()
        })
        .await;
    assert_eq!(body(&said).as_deref(), Some("welcome back"));

    // Jabbridge is killed: at its next start Alice is in the channel again.
    jabbridge.kill().await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains("QUIT"))
        .await;
    jabbridge.restart().await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;
    bob.send("PRIVMSG #test :still there?").await;
    let said = alice
        .expect(Duration::from_secs(20), |s| {
            from(s, &format!("{room}/bob")) && body(s).as_deref() == Some("still there?")
        })
        .await;
    assert_eq!(said.attr("type"), Some("groupchat"));
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_alice_stays_in_keeps_her_while_away_and_after_a_crash() {
    let Some(ircd) = Ngircd::start().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let grace = "rooms = { leave_grace = \"1s\" }";
    let config = irc_config_with(&server, dir.path(), ircd.port, grace);
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let room = room();
    let mut alice = server.client("alice").await;
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    assert_eq!(
        command_nodes(&mut alice, &room).await,
        [(room.clone(), "configure".to_owned())]
    );
    let (offered, note) = command_at(&mut alice, &room, "configure", &[("persistent", "1")]).await;
    assert_eq!(offered, ["FORM_TYPE", "persistent"]);
    assert!(note.contains("You stay in"), "{note}");

    // Her client leaves: past the grace period she is still in the channel, and what is
    // said there goes on into the room's archive.
    let gone = |s: &Element| {
        s.name() == "presence"
            && s.attr("type") == Some("unavailable")
            && from(s, &format!("{room}/alice"))
    };
    alice
        .send(&format!("<presence type='unavailable' to='{room}/alice'/>"))
        .await;
    alice.expect(WAIT, gone).await;
    bob.send("PRIVMSG #test :are you there?").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    bob.send("NAMES #test").await;
    let names = bob.expect(|line| line.contains(" 353 ")).await;
    assert!(names.contains("alice"), "{names}");

    // Jabbridge is killed: at its next start she is in the channel again, with no client in
    // the room; her client joining finds what Bob said, with its time.
    jabbridge.kill().await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains("QUIT"))
        .await;
    jabbridge.restart().await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;
    let (joined, seen) = alice
        .join_seeing(&room, "alice", serde_json::json!({}))
        .await;
    assert_eq!(joined["event"], "joined", "{joined}");
    let said = seen
        .iter()
        .find(|s| from(s, &format!("{room}/bob")) && body(s).as_deref() == Some("are you there?"))
        .unwrap_or_else(|| panic!("no history in {seen:?}"));
    assert!(said.has_child("delay", "urn:xmpp:delay"), "{said:?}");

    // She stays no more: her client leaving parts the channel after the grace period.
    let (_, note) = command_at(&mut alice, &room, "configure", &[("persistent", "0")]).await;
    assert!(note.contains("You leave"), "{note}");
    alice
        .send(&format!("<presence type='unavailable' to='{room}/alice'/>"))
        .await;
    alice.expect(WAIT, gone).await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains(" PART "))
        .await;
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asking_an_occupant_or_a_contact_their_software_or_a_ping_asks_them_by_ctcp() {
    let Some((ircd, server, _dir, mut jabbridge)) = on_ngircd().await else {
        return;
    };
    let room = room();
    let mut alice = server.client("alice").await;
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    let version = |id: &str, to: &str| {
        format!("<iq type='get' id='{id}' to='{to}'><query xmlns='jabber:iq:version'/></iq>")
    };
    let name = |answer: &Element| {
        answer
            .get_child("query", "jabber:iq:version")
            .and_then(|query| query.get_child("name", "jabber:iq:version"))
            .map(Element::text)
    };
    // Bob's occupant, then his address: each time a CTCP VERSION, his reply the answer.
    for (id, to) in [
        ("v1", format!("{room}/bob")),
        ("v2", format!("bob%{NETWORK}@{DOMAIN}")),
    ] {
        alice.send(&version(id, &to)).await;
        bob.expect(|line| {
            line.starts_with(":alice!") && line.ends_with("PRIVMSG bob :\u{1}VERSION\u{1}")
        })
        .await;
        bob.send("NOTICE alice :\u{1}VERSION irssi v1.4.5 - running on Linux\u{1}")
            .await;
        let answer = alice
            .expect(WAIT, |s| s.name() == "iq" && s.attr("id") == Some(id))
            .await;
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
        assert_eq!(
            name(&answer).as_deref(),
            Some("irssi v1.4.5 - running on Linux")
        );
    }
    // Nobody of that nick in the room: asked nothing.
    let answer = alice
        .iq("v3", &version("v3", &format!("{room}/nobody")))
        .await;
    assert_eq!(
        harness::error_condition(&answer).as_deref(),
        Some("item-not-found"),
        "{answer:?}"
    );

    // A ping (XEP-0199) to his occupant, then to his address: each a CTCP PING, answered once
    // he answers it. Her self-ping is answered at once.
    for (id, to) in [
        ("p1", format!("{room}/bob")),
        ("p2", format!("bob%{NETWORK}@{DOMAIN}")),
    ] {
        alice
            .send(&format!(
                "<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
            ))
            .await;
        let asked = bob
            .expect(|line| line.starts_with(":alice!") && line.contains("PRIVMSG bob :\u{1}PING "))
            .await;
        alice
            .expect_none(Duration::from_millis(300), |s| s.attr("id") == Some(id))
            .await;
        let token = asked
            .rsplit_once("PING ")
            .map(|(_, token)| token)
            .unwrap_or_default();
        bob.send(&format!("NOTICE alice :\u{1}PING {token}")).await;
        let answer = alice
            .expect(WAIT, |s| s.name() == "iq" && s.attr("id") == Some(id))
            .await;
        assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    }
    let answer = alice
        .iq(
            "p3",
            &format!("<iq type='get' id='p3' to='{room}/alice'><ping xmlns='urn:xmpp:ping'/></iq>"),
        )
        .await;
    assert_eq!(answer.attr("type"), Some("result"), "{answer:?}");
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_reaches_each_irc_server_as_configured() {
    let Some(ircd) = Ngircd::start().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &[]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = irc_config(&server, dir.path(), ircd.port)
        .replace("{http}", &harness::free_port().to_string());
    let doctor = |config: &str| crate::cli::doctor(dir.path(), config);
    let (ok, output) = doctor(&config);
    assert!(ok, "{output}");
    let seen = format!(
        "ok    bridge[0] {DOMAIN}: IRC server {NETWORK}: reachable at 127.0.0.1:{}, without TLS",
        ircd.port
    );
    assert!(output.contains(&seen), "{output}");
    // TLS wanted of a server that speaks none, and a port with nothing on it: each fails,
    // naming the network to fix.
    let tls = config.replace("tls = \"off\"", "tls = \"verify\"");
    let gone = config.replace(
        &format!("port = {}", ircd.port),
        &format!("port = {}", harness::free_port()),
    );
    for broken in [tls, gone] {
        assert_ne!(broken, config);
        let (ok, output) = doctor(&broken);
        assert!(!ok, "{output}");
        let fix = format!("FAIL  bridge[0] {DOMAIN}: IRC server {NETWORK}: ");
        assert!(output.contains(&fix), "{output}");
        assert!(
            output.contains("check [[bridge.network]] 'irc.test'"),
            "{output}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ident_service_tells_the_server_each_users_user_name() {
    if !root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "port 113 needs root under CI"
        );
        eprintln!("skipped: port 113 needs root");
        return;
    }
    let Some(ircd) = Ngircd::start_asking(true).await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = irc_config_with(&server, dir.path(), ircd.port, "identd = \"127.0.0.1:113\"");
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    assert!(
        harness::port_opens(113, Duration::from_secs(10)).await,
        "the ident service did not listen"
    );
    let mut alice = server.client("alice").await;
    let note = irc_settings(&mut alice, &[("server", NETWORK), ("username", "alice7")]).await;
    assert!(note.contains("user name alice7"), "{note}");
    let joined = alice.join(&room(), "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    // Bob has no ident: the server marks his user name with '~'. Alice's the gateway told.
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    for (nick, user) in [("bob", "~bob"), ("alice", "alice7")] {
        bob.send(&format!("WHOIS {nick}")).await;
        let whois = bob
            .expect(|line| line.split(' ').nth(1) == Some("311"))
            .await;
        assert_eq!(whois.split(' ').nth(4), Some(user), "{whois}");
    }
    // What /metrics counts: Alice's answer, her one connection, the lines both ways.
    let answers = r#"jabbridge_irc_ident_answers_total{bridge="irc.localhost"}"#;
    assert_eq!(jabbridge.metric(answers).await, 1.0);
    let server = format!(r#"{{bridge="{DOMAIN}",network="{NETWORK}"}}"#);
    let metric = |name: &str| format!("jabbridge_irc_{name}{server}");
    assert_eq!(jabbridge.metric(&metric("connections")).await, 1.0);
    assert!(jabbridge.metric(&metric("lines_in_total")).await >= 5.0);
    // Once registered: her JOIN and WHO at least.
    assert!(jabbridge.metric(&metric("lines_out_total")).await >= 2.0);
    assert_eq!(
        jabbridge.metric(&metric("connections_lost_total")).await,
        0.0
    );
    jabbridge.terminate().await;
}

/// Asks who alice is until her away text (301) satisfies `wanted`, for up to 5 s: that
/// text (`None`: not away). Each WHOIS is read to its end (318).
async fn whois_until(
    user: &mut IrcUser,
    wanted: impl Fn(&Option<String>) -> bool,
) -> Option<String> {
    let mut away = None;
    for _ in 0..50 {
        user.send("WHOIS alice").await;
        away = None;
        loop {
            let line = user
                .expect(|line| {
                    let mut words = line.split(' ').skip(1);
                    let numeric = words.next();
                    matches!(numeric, Some("301" | "318")) && words.nth(1) == Some("alice")
                })
                .await;
            if line.split(' ').nth(1) == Some("318") {
                break;
            }
            away = line.split_once(" :").map(|(_, text)| text.to_owned());
        }
        if wanted(&away) {
            return away;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("alice's away stayed {away:?}");
}

/// Runs the ad-hoc command `node` at `at`, which asks nothing there: its note.
async fn run_command(client: &mut harness::Client, at: &str, node: &str) -> String {
    let commands = "http://jabber.org/protocol/commands";
    let done = client
        .iq(
            "r1",
            &format!(
                "<iq type='set' to='{at}' id='r1'><command xmlns='{commands}' \
                 node='{node}' action='execute'/></iq>"
            ),
        )
        .await;
    let command = done.get_child("command", commands);
    assert_eq!(
        command.and_then(|command| command.attr("status")),
        Some("completed"),
        "{done:?}"
    );
    command
        .and_then(|command| command.get_child("note", commands))
        .map(Element::text)
        .unwrap_or_default()
}

/// The ad-hoc commands listed at `at` (disco#items of the commands node): JID and node.
async fn command_nodes(client: &mut harness::Client, at: &str) -> Vec<(String, String)> {
    let listed = client
        .iq(
            "d1",
            &format!(
                "<iq type='get' to='{at}' id='d1'><query \
                 xmlns='http://jabber.org/protocol/disco#items' \
                 node='http://jabber.org/protocol/commands'/></iq>"
            ),
        )
        .await;
    let query = listed
        .get_child("query", "http://jabber.org/protocol/disco#items")
        .unwrap_or_else(|| panic!("no items in {listed:?}"));
    query
        .children()
        .filter_map(|item| Some((item.attr("jid")?.to_owned(), item.attr("node")?.to_owned())))
        .collect()
}

/// Runs the `irc-settings` command on the gateway with `fields`; the bridge's note.
async fn irc_settings(client: &mut harness::Client, fields: &[(&str, &str)]) -> String {
    command_at(client, DOMAIN, "irc-settings", fields).await.1
}

/// Runs the command `node` on the JID `at` with `fields`: the fields of the form it
/// offered, and the note it ends with.
async fn command_at(
    client: &mut harness::Client,
    at: &str,
    node: &str,
    fields: &[(&str, &str)],
) -> (Vec<String>, String) {
    let commands = "http://jabber.org/protocol/commands";
    let form = client
        .iq(
            "s1",
            &format!(
                "<iq type='set' to='{at}' id='s1'><command xmlns='{commands}' \
                 node='{node}' action='execute'/></iq>"
            ),
        )
        .await;
    let offered: Vec<String> = form
        .get_child("command", commands)
        .and_then(|command| command.get_child("x", "jabber:x:data"))
        .map(|x| {
            x.children()
                .filter_map(|field| field.attr("var").map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let session = form
        .get_child("command", commands)
        .and_then(|command| command.attr("sessionid"))
        .unwrap_or_default()
        .to_owned();
    // A value of several lines is several values (a `text-multi` field).
    let values: String = fields
        .iter()
        .map(|(var, value)| {
            let values: String = value
                .split('\n')
                .map(|line| format!("<value>{line}</value>"))
                .collect();
            format!("<field var='{var}'>{values}</field>")
        })
        .collect();
    let done = client
        .iq(
            "s2",
            &format!(
                "<iq type='set' to='{at}' id='s2'><command xmlns='{commands}' \
                 node='{node}' sessionid='{session}' action='complete'>\
                 <x xmlns='jabber:x:data' type='submit'>{values}</x></command></iq>"
            ),
        )
        .await;
    let note = done
        .get_child("command", commands)
        .and_then(|command| command.get_child("note", commands))
        .map(Element::text)
        .unwrap_or_else(|| format!("no note in {done:?}"));
    (offered, note)
}

/// An account registered with NickServ from IRC, its owner still connected and logged in
/// to it; and bob in `#test`, who sees accounts on joins (extended-join).
async fn account_and_bob(port: u16, account: &str) -> (IrcUser, IrcUser) {
    let mut owner = IrcUser::connect(port, account).await;
    owner
        .send(&format!(
            "PRIVMSG NickServ :REGISTER secretpw {account}@example.org"
        ))
        .await;
    owner
        .expect(|line| line.contains("is now registered"))
        .await;
    let mut bob = IrcUser::connect(port, "bob").await;
    bob.send("CAP REQ :extended-join").await;
    bob.expect(|line| line.contains("ACK")).await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    (owner, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_logs_in_on_inspircd_and_a_wrong_password_is_a_clear_error() {
    let Some(ircd) = Inspircd::start().await else {
        return;
    };
    let (mut owner, mut bob) = account_and_bob(ircd.port, "acct").await;
    owner.send("QUIT").await;

    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let (_dir, mut jabbridge) = keyed_jabbridge(&server, ircd.port).await;
    let room = room();
    let mut alice = server.client("alice").await;
    let info = run_command(
        &mut alice,
        &format!("{NETWORK}@{DOMAIN}"),
        "irc-connection-info",
    )
    .await;
    assert!(
        info.contains("You have no connection to irc.test"),
        "{info}"
    );

    // A wrong password: the join fails with the server's words, and the password is
    // nowhere in the log.
    let note = irc_settings(
        &mut alice,
        &[
            ("server", NETWORK),
            ("sasl", "plain"),
            ("account", "acct"),
            ("password", "wrongpw"),
        ],
    )
    .await;
    assert!(note.contains("SASL PLAIN as acct"), "{note}");
    assert!(!note.contains("wrongpw"), "{note}");
    // (slixmpp, like other clients, takes a join's error only with its <x xmlns='…muc'/>.)
    let occupant = format!("{room}/alice");
    let refused = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(refused["event"], "join_error", "{refused}");
    assert_eq!(refused["condition"], "service-unavailable", "{refused}");
    let text = refused["text"].as_str().unwrap_or_default();
    assert!(text.contains("SASL authentication failed"), "{refused}");

    // The right one, set on the server's own address (as in Biboumi): its commands are
    // listed there, and its form does not ask which server. A nick's address offers none.
    let at_server = format!("{NETWORK}@{DOMAIN}");
    assert_eq!(
        command_nodes(&mut alice, &at_server).await,
        [
            (at_server.clone(), "irc-settings".to_owned()),
            (at_server.clone(), "irc-connection-info".to_owned()),
            (at_server.clone(), "irc-reconnect".to_owned()),
            (at_server.clone(), "irc-disconnect".to_owned())
        ]
    );
    let at_nick = format!("bob%{NETWORK}@{DOMAIN}");
    assert_eq!(command_nodes(&mut alice, &at_nick).await, []);
    // (A server sent anyway is replaced by the address's.)
    let (offered, note) = command_at(
        &mut alice,
        &at_server,
        "irc-settings",
        &[("server", "elsewhere"), ("password", "secretpw")],
    )
    .await;
    assert!(
        !offered.is_empty() && !offered.iter().any(|var| var == "server"),
        "{offered:?}"
    );
    assert!(note.contains("SASL PLAIN as acct"), "{note}");
    // Bob, in the channel before her, logs in to an account of his own: WHOX tells her
    // join so, and his occupant's id is his account's from the start, in his presence and
    // in what he says.
    bob.send("PRIVMSG NickServ :REGISTER bobspw bob@example.org")
        .await;
    bob.expect(|line| line.contains("is now registered")).await;
    let bob_occupant = format!("{room}/bob");
    let (joined, seen) = alice
        .join_seeing(&room, "alice", serde_json::json!({}))
        .await;
    assert_eq!(joined["event"], "joined", "{joined} {}", ircd.log());
    let occupant_id = |stanza: &Element| {
        stanza
            .get_child("occupant-id", "urn:xmpp:occupant-id:0")
            .and_then(|id| id.attr("id"))
            .map(str::to_owned)
    };
    let bob_id = seen
        .iter()
        .find(|s| s.name() == "presence" && from(s, &bob_occupant))
        .and_then(occupant_id)
        .expect("Bob's presence, with an occupant id");
    let join = bob
        .expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;
    assert!(join.contains("JOIN #test acct"), "{join}");
    bob.send("PRIVMSG #test :logged in").await;
    let said = alice
        .expect(WAIT, |s| from(s, &bob_occupant) && body(s).is_some())
        .await;
    assert_eq!(occupant_id(&said), Some(bob_id.clone()), "{said:?}");
    // Logged out (`account-notify`): another id, shown in a presence first.
    bob.send("PRIVMSG NickServ :LOGOUT").await;
    let update = alice
        .expect(WAIT, |s| s.name() == "presence" && from(s, &bob_occupant))
        .await;
    let logged_out = occupant_id(&update).expect("an occupant id");
    assert_ne!(logged_out, bob_id);
    bob.send("PRIVMSG #test :logged out").await;
    let said = alice
        .expect(WAIT, |s| from(s, &bob_occupant) && body(s).is_some())
        .await;
    assert_eq!(occupant_id(&said), Some(logged_out), "{said:?}");
    // How her connection stands, on the server's address (it asks nothing there).
    let info = run_command(&mut alice, &at_server, "irc-connection-info").await;
    for said in [
        "Connected to irc.test",
        "as alice",
        "logged in as acct",
        "without TLS",
        "in #test",
        "echo-message",
        "labeled-response",
    ] {
        assert!(info.contains(said), "{said}: {info}");
    }
    // InspIRCd echoes (echo-message): Alice's post comes back to her exactly once, with
    // her origin-id, and Bob gets each line once.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='e1'><body>echoed\nonce</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='origin-e1'/></message>"
        ))
        .await;
    let mine = |s: &Element| from(s, &occupant) && body(s).is_some();
    let reflection = alice.expect(WAIT, mine).await;
    assert_eq!(body(&reflection).as_deref(), Some("echoed\nonce"));
    let origin = reflection
        .get_child("origin-id", "urn:xmpp:sid:0")
        .and_then(|origin| origin.attr("id"));
    assert_eq!(origin, Some("origin-e1"));
    alice.expect_none(Duration::from_secs(1), mine).await;
    for expected in ["echoed", "once"] {
        let line = bob.expect(|line| line.contains("PRIVMSG #test")).await;
        let text = line.split_once("PRIVMSG #test ").map(|(_, text)| text);
        assert_eq!(
            text.map(|text| text.trim_start_matches(':')),
            Some(expected)
        );
    }
    // setname: Bob's new real name updates his occupant (which shows his host as its
    // item's JID), and is his vCard's full name.
    bob.send("SETNAME :Bob Realname").await;
    let update = alice
        .expect(WAIT, |s| s.name() == "presence" && from(s, &bob_occupant))
        .await;
    let host = update
        .get_child("x", "http://jabber.org/protocol/muc#user")
        .and_then(|x| x.get_child("item", "http://jabber.org/protocol/muc#user"))
        .and_then(|item| item.attr("jid"));
    assert_eq!(host, Some("127.0.0.1"), "{update:?}");
    assert_eq!(
        vcard_name(&mut alice, &bob_occupant).await.as_deref(),
        Some("Bob Realname")
    );
    let log = jabbridge.log();
    assert!(
        !log.contains("secretpw") && !log.contains("wrongpw"),
        "a password was logged"
    );
    jabbridge.terminate().await;
}

#[tokio::test]
async fn webirc_gives_each_user_an_address_of_their_own() {
    let Some(ircd) = Inspircd::start().await else {
        return;
    };
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice", "carol"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The network's section is the config's last: its keys go at the end.
    let config = irc_config(&server, dir.path(), ircd.port)
        + "webirc = { password = \"jabbridge-webirc-test\", prefix = \"fd6a:6262:7269::/48\" }\n";
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let room = room();
    let mut hosts = Vec::new();
    let mut clients = Vec::new();
    for name in ["alice", "carol"] {
        let mut client = server.client(name).await;
        let joined = client.join(&room, name, serde_json::json!({})).await;
        assert_eq!(joined["event"], "joined", "{joined} {}", ircd.log());
        let join = bob
            .expect(|line| line.starts_with(&format!(":{name}!")) && line.contains(" JOIN "))
            .await;
        let host = join
            .split_once('@')
            .and_then(|(_, rest)| rest.split_once(' '))
            .map(|(host, _)| host.to_owned())
            .unwrap_or_default();
        let address: std::net::Ipv6Addr = host
            .parse()
            .unwrap_or_else(|_| panic!("{name} is not on an IPv6 address: {join}"));
        assert_eq!(address.segments()[..3], [0xfd6a, 0x6262, 0x7269], "{join}");
        hosts.push(address);
        // WHOIS says the same.
        bob.send(&format!("WHOIS {name}")).await;
        let whois = bob.expect(|line| line.contains(" 311 ")).await;
        assert!(whois.contains(&host), "{whois}");
        bob.expect(|line| line.contains(" 318 ")).await;
        clients.push(client);
    }
    assert_ne!(hosts[0], hosts[1], "one address each");
    // Alice's comes back the same after Jabbridge restarts.
    jabbridge.terminate().await;
    bob.expect(|line| line.starts_with(":alice!") && line.contains(" QUIT "))
        .await;
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let rejoin = bob
        .expect(|line| line.starts_with(":alice!") && line.contains(" JOIN "))
        .await;
    assert!(rejoin.contains(&format!("@{} JOIN", hosts[0])), "{rejoin}");
    assert!(
        !jabbridge.log().contains("jabbridge-webirc-test"),
        "the WEBIRC password was logged"
    );
    jabbridge.terminate().await;
}

#[tokio::test]
async fn sasl_external_logs_in_with_a_certificate_the_gateway_made() {
    let Some(ircd) = Inspircd::start().await else {
        return;
    };
    // Its owner stays logged in, to add a fingerprint.
    let (mut owner, mut bob) = account_and_bob(ircd.port, "certacct").await;

    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    // Over TLS (the server's certificate is self-signed), as EXTERNAL needs.
    let config = irc_config_with(&server, dir.path(), ircd.tls_port, SECRET_KEY)
        .replace("tls = \"off\"", "tls = \"self-signed\"")
        .replace("reconnect_max = \"2s\"", "reconnect_max = \"60s\"");
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut alice = server.client("alice").await;
    let note = irc_settings(&mut alice, &[("server", NETWORK), ("sasl", "external")]).await;
    let fingerprint: String = note
        .split_once("fingerprint ")
        .map(|(_, rest)| rest.chars().take(64).collect())
        .unwrap_or_default();
    assert!(
        fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{note}"
    );
    assert!(note.contains(&format!("CERT ADD {fingerprint}")), "{note}");

    // Before the account knows the certificate: the join fails with the server's words.
    let room = room();
    let refused = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(refused["event"], "join_error", "{refused}");
    let text = refused["text"].as_str().unwrap_or_default();
    assert!(text.contains("SASL"), "{refused}");

    // Added to the account: the next join logs in with it.
    owner
        .send(&format!("PRIVMSG NickServ :CERT ADD {fingerprint}"))
        .await;
    owner
        .expect(|line| line.contains("NOTICE") && line.contains(&fingerprint))
        .await;
    // The refused connection waits a minute (reconnect_max) before it tries again on its
    // own; a join tries at once, once the last attempt is 3 s old.
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined} {}", ircd.log());
    let join = bob
        .expect(|line| line.starts_with(":alice!") && line.contains(" JOIN "))
        .await;
    assert!(join.contains("JOIN #test certacct"), "{join}");
    let log = jabbridge.log();
    assert!(!log.contains("PRIVATE KEY"), "a key was logged");
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_then_channels_to_autojoin_go_on_connecting_with_who_is_there() {
    let Some(ircd) = Ngircd::start().await else {
        return;
    };
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let extra = format!("{SECRET_KEY}\nraw_commands = true");
    let config = irc_config_with(&server, dir.path(), ircd.port, &extra);
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let mut bob = IrcUser::connect_named(ircd.port, "bob", "Bob Builder").await;
    bob.send("JOIN #auto").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    bob.send("AWAY :out").await;
    bob.expect(|line| line.contains(" 306 ")).await;

    let mut alice = server.client("alice").await;
    let settings = [
        ("server", NETWORK),
        ("after_connect", "PRIVMSG bob :first\nnotice bob :then this"),
        ("autojoin", "#auto"),
    ];
    let note = irc_settings(&mut alice, &settings).await;
    assert!(note.contains("autojoin #auto"), "{note}");
    assert!(note.contains("after connecting PRIVMSG, NOTICE"), "{note}");
    // The form shows them as they stand now (a multi-line field as several values).
    let commands = "http://jabber.org/protocol/commands";
    let at_server = format!("{NETWORK}@{DOMAIN}");
    let form = alice
        .iq(
            "f1",
            &format!(
                "<iq type='set' to='{at_server}' id='f1'><command xmlns='{commands}' \
                 node='irc-settings' action='execute'/></iq>"
            ),
        )
        .await;
    let shown = |var: &str| -> Vec<String> {
        form.get_child("command", commands)
            .and_then(|command| command.get_child("x", "jabber:x:data"))
            .and_then(|x| x.children().find(|field| field.attr("var") == Some(var)))
            .map(|field| field.children().map(Element::text).collect())
            .unwrap_or_default()
    };
    assert_eq!(shown("autojoin"), ["#auto"]);
    assert_eq!(
        shown("after_connect"),
        ["PRIVMSG bob :first", "notice bob :then this"]
    );
    // Her first join connects her: her commands go, in order, then #auto is joined, unasked.
    let joined = alice.join(&room(), "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    bob.expect(|line| line.starts_with(":alice!") && line.ends_with("PRIVMSG bob :first"))
        .await;
    bob.expect(|line| line.starts_with(":alice!") && line.ends_with("NOTICE bob :then this"))
        .await;
    let join = bob
        .expect(|line| line.starts_with(":alice!") && line.contains("JOIN"))
        .await;
    assert!(join.contains("#auto"), "{join}");
    // Its room, joined from XMPP afterwards, shows Bob as the autojoin's WHO said: away.
    let auto = format!("#auto%{NETWORK}@{DOMAIN}");
    let (joined, seen) = alice
        .join_seeing(&auto, "alice", serde_json::json!({}))
        .await;
    assert_eq!(joined["event"], "joined", "{joined}");
    assert_eq!(joined["occupants"], serde_json::json!(["alice", "bob"]));
    let bob_occupant = format!("{auto}/bob");
    let shown = seen
        .iter()
        .find(|s| s.name() == "presence" && from(s, &bob_occupant))
        .expect("Bob's presence");
    assert_eq!(show_of(shown).as_deref(), Some("away"), "{shown:?}");
    jabbridge.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_reconnect_applies_new_settings_now_and_keeps_the_rooms_and_disconnect_leaves_them() {
    let Some((ircd, server, _dir, mut jabbridge)) = on_ngircd().await else {
        return;
    };
    let room = room();
    let at_server = format!("{NETWORK}@{DOMAIN}");
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    let mut alice = server.client("alice").await;
    let said = run_command(&mut alice, &at_server, "irc-reconnect").await;
    assert!(said.contains("You have no connection"), "{said}");
    let joined = alice.join(&room, "alice", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    bob.expect(|line| line.starts_with(":alice!") && line.contains(" JOIN "))
        .await;

    // A new nick waits for the next connection; irc-reconnect makes that now.
    let note = irc_settings(&mut alice, &[("server", NETWORK), ("nick", "alice2")]).await;
    assert!(note.contains("the next time you connect"), "{note}");
    let said = run_command(&mut alice, &at_server, "irc-reconnect").await;
    assert!(said.contains("Reconnecting to irc.test"), "{said}");
    bob.expect(|line| line.starts_with(":alice!") && line.contains(" QUIT "))
        .await;
    bob.expect(|line| line.starts_with(":alice2!") && line.contains(" JOIN "))
        .await;
    // Still in the room, told so, and the room says under which nick.
    let back = alice
        .expect(WAIT, |s| {
            body(s).is_some_and(|text| text.contains("back in #test"))
        })
        .await;
    assert_eq!(back.attr("from"), Some(room.as_str()));
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}' id='r1'><body>after</body></message>"
        ))
        .await;
    let line = bob.expect(|line| line.contains("PRIVMSG #test")).await;
    assert!(
        line.starts_with(":alice2!") && line.ends_with(":after"),
        "{line}"
    );

    // irc-disconnect takes her out of the room (110), then quits the server and answers;
    // a join connects again.
    alice
        .send(&format!(
            "<iq type='set' to='{at_server}' id='d1'><command \
             xmlns='http://jabber.org/protocol/commands' node='irc-disconnect' \
             action='execute'/></iq>"
        ))
        .await;
    let gone = alice
        .expect(WAIT, |s| {
            s.name() == "presence"
                && s.attr("type") == Some("unavailable")
                && from(s, &format!("{room}/alice2"))
        })
        .await;
    assert_eq!(codes(&gone), ["110"]);
    let done = alice
        .expect(WAIT, |s| s.name() == "iq" && s.attr("id") == Some("d1"))
        .await;
    assert!(
        format!("{done:?}").contains("Disconnected from irc.test"),
        "{done:?}"
    );
    bob.expect(|line| line.starts_with(":alice2!") && line.contains(" QUIT "))
        .await;
    let said = run_command(&mut alice, &at_server, "irc-disconnect").await;
    assert!(said.contains("You have no connection"), "{said}");
    let joined = alice.join(&room, "alice2", serde_json::json!({})).await;
    assert_eq!(joined["event"], "joined", "{joined}");
    bob.expect(|line| line.starts_with(":alice2!") && line.contains(" JOIN "))
        .await;
    jabbridge.terminate().await;
}

/// Typing, reactions and replies both ways, as client tags (which InspIRCd carries to
/// clients with `message-tags`). Typing (XEP-0085, `+typing`): in a channel, a user's
/// reaches IRC and the room's other user but not herself; an IRC user's reaches both, and
/// its end; privately, both ways. Reactions (XEP-0444, `+draft/react` naming the message's
/// `msgid` in `+draft/reply`): a user's reach IRC and the other user; an IRC user's reach
/// both, on the message they name. Replies (XEP-0461, `+draft/reply` on `PRIVMSG`): both
/// ways, naming the message replied to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reactions_and_replies_go_both_ways_as_client_tags() {
    const CHATSTATES: &str = "http://jabber.org/protocol/chatstates";
    let Some(ircd) = Inspircd::start().await else {
        return;
    };
    let mut bob = IrcUser::connect(ircd.port, "bob").await;
    bob.send("CAP REQ :message-tags").await;
    bob.expect(|line| line.contains("ACK")).await;
    bob.send("JOIN #test").await;
    bob.expect(|line| line.contains(" 366 ")).await;
    let server = XmppServer::start(ServerKind::Prosody, &[DOMAIN], &["alice", "carol"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = irc_config(&server, dir.path(), ircd.port);
    let mut jabbridge = Jabbridge::start(dir.path(), &config).await;
    jabbridge.wait_ready(Duration::from_secs(20)).await;
    let room = room();
    let mut alice = server.client("alice").await;
    let mut carol = server.client("carol").await;
    for (client, name) in [(&mut alice, "alice"), (&mut carol, "carol")] {
        let joined = client.join(&room, name, serde_json::json!({})).await;
        assert_eq!(joined["event"], "joined", "{joined} {}", ircd.log());
        bob.expect(|line| line.starts_with(&format!(":{name}!")) && line.contains(" JOIN "))
            .await;
    }
    // InspIRCd writes the target as a trailing parameter, after the tags of its own.
    let tagmsg = |line: &str, target: &str| {
        let (tags, rest) = line.split_once(' ').unwrap_or_default();
        tags.split(';')
            .any(|tag| tag.trim_start_matches('@') == "+typing=active")
            && rest.starts_with(":alice!")
            && (rest.ends_with(&format!(" TAGMSG {target}"))
                || rest.ends_with(&format!(" TAGMSG :{target}")))
    };
    let typing = |stanza: &Element, who: &str, state: &str| {
        stanza.name() == "message"
            && from(stanza, who)
            && stanza.has_child(state, CHATSTATES)
            && body(stanza).is_none()
    };

    // Alice types in the room: IRC and Carol see it.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}'><composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    bob.expect(|line| tagmsg(line, "#test")).await;
    let alices = format!("{room}/alice");
    carol
        .expect(WAIT, |s| typing(s, &alices, "composing"))
        .await;

    // Bob types, then stops: both see each.
    let bobs = format!("{room}/bob");
    bob.send("@+typing=active TAGMSG #test").await;
    for client in [&mut alice, &mut carol] {
        client.expect(WAIT, |s| typing(s, &bobs, "composing")).await;
    }
    bob.send("@+typing=done TAGMSG #test").await;
    for client in [&mut alice, &mut carol] {
        client.expect(WAIT, |s| typing(s, &bobs, "active")).await;
    }

    // Privately, both ways.
    bob.send("@+typing=active TAGMSG alice").await;
    let contact = format!("bob%{NETWORK}@{DOMAIN}");
    let private = alice
        .expect(WAIT, |s| typing(s, &contact, "composing"))
        .await;
    assert_eq!(private.attr("type"), Some("chat"), "{private:?}");
    alice
        .send(&format!(
            "<message type='chat' to='{contact}'><composing xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    bob.expect(|line| tagmsg(line, "bob")).await;
    // Her pause, written to Bob's occupant privately, goes to the same nick.
    alice
        .send(&format!(
            "<message type='chat' to='{bobs}'><paused xmlns='{CHATSTATES}'/></message>"
        ))
        .await;
    let paused = bob.expect(|line| line.contains(" TAGMSG ")).await;
    assert!(
        paused.contains("+typing=paused") && paused.contains(":alice!"),
        "{paused}"
    );
    // Alice never saw her own typing come back.
    alice
        .expect_none(Duration::from_millis(300), |s| {
            from(s, &alices) && s.has_child("composing", CHATSTATES)
        })
        .await;

    // Alice reacts to what Bob says: IRC gets it naming his line's msgid, Carol sees it.
    const REACTIONS: &str = "urn:xmpp:reactions:0";
    let stanza_id = |stanza: &Element| {
        (stanza.get_child("stanza-id", "urn:xmpp:sid:0"))
            .and_then(|id| id.attr("id"))
            .map(str::to_owned)
            .expect("a stanza id")
    };
    let reactions = |stanza: &Element| {
        (stanza.get_child("reactions", REACTIONS)).map(|reactions| {
            let emojis: Vec<String> = reactions.children().map(Element::text).collect();
            (reactions.attr("id").unwrap_or_default().to_owned(), emojis)
        })
    };
    bob.send("PRIVMSG #test :react to this").await;
    let said = alice
        .expect(WAIT, |s| from(s, &bobs) && body(s).is_some())
        .await;
    let said_for_carol = carol
        .expect(WAIT, |s| from(s, &bobs) && body(s).is_some())
        .await;
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}'><reactions xmlns='{REACTIONS}' id='{}'>\
             <reaction>👍</reaction></reactions></message>",
            stanza_id(&said)
        ))
        .await;
    let tagged = bob.expect(|line| line.contains(" TAGMSG ")).await;
    assert!(
        tagged.contains("+draft/react=👍") && tagged.contains("+draft/reply="),
        "{tagged}"
    );
    let seen = carol
        .expect(WAIT, |s| from(s, &alices) && reactions(s).is_some())
        .await;
    assert_eq!(
        reactions(&seen),
        Some((stanza_id(&said_for_carol), vec!["👍".to_owned()]))
    );

    // Bob reacts to what Alice says, naming its msgid: both see it on her message.
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}'><body>react to me</body></message>"
        ))
        .await;
    let line = bob
        .expect(|line| line.contains("PRIVMSG #test :react to me"))
        .await;
    let msgid = (line.split_once(' ').map(|(tags, _)| tags))
        .and_then(|tags| {
            tags.trim_start_matches('@')
                .split(';')
                .find_map(|tag| tag.strip_prefix("msgid="))
        })
        .expect("InspIRCd's msgid")
        .to_owned();
    bob.send(&format!(
        "@+draft/reply={msgid};+draft/react=🎉 TAGMSG #test"
    ))
    .await;
    let mut hers = Vec::new();
    for client in [&mut alice, &mut carol] {
        let her = client
            .expect(WAIT, |s| {
                from(s, &alices) && body(s).as_deref() == Some("react to me")
            })
            .await;
        let seen = client
            .expect(WAIT, |s| from(s, &bobs) && reactions(s).is_some())
            .await;
        assert_eq!(
            reactions(&seen),
            Some((stanza_id(&her), vec!["🎉".to_owned()]))
        );
        hers.push(stanza_id(&her));
    }

    // Replies (XEP-0461, `+draft/reply` on the line). Alice replies to Bob, her client
    // quoting him: IRC gets the reply alone, addressed to him and naming his line; Carol
    // sees it as a reply to his message, as IRC said it.
    const REPLY: &str = "urn:xmpp:reply:0";
    let replied = |stanza: &Element| {
        (stanza.get_child("reply", REPLY)).map(|reply| {
            let attr = |name| reply.attr(name).unwrap_or_default().to_owned();
            (attr("id"), attr("to"))
        })
    };
    alice
        .send(&format!(
            "<message type='groupchat' to='{room}'><body>&gt; bob: react to this\nthanks</body>\
             <reply xmlns='{REPLY}' to='{bobs}' id='{}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='{REPLY}'><body start='0' end='21'/>\
             </fallback></message>",
            stanza_id(&said)
        ))
        .await;
    let line = bob.expect(|line| line.contains(" PRIVMSG #test :")).await;
    assert!(
        line.contains("+draft/reply=") && line.ends_with(" PRIVMSG #test :bob: thanks"),
        "{line}"
    );
    let seen = carol
        .expect(WAIT, |s| from(s, &alices) && replied(s).is_some())
        .await;
    assert_eq!(body(&seen).as_deref(), Some("bob: thanks"));
    assert_eq!(
        replied(&seen),
        Some((stanza_id(&said_for_carol), bobs.clone()))
    );
    // Bob replies to Alice's message by its msgid: both see whose message it answers.
    bob.send(&format!("@+draft/reply={msgid} PRIVMSG #test :alice: sure"))
        .await;
    for (client, hers) in [&mut alice, &mut carol].into_iter().zip(hers) {
        let seen = client
            .expect(WAIT, |s| from(s, &bobs) && replied(s).is_some())
            .await;
        assert_eq!(body(&seen).as_deref(), Some("alice: sure"));
        assert_eq!(replied(&seen), Some((hers, alices.clone())));
    }
    jabbridge.terminate().await;
}
