//! One XEP-0114 component link to the XMPP server, kept up whatever happens.
//!
//! Built on tokio-xmpp's `xmlstream` layer rather than its `Component` wrapper, because that
//! wrapper ends its stream on the first stanza it cannot parse, on 60 s of silence, and never
//! reconnects. Here:
//! - stanzas are read as plain [`Element`]s, so a stanza that does not parse as a message,
//!   presence or iq still reaches the gateway, which answers it with a stanza error;
//! - silence for `keepalive` sends a XEP-0199 ping (to our own domain, through the server);
//!   no answer within `keepalive_timeout` declares the link dead;
//! - any disconnect reconnects with capped exponential backoff and jitter;
//! - stanzas queued while the link is down wait in a bounded queue and go out after the
//!   handshake;
//! - a stanza sent with [`LinkHandle::send_and_confirm`] counts as delivered only once the
//!   server has it: writes are followed by a XEP-0199 ping to our own domain (at most one
//!   per 25 ms), and reading that ping back (the server handles a component's stanzas in order) acks
//!   everything written before it. What was written but not acked when the link broke is
//!   written again, first and in order, on the next link;
//! - stanzas are read with bounds on their shape ([`super::bounded`]); one over a bound is
//!   answered `policy-violation` here and goes no further;
//! - every stanza is made XML-safe ([`super::xml_safe`]) just before it is written (a room
//!   message's copy once, as its template); one that still cannot be written is dropped
//!   with an error, never retried, so it cannot end the link or block the queue behind it;
//! - after the handshake the link encodes stanzas itself ([`super::encode`]) into one
//!   buffer, written to the socket in one go per burst.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jabbridge_sdk::Shutdown;
use secrecy::{ExposeSecret, SecretString};
use tokio::io::BufStream;
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;
use tokio_xmpp::xmlstream::{ReadError, StreamHeader, Timeouts, XmlStream, initiate_stream};
use xmpp_parsers::{component::Handshake, iq::Iq, jid::Jid, minidom::Element, ns, ping::Ping};

use super::bounded::{Inbound, MAX_DEPTH};
use super::depth_guard::DepthGuard;
use super::encode::{Encoded, StanzaEncoder};
use super::stanza::{StanzaFailure, StanzaHeader, error_reply};
use super::xml_safe::{Unwritable, make_writable};
use crate::metrics;

type Stream = XmlStream<BufStream<DepthGuard<TcpStream>>, Inbound>;

/// Elements the depth guard lets be open at once: the stream's root, then a stanza one level
/// deeper than [`MAX_DEPTH`], so that the stanza's own bound is what refuses it.
const GUARD_DEPTH: usize = MAX_DEPTH + 2;

/// What a link needs to know; one per `[[bridge]]`.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// `host:port` of the component listener.
    pub server: String,
    /// The component domain.
    pub domain: String,
    /// The shared secret.
    pub secret: SecretString,
    /// The bridge's index in the config file, to name the keys to fix in errors.
    pub index: usize,
    /// Silence before a ping.
    pub keepalive: Duration,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_max: Duration,
}

/// The link's state as others see it (readiness, status).
#[derive(Debug, Default)]
pub struct LinkState {
    connected: AtomicBool,
    up: Notify,
    last_error: std::sync::Mutex<Option<String>>,
}

impl LinkState {
    /// Whether the handshake has completed and the link is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Resolves once the link is up (at once if it is).
    pub async fn wait_connected(&self) {
        loop {
            let notified = self.up.notified();
            if self.is_connected() {
                return;
            }
            notified.await;
        }
    }

    fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Release);
        if connected {
            self.up.notify_waiters();
        }
    }

    /// Why the link last went down or failed to come up.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .map(|error| error.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn set_error(&self, error: Option<String>) {
        match self.last_error.lock() {
            Ok(mut slot) => *slot = error,
            Err(poisoned) => *poisoned.into_inner() = error,
        }
    }
}

/// Why a link could not be set up or went down.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// TCP or stream-level I/O failed.
    #[error("cannot reach the XMPP server at {server} (check xmpp.server): {source}")]
    Unreachable {
        /// Where we tried.
        server: String,
        /// What failed.
        source: std::io::Error,
    },
    /// The server refused the handshake: what to fix (naming the key), and what the server
    /// said.
    #[error("{advice}{detail}")]
    Refused {
        /// Which key to fix; shown on `/ready`.
        advice: String,
        /// The server's own words (logged only).
        detail: String,
    },
    /// The link was up and broke.
    #[error("link lost: {0}")]
    Lost(String),
    /// The server closed the stream.
    #[error("the server closed the stream{0}")]
    Closed(String),
}

impl LinkError {
    /// What `/ready` shows: what is wrong and which key to check, without the raw error
    /// text (addresses, the server's words), which goes to the log.
    pub fn summary(&self) -> String {
        match self {
            Self::Unreachable { .. } => {
                "cannot reach the XMPP server (check xmpp.server; details in the log)".into()
            }
            Self::Refused { advice, .. } => advice.clone(),
            Self::Lost(_) => "the link to the XMPP server was lost (details in the log)".into(),
            Self::Closed(_) => "the XMPP server closed the stream (details in the log)".into(),
        }
    }
}

/// A stanza waiting to go out, and who wants to know once it was written (or found
/// unwritable), and once the server acknowledged it.
#[derive(Debug)]
pub struct Outgoing {
    stanza: Stanza,
    written: Option<oneshot::Sender<Result<(), Unwritable>>>,
    acked: Option<OnAck>,
}

/// What goes out: a stanza to make writable and encode, or one encoded already (a room
/// message's copy; and a stanza kept for the server's acknowledgement once written).
#[derive(Debug)]
enum Stanza {
    Tree(Element),
    Encoded(Encoded),
}

impl Stanza {
    /// The stanza as an element (an encoded one read back).
    fn into_element(self) -> Element {
        match self {
            Stanza::Tree(element) => element,
            Stanza::Encoded(encoded) => encoded
                .to_element()
                .unwrap_or_else(|_| Element::bare("unreadable", ns::COMPONENT)),
        }
    }
}

/// Why [`LinkHandle::send_and_confirm`] did not write a stanza.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotWritten {
    /// The link stopped first; the stanza may be sent again later.
    #[error("the link stopped before the stanza was written")]
    LinkStopped,
    /// The stanza can never be written; sending it again would fail the same way.
    #[error(transparent)]
    Unwritable(#[from] Unwritable),
}

/// Resolves once the server acknowledged a written stanza ([`Acked::wait`]).
#[derive(Debug)]
pub struct Acked(oneshot::Receiver<()>);

impl Acked {
    /// `true` once the server has the stanza; `false` if the link stopped for good first
    /// (shutdown): the stanza may or may not have reached the server.
    pub async fn wait(self) -> bool {
        self.0.await.is_ok()
    }
}

/// Who hears that the server acknowledged a stanza: a waiter, or a callback run on the
/// link's task (it must not block). Dropped unheard if the stanza was never written or the
/// link stopped for good first.
enum OnAck {
    Tell(oneshot::Sender<()>),
    Call(Box<dyn FnOnce() + Send>),
}

impl OnAck {
    fn fire(self) {
        match self {
            OnAck::Tell(waiter) => {
                let _ = waiter.send(());
            }
            OnAck::Call(callback) => callback(),
        }
    }
}

impl std::fmt::Debug for OnAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnAck::Tell(_) => "Tell",
            OnAck::Call(_) => "Call",
        })
    }
}

impl Outgoing {
    fn plain(stanza: Element) -> Self {
        Self {
            stanza: Stanza::Tree(stanza),
            written: None,
            acked: None,
        }
    }

    /// Takes the stanza as a link does, telling whoever waits that it was written and
    /// acknowledged (for a link that is not a TCP stream: the in-process test harness).
    pub fn written(self) -> Element {
        if let Some(written) = self.written {
            let _ = written.send(Ok(()));
        }
        if let Some(acked) = self.acked {
            acked.fire();
        }
        self.stanza.into_element()
    }
}

/// The running link of one bridge: send stanzas with [`LinkHandle::send`].
#[derive(Clone)]
pub struct LinkHandle {
    outgoing: mpsc::Sender<Outgoing>,
    /// The link's state.
    pub state: Arc<LinkState>,
}

impl LinkHandle {
    /// Queues a stanza for the server. Waits while the queue is full (the link has been
    /// down for a while); fails only once the link has stopped for good.
    pub async fn send(&self, stanza: Element) -> Result<(), Element> {
        self.outgoing
            .send(Outgoing::plain(stanza))
            .await
            .map_err(|error| error.0.stanza.into_element())
    }

    /// Queues a stanza encoded already (a copy of a room message), which the link writes
    /// as it is.
    pub async fn send_encoded(&self, stanza: Encoded) -> Result<(), NotWritten> {
        let outgoing = Outgoing {
            stanza: Stanza::Encoded(stanza),
            written: None,
            acked: None,
        };
        self.outgoing
            .send(outgoing)
            .await
            .map_err(|_| NotWritten::LinkStopped)
    }

    /// Queues a stanza encoded already, in order with what was queued before it, and calls
    /// `on_ack` on the link's task once the server acknowledged it (never, if the link
    /// stopped for good first): the last copy of a room message, whose acknowledgement
    /// vouches for the copies written before it. No task waits for it.
    pub async fn send_encoded_then(
        &self,
        stanza: Encoded,
        on_ack: impl FnOnce() + Send + 'static,
    ) -> Result<(), NotWritten> {
        self.outgoing
            .send(Outgoing {
                stanza: Stanza::Encoded(stanza),
                written: None,
                acked: Some(OnAck::Call(Box::new(on_ack))),
            })
            .await
            .map_err(|_| NotWritten::LinkStopped)
    }

    /// Queues a stanza and resolves once it has been written to the server's socket, with
    /// what resolves once the server acknowledged it: what the durable inbox waits for
    /// before it marks a message delivered. Resolves to [`NotWritten::LinkStopped`] if the
    /// link stopped first (the message stays queued in the database), and to
    /// [`NotWritten::Unwritable`] if it can never be written. Once written, the link keeps
    /// it until acknowledged, writing it again after a reconnection if need be.
    pub async fn send_and_confirm(&self, stanza: Element) -> Result<Acked, NotWritten> {
        let (written, confirmed) = oneshot::channel();
        let (acked, acknowledged) = oneshot::channel();
        self.outgoing
            .send(Outgoing {
                stanza: Stanza::Tree(stanza),
                written: Some(written),
                acked: Some(OnAck::Tell(acked)),
            })
            .await
            .map_err(|_| NotWritten::LinkStopped)?;
        confirmed.await.map_err(|_| NotWritten::LinkStopped)??;
        Ok(Acked(acknowledged))
    }

    /// Stanzas waiting to go out.
    pub fn queue_depth(&self) -> usize {
        self.outgoing.max_capacity() - self.outgoing.capacity()
    }
}

/// A link handle with no link task behind it, always up: what is sent comes out of the
/// receiver (the in-process test harness reads it there).
pub fn detached(queue: usize) -> (LinkHandle, mpsc::Receiver<Outgoing>) {
    let (outgoing, receiver) = mpsc::channel(queue);
    let state = Arc::new(LinkState::default());
    state.set_connected(true);
    (LinkHandle { outgoing, state }, receiver)
}

/// Starts a link task. Incoming stanzas go to `incoming`; the task ends after `shutdown`,
/// once the queue is flushed (for up to `flush_deadline`) and the stream closed.
pub fn spawn(
    config: LinkConfig,
    queue: usize,
    incoming: mpsc::Sender<Element>,
    shutdown: Shutdown,
) -> (LinkHandle, tokio::task::JoinHandle<()>) {
    let (outgoing, outgoing_receiver) = mpsc::channel::<Outgoing>(queue);
    let state = Arc::new(LinkState::default());
    let handle = LinkHandle {
        outgoing,
        state: state.clone(),
    };
    let task = tokio::spawn(run(config, state, outgoing_receiver, incoming, shutdown));
    (handle, task)
}

const FLUSH_DEADLINE: Duration = Duration::from_secs(3);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(250);

async fn run(
    config: LinkConfig,
    state: Arc<LinkState>,
    mut outgoing: mpsc::Receiver<Outgoing>,
    incoming: mpsc::Sender<Element>,
    shutdown: Shutdown,
) {
    let domain = config.domain.as_str();
    // Stanzas to write first on the next link, in order: written but not acknowledged when
    // the link broke.
    let mut again: VecDeque<Outgoing> = VecDeque::new();
    // Names this process's acknowledgement pings, so that another instance (ejabberd
    // balances a domain over several connections) never takes ours for its own.
    let token = uuid::Uuid::new_v4().simple().to_string();
    let mut failures: u32 = 0;
    loop {
        if shutdown.is_stopping() {
            break;
        }
        let connected = tokio::select! {
            connected = connect(&config) => connected,
            () = shutdown.clone().wait() => break,
        };
        match connected {
            Ok(mut stream) => {
                failures = 0;
                state.set_error(None);
                metrics::link_up(domain, true);
                tracing::info!(bridge = domain, server = %config.server, "component connected");
                // Marked up only after the unsent stanza went out, so that confirmed writes
                // keep their order.
                let ended = serve(
                    &config,
                    &state,
                    &mut stream,
                    &mut again,
                    &token,
                    &mut outgoing,
                    &incoming,
                    shutdown.clone(),
                )
                .await;
                state.set_connected(false);
                metrics::link_up(domain, false);
                match ended {
                    Ok(()) => {
                        close(&mut stream).await;
                        tracing::info!(bridge = domain, "component disconnected for shutdown");
                        break;
                    }
                    Err(error) => {
                        tracing::warn!(bridge = domain, %error, "component link down, reconnecting");
                        state.set_error(Some(error.summary()));
                    }
                }
            }
            Err(error) => {
                match &error {
                    LinkError::Refused { .. } => {
                        tracing::error!(bridge = domain, %error, "component handshake refused")
                    }
                    _ => tracing::warn!(bridge = domain, %error, "cannot connect component"),
                }
                state.set_error(Some(error.summary()));
            }
        }
        metrics::reconnect(domain);
        let delay = backoff(failures, config.reconnect_max);
        failures = failures.saturating_add(1);
        tracing::debug!(
            bridge = domain,
            delay_ms = delay.as_millis() as u64,
            "waiting before reconnecting"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.clone().wait() => break,
        }
    }
    state.set_connected(false);
}

/// Capped exponential backoff with "equal jitter": between half and all of the step, so
/// that a fleet of gateways does not reconnect in lockstep, and never zero.
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let step = BACKOFF_START
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(cap);
    let half = step / 2;
    half + half.mul_f64(rand::random::<f64>())
}

/// Connects and hands shakes as the link would, then closes: whether the server answers at
/// `config.server` and accepts the domain and secret (`jabbridge doctor`). While another
/// process holds the component, the server may answer `conflict` or drop that one.
pub async fn probe(config: &LinkConfig) -> Result<(), LinkError> {
    let mut stream = connect(config).await?;
    close(&mut stream).await;
    Ok(())
}

async fn connect(config: &LinkConfig) -> Result<Stream, LinkError> {
    let unreachable = |source: std::io::Error| LinkError::Unreachable {
        server: config.server.clone(),
        source,
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&config.server))
        .await
        .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
        .map_err(unreachable)?;
    // Servers leave Nagle on; without this, back-to-back stanzas stall on delayed ACKs.
    tcp.set_nodelay(true).map_err(unreachable)?;
    let timeouts = Timeouts {
        read_timeout: config.keepalive,
        response_timeout: config.keepalive_timeout,
    };
    let header = StreamHeader {
        to: Some(Cow::Borrowed(config.domain.as_str())),
        from: None,
        id: None,
    };
    let mut pending = tokio::time::timeout(
        CONNECT_TIMEOUT,
        initiate_stream(
            BufStream::new(DepthGuard::new(tcp, GUARD_DEPTH)),
            ns::COMPONENT,
            header,
            timeouts,
        ),
    )
    .await
    .map_err(|_| unreachable(std::io::ErrorKind::TimedOut.into()))?
    .map_err(unreachable)?;
    let stream_id = pending.take_header().id;
    let mut stream: Stream = pending.skip_features();
    let Some(stream_id) = stream_id else {
        // No id: the server is refusing us; its stream error says why.
        return Err(read_refusal(config, &mut stream).await);
    };
    let handshake = Handshake::from_stream_id_and_password(
        stream_id.into_owned(),
        config.secret.expose_secret(),
    );
    if stream.send(&handshake).await.is_err() {
        return Err(read_refusal(config, &mut stream).await);
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Inbound::Element(element)))) if element.is("handshake", ns::COMPONENT) => {
            Ok(stream)
        }
        Ok(Some(Ok(Inbound::Element(element)))) if element.is("error", ns::STREAM) => {
            Err(refusal(config, &element))
        }
        Ok(Some(Ok(
            Inbound::Element(element)
            | Inbound::Refused {
                header: element, ..
            },
        ))) => Err(LinkError::Refused {
            advice: "the XMPP server answered the handshake with something else: is \
                     xmpp.server a component port (XEP-0114)?"
                .into(),
            detail: format!(": <{}/> instead of the handshake reply", element.name()),
        }),
        Ok(Some(Err(error))) => Err(LinkError::Lost(error.to_string())),
        Ok(None) => Err(LinkError::Closed(" during the handshake".into())),
        Err(_) => Err(LinkError::Lost("no handshake reply".into())),
    }
}

async fn read_refusal(config: &LinkConfig, stream: &mut Stream) -> LinkError {
    match tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        Ok(Some(Ok(Inbound::Element(element)))) if element.is("error", ns::STREAM) => {
            refusal(config, &element)
        }
        _ => LinkError::Closed(" before the handshake".into()),
    }
}

/// Turns a stream error received during the handshake into advice naming the key to fix.
fn refusal(config: &LinkConfig, error: &Element) -> LinkError {
    let condition = error
        .children()
        .find(|child| child.ns() == ns::XMPP_STREAMS && child.name() != "text")
        .map(|child| child.name().to_owned())
        .unwrap_or_else(|| "undefined-condition".into());
    let detail = error
        .get_child("text", ns::XMPP_STREAMS)
        .map(|text| format!(" (the server said: {})", text.text()))
        .unwrap_or_default();
    let index = config.index;
    let domain = &config.domain;
    let advice = match condition.as_str() {
        // ejabberd also answers an unknown domain with not-authorized: name both keys.
        "not-authorized" => format!(
            "the XMPP server refused {domain}: bridge[{index}].secret must equal the component \
             secret in the server's config, and bridge[{index}].domain must be a component the \
             server knows"
        ),
        "host-unknown" | "improper-addressing" | "host-gone" | "item-not-found" => format!(
            "the XMPP server has no component {domain}: check bridge[{index}].domain and the \
             server's Component / ejabberd_service section"
        ),
        "conflict" => format!(
            "the XMPP server already has a connection for {domain}: is another Jabbridge using \
             bridge[{index}].domain?"
        ),
        other => format!("the XMPP server refused {domain}: {other}"),
    };
    LinkError::Refused { advice, detail }
}

/// Stanzas written and waiting for the server's acknowledgement, and the pings that will
/// acknowledge them.
struct Acks<'a> {
    /// This process's name in ping ids.
    token: &'a str,
    /// Written, oldest first, each with the ping that covers it (0: none sent yet).
    pending: VecDeque<(u64, Outgoing)>,
    /// Pings sent and not yet read back: sequence and when.
    pings: VecDeque<(u64, Instant)>,
    sequence: u64,
    /// When the last ping was sent.
    last_ping: Option<Instant>,
    /// How long a ping may stay unanswered while the link is up before what it covers
    /// counts as acknowledged anyway (see [`Acks::overdue`]).
    wait: Duration,
}

impl<'a> Acks<'a> {
    fn new(token: &'a str, config: &LinkConfig) -> Self {
        Self {
            token,
            pending: VecDeque::new(),
            pings: VecDeque::new(),
            sequence: 0,
            last_ping: None,
            // Longer than it takes to declare a silent server dead (then the link breaks
            // and the pending stanzas are written again instead).
            wait: config.keepalive + config.keepalive_timeout + Duration::from_secs(5),
        }
    }

    /// Keeps a written stanza until it is acknowledged.
    fn written(&mut self, outgoing: Outgoing) {
        self.pending.push_back((0, outgoing));
    }

    /// When the next ping is due: something written is not covered by one yet, and the
    /// last went out [`PING_GAP`] ago (so that a busy link sends a ping per few
    /// milliseconds, not per stanza).
    fn ping_due(&self) -> Option<Instant> {
        if self.pending.back().is_none_or(|(covered, _)| *covered != 0) {
            return None;
        }
        Some(
            self.last_ping
                .map_or_else(Instant::now, |last| last + PING_GAP),
        )
    }

    /// The ping that acknowledges everything written since the last one, if anything was.
    fn ping(&mut self, domain: &str) -> Option<Element> {
        if self.pending.back().is_none_or(|(covered, _)| *covered != 0) {
            return None;
        }
        self.last_ping = Some(Instant::now());
        self.sequence += 1;
        for (covered, _) in self.pending.iter_mut().rev() {
            if *covered != 0 {
                break;
            }
            *covered = self.sequence;
        }
        self.pings.push_back((self.sequence, Instant::now()));
        let ours: Option<Jid> = domain.parse().ok();
        let id = format!("{ACK_PREFIX}{}-{}", self.token, self.sequence);
        let mut ping = Iq::from_get(id, Ping);
        *ping.from_mut() = ours.clone();
        *ping.to_mut() = ours;
        Some(ping.into())
    }

    /// Whether `element` is one of ours or another instance's acknowledgement pings (which
    /// go no further); acknowledges what one of ours covers.
    fn read(&mut self, element: &Element) -> bool {
        let Some(rest) = element
            .attr("id")
            .and_then(|id| id.strip_prefix(ACK_PREFIX))
        else {
            return false;
        };
        if element.name() != "iq" {
            return false;
        }
        if let Some(sequence) = rest
            .strip_prefix(self.token)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|sequence| sequence.parse::<u64>().ok())
        {
            self.acknowledge(sequence);
        }
        true
    }

    /// Tells everything covered by pings up to `sequence` that the server has it.
    fn acknowledge(&mut self, sequence: u64) {
        while self
            .pings
            .front()
            .is_some_and(|(ping, _)| *ping <= sequence)
        {
            self.pings.pop_front();
        }
        while let Some((covered, _)) = self.pending.front() {
            if *covered == 0 || *covered > sequence {
                break;
            }
            if let Some((_, outgoing)) = self.pending.pop_front()
                && let Some(acked) = outgoing.acked
            {
                acked.fire();
            }
        }
    }

    /// When the oldest ping is overdue. With several connections for one domain (ejabberd)
    /// the server may route our ping back over another instance's connection: the link is
    /// up and in order, so what it covers is acknowledged after [`Acks::wait`].
    fn overdue(&self) -> Option<Instant> {
        self.pings.front().map(|(_, sent)| *sent + self.wait)
    }

    /// Acknowledges what the oldest (overdue) ping covers.
    fn assume_oldest(&mut self, domain: &str) {
        if let Some((sequence, _)) = self.pings.front().copied() {
            metrics::acks_assumed(domain);
            tracing::debug!(
                bridge = domain,
                "an acknowledgement ping did not come back; the link is up, so what it covers counts as delivered"
            );
            self.acknowledge(sequence);
        }
    }

    /// At a broken link: what was written and not acknowledged goes first on the next one,
    /// before what `again` already holds.
    fn give_back(self, again: &mut VecDeque<Outgoing>) {
        for (_, mut outgoing) in self.pending.into_iter().rev() {
            // Its sender heard it was written; only the acknowledgement is still awaited.
            outgoing.written = None;
            again.push_front(outgoing);
        }
    }
}

/// The id prefix of acknowledgement pings.
const ACK_PREFIX: &str = "jabbridge-ack-";
/// The least time between two acknowledgement pings. Each costs the server two stanzas
/// to route (ours, and itself read back); 25 ms rather than 5 cut the XMPP server's CPU
/// per room post by 6-10% (BENCHMARKS.md). Nobody waits for an acknowledgement: it only
/// moves a room's cursor and marks a delivered row, so a later one costs no latency.
const PING_GAP: Duration = Duration::from_millis(25);

/// Runs an established link until it breaks (`Err`) or shutdown has flushed it (`Ok`).
#[allow(clippy::too_many_arguments)]
async fn serve(
    config: &LinkConfig,
    state: &LinkState,
    stream: &mut Stream,
    again: &mut VecDeque<Outgoing>,
    token: &str,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    incoming: &mpsc::Sender<Element>,
    shutdown: Shutdown,
) -> Result<(), LinkError> {
    let mut acks = Acks::new(token, config);
    let mut writer = Writer::default();
    let served = serve_with(
        config,
        state,
        stream,
        &mut writer,
        again,
        &mut acks,
        outgoing,
        incoming,
        shutdown,
    )
    .await;
    if served.is_err() {
        acks.give_back(again);
    }
    served
}

#[allow(clippy::too_many_arguments)]
async fn serve_with(
    config: &LinkConfig,
    state: &LinkState,
    stream: &mut Stream,
    writer: &mut Writer,
    again: &mut VecDeque<Outgoing>,
    acks: &mut Acks<'_>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
    incoming: &mpsc::Sender<Element>,
    shutdown: Shutdown,
) -> Result<(), LinkError> {
    let domain = config.domain.as_str();
    // In one write; if it fails, they are in `acks` again, which gives them back.
    while let Some(stanza) = again.pop_front() {
        writer.feed(domain, acks, stanza);
    }
    if let Some(ping) = acks.ping(domain) {
        writer.feed(domain, acks, Outgoing::plain(ping));
    }
    writer.flush(stream).await?;
    state.set_connected(true);
    // A stanza read but not yet taken by the gateway: while it waits, we stop reading (so
    // the server feels backpressure) but keep writing (so the gateway never deadlocks on us).
    let mut received: Option<Element> = None;
    let mut pings: u64 = 0;
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    loop {
        let overdue = acks.overdue();
        let ping_due = acks.ping_due();
        tokio::select! {
            biased;
            () = &mut stopping => {
                return flush(domain, stream, writer, acks, outgoing).await;
            }
            permit = incoming.reserve(), if received.is_some() => {
                let Ok(permit) = permit else {
                    return Err(LinkError::Lost("gateway stopped".into()));
                };
                if let Some(stanza) = received.take() {
                    permit.send(stanza);
                }
            }
            stanza = outgoing.recv() => {
                let Some(stanza) = stanza else {
                    // Every sender is gone: the core is stopping.
                    return Ok(());
                };
                // What is queued already goes out in the same write (a group commit's
                // reflections, say): the server then reads them in one go, where a write
                // each made it wake and read once per stanza.
                writer.feed(domain, acks, stanza);
                let mut burst = 1;
                while burst < BURST
                    && let Ok(next) = outgoing.try_recv()
                {
                    writer.feed(domain, acks, next);
                    burst += 1;
                }
                writer.flush(stream).await?;
            }
            () = tokio::time::sleep_until(ping_due.unwrap_or_else(Instant::now)), if ping_due.is_some() => {
                if let Some(ping) = acks.ping(domain) {
                    write(domain, stream, writer, acks, Outgoing::plain(ping)).await?;
                }
            }
            () = tokio::time::sleep_until(overdue.unwrap_or_else(Instant::now)), if overdue.is_some() => {
                acks.assume_oldest(domain);
            }
            item = stream.next(), if received.is_none() => match item {
                Some(Ok(Inbound::Element(element))) => {
                    if element.is("error", ns::STREAM) {
                        return Err(LinkError::Closed(format!(": {}", describe_stream_error(&element))));
                    }
                    metrics::stanza_in(domain);
                    if !acks.read(&element) {
                        received = Some(element);
                    }
                }
                Some(Ok(Inbound::Refused { header, limit })) => {
                    metrics::stanza_in(domain);
                    let failure = StanzaFailure::PolicyViolation(limit.describe());
                    metrics::stanza_error(domain, failure.condition());
                    tracing::debug!(bridge = domain, from = header.attr("from").unwrap_or(""), %failure, "refused an oversized stanza");
                    let answer = StanzaHeader::of(&header).and_then(|header| error_reply(&header, &failure));
                    if let Some(answer) = answer {
                        write(domain, stream, writer, acks, Outgoing::plain(answer)).await?;
                    }
                }
                Some(Err(ReadError::SoftTimeout)) => {
                    pings += 1;
                    let ping = keepalive_ping(domain, pings);
                    tracing::debug!(bridge = domain, "link idle, pinging the server");
                    write(domain, stream, writer, acks, Outgoing::plain(ping)).await?;
                }
                Some(Err(ReadError::ParseError(error))) => {
                    // Not well-formed enough to be an element at all; the stream goes on.
                    tracing::warn!(bridge = domain, %error, "skipped an unreadable element");
                    metrics::stanza_error(domain, "unreadable");
                }
                Some(Err(ReadError::HardError(error))) => {
                    return Err(LinkError::Lost(error.to_string()));
                }
                Some(Err(ReadError::StreamFooterReceived)) | None => {
                    return Err(LinkError::Closed(String::new()));
                }
            },
        }
    }
}

/// The most stanzas written in one go.
const BURST: usize = 64;

/// Writes one stanza and flushes it to the socket.
async fn write(
    domain: &str,
    stream: &mut Stream,
    writer: &mut Writer,
    acks: &mut Acks<'_>,
    outgoing: Outgoing,
) -> Result<(), LinkError> {
    writer.feed(domain, acks, outgoing);
    writer.flush(stream).await
}

/// What the link writes, encoded into one buffer that goes to the socket in one write. After
/// the handshake tokio-xmpp writes nothing more (until the stream's footer, after the last
/// flush), so the bytes go to the socket straight from here.
#[derive(Default)]
struct Writer {
    encoder: StanzaEncoder,
    out: Vec<u8>,
}

/// What the buffer keeps of its room after a large burst.
const KEEP_BUFFER: usize = 64 * 1024;

impl Writer {
    /// Encodes one stanza into the buffer (the socket gets it at the next [`Writer::flush`]).
    /// A stanza that cannot be written as XML is dropped (its sender is told through
    /// `written`) and the link goes on. A stanza someone waits on is kept, encoded, in
    /// `acks` until the server acknowledged it, so one lost in the buffer when the link
    /// breaks goes out again on the next.
    fn feed(&mut self, domain: &str, acks: &mut Acks<'_>, mut outgoing: Outgoing) {
        let start = self.out.len();
        let encoded = match &mut outgoing.stanza {
            Stanza::Encoded(encoded) => {
                self.out.extend_from_slice(encoded.bytes());
                Ok(())
            }
            Stanza::Tree(stanza) => make_writable(stanza).and_then(|dropped| {
                if dropped > 0 {
                    tracing::debug!(
                        bridge = domain,
                        dropped,
                        "dropped characters XML forbids from a stanza"
                    );
                }
                self.encoder.encode(stanza, &mut self.out).inspect_err(|_| {
                    // Its nesting is lost with the stanza it did not finish.
                    self.encoder = StanzaEncoder::new();
                })
            }),
        };
        if let Err(unwritable) = encoded {
            tracing::error!(bridge = domain, error = %unwritable, "dropped a stanza that cannot be written");
            metrics::stanza_error(domain, "unwritable");
            if let Some(written) = outgoing.written {
                let _ = written.send(Err(unwritable));
            }
            return;
        }
        metrics::stanza_out(domain);
        if let Some(written) = outgoing.written.take() {
            let _ = written.send(Ok(()));
        }
        if outgoing.acked.is_some() {
            if let Stanza::Tree(_) = outgoing.stanza {
                outgoing.stanza = Stanza::Encoded(Encoded::new(&self.out[start..]));
            }
            acks.written(outgoing);
        }
    }

    /// Hands what the buffer holds to the socket.
    async fn flush(&mut self, stream: &Stream) -> Result<(), LinkError> {
        let socket = stream.get_stream().get_ref().get_ref();
        let mut sent = 0;
        while sent < self.out.len() {
            let lost = |error: std::io::Error| LinkError::Lost(error.to_string());
            socket.writable().await.map_err(lost)?;
            match socket.try_write(&self.out[sent..]) {
                Ok(0) => return Err(LinkError::Lost("the socket took no more".into())),
                Ok(written) => sent += written,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(lost(error)),
            }
        }
        self.out.clear();
        if self.out.capacity() > KEEP_BUFFER {
            self.out.shrink_to(KEEP_BUFFER);
        }
        Ok(())
    }
}

/// Sends what is queued, then reads until the server acknowledged it, for up to
/// [`FLUSH_DEADLINE`] in all, then returns. What is read meanwhile goes nowhere: the
/// gateway has stopped taking stanzas.
async fn flush(
    domain: &str,
    stream: &mut Stream,
    writer: &mut Writer,
    acks: &mut Acks<'_>,
    outgoing: &mut mpsc::Receiver<Outgoing>,
) -> Result<(), LinkError> {
    let flushing = async {
        while let Ok(stanza) = outgoing.try_recv() {
            write(domain, stream, writer, acks, stanza).await?;
        }
        if let Some(ping) = acks.ping(domain) {
            write(domain, stream, writer, acks, Outgoing::plain(ping)).await?;
        }
        while !acks.pings.is_empty() {
            match stream.next().await {
                Some(Ok(Inbound::Element(element))) => {
                    acks.read(&element);
                }
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout | ReadError::ParseError(_))) => {}
                Some(Err(_)) | None => break,
            }
        }
        Ok(())
    };
    tokio::time::timeout(FLUSH_DEADLINE, flushing)
        .await
        .unwrap_or(Ok(()))
}

/// Sends the stream footer and waits briefly for the server's.
async fn close(stream: &mut Stream) {
    let closing = async {
        if stream.shutdown().await.is_ok() {
            while let Some(Ok(_)) = stream.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
}

fn keepalive_ping(domain: &str, sequence: u64) -> Element {
    let ours: Option<Jid> = domain.parse().ok();
    let mut ping = Iq::from_get(format!("jabbridge-keepalive-{sequence}"), Ping);
    *ping.from_mut() = ours.clone();
    *ping.to_mut() = ours;
    ping.into()
}

/// Whether an iq result is the answer to one of our keepalive pings.
pub fn is_keepalive_id(id: &str) -> bool {
    id.starts_with("jabbridge-keepalive-")
}

fn describe_stream_error(error: &Element) -> String {
    error
        .children()
        .map(|child| {
            if child.name() == "text" {
                child.text()
            } else {
                child.name().to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_never_zero() {
        let cap = Duration::from_secs(30);
        for failures in 0..40 {
            let delay = backoff(failures, cap);
            assert!(delay >= Duration::from_millis(125), "{delay:?}");
            assert!(delay <= cap, "{delay:?}");
        }
        assert!(backoff(0, cap) <= BACKOFF_START);
        assert!(backoff(20, cap) >= cap / 2);
    }

    #[test]
    fn refusals_name_the_key_to_fix() {
        let config = LinkConfig {
            server: "127.0.0.1:1".into(),
            domain: "gw.example".into(),
            secret: SecretString::from("x"),
            index: 2,
            keepalive: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(1),
        };
        let error: Element = "<stream:error xmlns:stream='http://etherx.jabber.org/streams'>\
            <not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            .parse()
            .unwrap();
        let message = refusal(&config, &error).to_string();
        assert!(message.contains("bridge[2].secret"), "{message}");
    }
}
