//! HTTP load for `scripts/bench`: POSTs the echo bridge's `say` webhook over kept-alive
//! HTTP/1.1 connections (a minimal client on plain sockets, so that it costs the machine
//! little next to the gateway) and prints one JSON line of figures.
//!
//! - Without `--rate`: `--concurrency` connections send back to back until `--count`
//!   requests are done; the rate is accepted (202) requests per second.
//! - With `--rate R`: request `i` is due at `start + i/R` (open loop); its latency counts
//!   from when it was due, so a slow server is not hidden by requests starting late.
//!
//! The bearer token is read from `SAY_TOKEN`. Every run stops by itself after `--timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

#[derive(Parser)]
struct Arguments {
    /// host:port of Jabbridge's HTTP listener.
    #[arg(long)]
    addr: String,
    /// The bridge's domain (the path is /bridges/{domain}/say).
    #[arg(long)]
    domain: String,
    /// Users the messages go to, comma-separated, taken in turn.
    #[arg(long)]
    users: String,
    /// Contacts each user hears from, in turn (each pair is a conversation of its own).
    #[arg(long, default_value_t = 1)]
    contacts: u64,
    /// Requests to send.
    #[arg(long)]
    count: u64,
    /// Connections.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Requests per second (open loop); absent: as fast as the server answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Prefix of the messages' ids, unique per run.
    #[arg(long, default_value = "bench")]
    id_prefix: String,
    /// Seconds after which the run stops, done or not.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

#[derive(Default)]
struct Tally {
    accepted: u64,
    refused: u64,
    failed: u64,
    latencies: Vec<f64>,
    first_refusal: Option<String>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arguments = Arc::new(Arguments::parse());
    let token = std::env::var("SAY_TOKEN").map_err(|_| "SAY_TOKEN is not set")?;
    let users: Arc<Vec<String>> = Arc::new(
        arguments
            .users
            .split(',')
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(arguments.timeout);
    let cpu_before = cpu_seconds();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..arguments.concurrency.min(arguments.count).max(1) {
        let (arguments, users, next, token) = (
            arguments.clone(),
            users.clone(),
            next.clone(),
            token.clone(),
        );
        workers.spawn(async move {
            let mut tally = Tally::default();
            let mut connection: Option<Connection> = None;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= arguments.count || Instant::now() >= deadline {
                    break;
                }
                let due = match arguments.rate {
                    Some(rate) => {
                        let due = start + Duration::from_secs_f64(index as f64 / rate);
                        if due >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(due).await;
                        due
                    }
                    None => Instant::now(),
                };
                let user = &users[index as usize % users.len()];
                let contact = (index / users.len() as u64) % arguments.contacts.max(1);
                let body = serde_json::json!({
                    "id": format!("{}-{index}", arguments.id_prefix),
                    "user": user,
                    "contact": format!("c{contact}"),
                    "text": format!("say {index}"),
                })
                .to_string();
                let request = format!(
                    "POST /bridges/{}/say HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    arguments.domain,
                    arguments.addr,
                    body.len()
                );
                let remaining = deadline.saturating_duration_since(Instant::now());
                let outcome = tokio::time::timeout(
                    remaining.min(Duration::from_secs(10)),
                    post(&mut connection, &arguments.addr, request.as_bytes()),
                )
                .await;
                match outcome {
                    Ok(Ok((202, _))) => {
                        tally.accepted += 1;
                        tally.latencies.push(due.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(Ok((status, body))) => {
                        tally.refused += 1;
                        tally
                            .first_refusal
                            .get_or_insert_with(|| format!("{status} {}", body.trim()));
                    }
                    Ok(Err(_)) | Err(_) => {
                        tally.failed += 1;
                        connection = None;
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(tally) = workers.join_next().await {
        let tally = tally?;
        total.accepted += tally.accepted;
        total.refused += tally.refused;
        total.failed += tally.failed;
        total.latencies.extend(tally.latencies);
        total.first_refusal = total.first_refusal.or(tally.first_refusal);
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| {
        (!total.latencies.is_empty()).then(|| {
            let rank = ((p * total.latencies.len() as f64).ceil() as usize).max(1);
            total.latencies[rank - 1]
        })
    };
    let attempted = total.accepted + total.refused + total.failed;
    let figures = serde_json::json!({
        "requested": arguments.count,
        "attempted": attempted,
        "accepted": total.accepted,
        "refused": total.refused,
        "failed": total.failed,
        "first_refusal": total.first_refusal,
        "elapsed_s": elapsed,
        "accepted_per_s": total.accepted as f64 / elapsed,
        "p50_ms": percentile(0.50),
        "p99_ms": percentile(0.99),
        "max_ms": total.latencies.last(),
        "load_cpu_us_per_request": (cpu_seconds() - cpu_before) * 1e6 / attempted.max(1) as f64,
    });
    println!("{figures}");
    Ok(())
}

/// A kept-alive HTTP/1.1 connection and the bytes read past the last response.
struct Connection {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// Sends one request and reads its response: status and body.
async fn post(
    connection: &mut Option<Connection>,
    addr: &str,
    request: &[u8],
) -> std::io::Result<(u16, String)> {
    let open = match connection.take() {
        Some(open) => open,
        None => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            Connection {
                stream,
                buffer: Vec::with_capacity(4096),
            }
        }
    };
    let open = connection.insert(open);
    open.stream.write_all(request).await?;
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let header_end = loop {
        if let Some(end) = open
            .buffer
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
        {
            break end + 4;
        }
        if open.stream.read_buf(&mut open.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = std::str::from_utf8(&open.buffer[..header_end]).map_err(|_| invalid("head"))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .ok_or_else(|| invalid("status line"))?;
    let mut length = 0;
    let mut close = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| invalid("content-length"))?;
        } else if name.eq_ignore_ascii_case("connection") && value.trim() == "close" {
            close = true;
        }
    }
    while open.buffer.len() < header_end + length {
        if open.stream.read_buf(&mut open.buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let body = String::from_utf8_lossy(&open.buffer[header_end..header_end + length]).into_owned();
    open.buffer.drain(..header_end + length);
    if close {
        *connection = None;
    }
    Ok((status, body))
}

/// User + system CPU time of this process so far, from /proc (0 where there is none).
fn cpu_seconds() -> f64 {
    let ticks_per_second = 100.0; // USER_HZ, 100 on every Linux we run on
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: f64 = fields.get(11)?.parse().ok()?;
            let system: f64 = fields.get(12)?.parse().ok()?;
            Some((user + system) / ticks_per_second)
        })
        .unwrap_or(0.0)
}
