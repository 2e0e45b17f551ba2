//! Users' sessions with the bridge ([`jabbridge_sdk::Bridge::start_session`]), and which
//! instance runs each. A session runs in one instance at a time, the one that claimed it in
//! the `sessions` table: at start ([`start_all`]), on registration ([`start`]), when a stanza
//! comes from a registered user whose session nobody runs ([`route`]), and when its instance
//! stopped or died ([`watch`], after `delivery.lease`). A stanza from a user whose session
//! another live instance runs is handed off to it through the database ([`route`]); that
//! instance picks it up at once on PostgreSQL's NOTIFY, or within a second ([`pick_up`]).
//! Sessions stop on unregistering, removal (here, or elsewhere: seen by [`watch`]), when
//! another instance took them over, and at shutdown, which hands them back for the others.
//! With SQLite one instance runs, and every session is its own.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use jabbridge_sdk::{RegistrationData, SessionEnd, UserJid};
use tokio::sync::mpsc;
use xmpp_parsers::minidom::Element;

use super::Gateway;
use crate::store::now_millis;
use crate::store::sessions::Claimed;

/// How long shutdown waits for the bridge to stop every session.
const STOPPING: Duration = Duration::from_secs(5);
/// How often an instance looks for stanzas handed off to it, besides being told.
const HANDOFF_POLL: Duration = Duration::from_secs(1);
/// Handed-off stanzas read at once.
const HANDOFF_BATCH: i64 = 512;

/// The sessions this instance runs, and where the others run.
#[derive(Debug, Default)]
pub struct Sessions {
    running: Mutex<BTreeSet<String>>,
    /// Users whose session another live instance runs, and that instance, as last read.
    elsewhere: Mutex<HashMap<String, String>>,
    /// Handed-off stanzas taken, by row: `false` while being handled, `true` once handled
    /// (until a read no longer shows the row, so that a read that raced its deletion does
    /// not hand it over twice).
    handling: Mutex<HashMap<i64, bool>>,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Sessions {
    fn set(&self) -> MutexGuard<'_, BTreeSet<String>> {
        locked(&self.running)
    }

    /// Whether this instance runs `user`'s session.
    pub fn runs(&self, user: &str) -> bool {
        self.set().contains(user)
    }
}

/// Where a stanza is handled.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Here.
    Here,
    /// In the instance that runs its sender's session: it was handed off.
    HandedOff,
}

/// The heartbeat before which an instance is taken for dead; `None` with SQLite, where no
/// other instance runs.
fn stale_before(gateway: &Gateway) -> Option<i64> {
    if gateway.store.is_sqlite() {
        return None;
    }
    let lease = i64::try_from(gateway.delivery.lease().as_millis()).unwrap_or(i64::MAX);
    Some(now_millis().saturating_sub(lease))
}

/// Where the stanza `element` from `from` is handled: here, unless another live instance
/// runs the sender's session, in which case it is handed off to it. A registered user whose
/// session nobody runs has it claimed here.
pub async fn route(
    gateway: &Gateway,
    from: Option<&str>,
    element: &Element,
) -> Result<Route, String> {
    if gateway.store.is_sqlite() {
        return Ok(Route::Here);
    }
    let Some(user) = from
        .and_then(|from| from.parse::<xmpp_parsers::jid::Jid>().ok())
        .map(|from| from.to_bare().to_string())
    else {
        return Ok(Route::Here);
    };
    let user = user.as_str();
    if gateway.sessions.runs(user) {
        return Ok(Route::Here);
    }
    if !locked(&gateway.sessions.elsewhere).contains_key(user) {
        if !gateway.is_registered(user).await.unwrap_or(false) {
            return Ok(Route::Here);
        }
        let claimed = claim_one(gateway, user)
            .await
            .map_err(|error| error.to_string())?;
        if !claimed.is_empty() {
            take(gateway, claimed).await;
            return Ok(Route::Here);
        }
        refresh_elsewhere(gateway).await;
        if !locked(&gateway.sessions.elsewhere).contains_key(user) {
            // Claimed meanwhile by an instance that died since, or unregistered: here.
            return Ok(Route::Here);
        }
    }
    gateway
        .store
        .sessions()
        .hand_off(&gateway.domain, user, &String::from(element))
        .await
        .map_err(|error| error.to_string())?;
    tracing::debug!(
        user,
        "handed a stanza off to the instance running the session"
    );
    crate::metrics::handed_off(&gateway.domain);
    Ok(Route::HandedOff)
}

/// Claims `user`'s session here unless a live instance runs it; what was claimed (nothing
/// when another runs it).
async fn claim_one(
    gateway: &Gateway,
    user: &str,
) -> Result<Vec<Claimed>, crate::store::StoreError> {
    gateway
        .store
        .sessions()
        .claim(
            &gateway.domain,
            gateway.delivery.instance(),
            Some(user),
            stale_before(gateway),
        )
        .await
}

/// Re-reads which live instance runs whose session.
async fn refresh_elsewhere(gateway: &Gateway) {
    let Some(stale_before) = stale_before(gateway) else {
        return;
    };
    match gateway
        .store
        .sessions()
        .others(&gateway.domain, gateway.delivery.instance(), stale_before)
        .await
    {
        Ok(others) => *locked(&gateway.sessions.elsewhere) = others,
        Err(error) => tracing::warn!(%error, "cannot read where the sessions run"),
    }
}

/// Runs the sessions just claimed here: each starts, and its user's rooms are joined again.
async fn take(gateway: &Gateway, claimed: Vec<Claimed>) {
    if claimed.is_empty() {
        return;
    }
    let users: Vec<String> = claimed.iter().map(|claim| claim.jid.clone()).collect();
    {
        let mut elsewhere = locked(&gateway.sessions.elsewhere);
        for user in &users {
            elsewhere.remove(user);
        }
    }
    let registrations = match gateway.store.registrations(&gateway.domain).await {
        Ok(registrations) => registrations,
        Err(error) => {
            tracing::error!(%error, "cannot read the registrations to start their sessions");
            return;
        }
    };
    let mut by_user: HashMap<String, RegistrationData> = registrations.into_iter().collect();
    for user in &users {
        if let Some(registration) = by_user.remove(user) {
            run(gateway, user, &registration).await;
        }
    }
    super::rooms::restore(gateway, &claimed).await;
}

/// Starts `user`'s session here (or again, with new registration data).
async fn run(gateway: &Gateway, user: &str, registration: &RegistrationData) {
    gateway.sessions.set().insert(user.to_owned());
    let jid = UserJid::new(user);
    let call = gateway.bridge.start_session(&jid, registration);
    if let Err(failure) = gateway.call("starting a session", call).await {
        tracing::warn!(user, %failure, "starting a session timed out");
    }
}

/// On registration: starts (or, for a user who registered anew, starts again) `user`'s
/// session here, unless another live instance runs it.
pub async fn start(gateway: &Gateway, user: &str, registration: &RegistrationData) {
    if !gateway.sessions.runs(user) {
        match claim_one(gateway, user).await {
            Ok(claimed) if claimed.is_empty() => {
                tracing::info!(user, "another instance runs this user's session");
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(user, %error, "cannot claim a session; it starts here");
            }
        }
    }
    run(gateway, user, registration).await;
}

/// Stops `user`'s session, if it runs here; unless it was `Moved` or stopped for shutdown,
/// it is forgotten in the database too.
pub async fn stop(gateway: &Gateway, user: &str, why: SessionEnd) {
    if matches!(why, SessionEnd::Unregistered | SessionEnd::Removed)
        && let Err(error) = gateway.store.sessions().forget(&gateway.domain, user).await
    {
        tracing::warn!(user, %error, "cannot forget a session");
    }
    if !gateway.sessions.set().remove(user) {
        return;
    }
    let jid = UserJid::new(user);
    let call = gateway.bridge.stop_session(&jid, why);
    if let Err(failure) = gateway.call("stopping a session", call).await {
        tracing::warn!(user, %failure, "stopping a session timed out");
    }
}

/// At start: claims the sessions no live instance runs (every one, with SQLite), starts
/// them and joins their users' rooms again.
pub async fn start_all(gateway: &Gateway) {
    let stale_before = stale_before(gateway);
    match gateway
        .store
        .sessions()
        .claim(
            &gateway.domain,
            gateway.delivery.instance(),
            None,
            stale_before,
        )
        .await
    {
        Ok(claimed) => take(gateway, claimed).await,
        Err(error) => tracing::error!(%error, "cannot claim the sessions to start them"),
    }
    refresh_elsewhere(gateway).await;
}

/// Until shutdown, every `every`: the sessions of users no longer registered (removed by
/// the CLI, or through another instance) stop, and their rooms are left; with several
/// instances, the sessions of dead ones are taken over, and those another instance took
/// over from this one stop here.
pub async fn watch(gateway: Arc<Gateway>, every: Duration, shutdown: jabbridge_sdk::Shutdown) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shutdown.clone().wait() => return,
        }
        stop_removed(&gateway).await;
        if let Err(error) = gateway
            .store
            .rooms()
            .forget_orphan_cursors(&gateway.domain)
            .await
        {
            tracing::warn!(%error, "cannot forget old room cursors");
        }
        if gateway.store.is_sqlite() {
            continue;
        }
        let tables = gateway.store.sessions();
        let me = gateway.delivery.instance();
        // Read before the table: a session claimed meanwhile is in the table, not here.
        let running: BTreeSet<String> = gateway.sessions.set().clone();
        match tables.owned(&gateway.domain, me).await {
            Ok(owned) => {
                let owned: BTreeSet<String> = owned.into_iter().collect();
                let lost: Vec<String> = running.difference(&owned).cloned().collect();
                for user in lost {
                    tracing::warn!(
                        user,
                        "another instance took this session over (this one was silent longer \
                         than delivery.lease); it stops here"
                    );
                    super::rooms::drop_user(&gateway, &user);
                    stop(&gateway, &user, SessionEnd::Moved).await;
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read which sessions run here"),
        }
        match tables
            .claim(&gateway.domain, me, None, stale_before(&gateway))
            .await
        {
            Ok(claimed) => {
                if !claimed.is_empty() {
                    tracing::info!(
                        count = claimed.len(),
                        "took over the sessions of a stopped or dead instance"
                    );
                }
                take(&gateway, claimed).await;
            }
            Err(error) => tracing::warn!(%error, "cannot take over sessions"),
        }
        refresh_elsewhere(&gateway).await;
    }
}

/// Stops the sessions of users no longer registered.
async fn stop_removed(gateway: &Gateway) {
    let registered: BTreeSet<String> = match gateway.store.registered_jids(&gateway.domain).await {
        Ok(users) => users.into_iter().collect(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the registered users");
            return;
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
        super::rooms::forget_user(gateway, &user).await;
        stop(gateway, &user, SessionEnd::Removed).await;
    }
}

/// Until shutdown (PostgreSQL only): takes the stanzas other instances handed off for the
/// users whose session runs here, oldest first, and gives them to the gateway (`to`) with
/// their row, which is deleted once handled ([`handled`]).
pub async fn pick_up(
    gateway: Arc<Gateway>,
    to: mpsc::Sender<(Element, i64)>,
    shutdown: jabbridge_sdk::Shutdown,
) {
    let mut signals = match gateway.store.handoff_signals().await {
        Ok(Some(signals)) => Some(signals),
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for handed-off stanzas; looking every second");
            None
        }
    };
    loop {
        let told = async {
            match signals.as_mut() {
                Some(signals) => loop {
                    match signals.next().await {
                        Ok(domain) if domain == gateway.domain => return,
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(%error, "lost the listener of handed-off stanzas");
                            tokio::time::sleep(HANDOFF_POLL).await;
                            return;
                        }
                    }
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = told => {}
            () = tokio::time::sleep(HANDOFF_POLL) => {}
            () = shutdown.clone().wait() => return,
        }
        let rows = match gateway
            .store
            .sessions()
            .handed_to(&gateway.domain, gateway.delivery.instance(), HANDOFF_BATCH)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "cannot read handed-off stanzas");
                continue;
            }
        };
        {
            let present: HashSet<i64> = rows.iter().map(|row| row.id).collect();
            locked(&gateway.sessions.handling).retain(|id, done| !*done || present.contains(id));
        }
        for row in rows {
            {
                let mut handling = locked(&gateway.sessions.handling);
                if handling.contains_key(&row.id) {
                    continue;
                }
                handling.insert(row.id, false);
            }
            match row.stanza.parse::<Element>() {
                Ok(element) => {
                    if to.send((element, row.id)).await.is_err() {
                        return;
                    }
                }
                Err(error) => {
                    tracing::error!(row = row.id, %error, "a handed-off stanza does not parse; dropping it");
                    handled(&gateway, row.id).await;
                }
            }
        }
    }
}

/// A handed-off stanza was handled: its row goes. If it cannot, the row is taken again at
/// the next look and handled once more (at least once).
pub async fn handled(gateway: &Gateway, id: i64) {
    match gateway.store.sessions().handled(id).await {
        Ok(()) => {
            locked(&gateway.sessions.handling).insert(id, true);
        }
        Err(error) => {
            tracing::warn!(row = id, %error, "cannot delete a handled stanza; it is handled again");
            locked(&gateway.sessions.handling).remove(&id);
        }
    }
}

/// At shutdown: every session stops, within a few seconds in all, and is handed back for
/// the other instances (or the next start) to claim.
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
    if let Err(error) = gateway
        .store
        .sessions()
        .release(&gateway.domain, gateway.delivery.instance())
        .await
    {
        tracing::warn!(%error, "cannot hand the sessions back; other instances take them after delivery.lease");
    }
}
