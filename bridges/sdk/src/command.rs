//! Commands a bridge adds to the gateway's catalog: offered as XEP-0050 ad-hoc commands and
//! as chat commands on the bridge's domain, next to the core's own.

use crate::Form;

/// One command a bridge offers, from [`crate::Bridge::commands`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Its XEP-0050 node, and its word in chat, e.g. `enable-endpoint`. Lowercase, no
    /// spaces; the core's own commands win over a bridge command of the same name.
    pub node: String,
    /// What it does, as shown in clients and in `help`.
    pub name: String,
    /// Whether only the bridge's admins see and run it.
    pub admin: bool,
    /// The form the user fills in before it runs; `None` runs it at once.
    pub form: Option<Form>,
}

/// Why a command did not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The values are wrong or the command does not apply (nothing to enable…); the user
    /// gets this text with `not-acceptable`.
    #[error("{0}")]
    Rejected(String),
    /// Something failed on the bridge's side (storage, network); the user gets this text
    /// with `service-unavailable` and may try again.
    #[error("{0}")]
    Failed(String),
}
