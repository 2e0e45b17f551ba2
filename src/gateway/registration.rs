//! XEP-0077 registration as the gateway runs it: the bridge checks the values, the store
//! keeps them, and XEP-0100 presence subscriptions follow (asked for on registering, ended
//! both ways on unregistering), and the user's session starts and stops with it.

use jabbridge_sdk::{Form, FormValues, RegistrationError, RegistrationStep, SessionEnd, UserJid};
use xmpp_parsers::{jid::BareJid, jid::Jid, presence::Type as PresenceType};

use super::{Gateway, presence};
use crate::xmpp::stanza::{self, StanzaFailure};

/// Where a registration step led.
pub enum Registered {
    /// Registered; whether it was new.
    Done {
        /// Not an update of an earlier registration.
        new: bool,
    },
    /// The bridge asks for another step (XEP-0050 only).
    Next {
        /// The bridge's name for it.
        step: String,
        /// What it asks.
        form: Form,
    },
}

/// Registers `user` with `values` or updates their registration: the registration form's
/// values (`step` `None`, checked by the form, then by the bridge), or those of a later step
/// the bridge asked for. A new registration asks to subscribe to the user's presence, so
/// that the gateway appears in their roster.
pub async fn register(
    gateway: &Gateway,
    user: &str,
    step: Option<&str>,
    values: &FormValues,
) -> Result<Registered, StanzaFailure> {
    let form = gateway.info().registration.ok_or_else(|| {
        StanzaFailure::FeatureNotImplemented(format!("{} needs no registration", gateway.domain))
    })?;
    if step.is_none() {
        form.validate(values)
            .map_err(StanzaFailure::NotAcceptable)?;
    }
    let answer = gateway
        .call(
            "the registration",
            gateway
                .bridge
                .register_step(&UserJid::new(user), step, values),
        )
        .await?
        .map_err(|error| match error {
            RegistrationError::Rejected(reason) => StanzaFailure::NotAcceptable(reason),
            RegistrationError::Unavailable(reason) => StanzaFailure::Unavailable(reason),
        })?;
    let data = match answer {
        RegistrationStep::Done(data) => data,
        RegistrationStep::Next { step, form } => return Ok(Registered::Next { step, form }),
    };
    let new = !gateway.is_registered(user).await?;
    gateway
        .store
        .put_registration(&gateway.domain, user, &data)
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    tracing::info!(user, new, "user registered");
    super::sessions::start(gateway, user, &data).await;
    if new && let (Ok(to), Some(from)) = (user.parse::<BareJid>(), gateway.gateway_jid()) {
        let nick = Some(gateway.info().name.clone());
        let subscribe = stanza::presence(PresenceType::Subscribe, from, Jid::from(to), nick);
        gateway.send(subscribe).await;
    }
    Ok(Registered::Done { new })
}

/// Unregisters `user`: deletes their registration (and, when an admin removes them, the
/// identities an admin gave them) and ends the gateway's presence subscription both ways
/// (XEP-0100 §4.3). A user unregistering keeps what an admin gave them.
pub async fn unregister(
    gateway: &Gateway,
    user: &str,
    by_admin: bool,
) -> Result<(), StanzaFailure> {
    let removed = gateway
        .store
        .delete_registration(&gateway.domain, user, by_admin)
        .await
        .map_err(|error| gateway.storage_failed(error))?;
    if !removed {
        return Err(StanzaFailure::ItemNotFound(format!(
            "{user} is not registered with {}",
            gateway.domain
        )));
    }
    tracing::info!(user, "user unregistered");
    if let (Ok(to), Some(from)) = (user.parse::<BareJid>(), gateway.gateway_jid()) {
        for type_ in [
            PresenceType::Unsubscribe,
            PresenceType::Unsubscribed,
            PresenceType::Unavailable,
        ] {
            let presence = stanza::presence(type_, from.clone(), Jid::from(to.clone()), None);
            gateway.send(presence).await;
        }
    }
    presence::went_offline(gateway, user, None).await;
    super::rooms::forget_user(gateway, user).await;
    let why = if by_admin {
        SessionEnd::Removed
    } else {
        SessionEnd::Unregistered
    };
    super::sessions::stop(gateway, user, why).await;
    Ok(())
}
