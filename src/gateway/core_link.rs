//! What a bridge asks of the core ([`jabbridge_sdk::Core`]). The bridge is built before its
//! gateway and the gateway holds the bridge, so the bridge holds no reference to the
//! gateway: what needs the gateway (a message to deliver, a status to show, a delivery
//! report) goes to it as a [`Request`] over a channel that [`super::Gateway::run`] serves;
//! what needs only the database (state, identities, registrations) is answered here.

use jabbridge_sdk::plumbing::CoreSink;
use jabbridge_sdk::{
    ChatState, CoreError, DeliveryReport, ForeignId, IncomingMessage, MessageId, RegistrationData,
    RoomEvent, RoomId, UserJid, UserStatus, async_trait,
};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use xmpp_parsers::jid::{BareJid, Jid};

use super::{Gateway, presence, rooms};
use crate::delivery::{accept, outbox};
use crate::store::{Store, StoreError};
use crate::xmpp::stanza;

/// Requests waiting for the gateway before a bridge waits for room.
const QUEUE: usize = 1024;

/// What the bridge is told.
type Reply = oneshot::Sender<Result<(), CoreError>>;

/// A bridge's request that the gateway serves.
pub enum Request {
    /// Queue this message for its user ([`jabbridge_sdk::Core::deliver`]).
    Deliver(IncomingMessage, Reply),
    /// Show the user this state of their link ([`jabbridge_sdk::Core::set_status`]).
    SetStatus(UserJid, UserStatus, Reply),
    /// Something happened in a room ([`jabbridge_sdk::Core::room_event`]).
    RoomEvent(RoomId, RoomEvent, Reply),
    /// Show the user that a contact is typing ([`jabbridge_sdk::Core::chat_state`]).
    ChatState(UserJid, ForeignId, ChatState, Reply),
    /// The network reported on a message ([`jabbridge_sdk::Core::report`]), for any sender
    /// or only for this one ([`jabbridge_sdk::Core::report_for`]).
    Report(MessageId, Option<UserJid>, DeliveryReport, Reply),
}

/// The gateway's end of the channel.
pub type Requests = mpsc::Receiver<Request>;

/// The core as one bridge sees it.
pub struct CoreLink {
    domain: String,
    store: Store,
    requests: mpsc::Sender<Request>,
}

impl CoreLink {
    /// The link for the bridge at `domain`, and the requests its gateway is to serve.
    pub fn new(domain: &str, store: Store) -> (CoreLink, Requests) {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let link = CoreLink {
            domain: domain.to_owned(),
            store,
            requests,
        };
        (link, receiver)
    }

    /// Hands a request to the gateway and waits for its answer.
    async fn ask(&self, request: impl FnOnce(Reply) -> Request) -> Result<(), CoreError> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(request(reply))
            .await
            .map_err(|_| CoreError::ShuttingDown)?;
        answer.await.unwrap_or(Err(CoreError::ShuttingDown))
    }

    fn unavailable(&self, error: &StoreError) -> CoreError {
        tracing::error!(bridge = %self.domain, %error, "cannot read or write a bridge's state");
        CoreError::Unavailable("the gateway cannot reach its database right now".into())
    }
}

#[async_trait]
impl CoreSink for CoreLink {
    async fn deliver(&self, message: IncomingMessage) -> Result<(), CoreError> {
        self.ask(|reply| Request::Deliver(message, reply)).await
    }

    async fn room_event(&self, room: RoomId, event: RoomEvent) -> Result<(), CoreError> {
        self.ask(|reply| Request::RoomEvent(room, event, reply))
            .await
    }

    async fn set_status(&self, user: UserJid, status: UserStatus) -> Result<(), CoreError> {
        self.ask(|reply| Request::SetStatus(user, status, reply))
            .await
    }

    async fn chat_state(
        &self,
        user: UserJid,
        contact: ForeignId,
        state: ChatState,
    ) -> Result<(), CoreError> {
        self.ask(|reply| Request::ChatState(user, contact, state, reply))
            .await
    }

    async fn report(
        &self,
        message: MessageId,
        sender: Option<UserJid>,
        report: DeliveryReport,
    ) -> Result<(), CoreError> {
        self.ask(|reply| Request::Report(message, sender, report, reply))
            .await
    }

    async fn load(&self, key: &str) -> Result<Option<serde_json::Value>, CoreError> {
        self.store
            .state(&self.domain, key)
            .await
            .map_err(|error| self.unavailable(&error))
    }

    async fn save(&self, key: &str, value: Option<serde_json::Value>) -> Result<(), CoreError> {
        self.store
            .put_state(&self.domain, key, value.as_ref())
            .await
            .map_err(|error| self.unavailable(&error))
    }

    async fn owner(&self, identity: ForeignId) -> Result<Option<UserJid>, CoreError> {
        Ok(self
            .store
            .identity_owner(&self.domain, identity.as_str())
            .await
            .map_err(|error| self.unavailable(&error))?
            .map(UserJid::new))
    }

    async fn set_owner(
        &self,
        identity: ForeignId,
        owner: Option<UserJid>,
    ) -> Result<(), CoreError> {
        let done = match owner {
            Some(owner) => {
                let owner: BareJid = owner.as_str().parse().map_err(|error| {
                    CoreError::Refused(format!("'{owner}' is not a bare JID: {error}"))
                })?;
                self.store
                    .put_identity(&self.domain, identity.as_str(), owner.as_str())
                    .await
            }
            None => self
                .store
                .delete_identity(&self.domain, identity.as_str())
                .await
                .map(|_| ()),
        };
        done.map_err(|error| self.unavailable(&error))
    }

    async fn identities(&self, user: UserJid) -> Result<Vec<ForeignId>, CoreError> {
        Ok(self
            .store
            .identities_of(&self.domain, user.as_str())
            .await
            .map_err(|error| self.unavailable(&error))?
            .into_iter()
            .map(ForeignId::new)
            .collect())
    }

    async fn registration(&self, user: UserJid) -> Result<Option<RegistrationData>, CoreError> {
        self.store
            .registration(&self.domain, user.as_str())
            .await
            .map_err(|error| self.unavailable(&error))
    }
}

/// Serves one request on the gateway's loop: queueing and presence only wait for room in
/// the committer's and the link's queues; a delivery report, which may wait for its message
/// to be recorded, runs as a task of its own.
pub(super) async fn serve(gateway: &Gateway, request: Request) {
    match request {
        Request::Deliver(message, reply) => match check(gateway, &message) {
            Ok((user, from)) => {
                let incoming = accept::Incoming {
                    message,
                    user,
                    from,
                };
                accept::incoming(&gateway.delivery, incoming, reply).await;
            }
            Err(refused) => {
                let _ = reply.send(Err(refused));
            }
        },
        // A message is archived and shown in its room's order after this returns: the
        // loop serves the next request meanwhile; the bridge hears once it was shown.
        Request::RoomEvent(room, RoomEvent::Message(message), reply) => {
            rooms::message_event(gateway, room, message, reply).await;
        }
        Request::RoomEvent(room, event, reply) => {
            let _ = reply.send(rooms::event(gateway, room, event).await);
        }
        Request::SetStatus(user, status, reply) => {
            let shown = match user.as_str().parse::<BareJid>() {
                Ok(user) => {
                    if let Some(presence) = presence::link_status_as(gateway, &user, status) {
                        gateway.send(presence).await;
                    }
                    Ok(())
                }
                Err(error) => Err(CoreError::Refused(format!(
                    "'{user}' is not a JID: {error}"
                ))),
            };
            let _ = reply.send(shown);
        }
        Request::ChatState(user, contact, state, reply) => {
            let shown = addresses(gateway, &user, &contact)
                .map(|(to, from)| stanza::chat_state(from, Jid::from(to), state, false));
            match shown {
                Ok(typing) => {
                    let _ = reply.send(Ok(()));
                    gateway.send(typing).await;
                }
                Err(refused) => {
                    let _ = reply.send(Err(refused));
                }
            }
        }
        Request::Report(message, sender, report, reply) => {
            let delivery = gateway.delivery.clone();
            tokio::spawn(
                async move {
                    let sender = sender.as_ref().map(UserJid::as_str);
                    let acted =
                        outbox::delivery_report(&delivery, message.as_str(), sender, report).await;
                    let _ = reply.send(acted);
                }
                .instrument(gateway.span()),
            );
        }
    }
}

/// The JIDs of a bridge's user, allowed to use the bridge, and of their contact.
fn addresses(
    gateway: &Gateway,
    user: &UserJid,
    contact: &ForeignId,
) -> Result<(BareJid, Jid), CoreError> {
    let user: BareJid = user
        .as_str()
        .parse()
        .map_err(|error| CoreError::Refused(format!("'{user}' is not a JID: {error}")))?;
    if gateway.access.role(user.as_str()).is_none() {
        return Err(CoreError::Refused(format!(
            "{user} may not use {}: not in its allow list",
            gateway.domain
        )));
    }
    let contact = gateway.contact_jid(contact).map_err(CoreError::Refused)?;
    Ok((user, contact))
}

/// Whether a bridge's message may be delivered: its user is a JID allowed to use the bridge,
/// and its contact makes a JID. Returns both JIDs.
fn check(gateway: &Gateway, message: &IncomingMessage) -> Result<(BareJid, Jid), CoreError> {
    let (user, contact) = addresses(gateway, &message.user, &message.contact)?;
    let from = match &message.room {
        // A private message from an occupant comes from room/nick.
        Some(room) => {
            let room = gateway.contact_jid(room).map_err(CoreError::Refused)?;
            format!("{}/{}", room.to_bare(), message.contact)
                .parse()
                .map_err(|error| {
                    CoreError::Refused(format!(
                        "'{}' is not a nick a JID can carry: {error}",
                        message.contact
                    ))
                })?
        }
        None => contact,
    };
    Ok((user, from))
}
