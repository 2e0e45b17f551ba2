//! Twilio Programmable Messaging: sending (`POST /2010-04-01/Accounts/{sid}/Messages.json`,
//! form-encoded, HTTP basic auth), checking a number (`IncomingPhoneNumbers.json`), and its
//! webhooks (`/twilio/message`, `/twilio/status`) signed with `X-Twilio-Signature`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};
use jabbridge_sdk::{
    Attachment, DeliveryReport, HttpRequest, HttpResponse, RegistrationError, SendError,
    async_trait, http,
};
use sha1::Sha1;

use crate::number::E164;
use crate::provider::{
    Credentials, Event, Kind, Provider, Sms, Webhook, excerpt, read_answer, text_response,
    typed_response,
};

/// Twilio's limit on `Body`, in characters.
pub const MAX_BODY: usize = 1600;
/// Twilio's limit on `MediaUrl`s per message.
pub const MAX_MEDIA: usize = 10;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The Twilio provider, talking to `api_base`.
pub struct Twilio {
    api_base: String,
    client: reqwest::Client,
}

impl Twilio {
    /// Reads the account's numbers (`IncomingPhoneNumbers`, with `query`): the cheapest
    /// authenticated call, for checking credentials and a number. Refused credentials are
    /// `Rejected`, anything else not answered 2xx `Unavailable`.
    async fn numbers(
        &self,
        account: &Credentials,
        query: &str,
    ) -> Result<crate::provider::Answer, RegistrationError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/IncomingPhoneNumbers.json?{query}",
            self.api_base, account.account
        );
        let response = self
            .client
            .get(&url)
            .basic_auth(&account.account, Some(account.secret()))
            .send()
            .await;
        let answer = read_answer(Kind::Twilio, response)
            .await
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))?;
        let status = answer.status;
        if matches!(status.as_u16(), 401 | 403 | 404) {
            return Err(RegistrationError::Rejected(format!(
                "Twilio refused the account SID {} and its auth token",
                account.account
            )));
        }
        if !status.is_success() {
            return Err(RegistrationError::Unavailable(format!(
                "Twilio answered {status}; try again later"
            )));
        }
        Ok(answer)
    }

    /// A provider for the API at `api_base` (`https://api.twilio.com`).
    pub fn new(api_base: &str, client: reqwest::Client) -> Self {
        Self {
            api_base: api_base.trim_end_matches('/').to_owned(),
            client,
        }
    }
}

/// `X-Twilio-Signature` of a request to `url` with form `params`: base64 of HMAC-SHA1,
/// keyed by the auth token, over the URL followed by each parameter's name and value,
/// sorted by name.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    BASE64.encode(signed_mac(auth_token, url, params).finalize().into_bytes())
}

fn signed_mac(auth_token: &str, url: &str, params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // An HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of every length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Whether `header` is the signature of `url` and `params` under `auth_token`, compared in
/// constant time.
pub fn signature_matches(
    auth_token: &str,
    url: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    let Ok(given) = BASE64.decode(header.trim()) else {
        return false;
    };
    signed_mac(auth_token, url, params)
        .verify_slice(&given)
        .is_ok()
}

/// The most fields a Twilio form has that are read (a message with ten media has ~40).
const MAX_FIELDS: usize = 256;

/// A form's fields, at most [`MAX_FIELDS`] of them: a form with more is no Twilio's, and its
/// signature (over every field) cannot match.
fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body)
        .take(MAX_FIELDS + 1)
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// What an error code in a status callback means, from Twilio's error dictionary.
fn error_text(code: &str) -> &'static str {
    match code {
        "30001" => "queue overflow",
        "30002" => "account suspended",
        "30003" => "unreachable destination handset",
        "30004" => "message blocked",
        "30005" => "unknown destination handset",
        "30006" => "landline or unreachable carrier",
        "30007" => "message filtered by the carrier",
        "30008" => "unknown error",
        "30034" => "message from an unregistered number (10DLC)",
        "21610" => "the recipient has opted out (STOP)",
        "21211" => "invalid 'To' phone number",
        _ => "see the Twilio error dictionary",
    }
}

/// The user-facing reason of a failed or undelivered message.
fn failure(status: &str, code: Option<&str>) -> String {
    match code.filter(|code| !code.is_empty()) {
        Some(code) => format!(
            "Twilio error {code} ({}), status {status}: https://www.twilio.com/docs/api/errors/{code}",
            error_text(code)
        ),
        None => format!("Twilio reported the message {status}"),
    }
}

#[async_trait]
impl Provider for Twilio {
    fn kind(&self) -> Kind {
        Kind::Twilio
    }

    fn check(&self, sms: &Sms<'_>) -> Result<(), String> {
        let length = sms.text.chars().count();
        if length > MAX_BODY {
            return Err(format!(
                "the message has {length} characters; Twilio carries at most {MAX_BODY}: \
                 split it"
            ));
        }
        if sms.media.len() > MAX_MEDIA {
            return Err(format!(
                "the message has {} attachments; Twilio carries at most {MAX_MEDIA}",
                sms.media.len()
            ));
        }
        Ok(())
    }

    async fn send(&self, account: &Credentials, sms: &Sms<'_>) -> Result<String, SendError> {
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            self.api_base, account.account
        );
        let body = {
            let mut body = form_urlencoded::Serializer::new(String::new());
            body.append_pair("To", sms.to);
            body.append_pair("From", sms.from.as_str());
            if !sms.text.is_empty() {
                body.append_pair("Body", sms.text);
            }
            for media in sms.media {
                body.append_pair("MediaUrl", media);
            }
            if let Some(status_url) = &sms.status_url {
                body.append_pair("StatusCallback", status_url);
            }
            body.finish()
        };
        let response = self
            .client
            .post(&url)
            .basic_auth(&account.account, Some(account.secret()))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .header(reqwest::header::ACCEPT, "application/json")
            .body(body)
            .send()
            .await;
        let answer = read_answer(Kind::Twilio, response).await?;
        let (json, bytes) = (&answer.json, &answer.body);
        if answer.status.is_success() {
            return match json.get("sid").and_then(|sid| sid.as_str()) {
                Some(sid) => Ok(sid.to_owned()),
                None => Err(SendError::Permanent {
                    reason: format!(
                        "Twilio accepted the message but gave no sid: {}",
                        excerpt(bytes, 200)
                    ),
                }),
            };
        }
        let detail = match (
            json.get("code"),
            json.get("message").and_then(|m| m.as_str()),
        ) {
            (Some(code), Some(message)) => format!("{code} {message}"),
            _ => excerpt(bytes, 200),
        };
        Err(answer.failure(Kind::Twilio, &detail))
    }

    async fn check_account(&self, account: &Credentials) -> Result<(), String> {
        self.numbers(account, "PageSize=1")
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
            .append_pair("PhoneNumber", number.as_str())
            .finish();
        let answer = self.numbers(account, &query).await?;
        let json = &answer.json;
        let holds = json
            .get("incoming_phone_numbers")
            .and_then(|list| list.as_array())
            .is_some_and(|list| {
                list.iter().any(|entry| {
                    entry.get("phone_number").and_then(|n| n.as_str()) == Some(number.as_str())
                })
            });
        if holds {
            Ok(())
        } else {
            Err(RegistrationError::Rejected(format!(
                "{number} is not a number of this Twilio account"
            )))
        }
    }

    fn read(&self, path: &str, request: HttpRequest) -> Result<Webhook, Box<HttpResponse>> {
        let message = match path {
            "/twilio/message" => true,
            "/twilio/status" => false,
            _ => {
                return Err(Box::new(text_response(
                    http::StatusCode::NOT_FOUND,
                    "not found",
                )));
            }
        };
        if request.method() != http::Method::POST {
            return Err(Box::new(text_response(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "Twilio webhooks are POSTs",
            )));
        }
        if !request.headers().contains_key(SIGNATURE_HEADER) {
            return Err(Box::new(text_response(
                http::StatusCode::FORBIDDEN,
                "no X-Twilio-Signature",
            )));
        }
        let params = form(request.body());
        if params.len() > MAX_FIELDS {
            return Err(Box::new(text_response(
                http::StatusCode::BAD_REQUEST,
                "too many form fields for a Twilio webhook",
            )));
        }
        let get = |name| param(&params, name).unwrap_or_default().to_owned();
        let (line, event) = if message {
            let count: usize = get("NumMedia").parse().unwrap_or(0);
            let media = (0..count.min(MAX_MEDIA))
                .filter_map(|index| param(&params, &format!("MediaUrl{index}")))
                .map(|url| Attachment {
                    url: url.to_owned(),
                    description: None,
                })
                .collect();
            (
                get("To"),
                Event::Message {
                    id: get("MessageSid"),
                    from: get("From"),
                    to: get("To"),
                    text: get("Body"),
                    media,
                },
            )
        } else {
            let status = get("MessageStatus");
            let report = match status.as_str() {
                "delivered" => Some(DeliveryReport::Delivered),
                "failed" | "undelivered" => Some(DeliveryReport::Failed(failure(
                    &status,
                    param(&params, "ErrorCode"),
                ))),
                _ => None,
            };
            (
                get("From"),
                Event::Status {
                    id: get("MessageSid"),
                    report,
                },
            )
        };
        let id_missing = match &event {
            Event::Message { id, .. } | Event::Status { id, .. } => id.is_empty(),
        };
        if id_missing {
            return Err(Box::new(text_response(
                http::StatusCode::BAD_REQUEST,
                "no MessageSid in the form",
            )));
        }
        Ok(Webhook {
            line: Some(line).filter(|line| !line.is_empty()),
            events: vec![event],
            request,
        })
    }

    fn verify(&self, webhook: &Webhook, url: &str, account: &Credentials) -> bool {
        let request = &webhook.request;
        let Some(header) = request
            .headers()
            .get(SIGNATURE_HEADER)
            .and_then(|value| value.to_str().ok())
        else {
            return false;
        };
        let url = match request.uri().query() {
            Some(query) => format!("{url}?{query}"),
            None => url.to_owned(),
        };
        signature_matches(account.secret(), &url, &form(request.body()), header)
    }

    fn accepted(&self) -> HttpResponse {
        // TwiML that does nothing: no automatic reply.
        typed_response(
            http::StatusCode::OK,
            "text/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>",
        )
    }

    fn forged(&self) -> HttpResponse {
        text_response(
            http::StatusCode::FORBIDDEN,
            "X-Twilio-Signature does not match",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The worked example of Twilio's "Secure webhooks" page.
    #[test]
    fn reproduces_twilios_published_signature() {
        let params = pairs(&[
            ("To", "+18005551212"),
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
        ]);
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature("12345", url, &params),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(signature_matches(
            "12345",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!signature_matches(
            "12346",
            url,
            &params,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        let mut tampered = params.clone();
        tampered[2].1 = "9999".into();
        assert!(!signature_matches(
            "12345",
            url,
            &tampered,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!signature_matches("12345", url, &params, "not base64!"));
    }

    proptest::proptest! {
        /// A signature checks out for exactly the URL and fields signed, in any order of
        /// the fields; a forged or garbled header never does, and never panics.
        #[test]
        fn signatures_verify_only_what_was_signed(
            token in "[a-f0-9]{32}",
            fields in proptest::collection::vec(("[A-Za-z0-9]{1,12}", "\\PC{0,20}"), 0..12),
            junk in "\\PC{0,40}",
        ) {
            let url = "https://gw.example.org/bridges/sms.test/twilio/message";
            let header = signature(&token, url, &fields);
            let mut shuffled = fields.clone();
            shuffled.reverse();
            proptest::prop_assert!(signature_matches(&token, url, &shuffled, &header));
            let elsewhere = format!("{url}x");
            proptest::prop_assert!(!signature_matches(&token, &elsewhere, &fields, &header));
            proptest::prop_assert!(!signature_matches(&token, url, &fields, &junk) || junk.trim() == header);
            let mut more = fields.clone();
            more.push(("Extra".into(), "1".into()));
            proptest::prop_assert!(!signature_matches(&token, url, &more, &header));
            let _ = form(junk.as_bytes());
        }
    }
}
