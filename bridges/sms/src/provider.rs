//! The provider trait: what one SMS provider (Twilio, Telnyx; Vonage, Plivo or SMPP next)
//! implements — send a message, check that an account holds a number, read and verify its
//! webhooks — and the types shared by every provider.

use std::time::Duration;

use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use jabbridge_sdk::{
    Attachment, DeliveryReport, HttpRequest, HttpResponse, RegistrationError, SendError,
    async_trait, http,
};

use crate::number::E164;

/// The most of a provider API's answer that is read.
const MAX_ANSWER: usize = 256 * 1024;

/// The largest webhook body a provider sends that is read at all (Twilio's forms and
/// Telnyx's JSON are a few KiB): bigger ones are refused before any parsing.
pub const MAX_WEBHOOK: usize = 64 * 1024;

/// Which provider: a route a user's messages take.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Twilio Programmable Messaging.
    Twilio,
    /// Telnyx Messaging.
    Telnyx,
}

impl Kind {
    /// Every provider, in the order they are offered.
    pub const ALL: [Kind; 2] = [Kind::Twilio, Kind::Telnyx];

    /// The name used in config, forms and state: `twilio`, `telnyx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Twilio => "twilio",
            Kind::Telnyx => "telnyx",
        }
    }

    /// The name shown to people.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Twilio => "Twilio",
            Kind::Telnyx => "Telnyx",
        }
    }

    /// The provider named `name` (as [`Kind::as_str`] spells it).
    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// An account at a provider: the gateway's own (from config) or a user's (from their
/// registration).
#[derive(Clone)]
pub struct Credentials {
    /// Twilio: the account SID (`AC…`). Telnyx: empty.
    pub account: String,
    /// Twilio: the auth token (also the webhook signing key). Telnyx: the API key.
    pub secret: SecretString,
    /// Telnyx: the account's base64 Ed25519 public key, which checks its webhooks.
    pub public_key: Option<String>,
    /// Telnyx: the messaging profile to send with, if any.
    pub profile: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("account", &self.account)
            .field("secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The secret, for an `Authorization` header or a signature key; never logged.
    pub fn secret(&self) -> &str {
        self.secret.expose_secret()
    }
}

/// One text or MMS to send.
#[derive(Debug, Clone)]
pub struct Sms<'a> {
    /// The user's number.
    pub from: &'a E164,
    /// The contact's number (or short code).
    pub to: &'a str,
    /// The text; may be empty when `media` is not.
    pub text: &'a str,
    /// Media URLs (MMS).
    pub media: &'a [String],
    /// Stable for every attempt at this message: the provider's idempotency key, where it
    /// has one.
    pub key: &'a str,
    /// Where the provider should report delivery, if Jabbridge has a public URL.
    pub status_url: Option<String>,
}

/// What a provider's webhook says.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A message to one of our numbers.
    Message {
        /// The provider's id for it.
        id: String,
        /// The sender's number.
        from: String,
        /// Our number it was sent to.
        to: String,
        /// The text.
        text: String,
        /// Pictures and other media.
        media: Vec<Attachment>,
    },
    /// News about a message we sent.
    Status {
        /// The provider's id for it (what `send` returned).
        id: String,
        /// A final outcome, or `None` for a step on the way (`queued`, `sent`).
        report: Option<DeliveryReport>,
    },
}

/// A webhook request read but not yet verified.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Our number the request is about, whose owner's credentials may sign it.
    pub line: Option<String>,
    /// What it says; act on it only once [`Provider::verify`] has passed.
    pub events: Vec<Event>,
    /// The request, for the provider's own checks.
    pub request: HttpRequest,
}

/// One SMS provider.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Which provider this is.
    fn kind(&self) -> Kind;

    /// Refuses a message the provider would refuse (too long, too many media), saying why.
    fn check(&self, sms: &Sms<'_>) -> Result<(), String>;

    /// Sends one message with `account`; returns the provider's id for it. Transient errors
    /// (outage, 429, 5xx, timeout) are retried by the core; permanent ones reach the user.
    async fn send(&self, account: &Credentials, sms: &Sms<'_>) -> Result<String, SendError>;

    /// Checks that `account` is valid and holds `number` (self-service registration).
    async fn check_number(
        &self,
        account: &Credentials,
        number: &E164,
    ) -> Result<(), RegistrationError>;

    /// Checks that `account`'s credentials are accepted, with the provider's cheapest
    /// authenticated read (`jabbridge doctor`); the error says what to fix.
    async fn check_account(&self, account: &Credentials) -> Result<(), String>;

    /// Reads a webhook at `path` (after `/bridges/{domain}`) without trusting it: an error
    /// is the answer to give (unknown path, malformed request, missing signature).
    fn read(&self, path: &str, request: HttpRequest) -> Result<Webhook, Box<HttpResponse>>;

    /// Whether `account` signed `webhook`, which arrived at the public `url`.
    fn verify(&self, webhook: &Webhook, url: &str, account: &Credentials) -> bool;

    /// The answer to a webhook that was handled.
    fn accepted(&self) -> HttpResponse;

    /// The answer to a webhook that no account signed.
    fn forged(&self) -> HttpResponse;
}

/// An answer with `status`, a `content_type` and a `body`.
pub fn typed_response(
    status: http::StatusCode,
    content_type: &'static str,
    body: impl Into<String>,
) -> HttpResponse {
    let mut response = jabbridge_sdk::respond(status, body.into());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    response
}

/// A plain-text answer.
pub fn text_response(status: http::StatusCode, text: &str) -> HttpResponse {
    typed_response(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

/// The `Retry-After` of a response in seconds, capped at an hour.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(3600)))
}

/// The first `limit` characters of a provider's answer, for an error message.
pub fn excerpt(body: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(limit) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Classifies a failed request to a provider's API: connection trouble and timeouts are
/// transient.
pub fn unreachable(provider: Kind, error: &reqwest::Error) -> SendError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot be reached"
    } else {
        "failed"
    };
    SendError::Transient {
        reason: format!("{} {what}: {}", provider.title(), cause(error)),
        retry_after: None,
    }
}

/// What went wrong with a request, without its URL (which names the account, and reaches
/// the user): the innermost cause, e.g. "connection refused".
pub fn cause(error: &reqwest::Error) -> String {
    let mut cause = error.to_string();
    if let Some(url) = error.url() {
        cause = cause.replace(url.as_str(), "the provider's API");
    }
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        cause = inner.to_string();
        source = inner.source();
    }
    cause
}

/// A provider API's answer, read whole.
pub struct Answer {
    /// The HTTP status.
    pub status: reqwest::StatusCode,
    /// Its `Retry-After`, capped at an hour.
    pub retry_after: Option<Duration>,
    /// The body.
    pub body: Vec<u8>,
    /// The body as JSON (`Null` when it is not).
    pub json: serde_json::Value,
}

/// Reads the answer to a request to `provider`'s API; a request that got none (timeout,
/// connection refused) is a transient error.
pub async fn read_answer(
    provider: Kind,
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Answer, SendError> {
    let response = sent.map_err(|error| unreachable(provider, &error))?;
    let status = response.status();
    let retry_after = retry_after(response.headers());
    let mut response = response;
    let mut body = Vec::new();
    // Only so much of an answer is read: a provider's are a few KiB.
    while body.len() < MAX_ANSWER {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => return Err(unreachable(provider, &error)),
        }
    }
    body.truncate(MAX_ANSWER);
    let json = serde_json::from_slice(&body).unwrap_or_default();
    Ok(Answer {
        status,
        retry_after,
        body,
        json,
    })
}

impl Answer {
    /// The error a non-2xx answer to a send is: 429 and 5xx are retried; refused credentials
    /// and every other refusal reach the sender with the provider's `detail`.
    pub fn failure(&self, provider: Kind, detail: &str) -> SendError {
        let (status, name) = (self.status, provider.title());
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return SendError::Transient {
                reason: format!("{name} answered {status}: {detail}"),
                retry_after: self.retry_after,
            };
        }
        let reason = if matches!(status.as_u16(), 401 | 403) {
            format!("{name} refused the account's credentials ({status}: {detail})")
        } else {
            format!("{name} refused the message ({status}): {detail}")
        };
        SendError::Permanent { reason }
    }
}
