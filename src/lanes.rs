//! Ordered lanes: work items of one key (a user) are handled one after another, in the order
//! they came; items of different keys are handled at the same time. A lane exists only while
//! it has work (and for a moment after, see [`Lanes::next_within`]), so idle users cost
//! nothing.
//!
//! The gateway puts every stanza in its sender's lane, so one user's slow bridge call holds up
//! that user's later stanzas and no one else's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// How long the gateway's lanes wait for more once empty ([`Lanes::next_within`]): longer
/// than the gaps of a steady stream (a client's posts, a room's commits under load), short
/// enough that an idle user's lane is gone at once.
pub const LINGER: Duration = Duration::from_millis(20);

/// Lanes of one kind of work.
#[derive(Debug)]
pub struct Lanes<T> {
    queues: Mutex<HashMap<String, Lane<T>>>,
    /// Most items waiting in one lane; past it [`Lanes::push`] refuses.
    depth: usize,
}

/// One key's items, and how its task waits for more.
#[derive(Debug)]
struct Lane<T> {
    items: VecDeque<T>,
    /// Set while the lane's task waits in [`Lanes::next_within`]: [`Lanes::push`] wakes it.
    waiting: Option<Arc<Notify>>,
}

/// What [`Lanes::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// The key had no lane: one was opened with this item, and the caller must start a task
    /// that takes items with [`Lanes::next_within`] until it returns `None`.
    Opened,
    /// Queued behind the lane's earlier items; its task will take it.
    Queued,
    /// The lane already holds `depth` items: the item is handed back.
    Full(T),
}

impl<T> Lanes<T> {
    /// Lanes that hold at most `depth` waiting items each.
    pub fn new(depth: usize) -> Self {
        Self {
            queues: Mutex::new(HashMap::new()),
            depth: depth.max(1),
        }
    }

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lane<T>>> {
        // Nothing here panics while holding the lock; a poisoned lock still holds good data.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` in `key`'s lane.
    pub fn push(&self, key: &str, item: T) -> Pushed<T> {
        let mut queues = self.queues();
        match queues.get_mut(key) {
            Some(lane) if lane.items.len() >= self.depth => Pushed::Full(item),
            Some(lane) => {
                lane.items.push_back(item);
                if let Some(waiting) = &lane.waiting {
                    waiting.notify_one();
                }
                Pushed::Queued
            }
            None => {
                let lane = Lane {
                    items: VecDeque::from([item]),
                    waiting: None,
                };
                queues.insert(key.to_owned(), lane);
                Pushed::Opened
            }
        }
    }

    /// The next item of `key`'s lane. An empty lane stays open for up to `linger`, and its
    /// task takes what is pushed meanwhile: work that comes in a steady stream (a user's
    /// posts, a room's messages under load) keeps one task instead of starting one per item.
    /// `None` closes the lane (its task must then end), under the same lock that
    /// [`Lanes::push`] takes, so no item is ever left behind; with no linger, at once.
    pub async fn next_within(&self, key: &str, linger: Duration) -> Option<T> {
        loop {
            let waiting = {
                let mut queues = self.queues();
                let lane = queues.get_mut(key)?;
                if let Some(item) = lane.items.pop_front() {
                    lane.waiting = None;
                    return Some(item);
                }
                if linger.is_zero() {
                    queues.remove(key);
                    return None;
                }
                lane.waiting.get_or_insert_with(Arc::default).clone()
            };
            // A push between the lock and here left a permit: this returns at once.
            if tokio::time::timeout(linger, waiting.notified())
                .await
                .is_err()
            {
                let mut queues = self.queues();
                let lane = queues.get_mut(key)?;
                if lane.items.is_empty() {
                    queues.remove(key);
                    return None;
                }
            }
        }
    }

    /// Whether `key`'s lane has work in hand: items waiting, or its task busy with one (a
    /// lane whose task waits for more in [`Lanes::next_within`] has none).
    pub fn has(&self, key: &str) -> bool {
        self.queues()
            .get(key)
            .is_some_and(|lane| !lane.items.is_empty() || lane.waiting.is_none())
    }

    /// How many lanes are open (users with work in hand, or their tasks waiting for more).
    pub fn open(&self) -> usize {
        self.queues().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lane_opens_queues_in_order_refuses_when_full_and_closes_when_empty() {
        let next =
            async |lanes: &Lanes<u32>, key: &str| lanes.next_within(key, Duration::ZERO).await;
        let lanes = Lanes::new(2);
        assert_eq!(lanes.push("alice", 1), Pushed::Opened);
        assert_eq!(lanes.push("bob", 10), Pushed::Opened);
        assert_eq!(lanes.push("alice", 2), Pushed::Queued);
        assert_eq!(lanes.push("alice", 3), Pushed::Full(3));
        assert_eq!(next(&lanes, "alice").await, Some(1));
        assert_eq!(lanes.push("alice", 3), Pushed::Queued);
        assert_eq!(next(&lanes, "alice").await, Some(2));
        assert_eq!(next(&lanes, "alice").await, Some(3));
        assert_eq!(lanes.open(), 2);
        // Empty: the lane closes, and the next push opens a new one.
        assert_eq!(next(&lanes, "alice").await, None);
        assert_eq!(lanes.open(), 1);
        assert_eq!(lanes.push("alice", 4), Pushed::Opened);
        assert_eq!(next(&lanes, "bob").await, Some(10));
        assert_eq!(next(&lanes, "bob").await, None);
        assert_eq!(next(&lanes, "bob").await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_lane_takes_what_comes_meanwhile_and_closes_after() {
        let lanes = Arc::new(Lanes::new(10));
        assert_eq!(lanes.push("alice", 1), Pushed::Opened);
        let linger = Duration::from_millis(20);
        assert_eq!(lanes.next_within("alice", linger).await, Some(1));
        assert!(lanes.has("alice"), "busy with its item");
        let task = {
            let lanes = lanes.clone();
            tokio::spawn(async move {
                let mut taken = Vec::new();
                while let Some(item) = lanes.next_within("alice", linger).await {
                    taken.push(item);
                }
                taken
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // The task waits for more: the lane is open, with no work in hand.
        assert!(!lanes.has("alice"));
        assert_eq!(lanes.open(), 1);
        // Pushed to the waiting task, not a new one.
        assert_eq!(lanes.push("alice", 2), Pushed::Queued);
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert_eq!(lanes.push("alice", 3), Pushed::Queued);
        assert_eq!(task.await.expect("task"), vec![2, 3]);
        // The linger passed with nothing new: closed, and the next push opens a lane again.
        assert_eq!(lanes.open(), 0);
        assert_eq!(lanes.push("alice", 4), Pushed::Opened);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_of_one_key_are_handled_in_order_and_keys_at_once() {
        in_order_and_at_once(Duration::ZERO).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lingering_lanes_handle_items_of_one_key_in_order_and_keys_at_once() {
        in_order_and_at_once(Duration::from_micros(50)).await;
    }

    async fn in_order_and_at_once(linger: Duration) {
        let lanes = Arc::new(Lanes::new(1000));
        let handled = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for number in 0..300u32 {
            if number % 7 == 0 {
                // Let lanes drain and close while others are pushed.
                tokio::task::yield_now().await;
            }
            let key = format!("user{}", number % 3);
            if lanes.push(&key, number) == Pushed::Opened {
                let (lanes, handled) = (lanes.clone(), handled.clone());
                tasks.spawn(async move {
                    while let Some(item) = lanes.next_within(&key, linger).await {
                        tokio::task::yield_now().await;
                        handled.lock().unwrap().push(item);
                    }
                });
            }
        }
        tasks.join_all().await;
        let handled = handled.lock().unwrap().clone();
        assert_eq!(handled.len(), 300);
        for user in 0..3 {
            let mine: Vec<u32> = handled.iter().copied().filter(|n| n % 3 == user).collect();
            assert!(mine.windows(2).all(|pair| pair[0] < pair[1]), "{mine:?}");
        }
        assert_eq!(lanes.open(), 0);
    }
}
