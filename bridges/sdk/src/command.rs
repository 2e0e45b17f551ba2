//! Commands a bridge adds to the gateway's catalog: offered as XEP-0050 ad-hoc commands and
//! as chat commands on the bridge's domain, next to the core's own. A [`Command`] is one
//! value: its node, its name, who may run it, its form, and what runs it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Form, FormValues, UserJid};

/// What a command's handler returns: the text to show the user, or why it did not run.
pub type CommandResult = Result<String, CommandError>;

type Running = Pin<Box<dyn Future<Output = CommandResult> + Send>>;
type Handler = Arc<dyn Fn(UserJid, FormValues) -> Running + Send + Sync>;
type Reading = Pin<Box<dyn Future<Output = FormValues> + Send>>;
type Current = Arc<dyn Fn(UserJid, FormValues) -> Reading + Send + Sync>;

/// One command a bridge offers, from [`crate::Bridge::commands`].
///
/// ```
/// # use jabbridge_sdk::{Command, CommandError};
/// let command = Command::new("ping", "Check the network", |user, _values| async move {
///     Ok::<_, CommandError>(format!("pong, {user}"))
/// });
/// assert_eq!(command.node, "ping");
/// ```
#[derive(Clone)]
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
    /// Set with [`Command::on_contacts`]: the form field a contact's address fills when the
    /// command runs on that contact's JID.
    pub contact_field: Option<String>,
    handler: Handler,
    /// Set with [`Command::with_current`]: what the form shows filled in.
    current: Option<Current>,
}

impl Command {
    /// A command anyone allowed to use the bridge may run at once, run by `handler` with
    /// the caller and the values of its form (checked against it; empty without one). The
    /// handler owns what it needs (clones of the bridge's state, a weak reference to it).
    pub fn new<F, Fut>(node: impl Into<String>, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(UserJid, FormValues) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CommandResult> + Send + 'static,
    {
        Self {
            node: node.into(),
            name: name.into(),
            admin: false,
            form: None,
            contact_field: None,
            handler: Arc::new(move |user, values| Box::pin(handler(user, values))),
            current: None,
        }
    }

    /// A command run by a method of the bridge: `handler` gets the bridge itself (from a
    /// weak reference it keeps to itself, e.g. made with `Arc::new_cyclic` in its build
    /// function), the caller and the values. While the bridge is being dropped it answers
    /// [`CommandError::Failed`].
    pub fn on<B, F, Fut>(
        node: impl Into<String>,
        name: impl Into<String>,
        bridge: &std::sync::Weak<B>,
        handler: F,
    ) -> Self
    where
        B: Send + Sync + 'static,
        F: Fn(Arc<B>, UserJid, FormValues) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = CommandResult> + Send + 'static,
    {
        let bridge = bridge.clone();
        let handler = Arc::new(handler);
        Self::new(node, name, move |user, values| {
            let bridge = bridge.upgrade();
            let handler = handler.clone();
            async move {
                let bridge =
                    bridge.ok_or_else(|| CommandError::Failed("the bridge is stopping".into()))?;
                handler(bridge, user, values).await
            }
        })
    }

    /// Only the bridge's admins see and run it.
    pub fn for_admins(mut self) -> Self {
        self.admin = true;
        self
    }

    /// The user fills in `form` first.
    pub fn with_form(mut self, form: Form) -> Self {
        self.form = Some(form);
        self
    }

    /// Also offered on the JIDs of the contacts [`crate::Bridge::offers_commands`] accepts
    /// (as Biboumi offers an IRC server's settings on the server's address). Run there, the
    /// form's field `field` holds the contact's address ([`crate::Bridge::format_address`])
    /// and is not asked of the user.
    pub fn on_contacts(mut self, field: impl Into<String>) -> Self {
        self.contact_field = Some(field.into());
        self
    }

    /// The form shows what `current` reads filled in: the user's settings as they stand,
    /// given the caller and the values already known (on a contact's address, its field).
    /// The core never shows a [`crate::FieldKind::Secret`] field's value back.
    pub fn with_current<F, Fut>(mut self, current: F) -> Self
    where
        F: Fn(UserJid, FormValues) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = FormValues> + Send + 'static,
    {
        self.current = Some(Arc::new(move |user, known| Box::pin(current(user, known))));
        self
    }

    /// What the form shows filled in for `user`, with `known` values (empty without
    /// [`Command::with_current`]).
    pub async fn current(&self, user: UserJid, known: FormValues) -> FormValues {
        match &self.current {
            Some(current) => current(user, known).await,
            None => FormValues::default(),
        }
    }

    /// Runs it for `user` with `values`. The core has checked that `user` may, and the
    /// values against the form.
    pub async fn run(&self, user: UserJid, values: FormValues) -> CommandResult {
        (self.handler)(user, values).await
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("node", &self.node)
            .field("name", &self.name)
            .field("admin", &self.admin)
            .field("form", &self.form)
            .field("contact_field", &self.contact_field)
            .finish_non_exhaustive()
    }
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
