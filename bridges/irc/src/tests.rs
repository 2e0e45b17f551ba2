//! The bridge against a scripted IRC server, for what real servers do not produce on
//! demand: a hostile one (a 1 MiB line, Latin-1, 30,000 names, characters XML forbids), and
//! IRCv3's echo-message with msgid and server-time.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{
    HistoryWish, JoinRequest, MessageId, Posted, Role, RoomEvent, RoomId, RoomMessage, RoomPost,
    UserJid,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(10);

/// A throw-away ngircd on loopback, as the `irc` user, with its throttle off.
pub(crate) struct Ngircd {
    pub(crate) port: u16,
    _dir: tempfile::TempDir,
    _process: tokio::process::Child,
}

pub(crate) async fn ngircd() -> Option<Ngircd> {
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
             [Limits]\nMaxPenaltyTime = 0\nMaxConnectionsIP = 0\n[Options]\nPAM = no\nIdent = no\nDNS = no\n"
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

/// A bridge reaching a server on `port` called `fake.test`, flood control off.
fn bridge(core: &TestCore, port: u16) -> std::sync::Arc<dyn jabbridge_sdk::Bridge> {
    core.build(
        crate::build,
        jabbridge_sdk::serde_json::json!({
            "flood": {"burst": 10, "per_second": 0},
            "network": [{"name": "fake.test", "host": "127.0.0.1", "port": port, "tls": "off"}],
        }),
    )
    .expect("the bridge builds")
}

fn join(room: &str) -> JoinRequest {
    JoinRequest {
        user: UserJid::new("alice@localhost"),
        room: RoomId::new(room),
        nick: "alice".into(),
        password: None,
        history: HistoryWish::default(),
        registration: None,
    }
}

/// The next line the client wrote, within 10 s.
/// A scripted server's side of CAP: reads `CAP LS 302`, answers with the `offered` lines,
/// acknowledges every request, up to `CAP END`; what the client asked for last.
async fn negotiate<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    offered: &[u8],
) -> String {
    assert_eq!(line_from(reader).await, "CAP LS 302");
    write.write_all(offered).await.expect("write");
    let mut requested = String::new();
    loop {
        let line = line_from(reader).await;
        if let Some(caps) = line.strip_prefix("CAP REQ :") {
            requested = caps.to_owned();
            write
                .write_all(format!(":fake.test CAP * ACK :{caps}\r\n").as_bytes())
                .await
                .expect("write");
        }
        if line == "CAP END" {
            return requested;
        }
    }
}

/// The bridge's next line, but for its `WHO`s: the scripts answer those ahead, with a
/// `315` after each `366` of a join.
async fn line_from<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> String {
    loop {
        let mut line = String::new();
        tokio::time::timeout(WAIT, reader.read_line(&mut line))
            .await
            .expect("a line from the bridge in time")
            .expect("read");
        if !line.starts_with("WHO ") {
            return line.trim_end().to_owned();
        }
    }
}

#[tokio::test]
async fn the_capabilities_asked_per_message_agree_with_the_bridges_info() {
    // The core asks `capabilities` and `registers` on every message instead of building the
    // whole info: they must say what `info` says (rooms, no registration).
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, 6667);
    let info = bridge.info();
    assert_eq!(bridge.capabilities(), info.capabilities);
    assert!(info.capabilities.rooms);
    assert_eq!(bridge.registers(), info.registration.is_some());
    assert!(!bridge.registers());
}

#[tokio::test]
async fn a_joins_occupants_carry_what_who_says_a_who_unanswered_stops_no_join_and_invites_come() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let (mut reader, mut write) = accepted(&listener).await;
        until(&mut reader, "USER").await;
        write
            .write_all(
                b":fake.test 001 alice :hi\r\n:fake.test 005 alice WHOX :ok\r\n\
                  :fake.test 422 alice :no MOTD\r\n",
            )
            .await
            .expect("write");
        until(&mut reader, "JOIN #room").await;
        write
            .write_all(
                b":alice!a@h JOIN #room\r\n:fake.test 353 alice = #room :alice @bob carol\r\n\
                  :fake.test 366 alice #room :End\r\n",
            )
            .await
            .expect("write");
        // The WHOX query: read without `line_from`, which skips it.
        let mut query = String::new();
        reader.read_line(&mut query).await.expect("read");
        assert_eq!(query.trim_end(), "WHO #room %tcuhnfar,152");
        write
            .write_all(
                b":fake.test 354 alice 152 #room b bob.example bob G@ bob_acct :Bob B\r\n\
                  :fake.test 354 alice 152 #room c carol.example carol H 0 :Carol\r\n\
                  :fake.test 354 alice 7 #room m evil.example carol G evil :Not ours\r\n\
                  :fake.test 315 alice #room :End of WHO\r\n",
            )
            .await
            .expect("write");
        // The next join's WHO is refused: the join goes on without it.
        until(&mut reader, "JOIN #other").await;
        write
            .write_all(
                b":alice!a@h JOIN #other\r\n:fake.test 353 alice = #other :alice dave\r\n\
                  :fake.test 366 alice #other :End\r\n:fake.test 263 alice WHO :Try again\r\n",
            )
            .await
            .expect("write");
        // The last join's WHO is never answered: the join goes on after its wait.
        until(&mut reader, "JOIN #silent").await;
        write
            .write_all(
                b":alice!a@h JOIN #silent\r\n:fake.test 353 alice = #silent :alice erin\r\n\
                  :fake.test 366 alice #silent :End\r\n",
            )
            .await
            .expect("write");
        // Invitations: to us (one), to someone else, to no channel (none).
        write
            .write_all(
                b":bob!b@h INVITE alice :#Secret\r\n:bob!b@h INVITE mallory #secret\r\n\
                  :bob!b@h INVITE alice nochannel\r\n",
            )
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });

    let joined = tokio::time::timeout(WAIT, bridge.join_room(join("#room%fake.test")))
        .await
        .expect("joined in time")
        .expect("joined");
    let occupant = |nick: &str| {
        joined
            .occupants
            .iter()
            .find(|occupant| occupant.nick == nick)
            .cloned()
            .unwrap_or_else(|| panic!("{nick} in {:?}", joined.occupants))
    };
    let bob = occupant("bob");
    assert_eq!(bob.id.as_str(), "account:bob_acct");
    assert_eq!(bob.away.as_deref(), Some(""));
    assert_eq!(bob.host.as_deref(), Some("bob.example"));
    assert_eq!(bob.realname.as_deref(), Some("Bob B"));
    assert_eq!(bob.role, Role::Moderator);
    let carol = occupant("carol");
    assert_eq!(
        (carol.id.as_str(), carol.away, carol.realname.as_deref()),
        ("nick:carol", None, Some("Carol"))
    );
    let other = tokio::time::timeout(WAIT, bridge.join_room(join("#other%fake.test")))
        .await
        .expect("joined in time")
        .expect("joined");
    assert!(
        other
            .occupants
            .iter()
            .any(|occupant| occupant.nick == "dave")
    );
    let silent = tokio::time::timeout(
        crate::client::WHO_TIMEOUT + WAIT,
        bridge.join_room(join("#silent%fake.test")),
    )
    .await
    .expect("joined once the WHO's wait is over")
    .expect("joined");
    assert!(
        silent
            .occupants
            .iter()
            .any(|occupant| occupant.nick == "erin")
    );
    let invited = |core: &TestCore| -> Vec<(String, String, String)> {
        core.room_events()
            .into_iter()
            .filter_map(|(room, event)| match event {
                RoomEvent::Invited { user, by } => {
                    Some((room.to_string(), user.to_string(), by.to_string()))
                }
                _ => None,
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while invited(&core).is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        invited(&core),
        [(
            "#secret%fake.test".to_owned(),
            "alice@localhost".to_owned(),
            "bob%fake.test".to_owned()
        )]
    );
    server.abort();
}

#[tokio::test]
async fn a_hostile_server_costs_bounded_memory_and_its_text_is_cleaned() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let (mut reader, mut write) = accepted(&listener).await;
        while !line_from(&mut reader).await.starts_with("USER") {}
        let mut out: Vec<u8> = Vec::new();
        out.extend_from_slice(b":fake.test 001 alice :Welcome\r\n");
        out.extend_from_slice(
            b":fake.test 005 alice CASEMAPPING=rfc1459 PREFIX=(ov)@+ :are supported\r\n",
        );
        // A line of 1 MiB, then a notice in Latin-1.
        out.extend(std::iter::repeat_n(b'x', 1 << 20));
        out.extend_from_slice(b"\r\n:fake.test NOTICE alice :caf\xe9 ouvert\r\n");
        out.extend_from_slice(b":fake.test 376 alice :End of MOTD\r\n");
        write.write_all(&out).await.expect("write");
        loop {
            let line = line_from(&mut reader).await;
            // The room's folded name is joined: the server folds it too.
            if line.eq_ignore_ascii_case("JOIN #big") {
                break;
            }
        }
        // (A stray end of WHO amid the NAMES changes nothing.)
        let mut out: Vec<u8> =
            b":alice!a@h JOIN #Big\r\n:fake.test 315 alice #Big :End of WHO\r\n".to_vec();
        for chunk in 0..300 {
            out.extend_from_slice(b":fake.test 353 alice = #Big :");
            for n in 0..100 {
                out.extend_from_slice(format!("@nick{chunk}x{n} ").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(
            b":fake.test 366 alice #Big :End of NAMES\r\n:fake.test 315 alice #Big :End of WHO\r\n",
        );
        out.extend_from_slice(b":mallory!m@h PRIVMSG #big :bell\x07 esc\x1b nul-free \xff\r\n");
        write.write_all(&out).await.expect("write");
        // Hold the connection until the test ends.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });

    // The room id folds the channel (#Big and #big are one room).
    let room = bridge.parse_room("#Big%fake.test").expect("a room");
    assert_eq!(room.as_str(), "#big%fake.test");
    let joined = tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("joined in time")
        .expect("joined");
    assert_eq!(joined.nick, "alice");
    // 30,000 names listed; at most MAX_MEMBERS kept (and alice).
    assert!(joined.occupants.len() <= crate::state::MAX_MEMBERS + 1);
    assert!(joined.occupants.len() >= 1000, "{}", joined.occupants.len());

    let notice = core.next_delivered(WAIT).await.expect("the notice");
    assert_eq!(notice.contact.as_str(), "fake.test");
    assert_eq!(notice.text, "café ouvert");

    let deadline = tokio::time::Instant::now() + WAIT;
    let said = loop {
        let found = core
            .room_events()
            .into_iter()
            .find_map(|(_, event)| match event {
                RoomEvent::Message(message) => Some(message),
                _ => None,
            });
        if let Some(found) = found {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "no message");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(said.nick, "mallory");
    assert_eq!(said.text, "bell esc nul-free ÿ");
    server.abort();
}

#[tokio::test]
async fn echo_message_reflects_a_post_once_with_the_servers_id_and_time() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let ((mut reader, mut write), requested) = in_room(
            &listener,
            b":fake.test CAP * LS * :multi-prefix sasl\r\n:fake.test CAP * LS :echo-message message-tags server-time\r\n",
            "",
        )
        .await;
        assert_eq!(
            requested,
            "echo-message message-tags multi-prefix server-time"
        );
        // Two lines posted; each is echoed, the first with its id and time.
        let first = line_from(&mut reader).await;
        let second = line_from(&mut reader).await;
        assert_eq!(first, "PRIVMSG #room one");
        assert_eq!(second, "PRIVMSG #room two");
        write
            .write_all(b"@msgid=abc;time=2026-01-02T03:04:05.678Z :alice!a@h PRIVMSG #room :one\r\n@msgid=abd :alice!a@h PRIVMSG #room :two\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    let joined = tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let mut nicks: Vec<_> = joined.occupants.iter().map(|o| o.nick.clone()).collect();
    nicks.sort();
    assert_eq!(nicks, ["alice", "bob"]);
    let post = RoomPost {
        id: MessageId::new("origin-1"),
        user: UserJid::new("alice@localhost"),
        room: room.clone(),
        text: "one\ntwo".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    let posted = tokio::time::timeout(WAIT, bridge.send_room_message(post))
        .await
        .expect("in time")
        .expect("posted");
    assert_eq!(posted, Posted::EchoFollows);
    let messages: Vec<_> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Message(message) => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let echo = &messages[0];
    assert_eq!(
        echo.echo_of.as_ref().map(MessageId::as_str),
        Some("origin-1")
    );
    assert_eq!(echo.foreign_id.as_str(), "abc");
    assert_eq!(echo.text, "one\ntwo");
    let at = echo.timestamp.expect("server-time");
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    assert_eq!(since, 1_767_323_045_678);
    server.abort();
}

/// `labeled-response`: each posted line carries a label, and the server's answers (an
/// echo, an echo in a labelled batch, a refusal) go to the post they name, whatever their
/// order or text. Without labels, the refusal and the rewritten echo would go to the
/// oldest post.
#[tokio::test]
async fn labeled_response_ties_each_echo_and_refusal_to_its_post() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let ((mut reader, mut write), requested) = in_room(
            &listener,
            b":fake.test CAP * LS :batch echo-message labeled-response message-tags\r\n",
            "",
        )
        .await;
        assert_eq!(
            requested,
            "batch echo-message labeled-response message-tags"
        );
        let mut labels = Vec::new();
        for text in ["alpha", "beta", "gamma"] {
            let line = line_from(&mut reader).await;
            let (tags, rest) = line.split_once(' ').expect("tags, then the line");
            assert_eq!(rest, format!("PRIVMSG #room {text}"));
            labels.push(tags.strip_prefix("@label=").expect("a label").to_owned());
        }
        let [alpha, beta, gamma] = &labels[..] else {
            panic!("{labels:?}");
        };
        // Beta refused; gamma echoed as a word filter rewrote it; alpha's echo in a batch.
        let answers = format!(
            "@label={beta} :fake.test 404 alice #room :Cannot send to channel\r\n\
             @label={gamma};msgid=m3 :alice!a@h PRIVMSG #room :g*mma\r\n\
             @label={alpha} :fake.test BATCH +b1 labeled-response\r\n\
             @batch=b1;msgid=m1 :alice!a@h PRIVMSG #room :alpha\r\n\
             :fake.test BATCH -b1\r\n"
        );
        write.write_all(answers.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let mut posts = Vec::new();
    for (number, text) in ["alpha", "beta", "gamma"].into_iter().enumerate() {
        let bridge = bridge.clone();
        let post = RoomPost {
            id: MessageId::new(format!("origin-{number}")),
            user: UserJid::new("alice@localhost"),
            room: room.clone(),
            text: text.into(),
            registration: None,
            replaces: None,
            reply_to: None,
        };
        posts.push(tokio::spawn(async move {
            tokio::time::timeout(WAIT, bridge.send_room_message(post)).await
        }));
        // Posted in this order.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut outcomes = Vec::new();
    for post in posts {
        outcomes.push(post.await.expect("the post's task").expect("in time"));
    }
    assert_eq!(outcomes[0], Ok(Posted::EchoFollows));
    assert!(
        matches!(&outcomes[1], Err(jabbridge_sdk::SendError::Permanent { reason })
            if reason.contains("Cannot send to channel")),
        "{:?}",
        outcomes[1]
    );
    assert_eq!(outcomes[2], Ok(Posted::EchoFollows));
    let echoes: Vec<(String, String, String)> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Message(message) => Some((
                message.echo_of?.as_str().to_owned(),
                message.foreign_id.as_str().to_owned(),
                message.text,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        echoes,
        [
            ("origin-2".into(), "m3".into(), "gamma".into()),
            ("origin-0".into(), "m1".into(), "alpha".into())
        ]
    );
    server.abort();
}

#[tokio::test]
async fn a_join_fetches_the_channels_latest_lines_where_the_server_keeps_history() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let ((mut reader, mut write), requested) = in_room(
            &listener,
            b":fake.test CAP * LS :batch draft/chathistory message-tags server-time\r\n",
            "CHATHISTORY=50",
        )
        .await;
        assert_eq!(
            requested,
            "batch draft/chathistory message-tags server-time"
        );
        assert_eq!(
            line_from(&mut reader).await,
            "CHATHISTORY LATEST #room * 50"
        );
        // The history, then a live line.
        write
            .write_all(
                b":fake.test BATCH +h1 chathistory #room\r\n\
                  @batch=h1;msgid=old1;time=2026-01-02T03:04:05.000Z :bob!b@h PRIVMSG #room :said before\r\n\
                  @batch=h1;msgid=old2;time=2026-01-02T03:04:06.000Z :alice!a@h PRIVMSG #room :my own, earlier\r\n\
                  :fake.test BATCH -h1\r\n\
                  @msgid=live1 :bob!b@h PRIVMSG #room :now\r\n",
            )
            .await
            .expect("write");
        // A MAM query reached the archive's start: the lines before its oldest, at most
        // what the server allows.
        assert_eq!(
            line_from(&mut reader).await,
            "CHATHISTORY BEFORE #room timestamp=2026-01-02T03:04:05.000Z 50"
        );
        write
            .write_all(
                b":fake.test BATCH +h2 chathistory #room\r\n\
                  @batch=h2;msgid=older1;time=2026-01-01T00:00:00.000Z;account=carol_acct :carol!c@h PRIVMSG #room :\x01ACTION waves\x01\r\n\
                  @batch=h2;msgid=older2;time=2026-01-01T00:00:01.000Z :alice!a@h PRIVMSG #room :mine, long ago\r\n\
                  @batch=h2;msgid=older3;time=2026-01-01T00:00:02.000Z :dave!d@h NOTICE #room :a notice\r\n\
                  :fake.test BATCH -h2\r\n",
            )
            .await
            .expect("write");
        // Further back, the server refuses (a standard reply): the read ends at once.
        assert_eq!(
            line_from(&mut reader).await,
            "CHATHISTORY BEFORE #room timestamp=2026-01-01T00:00:00.000Z 10"
        );
        write
            .write_all(
                b":fake.test FAIL CHATHISTORY MESSAGE_ERROR #room :No history that far back\r\n",
            )
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(write);
    });
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let messages = || -> Vec<RoomMessage> {
        core.room_events()
            .into_iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Message(message) => Some(message),
                _ => None,
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while messages().len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let said: Vec<(String, String, String)> = messages()
        .into_iter()
        .map(|message| {
            (
                message.nick,
                message.text,
                message.foreign_id.as_str().to_owned(),
            )
        })
        .collect();
    // Our own earlier line is neither a message nor the echo of a post.
    assert_eq!(
        said,
        [
            (
                "bob".to_owned(),
                "said before".to_owned(),
                "old1".to_owned()
            ),
            ("bob".to_owned(), "now".to_owned(), "live1".to_owned())
        ]
    );
    let at = messages()[0].timestamp.expect("its time");
    let since = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    assert_eq!(since, 1_767_323_045_000);
    // Read back further: the lines come as the answer, not as room events.
    let request = jabbridge_sdk::HistoryRequest {
        user: UserJid::new("alice@localhost"),
        room: room.clone(),
        before: Some((MessageId::new("old1"), at)),
        limit: 200,
    };
    let older = tokio::time::timeout(WAIT, bridge.room_history(request))
        .await
        .expect("in time")
        .expect("the lines");
    let older: Vec<(String, String, String, String)> = older
        .into_iter()
        .map(|message| {
            (
                message.foreign_id.as_str().to_owned(),
                message.nick,
                message.sender.as_str().to_owned(),
                message.text,
            )
        })
        .collect();
    assert_eq!(
        older,
        [
            (
                "older1".to_owned(),
                "carol".to_owned(),
                "account:carol_acct".to_owned(),
                "/me waves".to_owned()
            ),
            (
                "older2".to_owned(),
                "alice".to_owned(),
                "nick:alice".to_owned(),
                "mine, long ago".to_owned()
            )
        ]
    );
    assert_eq!(messages().len(), 2);
    let request = jabbridge_sdk::HistoryRequest {
        user: UserJid::new("alice@localhost"),
        room: room.clone(),
        before: Some((
            MessageId::new("older1"),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600),
        )),
        limit: 10,
    };
    let refused = tokio::time::timeout(Duration::from_secs(2), bridge.room_history(request))
        .await
        .expect("at once, not at the timeout");
    assert!(
        matches!(&refused, Err(jabbridge_sdk::RoomActionError::Unavailable(text))
            if text.contains("No history that far back")),
        "{refused:?}"
    );
    server.abort();
}

#[tokio::test]
async fn forwards_status_messages_server_notices_and_ctcp_are_handled() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        let (mut reader, mut write) = accepted(&listener).await;
        while !line_from(&mut reader).await.starts_with("USER") {}
        write
            .write_all(b":fake.test 001 alice :hi\r\n:fake.test 005 alice CHANTYPES=#& STATUSMSG=@+ :ok\r\n:fake.test 422 alice :no MOTD\r\n")
            .await
            .expect("write");
        loop {
            let line = line_from(&mut reader).await;
            if line == "JOIN #full" {
                // Forwarded elsewhere: the join fails, and the gateway leaves where it landed.
                write
                    .write_all(b":fake.test 470 alice #full ##overflow :Forwarding to another channel\r\n:alice!a@h JOIN ##overflow\r\n")
                    .await
                    .expect("write");
            } else if line == "JOIN &local" {
                write
                    .write_all(b":alice!a@h JOIN &local\r\n:fake.test 353 alice = &local :alice bob\r\n:fake.test 366 alice &local :End\r\n:fake.test 315 alice &local :End of WHO\r\n\
                                 :bob!b@h PRIVMSG &local :in an ampersand channel\r\n\
                                 :bob!b@h PRIVMSG @&local :to the ops\r\n\
                                 :fake.test NOTICE &local :the server speaks\r\n\
                                 :fake.test 482 alice &local :You're not channel operator\r\n\
                                 :fake.test 482 alice #elsewhere :You're not on it either\r\n\
                                 :bob!b@h AWAY :gone fishing\r\n\
                                 :bob!b@h PRIVMSG alice :\x01VERSION\x01\r\n")
                    .await
                    .expect("write");
            } else {
                let _ = seen_sender.send(line);
            }
        }
    });
    let full = bridge.parse_room("#full%fake.test").expect("a room");
    let refused = tokio::time::timeout(WAIT, bridge.join_room(join(full.as_str())))
        .await
        .expect("in time");
    assert!(
        matches!(&refused, Err(jabbridge_sdk::JoinError::Unavailable(text)) if text.contains("Forwarding")),
        "{refused:?}"
    );
    let local = bridge.parse_room("&local%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(local.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let mut lines = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !lines
        .iter()
        .any(|line: &String| line.starts_with("NOTICE bob"))
    {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some(line)) => lines.push(line),
            _ => panic!("no CTCP answer; saw {lines:?}"),
        }
    }
    assert!(lines.contains(&"PART ##overflow".to_owned()), "{lines:?}");
    let version = lines.iter().find(|line| line.starts_with("NOTICE bob"));
    assert!(
        version.is_some_and(|line| line.contains("\u{1}VERSION Jabbridge")),
        "{lines:?}"
    );
    let events: Vec<RoomEvent> = core
        .room_events()
        .into_iter()
        .filter(|(room, _)| *room == local)
        .map(|(_, event)| event)
        .collect();
    let texts: Vec<String> = events
        .iter()
        .filter_map(|event| match event {
            RoomEvent::Message(message) => Some(format!("{}: {}", message.nick, message.text)),
            RoomEvent::Notice { text, .. } => Some(format!("notice: {text}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        texts,
        [
            "bob: in an ampersand channel",
            "bob: to the ops",
            "notice: the server speaks",
            "notice: You're not channel operator"
        ]
    );
    // Only the user who was refused hears it in the room; a refusal about a channel they
    // are not in comes from the server's address.
    assert!(events.iter().any(|event| matches!(event,
        RoomEvent::Notice { user: Some(user), text } if user.as_str() == "alice@localhost"
            && text == "You're not channel operator")));
    let mut from_server = Vec::new();
    while let Some(message) = core.next_delivered(Duration::from_millis(200)).await {
        from_server.push((message.contact.to_string(), message.text));
    }
    assert!(
        from_server.contains(&(
            "fake.test".to_owned(),
            "#elsewhere You're not on it either".to_owned()
        )),
        "{from_server:?}"
    );
    // away-notify: Bob shows away, with his message.
    let away = events.iter().find_map(|event| match event {
        RoomEvent::Occupant(occupant) if occupant.nick == "bob" => occupant.away.clone(),
        _ => None,
    });
    assert_eq!(away.as_deref(), Some("gone fishing"));
    server.abort();
}

/// Hosts and real names: from `userhost-in-names` and `extended-join`, updated by
/// `CHGHOST` and `SETNAME` (each an occupant update), and a ban goes by host unless the
/// host is shared (a gateway's), where it goes by nick.
#[tokio::test]
async fn hosts_and_real_names_follow_chghost_and_setname_and_bans_go_by_host() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let (seen_sender, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let server = tokio::spawn(async move {
        let (mut reader, mut write) = register(&listener).await;
        until(&mut reader, "JOIN #c").await;
        write
            .write_all(
                b":alice!a@gw.example JOIN #c\r\n\
                  :fake.test 353 alice = #c :@alice!a@gw.example bob!b@bob.example.net carol!c@shared.example dave!d@shared.example\r\n\
                  :fake.test 366 alice #c :End\r\n:fake.test 315 alice #c :End of WHO\r\n\
                  :erin!e@erin.example JOIN #c erin_account :Erin \x02Example\x02\r\n\
                  :bob!b@bob.example.net CHGHOST b user/bob\r\n\
                  :bob!b@user/bob SETNAME :Bob \x01Builder\r\n\
                  :dave!d@shared.example CHGHOST d bad\x7fhost\r\n",
            )
            .await
            .expect("write");
        loop {
            let _ = seen_sender.send(line_from(&mut reader).await);
        }
    });
    let room = bridge.parse_room("#c%fake.test").expect("a room");
    let joined = tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let host = |nick: &str| {
        joined
            .occupants
            .iter()
            .find(|occupant| occupant.nick == nick)
            .and_then(|occupant| occupant.host.clone())
    };
    assert_eq!(host("bob").as_deref(), Some("bob.example.net"));
    assert_eq!(host("carol").as_deref(), Some("shared.example"));
    assert_eq!(host("alice").as_deref(), Some("gw.example"));
    // After the join: a newcomer with extended-join, a host change and a new real name.
    let deadline = tokio::time::Instant::now() + WAIT;
    let occupant = |nick: &str| {
        core.room_events()
            .into_iter()
            .filter_map(|(_, event)| match event {
                RoomEvent::Occupant(occupant) if occupant.nick == nick => Some(occupant),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    while occupant("bob").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            core.room_events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let bob = occupant("bob");
    assert_eq!(bob[0].host.as_deref(), Some("user/bob"));
    assert_eq!(bob[0].realname, None);
    assert_eq!(bob[1].host.as_deref(), Some("user/bob"));
    assert_eq!(bob[1].realname.as_deref(), Some("Bob Builder"));
    let erin = occupant("erin");
    assert_eq!(erin.len(), 1);
    assert_eq!(erin[0].host.as_deref(), Some("erin.example"));
    assert_eq!(erin[0].realname.as_deref(), Some("Erin *Example*"));
    assert_eq!(erin[0].id.as_str(), "account:erin_account");
    // A host with a control character is no host: Dave's stays as it was, unreported.
    assert!(occupant("dave").is_empty(), "{:?}", occupant("dave"));
    let alice = UserJid::new("alice@localhost");
    for nick in ["bob", "carol"] {
        bridge
            .moderate(
                &alice,
                &room,
                jabbridge_sdk::Moderation::Ban {
                    nick: nick.into(),
                    reason: None,
                },
            )
            .await
            .expect("asked");
    }
    let mut modes = Vec::new();
    while modes.len() < 2 {
        match tokio::time::timeout(WAIT, seen.recv()).await {
            Ok(Some(line)) if line.starts_with("MODE") => modes.push(line),
            Ok(Some(_)) => {}
            _ => panic!("no MODE lines; saw {modes:?}"),
        }
    }
    // Bob by his host; Carol shares hers with Dave, so by her nick.
    assert_eq!(modes, ["MODE #c +b *!*@user/bob", "MODE #c +b carol!*@*"]);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_share_one_channel_and_each_line_is_reported_once() {
    use crate::config::Tls;
    use crate::connection::{Connection, Registration, Target};

    let Some(server) = ngircd().await else {
        return;
    };
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, server.port);
    let target = Target {
        address: format!("127.0.0.1:{}", server.port),
        host: "127.0.0.1".into(),
        tls: Tls::Off,
        client: None,
        idents: None,
    };
    let registration = Registration {
        nick: "carol".into(),
        username: "carol".into(),
        realname: "Carol".into(),
        password: None,
        sasl: None,
        webirc: None,
    };
    let mut carol = Connection::connect(&target, &registration, WAIT)
        .await
        .expect("carol connects");
    carol.send("JOIN", &["#crowd"]).await.expect("join");
    let room = bridge.parse_room("#crowd%fake.test").expect("a room");
    let user = |n: usize| UserJid::new(format!("user{n}@localhost"));

    // Fifty users join at once, each with a connection of their own.
    let mut joins = Vec::new();
    for n in 0..50 {
        let bridge = bridge.clone();
        let mut request = join(room.as_str());
        request.user = user(n);
        request.nick = format!("user{n}");
        joins.push(tokio::spawn(async move { bridge.join_room(request).await }));
    }
    let mut most = 0;
    for joined in joins {
        let joined = tokio::time::timeout(Duration::from_secs(30), joined)
            .await
            .expect("joined in time")
            .expect("the task")
            .expect("joined");
        most = most.max(joined.occupants.len());
    }
    assert_eq!(most, 51, "the last to join sees everyone and carol");
    // One more asks for the nick carol: it gets a suffix, and the core is told the nick
    // it has (the user then sees status 210).
    let mut request = join(room.as_str());
    request.user = user(50);
    request.nick = "carol".into();
    let joined = tokio::time::timeout(Duration::from_secs(30), bridge.join_room(request))
        .await
        .expect("in time")
        .expect("joined");
    assert_eq!(joined.nick, "carol_");
    bridge.leave_room(&user(50), &room).await;
    let mut seen_joins = 0;
    while seen_joins < 51 {
        let message = tokio::time::timeout(WAIT, carol.next_message())
            .await
            .expect("joins in time")
            .expect("read")
            .expect("open");
        if message.command == "JOIN" {
            seen_joins += 1;
        }
    }

    // Carol speaks: fifty connections hear it, the core is told once.
    carol
        .send("PRIVMSG", &["#crowd", "hello crowd"])
        .await
        .expect("say");
    // User 7 speaks: Carol hears it, the core reflects it (no report from IRC).
    let post = RoomPost {
        id: MessageId::new("seven-1"),
        user: user(7),
        room: room.clone(),
        text: "from seven".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    let posted = bridge.send_room_message(post).await.expect("posted");
    assert!(
        matches!(
            posted,
            Posted::Reflect {
                foreign_id: Some(_)
            }
        ),
        "{posted:?}"
    );
    let heard = loop {
        let message = tokio::time::timeout(WAIT, carol.next_message())
            .await
            .expect("in time")
            .expect("read")
            .expect("open");
        if message.command == "PRIVMSG" {
            break message;
        }
    };
    assert_eq!(heard.nick(), Some("user7"));
    assert_eq!(heard.params, ["#crowd", "from seven"]);
    // User 0 leaves; Carol leaves.
    bridge.leave_room(&user(0), &room).await;
    carol.send("PART", &["#crowd", "bye"]).await.expect("part");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = core
            .room_events()
            .iter()
            .any(|(_, event)| matches!(event, RoomEvent::Left { nick, .. } if nick == "carol"));
        if left {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "carol's part was not reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give stray duplicates time to arrive, then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let events = core.room_events();
    let messages: Vec<_> = events
        .iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Message(message) => Some((message.nick.clone(), message.text.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(messages, [("carol".to_owned(), "hello crowd".to_owned())]);
    let lefts: Vec<_> = events
        .iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Left { nick, .. } => Some(nick.clone()),
            _ => None,
        })
        .collect();
    // Carol's part once; user 0's own leave is the core's to show, not a report.
    assert_eq!(lefts, ["carol"]);
    let joined_events = events
        .iter()
        .filter(|(_, event)| matches!(event, RoomEvent::Occupant(occupant) if occupant.nick.starts_with("user")))
        .count();
    assert_eq!(
        joined_events, 0,
        "our users' joins are not reported as others'"
    );
}

/// A connection on the scripted server: its reader and its writer.
type Scripted = (
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
);

/// A scripted server's listener, on a free loopback port, and the port.
async fn listening() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    (listener, port)
}

/// The scripted server's next connection, as lines to read and a writer.
async fn accepted(listener: &TcpListener) -> Scripted {
    let (stream, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("a connection in time")
        .expect("accept");
    let (read, write) = stream.into_split();
    (BufReader::new(read), write)
}

/// Accepts the next connection and registers it, without capabilities.
async fn register(listener: &TcpListener) -> Scripted {
    let (mut reader, mut write) = accepted(listener).await;
    let mut nick = String::new();
    loop {
        let line = line_from(&mut reader).await;
        if let Some(asked) = line.strip_prefix("NICK ") {
            nick = asked.to_owned();
        }
        if line.starts_with("USER") {
            break;
        }
    }
    let welcome = format!(
        ":fake.test 001 {nick} :hi\r\n:fake.test 005 {nick} CASEMAPPING=ascii :ok\r\n\
         :fake.test 422 {nick} :no MOTD\r\n"
    );
    write.write_all(welcome.as_bytes()).await.expect("write");
    (reader, write)
}

/// A scripted server's next connection: offers `offered` (its `CAP LS` lines), welcomes
/// the client (with these ISUPPORT tokens, if any), and answers its `JOIN #room` with
/// Alice and `@bob`. Returns the connection and the capabilities the client asked for.
async fn in_room(listener: &TcpListener, offered: &[u8], isupport: &str) -> (Scripted, String) {
    let (mut reader, mut write) = accepted(listener).await;
    let requested = negotiate(&mut reader, &mut write, offered).await;
    let isupport = if isupport.is_empty() {
        String::new()
    } else {
        format!(":fake.test 005 alice {isupport} :ok\r\n")
    };
    let welcome =
        format!(":fake.test 001 alice :hi\r\n{isupport}:fake.test 422 alice :no MOTD\r\n");
    write.write_all(welcome.as_bytes()).await.expect("write");
    until(&mut reader, "JOIN #room").await;
    write
        .write_all(
            b":alice!a@h JOIN #room\r\n:fake.test 353 alice = #room :alice @bob\r\n\
              :fake.test 366 alice #room :End\r\n:fake.test 315 alice #room :End of WHO\r\n",
        )
        .await
        .expect("write");
    ((reader, write), requested)
}

/// The bytes of the next line the client writes that starts with `prefix` (read as bytes:
/// it may be in another encoding than UTF-8), with its CR LF.
async fn bytes_until<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, prefix: &[u8]) -> Vec<u8> {
    let mut line = Vec::new();
    loop {
        line.clear();
        tokio::time::timeout(WAIT, reader.read_until(b'\n', &mut line))
            .await
            .expect("a line in time")
            .expect("read");
        if line.starts_with(prefix) {
            return line;
        }
    }
}

/// Reads what the client writes until a line starting with `prefix`.
async fn until<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, prefix: &str) {
    while !line_from(reader).await.starts_with(prefix) {}
}

/// The channel messages the core was told, in order.
fn said(core: &TestCore) -> Vec<String> {
    core.room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Message(message) => Some(message.text),
            _ => None,
        })
        .collect()
}

/// Waits until the core was told `text`.
async fn until_said(core: &TestCore, text: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !said(core).iter().any(|said| said == text) {
        assert!(tokio::time::Instant::now() < deadline, "{text:?} not said");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reporter leaves while the connections read the channel at different places: the
/// lines before its own PART are its to report, those after are its successor's, each once,
/// whichever connection reads them first.
#[tokio::test]
async fn a_leaving_reporter_hands_over_at_its_part_line() {
    hand_over(false).await;
    hand_over(true).await;
}

/// Alice and Bob in `#room` on a scripted server, Alice reporting it (she read "one"):
/// the core, the bridge, the room, and each one's connection as the server sees it.
async fn alice_and_bob() -> (
    TestCore,
    std::sync::Arc<dyn jabbridge_sdk::Bridge>,
    RoomId,
    Scripted,
    Scripted,
) {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let room = bridge.parse_room("#room%fake.test").expect("a room");

    // Alice joins first: she reports the channel.
    let joining = tokio::spawn({
        let bridge = bridge.clone();
        let request = join(room.as_str());
        async move { bridge.join_room(request).await }
    });
    let (mut alice_in, mut alice) = register(&listener).await;
    until(&mut alice_in, "JOIN #room").await;
    alice
        .write_all(b":alice!a@h JOIN #room\r\n:fake.test 353 alice = #room :alice carol\r\n:fake.test 366 alice #room :End\r\n:fake.test 315 alice #room :End of WHO\r\n")
        .await
        .expect("write");
    joining.await.expect("task").expect("alice joined");

    // Bob joins.
    let joining = tokio::spawn({
        let bridge = bridge.clone();
        let mut request = join(room.as_str());
        request.user = UserJid::new("bob@localhost");
        request.nick = "bob".into();
        async move { bridge.join_room(request).await }
    });
    let (mut bob_in, mut bob) = register(&listener).await;
    until(&mut bob_in, "JOIN #room").await;
    bob.write_all(b":bob!b@h JOIN #room\r\n:fake.test 353 bob = #room :alice bob carol\r\n:fake.test 366 bob #room :End\r\n:fake.test 315 bob #room :End of WHO\r\n")
        .await
        .expect("write");
    joining.await.expect("task").expect("bob joined");
    alice
        .write_all(b":bob!b@h JOIN #room\r\n:carol!c@h PRIVMSG #room :one\r\n")
        .await
        .expect("write");
    until_said(&core, "one").await;

    (core, bridge, room, (alice_in, alice), (bob_in, bob))
}

/// Alice reports a channel and leaves it; Bob, in it too, reads the lines around her PART
/// after her, or, with `bob_first`, before her.
async fn hand_over(bob_first: bool) {
    let (core, bridge, room, (mut alice_in, mut alice), (_, mut bob)) = alice_and_bob().await;

    // Alice leaves; her connection has not read her PART yet, and reads one more line
    // before it. Bob reads the same lines, and one after her PART.
    bridge
        .leave_room(&UserJid::new("alice@localhost"), &room)
        .await;
    until(&mut alice_in, "PART #room").await;
    let to_alice = b":carol!c@h PRIVMSG #room :two\r\n:alice!a@h PART #room\r\n";
    let to_bob = b":carol!c@h PRIVMSG #room :one\r\n:carol!c@h PRIVMSG #room :two\r\n\
          :alice!a@h PART #room\r\n:carol!c@h PRIVMSG #room :three\r\n";
    let order = if bob_first {
        bob.write_all(to_bob).await.expect("write");
        until_said(&core, "three").await;
        alice.write_all(to_alice).await.expect("write");
        until_said(&core, "two").await;
        ["one", "three", "two"]
    } else {
        alice.write_all(to_alice).await.expect("write");
        until_said(&core, "two").await;
        bob.write_all(to_bob).await.expect("write");
        until_said(&core, "three").await;
        ["one", "two", "three"]
    };
    // Give a stray repeat time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(said(&core), order);
}

/// The reporter's session ends: the lines the server sent it before handling its QUIT are
/// still its to report, and those after the QUIT its heir's, each once.
#[tokio::test]
async fn a_quitting_reporter_reports_up_to_its_quit() {
    let (core, bridge, _room, (mut alice_in, mut alice), (_, mut bob)) = alice_and_bob().await;
    bridge
        .stop_session(
            &UserJid::new("alice@localhost"),
            jabbridge_sdk::SessionEnd::Unregistered,
        )
        .await;
    until(&mut alice_in, "QUIT").await;
    // The server had sent Alice one more line before it read her QUIT.
    bob.write_all(
        b":carol!c@h PRIVMSG #room :last\r\n:alice!a@h QUIT :Quit: Leaving\r\n\
          :carol!c@h PRIVMSG #room :after\r\n",
    )
    .await
    .expect("write");
    until_said(&core, "after").await;
    alice
        .write_all(b":carol!c@h PRIVMSG #room :last\r\nERROR :Closing link\r\n")
        .await
        .expect("write");
    until_said(&core, "last").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(said(&core), ["one", "after", "last"]);
}

/// Flood control paces a long post's lines (a burst of one, then four a second), and the
/// connection's one timer lets each go when its token is there: all of them, in order, none
/// before its time.
#[tokio::test]
async fn flood_control_paces_a_posts_lines_and_lets_each_go() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = core
        .build(
            crate::build,
            jabbridge_sdk::serde_json::json!({
                "flood": {"burst": 1, "per_second": 4},
                "network": [{"name": "fake.test", "host": "127.0.0.1", "port": port, "tls": "off"}],
            }),
        )
        .expect("the bridge builds");
    let server = tokio::spawn(async move {
        let ((mut reader, _write), _) = in_room(&listener, b":fake.test CAP * LS :\r\n", "").await;
        let mut lines = Vec::new();
        for _ in 0..4 {
            let line = line_from(&mut reader).await;
            lines.push((line, tokio::time::Instant::now()));
        }
        lines
    });
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let post = RoomPost {
        id: MessageId::new("origin-1"),
        user: UserJid::new("alice@localhost"),
        room,
        text: "a\nb\nc\nd".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    tokio::time::timeout(WAIT, bridge.send_room_message(post))
        .await
        .expect("in time")
        .expect("posted");
    let lines = tokio::time::timeout(WAIT, server)
        .await
        .expect("in time")
        .expect("the server's side");
    let texts: Vec<&str> = lines.iter().map(|(line, _)| line.as_str()).collect();
    assert_eq!(
        texts,
        [
            "PRIVMSG #room a",
            "PRIVMSG #room b",
            "PRIVMSG #room c",
            "PRIVMSG #room d"
        ]
    );
    // Three tokens to wait for, 250 ms each (a lower bound: a slow machine only adds).
    let spread = lines[3].1 - lines[0].1;
    assert!(spread >= Duration::from_millis(600), "{spread:?}");
}

/// What an idle connection's task weighs (it is paid once per user and server): its future
/// and state, without the buffers it grows under load.
#[test]
fn a_connections_task_stays_small() {
    use crate::client::{Client, Reach, Setup};
    use crate::config::{Flood, Tls};
    use crate::connection::{Registration, Target};
    let core = TestCore::new("irc.localhost");
    let reach = Reach {
        network: "n".into(),
        target: Target {
            address: "127.0.0.1:1".into(),
            host: "h".into(),
            tls: Tls::Off,
            client: None,
            idents: None,
        },
        flood: Flood::default(),
        connect_timeout: Duration::from_secs(1),
        reconnect_max: Duration::from_secs(1),
        idle_close: Duration::from_secs(1),
        addressing: crate::address::Addressing::new(vec![], None),
        meters: crate::meters::Meters::new("b", "n"),
    };
    let setup = Setup {
        reach: std::sync::Arc::new(reach),
        certificate: None,
        registration: Registration {
            nick: "a".into(),
            username: "a".into(),
            realname: "a".into(),
            password: None,
            sasl: None,
            webirc: None,
        },
        identify: None,
        after_connect: vec![],
        encoding: None,
        channel_encodings: vec![],
        autojoin: vec![],
        nick_chosen: false,
    };
    let (client, _handle) = Client::new(
        UserJid::new("a@b"),
        setup,
        std::sync::Arc::default(),
        core.core(),
    );
    let future = Box::new(client).run();
    let task = std::mem::size_of_val(&future) + std::mem::size_of::<Client>();
    // 8,448 bytes when the reader kept a 4 KiB chunk on the task's stack; 4,856 when the
    // client was kept twice in the future (as argument and as local).
    // 2,664 + 1,424 while `serve` took the whole `Connection` (kept twice: as argument and
    // as local) and every line's handlers sat in the task beside the select's futures.
    // 2,984 with four timers in the select, the registered connection kept while served, and
    // the handlers of a reconnection and of expired answers inline. 2,640 with the
    // network's setup (target, pacing, addressing) and the server's ISUPPORT copied into
    // every connection rather than shared. 2,296 before a user's encodings (the server's and
    // the channels'), commands on connecting and CTCP questions waiting; 2,312 with them, the
    // rare `LIST` being read boxed; 2,320 with typing's state (boxed, while anyone types);
    // 2,272 once a command taken while the connection is down is no longer kept whole
    // across the awaits of a disconnection (a command's size then sized every task).
    assert!(task <= 2_272, "{task} bytes");
}

#[tokio::test]
async fn a_users_server_password_commands_and_encoding_apply_to_their_connection() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = core
        .build(
            crate::build,
            jabbridge_sdk::serde_json::json!({
                "flood": {"burst": 10, "per_second": 0},
                "raw_commands": true,
                "secret_key": "a test key of more than sixteen characters",
                "network": [{"name": "fake.test", "host": "127.0.0.1", "port": port,
                             "tls": "off", "password": "the-networks"}],
            }),
        )
        .expect("the bridge builds");
    let alice = UserJid::new("alice@localhost");
    let values = jabbridge_sdk::FormValues(
        [
            ("server", "fake.test"),
            ("server_password", "alice/libera:hunter2"),
            ("after_connect", "mode alice +R\nPRIVMSG bob :two words"),
            ("encoding", "cp1251"),
            ("channel_encodings", "#AUTO=koi8-r"),
            ("autojoin", "#auto"),
        ]
        .into_iter()
        .map(|(var, value)| (var.to_owned(), value.to_owned()))
        .collect(),
    );
    let said = jabbridge_sdk::testkit::run_command(&*bridge, &alice, "irc-settings", &values)
        .await
        .expect("the settings are kept");
    assert!(said.contains("a server password"), "{said}");
    assert!(said.contains("encoding windows-1251"), "{said}");
    assert!(said.contains("channel encodings #AUTO=koi8-r"), "{said}");
    assert!(!said.contains("hunter2"), "{said}");

    let room = bridge.parse_room("#room%fake.test").expect("a room");
    let joining = tokio::spawn({
        let bridge = bridge.clone();
        let request = join(room.as_str());
        async move { bridge.join_room(request).await }
    });
    let (mut reader, mut write) = accepted(&listener).await;
    let mut registration = Vec::new();
    loop {
        let line = line_from(&mut reader).await;
        let last = line.starts_with("USER ");
        registration.push(line);
        if last {
            break;
        }
    }
    let passes: Vec<&String> = registration
        .iter()
        .filter(|line| line.starts_with("PASS "))
        .collect();
    assert_eq!(passes, ["PASS alice/libera:hunter2"], "{registration:?}");
    write
        .write_all(b":fake.test 001 alice :hi\r\n:fake.test 422 alice :no MOTD\r\n")
        .await
        .expect("write");
    // After the welcome: her commands, in order, then the joins.
    let mut after = Vec::new();
    while after.len() < 4 {
        after.push(line_from(&mut reader).await);
    }
    assert_eq!(
        after,
        [
            "MODE alice +R",
            "PRIVMSG bob :two words",
            "JOIN #auto",
            "JOIN #room"
        ]
    );
    write
        .write_all(
            b":alice!a@h JOIN #room\r\n:fake.test 353 alice = #room :alice bob\r\n\
              :fake.test 366 alice #room :End\r\n:fake.test 315 alice #room :End of WHO\r\n",
        )
        .await
        .expect("write");
    tokio::time::timeout(WAIT, joining)
        .await
        .expect("in time")
        .expect("the task")
        .expect("joined");
    // Windows-1251 from the server reads as such (not as Latin-1)...
    write
        .write_all(b":bob!b@h PRIVMSG #room :\xcf\xf0\xe8\xe2\xe5\xf2\r\n")
        .await
        .expect("write");
    until_said(&core, "Привет").await;
    // ... and her text goes out in it, a character it lacks as '?'.
    let post = RoomPost {
        id: MessageId::new("origin-1"),
        user: alice,
        room,
        text: "Привет 🙂".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    tokio::time::timeout(WAIT, bridge.send_room_message(post))
        .await
        .expect("in time")
        .expect("posted");
    let line = bytes_until(&mut reader, b"PRIVMSG #room").await;
    assert_eq!(line, b"PRIVMSG #room :\xcf\xf0\xe8\xe2\xe5\xf2 ?\r\n");

    // #auto has an encoding of its own (named in any case): KOI8-R both ways there, where
    // the same bytes would read "НЙТ" in the server's windows-1251.
    write
        .write_all(
            b":alice!a@h JOIN #auto\r\n:fake.test 353 alice = #auto :alice bob\r\n\
              :fake.test 366 alice #auto :End\r\n:fake.test 315 alice #auto :End of WHO\r\n\
              :bob!b@h PRIVMSG #auto :\xcd\xc9\xd2\r\n",
        )
        .await
        .expect("write");
    until_said(&core, "мир").await;
    let post = RoomPost {
        id: MessageId::new("origin-2"),
        user: UserJid::new("alice@localhost"),
        room: bridge.parse_room("#auto%fake.test").expect("a room"),
        text: "мир".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    tokio::time::timeout(WAIT, bridge.send_room_message(post))
        .await
        .expect("in time")
        .expect("posted");
    let line = bytes_until(&mut reader, b"PRIVMSG #auto").await;
    assert_eq!(line, b"PRIVMSG #auto \xcd\xc9\xd2\r\n");
}

/// A scripted server, `alice` in `#room` on it with `message-tags`: it reads the bridge's
/// next `count` lines (handed over), then says `script`.
fn reads_then_says(
    listener: TcpListener,
    count: usize,
    script: &'static str,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<Vec<String>>,
) {
    let (lines, written) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let offered = b":fake.test CAP * LS :message-tags server-time\r\n";
        let ((mut reader, mut write), requested) = in_room(&listener, offered, "").await;
        assert_eq!(requested, "message-tags server-time");
        let mut read = Vec::new();
        for _ in 0..count {
            read.push(line_from(&mut reader).await);
        }
        let _ = lines.send(read);
        write.write_all(script.as_bytes()).await.expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    (server, written)
}

/// Typing both ways on `TAGMSG` (IRCv3 `+typing`, where the server carries client tags):
/// the user's typing is said once per change, and their message ends it; someone's is
/// reported once per change, in the room and privately, the draft's tag too; our own echo
/// and the ends of typing nobody was told of are not reported.
#[tokio::test]
async fn typing_goes_both_ways_on_tagmsg_once_per_change() {
    use jabbridge_sdk::{ChatState, ForeignId};
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let (server, written) = reads_then_says(
        listener,
        7,
        "@+typing=active :bob!b@h TAGMSG #room\r\n\
         @+typing=active :bob!b@h TAGMSG #room\r\n\
         @+typing=active :alice!a@h TAGMSG #room\r\n\
         @+typing=done :dave!d@h TAGMSG #room\r\n\
         @+typing=paused :bob!b@h TAGMSG #room\r\n\
         @+draft/typing=active :carol!c@h TAGMSG #room\r\n\
         @+typing=active :bob!b@h TAGMSG alice\r\n\
         @+typing=done :bob!b@h TAGMSG alice\r\n\
         :fake.test 401 alice carol :No such nick/channel\r\n\
         :bob!b@h PRIVMSG #room :done typing\r\n",
    );
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let alice = UserJid::new("alice@localhost");
    for state in [
        ChatState::Composing,
        ChatState::Composing,
        ChatState::Active,
    ] {
        bridge.room_chat_state(&alice, &room, state).await;
    }
    // Typing, then the message: the typing after it is news again.
    bridge
        .room_chat_state(&alice, &room, ChatState::Composing)
        .await;
    let post = RoomPost {
        id: MessageId::new("origin-1"),
        user: alice.clone(),
        room: room.clone(),
        text: "hello".into(),
        registration: None,
        replaces: None,
        reply_to: None,
    };
    tokio::time::timeout(WAIT, bridge.send_room_message(post))
        .await
        .expect("in time")
        .expect("posted");
    bridge
        .room_chat_state(&alice, &room, ChatState::Composing)
        .await;
    let bob = ForeignId::new("bob%fake.test");
    bridge
        .send_chat_state(&alice, &bob, None, ChatState::Composing)
        .await;
    // To an occupant privately: a query's typing, to their nick.
    let carol = ForeignId::new("carol");
    bridge
        .send_chat_state(&alice, &carol, Some(&room), ChatState::Composing)
        .await;
    let written = tokio::time::timeout(WAIT, written)
        .await
        .expect("in time")
        .expect("the server read seven lines");
    assert_eq!(
        written,
        [
            "@+typing=active TAGMSG #room",
            "@+typing=done TAGMSG #room",
            "@+typing=active TAGMSG #room",
            "PRIVMSG #room hello",
            "@+typing=active TAGMSG #room",
            "@+typing=active TAGMSG bob",
            "@+typing=active TAGMSG carol",
        ]
    );
    until_said(&core, "done typing").await;
    // Carol is gone: the server's refusal of the typing to her is not shown to the user.
    assert!(
        core.next_delivered(Duration::from_millis(200))
            .await
            .is_none()
    );
    let typing: Vec<(String, ChatState)> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Typing { nick, state } => Some((nick, state)),
            _ => None,
        })
        .collect();
    assert_eq!(
        typing,
        [
            ("bob".to_owned(), ChatState::Composing),
            ("bob".to_owned(), ChatState::Paused),
            ("carol".to_owned(), ChatState::Composing),
        ]
    );
    assert_eq!(
        core.chat_states(),
        [
            (alice.clone(), bob.clone(), ChatState::Composing),
            (alice, bob, ChatState::Active),
        ]
    );
    server.abort();
}

/// Reactions on `TAGMSG` (`+draft/react`, `+draft/unreact`, `+draft/reply`): the user's new
/// set goes out as what it adds and takes back; someone's reactions are reported as their
/// whole set, once per change.
#[tokio::test]
async fn reactions_go_out_as_changes_and_come_in_as_whole_sets() {
    use jabbridge_sdk::{ForeignId, Reaction};
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let (server, written) = reads_then_says(
        listener,
        3,
        "@+draft/reply=m1;+draft/react=👀 :bob!b@h TAGMSG #room\r\n\
         @+draft/reply=m1;+draft/react=👀 :bob!b@h TAGMSG #room\r\n\
         @+draft/reply=m1;+draft/react=🎉 :bob!b@h TAGMSG #room\r\n\
         @+draft/reply=m1;+draft/unreact=👀 :bob!b@h TAGMSG #room\r\n\
         @+draft/react=🎉 :bob!b@h TAGMSG #room\r\n\
         :bob!b@h PRIVMSG #room :end\r\n",
    );
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let alice = UserJid::new("alice@localhost");
    let m1 = MessageId::new("m1");
    for set in [&["👍", "🎉"][..], &["🎉"][..]] {
        let set: Vec<String> = set.iter().map(|emoji| (*emoji).to_owned()).collect();
        tokio::time::timeout(WAIT, bridge.react_in_room(&alice, &room, &m1, &set))
            .await
            .expect("in time")
            .expect("taken");
    }
    let written = tokio::time::timeout(WAIT, written)
        .await
        .expect("in time")
        .expect("the server read three lines");
    assert_eq!(
        written,
        [
            "@+draft/reply=m1;+draft/react=👍 TAGMSG #room",
            "@+draft/reply=m1;+draft/react=🎉 TAGMSG #room",
            "@+draft/reply=m1;+draft/unreact=👍 TAGMSG #room",
        ]
    );
    until_said(&core, "end").await;
    let reacted: Vec<Reaction> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Reacted(reaction) => Some(reaction),
            _ => None,
        })
        .collect();
    let bobs = |emojis: &[&str]| Reaction {
        to: m1.clone(),
        nick: "bob".into(),
        sender: ForeignId::new("nick:bob"),
        emojis: emojis.iter().map(|emoji| (*emoji).to_owned()).collect(),
    };
    assert_eq!(reacted, [bobs(&["👀"]), bobs(&["👀", "🎉"]), bobs(&["🎉"])]);
    server.abort();
}

/// Replies (`+draft/reply` on `PRIVMSG`, where the server carries client tags): the user's
/// names the message by its `msgid` (not one made up here) and addresses its author as IRC
/// people do, unless the text names them already or the message was the user's own;
/// someone's is reported with the message it replies to.
#[tokio::test]
async fn replies_go_out_tagged_and_addressed_and_come_in_with_what_they_answer() {
    use jabbridge_sdk::ReplyTo;
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let (server, written) = reads_then_says(
        listener,
        7,
        "@msgid=m3;+draft/reply=m1 :bob!b@h PRIVMSG #room :yes\r\n\
         @msgid=m4;+draft/reply :bob!b@h PRIVMSG #room :no\r\n\
         :bob!b@h PRIVMSG #room :end\r\n",
    );
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let replies = [
        ("m1", "bob", "hi"),
        ("m1", "bob", "Bob, hi"),
        ("m1", "bob", "bobcats!"),
        ("m1", "bob", "bob_ is here"),
        ("m1", "bob", "/me waves"),
        ("m2", "alice", "me again"),
        ("fake.test:1a:2", "carol", "hey"),
    ];
    for (at, (id, nick, text)) in replies.into_iter().enumerate() {
        let post = RoomPost {
            id: MessageId::new(format!("origin-{at}")),
            user: UserJid::new("alice@localhost"),
            room: room.clone(),
            text: text.into(),
            registration: None,
            replaces: None,
            reply_to: Some(ReplyTo {
                id: MessageId::new(id),
                nick: nick.into(),
            }),
        };
        tokio::time::timeout(WAIT, bridge.send_room_message(post))
            .await
            .expect("in time")
            .expect("posted");
    }
    let written = tokio::time::timeout(WAIT, written)
        .await
        .expect("in time")
        .expect("the server read seven lines");
    assert_eq!(
        written,
        [
            "@+draft/reply=m1 PRIVMSG #room :bob: hi",
            "@+draft/reply=m1 PRIVMSG #room :Bob, hi",
            "@+draft/reply=m1 PRIVMSG #room :bob: bobcats!",
            "@+draft/reply=m1 PRIVMSG #room :bob: bob_ is here",
            "@+draft/reply=m1 PRIVMSG #room :\u{1}ACTION waves\u{1}",
            "@+draft/reply=m2 PRIVMSG #room :me again",
            "PRIVMSG #room :carol: hey",
        ]
    );
    until_said(&core, "end").await;
    let answered: Vec<(String, Option<MessageId>)> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Message(message) => Some((message.text, message.reply_to)),
            _ => None,
        })
        .collect();
    assert_eq!(
        answered,
        [
            ("yes".to_owned(), Some(MessageId::new("m1"))),
            ("no".to_owned(), None),
            ("end".to_owned(), None),
        ]
    );
    server.abort();
}

/// Retractions as `REDACT` (IRCv3 `draft/message-redaction`): the user's is answered once the
/// server took it (the `PONG` after it) or with the server's `FAIL`; someone's retracts their
/// message in the room; our own echo is not reported again.
#[tokio::test]
async fn retractions_go_out_as_redact_and_come_in_from_others() {
    let (listener, port) = listening().await;
    let core = TestCore::new("irc.localhost");
    let bridge = bridge(&core, port);
    let server = tokio::spawn(async move {
        let offered = b":fake.test CAP * LS :draft/message-redaction message-tags\r\n";
        let ((mut reader, mut write), requested) = in_room(&listener, offered, "").await;
        assert_eq!(requested, "draft/message-redaction message-tags");
        for (message, answer) in [
            ("m1", String::new()),
            (
                "m2",
                ":fake.test FAIL REDACT REDACT_FORBIDDEN #room m2 :You are not authorised\r\n"
                    .to_owned(),
            ),
        ] {
            assert_eq!(
                line_from(&mut reader).await,
                format!("REDACT #room {message}")
            );
            let ping = line_from(&mut reader).await;
            let token = ping.strip_prefix("PING ").expect("a PING after it");
            let answer = format!("{answer}:fake.test PONG fake.test {token}\r\n");
            write.write_all(answer.as_bytes()).await.expect("write");
        }
        write
            .write_all(
                b"@msgid=r1 :alice!a@h REDACT #room m1\r\n\
                  @msgid=r2 :bob!b@h REDACT #room m9 :spam\r\n\
                  :bob!b@h PRIVMSG #room :end\r\n",
            )
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    let room = bridge.parse_room("#room%fake.test").expect("a room");
    tokio::time::timeout(WAIT, bridge.join_room(join(room.as_str())))
        .await
        .expect("in time")
        .expect("joined");
    let alice = UserJid::new("alice@localhost");
    let retract = |id: &'static str| {
        let (bridge, alice, room) = (bridge.clone(), alice.clone(), room.clone());
        async move {
            let message = MessageId::new(id);
            let retracted = bridge.retract_room_message(&alice, &room, &message);
            tokio::time::timeout(WAIT, retracted)
                .await
                .expect("in time")
        }
    };
    assert_eq!(retract("m1").await, Ok(()));
    assert!(matches!(retract("m2").await,
            Err(jabbridge_sdk::RoomActionError::Forbidden(reason)) if reason.contains("not authorised")),);
    until_said(&core, "end").await;
    let retracted: Vec<String> = core
        .room_events()
        .into_iter()
        .filter_map(|(_, event)| match event {
            RoomEvent::Retracted { foreign_id } => Some(foreign_id.as_str().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(retracted, ["m9"]);
    server.abort();
}
