//! Telnyx Messaging: sending (`POST /v2/messages`, JSON, bearer API key), checking a number
//! (`GET /v2/phone_numbers`), and its webhooks (`/telnyx/webhook`) signed with Ed25519 over
//! `timestamp|body` (`telnyx-signature-ed25519`, `telnyx-timestamp`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use jabbridge_sdk::{
    Attachment, DeliveryReport, HttpRequest, HttpResponse, RegistrationError, SendError,
    async_trait, http,
};
use sha2::{Digest, Sha256};

use crate::number::E164;
use crate::provider::{
    Credentials, Event, Kind, Provider, Sms, Webhook, excerpt, read_answer, text_response,
    typed_response,
};

/// Telnyx splits a text into at most this many parts.
pub const MAX_PARTS: usize = 10;
/// Media URLs per MMS.
pub const MAX_MEDIA: usize = 10;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "telnyx-signature-ed25519";
/// The timestamp header (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "telnyx-timestamp";
/// How far a webhook's timestamp may be from now.
pub const TOLERANCE: Duration = Duration::from_secs(300);

/// The Telnyx provider, talking to `api_base`.
pub struct Telnyx {
    api_base: String,
    client: reqwest::Client,
}

impl Telnyx {
    /// Reads the account's numbers (`/v2/phone_numbers`, with `query`): the cheapest
    /// authenticated call, for checking credentials and a number. A refused key is
    /// `Rejected`, anything else not answered 2xx `Unavailable`.
    async fn numbers(
        &self,
        account: &Credentials,
        query: &str,
    ) -> Result<crate::provider::Answer, RegistrationError> {
        let response = self
            .client
            .get(format!("{}/v2/phone_numbers?{query}", self.api_base))
            .bearer_auth(account.secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let answer = read_answer(Kind::Telnyx, response)
            .await
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))?;
        let status = answer.status;
        if matches!(status.as_u16(), 401 | 403) {
            return Err(RegistrationError::Rejected(
                "Telnyx refused the API key".into(),
            ));
        }
        if !status.is_success() {
            return Err(RegistrationError::Unavailable(format!(
                "Telnyx answered {status}; try again later"
            )));
        }
        Ok(answer)
    }

    /// A provider for the API at `api_base` (`https://api.telnyx.com`).
    pub fn new(api_base: &str, client: reqwest::Client) -> Self {
        Self {
            api_base: api_base.trim_end_matches('/').to_owned(),
            client,
        }
    }
}

/// Whether a character is in the GSM-7 set Telnyx sends as GSM, and how many septets it takes.
fn gsm_septets(c: char) -> Option<usize> {
    match c {
        '~' | '^' | '|' | '{' | '}' | '[' | ']' | '\\' => Some(2),
        '`' => None,
        '\n' | '\r' | ' '..='~' => Some(1),
        _ => None,
    }
}

/// How many parts Telnyx splits `text` into (GSM-7: 160, then 153 per part; otherwise
/// UCS-2: 70, then 67 UTF-16 units per part).
pub fn parts(text: &str) -> usize {
    let gsm: Option<usize> = text.chars().map(gsm_septets).sum();
    let (units, single, multi) = match gsm {
        Some(septets) => (septets, 160, 153),
        None => (text.encode_utf16().count(), 70, 67),
    };
    if units <= single {
        1
    } else {
        units.div_ceil(multi)
    }
}

/// Whether `signature` (base64) is `public_key`'s (base64) Ed25519 signature of
/// `timestamp|body`.
pub fn signature_matches(public_key: &str, timestamp: &str, body: &[u8], signature: &str) -> bool {
    let Ok(key) = BASE64.decode(public_key.trim()) else {
        return false;
    };
    let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) else {
        return false;
    };
    let Ok(key) = VerifyingKey::from_bytes(&key) else {
        return false;
    };
    let Ok(signature) = BASE64.decode(signature.trim()) else {
        return false;
    };
    let Ok(signature) = Signature::from_slice(&signature) else {
        return false;
    };
    let mut signed = Vec::with_capacity(timestamp.len() + 1 + body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.push(b'|');
    signed.extend_from_slice(body);
    key.verify(&signed, &signature).is_ok()
}

/// Whether a base64 text is an Ed25519 public key (for config and registration checks).
pub fn is_public_key(text: &str) -> bool {
    BASE64
        .decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .is_some_and(|bytes| VerifyingKey::from_bytes(&bytes).is_ok())
}

fn timestamp_fresh(timestamp: &str, now: SystemTime) -> bool {
    let Ok(seconds) = timestamp.trim().parse::<u64>() else {
        return false;
    };
    let Ok(now) = now.duration_since(UNIX_EPOCH) else {
        return false;
    };
    now.as_secs().abs_diff(seconds) <= TOLERANCE.as_secs()
}

fn header<'a>(request: &'a HttpRequest, name: &str) -> Option<&'a str> {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

fn str_at<'a>(value: &'a serde_json::Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(|value| value.as_str())
        .unwrap_or_default()
}

/// The user-facing reason of a failed message, from the `errors` of its payload.
fn failure(status: &str, payload: &serde_json::Value) -> String {
    let errors: Vec<String> = payload
        .get("errors")
        .and_then(|errors| errors.as_array())
        .map(|errors| {
            errors
                .iter()
                .map(|error| {
                    let code = match error.get("code") {
                        Some(serde_json::Value::String(code)) => code.clone(),
                        Some(code) => code.to_string(),
                        None => String::new(),
                    };
                    let title = str_at(error, "/title");
                    let detail = str_at(error, "/detail");
                    format!(
                        "{code} {title}{}",
                        if detail.is_empty() {
                            String::new()
                        } else {
                            format!(": {detail}")
                        }
                    )
                    .trim()
                    .to_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    if errors.is_empty() {
        format!("Telnyx reported the message {status}")
    } else {
        format!("Telnyx error {} (status {status})", errors.join("; "))
    }
}

#[async_trait]
impl Provider for Telnyx {
    fn kind(&self) -> Kind {
        Kind::Telnyx
    }

    fn check(&self, sms: &Sms<'_>) -> Result<(), String> {
        let parts = parts(sms.text);
        if parts > MAX_PARTS {
            return Err(format!(
                "the message needs {parts} SMS parts; Telnyx sends at most {MAX_PARTS} \
                 (about 1,530 plain characters, or 670 with emoji or accents): split it"
            ));
        }
        if sms.media.len() > MAX_MEDIA {
            return Err(format!(
                "the message has {} attachments; Telnyx carries at most {MAX_MEDIA}",
                sms.media.len()
            ));
        }
        Ok(())
    }

    async fn send(&self, account: &Credentials, sms: &Sms<'_>) -> Result<String, SendError> {
        let mut body = serde_json::json!({
            "from": sms.from.as_str(),
            "to": sms.to,
        });
        if !sms.text.is_empty() {
            body["text"] = sms.text.into();
        }
        if !sms.media.is_empty() {
            body["media_urls"] = sms.media.into();
        }
        if let Some(profile) = &account.profile {
            body["messaging_profile_id"] = profile.as_str().into();
        }
        if let Some(status_url) = &sms.status_url {
            body["webhook_url"] = status_url.as_str().into();
        }
        // Telnyx's idempotency keys allow letters, digits, '-', '_' and ':'.
        let key = format!("jabbridge-{:x}", Sha256::digest(sms.key.as_bytes()));
        let response = self
            .client
            .post(format!("{}/v2/messages", self.api_base))
            .bearer_auth(account.secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .header("Idempotency-Key", key)
            .body(body.to_string())
            .send()
            .await;
        let answer = read_answer(Kind::Telnyx, response).await?;
        let (json, bytes) = (&answer.json, &answer.body);
        if answer.status.is_success() {
            return match json.pointer("/data/id").and_then(|id| id.as_str()) {
                Some(id) => Ok(id.to_owned()),
                None => Err(SendError::Permanent {
                    reason: format!(
                        "Telnyx accepted the message but gave no id: {}",
                        excerpt(bytes, 200)
                    ),
                }),
            };
        }
        let detail = if json.get("errors").is_some() {
            failure(answer.status.as_str(), json)
        } else {
            excerpt(bytes, 200)
        };
        Err(answer.failure(Kind::Telnyx, &detail))
    }

    async fn check_account(&self, account: &Credentials) -> Result<(), String> {
        self.numbers(account, "page%5Bsize%5D=1")
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }

    async fn check_number(
        &self,
        account: &Credentials,
        number: &E164,
    ) -> Result<(), RegistrationError> {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("filter[phone_number]", number.as_str())
            .finish();
        let answer = self.numbers(account, &query).await?;
        let json = &answer.json;
        let holds = json
            .get("data")
            .and_then(|list| list.as_array())
            .is_some_and(|list| {
                list.iter()
                    .any(|entry| str_at(entry, "/phone_number") == number.as_str())
            });
        if holds {
            Ok(())
        } else {
            Err(RegistrationError::Rejected(format!(
                "{number} is not a number of this Telnyx account"
            )))
        }
    }

    fn read(&self, path: &str, request: HttpRequest) -> Result<Webhook, Box<HttpResponse>> {
        if path != "/telnyx/webhook" {
            return Err(Box::new(text_response(
                http::StatusCode::NOT_FOUND,
                "not found",
            )));
        }
        if request.method() != http::Method::POST {
            return Err(Box::new(text_response(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "Telnyx webhooks are POSTs",
            )));
        }
        if header(&request, SIGNATURE_HEADER).is_none()
            || header(&request, TIMESTAMP_HEADER).is_none()
        {
            return Err(Box::new(text_response(
                http::StatusCode::UNAUTHORIZED,
                "no telnyx-signature-ed25519 and telnyx-timestamp",
            )));
        }
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(request.body()) else {
            return Err(Box::new(text_response(
                http::StatusCode::BAD_REQUEST,
                "the body is not JSON",
            )));
        };
        if !json
            .pointer("/data/event_type")
            .is_some_and(|event_type| event_type.is_string())
        {
            return Err(Box::new(text_response(
                http::StatusCode::BAD_REQUEST,
                "not a Telnyx webhook event: no data.event_type",
            )));
        }
        let payload = json.pointer("/data/payload").cloned().unwrap_or_default();
        let id = str_at(&payload, "/id").to_owned();
        let (line, event) = match str_at(&json, "/data/event_type") {
            "message.received" => {
                let media = payload
                    .get("media")
                    .and_then(|media| media.as_array())
                    .map(|media| {
                        media
                            .iter()
                            .filter_map(|item| item.get("url").and_then(|url| url.as_str()))
                            .take(MAX_MEDIA)
                            .map(|url| Attachment {
                                url: url.to_owned(),
                                description: None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let to = str_at(&payload, "/to/0/phone_number").to_owned();
                (
                    to.clone(),
                    Some(Event::Message {
                        id: id.clone(),
                        from: str_at(&payload, "/from/phone_number").to_owned(),
                        to,
                        text: str_at(&payload, "/text").to_owned(),
                        media,
                    }),
                )
            }
            "message.finalized" | "message.sent" => {
                let status = str_at(&payload, "/to/0/status");
                let report = match status {
                    "delivered" => Some(DeliveryReport::Delivered),
                    "delivery_failed" | "sending_failed" => {
                        Some(DeliveryReport::Failed(failure(status, &payload)))
                    }
                    _ => None,
                };
                (
                    str_at(&payload, "/from/phone_number").to_owned(),
                    Some(Event::Status {
                        id: id.clone(),
                        report,
                    }),
                )
            }
            // Other events (number orders, calls…) are verified and acknowledged, not acted on.
            _ => (String::new(), None),
        };
        if event.is_some() && id.is_empty() {
            return Err(Box::new(text_response(
                http::StatusCode::BAD_REQUEST,
                "no data.payload.id",
            )));
        }
        Ok(Webhook {
            line: Some(line).filter(|line| !line.is_empty()),
            events: event.into_iter().collect(),
            request,
        })
    }

    fn verify(&self, webhook: &Webhook, _url: &str, account: &Credentials) -> bool {
        let request = &webhook.request;
        let (Some(public_key), Some(signature), Some(timestamp)) = (
            account.public_key.as_deref(),
            header(request, SIGNATURE_HEADER),
            header(request, TIMESTAMP_HEADER),
        ) else {
            return false;
        };
        timestamp_fresh(timestamp, SystemTime::now())
            && signature_matches(public_key, timestamp, request.body(), signature)
    }

    fn accepted(&self) -> HttpResponse {
        typed_response(http::StatusCode::OK, "application/json", "{}")
    }

    fn forged(&self) -> HttpResponse {
        text_response(
            http::StatusCode::UNAUTHORIZED,
            "the Ed25519 signature does not match, or the timestamp is stale",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 8032 §7.1, test 2 (the one-byte message 0x72): the key and signature types the
    /// webhook check uses accept the published vector and nothing else.
    #[test]
    fn rfc8032_vector_verifies() {
        let public = hex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let signature = hex(
            "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
        );
        let key = VerifyingKey::from_bytes(&public.clone().try_into().unwrap()).unwrap();
        let signature = Signature::from_slice(&signature).unwrap();
        assert!(key.verify(&[0x72], &signature).is_ok());
        assert!(key.verify(&[0x73], &signature).is_err());
        assert!(is_public_key(&BASE64.encode(&public)));
        assert!(!is_public_key("AAAA"));
    }

    #[test]
    fn telnyx_framing_is_timestamp_bar_body() {
        use ed25519_dalek::{Signer, SigningKey};
        // RFC 8032 test 1's secret key.
        let secret = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let signing = SigningKey::from_bytes(&secret.try_into().unwrap());
        let public = BASE64.encode(signing.verifying_key().to_bytes());
        assert_eq!(
            signing.verifying_key().to_bytes().to_vec(),
            hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let body = br#"{"data":{"event_type":"message.received"}}"#;
        let signed = [b"1700000000|".as_slice(), body].concat();
        let signature = BASE64.encode(signing.sign(&signed).to_bytes());
        assert!(signature_matches(&public, "1700000000", body, &signature));
        assert!(!signature_matches(&public, "1700000001", body, &signature));
        assert!(!signature_matches(&public, "1700000000", b"{}", &signature));
        assert!(!signature_matches(&public, "1700000000", body, "bm9wZQ=="));
    }

    #[test]
    fn timestamps_older_or_newer_than_five_minutes_are_stale() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert!(timestamp_fresh("1700000000", now));
        assert!(timestamp_fresh("1699999701", now));
        assert!(!timestamp_fresh("1699999699", now));
        assert!(!timestamp_fresh("1700000301", now));
        assert!(!timestamp_fresh("soon", now));
    }

    #[test]
    fn parts_follow_telnyx_encoding_rules() {
        assert_eq!(parts("hello"), 1);
        assert_eq!(parts(&"a".repeat(160)), 1);
        assert_eq!(parts(&"a".repeat(161)), 2);
        assert_eq!(parts(&"a".repeat(1530)), 10);
        assert_eq!(parts(&"a".repeat(1531)), 11);
        assert_eq!(parts(&"[".repeat(80)), 1);
        assert_eq!(parts(&"é".repeat(70)), 1);
        assert_eq!(parts(&"é".repeat(71)), 2);
        assert_eq!(parts(&"é".repeat(670)), 10);
        assert_eq!(parts(&"é".repeat(671)), 11);
    }

    proptest::proptest! {
        /// A signature checks out for exactly the timestamp and body signed; anything else
        /// given as key, timestamp, body or signature is refused without a panic.
        #[test]
        fn signatures_verify_only_what_was_signed(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            other in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            timestamp in "[0-9]{1,12}",
            junk in "\\PC{0,90}",
        ) {
            use ed25519_dalek::{Signer, SigningKey};
            let signing = SigningKey::from_bytes(&[7u8; 32]);
            let public = BASE64.encode(signing.verifying_key().to_bytes());
            let signed = [timestamp.as_bytes(), b"|", body.as_slice()].concat();
            let signature = BASE64.encode(signing.sign(&signed).to_bytes());
            proptest::prop_assert!(signature_matches(&public, &timestamp, &body, &signature));
            proptest::prop_assert_eq!(signature_matches(&public, &timestamp, &other, &signature), other == body);
            proptest::prop_assert!(!signature_matches(&public, &timestamp, &body, &junk));
            proptest::prop_assert!(!signature_matches(&junk, &timestamp, &body, &signature) || junk.trim() == public);
            let _ = timestamp_fresh(&junk, SystemTime::now());
        }
    }
}
