//! When the database is read back: taking over the rows no live instance holds (at start,
//! and every half lease for instances that died), releasing this instance's rows at
//! shutdown, and sweeping old delivered rows and id mappings.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tracing::Instrument;

use super::{Delivery, Inboxed, OutboxEntry, dispatch, inbox, outbox};
use crate::store::{Queue, Recovered, Write, now_millis};

/// How often delivered rows older than `delivery.keep_delivered` are deleted.
const SWEEP: Duration = Duration::from_secs(3600);
/// How long shutdown waits for sends in progress before releasing the rows.
const SETTLE: Duration = Duration::from_secs(3);

fn unix_millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Takes over the rows no live instance holds (see [`crate::store::Store::take_over`]) and
/// hands them to their lanes, oldest first. At start on SQLite, where only one instance runs,
/// that is every undelivered row of this bridge.
pub async fn recover(delivery: &Arc<Delivery>, at_start: bool) {
    let stale_before = if at_start && delivery.store.is_sqlite() {
        None
    } else {
        Some(now_millis().saturating_sub(unix_millis(delivery.config.lease)))
    };
    let owner = delivery.committer.owner();
    for queue in [Queue::Outbox, Queue::Inbox] {
        let rows = match delivery
            .store
            .take_over(queue, &delivery.domain, owner, stale_before)
            .await
        {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(?queue, %error, "cannot take over queued messages");
                continue;
            }
        };
        if !rows.is_empty() {
            tracing::info!(?queue, count = rows.len(), "took over queued messages");
        }
        for row in rows {
            dispatch_recovered(delivery, queue, row).await;
        }
    }
}

async fn dispatch_recovered(delivery: &Arc<Delivery>, queue: Queue, row: Recovered) {
    let unreadable = |error: serde_json::Error| {
        tracing::error!(row = row.id, %error, "a queued message does not parse; giving up on it");
        Write::Fail {
            queue,
            id: row.id,
            reason: format!("unreadable: {error}"),
        }
    };
    match queue {
        Queue::Outbox => match serde_json::from_str::<OutboxEntry>(&row.payload) {
            Ok(entry) => {
                let attempts = u32::try_from(row.attempts).unwrap_or(u32::MAX);
                let item = outbox::Item::recovered(row.id, entry, attempts, row.next_attempt_at);
                dispatch::outgoing(delivery, row.conversation, item);
            }
            Err(error) => delivery.committer.submit(unreadable(error), None).await,
        },
        Queue::Inbox => match serde_json::from_str::<Inboxed>(&row.payload) {
            Ok(entry) => {
                dispatch::incoming(delivery, row.conversation, inbox::Item::new(row.id, entry))
            }
            Err(error) => delivery.committer.submit(unreadable(error), None).await,
        },
    }
}

/// Starts the task that takes over other instances' messages and releases this one's at
/// shutdown, and the sweeper of old rows. The first takeover ([`recover`] with `at_start`)
/// must have run before the gateway accepts anything, so that old messages reach their lanes
/// before new ones.
pub fn spawn_workers(delivery: &Arc<Delivery>, tasks: &mut JoinSet<()>) {
    let span = delivery.span.clone();
    tasks.spawn(keeper(delivery.clone()).instrument(span.clone()));
    tasks.spawn(sweeper(delivery.clone()).instrument(span));
}

async fn keeper(delivery: Arc<Delivery>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(delivery.config.lease / 2) => {}
            () = delivery.shutdown.clone().wait() => break,
        }
        recover(&delivery, false).await;
    }
    // Let sends in progress finish, then hand back what is left.
    let settle = delivery.config.lease.min(SETTLE);
    let _ = tokio::time::timeout(settle, dispatch::settled(&delivery)).await;
    for queue in [Queue::Outbox, Queue::Inbox] {
        match delivery
            .store
            .release(queue, delivery.committer.owner())
            .await
        {
            Ok(0) => {}
            Ok(count) => {
                tracing::info!(?queue, count, "released queued messages for the next start")
            }
            Err(error) => {
                tracing::warn!(%error, "cannot release queued messages; another instance takes them after delivery.lease")
            }
        }
    }
}

async fn sweeper(delivery: Arc<Delivery>) {
    let store = &delivery.store;
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP) => {}
            () = delivery.shutdown.clone().wait() => return,
        }
        let keep = unix_millis(delivery.config.keep_delivered);
        let before = now_millis().saturating_sub(keep);
        if let Err(error) = store.forget_message_ids(before).await {
            tracing::warn!(%error, "cannot delete old message ids");
        }
        let today = now_millis() / 86_400_000;
        if let Err(error) = store.forget_spend(today - 1).await {
            tracing::warn!(%error, "cannot delete old spend counts");
        }
        let day_ago = now_millis().saturating_sub(86_400_000);
        if let Err(error) = store.forget_instances(None, day_ago).await {
            tracing::warn!(%error, "cannot forget old instances");
        }
        for queue in [Queue::Outbox, Queue::Inbox] {
            match store.forget_delivered(queue, before).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(?queue, count, "forgot old delivered messages"),
                Err(error) => tracing::warn!(%error, "cannot delete old messages"),
            }
        }
    }
}
