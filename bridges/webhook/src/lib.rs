//! The webhook bridge (`kind = "webhook"`): named HTTP endpoints as XMPP contacts.
//!
//! Each `[[bridge.endpoint]]` is a contact `NAME@{domain}`:
//! - **outgoing** ([`outgoing`]): a message to the contact is POSTed as JSON to the endpoint's
//!   `url`, signed per Standard Webhooks with `signing_secret`. The core's durable outbox
//!   retries what a retry may cure (timeouts, connection errors, 408, 429, 5xx, honouring
//!   `Retry-After`) with the same `webhook-id`; another 4xx comes back to the sender as an
//!   error, and 410 Gone also disables the endpoint until an admin re-enables it.
//! - **incoming** ([`incoming`]): `POST /bridges/{domain}/endpoints/NAME`, authenticated by
//!   `inbound_token` (bearer) or `inbound_signing_secret` (Standard Webhooks), becomes a chat
//!   message from the contact to each of `deliver_to`. Our own JSON shape and the
//!   Slack/Mattermost incoming-webhook shape are accepted.
//!
//! This module owns the config, the endpoint table and its disabled flags (kept with
//! [`Core::save`], so that they survive restarts and are shared by every instance).

mod incoming;
mod outgoing;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use jabbridge_sdk::serde_json::{self, json};
use jabbridge_sdk::{
    AddressError, Bridge, BridgeError, BridgeInfo, Capabilities, Command, CommandError, Core,
    Field, FieldKind, ForeignId, Form, FormValues, HttpRequest, HttpResponse, OutgoingMessage,
    Prompt, SendError, SendOutcome, Settings, SettingsError, Shutdown, UserJid, async_trait,
};

/// The bridge's own keys in its `[[bridge]]` section.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    /// The endpoints; each is a contact.
    #[serde(default)]
    endpoint: Vec<EndpointConfig>,
    /// The largest incoming request body, in bytes (larger: 413).
    #[serde(default = "default_max_body")]
    max_body: usize,
}

/// One `[[bridge.endpoint]]`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointConfig {
    /// The contact's localpart: lowercase letters, digits, `.`, `_`, `-`.
    name: String,
    /// Where messages to the contact are POSTed; without it the endpoint only receives.
    #[serde(default)]
    url: Option<String>,
    /// The Standard Webhooks key (`whsec_` + base64) that signs outgoing requests; without
    /// it requests carry `webhook-id` and `webhook-timestamp` but no signature.
    #[serde(default)]
    signing_secret: Option<SecretString>,
    /// How long one outgoing request may take before it counts as failed (and is retried).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    timeout: Duration,
    /// Who may write to the contact: bare JIDs or domains, `*` for everyone. Empty (the
    /// default): everyone the bridge's `allow` lets in.
    #[serde(default)]
    allow: Vec<String>,
    /// The bearer token incoming requests present.
    #[serde(default)]
    inbound_token: Option<SecretString>,
    /// The Standard Webhooks key incoming requests are signed with.
    #[serde(default)]
    inbound_signing_secret: Option<SecretString>,
    /// Who receives incoming messages (bare JIDs); a request's `to` picks among them.
    #[serde(default)]
    deliver_to: Vec<String>,
}

fn default_max_body() -> usize {
    128 * 1024
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// An endpoint, checked and ready to use.
struct Endpoint {
    name: String,
    url: Option<reqwest::Url>,
    signer: Option<standardwebhooks::Webhook>,
    timeout: Duration,
    allow: Vec<String>,
    inbound_token: Option<SecretString>,
    inbound_signer: Option<standardwebhooks::Webhook>,
    deliver_to: Vec<String>,
}

impl Endpoint {
    /// Whether `user` (a bare JID) may write to this endpoint.
    fn allows(&self, user: &UserJid) -> bool {
        self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|entry| matches_jid(entry, user.as_str()))
    }

    fn receives(&self) -> bool {
        self.inbound_token.is_some() || self.inbound_signer.is_some()
    }

    /// Whether `user` is one of the recipients of incoming messages.
    fn deliver_to_has(&self, user: &UserJid) -> bool {
        self.deliver_to
            .iter()
            .any(|jid| jid.eq_ignore_ascii_case(user.as_str()))
    }
}

/// Whether `entry` (`*`, a domain or a bare JID) covers `jid`; case-insensitive.
fn matches_jid(entry: &str, jid: &str) -> bool {
    let domain = jid.rsplit_once('@').map_or(jid, |(_, domain)| domain);
    entry == "*" || entry.eq_ignore_ascii_case(jid) || entry.eq_ignore_ascii_case(domain)
}

/// Why an endpoint is disabled, as saved in the bridge's state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Disabled {
    /// What disabled it: the receiver's 410, or an admin.
    reason: String,
    /// When, RFC 3339.
    since: String,
}

/// The webhook bridge.
pub struct Webhooks {
    core: Core,
    endpoints: BTreeMap<String, Endpoint>,
    max_body: usize,
    /// Made on first use, so that building the bridge (and `check-config`) does no I/O.
    client: OnceLock<reqwest::Client>,
    /// What the store said last about disabled endpoints, for `help` and command forms
    /// (which may do no I/O); sending always asks the store.
    disabled: Mutex<BTreeMap<String, Disabled>>,
    /// The bridge itself, for the handlers of its commands.
    me: Weak<Webhooks>,
}

/// Builds the webhook bridge from its config section. Registered as `webhook` in the core.
pub fn build(settings: &Settings, core: Core) -> Result<Arc<dyn Bridge>, BridgeError> {
    let config: WebhookConfig = settings.parse()?;
    let mut endpoints = BTreeMap::new();
    for (index, endpoint) in config.endpoint.into_iter().enumerate() {
        let endpoint = check_endpoint(index, endpoint)?;
        if endpoints.contains_key(&endpoint.name) {
            return Err(setting_error(
                index,
                "name",
                format!("'{}' names two endpoints", endpoint.name),
            ));
        }
        endpoints.insert(endpoint.name.clone(), endpoint);
    }
    Ok(Arc::new_cyclic(|me| Webhooks {
        core,
        endpoints,
        max_body: config.max_body,
        client: OnceLock::new(),
        disabled: Mutex::default(),
        me: me.clone(),
    }))
}

fn setting_error(index: usize, key: &str, message: String) -> BridgeError {
    SettingsError {
        key: format!("endpoint[{index}].{key}"),
        message,
    }
    .into()
}

fn signer(
    index: usize,
    key: &str,
    secret: Option<SecretString>,
) -> Result<Option<standardwebhooks::Webhook>, BridgeError> {
    secret
        .map(|secret| {
            standardwebhooks::Webhook::new(secret.expose_secret()).map_err(|_| {
                setting_error(
                    index,
                    key,
                    "not a Standard Webhooks key: expected whsec_ followed by base64".into(),
                )
            })
        })
        .transpose()
}

fn check_endpoint(index: usize, config: EndpointConfig) -> Result<Endpoint, BridgeError> {
    let name_ok = !config.name.is_empty()
        && config.name.len() <= 64
        && config
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if !name_ok {
        return Err(setting_error(
            index,
            "name",
            format!(
                "'{}' is not a usable contact name: use 1 to 64 lowercase letters, digits, '.', '_' or '-'",
                config.name
            ),
        ));
    }
    let url = config
        .url
        .map(|url| {
            reqwest::Url::parse(&url)
                .ok()
                .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                .ok_or_else(|| {
                    setting_error(index, "url", format!("'{url}' is not an http(s) URL"))
                })
        })
        .transpose()?;
    if config.timeout.is_zero() || config.timeout > Duration::from_secs(3600) {
        return Err(setting_error(
            index,
            "timeout",
            "must be between 1ms and 1h".into(),
        ));
    }
    let endpoint = Endpoint {
        signer: signer(index, "signing_secret", config.signing_secret)?,
        inbound_signer: signer(
            index,
            "inbound_signing_secret",
            config.inbound_signing_secret,
        )?,
        inbound_token: config
            .inbound_token
            .filter(|token| !token.expose_secret().is_empty()),
        name: config.name,
        url,
        timeout: config.timeout,
        allow: config.allow,
        deliver_to: config.deliver_to,
    };
    if endpoint.receives() && endpoint.deliver_to.is_empty() {
        return Err(setting_error(
            index,
            "deliver_to",
            "an endpoint that receives (inbound_token or inbound_signing_secret) needs at least one recipient".into(),
        ));
    }
    if !endpoint.receives() && !endpoint.deliver_to.is_empty() {
        return Err(setting_error(
            index,
            "deliver_to",
            "recipients without inbound_token or inbound_signing_secret: nobody could post to them"
                .into(),
        ));
    }
    if endpoint.url.is_none() && !endpoint.receives() {
        return Err(setting_error(
            index,
            "url",
            "the endpoint does nothing: give it a url, an inbound_token or an inbound_signing_secret".into(),
        ));
    }
    Ok(endpoint)
}

/// The state key of an endpoint's disabled flag.
fn disabled_key(name: &str) -> String {
    format!("disabled/{name}")
}

impl Webhooks {
    /// The admin commands `enable-endpoint` (`enable`) and `disable-endpoint`.
    async fn switch(
        &self,
        user: &UserJid,
        values: &FormValues,
        enable: bool,
    ) -> Result<String, CommandError> {
        let name = values.get("endpoint").unwrap_or_default();
        if !self.outgoing_names().iter().any(|known| known == name) {
            return Err(CommandError::Rejected(format!(
                "no endpoint '{name}' that sends"
            )));
        }
        let failed = |error: jabbridge_sdk::CoreError| CommandError::Failed(error.to_string());
        if enable {
            let was = self
                .disabled(name)
                .await
                .map_err(|error| CommandError::Failed(error.to_string()))?;
            self.set_disabled(name, None).await.map_err(failed)?;
            return Ok(match was {
                Some(_) => format!("{} is enabled again.", self.contact(name)),
                None => format!("{} was not disabled.", self.contact(name)),
            });
        }
        let disabled = Disabled {
            reason: format!("disabled by {user}"),
            since: now_rfc3339(),
        };
        self.set_disabled(name, Some(disabled))
            .await
            .map_err(failed)?;
        Ok(format!(
            "{} is disabled; 'enable-endpoint' re-enables it.",
            self.contact(name)
        ))
    }

    fn client(&self) -> Result<&reqwest::Client, SendError> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("Jabbridge/", env!("CARGO_PKG_VERSION")))
            // A receiver that moved must be reconfigured, not followed: a redirect would
            // carry the signed payload somewhere nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| SendError::Transient {
                reason: format!("cannot make an HTTP client: {error}"),
                retry_after: None,
            })?;
        Ok(self.client.get_or_init(|| client))
    }

    /// Whether the endpoint is disabled, asking the store (and remembering the answer).
    async fn disabled(&self, name: &str) -> Result<Option<Disabled>, SendError> {
        let saved =
            self.core
                .load(&disabled_key(name))
                .await
                .map_err(|error| SendError::Transient {
                    reason: error.to_string(),
                    retry_after: None,
                })?;
        let disabled = saved.and_then(|value| serde_json::from_value::<Disabled>(value).ok());
        self.remember(name, disabled.clone());
        Ok(disabled)
    }

    fn remember(&self, name: &str, disabled: Option<Disabled>) {
        if let Ok(mut map) = self.disabled.lock() {
            match disabled {
                Some(disabled) => map.insert(name.to_owned(), disabled),
                None => map.remove(name),
            };
        }
    }

    fn remembered(&self, name: &str) -> Option<Disabled> {
        self.disabled
            .lock()
            .ok()
            .and_then(|map| map.get(name).cloned())
    }

    /// Disables or re-enables an endpoint, durably.
    async fn set_disabled(
        &self,
        name: &str,
        disabled: Option<Disabled>,
    ) -> Result<(), jabbridge_sdk::CoreError> {
        let value = disabled
            .as_ref()
            .map(|disabled| json!({"reason": disabled.reason, "since": disabled.since}));
        self.core.save(&disabled_key(name), value).await?;
        self.remember(name, disabled);
        Ok(())
    }

    fn contact(&self, name: &str) -> String {
        format!("{name}@{}", self.core.domain())
    }

    fn outgoing_names(&self) -> Vec<String> {
        self.endpoints
            .values()
            .filter(|endpoint| endpoint.url.is_some())
            .map(|endpoint| endpoint.name.clone())
            .collect()
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

fn endpoint_form(title: &str, instructions: &str, names: Vec<String>) -> Form {
    Form {
        title: title.into(),
        instructions: instructions.into(),
        fields: vec![Field {
            var: "endpoint".into(),
            label: "Endpoint".into(),
            kind: FieldKind::Choice(names),
            required: true,
        }],
    }
}

#[async_trait]
impl Bridge for Webhooks {
    fn info(&self) -> BridgeInfo {
        BridgeInfo {
            gateway_type: "http-ws".into(),
            name: "Webhook gateway".into(),
            capabilities: Capabilities::default(),
            registration: None,
            prompt: Prompt {
                description:
                    "Enter the name of a webhook endpoint (say 'help' to the gateway for the list)"
                        .into(),
                prompt: "Endpoint".into(),
            },
        }
    }

    /// Reads which endpoints are disabled, so that `help` shows it from the start.
    async fn run(&self, shutdown: Shutdown) -> Result<(), BridgeError> {
        for name in self.outgoing_names() {
            if let Err(error) = self.disabled(&name).await {
                // Sending asks again, so this only delays what `help` shows.
                tracing::warn!(endpoint = name, %error, "cannot read whether an endpoint is disabled");
            }
        }
        shutdown.wait().await;
        Ok(())
    }

    fn parse_address(&self, localpart: &str) -> Result<ForeignId, AddressError> {
        if self.endpoints.contains_key(localpart) {
            Ok(ForeignId::new(localpart))
        } else {
            Err(AddressError(format!(
                "there is no endpoint '{localpart}' on {}: say 'help' to it for the list",
                self.core.domain()
            )))
        }
    }

    async fn send_message(&self, message: OutgoingMessage) -> Result<SendOutcome, SendError> {
        let Some(endpoint) = self.endpoints.get(message.contact.as_str()) else {
            return Err(SendError::Permanent {
                reason: format!(
                    "there is no endpoint '{}' on {} any more",
                    message.contact,
                    self.core.domain()
                ),
            });
        };
        if !endpoint.allows(&message.user) {
            return Err(SendError::Permanent {
                reason: format!("you may not write to {}", self.contact(&endpoint.name)),
            });
        }
        let Some(url) = &endpoint.url else {
            return Err(SendError::Permanent {
                reason: format!(
                    "{} only receives messages; it has nowhere to send yours",
                    self.contact(&endpoint.name)
                ),
            });
        };
        if let Some(disabled) = self.disabled(&endpoint.name).await? {
            return Err(SendError::Permanent {
                reason: format!(
                    "{} is disabled since {} ({}); an admin of {} can re-enable it with the 'enable-endpoint' command",
                    self.contact(&endpoint.name),
                    disabled.since,
                    disabled.reason,
                    self.core.domain()
                ),
            });
        }
        let request = outgoing::Request::new(&endpoint.name, &message);
        match request.send(self.client()?, url, endpoint).await {
            outgoing::Verdict::Delivered => Ok(SendOutcome::SentAs(request.webhook_id().into())),
            outgoing::Verdict::Retry(reason, retry_after) => Err(SendError::Transient {
                reason,
                retry_after,
            }),
            outgoing::Verdict::Refused(reason) => Err(SendError::Permanent { reason }),
            outgoing::Verdict::Gone => {
                let disabled = Disabled {
                    reason: "the receiver answered 410 Gone".into(),
                    since: now_rfc3339(),
                };
                let saved = self.set_disabled(&endpoint.name, Some(disabled)).await;
                let note = match saved {
                    Ok(()) => format!(
                        "it is now disabled until an admin of {} re-enables it ('enable-endpoint')",
                        self.core.domain()
                    ),
                    Err(_) => "it could not be marked disabled (database unreachable)".into(),
                };
                Err(SendError::Permanent {
                    reason: format!(
                        "{} answered 410 Gone: the receiver no longer wants these messages; {note}",
                        self.contact(&endpoint.name)
                    ),
                })
            }
        }
    }

    async fn subscription_requested(&self, user: &UserJid, contact: &ForeignId) -> bool {
        self.endpoints
            .get(contact.as_str())
            .is_some_and(|endpoint| endpoint.allows(user) || endpoint.deliver_to_has(user))
    }

    fn describe(&self, user: &UserJid) -> Option<String> {
        let mut lines = Vec::new();
        let writable: Vec<&Endpoint> = self
            .endpoints
            .values()
            .filter(|endpoint| endpoint.url.is_some() && endpoint.allows(user))
            .collect();
        if writable.is_empty() {
            lines.push("There is no endpoint you can write to.".to_owned());
        } else {
            lines.push("Endpoints you can write to:".to_owned());
            for endpoint in writable {
                let host = endpoint
                    .url
                    .as_ref()
                    .and_then(|url| url.host_str())
                    .unwrap_or_default();
                let state = match self.remembered(&endpoint.name) {
                    Some(disabled) => {
                        format!(" — DISABLED since {} ({})", disabled.since, disabled.reason)
                    }
                    None => String::new(),
                };
                lines.push(format!(
                    "  {} (posts to {host}){state}",
                    self.contact(&endpoint.name)
                ));
            }
        }
        let receiving: Vec<String> = self
            .endpoints
            .values()
            .filter(|endpoint| endpoint.deliver_to_has(user))
            .map(|endpoint| {
                let route = format!("/endpoints/{}", endpoint.name);
                match self.core.route_url(&route) {
                    Some(url) => {
                        format!("  {} (senders POST to {url})", self.contact(&endpoint.name))
                    }
                    None => format!("  {}", self.contact(&endpoint.name)),
                }
            })
            .collect();
        if !receiving.is_empty() {
            lines.push("Endpoints that write to you:".into());
            lines.extend(receiving);
        }
        Some(lines.join("\n"))
    }

    fn commands(&self) -> Vec<Command> {
        let names = self.outgoing_names();
        if names.is_empty() {
            return Vec::new();
        }
        vec![
            Command::on(
                "enable-endpoint",
                "Re-enable a disabled webhook endpoint",
                &self.me,
                |bridge, user, values| async move { bridge.switch(&user, &values, true).await },
            )
            .for_admins()
            .with_form(endpoint_form(
                "Re-enable an endpoint",
                "Messages to the endpoint are POSTed again. Disabled now: see 'help'.",
                names.clone(),
            )),
            Command::on(
                "disable-endpoint",
                "Disable a webhook endpoint",
                &self.me,
                |bridge, user, values| async move { bridge.switch(&user, &values, false).await },
            )
            .for_admins()
            .with_form(endpoint_form(
                "Disable an endpoint",
                "Messages to the endpoint are refused until it is re-enabled.",
                names,
            )),
        ]
    }

    async fn handle_http(&self, request: HttpRequest) -> HttpResponse {
        incoming::handle(self, request).await
    }
}

#[cfg(test)]
mod tests;
