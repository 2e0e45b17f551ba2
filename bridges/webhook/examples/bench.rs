//! Measures the webhook bridge's own cost per message, without XMPP and without the core's
//! database (the SDK's test kit stands in for the core):
//! - outgoing: `send_message` → signed POST → a local receiver answering 204, one at a time
//!   and 4 at once;
//! - incoming: `handle_http` with a bearer token, and with a Standard Webhooks signature.
//!
//! `cargo run --release -p jabbridge-bridge-webhook --example bench [N]`. Prints figures;
//! asserts nothing. CPU time is the whole process's, the in-process receiver included.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::http::{Method, StatusCode};
use jabbridge_sdk::serde_json::json;
use jabbridge_sdk::testkit::TestCore;
use jabbridge_sdk::{Bridge, ForeignId, HttpRequest, MessageId, OutgoingMessage, UserJid};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// User + system CPU time of this process so far.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|index| fields.get(*index)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

fn report(what: &str, count: usize, wall: Duration, cpu: Duration) {
    println!(
        "{what}: {:.0} msg/s, {:.0} µs CPU per message ({count} messages, {:.2} s)",
        count as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64() * 1e6 / count as f64,
        wall.as_secs_f64()
    );
}

fn message(number: usize) -> OutgoingMessage {
    OutgoingMessage {
        id: MessageId::new(format!("bench-{number}")),
        user: UserJid::new("alice@example.org"),
        contact: ForeignId::new("sink"),
        text: format!("benchmark message number {number}"),
        attachments: Vec::new(),
        accepted_at: SystemTime::now(),
        registration: None,
        replaces: None,
        room: None,
    }
}

async fn outgoing(bridge: &Arc<dyn Bridge>, count: usize, parallel: usize) {
    let started = (Instant::now(), cpu());
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..parallel {
        let bridge = bridge.clone();
        tasks.spawn(async move {
            for number in (lane..count).step_by(parallel) {
                if let Err(error) = bridge.send_message(message(number)).await {
                    panic!("message {number}: {error}");
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    report(
        &format!("outgoing, {parallel} in flight"),
        count,
        started.0.elapsed(),
        cpu() - started.1,
    );
}

async fn incoming(bridge: &Arc<dyn Bridge>, kit: &TestCore, count: usize, signed: bool) {
    let signer = standardwebhooks::Webhook::new(SECRET).expect("key");
    let started = (Instant::now(), cpu());
    for number in 0..count {
        let body = format!(r#"{{"text": "incoming number {number}"}}"#);
        let mut request = HttpRequest::new(body.clone().into());
        *request.method_mut() = Method::POST;
        let headers = request.headers_mut();
        if signed {
            *request.uri_mut() = "/endpoints/signed".parse().expect("path");
            let id = format!("evt_{number}");
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_secs() as i64)
                .unwrap_or_default();
            let signature = signer.sign(&id, now, body.as_bytes()).expect("sign");
            let headers = request.headers_mut();
            headers.insert("webhook-id", id.parse().expect("header"));
            headers.insert(
                "webhook-timestamp",
                now.to_string().parse().expect("header"),
            );
            headers.insert("webhook-signature", signature.parse().expect("header"));
        } else {
            headers.insert("authorization", "Bearer token".parse().expect("header"));
            *request.uri_mut() = "/endpoints/sink".parse().expect("path");
        }
        let status = bridge.handle_http(request).await.status();
        assert_eq!(status, StatusCode::ACCEPTED);
        kit.next_delivered(Duration::from_secs(1))
            .await
            .expect("delivered");
    }
    report(
        if signed {
            "incoming, Standard Webhooks signature"
        } else {
            "incoming, bearer token"
        },
        count,
        started.0.elapsed(),
        cpu() - started.1,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|count| count.parse().ok())
        .unwrap_or(5000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("address").port();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { StatusCode::NO_CONTENT }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let kit = TestCore::new("hooks.bench");
    let bridge = kit
        .build(
            jabbridge_bridge_webhook::build,
            json!({"endpoint": [
                {"name": "sink", "url": format!("http://127.0.0.1:{port}/hook"),
                 "signing_secret": SECRET, "inbound_token": "token",
                 "deliver_to": ["alice@example.org"]},
                {"name": "signed", "inbound_signing_secret": SECRET,
                 "deliver_to": ["alice@example.org"]},
            ]}),
        )
        .expect("build");
    // Warm up the connection pool.
    outgoing(&bridge, 100, 1).await;
    println!("--- {count} messages each");
    outgoing(&bridge, count, 1).await;
    outgoing(&bridge, count, 4).await;
    incoming(&bridge, &kit, count, false).await;
    incoming(&bridge, &kit, count, true).await;
}
