//! Between one bridge's component link and the bridge: stanzas in → typed calls on the
//! bridge (or protocol answers); bridge events → stanzas out. One router per `[[bridge]]`.
//!
//! Messages to contacts go through a delivery worker, one per bridge, which calls
//! [`Bridge::send_message`] in arrival order and retries transient failures with backoff.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use jabbridge_sdk::{
    Bridge, BridgeInfo, CoreError, CoreSink, IncomingMessage, MessageId, OutgoingMessage,
    RegistrationError, SendError, Shutdown, UserJid, async_trait,
};
use tokio::sync::mpsc;
use xmpp_parsers::{
    iq::Iq,
    jid::{BareJid, Jid},
    message::{Lang, Message, MessageType},
    minidom::Element,
    ns,
    presence::Presence,
    stanza_id::OriginId,
};

use crate::metrics;
use crate::store::Store;
use crate::xmpp::jid::{escape, unescape};
use crate::xmpp::register::{self, Submission};
use crate::xmpp::service::{self, Target};
use crate::xmpp::session::{LinkHandle, backoff, is_keepalive_id};
use crate::xmpp::stanza::{StanzaFailure, StanzaHeader, error_reply};

/// How often a transient failure is retried before the user is told the message failed.
/// The durable outbox (issue #3) replaces this in-memory retry.
const MAX_ATTEMPTS: u32 = 8;
const RETRY_CAP: Duration = Duration::from_secs(60);

/// What a router needs.
pub struct Router {
    /// The bridge's domain.
    pub domain: String,
    /// The bridge.
    pub bridge: Arc<dyn Bridge>,
    /// What the bridge said about itself at start-up.
    pub info: BridgeInfo,
    /// The component link.
    pub link: LinkHandle,
    /// The database.
    pub store: Store,
}

struct Delivery {
    message: OutgoingMessage,
    user: Jid,
    contact: Jid,
}

impl Router {
    /// Runs until the link stops handing stanzas over (at shutdown).
    pub async fn run(self, mut incoming: mpsc::Receiver<Element>, shutdown: Shutdown) {
        let (deliveries, queue) = mpsc::channel(1024);
        let router = Arc::new(self);
        let worker = tokio::spawn(router.clone().deliver_in_order(queue, shutdown));
        while let Some(element) = incoming.recv().await {
            router.handle(element, &deliveries).await;
        }
        drop(deliveries);
        let _ = worker.await;
    }

    async fn handle(&self, element: Element, deliveries: &mpsc::Sender<Delivery>) {
        let Some(header) = StanzaHeader::of(&element) else {
            tracing::debug!(bridge = %self.domain, name = element.name(), "ignored a non-stanza element");
            return;
        };
        let addressed_to_us = header
            .to
            .as_deref()
            .and_then(|to| to.parse::<Jid>().ok())
            .is_some_and(|to| to.domain().as_str() == self.domain);
        if !addressed_to_us {
            // The server routed another domain's stanza over our link: answer it rather
            // than act for a domain that is not ours.
            tracing::warn!(
                bridge = %self.domain,
                to = header.to.as_deref().unwrap_or(""),
                "the XMPP server sent a stanza for another domain over this link; give each \
                 bridge its own component listener (ejabberd: bridge.server)"
            );
            metrics::stanza_error(&self.domain, "service-unavailable");
            if let Some(reply) = error_reply(&header, &StanzaFailure::ServiceUnavailable) {
                self.send(reply).await;
            }
            return;
        }
        let outcome = match element.name() {
            "iq" => self.on_iq(element).await,
            "message" => self.on_message(element, deliveries).await,
            _ => self.on_presence(element),
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(failure) => {
                tracing::info!(bridge = %self.domain, from = header.from.as_deref().unwrap_or(""), %failure, "refused a stanza");
                metrics::stanza_error(&self.domain, failure.condition());
                error_reply(&header, &failure)
            }
        };
        if let Some(reply) = reply {
            self.send(reply).await;
        }
    }

    async fn send(&self, stanza: Element) {
        if self.link.send(stanza).await.is_err() {
            tracing::warn!(bridge = %self.domain, "link stopped; a reply was dropped at shutdown");
        }
    }

    /// Resolves the localpart of a JID on our domain to what it addresses.
    fn target<'a>(
        &self,
        to: Option<&Jid>,
        localpart: &'a mut String,
    ) -> Result<Target<'a>, StanzaFailure> {
        match to.and_then(|to| to.node()) {
            None => Ok(Target::Gateway),
            Some(node) => {
                *localpart = unescape(node.as_str());
                self.bridge
                    .parse_address(localpart)
                    .map_err(|error| StanzaFailure::JidMalformed(error.0))?;
                Ok(Target::Contact(localpart.as_str()))
            }
        }
    }

    async fn on_iq(&self, element: Element) -> Result<Option<Element>, StanzaFailure> {
        let iq = Iq::try_from(element).map_err(|error| {
            StanzaFailure::BadRequest(format!("this iq does not parse: {error}"))
        })?;
        let (is_set, from, to, id, payload) = match iq {
            Iq::Get {
                from,
                to,
                id,
                payload,
            } => (false, from, to, id, payload),
            Iq::Set {
                from,
                to,
                id,
                payload,
            } => (true, from, to, id, payload),
            Iq::Result { id, .. } | Iq::Error { id, .. } => {
                if !is_keepalive_id(&id) {
                    tracing::debug!(bridge = %self.domain, id, "ignored an unsolicited iq response");
                }
                return Ok(None);
            }
        };
        let Some(from) = from else {
            return Ok(None);
        };
        let answer = if is_registration(to.as_ref(), &payload) {
            if is_set {
                self.registration_submitted(&from, &payload).await
            } else {
                self.registration_form(&from).await
            }
        } else {
            let mut localpart = String::new();
            let target = self.target(to.as_ref(), &mut localpart)?;
            if is_set {
                // No other iq set is served (yet): RFC 6120 §8.4.
                Err(StanzaFailure::ServiceUnavailable)
            } else {
                service::answer_get(&self.info, target, &payload)
            }
        };
        service::reply(from, to, id, answer).map(Some)
    }

    /// XEP-0077 `get`: the bridge's form, saying whether the user is registered.
    async fn registration_form(&self, from: &Jid) -> service::IqAnswer {
        let form = self
            .info
            .registration
            .as_ref()
            .ok_or(StanzaFailure::ServiceUnavailable)?;
        let user = from.to_bare().to_string();
        let registered = self
            .store
            .registration(&self.domain, &user)
            .await
            .map_err(|error| self.storage_failed(error))?;
        Ok(Some(register::form_query(form, registered.is_some())))
    }

    fn storage_failed(&self, error: crate::store::StoreError) -> StanzaFailure {
        tracing::error!(bridge = %self.domain, %error, "registration storage failed");
        StanzaFailure::Internal
    }

    /// XEP-0077 `set`: register, re-register (update) or remove.
    async fn registration_submitted(&self, from: &Jid, payload: &Element) -> service::IqAnswer {
        let form = self
            .info
            .registration
            .as_ref()
            .ok_or(StanzaFailure::ServiceUnavailable)?;
        let user = from.to_bare().to_string();
        let internal = |error| self.storage_failed(error);
        match register::parse_submission(payload, form)? {
            Submission::Remove => {
                if !self
                    .store
                    .delete_registration(&self.domain, &user)
                    .await
                    .map_err(internal)?
                {
                    return Err(StanzaFailure::ItemNotFound(format!(
                        "{user} is not registered with {}",
                        self.domain
                    )));
                }
                tracing::info!(bridge = %self.domain, user, "user unregistered");
            }
            Submission::Register(values) => {
                form.validate(&values)
                    .map_err(StanzaFailure::NotAcceptable)?;
                let data = self
                    .bridge
                    .register(&UserJid::new(user.clone()), &values)
                    .await
                    .map_err(|error| match error {
                        RegistrationError::Rejected(reason) => StanzaFailure::NotAcceptable(reason),
                        RegistrationError::Unavailable(reason) => {
                            StanzaFailure::Unavailable(reason)
                        }
                    })?;
                self.store
                    .put_registration(&self.domain, &user, &data)
                    .await
                    .map_err(internal)?;
                tracing::info!(bridge = %self.domain, user, "user registered");
            }
        }
        Ok(None)
    }

    fn on_presence(&self, element: Element) -> Result<Option<Element>, StanzaFailure> {
        // Presence handling (subscriptions, probes, user state) belongs to the gateway
        // protocol; for now a presence is only checked, so that a malformed one is answered.
        Presence::try_from(element).map_err(|error| {
            StanzaFailure::BadRequest(format!("this presence does not parse: {error}"))
        })?;
        Ok(None)
    }

    async fn on_message(
        &self,
        element: Element,
        deliveries: &mpsc::Sender<Delivery>,
    ) -> Result<Option<Element>, StanzaFailure> {
        let message = Message::try_from(element).map_err(|error| {
            StanzaFailure::BadRequest(format!("this message does not parse: {error}"))
        })?;
        if message.type_ == MessageType::Error {
            tracing::debug!(bridge = %self.domain, "ignored an error message");
            return Ok(None);
        }
        let (Some(from), Some(to)) = (message.from.clone(), message.to.clone()) else {
            return Ok(None);
        };
        // Bodies come keyed by language (servers stamp xml:lang); take the first non-empty.
        let Some(text) = message
            .bodies
            .values()
            .find(|body| !body.trim().is_empty())
            .cloned()
        else {
            // Chat states, receipts and markers without a body: nothing to deliver.
            return Ok(None);
        };
        let mut localpart = String::new();
        let Target::Contact(contact) = self.target(Some(&to), &mut localpart)? else {
            return Ok(Some(self.help(from, to)));
        };
        if message.type_ == MessageType::Groupchat {
            return Err(StanzaFailure::FeatureNotImplemented(
                "this bridge does not carry group chat messages".into(),
            ));
        }
        let user = from.to_bare().to_string();
        let registration = self
            .store
            .registration(&self.domain, &user)
            .await
            .map_err(|error| {
                tracing::error!(bridge = %self.domain, %error, "cannot read the registration");
                StanzaFailure::Internal
            })?;
        let id = message
            .payloads
            .iter()
            .find_map(|payload| OriginId::try_from(payload.clone()).ok())
            .map(|origin| origin.id)
            .or_else(|| message.id.clone().map(|id| id.0))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let delivery = Delivery {
            message: OutgoingMessage {
                id: MessageId::new(id),
                user: UserJid::new(user),
                contact: jabbridge_sdk::ForeignId::new(contact),
                text,
                registration,
            },
            user: from,
            contact: to,
        };
        if deliveries.send(delivery).await.is_err() {
            return Err(StanzaFailure::Internal);
        }
        Ok(None)
    }

    /// What the bare domain says when a user writes to it.
    fn help(&self, user: Jid, gateway: Jid) -> Element {
        let text = format!(
            "This is {} (Jabbridge {}). Write to a contact as NAME@{}.",
            self.info.name,
            env!("CARGO_PKG_VERSION"),
            self.domain
        );
        let mut reply = Message::chat(Some(user)).with_body(Lang::default(), text);
        reply.from = Some(gateway);
        reply.into()
    }

    async fn deliver_in_order(
        self: Arc<Self>,
        mut queue: mpsc::Receiver<Delivery>,
        shutdown: Shutdown,
    ) {
        while let Some(delivery) = queue.recv().await {
            self.deliver(delivery, &shutdown).await;
        }
    }

    async fn deliver(&self, delivery: Delivery, shutdown: &Shutdown) {
        let mut failures = 0;
        let reason = loop {
            match self.bridge.send_message(delivery.message.clone()).await {
                Ok(outcome) => {
                    metrics::delivery(&self.domain, "ok");
                    if let Some(foreign_id) = outcome.foreign_id {
                        let mapped = self
                            .store
                            .map_message_id(
                                &self.domain,
                                delivery.message.user.as_str(),
                                delivery.message.id.as_str(),
                                foreign_id.as_str(),
                            )
                            .await;
                        if let Err(error) = mapped {
                            tracing::warn!(bridge = %self.domain, %error, "cannot record the message id mapping");
                        }
                    }
                    return;
                }
                Err(SendError::Permanent { reason }) => {
                    metrics::delivery(&self.domain, "permanent");
                    break reason;
                }
                Err(SendError::Transient {
                    reason,
                    retry_after,
                }) => {
                    metrics::delivery(&self.domain, "transient");
                    failures += 1;
                    if failures >= MAX_ATTEMPTS || shutdown.is_stopping() {
                        break format!("gave up after {failures} attempts: {reason}");
                    }
                    let delay = backoff(failures, RETRY_CAP).max(retry_after.unwrap_or_default());
                    tracing::warn!(bridge = %self.domain, %reason, attempt = failures, "delivery failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.clone().wait() => {}
                    }
                }
            }
        };
        tracing::info!(bridge = %self.domain, %reason, "message not delivered");
        let header = StanzaHeader {
            kind: crate::xmpp::stanza::StanzaKind::Message,
            from: Some(delivery.user.to_string()),
            to: Some(delivery.contact.to_string()),
            id: Some(delivery.message.id.to_string()),
            type_: Some("chat".into()),
        };
        if let Some(reply) = error_reply(&header, &StanzaFailure::Unavailable(reason)) {
            self.send(reply).await;
        }
    }
}

/// Whether an iq payload is XEP-0077 registration with the gateway itself.
fn is_registration(to: Option<&Jid>, payload: &Element) -> bool {
    payload.is("query", ns::REGISTER) && to.is_some_and(|to| to.node().is_none())
}

/// The core side of [`jabbridge_sdk::Core`] for one bridge: turns its events into stanzas.
pub struct RouterSink {
    domain: String,
    link: LinkHandle,
    bridge: OnceLock<Weak<dyn Bridge>>,
}

impl RouterSink {
    /// A sink for the bridge on `domain`; call [`RouterSink::attach`] once it is built.
    pub fn new(domain: String, link: LinkHandle) -> Self {
        Self {
            domain,
            link,
            bridge: OnceLock::new(),
        }
    }

    /// Connects the sink to its bridge (which holds the sink, hence the weak reference).
    pub fn attach(&self, bridge: &Arc<dyn Bridge>) {
        let _ = self.bridge.set(Arc::downgrade(bridge));
    }

    /// The JID a foreign contact appears under.
    fn contact_jid(
        &self,
        bridge: &dyn Bridge,
        contact: &jabbridge_sdk::ForeignId,
    ) -> Result<Jid, CoreError> {
        let localpart = escape(&bridge.format_address(contact));
        format!("{localpart}@{}", self.domain)
            .parse()
            .map_err(|error| CoreError::Refused(format!("'{contact}' makes no valid JID: {error}")))
    }
}

#[async_trait]
impl CoreSink for RouterSink {
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        let bridge = self
            .bridge
            .get()
            .and_then(Weak::upgrade)
            .ok_or(CoreError::ShuttingDown)?;
        let from = self.contact_jid(bridge.as_ref(), &message.contact)?;
        let to: BareJid = message.user.as_str().parse().map_err(|error| {
            CoreError::Refused(format!("'{}' is not a JID: {error}", message.user))
        })?;
        let id = uuid::Uuid::new_v4().to_string();
        let mut stanza = Message::chat(Some(Jid::from(to)))
            .with_body(Lang::default(), message.text)
            .with_payload(OriginId { id: id.clone() });
        stanza.from = Some(from);
        stanza.id = Some(xmpp_parsers::message::Id(id));
        self.link
            .send(stanza.into())
            .await
            .map_err(|_| CoreError::ShuttingDown)
    }
}
