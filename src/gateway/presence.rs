//! Presence as XEP-0100 describes it: users subscribe to the gateway (once registered) and
//! to contacts (as the bridge approves); the gateway's presence tells a user the state of
//! their link to the foreign network; the bridge hears when a registered user's first
//! resource comes online and their last goes offline.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use jabbridge_sdk::{ForeignId, UserJid, UserStatus};
use xmpp_parsers::{
    jid::{BareJid, Jid},
    minidom::Element,
    presence::{Presence, Type as PresenceType},
};

use super::{Answer, Gateway, rooms};
use crate::xmpp::stanza::{self, StanzaFailure};

/// Registered users' online resources.
#[derive(Debug, Default)]
pub struct Online {
    resources: Mutex<HashMap<String, BTreeSet<String>>>,
}

impl Online {
    /// Records `resource` of `user`. Returns whether it is new, and whether it is the user's
    /// first.
    fn add(&self, user: &str, resource: String) -> (bool, bool) {
        match self.resources.lock() {
            Ok(mut online) => {
                let resources = online.entry(user.to_owned()).or_default();
                let first = resources.is_empty();
                (resources.insert(resource), first)
            }
            Err(_) => (false, false),
        }
    }

    /// Forgets one resource of `user` (or all with `None`). Returns whether none is left of
    /// a user who had some.
    fn remove(&self, user: &str, resource: Option<&str>) -> bool {
        let Ok(mut online) = self.resources.lock() else {
            return false;
        };
        let emptied = match (online.get_mut(user), resource) {
            (Some(resources), Some(resource)) => resources.remove(resource) && resources.is_empty(),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if emptied {
            online.remove(user);
        }
        emptied
    }

    /// How many users have a resource online.
    pub fn count(&self) -> usize {
        self.resources
            .lock()
            .map(|online| online.len())
            .unwrap_or(0)
    }
}

/// Answers a presence addressed to the gateway or a contact.
pub(super) async fn on_presence(gateway: &Gateway, element: Element) -> Answer {
    let jid = |name: &str| element.attr(name).and_then(|jid| jid.parse::<Jid>().ok());
    if let (Some(from), Some(to)) = (jid("from"), jid("to"))
        && let Some(room) = gateway.room_of(&to)
    {
        if element.attr("type") == Some("error") {
            rooms::bounced(gateway, &from, &room).await;
            return Ok(None);
        }
        return rooms::on_presence(gateway, &element, &from, &to, room).await;
    }
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
    if gateway.access.role(user.as_str()).is_none() {
        // Strangers get an answer only when they ask for something.
        if presence.type_ == PresenceType::Subscribe {
            gateway.access.check(user.as_str())?;
        }
        return Ok(None);
    }
    let contact = gateway.contact_of(&to)?;
    let registered = gateway.is_member(user.as_str()).await?;
    let to_user = Jid::from(user.clone());
    let reply = |type_: PresenceType| {
        stanza::presence(type_, Jid::from(to.to_bare()), to_user.clone(), None)
    };
    match presence.type_ {
        PresenceType::Subscribe if !registered => Ok(Some(reply(PresenceType::Unsubscribed))),
        PresenceType::Subscribe => match contact {
            None => {
                gateway.send(reply(PresenceType::Subscribed)).await;
                Ok(link_status(gateway, &user))
            }
            Some(contact) => {
                let approved = gateway
                    .call(
                        "the subscription request",
                        gateway
                            .bridge
                            .subscription_requested(&UserJid::new(user.as_str()), &contact),
                    )
                    .await?;
                if !approved {
                    return Ok(Some(reply(PresenceType::Unsubscribed)));
                }
                for type_ in [PresenceType::Subscribed, PresenceType::None] {
                    if let Some(presence) = contact_presence(gateway, &contact, &to_user, type_) {
                        gateway.send(presence).await;
                    }
                }
                Ok(None)
            }
        },
        PresenceType::Subscribed => match contact {
            None => Ok(link_status(gateway, &user)),
            Some(_) => Ok(None),
        },
        PresenceType::Unsubscribe => Ok(Some(reply(PresenceType::Unsubscribed))),
        PresenceType::Unsubscribed => Ok(None),
        PresenceType::Probe if !registered => Ok(Some(reply(PresenceType::Unsubscribed))),
        PresenceType::Probe => Ok(match contact {
            None => link_status(gateway, &user),
            Some(contact) => contact_presence(gateway, &contact, &to_user, PresenceType::None),
        }),
        PresenceType::None if registered => {
            if came_online(gateway, &from).await && contact.is_none() {
                return Ok(link_status(gateway, &user));
            }
            Ok(None)
        }
        PresenceType::Unavailable if registered => {
            went_offline(gateway, user.as_str(), from.resource().map(|r| r.as_str())).await;
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// The gateway's presence for `user`, from the bridge's state of their link.
fn link_status(gateway: &Gateway, user: &BareJid) -> Option<Element> {
    let status = gateway.bridge.user_status(&UserJid::new(user.as_str()));
    link_status_as(gateway, user, status)
}

/// The gateway's presence for `user` when their link is in `status`.
pub fn link_status_as(gateway: &Gateway, user: &BareJid, status: UserStatus) -> Option<Element> {
    Some(stanza::link_status(gateway.gateway_jid()?, user, status))
}

/// A presence of `type_` from a contact to `user`, with the contact's nick if known.
fn contact_presence(
    gateway: &Gateway,
    contact: &ForeignId,
    user: &Jid,
    type_: PresenceType,
) -> Option<Element> {
    let from = gateway.contact_jid(contact).ok()?;
    let nick = gateway.bridge.contact_name(contact);
    Some(stanza::presence(
        type_,
        from,
        Jid::from(user.to_bare()),
        nick,
    ))
}

/// Records an online resource; tells the bridge when it is the user's first. Returns whether
/// the resource is new.
async fn came_online(gateway: &Gateway, from: &Jid) -> bool {
    let user = from.to_bare().to_string();
    let resource = from.resource().map(|r| r.to_string()).unwrap_or_default();
    let (new_resource, first) = gateway.online.add(&user, resource);
    if first && new_resource {
        tracing::debug!(user, "user online");
        presence_hook(gateway, &user, true).await;
    }
    new_resource
}

/// Forgets one resource of `user` (or all with `None`); tells the bridge when none is left.
pub async fn went_offline(gateway: &Gateway, user: &str, resource: Option<&str>) {
    if gateway.online.remove(user, resource) {
        tracing::debug!(user, "user offline");
        presence_hook(gateway, user, false).await;
    }
}

/// Tells the bridge a user came online or went offline.
async fn presence_hook(gateway: &Gateway, user: &str, online: bool) {
    let user = UserJid::new(user);
    let hook = gateway.bridge.user_presence(&user, online);
    if let Err(failure) = gateway.call("a presence change", hook).await {
        tracing::warn!(%user, %failure, "a presence hook timed out");
    }
}
