//! Incoming webhooks: `POST /bridges/{domain}/endpoints/NAME` authenticated, read, checked,
//! and handed to the core for each recipient. Every answer is JSON; errors are
//! `{"error": "…"}`.
//!
//! Accepted bodies:
//! - JSON `{"text": "…", "to": "bob@example.org" | [..], "id": "…"}`: `to` (optional)
//!   picks among the endpoint's `deliver_to`; `id` (optional) makes a retried request one
//!   message.
//! - The Slack/Mattermost incoming-webhook shape: the same JSON (other keys ignored; when
//!   `text` is empty, the `attachments`' `fallback`/`text`), or a form with `payload=JSON`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jabbridge_sdk::http::{HeaderMap, Method, StatusCode, header};
use jabbridge_sdk::serde_json::{self, json};
use jabbridge_sdk::{
    CoreError, ForeignId, HttpRequest, HttpResponse, IncomingMessage, MessageId, UserJid, auth,
    respond,
};

use crate::{Endpoint, Webhooks};

/// The longest text carried (the core's limit for any message).
const MAX_TEXT: usize = 64 * 1024;
/// The longest `id` a sender may give.
const MAX_ID: usize = 200;

/// A JSON answer.
fn answer(status: StatusCode, body: serde_json::Value) -> HttpResponse {
    let mut response = respond(status, body.to_string());
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        jabbridge_sdk::http::HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, text: impl Into<String>) -> HttpResponse {
    answer(status, json!({ "error": text.into() }))
}

/// What a sender posts (our shape and Slack's; unknown keys are ignored).
#[derive(Debug, serde::Deserialize)]
struct Inbound {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    to: Option<OneOrMany>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    attachments: Vec<SlackAttachment>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The parts of a Slack attachment that carry text.
#[derive(Debug, serde::Deserialize)]
struct SlackAttachment {
    #[serde(default)]
    fallback: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

impl Inbound {
    /// The text to deliver: `text`, else the attachments' fallbacks (Slack's shape).
    fn text(&self) -> String {
        match self.text.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() => text.to_owned(),
            _ => self
                .attachments
                .iter()
                .filter_map(|attachment| {
                    attachment
                        .fallback
                        .as_deref()
                        .or(attachment.text.as_deref())
                })
                .map(str::trim)
                .filter(|text| !text.is_empty())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    fn recipients(&self) -> Option<Vec<String>> {
        match &self.to {
            None => None,
            Some(OneOrMany::One(jid)) => Some(vec![jid.clone()]),
            Some(OneOrMany::Many(jids)) => Some(jids.clone()),
        }
    }
}

/// Fresh ids for requests that carry none: unique across runs (start time + counter).
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

fn fresh_id() -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default();
    format!("{started}-{}", SEQUENCE.fetch_add(1, Ordering::Relaxed))
}

/// Answers one request under the bridge's routes.
pub async fn handle(bridge: &Webhooks, request: HttpRequest) -> HttpResponse {
    let Some(name) = request.uri().path().strip_prefix("/endpoints/") else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let Some(endpoint) = bridge
        .endpoints
        .get(name)
        .filter(|endpoint| endpoint.receives())
    else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no endpoint '{name}' takes incoming messages"),
        );
    };
    if request.method() != Method::POST {
        let mut response = error(StatusCode::METHOD_NOT_ALLOWED, "use POST");
        response.headers_mut().insert(
            header::ALLOW,
            jabbridge_sdk::http::HeaderValue::from_static("POST"),
        );
        return response;
    }
    // Who is asking, before anything they sent is read.
    let signed = match authenticate(endpoint, request.headers(), request.body()) {
        Ok(signed) => signed,
        Err(reason) => return error(StatusCode::UNAUTHORIZED, reason),
    };
    if request.body().len() > bridge.max_body {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the body is {} bytes; at most {} are accepted",
                request.body().len(),
                bridge.max_body
            ),
        );
    }
    let inbound = match read_body(request.headers(), request.body()) {
        Ok(inbound) => inbound,
        Err(reason) => return error(StatusCode::BAD_REQUEST, reason),
    };
    let text = inbound.text();
    if text.is_empty() {
        return error(StatusCode::BAD_REQUEST, "'text' is missing or empty");
    }
    if text.len() > MAX_TEXT {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "'text' is {} bytes; at most {MAX_TEXT} are carried",
                text.len()
            ),
        );
    }
    let recipients = match recipients(endpoint, inbound.recipients()) {
        Ok(recipients) => recipients,
        Err((status, reason)) => return error(status, reason),
    };
    // A signed request's id is its webhook-id; else the sender's `id`; else a fresh one.
    let id = match (&signed, inbound.id) {
        (Some(signed), _) => signed.id.clone(),
        (None, Some(id)) if !id.is_empty() && id.len() <= MAX_ID => id,
        (None, Some(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("'id' must be 1 to {MAX_ID} bytes"),
            );
        }
        (None, None) => fresh_id(),
    };
    let timestamp = signed.map(|signed| signed.at);
    for recipient in &recipients {
        let delivered = bridge
            .core
            .deliver(IncomingMessage {
                foreign_id: MessageId::new(format!("{name}/{id}")),
                contact: ForeignId::new(name),
                user: UserJid::new(recipient.as_str()),
                text: text.clone(),
                attachments: Vec::new(),
                timestamp,
                room: None,
            })
            .await;
        match delivered {
            Ok(()) => {}
            Err(CoreError::Refused(reason)) => {
                tracing::warn!(endpoint = name, recipient, %reason, "an incoming webhook was not stored");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the message for {recipient} was not stored: {reason}"),
                );
            }
            Err(CoreError::Unavailable(reason)) => {
                tracing::warn!(endpoint = name, recipient, %reason, "an incoming webhook could not be stored now");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the message for {recipient} could not be stored now: {reason}"),
                );
            }
            Err(CoreError::ShuttingDown) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the gateway is shutting down; try again",
                );
            }
        }
    }
    answer(
        StatusCode::ACCEPTED,
        json!({"accepted": true, "id": id, "recipients": recipients}),
    )
}

/// A request that carried a good Standard Webhooks signature.
struct Signed {
    id: String,
    at: SystemTime,
}

/// Checks the bearer token or the Standard Webhooks signature (either is enough when both
/// are configured). `Ok(Some)` for a signed request, `Ok(None)` for a good token.
fn authenticate(
    endpoint: &Endpoint,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<Signed>, String> {
    let signature_sent = headers.contains_key(standardwebhooks::HEADER_WEBHOOK_SIGNATURE);
    if let (Some(signer), true) = (&endpoint.inbound_signer, signature_sent) {
        signer
            .verify(body, headers)
            .map_err(|error| format!("bad Standard Webhooks signature: {error}"))?;
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        // verify() checked both headers are present and the timestamp parses.
        let id = header(standardwebhooks::HEADER_WEBHOOK_ID).unwrap_or_default();
        let at = header(standardwebhooks::HEADER_WEBHOOK_TIMESTAMP)
            .and_then(|stamp| stamp.parse::<u64>().ok())
            .map(|seconds| UNIX_EPOCH + Duration::from_secs(seconds))
            .unwrap_or_else(SystemTime::now);
        if id.is_empty() || id.len() > MAX_ID {
            return Err(format!("'webhook-id' must be 1 to {MAX_ID} bytes"));
        }
        return Ok(Some(Signed { id, at }));
    }
    match (&endpoint.inbound_token, auth::bearer_token(headers)) {
        (Some(token), Some(presented)) if auth::secret_matches(presented, token) => Ok(None),
        (Some(_), Some(_)) => Err("wrong bearer token".into()),
        (Some(_), None) if endpoint.inbound_signer.is_some() => Err(
            "missing credentials: send 'Authorization: Bearer …' or Standard Webhooks signature headers"
                .into(),
        ),
        (Some(_), None) => Err("missing credentials: send 'Authorization: Bearer …'".into()),
        (None, _) => Err("missing credentials: send Standard Webhooks signature headers".into()),
    }
}

/// Reads the body: a form with `payload=` (Slack), else JSON.
fn read_body(headers: &HeaderMap, body: &[u8]) -> Result<Inbound, String> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    if is_form {
        let payload = form_urlencoded::parse(body)
            .find(|(key, _)| key == "payload")
            .map(|(_, value)| value.into_owned())
            .ok_or("a form body needs a 'payload' field holding the JSON message")?;
        return serde_json::from_str(&payload)
            .map_err(|error| format!("'payload' is not a JSON message: {error}"));
    }
    serde_json::from_slice(body).map_err(|error| format!("the body is not a JSON message: {error}"))
}

/// The recipients of a request: those it named (each must be in `deliver_to`), else all.
fn recipients(
    endpoint: &Endpoint,
    requested: Option<Vec<String>>,
) -> Result<Vec<String>, (StatusCode, String)> {
    let Some(requested) = requested else {
        return Ok(endpoint.deliver_to.clone());
    };
    if requested.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "'to' is an empty list".into()));
    }
    let mut chosen = Vec::new();
    for jid in requested {
        let Some(known) = endpoint
            .deliver_to
            .iter()
            .find(|known| known.eq_ignore_ascii_case(jid.trim()))
        else {
            return Err((
                StatusCode::FORBIDDEN,
                format!("'{jid}' is not among this endpoint's recipients (deliver_to)"),
            ));
        };
        if !chosen.contains(known) {
            chosen.push(known.clone());
        }
    }
    Ok(chosen)
}
