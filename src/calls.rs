//! Calls into one bridge, bounded: at most `[[bridge]] concurrency` run at once, and each
//! (waiting for its turn included) ends after `[[bridge]] call_timeout`. The gateway and the
//! delivery lanes both call the bridge through this, so that no call holds anything forever.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::CallLimits;
use crate::metrics;

/// The limits on calls into one bridge.
#[derive(Debug)]
pub struct Calls {
    /// The bridge's domain, for the metric.
    domain: String,
    /// The bridge's name, for the user's error text.
    name: String,
    turns: Semaphore,
    timeout: Duration,
}

/// A call that did not end within the call timeout; the text says what the user waited for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TimedOut(pub String);

impl Calls {
    /// The limits for the bridge `name` at `domain`.
    pub fn new(domain: &str, name: &str, limits: CallLimits) -> Self {
        Self {
            domain: domain.to_owned(),
            name: name.to_owned(),
            turns: Semaphore::new(limits.concurrency),
            timeout: limits.timeout,
        }
    }

    /// Runs `call` under the limits. `what` says what the user was waiting for.
    pub async fn run<T>(&self, what: &str, call: impl Future<Output = T>) -> Result<T, TimedOut> {
        let limited = async {
            let _turn = self.turns.acquire().await;
            call.await
        };
        tokio::time::timeout(self.timeout, limited)
            .await
            .map_err(|_| {
                metrics::bridge_timeout(&self.domain);
                TimedOut(format!(
                    "{} did not answer {what} within {}",
                    self.name,
                    humantime::format_duration(self.timeout)
                ))
            })
    }
}
