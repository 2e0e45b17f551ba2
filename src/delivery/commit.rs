//! Group commit: every write to the durable queues and the room archive goes through one
//! task per process, which commits whatever arrived while the previous commit was in flight
//! as one transaction.
//!
//! At low rates a write waits one commit; under load a commit carries hundreds of writes,
//! so each costs a share of one (one fsync on SQLite with `synchronous = FULL`). Each write
//! may carry a callback, called in submission order right after its batch committed (or
//! failed): that is where a committed message is handed to its delivery lane, so messages
//! reach their lanes in the order they were accepted, without reading the database again.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::metrics;
use crate::store::{Store, Write};

/// The most writes one transaction carries.
const MAX_BATCH: usize = 1024;
/// Writes waiting for a commit before submitters wait for room.
const QUEUE: usize = 8192;

/// Why a write was not committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// The database refused or failed; nothing of the batch was written.
    #[error("the database failed: {0}")]
    Failed(String),
    /// The committer stopped (shutdown).
    #[error("the gateway is stopping")]
    Stopped,
}

/// What a write's callback is told: for a queued or archived message, its row id, or `None`
/// when it was a repeat of one queued or archived before; `None` for every other write.
pub type Committed = Result<Option<i64>, CommitError>;

/// Called once the write's batch committed or failed, on the committer's task: it must not
/// block (hand work to a task instead).
pub type Done = Box<dyn FnOnce(Committed) + Send>;

struct Request {
    write: Write,
    /// A second write that must be in the same transaction (a row's new state and the
    /// notice that tells its user).
    with: Option<Write>,
    done: Option<Done>,
}

/// A handle on the committer; cheap to clone.
#[derive(Clone)]
pub struct Committer {
    requests: mpsc::Sender<Request>,
    owner: Arc<str>,
}

impl Committer {
    /// Starts the committer of `store` for instance `owner`. It ends once every handle is
    /// dropped and what was submitted is committed.
    pub fn spawn(store: Store, owner: String) -> (Committer, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(QUEUE);
        let owner: Arc<str> = owner.into();
        let task = tokio::spawn(run(store, owner.clone(), receiver));
        (Committer { requests, owner }, task)
    }

    /// This instance's id, which the rows it holds carry.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Submits a write; `done` is called once it committed or failed. Waits only while the
    /// committer is this far behind (8,192 writes).
    pub async fn submit(&self, write: Write, done: Option<Done>) {
        self.send(Request {
            write,
            with: None,
            done,
        })
        .await;
    }

    /// Submits two writes to be committed in the same transaction, or neither; `done` is
    /// told the row of whichever queues a message.
    pub async fn submit_together(&self, write: Write, with: Write, done: Option<Done>) {
        self.send(Request {
            write,
            with: Some(with),
            done,
        })
        .await;
    }

    async fn send(&self, request: Request) {
        if let Err(refused) = self.requests.send(request).await
            && let Some(done) = refused.0.done
        {
            done(Err(CommitError::Stopped));
        }
    }

    /// Submits a write and waits until it is committed.
    pub async fn commit(&self, write: Write) -> Committed {
        let (sender, receiver) = oneshot::channel();
        let done: Done = Box::new(move |committed| {
            let _ = sender.send(committed);
        });
        self.submit(write, Some(done)).await;
        receiver.await.unwrap_or(Err(CommitError::Stopped))
    }
}

async fn run(store: Store, owner: Arc<str>, mut receiver: mpsc::Receiver<Request>) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    let mut writer = store.batch_writer();
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut writes = Vec::with_capacity(batch.len());
        // Per request: its callback, and how many writes it has (one or two).
        let mut callbacks = Vec::with_capacity(batch.len());
        for request in batch.drain(..) {
            writes.push(request.write);
            let count = match request.with {
                Some(with) => {
                    writes.push(with);
                    2
                }
                None => 1,
            };
            callbacks.push((request.done, count));
        }
        let started = Instant::now();
        let committed = writer.commit(&owner, &writes).await;
        metrics::commit(writes.len(), started.elapsed());
        match committed {
            Ok(ids) => {
                let mut ids = ids.into_iter();
                for (done, count) in callbacks {
                    let id = ids
                        .by_ref()
                        .take(count)
                        .fold(None, |found, id| found.or(id));
                    if let Some(done) = done {
                        done(Ok(id));
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, writes = writes.len(), "cannot commit to the database");
                let error = CommitError::Failed(error.to_string());
                for (done, _) in callbacks {
                    if let Some(done) = done {
                        done(Err(error.clone()));
                    }
                }
            }
        }
    }
}
