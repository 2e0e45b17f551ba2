//! Room fan-out load for `scripts/bench`: many XMPP users in one room, and foreign messages
//! said in it. The users are the JIDs of a component of our own (`u1@occupants.localhost` …,
//! so that hundreds of users cost one connection, not hundreds of clients); they register
//! with an echo bridge and join one of its rooms through the XMPP server like any client.
//! Then `--messages` lines are said in the room through the echo bridge's `/say` webhook
//! (`{"room": …}`) and every copy the users receive is counted. Prints one JSON line: the
//! stanzas fanned out per second, and Jabbridge's CPU per stanza (from `/proc/PID/stat`).
//!
//! The component secret is read from `ROOM_SECRET`, the bearer token from `SAY_TOKEN`. The run
//! stops by itself after `--timeout`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream};
use xmpp_parsers::{component::Handshake, minidom::Element, ns};

type Stream = XmlStream<BufStream<TcpStream>, Element>;

#[derive(Parser)]
struct Arguments {
    /// host:port of the XMPP server's component listener.
    #[arg(long)]
    server: String,
    /// The users' component domain (the server must know it, with ROOM_SECRET).
    #[arg(long)]
    domain: String,
    /// The echo bridge's domain.
    #[arg(long)]
    bridge: String,
    /// The room's name on the bridge (`#bench`).
    #[arg(long, default_value = "#bench")]
    room: String,
    /// host:port of Jabbridge's HTTP listener.
    #[arg(long)]
    http: String,
    /// Jabbridge's process id, whose CPU time is counted.
    #[arg(long)]
    pid: u32,
    /// The XMPP server's process id, whose CPU time is counted too, when given.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Users in the room.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Foreign messages said in the room.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Seconds after which the run stops, done or not.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

/// Utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name may hold spaces; fields count from after its closing parenthesis.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |index: usize| {
        fields
            .get(index)
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after the name and state.
    field(11) + field(12)
}

/// The clock ticks per second of /proc times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

async fn connect(server: &str, domain: &str, secret: &str) -> Result<Stream, String> {
    let tcp = TcpStream::connect(server)
        .await
        .map_err(|error| error.to_string())?;
    tcp.set_nodelay(true).map_err(|error| error.to_string())?;
    let idle = Duration::from_secs(3600);
    let timeouts = Timeouts {
        read_timeout: idle,
        response_timeout: idle,
    };
    let header = StreamHeader {
        to: Some(Cow::Borrowed(domain)),
        from: None,
        id: None,
    };
    let mut pending = initiate_stream(BufStream::new(tcp), ns::COMPONENT, header, timeouts)
        .await
        .map_err(|error| error.to_string())?;
    let stream_id = pending.take_header().id.ok_or("no stream id: refused")?;
    let mut stream: Stream = pending.skip_features();
    let handshake = Handshake::from_stream_id_and_password(stream_id.into_owned(), secret);
    stream
        .send(&handshake)
        .await
        .map_err(|error| error.to_string())?;
    match stream.next().await {
        Some(Ok(element)) if element.is("handshake", ns::COMPONENT) => Ok(stream),
        other => Err(format!("handshake refused: {other:?}")),
    }
}

async fn send_all(stream: &mut Stream, stanzas: &[String]) -> Result<(), String> {
    for xml in stanzas {
        let element: Element = xml.parse().map_err(|error| format!("{xml}: {error}"))?;
        stream
            .feed(&element)
            .await
            .map_err(|error| error.to_string())?;
    }
    SinkExt::<&Element>::flush(stream)
        .await
        .map_err(|error| error.to_string())
}

/// Reads stanzas until `done` has seen enough, or `deadline`.
async fn read_until(
    stream: &mut Stream,
    deadline: Instant,
    mut done: impl FnMut(&Element) -> bool,
) -> Result<(), String> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.next()).await {
            Err(_) => return Err("timed out".into()),
            Ok(Some(Ok(element))) => {
                if done(&element) {
                    return Ok(());
                }
            }
            Ok(Some(Err(ReadError::SoftTimeout | ReadError::ParseError(_)))) => {}
            Ok(_) => return Err("the server closed the stream".into()),
        }
    }
}

/// POSTs each line to `/say` on one kept-alive connection; returns how many got 202.
async fn say_all(arguments: &Arguments, token: &str, run: &str) -> Result<usize, String> {
    let mut http = TcpStream::connect(&arguments.http)
        .await
        .map_err(|error| error.to_string())?;
    http.set_nodelay(true).map_err(|error| error.to_string())?;
    let mut accepted = 0;
    let mut buffer = vec![0u8; 4096];
    for number in 0..arguments.messages {
        let body = format!(
            r#"{{"room":"{}","user":"bench","contact":"speaker","text":"line {number}","id":"{run}-{number}"}}"#,
            arguments.room
        );
        let request = format!(
            "POST /bridges/{}/say HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            arguments.bridge,
            body.len()
        );
        http.write_all(request.as_bytes())
            .await
            .map_err(|error| error.to_string())?;
        // Read the answer: headers, then as many bytes as Content-Length says.
        let mut answer = Vec::new();
        loop {
            let read = http
                .read(&mut buffer)
                .await
                .map_err(|error| error.to_string())?;
            if read == 0 {
                return Err("the HTTP connection closed".into());
            }
            answer.extend_from_slice(&buffer[..read]);
            let text = String::from_utf8_lossy(&answer);
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())
                            .flatten()
                    })
                    .unwrap_or(0);
                if answer.len() >= end + 4 + length {
                    if text.starts_with("HTTP/1.1 202") {
                        accepted += 1;
                    }
                    break;
                }
            }
        }
    }
    Ok(accepted)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let arguments = Arguments::parse();
    let secret = std::env::var("ROOM_SECRET").map_err(|_| "set ROOM_SECRET")?;
    let token = std::env::var("SAY_TOKEN").map_err(|_| "set SAY_TOKEN")?;
    let deadline = Instant::now() + Duration::from_secs_f64(arguments.timeout);
    let mut stream = connect(&arguments.server, &arguments.domain, &secret).await?;
    let user = |number: usize| format!("u{number}@{}", arguments.domain);
    let room = format!("{}@{}", arguments.room, arguments.bridge);

    // Register every user with the bridge.
    let registrations: Vec<String> = (0..arguments.users)
        .map(|number| {
            format!(
                "<iq xmlns='jabber:component:accept' type='set' id='reg-{number}' from='{}/r' to='{}'>\
                 <query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>\
                 <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
                 <field var='prefix'><value/></field></x></query></iq>",
                user(number),
                arguments.bridge
            )
        })
        .collect();
    send_all(&mut stream, &registrations).await?;
    let mut registered = 0;
    read_until(&mut stream, deadline, |stanza| {
        if stanza.name() == "iq" && stanza.attr("id").is_some_and(|id| id.starts_with("reg-")) {
            registered += 1;
        }
        registered == arguments.users
    })
    .await
    .map_err(|error| format!("registering: {error} ({registered} registered)"))?;

    // Join them all; a join is complete when its user gets the subject.
    let joins: Vec<String> = (0..arguments.users)
        .map(|number| {
            format!(
                "<presence xmlns='jabber:component:accept' from='{}/r' to='{room}/u{number}'>\
                 <x xmlns='http://jabber.org/protocol/muc'><history maxstanzas='0'/></x></presence>",
                user(number)
            )
        })
        .collect();
    let joining = Instant::now();
    send_all(&mut stream, &joins).await?;
    let mut joined = 0;
    read_until(&mut stream, deadline, |stanza| {
        if stanza.name() == "message" && stanza.children().any(|child| child.name() == "subject") {
            joined += 1;
        }
        joined == arguments.users
    })
    .await
    .map_err(|error| format!("joining: {error} ({joined} joined)"))?;
    let join_seconds = joining.elapsed().as_secs_f64();
    // Let the last arrivals' presences drain before measuring.
    let _ = read_until(&mut stream, Instant::now() + Duration::from_secs(1), |_| {
        false
    })
    .await;

    // Say the lines and count every copy.
    let expected = arguments.users * arguments.messages;
    let cpu_before = cpu_ticks(arguments.pid);
    let server_before = arguments.server_pid.map(cpu_ticks);
    let start = Instant::now();
    let run = format!("{}", std::process::id());
    let saying = say_all(&arguments, &token, &run);
    let mut received = 0;
    let counting = read_until(&mut stream, deadline, |stanza| {
        if stanza.name() == "message"
            && stanza.attr("type") == Some("groupchat")
            && stanza.children().any(|child| child.name() == "body")
        {
            received += 1;
        }
        received == expected
    });
    let (said, counted) = tokio::join!(saying, counting);
    let seconds = start.elapsed().as_secs_f64();
    let cpu = cpu_ticks(arguments.pid).saturating_sub(cpu_before);
    let server_cpu = arguments
        .server_pid
        .zip(server_before)
        .map(|(pid, before)| cpu_ticks(pid).saturating_sub(before));
    let accepted = said?;
    if let Err(error) = counted {
        eprintln!("room_load: {error}: {received} of {expected} copies");
    }
    let per_stanza = |ticks: u64| ticks as f64 / TICKS * 1e6 / received.max(1) as f64;
    println!(
        "{}",
        serde_json::json!({
            "users": arguments.users,
            "messages": arguments.messages,
            "accepted": accepted,
            "expected": expected,
            "received": received,
            "seconds": seconds,
            "stanzas_per_s": received as f64 / seconds,
            "cpu_us_per_stanza": per_stanza(cpu),
            "server_cpu_us_per_stanza": server_cpu.map(per_stanza),
            "join_seconds": join_seconds,
        })
    );
    Ok(())
}
