//! One connection to an IRC server: TCP with `TCP_NODELAY` (a small write must not wait for
//! the peer's delayed ACK), registration (`CAP LS 302` then `CAP END`, `PASS`, `NICK`,
//! `USER`; a nick in use gets a `_` suffix), the server's `PING`s answered, then lines in
//! and out through [`crate::wire`] and [`crate::reader`].

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::reader::LineReader;
use crate::wire::{self, LineError, Message};

/// Who to register as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The nick wanted; the server may make it another (`_` added while it is in use).
    pub nick: String,
    /// The user name (`USER`).
    pub username: String,
    /// The real name (`USER`'s last parameter).
    pub realname: String,
    /// The server password (`PASS`), if the network has one.
    pub password: Option<String>,
}

/// Why a connection could not be made or went down.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket failed.
    Io(std::io::Error),
    /// The server said no (`ERROR`, or a registration it refused): its words.
    Refused(String),
    /// The server closed the connection.
    Closed,
    /// A line could not be written ([`LineError`]).
    Line(LineError),
    /// Registration took longer than allowed.
    TimedOut,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "the IRC connection failed: {error}"),
            Self::Refused(reason) => write!(f, "the IRC server refused: {reason}"),
            Self::Closed => f.write_str("the IRC server closed the connection"),
            Self::Line(error) => error.fmt(f),
            Self::TimedOut => f.write_str("the IRC server did not finish registration in time"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<std::io::Error> for ConnectError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<LineError> for ConnectError {
    fn from(error: LineError) -> Self {
        Self::Line(error)
    }
}

/// `nick` with `tries` underscores, cut to the server's NICKLEN (9, RFC 1459's, until it
/// says) so that the server takes it.
fn suffixed(nick: &str, tries: usize, isupport: &HashMap<String, String>) -> String {
    let longest = isupport
        .get("NICKLEN")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(9)
        .max(tries + 1);
    let mut base: String = nick.chars().take(longest - tries).collect();
    base.push_str(&"_".repeat(tries));
    base
}

/// Nick changes tried while the nick is in use, before giving up.
const NICK_TRIES: usize = 5;

/// A registered connection.
#[derive(Debug)]
pub struct Connection {
    reader: LineReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// The nick the server gave us.
    pub nick: String,
    /// What the server supports (ISUPPORT, `005`): `CASEMAPPING`, `NICKLEN`, `CHANTYPES`…
    pub isupport: HashMap<String, String>,
}

impl Connection {
    /// Connects to `address` (`host:port`) and registers, within `within`.
    pub async fn connect(
        address: &str,
        registration: &Registration,
        within: Duration,
    ) -> Result<Self, ConnectError> {
        tokio::time::timeout(within, Self::register(address, registration))
            .await
            .map_err(|_| ConnectError::TimedOut)?
    }

    async fn register(address: &str, registration: &Registration) -> Result<Self, ConnectError> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let mut connection = Self {
            reader: LineReader::new(read),
            writer: write,
            nick: registration.nick.clone(),
            isupport: HashMap::new(),
        };
        let mut out = wire::line(&[], "CAP", &["LS", "302"])?;
        if let Some(password) = &registration.password {
            out.push_str(&wire::line(&[], "PASS", &[password])?);
        }
        out.push_str(&wire::line(&[], "NICK", &[&registration.nick])?);
        out.push_str(&wire::line(
            &[],
            "USER",
            &[&registration.username, "0", "*", &registration.realname],
        )?);
        connection.writer.write_all(out.as_bytes()).await?;
        let mut tries = 0;
        let mut welcomed = false;
        loop {
            let message = connection
                .next_message()
                .await?
                .ok_or(ConnectError::Closed)?;
            match message.command.as_str() {
                // No capability is asked for yet: the list ends the negotiation.
                "CAP"
                    if message.params.get(1).map(String::as_str) == Some("LS")
                        && message.params.get(2).map(String::as_str) != Some("*") =>
                {
                    connection.send("CAP", &["END"]).await?;
                }
                "001" => {
                    welcomed = true;
                    if let Some(nick) = message.params.first() {
                        connection.nick = nick.clone();
                    }
                }
                "005" => {
                    let supported = message.params.iter().skip(1);
                    let count = message.params.len().saturating_sub(2);
                    for token in supported.take(count) {
                        let (key, value) = token.split_once('=').unwrap_or((token, ""));
                        connection.isupport.insert(key.to_owned(), value.to_owned());
                    }
                }
                // The end of the MOTD, or none: registration is over.
                "376" | "422" if welcomed => return Ok(connection),
                "433" | "432" | "436" if !welcomed => {
                    tries += 1;
                    if tries > NICK_TRIES {
                        return Err(ConnectError::Refused(format!(
                            "no free nick after {NICK_TRIES} tries from {}",
                            registration.nick
                        )));
                    }
                    connection.nick = suffixed(&registration.nick, tries, &connection.isupport);
                    let nick = connection.nick.clone();
                    connection.send("NICK", &[&nick]).await?;
                }
                "ERROR" | "464" | "465" => {
                    return Err(ConnectError::Refused(
                        message.params.last().cloned().unwrap_or_default(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Sends one command ([`wire::line`] checks it).
    pub async fn send(&mut self, command: &str, params: &[&str]) -> Result<(), ConnectError> {
        let line = wire::line(&[], command, params)?;
        self.writer.write_all(line.as_bytes()).await?;
        Ok(())
    }

    /// The next message from the server (a `PING` is answered and not handed out; lines
    /// that do not parse are skipped); `None` once the server closed the connection.
    pub async fn next_message(&mut self) -> Result<Option<Message>, ConnectError> {
        loop {
            let Some(line) = self.reader.next_line().await? else {
                return Ok(None);
            };
            let Ok(message) = wire::parse(&line.text) else {
                continue;
            };
            if message.command == "PING" {
                let token = message.params.first().map(String::as_str).unwrap_or("");
                self.send("PONG", &[token]).await?;
                continue;
            }
            return Ok(Some(message));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    /// A throw-away ngircd on loopback, as the `irc` user, with its throttle off.
    struct Ngircd {
        port: u16,
        _dir: tempfile::TempDir,
        _process: tokio::process::Child,
    }

    async fn ngircd() -> Option<Ngircd> {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("ngircd.conf");
        std::fs::write(
            &config,
            format!(
                "[Global]\nName = irc.test\nInfo = test\nListen = 127.0.0.1\nPorts = {port}\n\
                 [Limits]\nMaxPenaltyTime = 0\n[Options]\nPAM = no\nIdent = no\nDNS = no\n"
            ),
        )
        .expect("write the config");
        let as_irc = std::process::Command::new("id")
            .arg("-u")
            .output()
            .ok()
            .is_some_and(|uid| String::from_utf8_lossy(&uid.stdout).trim() == "0");
        let mut command = if as_irc {
            let mut command = tokio::process::Command::new("setpriv");
            command.args(["--reuid=irc", "--regid=irc", "--init-groups", "ngircd"]);
            command
        } else {
            tokio::process::Command::new("ngircd")
        };
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let process = command
            .args(["-n", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start ngircd");
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(Ngircd {
                    port,
                    _dir: dir,
                    _process: process,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("ngircd did not listen");
    }

    fn registration(nick: &str) -> Registration {
        Registration {
            nick: nick.into(),
            username: "jb".into(),
            realname: "Jabbridge test".into(),
            password: None,
        }
    }

    /// The next message with `command`, within 10 s.
    async fn expect(connection: &mut Connection, command: &str) -> Message {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let message = connection.next_message().await.unwrap().expect("open");
                if message.command == command {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {command} within 10 s"))
    }

    #[test]
    fn a_suffixed_nick_stays_within_nicklen() {
        let none = HashMap::new();
        assert_eq!(suffixed("alice", 1, &none), "alice_");
        assert_eq!(suffixed("ninechars", 1, &none), "ninechar_");
        assert_eq!(suffixed("ninechars", 2, &none), "ninecha__");
        let long = HashMap::from([("NICKLEN".to_owned(), "30".to_owned())]);
        assert_eq!(suffixed("ninechars", 1, &long), "ninechars_");
    }

    #[tokio::test]
    async fn two_users_register_one_renamed_and_talk_in_a_channel() {
        let Some(server) = ngircd().await else {
            return;
        };
        let address = format!("127.0.0.1:{}", server.port);
        let within = Duration::from_secs(10);
        let mut alice = Connection::connect(&address, &registration("alice"), within)
            .await
            .unwrap();
        assert_eq!(alice.nick, "alice");
        assert!(
            alice.isupport.contains_key("CASEMAPPING"),
            "{:?}",
            alice.isupport
        );
        // The nick is taken: the second connection gets it with a suffix.
        let mut other = Connection::connect(&address, &registration("alice"), within)
            .await
            .unwrap();
        assert_eq!(other.nick, "alice_");
        alice.send("JOIN", &["#test"]).await.unwrap();
        expect(&mut alice, "366").await;
        other.send("JOIN", &["#test"]).await.unwrap();
        expect(&mut other, "366").await;
        for piece in wire::split_text("hello there\nsecond line", 400) {
            alice.send("PRIVMSG", &["#test", &piece]).await.unwrap();
        }
        let first = expect(&mut other, "PRIVMSG").await;
        assert_eq!(first.nick(), Some("alice"));
        assert_eq!(first.params, ["#test", "hello there"]);
        let second = expect(&mut other, "PRIVMSG").await;
        assert_eq!(second.params, ["#test", "second line"]);
        // A line break never reaches the socket.
        assert!(matches!(
            alice.send("PRIVMSG", &["#test", "x\r\nQUIT"]).await,
            Err(ConnectError::Line(LineError::LineBreak))
        ));
    }
}
