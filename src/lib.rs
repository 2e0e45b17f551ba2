//! Jabbridge: an XMPP gateway. One daemon attaches to an XMPP server as external components
//! (XEP-0114), one per configured bridge, and carries messages between XMPP users and
//! foreign networks through bridge modules written against `jabbridge-sdk`.
//!
//! Layout (see ARCHITECTURE.md for the path of one message):
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`access`]: who may use a bridge, who administers it, how fast they may send.
//! - [`app`]: start-up and orderly shutdown of everything below.
//! - [`xmpp`]: the component links (`session`), stanza errors, JID escaping, protocol answers.
//! - [`router`]: per bridge, stanzas to typed bridge calls and bridge events to stanzas;
//!   presence and registration as XEP-0100 describes; each sender's stanzas in a [`lanes`]
//!   lane of their own.
//! - [`delivery`]: the durable outbox and inbox: accepting, per-conversation lanes in
//!   memory, retries, takeover of other instances' messages.
//! - [`commit`]: group commit of every write to the queues, one transaction per batch.
//! - [`commands`]: the gateway's commands (ad-hoc and by chat).
//! - [`store`]: the database (SQLite or PostgreSQL): registrations, identities, ids, queues.
//! - [`http`]: `/health`, `/ready`, `/metrics` and the bridges' webhook routes.
//! - [`bridges`]: the registry of bridge kinds.
//! - [`metrics`], [`logging`]: what Jabbridge tells its operator.

pub mod access;
pub mod app;
pub mod bridges;
pub mod commands;
pub mod commit;
pub mod config;
pub mod delivery;
#[cfg(test)]
mod gateway_tests;
pub mod http;
pub mod lanes;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod store;
#[cfg(test)]
pub mod testing;
pub mod xmpp;
