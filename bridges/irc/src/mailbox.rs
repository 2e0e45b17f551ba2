//! A connection's mailbox: the commands its handles send it, in order, at most [`ROOM`]
//! waiting. A small channel for one receiver: tokio's `mpsc` pads its ends to cache lines
//! and allocates its slots 32 at a time, ~0.8 KiB per channel whether or not anything is
//! sent; this one is a lock, a queue and two `Notify`s, ~0.15 KiB, for every connection.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

/// Most items waiting; a sender past it waits for room ([`Sender::send`]) or is refused
/// ([`Sender::try_send`]).
pub const ROOM: usize = 256;

struct Mailbox<T> {
    inner: Mutex<Inner<T>>,
    /// Wakes the receiver: an item came, or the last sender went.
    ready: Notify,
    /// Wakes senders waiting for room: an item was taken from a full queue, or the receiver
    /// went.
    room: Notify,
}

struct Inner<T> {
    queue: VecDeque<T>,
    senders: usize,
    /// Whether the receiver is still there.
    open: bool,
}

impl<T> Mailbox<T> {
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        // Nothing panics while holding the lock; a poisoned lock still holds good data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A new mailbox: its one receiver and a first sender (clone it for more).
pub fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let mailbox = Arc::new(Mailbox {
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            senders: 1,
            open: true,
        }),
        ready: Notify::new(),
        room: Notify::new(),
    });
    (Sender(mailbox.clone()), Receiver(mailbox))
}

/// Sends to the mailbox; while any is left, the receiver keeps waiting for items.
pub struct Sender<T>(Arc<Mailbox<T>>);

/// Why an item was not taken: it is handed back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// The receiver is gone.
    Closed(T),
    /// [`ROOM`] items wait already.
    Full(T),
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the mailbox is full; hands it back if the receiver is
    /// gone.
    pub async fn send(&self, mut item: T) -> Result<(), T> {
        loop {
            let room = self.0.room.notified();
            tokio::pin!(room);
            // Registered before the look, so that room made after it wakes this sender.
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => item = back,
            }
            room.await;
        }
    }

    /// Queues `item` if there is room and the receiver is there.
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        let mut inner = self.0.lock();
        if !inner.open {
            return Err(Refused::Closed(item));
        }
        if inner.queue.len() >= ROOM {
            return Err(Refused::Full(item));
        }
        inner.queue.push_back(item);
        drop(inner);
        self.0.ready.notify_one();
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.0.lock().open
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        Self(self.0.clone())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.senders -= 1;
        let last = inner.senders == 0;
        drop(inner);
        if last {
            self.0.ready.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("mailbox::Sender")
    }
}

/// The mailbox's one reader.
pub struct Receiver<T>(Arc<Mailbox<T>>);

impl<T> Receiver<T> {
    /// The next item, in the order sent; `None` once every sender is gone and nothing
    /// waits. Cancel-safe: an item is taken only by the call that returns it.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut inner = self.0.lock();
                if let Some(item) = inner.queue.pop_front() {
                    let was_full = inner.queue.len() + 1 == ROOM;
                    drop(inner);
                    if was_full {
                        self.0.room.notify_waiters();
                    }
                    return Some(item);
                }
                if inner.senders == 0 {
                    return None;
                }
            }
            // A send between the look and this wait left a permit: no wake-up is lost.
            self.0.ready.notified().await;
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut inner = self.0.lock();
        inner.open = false;
        // Dropped outside the lock: an item's drop (a reply's sender) may wake a task.
        let waiting = std::mem::take(&mut inner.queue);
        drop(inner);
        drop(waiting);
        self.0.room.notify_waiters();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("mailbox::Receiver")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_come_in_order_and_none_once_every_sender_is_gone() {
        let (sender, mut receiver) = channel();
        let other = sender.clone();
        sender.send(1).await.unwrap();
        other.send(2).await.unwrap();
        drop(sender);
        assert_eq!(receiver.recv().await, Some(1));
        assert_eq!(receiver.recv().await, Some(2));
        drop(other);
        assert_eq!(receiver.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_item_and_for_the_last_sender_leaving() {
        let (sender, mut receiver) = channel::<u32>();
        let waiting = tokio::spawn(async move {
            let first = receiver.recv().await;
            let second = receiver.recv().await;
            (first, second)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        sender.send(7).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(sender);
        let got = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(got.unwrap().unwrap(), (Some(7), None));
    }

    #[tokio::test]
    async fn a_full_mailbox_refuses_try_send_and_makes_send_wait_for_room() {
        let (sender, mut receiver) = channel();
        for n in 0..ROOM {
            sender.try_send(n).unwrap();
        }
        assert_eq!(sender.try_send(ROOM), Err(Refused::Full(ROOM)));
        let late = sender.clone();
        let waiting = tokio::spawn(async move { late.send(ROOM).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "a send into a full mailbox waits");
        assert_eq!(receiver.recv().await, Some(0));
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(sent.unwrap().unwrap(), Ok(()));
        for n in 1..=ROOM {
            assert_eq!(receiver.recv().await, Some(n));
        }
    }

    #[tokio::test]
    async fn without_the_receiver_sends_are_handed_back_and_waiting_senders_freed() {
        let (sender, receiver) = channel();
        for n in 0..ROOM {
            sender.try_send(n).unwrap();
        }
        let late = sender.clone();
        let waiting = tokio::spawn(async move { late.send(ROOM).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sender.is_closed());
        drop(receiver);
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(sent.unwrap().unwrap(), Err(ROOM));
        assert!(sender.is_closed());
        assert_eq!(sender.try_send(1), Err(Refused::Closed(1)));
    }

    #[tokio::test]
    async fn a_receive_dropped_after_its_wake_up_loses_nothing() {
        let (sender, mut receiver) = channel();
        {
            // Waiting (registered with the Notify), woken by the send, then dropped
            // unpolled, as a select does with the branches it did not take.
            let mut waiting = Box::pin(receiver.recv());
            let pending = std::future::poll_fn(|context| {
                std::task::Poll::Ready(waiting.as_mut().poll(context).is_pending())
            })
            .await;
            assert!(pending);
            sender.send(1).await.unwrap();
        }
        sender.send(2).await.unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), receiver.recv()).await;
        assert_eq!(next.unwrap(), Some(1));
        assert_eq!(receiver.recv().await, Some(2));
    }
}
