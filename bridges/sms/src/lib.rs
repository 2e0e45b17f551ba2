//! The SMS bridge (`kind = "sms"`): phone numbers as XMPP contacts, through Twilio or Telnyx.
//!
//! - **Addresses** ([`number`]): `+15551234567@{domain}`, E.164 read with `default_region`,
//!   so that `(555) 123-4567` typed in a client's "add contact" becomes that JID.
//! - **Whose number**: the core's identity table says which XMPP user owns which number.
//!   Admins assign numbers (`[[bridge.number]]`, the `assign-number` ad-hoc command, or
//!   `jabbridge identities set`); users may also register their own number with their own
//!   provider account (XEP-0077), checked against the provider's API first.
//! - **Routes** ([`provider`], [`twilio`], [`telnyx`]): a user's messages go out through
//!   their route (the `route` command; default `provider`), from their number, with the
//!   user's own account if they registered one, else the gateway's. Contacts' JIDs do not
//!   depend on the route.
//! - **Webhooks**: `/twilio/message`, `/twilio/status`, `/telnyx/webhook`, each verified
//!   (with the gateway's account, or the account of the number's owner) before anything in
//!   it is acted on; messages become chat messages to the number's owner, delivery reports
//!   become receipts or error messages ([`Core::report`]).
//!
//! This module owns the config, who sends with which account, and the commands.

pub mod number;
pub mod provider;
pub mod telnyx;
pub mod twilio;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use jabbridge_sdk::secrecy::SecretString;

use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, Checked, Command, CommandError,
    Core, Field, FieldKind, ForeignId, Form, FormValues, HttpRequest, HttpResponse,
    IncomingMessage, MessageId, OutgoingMessage, Prompt, RegistrationData, RegistrationError,
    SendError, SendOutcome, Settings, SettingsError, Shutdown, UserJid, async_trait, http,
};

use crate::number::{E164, Numbers};
use crate::provider::{Credentials, Event, Kind, Provider, Sms, text_response};

/// The bridge's own keys in its `[[bridge]]` section.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsConfig {
    /// The default route: `twilio` or `telnyx`.
    provider: Kind,
    /// How national numbers are read: an ISO 3166 region code.
    #[serde(default = "default_region")]
    default_region: String,
    /// The gateway's Twilio account.
    #[serde(default)]
    twilio: Option<TwilioConfig>,
    /// The gateway's Telnyx account.
    #[serde(default)]
    telnyx: Option<TelnyxConfig>,
    /// Numbers the admin assigns to users.
    #[serde(default)]
    number: Vec<NumberConfig>,
    /// Whether users may register their own number and provider account (XEP-0077).
    #[serde(default = "yes")]
    self_service: bool,
    /// The regions texts may go to (ISO 3166); default: `default_region` only.
    #[serde(default)]
    countries: Option<Vec<String>>,
    /// Whether texts may go to short codes (3 to 8 digits). Default false.
    #[serde(default)]
    short_codes: bool,
    /// How long one request to a provider's API may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TwilioConfig {
    account_sid: String,
    auth_token: SecretString,
    #[serde(default = "twilio_api")]
    api_base: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TelnyxConfig {
    api_key: SecretString,
    public_key: String,
    #[serde(default)]
    messaging_profile_id: Option<String>,
    #[serde(default = "telnyx_api")]
    api_base: String,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NumberConfig {
    number: String,
    owner: String,
}

fn default_region() -> String {
    "US".into()
}

fn yes() -> bool {
    true
}

fn default_timeout() -> Duration {
    Duration::from_secs(15)
}

fn twilio_api() -> String {
    "https://api.twilio.com".into()
}

fn telnyx_api() -> String {
    "https://api.telnyx.com".into()
}

/// What a user registered (self-service), stored by the core as their registration data.
/// Registering again with the other provider keeps the first one's account, so that the
/// user can switch routes.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Registration {
    /// The user's number, E.164.
    number: String,
    /// The provider they registered with last: their route unless they chose another.
    provider: Option<Kind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    twilio: Option<OwnTwilio>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    telnyx: Option<OwnTelnyx>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OwnTwilio {
    account_sid: String,
    auth_token: String,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct OwnTelnyx {
    api_key: String,
    public_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messaging_profile_id: Option<String>,
}

impl Registration {
    fn parse(data: Option<&RegistrationData>) -> Option<Registration> {
        data.and_then(|data| data.read().ok())
    }

    /// The user's own account at `kind`, if they registered one.
    fn account(&self, kind: Kind) -> Option<Credentials> {
        match kind {
            Kind::Twilio => self.twilio.as_ref().map(|own| Credentials {
                account: own.account_sid.clone(),
                secret: SecretString::from(own.auth_token.clone()),
                public_key: None,
                profile: None,
            }),
            Kind::Telnyx => self.telnyx.as_ref().map(|own| Credentials {
                account: String::new(),
                secret: SecretString::from(own.api_key.clone()),
                public_key: Some(own.public_key.clone()),
                profile: own.messaging_profile_id.clone(),
            }),
        }
    }
}

/// Who sends a user's messages: from which number, through which provider, with which account.
struct Line {
    number: E164,
    kind: Kind,
    account: Credentials,
}

/// The SMS bridge.
struct SmsBridge {
    core: Core,
    numbers: Numbers,
    default_route: Kind,
    /// The gateway's own accounts, by provider.
    accounts: BTreeMap<Kind, Credentials>,
    api_bases: BTreeMap<Kind, String>,
    /// `[[bridge.number]]`, checked.
    assigned: Vec<(E164, UserJid)>,
    self_service: bool,
    /// `countries`, checked, in upper case.
    countries: std::collections::BTreeSet<String>,
    short_codes: bool,
    timeout: Duration,
    /// Made on first use: building an HTTP client reads the system's TLS roots, and
    /// `build` must do no I/O.
    providers: OnceLock<BTreeMap<Kind, Arc<dyn Provider>>>,
    /// The bridge itself, for the handlers of its commands.
    me: Weak<SmsBridge>,
}

/// Builds the SMS bridge from its config section. Registered as `sms` in the core.
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config: SmsConfig = settings.parse()?;
    let error = |key: &str, message: String| -> BridgeError {
        SettingsError {
            key: key.to_owned(),
            message,
        }
        .into()
    };
    let numbers =
        Numbers::new(&config.default_region).map_err(|message| error("default_region", message))?;
    let countries = config
        .countries
        .clone()
        .unwrap_or_else(|| vec![config.default_region.clone()]);
    let countries = countries
        .iter()
        .map(|country| {
            number::region_code(country).ok_or_else(|| {
                error(
                    "countries",
                    format!("'{country}' is not an ISO 3166 region code such as US or GB"),
                )
            })
        })
        .collect::<Result<std::collections::BTreeSet<_>, _>>()?;
    if countries.is_empty() {
        return Err(error(
            "countries",
            "name at least one region texts may go to".into(),
        ));
    }
    let mut accounts = BTreeMap::new();
    let mut api_bases = BTreeMap::new();
    if let Some(twilio) = config.twilio {
        if !twilio.account_sid.starts_with("AC") {
            return Err(error(
                "twilio.account_sid",
                "a Twilio account SID starts with AC".into(),
            ));
        }
        check_url(&twilio.api_base).map_err(|message| error("twilio.api_base", message))?;
        accounts.insert(
            Kind::Twilio,
            Credentials {
                account: twilio.account_sid,
                secret: twilio.auth_token,
                public_key: None,
                profile: None,
            },
        );
        api_bases.insert(Kind::Twilio, twilio.api_base);
    }
    if let Some(telnyx) = config.telnyx {
        if !telnyx::is_public_key(&telnyx.public_key) {
            return Err(error(
                "telnyx.public_key",
                "not a base64 Ed25519 public key (Mission Control → Keys & Credentials → \
                 Public Key)"
                    .into(),
            ));
        }
        check_url(&telnyx.api_base).map_err(|message| error("telnyx.api_base", message))?;
        accounts.insert(
            Kind::Telnyx,
            Credentials {
                account: String::new(),
                secret: telnyx.api_key,
                public_key: Some(telnyx.public_key),
                profile: telnyx.messaging_profile_id,
            },
        );
        api_bases.insert(Kind::Telnyx, telnyx.api_base);
    }
    let mut assigned = Vec::new();
    for (index, entry) in config.number.iter().enumerate() {
        let number = numbers
            .parse(&entry.number)
            .map_err(|message| error(&format!("number[{index}].number"), message))?;
        if !is_bare_jid(&entry.owner) {
            return Err(error(
                &format!("number[{index}].owner"),
                format!(
                    "'{}' is not a bare JID such as alice@example.org",
                    entry.owner
                ),
            ));
        }
        if assigned.iter().any(|(seen, _)| *seen == number) {
            return Err(error(
                &format!("number[{index}].number"),
                format!("{number} is assigned twice"),
            ));
        }
        assigned.push((number, UserJid::new(entry.owner.to_lowercase())));
    }
    if !assigned.is_empty() && !accounts.contains_key(&config.provider) {
        return Err(error(
            "provider",
            format!(
                "numbers are assigned, but the default route has no account: add [bridge.{}]",
                config.provider.as_str()
            ),
        ));
    }
    Ok(Arc::new_cyclic(|me| SmsBridge {
        me: me.clone(),
        core,
        numbers,
        default_route: config.provider,
        accounts,
        api_bases,
        assigned,
        self_service: config.self_service,
        countries,
        short_codes: config.short_codes,
        timeout: config.timeout,
        providers: OnceLock::new(),
    }))
}

/// 3 to 8 digits: a short code, dialled as it is.
fn is_short_code(text: &str) -> bool {
    (3..=8).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit())
}

fn check_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(()),
        _ => Err(format!("'{url}' is not an http(s) URL")),
    }
}

fn is_bare_jid(text: &str) -> bool {
    matches!(text.split_once('@'), Some((local, domain))
        if !local.is_empty() && !domain.is_empty() && !text.contains('/') && !text.contains(char::is_whitespace))
}

fn route_key(user: &UserJid) -> String {
    format!("route/{user}")
}

/// Where the config's numbers were last written to the identity table, to release the
/// ones removed from the config.
const CONFIG_NUMBERS_KEY: &str = "config-numbers";

fn transient(reason: impl std::fmt::Display) -> SendError {
    SendError::Transient {
        reason: reason.to_string(),
        retry_after: None,
    }
}

fn permanent(reason: impl Into<String>) -> SendError {
    SendError::Permanent {
        reason: reason.into(),
    }
}

impl SmsBridge {
    /// Whether texts may go to `contact`: a short code only with `short_codes`, a number
    /// only in one of `countries`. The reason is the user's to read.
    fn may_text(&self, contact: &str) -> Result<(), String> {
        if is_short_code(contact) {
            return if self.short_codes {
                Ok(())
            } else {
                Err(format!(
                    "texts to short codes such as {contact} are off on this gateway"
                ))
            };
        }
        let number = self.numbers.parse(contact)?;
        let region = number::region(&number).unwrap_or_else(|| "an unknown region".into());
        if self.countries.contains(&region) {
            Ok(())
        } else {
            let allowed: Vec<&str> = self.countries.iter().map(String::as_str).collect();
            Err(format!(
                "texts to {number} ({region}) are not allowed on this gateway; it texts {}",
                allowed.join(", ")
            ))
        }
    }

    fn providers(&self) -> Result<&BTreeMap<Kind, Arc<dyn Provider>>, String> {
        if let Some(providers) = self.providers.get() {
            return Ok(providers);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("Jabbridge/", env!("CARGO_PKG_VERSION")))
            .timeout(self.timeout)
            // Credentials go with every request: never follow them elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| format!("cannot make an HTTP client: {error}"))?;
        let base = |kind: Kind, default: fn() -> String| {
            self.api_bases.get(&kind).cloned().unwrap_or_else(default)
        };
        let mut providers: BTreeMap<Kind, Arc<dyn Provider>> = BTreeMap::new();
        providers.insert(
            Kind::Twilio,
            Arc::new(twilio::Twilio::new(
                &base(Kind::Twilio, twilio_api),
                client.clone(),
            )),
        );
        providers.insert(
            Kind::Telnyx,
            Arc::new(telnyx::Telnyx::new(&base(Kind::Telnyx, telnyx_api), client)),
        );
        Ok(self.providers.get_or_init(|| providers))
    }

    fn provider(&self, kind: Kind) -> Result<Arc<dyn Provider>, String> {
        self.providers()?
            .get(&kind)
            .cloned()
            .ok_or_else(|| format!("no provider {}", kind.as_str()))
    }

    /// The routes users may choose: providers the gateway has an account at, and, with
    /// self-service, every provider.
    fn routes(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|kind| self.self_service || self.accounts.contains_key(kind))
            .collect()
    }

    /// The user's chosen route, if they chose one.
    async fn chosen_route(&self, user: &UserJid) -> Result<Option<Kind>, String> {
        let saved = self
            .core
            .load(&route_key(user))
            .await
            .map_err(|error| error.to_string())?;
        Ok(saved
            .as_ref()
            .and_then(|value| value.as_str())
            .and_then(Kind::parse))
    }

    /// Who sends `user`'s messages: their number (registered, else assigned), their route
    /// (`route` command, else the provider they registered with, else the default) and the
    /// account (theirs for that provider, else the gateway's).
    async fn line(
        &self,
        user: &UserJid,
        registration: Option<&Registration>,
        route: Option<Kind>,
    ) -> Result<Line, SendError> {
        let number = match registration {
            Some(registration) => self.numbers.parse(&registration.number).ok(),
            None => None,
        };
        let number = match number {
            Some(number) => number,
            None => {
                let owned = self.core.identities(user).await.map_err(transient)?;
                owned
                    .iter()
                    .find_map(|identity| self.numbers.parse(identity.as_str()).ok())
                    .ok_or_else(|| {
                        permanent(format!(
                            "you have no phone number on {}: register yours, or ask an admin \
                             to assign you one",
                            self.core.domain()
                        ))
                    })?
            }
        };
        let route = match route {
            Some(route) => route,
            None => match self.chosen_route(user).await.map_err(transient)? {
                Some(route) => route,
                None => registration
                    .and_then(|registration| registration.provider)
                    .unwrap_or(self.default_route),
            },
        };
        let account = registration
            .and_then(|registration| registration.account(route))
            .or_else(|| self.accounts.get(&route).cloned())
            .ok_or_else(|| {
                permanent(format!(
                    "the route {} has no account: register your {} account, or choose \
                     another route with the 'route' command",
                    route.title(),
                    route.title()
                ))
            })?;
        Ok(Line {
            number,
            kind: route,
            account,
        })
    }

    /// The public URL a provider reports delivery to.
    fn status_url(&self, kind: Kind) -> Option<String> {
        self.core.route_url(match kind {
            Kind::Twilio => "/twilio/status",
            Kind::Telnyx => "/telnyx/webhook",
        })
    }

    /// The own account at `kind` of the owner of our number `line`, if they registered one:
    /// the other account that may sign a webhook about that number.
    async fn owner_account(
        &self,
        kind: Kind,
        line: Option<&str>,
    ) -> Option<(UserJid, Credentials)> {
        let number = line.and_then(|line| self.numbers.parse(line).ok())?;
        let owner = self
            .core
            .owner(&ForeignId::new(number.as_str()))
            .await
            .ok()??;
        let registration = self.core.registration(&owner).await.ok()?;
        let account = Registration::parse(registration.as_ref())?.account(kind)?;
        Some((owner, account))
    }

    /// Writes `[[bridge.number]]` to the identity table, and releases the numbers removed
    /// from the config since the last start (if their owner did not change since).
    async fn seed_assigned(&self) -> Result<(), String> {
        let previous: Vec<(String, String)> = self
            .core
            .load(CONFIG_NUMBERS_KEY)
            .await
            .map_err(|error| error.to_string())?
            .and_then(|value| serde_json::from_value(value).ok())
            .unwrap_or_default();
        for (number, owner) in &previous {
            let still = self
                .assigned
                .iter()
                .any(|(assigned, _)| assigned.as_str() == number);
            let identity = ForeignId::new(number.as_str());
            if !still
                && self
                    .core
                    .owner(&identity)
                    .await
                    .map_err(|e| e.to_string())?
                    == Some(UserJid::new(owner.as_str()))
            {
                self.core
                    .set_owner(&identity, None)
                    .await
                    .map_err(|error| error.to_string())?;
                tracing::info!(bridge = %self.core.domain(), %number, "released a number removed from the config");
            }
        }
        for (number, owner) in &self.assigned {
            self.core
                .set_owner(&ForeignId::new(number.as_str()), Some(owner))
                .await
                .map_err(|error| error.to_string())?;
        }
        let current: Vec<(String, String)> = self
            .assigned
            .iter()
            .map(|(number, owner)| (number.to_string(), owner.to_string()))
            .collect();
        self.core
            .save(CONFIG_NUMBERS_KEY, Some(serde_json::json!(current)))
            .await
            .map_err(|error| error.to_string())
    }

    /// The contact a message came from: E.164 when it is a number, else as the provider
    /// wrote it (a short code; an alphanumeric sender, which cannot be answered).
    fn contact_of(&self, from: &str) -> ForeignId {
        match self.numbers.parse(from) {
            Ok(number) => ForeignId::new(number.as_str()),
            Err(_) => ForeignId::new(from.trim()),
        }
    }

    /// Acts on one verified webhook event; `Err` is the answer to give (the provider
    /// retries).
    async fn handle_event(
        &self,
        kind: Kind,
        event: Event,
        signer: Option<&UserJid>,
    ) -> Result<(), HttpResponse> {
        let unavailable = |error: String| {
            tracing::warn!(bridge = %self.core.domain(), %error, "cannot take a webhook now");
            text_response(http::StatusCode::SERVICE_UNAVAILABLE, "try again later")
        };
        match event {
            Event::Message {
                id,
                from,
                to,
                text,
                media,
            } => {
                let owner = match self.numbers.parse(&to) {
                    Ok(number) => self
                        .core
                        .owner(&ForeignId::new(number.as_str()))
                        .await
                        .map_err(|error| unavailable(error.to_string()))?,
                    Err(_) => None,
                };
                let Some(owner) = owner else {
                    metrics::counter!("jabbridge_sms_unowned_total", "bridge" => self.core.domain().to_owned(), "provider" => kind.as_str())
                        .increment(1);
                    tracing::warn!(bridge = %self.core.domain(), provider = kind.as_str(), %to, %from, id, "a message to a number nobody owns was dropped (assign the number to keep such messages)");
                    return Ok(());
                };
                let message = IncomingMessage {
                    foreign_id: MessageId::new(id),
                    contact: self.contact_of(&from),
                    user: owner,
                    text,
                    attachments: media,
                    timestamp: None,
                    room: None,
                };
                self.core
                    .deliver(message)
                    .await
                    .map_err(|error| unavailable(error.to_string()))
            }
            Event::Status { id, report } => {
                let Some(report) = report else { return Ok(()) };
                let id = MessageId::new(id);
                let reported = match signer {
                    Some(owner) => self.core.report_for(&id, owner, report).await,
                    None => self.core.report(&id, report).await,
                };
                reported.map_err(|error| unavailable(error.to_string()))
            }
        }
    }

    fn registration_form(&self) -> Form {
        let field = |var: &str, label: &str, kind: FieldKind, required: bool| Field {
            var: var.into(),
            label: label.into(),
            kind,
            required,
        };
        Form {
            title: format!("Your phone number on {}", self.core.domain()),
            instructions: "Give your number and your account at its provider: Twilio needs \
                           the account SID and auth token (console.twilio.com, Account Info); \
                           Telnyx the API key and the account's public key (Mission Control, \
                           Keys & Credentials). The gateway checks that the account holds the \
                           number. Register again with the other provider to keep both."
                .into(),
            fields: vec![
                field(
                    "provider",
                    "Provider",
                    FieldKind::Choice(Kind::ALL.iter().map(|k| k.as_str().to_owned()).collect()),
                    true,
                ),
                field("number", "Your phone number", FieldKind::Text, true),
                field("account_sid", "Twilio account SID", FieldKind::Text, false),
                field("auth_token", "Twilio auth token", FieldKind::Secret, false),
                field("api_key", "Telnyx API key", FieldKind::Secret, false),
                field("public_key", "Telnyx public key", FieldKind::Text, false),
                field(
                    "messaging_profile_id",
                    "Telnyx messaging profile id (optional)",
                    FieldKind::Text,
                    false,
                ),
            ],
        }
    }

    async fn assign(&self, values: &FormValues) -> Result<String, CommandError> {
        let number = self
            .numbers
            .parse(values.get("number").unwrap_or_default())
            .map_err(CommandError::Rejected)?;
        let owner = values
            .get("owner")
            .unwrap_or_default()
            .trim()
            .to_lowercase();
        if !is_bare_jid(&owner) {
            return Err(CommandError::Rejected(format!(
                "'{owner}' is not a bare JID such as alice@example.org"
            )));
        }
        self.core
            .set_owner(
                &ForeignId::new(number.as_str()),
                Some(&UserJid::new(owner.as_str())),
            )
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        Ok(format!("{number} now belongs to {owner}."))
    }

    async fn release(&self, values: &FormValues) -> Result<String, CommandError> {
        let number = self
            .numbers
            .parse(values.get("number").unwrap_or_default())
            .map_err(CommandError::Rejected)?;
        if self
            .assigned
            .iter()
            .any(|(assigned, _)| *assigned == number)
        {
            return Err(CommandError::Rejected(format!(
                "{number} is assigned in the config file ([[bridge.number]]): remove it there"
            )));
        }
        let identity = ForeignId::new(number.as_str());
        let owner = self
            .core
            .owner(&identity)
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        let Some(owner) = owner else {
            return Err(CommandError::Rejected(format!("nobody owns {number}")));
        };
        self.core
            .set_owner(&identity, None)
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        Ok(format!("{number} no longer belongs to {owner}."))
    }

    async fn choose_route(
        &self,
        user: &UserJid,
        values: &FormValues,
    ) -> Result<String, CommandError> {
        let kind = values
            .get("provider")
            .and_then(Kind::parse)
            .ok_or_else(|| CommandError::Rejected("choose twilio or telnyx".into()))?;
        let registration = self
            .core
            .registration(user)
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        let registration = Registration::parse(registration.as_ref());
        let line = self
            .line(user, registration.as_ref(), Some(kind))
            .await
            .map_err(|error| match error {
                SendError::Permanent { reason } => CommandError::Rejected(reason),
                SendError::Transient { reason, .. } => CommandError::Failed(reason),
            })?;
        self.core
            .save(&route_key(user), Some(serde_json::json!(kind.as_str())))
            .await
            .map_err(|error| CommandError::Failed(error.to_string()))?;
        Ok(format!(
            "Your texts now go out through {} from {}. Your contacts keep their addresses.",
            kind.title(),
            line.number
        ))
    }
}

/// Removes the attachment URLs a client also put in the text (so that an MMS carries the
/// picture, not its URL too).
fn text_without_urls(text: &str, media: &[String]) -> String {
    let mut text = text.to_owned();
    for url in media {
        text = text.replace(url.as_str(), "");
    }
    text.trim().to_owned()
}

#[async_trait]
impl Bridge for SmsBridge {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "sms".into(),
            name: "SMS gateway".into(),
            capabilities: Capabilities::default(),
            registration: self.self_service.then(|| self.registration_form()),
            prompt: Prompt {
                description: "Enter the phone number of the contact".into(),
                prompt: "Phone number".into(),
            },
        }
    }

    async fn run(&self, shutdown: Shutdown) -> Result<(), BridgeError> {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.seed_assigned().await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(bridge = %self.core.domain(), %error, "cannot record the config's numbers yet; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.clone().wait() => return Ok(()),
            }
            delay = (delay * 2).min(Duration::from_secs(60));
        }
        shutdown.wait().await;
        Ok(())
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        let trimmed = localpart.trim();
        // Short codes (3 to 8 digits) are dialled as they are (texts to them only with
        // `short_codes`).
        if is_short_code(trimmed) {
            return Ok(ForeignId::new(trimmed));
        }
        self.numbers
            .parse(trimmed)
            .map(|number| ForeignId::new(number.as_str()))
            .map_err(AddressError)
    }

    async fn register(
        &self,
        user: &UserJid,
        form: &FormValues,
    ) -> Result<RegistrationData, RegistrationError> {
        let kind = form
            .get("provider")
            .and_then(Kind::parse)
            .ok_or_else(|| RegistrationError::Rejected("choose twilio or telnyx".into()))?;
        let number = self
            .numbers
            .parse(form.get("number").unwrap_or_default())
            .map_err(RegistrationError::Rejected)?;
        let field = |name: &str| {
            form.get(name)
                .map(str::trim)
                .filter(|value| !value.is_empty())
                .map(str::to_owned)
        };
        let previous = self
            .core
            .registration(user)
            .await
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))?;
        let mut registration = Registration::parse(previous.as_ref()).unwrap_or_default();
        match kind {
            Kind::Twilio => {
                let (Some(account_sid), Some(auth_token)) =
                    (field("account_sid"), field("auth_token"))
                else {
                    return Err(RegistrationError::Rejected(
                        "Twilio needs the account SID and the auth token".into(),
                    ));
                };
                registration.twilio = Some(OwnTwilio {
                    account_sid,
                    auth_token,
                });
            }
            Kind::Telnyx => {
                let (Some(api_key), Some(public_key)) = (field("api_key"), field("public_key"))
                else {
                    return Err(RegistrationError::Rejected(
                        "Telnyx needs the API key and the account's public key".into(),
                    ));
                };
                if !telnyx::is_public_key(&public_key) {
                    return Err(RegistrationError::Rejected(
                        "the Telnyx public key is not a base64 Ed25519 key".into(),
                    ));
                }
                registration.telnyx = Some(OwnTelnyx {
                    api_key,
                    public_key,
                    messaging_profile_id: field("messaging_profile_id"),
                });
            }
        }
        let identity = ForeignId::new(number.as_str());
        let owner = self
            .core
            .owner(&identity)
            .await
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))?;
        if owner.as_ref().is_some_and(|owner| owner != user) {
            return Err(RegistrationError::Rejected(format!(
                "{number} belongs to another user of this gateway"
            )));
        }
        let account = registration
            .account(kind)
            .ok_or_else(|| RegistrationError::Rejected("no account given".into()))?;
        self.provider(kind)
            .map_err(RegistrationError::Unavailable)?
            .check_number(&account, &number)
            .await?;
        let old_number = std::mem::replace(&mut registration.number, number.to_string());
        registration.provider = Some(kind);
        if !old_number.is_empty() && old_number != registration.number {
            let old = ForeignId::new(old_number.as_str());
            if self.core.owner(&old).await.ok().flatten().as_ref() == Some(user) {
                let _ = self.core.set_owner(&old, None).await;
            }
        }
        self.core
            .set_owner(&identity, Some(user))
            .await
            .map_err(|error| RegistrationError::Unavailable(error.to_string()))?;
        RegistrationData::new(&registration)
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        self.may_text(message.contact.as_str()).map_err(permanent)?;
        let registration = Registration::parse(message.registration.as_ref());
        let line = self
            .line(&message.user, registration.as_ref(), None)
            .await?;
        let provider = self.provider(line.kind).map_err(transient)?;
        let media: Vec<String> = message
            .attachments
            .iter()
            .map(|attachment| attachment.url.clone())
            .collect();
        let text = if media.is_empty() {
            message.text.clone()
        } else {
            text_without_urls(&message.text, &media)
        };
        let key = format!("{}\n{}", message.user, message.id);
        let sms = Sms {
            from: &line.number,
            to: message.contact.as_str(),
            text: &text,
            media: &media,
            key: &key,
            status_url: self.status_url(line.kind),
        };
        provider.check(&sms).map_err(permanent)?;
        let report_follows = sms.status_url.is_some();
        let id = MessageId::new(provider.send(&line.account, &sms).await?);
        Ok(if report_follows {
            SendOutcome::ReportFollows(id)
        } else {
            SendOutcome::SentAs(id)
        })
    }

    fn describe(&self, _user: &UserJid) -> Option<String> {
        let routes: Vec<&str> = self.routes().iter().map(|kind| kind.title()).collect();
        Some(format!(
            "Text any phone number: add +15551234567@{domain} as a contact (your client's \
             'add contact' through this gateway turns (555) 123-4567 into that address). \
             Your texts go out from your number, through {default} unless you choose another \
             route ({routes}) with 'route'.",
            domain = self.core.domain(),
            default = self.default_route.title(),
            routes = routes.join(", "),
        ))
    }

    /// The gateway's own accounts: their credentials accepted by their providers.
    async fn check_setup(&self) -> Vec<Checked> {
        let mut checks = Vec::new();
        for (kind, account) in &self.accounts {
            let outcome = match self.provider(*kind) {
                Ok(provider) => provider
                    .check_account(account)
                    .await
                    .map(|()| "the credentials are accepted".to_owned())
                    .map_err(|error| format!("{error} (check [bridge.{}])", kind.as_str())),
                Err(error) => Err(error),
            };
            checks.push(Checked {
                what: format!("{} account", kind.title()),
                outcome,
            });
        }
        checks
    }

    fn commands(&self) -> Vec<Command> {
        let number_field = Field {
            var: "number".into(),
            label: "Phone number".into(),
            kind: FieldKind::Text,
            required: true,
        };
        vec![
            Command::on(
                "route",
                "Choose the provider your texts go through",
                &self.me,
                |bridge, user, values| async move { bridge.choose_route(&user, &values).await },
            )
            .with_form(Form {
                title: "Route".into(),
                instructions: "Your contacts keep their addresses whichever you choose.".into(),
                fields: vec![Field {
                    var: "provider".into(),
                    label: "Provider".into(),
                    kind: FieldKind::Choice(
                        self.routes()
                            .iter()
                            .map(|k| k.as_str().to_owned())
                            .collect(),
                    ),
                    required: true,
                }],
            }),
            Command::on(
                "assign-number",
                "Assign a phone number to a user",
                &self.me,
                |bridge, _, values| async move { bridge.assign(&values).await },
            )
            .for_admins()
            .with_form(Form {
                title: "Assign a number".into(),
                instructions: "Texts to the number reach its owner; the owner's texts go \
                               out from it."
                    .into(),
                fields: vec![
                    number_field.clone(),
                    Field {
                        var: "owner".into(),
                        label: "Owner (bare JID)".into(),
                        kind: FieldKind::Text,
                        required: true,
                    },
                ],
            }),
            Command::on(
                "release-number",
                "Take a phone number from its owner",
                &self.me,
                |bridge, _, values| async move { bridge.release(&values).await },
            )
            .for_admins()
            .with_form(Form {
                title: "Release a number".into(),
                instructions: "Texts to the number will be counted and dropped until it is \
                               assigned again."
                    .into(),
                fields: vec![number_field],
            }),
        ]
    }

    async fn handle_http(&self, request: HttpRequest) -> HttpResponse {
        let path = request.uri().path().to_owned();
        let kind = if path.starts_with("/twilio/") {
            Kind::Twilio
        } else if path.starts_with("/telnyx/") {
            Kind::Telnyx
        } else {
            return text_response(http::StatusCode::NOT_FOUND, "not found");
        };
        let provider = match self.provider(kind) {
            Ok(provider) => provider,
            Err(error) => {
                tracing::error!(bridge = %self.core.domain(), %error, "no HTTP client");
                return text_response(http::StatusCode::SERVICE_UNAVAILABLE, "try again later");
            }
        };
        if request.body().len() > crate::provider::MAX_WEBHOOK {
            // Providers send a few KiB at most: a bigger body is no webhook of theirs, and
            // is refused before anything parses it.
            return text_response(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "a provider webhook is at most 64 KiB",
            );
        }
        let webhook = match provider.read(&path, request) {
            Ok(webhook) => webhook,
            Err(answer) => return *answer,
        };
        // Twilio signs the URL it was configured with: the public one.
        let url = self.core.route_url(&path).unwrap_or_default();
        // The gateway's account first: only a self-service number needs the owner's, and
        // looking it up costs two database reads.
        // Who vouches for the webhook: the gateway's account (`Some(None)`), or only the
        // line owner's own (`Some(Some(owner))`), whose reports may then concern only
        // their own messages.
        let signer = match self.accounts.get(&kind) {
            Some(account) if provider.verify(&webhook, &url, account) => Some(None),
            _ => self
                .owner_account(kind, webhook.line.as_deref())
                .await
                .filter(|(_, account)| provider.verify(&webhook, &url, account))
                .map(|(owner, _)| Some(owner)),
        };
        let Some(signer) = signer else {
            metrics::counter!("jabbridge_sms_forged_total", "bridge" => self.core.domain().to_owned(), "provider" => kind.as_str())
                .increment(1);
            tracing::warn!(bridge = %self.core.domain(), provider = kind.as_str(), %path, "refused a webhook no account signed");
            return provider.forged();
        };
        for event in webhook.events {
            if let Err(answer) = self.handle_event(kind, event, signer.as_ref()).await {
                return answer;
            }
        }
        provider.accepted()
    }
}
