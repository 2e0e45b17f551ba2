//! Between one bridge's component link and the bridge: every stanza that arrives is checked
//! (domain, access, registration, rate) and becomes a protocol answer, a stored message or a
//! typed call on the bridge. One [`Gateway`] per `[[bridge]]`; [`Gateway::run`] drives it.
//!
//! Presence follows XEP-0100: after registering, the gateway asks to subscribe to the user;
//! its presence tells the user the state of their link to the foreign network; contacts are
//! approved as the bridge decides. Messages go through the durable queues of
//! [`crate::delivery`]; commands through [`crate::commands`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use jabbridge_sdk::{
    Attachment, Bridge, BridgeInfo, ChatState, CoreError, CoreSink, DeliveryReport, ForeignId,
    FormValues, IncomingMessage, MessageId, RegistrationData, RegistrationError, Shutdown, UserJid,
    UserStatus, async_trait,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use xmpp_parsers::{
    chatstates,
    iq::Iq,
    jid::{BareJid, Jid},
    message::{Lang, Message, MessageType},
    message_correct::Replace,
    minidom::Element,
    nick::Nick,
    ns,
    oob::Oob,
    presence::{Presence, Type as PresenceType},
    stanza_id::OriginId,
};

use crate::access::Access;
use crate::commit::Committer;
use crate::config::{CallLimits, DeliveryConfig};
use crate::delivery::{MAX_TEXT, OutboxEntry, Pipeline};
use crate::lanes::{Lanes, Pushed};
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::xmpp::adhoc;
use crate::xmpp::jid::{escape, unescape};
use crate::xmpp::register::{self, Submission};
use crate::xmpp::service::{self, Target};
use crate::xmpp::session::{LinkHandle, is_keepalive_id};
use crate::xmpp::stanza::{StanzaFailure, StanzaHeader, error_presence, error_reply};

/// One bridge as the core sees it: its link, its store, its policy, its queues.
pub struct Gateway {
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
    /// Who may use the bridge.
    pub access: Access,
    /// How queued messages are delivered.
    pub delivery: DeliveryConfig,
    /// Where writes to the durable queues go, to be committed in batches.
    pub(crate) committer: Committer,
    /// The messages in hand, per conversation.
    pub(crate) pipeline: Pipeline,
    /// Tells lanes and workers to stop.
    pub(crate) shutdown: Shutdown,
    /// Registered users' online resources, to tell the bridge who is online.
    online: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Stanzas waiting or being handled, per sender, in order.
    lanes: Lanes<(Element, OwnedSemaphorePermit)>,
    /// Stanzas taken from the link and not yet handled, for all senders: when none is left,
    /// the router stops taking more and the link feels the backpressure.
    in_flight: Arc<Semaphore>,
    /// Calls into the bridge running now (`[[bridge]] concurrency`).
    calls: Semaphore,
    /// How long one call into the bridge may take (`[[bridge]] call_timeout`).
    call_timeout: Duration,
}

/// Stanzas one sender may have waiting; past it they are refused `resource-constraint`.
const LANE_DEPTH: usize = 2048;
/// Stanzas taken from the link and not yet handled, all senders together.
const IN_FLIGHT: usize = 8192;

type Answer = Result<Option<Element>, StanzaFailure>;

/// What a gateway shares with the rest of the process.
pub struct Wiring {
    /// Its component link.
    pub link: LinkHandle,
    /// The database.
    pub store: Store,
    /// Where writes to the durable queues go.
    pub committer: Committer,
    /// Tells everything to stop.
    pub shutdown: Shutdown,
}

impl Gateway {
    /// A gateway for a built bridge.
    pub fn new(
        domain: String,
        bridge: Arc<dyn Bridge>,
        wiring: Wiring,
        access: Access,
        delivery: DeliveryConfig,
        calls: CallLimits,
    ) -> Self {
        let info = bridge.info();
        let Wiring {
            link,
            store,
            committer,
            shutdown,
        } = wiring;
        Self {
            domain,
            bridge,
            info,
            link,
            store,
            access,
            delivery,
            committer,
            pipeline: Pipeline::default(),
            shutdown,
            online: Mutex::new(HashMap::new()),
            lanes: Lanes::new(LANE_DEPTH),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            calls: Semaphore::new(calls.concurrency),
            call_timeout: calls.timeout,
        }
    }

    /// Takes stanzas from the link until it stops handing them over (at shutdown), and puts
    /// each in its sender's lane: a sender's stanzas are handled in order, different senders'
    /// at the same time. This loop itself never waits on the store or the bridge.
    pub async fn run(self: Arc<Self>, mut incoming: mpsc::Receiver<Element>) {
        let mut lanes = JoinSet::new();
        while let Some(element) = incoming.recv().await {
            while lanes.try_join_next().is_some() {}
            let Ok(permit) = self.in_flight.clone().acquire_owned().await else {
                break;
            };
            let sender = element
                .attr("from")
                .map(|from| from.split('/').next().unwrap_or(from).to_owned())
                .unwrap_or_default();
            match self.lanes.push(&sender, (element, permit)) {
                Pushed::Opened => {
                    let gateway = self.clone();
                    lanes.spawn(async move {
                        while let Some((element, _permit)) = gateway.lanes.next(&sender) {
                            gateway.handle(element).await;
                        }
                    });
                }
                Pushed::Queued => {}
                Pushed::Full((element, _permit)) => {
                    if let Some(header) = StanzaHeader::of(&element) {
                        let failure = StanzaFailure::ResourceConstraint(format!(
                            "{LANE_DEPTH} of your requests are still waiting; try again shortly"
                        ));
                        self.refuse(&header, &failure).await;
                    }
                }
            }
        }
        // Every call has a timeout, so this ends.
        lanes.join_all().await;
    }

    /// Runs a call into the bridge under its concurrency limit and call timeout (waiting for
    /// a turn counts against the timeout). `what` says what the user was waiting for.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, StanzaFailure> {
        let limited = async {
            let _turn = self.calls.acquire().await;
            call.await
        };
        tokio::time::timeout(self.call_timeout, limited)
            .await
            .map_err(|_| {
                metrics::bridge_timeout(&self.domain);
                StanzaFailure::Timeout(format!(
                    "{} did not answer {what} within {}",
                    self.info.name,
                    humantime::format_duration(self.call_timeout)
                ))
            })
    }

    /// Answers a stanza with `failure` (where RFC 6120 allows an answer).
    async fn refuse(&self, header: &StanzaHeader, failure: &StanzaFailure) {
        let from = header.from.as_deref().unwrap_or("");
        if matches!(failure, StanzaFailure::Forbidden(_)) {
            // Anyone on the federation can send these: counted in the metric, logged at
            // debug only, so that strangers cannot fill the log.
            tracing::debug!(bridge = %self.domain, from, %failure, "refused a stanza");
        } else {
            tracing::info!(bridge = %self.domain, from, %failure, "refused a stanza");
        }
        metrics::stanza_error(&self.domain, failure.condition());
        if let Some(reply) = error_reply(header, failure) {
            self.send(reply).await;
        }
    }

    async fn handle(self: &Arc<Self>, element: Element) {
        let Some(header) = StanzaHeader::of(&element) else {
            tracing::debug!(bridge = %self.domain, name = element.name(), "ignored a non-stanza element");
            return;
        };
        let addressed_to_us = header
            .to
            .as_deref()
            .and_then(|to| to.parse::<Jid>().ok())
            .is_some_and(|to| to.domain().as_str() == self.domain);
        let outcome = if addressed_to_us {
            match element.name() {
                "iq" => self.on_iq(element).await,
                "message" => self.on_message(element).await,
                _ => self.on_presence(element).await,
            }
        } else {
            // The server routed another domain's stanza over our link: answer it rather
            // than act for a domain that is not ours.
            tracing::warn!(
                bridge = %self.domain,
                to = header.to.as_deref().unwrap_or(""),
                "the XMPP server sent a stanza for another domain over this link; give each \
                 bridge its own component listener (ejabberd: bridge.server)"
            );
            Err(StanzaFailure::ServiceUnavailable)
        };
        match outcome {
            Ok(Some(reply)) => self.send(reply).await,
            Ok(None) => {}
            Err(failure) => self.refuse(&header, &failure).await,
        }
    }

    /// Queues a stanza on the link.
    pub async fn send(&self, stanza: Element) {
        if self.link.send(stanza).await.is_err() {
            tracing::warn!(bridge = %self.domain, "link stopped; a stanza was dropped at shutdown");
        }
    }

    fn storage_failed(&self, error: StoreError) -> StanzaFailure {
        tracing::error!(bridge = %self.domain, %error, "storage failed");
        StanzaFailure::Internal
    }

    /// The localpart of a JID on our domain, parsed by the bridge.
    fn contact_of(&self, to: &Jid) -> Result<Option<ForeignId>, StanzaFailure> {
        match to.node() {
            None => Ok(None),
            Some(node) => self
                .bridge
                .parse_address(&unescape(node.as_str()))
                .map(Some)
                .map_err(|error| StanzaFailure::JidMalformed(error.0)),
        }
    }

    /// The JID a foreign contact appears under: the bridge's name for it, XEP-0106-escaped.
    pub fn contact_jid(&self, contact: &ForeignId) -> Result<Jid, String> {
        let localpart = escape(&self.bridge.format_address(contact));
        format!("{localpart}@{}", self.domain)
            .parse()
            .map_err(|error| format!("'{contact}' makes no valid JID: {error}"))
    }

    fn gateway_jid(&self) -> Option<Jid> {
        self.domain.parse().ok()
    }

    /// Whether `user` is registered (always `true` for bridges without registration).
    pub async fn is_registered(&self, user: &str) -> Result<bool, StanzaFailure> {
        if self.info.registration.is_none() {
            return Ok(true);
        }
        Ok(self
            .store
            .registration(&self.domain, user)
            .await
            .map_err(|error| self.storage_failed(error))?
            .is_some())
    }

    /// Whether `user` may use the bridge: registered, or the owner of one of its identities
    /// (a phone number an admin assigned them).
    pub async fn is_member(&self, user: &str) -> Result<bool, StanzaFailure> {
        if self.is_registered(user).await? {
            return Ok(true);
        }
        self.owns_identity(user)
            .await
            .map_err(|error| self.storage_failed(error))
    }

    /// Whether `user` owns one of the bridge's foreign identities (which lets them use it
    /// without registering).
    pub async fn owns_identity(&self, user: &str) -> Result<bool, StoreError> {
        Ok(!self
            .store
            .identities_of(&self.domain, user)
            .await?
            .is_empty())
    }

    async fn on_iq(&self, element: Element) -> Answer {
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
        let answer = self.answer_iq(is_set, &from, to.as_ref(), &payload).await;
        service::reply(from, to, id, answer).map(Some)
    }

    async fn answer_iq(
        &self,
        is_set: bool,
        from: &Jid,
        to: Option<&Jid>,
        payload: &Element,
    ) -> service::IqAnswer {
        let user = from.to_bare().to_string();
        let to_gateway = to.is_none_or(|to| to.node().is_none());
        let namespace = payload.ns();
        let protocol = (payload.name(), namespace.as_str());
        match (to_gateway, is_set, protocol) {
            (true, false, ("query", ns::REGISTER)) => {
                self.access.check(&user)?;
                self.registration_form(&user).await
            }
            (true, true, ("query", ns::REGISTER)) => {
                self.access.check(&user)?;
                self.registration_submitted(&user, payload).await
            }
            (true, false, ("query", service::GATEWAY)) => {
                self.access.check(&user)?;
                Ok(Some(service::prompt_query(&self.info.prompt)))
            }
            (true, true, ("query", service::GATEWAY)) => {
                self.access.check(&user)?;
                let typed = service::read_prompt(payload)?;
                let contact = self
                    .bridge
                    .parse_address(typed.trim())
                    .map_err(|error| StanzaFailure::NotAcceptable(error.0))?;
                let jid = self
                    .contact_jid(&contact)
                    .map_err(StanzaFailure::NotAcceptable)?;
                Ok(Some(service::prompt_answer(&jid)))
            }
            (true, true, ("command", adhoc::NS)) => {
                let role = self.access.check(&user)?;
                let request = adhoc::Request::parse(payload)?;
                let outcome = if request.cancelled {
                    None
                } else {
                    Some(
                        self.run_command(&user, role, &request.node, request.values)
                            .await?,
                    )
                };
                Ok(Some(adhoc::response(
                    &request.node,
                    &request.session,
                    outcome,
                )))
            }
            (true, false, ("query", ns::DISCO_ITEMS))
                if payload.attr("node") == Some(adhoc::NS) =>
            {
                let commands = match self.access.role(&user) {
                    Some(role) => self.catalog(Some(role)),
                    None => Vec::new(),
                };
                Ok(Some(adhoc::command_list(&self.domain, &commands).into()))
            }
            (true, false, ("query", ns::DISCO_INFO)) if payload.attr("node").is_some() => {
                let node = payload.attr("node").unwrap_or_default();
                adhoc::node_info(node, &self.catalog(None)).map(Some)
            }
            (_, true, _) => Err(StanzaFailure::ServiceUnavailable),
            (true, false, _) => service::answer_get(&self.info, Target::Gateway, payload),
            (false, false, _) => {
                let contact = to
                    .map(|to| self.contact_of(to))
                    .transpose()?
                    .flatten()
                    .map(|contact| self.bridge.format_address(&contact))
                    .unwrap_or_default();
                service::answer_get(&self.info, Target::Contact(&contact), payload)
            }
        }
    }

    /// XEP-0077 `get`: the bridge's form, saying whether the user is registered.
    async fn registration_form(&self, user: &str) -> service::IqAnswer {
        let form = self
            .info
            .registration
            .as_ref()
            .ok_or(StanzaFailure::ServiceUnavailable)?;
        let registered = self.is_registered(user).await?;
        Ok(Some(register::form_query(form, registered)))
    }

    /// XEP-0077 `set`: register, re-register (update) or remove.
    async fn registration_submitted(&self, user: &str, payload: &Element) -> service::IqAnswer {
        let form = self
            .info
            .registration
            .as_ref()
            .ok_or(StanzaFailure::ServiceUnavailable)?;
        match register::parse_submission(payload, form)? {
            Submission::Remove => self.unregister_user(user, false).await?,
            Submission::Register(values) => {
                self.register_user(user, &values).await?;
            }
        }
        Ok(None)
    }

    /// Registers `user` with `values` (checked by the form, then by the bridge) or updates
    /// their registration. A new registration asks to subscribe to the user's presence, so
    /// that the gateway appears in their roster. Returns whether it was new.
    pub async fn register_user(
        &self,
        user: &str,
        values: &FormValues,
    ) -> Result<bool, StanzaFailure> {
        let form = self.info.registration.as_ref().ok_or_else(|| {
            StanzaFailure::FeatureNotImplemented(format!("{} needs no registration", self.domain))
        })?;
        form.validate(values)
            .map_err(StanzaFailure::NotAcceptable)?;
        let data = self
            .call(
                "the registration",
                self.bridge.register(&UserJid::new(user), values),
            )
            .await?
            .map_err(|error| match error {
                RegistrationError::Rejected(reason) => StanzaFailure::NotAcceptable(reason),
                RegistrationError::Unavailable(reason) => StanzaFailure::Unavailable(reason),
            })?;
        let new = !self.is_registered(user).await?;
        self.store
            .put_registration(&self.domain, user, &data)
            .await
            .map_err(|error| self.storage_failed(error))?;
        tracing::info!(bridge = %self.domain, user, new, "user registered");
        if new && let Ok(to) = user.parse::<BareJid>() {
            let mut subscribe = Presence::new(PresenceType::Subscribe)
                .with_to(to)
                .with_payloads(vec![Nick(self.info.name.clone()).into()]);
            subscribe.from = self.gateway_jid();
            self.send(subscribe.into()).await;
        }
        Ok(new)
    }

    /// Unregisters `user`: deletes their registration (and, when an admin removes them, the
    /// identities an admin gave them) and ends the gateway's presence subscription both ways
    /// (XEP-0100 §4.3). A user unregistering keeps what an admin gave them.
    pub async fn unregister_user(&self, user: &str, by_admin: bool) -> Result<(), StanzaFailure> {
        let removed = self
            .store
            .delete_registration(&self.domain, user, by_admin)
            .await
            .map_err(|error| self.storage_failed(error))?;
        if !removed {
            return Err(StanzaFailure::ItemNotFound(format!(
                "{user} is not registered with {}",
                self.domain
            )));
        }
        tracing::info!(bridge = %self.domain, user, "user unregistered");
        if let Ok(to) = user.parse::<BareJid>() {
            for type_ in [
                PresenceType::Unsubscribe,
                PresenceType::Unsubscribed,
                PresenceType::Unavailable,
            ] {
                let mut presence = Presence::new(type_).with_to(to.clone());
                presence.from = self.gateway_jid();
                self.send(presence.into()).await;
            }
        }
        self.went_offline(user, None).await;
        Ok(())
    }

    /// The gateway's presence for `user`, from the bridge's state of their link.
    fn gateway_presence(&self, user: &BareJid, status: UserStatus) -> Option<Element> {
        let from = self.gateway_jid()?;
        let to = Jid::from(user.clone());
        Some(match status {
            UserStatus::Connected(text) => {
                let mut presence = Presence::available().with_to(to);
                presence.from = Some(from);
                if let Some(text) = text {
                    presence.set_status(Lang::default(), text);
                }
                presence.into()
            }
            UserStatus::Unavailable(text) => {
                let mut presence = Presence::new(PresenceType::Unavailable).with_to(to);
                presence.from = Some(from);
                presence.set_status(Lang::default(), text);
                presence.into()
            }
            UserStatus::BadCredentials(text) => {
                error_presence(from, to, &StanzaFailure::NotAuthorized(text))
            }
        })
    }

    /// A presence of `type_` from a contact to `user`, with the contact's nick if known.
    fn contact_presence(
        &self,
        contact: &ForeignId,
        to: &Jid,
        type_: PresenceType,
    ) -> Option<Element> {
        let from = self.contact_jid(contact).ok()?;
        let mut presence = Presence::new(type_).with_to(Jid::from(to.to_bare()));
        presence.from = Some(from);
        if let Some(name) = self.bridge.contact_name(contact) {
            presence = presence.with_payloads(vec![Nick(name).into()]);
        }
        Some(presence.into())
    }

    async fn on_presence(&self, element: Element) -> Answer {
        let presence = Presence::try_from(element).map_err(|error| {
            StanzaFailure::BadRequest(format!("this presence does not parse: {error}"))
        })?;
        let (Some(from), Some(to)) = (presence.from.clone(), presence.to.clone()) else {
            return Ok(None);
        };
        if presence.type_ == PresenceType::Error {
            return Ok(None);
        }
        let user = from.to_bare();
        if self.access.role(user.as_str()).is_none() {
            // Strangers get an answer only when they ask for something.
            if presence.type_ == PresenceType::Subscribe {
                self.access.check(user.as_str())?;
            }
            return Ok(None);
        }
        let contact = self.contact_of(&to)?;
        let registered = self.is_member(user.as_str()).await?;
        let reply = |type_: PresenceType| {
            let mut presence = Presence::new(type_).with_to(Jid::from(user.clone()));
            presence.from = Some(Jid::from(to.to_bare()));
            presence.into()
        };
        match presence.type_ {
            PresenceType::Subscribe if !registered => Ok(Some(reply(PresenceType::Unsubscribed))),
            PresenceType::Subscribe => match contact {
                None => {
                    self.send(reply(PresenceType::Subscribed)).await;
                    let status = self.bridge.user_status(&UserJid::new(user.as_str()));
                    Ok(self.gateway_presence(&user, status))
                }
                Some(contact) => {
                    let approved = self
                        .call(
                            "the subscription request",
                            self.bridge
                                .subscription_requested(&UserJid::new(user.as_str()), &contact),
                        )
                        .await?;
                    if !approved {
                        return Ok(Some(reply(PresenceType::Unsubscribed)));
                    }
                    let to_user = Jid::from(user.clone());
                    for type_ in [PresenceType::Subscribed, PresenceType::None] {
                        if let Some(presence) = self.contact_presence(&contact, &to_user, type_) {
                            self.send(presence).await;
                        }
                    }
                    Ok(None)
                }
            },
            PresenceType::Subscribed => match contact {
                None => {
                    let status = self.bridge.user_status(&UserJid::new(user.as_str()));
                    Ok(self.gateway_presence(&user, status))
                }
                Some(_) => Ok(None),
            },
            PresenceType::Unsubscribe => Ok(Some(reply(PresenceType::Unsubscribed))),
            PresenceType::Unsubscribed => Ok(None),
            PresenceType::Probe if !registered => Ok(Some(reply(PresenceType::Unsubscribed))),
            PresenceType::Probe => Ok(match contact {
                None => {
                    let status = self.bridge.user_status(&UserJid::new(user.as_str()));
                    self.gateway_presence(&user, status)
                }
                Some(contact) => {
                    self.contact_presence(&contact, &Jid::from(user.clone()), PresenceType::None)
                }
            }),
            PresenceType::None if registered => {
                if self.came_online(&from).await && contact.is_none() {
                    let status = self.bridge.user_status(&UserJid::new(user.as_str()));
                    return Ok(self.gateway_presence(&user, status));
                }
                Ok(None)
            }
            PresenceType::Unavailable if registered => {
                self.went_offline(user.as_str(), from.resource().map(|r| r.as_str()))
                    .await;
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Records an online resource; tells the bridge when it is the user's first. Returns
    /// whether the resource is new.
    async fn came_online(&self, from: &Jid) -> bool {
        let user = from.to_bare().to_string();
        let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
        let (new_resource, first) = match self.online.lock() {
            Ok(mut online) => {
                let resources = online.entry(user.clone()).or_default();
                let first = resources.is_empty();
                (resources.insert(resource), first)
            }
            Err(_) => (false, false),
        };
        if first && new_resource {
            tracing::debug!(bridge = %self.domain, user, "user online");
            self.presence_hook(&user, true).await;
        }
        new_resource
    }

    /// Forgets one resource (or all with `None`); tells the bridge when none is left.
    async fn went_offline(&self, user: &str, resource: Option<&str>) {
        let last = match self.online.lock() {
            Ok(mut online) => {
                let emptied = match (online.get_mut(user), resource) {
                    (Some(resources), Some(resource)) => {
                        resources.remove(resource) && resources.is_empty()
                    }
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if emptied {
                    online.remove(user);
                }
                emptied
            }
            Err(_) => false,
        };
        if last {
            tracing::debug!(bridge = %self.domain, user, "user offline");
            self.presence_hook(user, false).await;
        }
    }

    /// Tells the bridge a user came online or went offline.
    async fn presence_hook(&self, user: &str, online: bool) {
        let user = UserJid::new(user);
        let hook = self.bridge.user_presence(&user, online);
        if let Err(failure) = self.call("a presence change", hook).await {
            tracing::warn!(bridge = %self.domain, %user, %failure, "a presence hook timed out");
        }
    }

    /// How many registered users have a resource online.
    pub fn online_users(&self) -> usize {
        self.online.lock().map(|online| online.len()).unwrap_or(0)
    }

    async fn on_message(self: &Arc<Self>, element: Element) -> Answer {
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
        let user = from.to_bare().to_string();
        // Bodies come keyed by language (servers stamp xml:lang); take the first non-empty.
        let text = message
            .bodies
            .values()
            .find(|body| !body.trim().is_empty())
            .cloned();
        let contact = self.contact_of(&to)?;
        let role = match (&text, &contact) {
            // Typing notifications, receipts and markers from strangers: drop quietly.
            (None, _) => match self.access.role(&user) {
                Some(role) => role,
                None => return Ok(None),
            },
            _ => self.access.check(&user)?,
        };
        let Some(contact) = contact else {
            let Some(text) = text else { return Ok(None) };
            // Commands cost database work: they count against the rate limit too.
            self.access.take(&user)?;
            let reply = self.chat_command(&user, role, &text).await;
            let mut answer = Message::chat(Some(from)).with_body(Lang::default(), reply);
            answer.from = Some(to);
            return Ok(Some(answer.into()));
        };
        if message.type_ == MessageType::Groupchat {
            return Err(StanzaFailure::FeatureNotImplemented(
                "this bridge does not carry group chat messages".into(),
            ));
        }
        let Some(text) = text else {
            self.pass_chat_state(&message, &user, contact).await;
            return Ok(None);
        };
        let replaces = message
            .payloads
            .iter()
            .find_map(|payload| Replace::try_from(payload.clone()).ok())
            .map(|replace| replace.id.0);
        if replaces.is_some() && !self.info.capabilities.corrections {
            return Err(StanzaFailure::FeatureNotImplemented(format!(
                "{} cannot carry corrections: the correction was not sent; send a new message",
                self.info.name
            )));
        }
        if !self.is_member(&user).await? {
            return Err(StanzaFailure::RegistrationRequired(format!(
                "register with {} first (service discovery, or send 'help' to {})",
                self.domain, self.domain
            )));
        }
        if text.len() > MAX_TEXT {
            return Err(StanzaFailure::NotAcceptable(format!(
                "the message is {} bytes; at most {MAX_TEXT} are carried",
                text.len()
            )));
        }
        self.access.take(&user)?;
        let stanza_id = message.id.clone().map(|id| id.0);
        let id = message
            .payloads
            .iter()
            .find_map(|payload| OriginId::try_from(payload.clone()).ok())
            .map(|origin| origin.id)
            .or_else(|| stanza_id.clone())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let entry = OutboxEntry {
            id,
            stanza_id,
            from: from.to_string(),
            to: to.to_string(),
            contact: contact.to_string(),
            text,
            receipt: message
                .payloads
                .iter()
                .any(|payload| payload.is("request", ns::RECEIPTS)),
            replaces,
            attachments: message
                .payloads
                .iter()
                .filter_map(|payload| Oob::try_from(payload.clone()).ok())
                .map(|oob| Attachment {
                    url: oob.url,
                    description: oob.desc.filter(|desc| !desc.is_empty()),
                })
                .collect(),
            accepted_at: Some(crate::store::now_millis()),
        };
        self.accept_outgoing(entry).await?;
        Ok(None)
    }

    /// Passes a typing notification to a bridge that declared it; drops it otherwise.
    async fn pass_chat_state(&self, message: &Message, user: &str, contact: ForeignId) {
        if !self.info.capabilities.chat_states {
            return;
        }
        let Some(state) = message
            .payloads
            .iter()
            .find_map(|payload| chatstates::ChatState::try_from(payload.clone()).ok())
        else {
            return;
        };
        let state = match state {
            chatstates::ChatState::Active => ChatState::Active,
            chatstates::ChatState::Composing => ChatState::Composing,
            chatstates::ChatState::Gone => ChatState::Gone,
            chatstates::ChatState::Inactive => ChatState::Inactive,
            chatstates::ChatState::Paused => ChatState::Paused,
        };
        if matches!(self.is_member(user).await, Ok(true)) {
            let user = UserJid::new(user);
            let call = self.bridge.send_chat_state(&user, &contact, state);
            if let Err(failure) = self.call("a chat state", call).await {
                tracing::debug!(bridge = %self.domain, %user, %failure, "a chat state was not passed on");
            }
        }
    }
}

/// The core side of [`jabbridge_sdk::Core`] for one bridge: stores its messages in the
/// inbox and turns its status changes into presence.
pub struct RouterSink {
    gateway: OnceLock<Weak<Gateway>>,
}

impl RouterSink {
    /// A sink to [`RouterSink::attach`] once the gateway exists (the bridge, built first,
    /// holds the sink; the gateway holds the bridge: hence the weak reference).
    pub fn new() -> Self {
        Self {
            gateway: OnceLock::new(),
        }
    }

    /// Connects the sink to its gateway.
    pub fn attach(&self, gateway: &Arc<Gateway>) {
        let _ = self.gateway.set(Arc::downgrade(gateway));
    }

    fn gateway(&self) -> Result<Arc<Gateway>, CoreError> {
        self.gateway
            .get()
            .and_then(Weak::upgrade)
            .ok_or(CoreError::ShuttingDown)
    }
}

impl Default for RouterSink {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl CoreSink for RouterSink {
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        self.gateway()?.accept_incoming(message).await
    }

    async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError> {
        let gateway = self.gateway()?;
        let to: BareJid = user
            .as_str()
            .parse()
            .map_err(|error| CoreError::Refused(format!("'{user}' is not a JID: {error}")))?;
        if let Some(presence) = gateway.gateway_presence(&to, status) {
            gateway.send(presence).await;
        }
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        let gateway = self.gateway()?;
        gateway
            .store
            .state(&gateway.domain, key)
            .await
            .map_err(|error| state_unavailable(&gateway.domain, &error))
    }

    async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError> {
        let gateway = self.gateway()?;
        gateway
            .store
            .put_state(&gateway.domain, key, value.as_ref())
            .await
            .map_err(|error| state_unavailable(&gateway.domain, &error))
    }

    async fn report(&self, message: MessageId, report: DeliveryReport) -> Result<(), CoreError> {
        self.gateway()?
            .delivery_report(message.as_str(), report)
            .await
    }

    async fn owner(&self, identity: ForeignId) -> Result<Option<UserJid>, CoreError> {
        let gateway = self.gateway()?;
        Ok(gateway
            .store
            .identity_owner(&gateway.domain, identity.as_str())
            .await
            .map_err(|error| state_unavailable(&gateway.domain, &error))?
            .map(UserJid::new))
    }

    async fn set_owner(
        &self,
        identity: ForeignId,
        owner: Option<UserJid>,
    ) -> Result<(), CoreError> {
        let gateway = self.gateway()?;
        let done = match owner {
            Some(owner) => {
                let owner: BareJid = owner.as_str().parse().map_err(|error| {
                    CoreError::Refused(format!("'{owner}' is not a bare JID: {error}"))
                })?;
                gateway
                    .store
                    .put_identity(&gateway.domain, identity.as_str(), owner.as_str())
                    .await
            }
            None => gateway
                .store
                .delete_identity(&gateway.domain, identity.as_str())
                .await
                .map(|_| ()),
        };
        done.map_err(|error| state_unavailable(&gateway.domain, &error))
    }

    async fn identities(&self, user: UserJid) -> Result<Vec<ForeignId>, CoreError> {
        let gateway = self.gateway()?;
        Ok(gateway
            .store
            .identities_of(&gateway.domain, user.as_str())
            .await
            .map_err(|error| state_unavailable(&gateway.domain, &error))?
            .into_iter()
            .map(ForeignId::new)
            .collect())
    }

    async fn registration(&self, user: UserJid) -> Result<Option<RegistrationData>, CoreError> {
        let gateway = self.gateway()?;
        gateway
            .store
            .registration(&gateway.domain, user.as_str())
            .await
            .map_err(|error| state_unavailable(&gateway.domain, &error))
    }
}

fn state_unavailable(domain: &str, error: &StoreError) -> CoreError {
    tracing::error!(bridge = %domain, %error, "cannot read or write a bridge's state");
    CoreError::Refused("the gateway cannot reach its database right now".into())
}
