//! From a commit to a lane: a committed message is pushed to its conversation's lane in
//! memory, and the lane's task (started with its first message) delivers its messages one
//! after another. Called on the committer's task, so nothing here waits.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use super::{Delivery, inbox, outbox};
use crate::lanes::{LINGER, Pushed};

/// Counts a running lane task for as long as it lives.
struct Running<'a>(&'a Delivery);

impl<'a> Running<'a> {
    fn start(delivery: &'a Delivery) -> Self {
        delivery.running.fetch_add(1, Ordering::AcqRel);
        Self(delivery)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Hands a committed user's message to its conversation's lane, starting the lane's task if
/// it had none.
pub fn outgoing(delivery: &Arc<Delivery>, lane: String, item: outbox::Item) {
    if let Pushed::Opened = delivery.outbox.push(&lane, item) {
        let delivery = delivery.clone();
        let span = delivery.span.clone();
        tokio::spawn(
            async move {
                let _running = Running::start(&delivery);
                while let Some(item) = delivery.outbox.next_within(&lane, LINGER).await {
                    if !delivery.shutdown.is_stopping() {
                        // At shutdown the rest stays queued: the rows are released for the
                        // next start.
                        outbox::send(&delivery, item).await;
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Hands a committed bridge's message to its conversation's lane (see [`outgoing`]).
pub fn incoming(delivery: &Arc<Delivery>, lane: String, item: inbox::Item) {
    if let Pushed::Opened = delivery.inbox.push(&lane, item) {
        let delivery = delivery.clone();
        let span = delivery.span.clone();
        tokio::spawn(
            async move {
                let _running = Running::start(&delivery);
                while let Some(item) = delivery.inbox.next_within(&lane, LINGER).await {
                    if !delivery.shutdown.is_stopping() {
                        inbox::deliver(&delivery, item).await;
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// Waits until no lane task runs (or forever, if sends never end: bound it).
pub async fn settled(delivery: &Delivery) {
    loop {
        let idle = delivery.idle.notified();
        if delivery.running.load(Ordering::Acquire) == 0 {
            return;
        }
        idle.await;
    }
}
