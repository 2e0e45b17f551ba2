//! Between one bridge's component link and the bridge: every stanza that arrives is checked
//! (domain, access, registration, rate) and becomes a protocol answer, a queued message or a
//! typed call on the bridge. One [`Gateway`] per `[[bridge]]`; [`Gateway::run`] drives it.
//!
//! The parts, each a module of free functions over the gateway: [`iq`] (disco, version,
//! registration form, prompt, ad-hoc commands), [`presence`] (XEP-0100 subscriptions and the
//! bridge's presence hooks), [`message`] (chat messages to contacts, commands by chat),
//! [`registration`], [`sessions`], [`commands`], [`rooms`] (group chats), and [`core_link`]
//! (what the bridge asks of the core).
//! Refusals become stanza errors in one place, `Gateway::refuse`; messages go to
//! [`crate::delivery`].

pub mod commands;
pub mod core_link;
pub mod iq;
pub mod message;
pub mod presence;
pub mod registration;
pub mod rooms;
pub mod sessions;

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;

use jabbridge_sdk::{Bridge, BridgeInfo, ForeignId, RoomId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tracing::Instrument;
use xmpp_parsers::jid::{self, BareJid, DomainPart, Jid, NodePart};
use xmpp_parsers::minidom::Element;

use crate::access::Access;
use crate::calls::Calls;
use crate::config::{CallLimits, DeliveryConfig, RoomsConfig, SpendLimit};
use crate::delivery::{self, Delivery};
use crate::lanes::{LINGER, Lanes, Pushed};
use crate::metrics;
use crate::store::{Store, StoreError};
use crate::xmpp::jid::{escape, unescape};
use crate::xmpp::session::LinkHandle;
use crate::xmpp::stanza::{StanzaFailure, StanzaHeader, error_reply};

pub use delivery::Wiring;

/// One bridge as the core sees it: its link, its store, its policy, its queues.
pub struct Gateway {
    /// The bridge's domain.
    pub domain: String,
    /// The domain as a JID's domain part, checked once (`None` when it is none: every JID
    /// of the gateway then fails to build, as it would when parsed).
    domain_part: Option<DomainPart>,
    /// The bridge.
    pub bridge: Arc<dyn Bridge>,
    /// The component link.
    pub link: LinkHandle,
    /// The database.
    pub store: Store,
    /// Who may use the bridge.
    pub access: Access,
    /// `[[bridge]] spend_limit`.
    spend: Option<SpendLimit>,
    /// The bridge's durable queues.
    pub delivery: Arc<Delivery>,
    /// The limits on calls into the bridge (shared with the delivery lanes).
    calls: Arc<Calls>,
    /// Registered users' online resources.
    online: presence::Online,
    /// Our users in rooms, and the rooms.
    rooms: Arc<rooms::Rooms>,
    /// Which users' sessions run.
    sessions: sessions::Sessions,
    /// `[bridge.rooms]`.
    rooms_config: RoomsConfig,
    /// Where the admin command `reload` goes.
    reload: Option<Reloads>,
    /// [`Policy::step_key`].
    step_key: [u8; 32],
    /// Timers of the leave grace period need the gateway; it is not theirs to keep alive.
    myself: std::sync::Weak<Gateway>,
    /// Stanzas waiting or being handled, per sender, in order, each with its row when
    /// another instance handed it off.
    lanes: Lanes<(Element, InHand, Option<i64>)>,
    /// Stanzas taken from the link and not yet handled ([`Gateway::settle`]).
    in_hand: Arc<std::sync::atomic::AtomicUsize>,
    /// Stanzas taken from the link and not yet handled, for all senders: when none is left,
    /// the gateway stops taking more and the link feels the backpressure.
    in_flight: Arc<Semaphore>,
    /// The bridge's tracing span: everything the gateway and its delivery log is in it.
    span: tracing::Span,
}

/// How the core treats one bridge's users: its `[[bridge]]` policy keys and `[delivery]`.
pub struct Policy {
    /// `allow`, `admins`, `rate_limit`.
    pub access: Access,
    /// `[delivery]`.
    pub delivery: DeliveryConfig,
    /// `concurrency`, `call_timeout`.
    pub calls: CallLimits,
    /// `spend_limit`.
    pub spend: Option<SpendLimit>,
    /// `[bridge.rooms]`.
    pub rooms: RoomsConfig,
    /// Where the admin command `reload` asks the process to read its config again; `None`
    /// where nothing can (the test harness).
    pub reload: Option<Reloads>,
    /// The key registration steps are sealed with for users: the same in every instance of
    /// the bridge (derived from its component secret), secret to users.
    pub step_key: [u8; 32],
}

/// Asks for a reload of the configuration file; the answer is what will change, or why
/// nothing does.
pub type Reloads = mpsc::Sender<ReloadRequest>;

/// An admin's `reload` command: which bridge it came through (its answer must leave before
/// that bridge's link closes, should the reload rebuild it), and where the outcome goes.
pub struct ReloadRequest {
    /// The domain of the bridge the command came through.
    pub from: String,
    /// Where the summary (or the refusal) goes.
    pub answer: tokio::sync::oneshot::Sender<Result<String, String>>,
}

/// A stanza's hold while it is handled: its slot among those in flight, and its count among
/// those in hand; both are given back when it is dropped.
struct InHand {
    _permit: OwnedSemaphorePermit,
    count: Arc<std::sync::atomic::AtomicUsize>,
}

impl InHand {
    fn new(permit: OwnedSemaphorePermit, count: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self {
            _permit: permit,
            count: count.clone(),
        }
    }
}

impl Drop for InHand {
    fn drop(&mut self) {
        self.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Stanzas one sender may have waiting; past it they are refused `resource-constraint`.
const LANE_DEPTH: usize = 2048;
/// Stanzas taken from the link and not yet handled, all senders together.
const IN_FLIGHT: usize = 8192;

/// A stanza's handling: an answer to send, nothing, or a refusal.
type Answer = Result<Option<Element>, StanzaFailure>;

/// The next stanza from the link (or handed off by another instance) once one more may be
/// in flight; `None` once the sender stops handing stanzas over. Cancel-safe: dropped
/// before a stanza came, it takes nothing.
async fn next_stanza<T>(
    incoming: &mut mpsc::Receiver<T>,
    in_flight: &Arc<Semaphore>,
) -> Option<(T, OwnedSemaphorePermit)> {
    let permit = in_flight.clone().acquire_owned().await.ok()?;
    let element = incoming.recv().await?;
    Some((element, permit))
}

impl Gateway {
    /// A gateway for a built bridge.
    pub fn new(
        domain: String,
        bridge: Arc<dyn Bridge>,
        wiring: Wiring,
        policy: Policy,
    ) -> Arc<Self> {
        let Policy {
            access,
            delivery,
            calls: limits,
            spend,
            rooms,
            reload,
            step_key,
        } = policy;
        let span = tracing::info_span!("bridge", bridge = %domain);
        let calls = Arc::new(Calls::new(&domain, &bridge.info().name, limits));
        let link = wiring.link.clone();
        let store = wiring.store.clone();
        let delivery = Delivery::new(
            &domain,
            bridge.clone(),
            calls.clone(),
            wiring,
            delivery,
            span.clone(),
        );
        let domain_part = DomainPart::new(&domain).ok().map(Cow::into_owned);
        Arc::new_cyclic(|myself| Self {
            domain,
            domain_part,
            bridge,
            link,
            store,
            access,
            spend,
            delivery: Arc::new(delivery),
            calls,
            online: presence::Online::default(),
            rooms: Arc::default(),
            sessions: sessions::Sessions::default(),
            rooms_config: rooms,
            reload,
            step_key,
            myself: myself.clone(),
            lanes: Lanes::new(LANE_DEPTH),
            in_flight: Arc::new(Semaphore::new(IN_FLIGHT)),
            in_hand: Arc::default(),
            span,
        })
    }

    /// What the bridge says about itself now. Asked each time, not kept: an external bridge
    /// knows its registration form and capabilities only once its process has answered.
    pub fn info(&self) -> BridgeInfo {
        self.bridge.info()
    }

    /// Waits until the stanzas this gateway took are handled (their answers handed to the
    /// link), at most `within`.
    pub async fn settle(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.in_hand.load(std::sync::atomic::Ordering::Acquire) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The bridge's tracing span.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Takes stanzas from the link until it stops handing them over (at shutdown), and puts
    /// each in its sender's lane: a sender's stanzas are handled in order, different senders'
    /// at the same time. Stanzas other instances handed off to this one join the same lanes.
    /// Meanwhile it serves what the bridge asks of the core. This loop itself never waits on
    /// the bridge.
    pub async fn run(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<Element>,
        mut requests: core_link::Requests,
    ) {
        let span = self.span.clone();
        async move {
            let mut lanes = JoinSet::new();
            let (handed, mut handed_off) = mpsc::channel(64);
            let picking = tokio::spawn(
                sessions::pick_up(self.clone(), handed, self.delivery.shutdown())
                    .instrument(self.span.clone()),
            );
            // Closed at once with one instance (SQLite): then the branch is left out.
            let mut handing = true;
            loop {
                tokio::select! {
                    Some(request) = requests.recv() => core_link::serve(&self, request).await,
                    handed = next_stanza(&mut handed_off, &self.in_flight), if handing => {
                        let Some(((element, row), permit)) = handed else {
                            handing = false;
                            continue;
                        };
                        while lanes.try_join_next().is_some() {}
                        self.take(element, permit, Some(row), &mut lanes).await;
                    }
                    taken = next_stanza(&mut incoming, &self.in_flight) => {
                        let Some((element, permit)) = taken else { break };
                        while lanes.try_join_next().is_some() {}
                        self.take(element, permit, None, &mut lanes).await;
                    }
                }
            }
            picking.abort();
            // Every call has a timeout, so this ends.
            lanes.join_all().await;
            sessions::stop_all(&self).await;
        }
        .instrument(span)
        .await;
    }

    /// Puts a stanza in its sender's lane, starting the lane's task if it had none.
    async fn take(
        self: &Arc<Self>,
        element: Element,
        permit: OwnedSemaphorePermit,
        handed_off: Option<i64>,
        lanes: &mut JoinSet<()>,
    ) {
        let sender = element
            .attr("from")
            .map(|from| from.split('/').next().unwrap_or(from).to_owned())
            .unwrap_or_default();
        let permit = InHand::new(permit, &self.in_hand);
        match self.lanes.push(&sender, (element, permit, handed_off)) {
            Pushed::Opened => {
                let gateway = self.clone();
                lanes.spawn(
                    async move {
                        while let Some((element, _permit, handed_off)) =
                            gateway.lanes.next_within(&sender, LINGER).await
                        {
                            gateway.handle(element, handed_off).await;
                        }
                    }
                    .instrument(self.span.clone()),
                );
            }
            Pushed::Queued => {}
            Pushed::Full((element, _permit, handed_off)) => {
                if let Some(row) = handed_off {
                    sessions::handled(self, row).await;
                }
                if let Some(header) = StanzaHeader::of(&element) {
                    let failure = StanzaFailure::ResourceConstraint(format!(
                        "{LANE_DEPTH} of your requests are still waiting; try again shortly"
                    ));
                    self.refuse(&header, &failure).await;
                }
            }
        }
    }

    /// Handles one stanza (`handed_off` by another instance, with its row): hands it off to
    /// the instance running its sender's session, answers it, or refuses it.
    async fn handle(&self, element: Element, handed_off: Option<i64>) {
        let Some(header) = StanzaHeader::of(&element) else {
            tracing::debug!(name = element.name(), "ignored a non-stanza element");
            if let Some(row) = handed_off {
                sessions::handled(self, row).await;
            }
            return;
        };
        let addressed_to_us = header
            .to
            .as_deref()
            .and_then(|to| to.parse::<Jid>().ok())
            .is_some_and(|to| to.domain().as_str() == self.domain);
        let route = match handed_off {
            None if addressed_to_us => {
                sessions::route(self, header.from.as_deref(), &element).await
            }
            _ => Ok(sessions::Route::Here),
        };
        let outcome = match route {
            Err(error) => {
                tracing::error!(%error, "cannot hand a stanza off to the instance running the session");
                Err(StanzaFailure::Internal)
            }
            Ok(sessions::Route::HandedOff) => return,
            Ok(sessions::Route::Here) if addressed_to_us => match element.name() {
                "iq" => iq::on_iq(self, element).await,
                "message" => message::on_message(self, element).await,
                _ => presence::on_presence(self, element).await,
            },
            Ok(sessions::Route::Here) => {
                // The server routed another domain's stanza over our link: answer it rather
                // than act for a domain that is not ours.
                tracing::warn!(
                    to = header.to.as_deref().unwrap_or(""),
                    "the XMPP server sent a stanza for another domain over this link; give each \
                 bridge its own component listener (ejabberd: bridge.server)"
                );
                Err(StanzaFailure::ServiceUnavailable)
            }
        };
        match outcome {
            Ok(Some(reply)) => self.send(reply).await,
            Ok(None) => {}
            Err(failure) => self.refuse(&header, &failure).await,
        }
        if let Some(row) = handed_off {
            sessions::handled(self, row).await;
        }
    }

    /// Answers a stanza with `failure` (where RFC 6120 allows an answer): the one place
    /// where a refusal becomes a stanza error.
    async fn refuse(&self, header: &StanzaHeader, failure: &StanzaFailure) {
        let from = header.from.as_deref().unwrap_or("");
        if matches!(failure, StanzaFailure::Forbidden(_)) {
            // Anyone on the federation can send these: counted in the metric, logged at
            // debug only, so that strangers cannot fill the log.
            tracing::debug!(from, %failure, "refused a stanza");
        } else {
            tracing::info!(from, %failure, "refused a stanza");
        }
        metrics::stanza_error(&self.domain, failure.condition());
        if let Some(reply) = error_reply(header, failure) {
            self.send(reply).await;
        }
    }

    /// Queues a stanza on the link.
    pub async fn send(&self, stanza: Element) {
        if self.link.send(stanza).await.is_err() {
            tracing::warn!("link stopped; a stanza was dropped at shutdown");
        }
    }

    /// Queues a stanza encoded already on the link (a copy of a room message).
    pub async fn send_encoded(&self, stanza: crate::xmpp::encode::Encoded) {
        if self.link.send_encoded(stanza).await.is_err() {
            tracing::warn!("link stopped; a stanza was dropped at shutdown");
        }
    }

    /// Runs a call into the bridge under its concurrency limit and call timeout. `what` says
    /// what the user was waiting for.
    pub async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = T>,
    ) -> Result<T, StanzaFailure> {
        self.calls
            .run(what, call)
            .await
            .map_err(|timeout| StanzaFailure::Timeout(timeout.0))
    }

    fn storage_failed(&self, error: StoreError) -> StanzaFailure {
        tracing::error!(%error, "storage failed");
        StanzaFailure::Internal
    }

    /// The room a JID on our domain names, for bridges with rooms.
    fn room_of(&self, to: &Jid) -> Option<RoomId> {
        if !self.bridge.capabilities().rooms {
            return None;
        }
        self.bridge.parse_room(&unescape(to.node()?.as_str()))
    }

    /// Starts the grace period after which `user`, whose last resource left `room`, leaves
    /// it for good (unless a resource joined meanwhile: `generation` moved).
    fn leave_later(&self, room: RoomId, user: String, generation: u64) {
        if let Some(gateway) = self.myself.upgrade() {
            tokio::spawn(
                rooms::leave_if_gone(gateway, room, user, generation).instrument(self.span()),
            );
        }
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
        let invalid = |error: jid::Error| format!("'{contact}' makes no valid JID: {error}");
        // From the parts: the domain's check (IDNA) is done once, not for every message.
        let Some(domain) = &self.domain_part else {
            return format!("{localpart}@{}", self.domain)
                .parse()
                .map_err(invalid);
        };
        let node = NodePart::new(&localpart).map_err(invalid)?;
        Ok(BareJid::from_parts(Some(&node), domain).into())
    }

    /// The gateway's own JID, its bare domain.
    fn gateway_jid(&self) -> Option<Jid> {
        self.domain.parse().ok()
    }

    /// Whether `user` is registered (always `true` for bridges without registration).
    pub async fn is_registered(&self, user: &str) -> Result<bool, StanzaFailure> {
        if !self.bridge.registers() {
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
        Ok(!self
            .store
            .identities_of(&self.domain, user)
            .await
            .map_err(|error| self.storage_failed(error))?
            .is_empty())
    }

    /// How many registered users have a resource online.
    pub fn online_users(&self) -> usize {
        self.online.count()
    }
}
