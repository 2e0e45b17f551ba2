//! Ordered lanes: work items of one key (a user) are handled one after another, in the order
//! they came; items of different keys are handled at the same time. A lane exists only while
//! it has work, so idle users cost nothing.
//!
//! The gateway puts every stanza in its sender's lane, so one user's slow bridge call holds up
//! that user's later stanzas and no one else's.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Lanes of one kind of work.
#[derive(Debug)]
pub struct Lanes<T> {
    queues: Mutex<HashMap<String, VecDeque<T>>>,
    /// Most items waiting in one lane; past it [`Lanes::push`] refuses.
    depth: usize,
}

/// What [`Lanes::push`] did with an item.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed<T> {
    /// The key had no lane: one was opened with this item, and the caller must start a task
    /// that takes items with [`Lanes::next`] until it returns `None`.
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

    fn queues(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<T>>> {
        // Nothing here panics while holding the lock; a poisoned lock still holds good data.
        self.queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `item` in `key`'s lane.
    pub fn push(&self, key: &str, item: T) -> Pushed<T> {
        let mut queues = self.queues();
        match queues.get_mut(key) {
            Some(queue) if queue.len() >= self.depth => Pushed::Full(item),
            Some(queue) => {
                queue.push_back(item);
                Pushed::Queued
            }
            None => {
                queues.insert(key.to_owned(), VecDeque::from([item]));
                Pushed::Opened
            }
        }
    }

    /// The next item of `key`'s lane; `None` closes the lane (its task must then end), under
    /// the same lock that [`Lanes::push`] takes, so no item is ever left behind.
    pub fn next(&self, key: &str) -> Option<T> {
        let mut queues = self.queues();
        let queue = queues.get_mut(key)?;
        let item = queue.pop_front();
        if item.is_none() {
            queues.remove(key);
        }
        item
    }

    /// Whether `key`'s lane is open (it has work in hand).
    pub fn has(&self, key: &str) -> bool {
        self.queues().contains_key(key)
    }

    /// How many lanes are open (users with work in hand).
    pub fn open(&self) -> usize {
        self.queues().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_opens_queues_in_order_refuses_when_full_and_closes_when_empty() {
        let lanes = Lanes::new(2);
        assert_eq!(lanes.push("alice", 1), Pushed::Opened);
        assert_eq!(lanes.push("bob", 10), Pushed::Opened);
        assert_eq!(lanes.push("alice", 2), Pushed::Queued);
        assert_eq!(lanes.push("alice", 3), Pushed::Full(3));
        assert_eq!(lanes.next("alice"), Some(1));
        assert_eq!(lanes.push("alice", 3), Pushed::Queued);
        assert_eq!(lanes.next("alice"), Some(2));
        assert_eq!(lanes.next("alice"), Some(3));
        assert_eq!(lanes.open(), 2);
        // Empty: the lane closes, and the next push opens a new one.
        assert_eq!(lanes.next("alice"), None);
        assert_eq!(lanes.open(), 1);
        assert_eq!(lanes.push("alice", 4), Pushed::Opened);
        assert_eq!(lanes.next("bob"), Some(10));
        assert_eq!(lanes.next("bob"), None);
        assert_eq!(lanes.next("bob"), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn items_of_one_key_are_handled_in_order_and_keys_at_once() {
        use std::sync::Arc;
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
                    while let Some(item) = lanes.next(&key) {
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
