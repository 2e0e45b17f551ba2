//! The gateway's answers to iq requests: service discovery and version (on the gateway and
//! on contacts), the XEP-0077 registration form, the XEP-0100 prompt, and XEP-0050
//! commands. Anything else is `service-unavailable`.

use xmpp_parsers::{iq::Iq, jid::Jid, minidom::Element, ns};

use super::{Answer, Gateway, commands, registration, rooms};
use crate::xmpp::register::{self, Submission};
use crate::xmpp::service::{self, Target};
use crate::xmpp::session::is_keepalive_id;
use crate::xmpp::stanza::StanzaFailure;
use crate::xmpp::{adhoc, muc};

/// Answers an iq: a result with the answer's payload, or the refusal.
pub(super) async fn on_iq(gateway: &Gateway, element: Element) -> Answer {
    let request = matches!(element.attr("type"), Some("get" | "set"));
    if request && element.children().count() != 1 {
        // RFC 6120 §8.2.3: exactly one payload.
        return Err(StanzaFailure::BadRequest(
            "an iq get or set carries exactly one payload".into(),
        ));
    }
    let iq = Iq::try_from(element)
        .map_err(|error| StanzaFailure::BadRequest(format!("this iq does not parse: {error}")))?;
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
                tracing::debug!(id, "ignored an unsolicited iq response");
            }
            return Ok(None);
        }
    };
    let Some(from) = from else {
        return Ok(None);
    };
    let answer = answer(gateway, is_set, &from, to.as_ref(), &payload).await;
    service::reply(from, to, id, answer).map(Some)
}

async fn answer(
    gateway: &Gateway,
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
            gateway.access.check(&user)?;
            registration_form(gateway, &user).await
        }
        (true, true, ("query", ns::REGISTER)) => {
            gateway.access.check(&user)?;
            registration_submitted(gateway, &user, payload).await
        }
        (true, false, ("query", service::GATEWAY)) => {
            gateway.access.check(&user)?;
            Ok(Some(service::prompt_query(&gateway.info().prompt)))
        }
        (true, true, ("query", service::GATEWAY)) => {
            gateway.access.check(&user)?;
            let typed = service::read_prompt(payload)?;
            let contact = gateway
                .bridge
                .parse_address(typed.trim())
                .map_err(|error| StanzaFailure::NotAcceptable(error.0))?;
            let jid = gateway
                .contact_jid(&contact)
                .map_err(StanzaFailure::NotAcceptable)?;
            Ok(Some(service::prompt_answer(&jid)))
        }
        (true, true, ("command", adhoc::NS)) => command(gateway, &user, None, payload).await,
        (true, false, ("query", ns::DISCO_ITEMS)) if payload.attr("node") == Some(adhoc::NS) => {
            Ok(Some(command_items(gateway, &user, &gateway.domain, false)))
        }
        (true, false, ("query", ns::DISCO_ITEMS))
            if gateway.info().capabilities.rooms && payload.attr("node").is_none() =>
        {
            gateway.access.check(&user)?;
            rooms::list(gateway, &user, payload).await.map(Some)
        }
        (true, false, ("query", ns::DISCO_INFO)) if payload.attr("node").is_some() => {
            command_node_info(gateway, payload, false)
        }
        (false, _, _) if let Some(room) = to.and_then(|to| gateway.room_of(to)) => {
            room_answer(gateway, is_set, from, to, &room, payload).await
        }
        (false, true, ("command", adhoc::NS))
            if let Some(contact) = commands::commanded_contact(gateway, to) =>
        {
            command(gateway, &user, Some(&contact), payload).await
        }
        (false, false, ("query", ns::DISCO_ITEMS))
            if payload.attr("node") == Some(adhoc::NS)
                && let Some(to) = to
                && commands::commanded_contact(gateway, Some(to)).is_some() =>
        {
            let jid = to.to_bare().to_string();
            Ok(Some(command_items(gateway, &user, &jid, true)))
        }
        (false, false, ("query", ns::DISCO_INFO))
            if payload.attr("node").is_some()
                && commands::commanded_contact(gateway, to).is_some() =>
        {
            command_node_info(gateway, payload, true)
        }
        (_, true, _) => Err(StanzaFailure::ServiceUnavailable),
        (true, false, _) => service::answer_get(&gateway.info(), Target::Gateway, payload),
        (false, false, ("query", ns::VERSION))
            if let Some(contact) = to.map(|to| gateway.contact_of(to)).transpose()?.flatten() =>
        {
            gateway.access.check(&user)?;
            software_version(gateway, &user, &contact, None).await
        }
        (false, false, ("ping", ns::PING))
            if let Some(contact) = to.map(|to| gateway.contact_of(to)).transpose()?.flatten() =>
        {
            gateway.access.check(&user)?;
            ping(gateway, &user, &contact, None).await
        }
        (false, false, _) => {
            let contact = to.map(|to| gateway.contact_of(to)).transpose()?.flatten();
            let offers = contact
                .as_ref()
                .is_some_and(|contact| gateway.bridge.offers_commands(contact));
            let name = contact
                .map(|contact| gateway.bridge.format_address(&contact))
                .unwrap_or_default();
            let target = if offers {
                Target::ContactWithCommands(&name)
            } else {
                Target::Contact(&name)
            };
            service::answer_get(&gateway.info(), target, payload)
        }
    }
}

/// An ad-hoc command (XEP-0050) run on the gateway, or on `contact`'s address.
async fn command(
    gateway: &Gateway,
    user: &str,
    contact: Option<&jabbridge_sdk::ForeignId>,
    payload: &Element,
) -> service::IqAnswer {
    let role = gateway.access.check(user)?;
    let request = adhoc::Request::parse(payload)?;
    let outcome = match (request.cancelled, contact) {
        (true, _) => None,
        (false, None) => Some(
            commands::run(
                gateway,
                user,
                role,
                &request.node,
                request.values,
                request.step.clone(),
            )
            .await?,
        ),
        (false, Some(contact)) => Some(
            commands::run_on_contact(gateway, user, role, contact, &request.node, request.values)
                .await?,
        ),
    };
    Ok(Some(adhoc::response(
        &request.node,
        &request.session,
        outcome,
    )))
}

/// The commands `user` may run at `jid`: the gateway's, or those on a contact's address.
fn command_items(gateway: &Gateway, user: &str, jid: &str, on_contact: bool) -> Element {
    let commands = match gateway.access.role(user) {
        Some(role) if on_contact => commands::contact_catalog(gateway, Some(role)),
        Some(role) => commands::catalog(gateway, Some(role)),
        None => Vec::new(),
    };
    let entries: Vec<adhoc::Entry<'_>> = commands.iter().map(|c| c.entry()).collect();
    adhoc::command_list(jid, &entries).into()
}

/// The disco#info of a command's node, on the gateway or on a contact's address.
fn command_node_info(gateway: &Gateway, payload: &Element, on_contact: bool) -> service::IqAnswer {
    let node = payload.attr("node").unwrap_or_default();
    let commands = if on_contact {
        commands::contact_catalog(gateway, None)
    } else {
        commands::catalog(gateway, None)
    };
    let entries: Vec<adhoc::Entry<'_>> = commands.iter().map(|c| c.entry()).collect();
    adhoc::node_info(node, &entries).map(Some)
}

/// XEP-0092 to a contact, or to an occupant in `room` (`contact` is then their nick): what
/// the bridge learns of their software, all of it as the name (IRC's CTCP replies are free
/// text). A bridge that cannot ask: `service-unavailable`, as before it was asked.
async fn software_version(
    gateway: &Gateway,
    user: &str,
    contact: &jabbridge_sdk::ForeignId,
    room: Option<&jabbridge_sdk::RoomId>,
) -> service::IqAnswer {
    let asker = jabbridge_sdk::UserJid::new(user);
    let call = gateway.bridge.contact_version(&asker, contact, room);
    let name = ask_network(gateway, user, "asking their software", call)
        .await?
        .ok_or(StanzaFailure::ServiceUnavailable)?;
    Ok(Some(service::version_result(&name)))
}

/// A ping (XEP-0199) to a contact, or to an occupant (`room`), asked of the network where
/// the bridge can (IRC: CTCP `PING`); answered for it where it cannot.
async fn ping(
    gateway: &Gateway,
    user: &str,
    contact: &jabbridge_sdk::ForeignId,
    room: Option<&jabbridge_sdk::RoomId>,
) -> service::IqAnswer {
    let asker = jabbridge_sdk::UserJid::new(user);
    let call = gateway.bridge.ping_contact(&asker, contact, room);
    ask_network(gateway, user, "asking whether they answer", call).await?;
    Ok(None)
}

/// Asks someone on the network a question for `user` (`call`, within the call timeout),
/// which costs the network a message and so counts against the user's rate: the answer, or
/// `None` where the bridge cannot ask; its other refusals as stanza errors (nobody of that
/// name: `item-not-found`; no answer, not connected: `service-unavailable` with its text).
async fn ask_network<T>(
    gateway: &Gateway,
    user: &str,
    what: &str,
    call: impl Future<Output = Result<T, jabbridge_sdk::RoomActionError>>,
) -> Result<Option<T>, StanzaFailure> {
    use jabbridge_sdk::RoomActionError;
    gateway.access.take(user)?;
    match gateway.call(what, call).await? {
        Ok(answer) => Ok(Some(answer)),
        Err(RoomActionError::NotSupported(_)) => Ok(None),
        Err(RoomActionError::NoSuchOccupant(text)) => Err(StanzaFailure::ItemNotFound(text)),
        Err(RoomActionError::Forbidden(text)) => Err(StanzaFailure::Forbidden(text)),
        Err(RoomActionError::Unavailable(text)) => Err(StanzaFailure::Unavailable(text)),
    }
}

/// The commands on a room's address (XEP-0050).
const ROOM_COMMANDS: [adhoc::Entry<'static>; 1] = [adhoc::Entry {
    node: rooms::CONFIGURE,
    name: rooms::CONFIGURE_NAME,
}];

/// An iq to a room or an occupant: a self-ping (XEP-0410), answered truthfully; a ping to
/// another occupant, asked of the network; the room's disco; its archive (XEP-0313); the
/// user's settings of the room (XEP-0050); an occupant's vCard (XEP-0054) and software
/// (XEP-0092); nothing else.
async fn room_answer(
    gateway: &Gateway,
    is_set: bool,
    from: &Jid,
    to: Option<&Jid>,
    room: &jabbridge_sdk::RoomId,
    payload: &Element,
) -> service::IqAnswer {
    let occupant = to.is_some_and(|to| to.resource().is_some());
    match (is_set, occupant, payload.name(), payload.ns().as_str()) {
        (false, true, "vCard", muc::NS_VCARD) => {
            let nick = to.and_then(Jid::resource).map_or("", |nick| nick.as_str());
            rooms::card(gateway, from, room, nick).map(Some)
        }
        (false, _, "ping", ns::PING) => {
            let own = rooms::ping(gateway, from, room)?;
            match to.and_then(Jid::resource) {
                Some(nick) if nick.as_str() != own => {
                    rooms::private_allowed(gateway, from, room, nick.as_str())?;
                    let user = from.to_bare().to_string();
                    let contact = jabbridge_sdk::ForeignId::new(nick.as_str());
                    ping(gateway, &user, &contact, Some(room)).await
                }
                // A self-ping, or one to the room: the sender is in it.
                _ => Ok(None),
            }
        }
        (false, true, "query", ns::VERSION) => {
            let nick = to.and_then(Jid::resource).map_or("", |nick| nick.as_str());
            rooms::private_allowed(gateway, from, room, nick)?;
            let user = from.to_bare().to_string();
            let contact = jabbridge_sdk::ForeignId::new(nick);
            software_version(gateway, &user, &contact, Some(room)).await
        }
        (false, false, "query", ns::DISCO_INFO) if payload.attr("node").is_none() => {
            Ok(Some(rooms::info(gateway, room)))
        }
        (false, false, "query", ns::DISCO_INFO) => {
            adhoc::node_info(payload.attr("node").unwrap_or_default(), &ROOM_COMMANDS).map(Some)
        }
        (false, false, "query", ns::DISCO_ITEMS) if payload.attr("node") == Some(adhoc::NS) => {
            let listed: &[adhoc::Entry<'_>] = match gateway.access.role(&from.to_bare().to_string())
            {
                Some(_) => &ROOM_COMMANDS,
                None => &[],
            };
            let jid = to.map(|to| to.to_bare().to_string()).unwrap_or_default();
            Ok(Some(adhoc::command_list(&jid, listed).into()))
        }
        (false, false, "query", ns::DISCO_ITEMS) => {
            service::answer_get(&gateway.info(), Target::Contact(""), payload)
        }
        (true, false, "command", adhoc::NS) => {
            let user = from.to_bare().to_string();
            gateway.access.check(&user)?;
            let request = adhoc::Request::parse(payload)?;
            if request.node != rooms::CONFIGURE {
                let node = &request.node;
                return Err(StanzaFailure::ItemNotFound(format!(
                    "no command '{node}' here"
                )));
            }
            let outcome = if request.cancelled {
                None
            } else {
                Some(rooms::configure(gateway, &user, room, request.values).await?)
            };
            Ok(Some(adhoc::response(
                &request.node,
                &request.session,
                outcome,
            )))
        }
        (true, false, "query", muc::NS_MAM) => rooms::archive_query(gateway, from, room, payload)
            .await
            .map(Some),
        (false, false, "query", muc::NS_MAM) => Ok(Some(muc::archive_form())),
        (true, false, "query", muc::NS_MUC_ADMIN) => {
            rooms::administer(gateway, from, room, payload).await?;
            Ok(None)
        }
        _ => Err(StanzaFailure::ServiceUnavailable),
    }
}

/// XEP-0077 `get`: the bridge's form, saying whether the user is registered.
async fn registration_form(gateway: &Gateway, user: &str) -> service::IqAnswer {
    let form = gateway
        .info()
        .registration
        .ok_or(StanzaFailure::ServiceUnavailable)?;
    let registered = gateway.is_registered(user).await?;
    Ok(Some(register::form_query(&form, registered)))
}

/// A registration in several steps, asked for with XEP-0077's single form.
fn several_steps(gateway: &Gateway) -> StanzaFailure {
    StanzaFailure::NotAcceptable(format!(
        "{} registers in several steps: run the command 'register' from your client's \
         commands (XEP-0050) instead",
        gateway.domain
    ))
}

/// XEP-0077 `set`: register, re-register (update) or remove.
async fn registration_submitted(
    gateway: &Gateway,
    user: &str,
    payload: &Element,
) -> service::IqAnswer {
    let form = gateway
        .info()
        .registration
        .ok_or(StanzaFailure::ServiceUnavailable)?;
    match register::parse_submission(payload, &form)? {
        Submission::Remove => registration::unregister(gateway, user, false).await?,
        Submission::Register(_) if gateway.info().capabilities.registration_steps => {
            return Err(several_steps(gateway));
        }
        Submission::Register(values) => {
            if let registration::Registered::Next { .. } =
                registration::register(gateway, user, None, &values).await?
            {
                return Err(several_steps(gateway));
            }
        }
    }
    Ok(None)
}
