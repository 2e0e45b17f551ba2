//! Outgoing webhooks: the JSON payload of one message, its Standard Webhooks headers, and
//! what the receiver's answer means for delivery ([`Verdict`]).
//!
//! The payload (`Content-Type: application/json`), in the Standard Webhooks shape:
//!
//! ```json
//! {"type": "message", "timestamp": "2026-11-21T10:00:00.123Z",
//!  "data": {"id": "msg_…", "message_id": "…", "endpoint": "alerts",
//!           "from": "alice@example.org", "text": "…",
//!           "attachments": [{"url": "https://…", "description": "…"}]}}
//! ```
//!
//! `data.id` is also the `webhook-id` header: the same on every retry of one message, so
//! that a receiver can drop repeats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::http::{HeaderValue, StatusCode, header};
use jabbridge_sdk::serde_json::{self, json};
use jabbridge_sdk::{Attachment, OutgoingMessage};
use sha2::{Digest, Sha256};

use crate::Endpoint;

/// The longest `Retry-After` honoured; a receiver asking for more is retried after this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(3600);
/// How much of an error response's body the sender sees.
const EXCERPT: usize = 200;

/// What the receiver's answer means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// Timeout, connection error, 408, 429 or 5xx: try again, no sooner than the duration
    /// when the receiver said (`Retry-After`).
    Retry(String, Option<Duration>),
    /// Any other answer: retrying would not help; the sender is told why.
    Refused(String),
    /// 410 Gone: the receiver wants no more messages.
    Gone,
}

/// One message as a signed webhook request.
pub struct Request {
    id: String,
    body: Vec<u8>,
}

/// The `webhook-id` of a message: derived from the sender and the message's XMPP id (which
/// the core keeps across retries and de-duplicates per sender), so it is stable, unique per
/// message, and a safe header value whatever the client put in its id.
pub fn webhook_id(user: &str, message_id: &str) -> String {
    let digest = Sha256::digest(format!("{user}\n{message_id}").as_bytes());
    let hex: String = digest
        .iter()
        .take(16)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("msg_{hex}")
}

impl Request {
    /// The request for `message` to endpoint `name`.
    pub fn new(name: &str, message: &OutgoingMessage) -> Self {
        let id = webhook_id(message.user.as_str(), message.id.as_str());
        let attachments: Vec<&Attachment> = message.attachments.iter().collect();
        let payload = json!({
            "type": "message",
            "timestamp": humantime::format_rfc3339_millis(message.accepted_at).to_string(),
            "data": {
                "id": id,
                "message_id": message.id.as_str(),
                "endpoint": name,
                "from": message.user.as_str(),
                "text": message.text,
                "attachments": attachments,
            },
        });
        // A `Value` always serialises.
        let body = serde_json::to_vec(&payload).unwrap_or_default();
        Self { id, body }
    }

    /// The `webhook-id` header, also the message's id for the core.
    pub fn webhook_id(&self) -> &str {
        &self.id
    }

    /// POSTs the request once and judges the answer.
    pub async fn send(
        &self,
        client: &reqwest::Client,
        url: &reqwest::Url,
        endpoint: &Endpoint,
    ) -> Verdict {
        let now = SystemTime::now();
        let timestamp = now
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs())
            .unwrap_or_default();
        let mut request = client
            .post(url.clone())
            .timeout(endpoint.timeout)
            .header(header::CONTENT_TYPE, "application/json")
            .header(standardwebhooks::HEADER_WEBHOOK_ID, &self.id)
            .header(
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                timestamp.to_string(),
            );
        if let Some(signer) = &endpoint.signer {
            let signed = i64::try_from(timestamp)
                .ok()
                .and_then(|timestamp| signer.sign(&self.id, timestamp, &self.body).ok());
            match signed {
                Some(signature) => {
                    request = request.header(standardwebhooks::HEADER_WEBHOOK_SIGNATURE, signature)
                }
                None => return Verdict::Refused("the message could not be signed".into()),
            }
        }
        let response = match request.body(self.body.clone()).send().await {
            Ok(response) => response,
            Err(error) => return failed(&endpoint.name, &error),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| retry_after(value, now));
        // Only the start of an error body matters; a 2xx body is not read at all.
        let excerpt = if status.is_success() {
            String::new()
        } else {
            // The start of it, however much the receiver sends.
            let mut response = response;
            let mut start = Vec::new();
            while start.len() < EXCERPT * 4 {
                match response.chunk().await {
                    Ok(Some(chunk)) => start.extend_from_slice(&chunk),
                    Ok(None) | Err(_) => break,
                }
            }
            excerpt(&start)
        };
        verdict(&endpoint.name, status, retry_after, &excerpt)
    }
}

/// A request that got no answer.
fn failed(name: &str, error: &reqwest::Error) -> Verdict {
    if error.is_builder() {
        return Verdict::Refused(format!(
            "the request to endpoint '{name}' cannot be made: {error}"
        ));
    }
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    // reqwest's Display hides the cause (connection refused, DNS…): walk the chain.
    let mut cause = String::new();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    Verdict::Retry(format!("endpoint '{name}' {what}: {cause}"), None)
}

/// What an HTTP answer means; see [`Verdict`].
pub fn verdict(
    name: &str,
    status: StatusCode,
    retry_after: Option<Duration>,
    excerpt: &str,
) -> Verdict {
    let said = if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    };
    let answered = format!("endpoint '{name}' answered {status}{said}");
    match status.as_u16() {
        200..=299 => Verdict::Delivered,
        410 => Verdict::Gone,
        408 | 429 | 500..=599 => Verdict::Retry(answered, retry_after),
        300..=399 => Verdict::Refused(format!(
            "{answered} (a redirect: the endpoint's url needs updating)"
        )),
        _ => Verdict::Refused(answered),
    }
}

/// `Retry-After` as a delay: seconds, or an HTTP date (RFC 9110 §10.2.3); capped.
pub fn retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let value = value.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or_default(),
    };
    Some(delay.min(RETRY_AFTER_CAP))
}

/// The start of a body as one line of text.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let line: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(EXCERPT)
        .collect();
    line
}
