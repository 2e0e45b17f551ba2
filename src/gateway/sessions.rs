//! Users' sessions with the bridge ([`jabbridge_sdk::Bridge::start_session`]): started for
//! every registered user at start and on registration, stopped on unregistering, removal
//! (here, through XMPP; elsewhere, the CLI or another instance, seen by [`watch`]) and
//! shutdown. Which sessions run is kept here, so that shutdown stops each once.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jabbridge_sdk::{RegistrationData, SessionEnd, UserJid};

use super::Gateway;

/// How long shutdown waits for the bridge to stop every session.
const STOPPING: Duration = Duration::from_secs(5);

/// The users whose session runs.
#[derive(Debug, Default)]
pub struct Sessions {
    running: Mutex<BTreeSet<String>>,
}

impl Sessions {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts (or, for a user who registered anew, starts again) `user`'s session.
pub async fn start(gateway: &Gateway, user: &str, registration: &RegistrationData) {
    gateway.sessions.set().insert(user.to_owned());
    let jid = UserJid::new(user);
    let call = gateway.bridge.start_session(&jid, registration);
    if let Err(failure) = gateway.call("starting a session", call).await {
        tracing::warn!(user, %failure, "starting a session timed out");
    }
}

/// Stops `user`'s session, if it runs.
pub async fn stop(gateway: &Gateway, user: &str, why: SessionEnd) {
    if !gateway.sessions.set().remove(user) {
        return;
    }
    let jid = UserJid::new(user);
    let call = gateway.bridge.stop_session(&jid, why);
    if let Err(failure) = gateway.call("stopping a session", call).await {
        tracing::warn!(user, %failure, "stopping a session timed out");
    }
}

/// At start: a session for every registered user.
pub async fn start_all(gateway: &Gateway) {
    let registrations = match gateway.store.registrations(&gateway.domain).await {
        Ok(registrations) => registrations,
        Err(error) => {
            tracing::error!(%error, "cannot read the registrations to start their sessions");
            return;
        }
    };
    for (user, registration) in registrations {
        start(gateway, &user, &registration).await;
    }
}

/// Until shutdown, every `every`: the sessions of users no longer registered (removed by
/// the CLI, or through another instance) stop, and their rooms are left.
pub async fn watch(gateway: Arc<Gateway>, every: Duration, shutdown: jabbridge_sdk::Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.clone().wait() => return,
        }
        let registered: BTreeSet<String> =
            match gateway.store.registered_jids(&gateway.domain).await {
                Ok(users) => users.into_iter().collect(),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the registered users");
                    continue;
                }
            };
        let gone: Vec<String> = gateway
            .sessions
            .set()
            .difference(&registered)
            .cloned()
            .collect();
        for user in gone {
            tracing::info!(user, "a user was removed elsewhere; their session stops");
            super::rooms::forget_user(&gateway, &user).await;
            stop(&gateway, &user, SessionEnd::Removed).await;
        }
    }
}

/// At shutdown: every session stops, within a few seconds in all.
pub async fn stop_all(gateway: &Gateway) {
    let users: Vec<String> = gateway.sessions.set().iter().cloned().collect();
    let stopping = async {
        for user in users {
            stop(gateway, &user, SessionEnd::Shutdown).await;
        }
    };
    if tokio::time::timeout(STOPPING, stopping).await.is_err() {
        tracing::warn!("the bridge did not stop every session in time");
    }
}
