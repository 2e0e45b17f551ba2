//! Ordering of the child's requests: those about one room, or one user and contact, run in
//! the order they came, one at a time; different keys run at the same time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;
use tracing::Instrument;

type Job = Pin<Box<dyn Future<Output = ()> + Send>>;
type Map = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Job>>>>;

/// Lanes by key; a lane's task ends when it has nothing left to do.
#[derive(Default)]
pub struct Lanes {
    map: Map,
}

fn lock(map: &Map) -> MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Job>>> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Lanes {
    /// Runs `job` after the jobs already pushed under `key`.
    pub fn push(&self, key: String, job: impl Future<Output = ()> + Send + 'static) {
        let mut job: Job = Box::pin(job);
        let mut map = lock(&self.map);
        if let Some(lane) = map.get(&key) {
            match lane.send(job) {
                Ok(()) => return,
                Err(mpsc::error::SendError(back)) => job = back,
            }
        }
        let (lane, jobs) = mpsc::unbounded_channel();
        let _ = lane.send(job);
        map.insert(key.clone(), lane);
        tokio::spawn(run(jobs, key, self.map.clone()).in_current_span());
    }
}

async fn run(mut jobs: mpsc::UnboundedReceiver<Job>, key: String, map: Map) {
    loop {
        while let Ok(job) = jobs.try_recv() {
            job.await;
        }
        let job = {
            let mut map = lock(&map);
            match jobs.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    map.remove(&key);
                    return;
                }
            }
        };
        job.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_key_runs_in_order_and_keys_run_together() {
        let lanes = Lanes::default();
        let (done, mut finished) = mpsc::unbounded_channel();
        let (release, held) = tokio::sync::oneshot::channel::<()>();
        let first = done.clone();
        lanes.push("a".into(), async move {
            let _ = held.await;
            let _ = first.send("a1");
        });
        let second = done.clone();
        lanes.push("a".into(), async move {
            let _ = second.send("a2");
        });
        let other = done.clone();
        lanes.push("b".into(), async move {
            let _ = other.send("b1");
        });
        // "b" does not wait for "a", which waits for its first job.
        assert_eq!(finished.recv().await, Some("b1"));
        let _ = release.send(());
        assert_eq!(finished.recv().await, Some("a1"));
        assert_eq!(finished.recv().await, Some("a2"));
    }
}
