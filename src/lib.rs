//! Jabbridge: an XMPP gateway. One daemon attaches to an XMPP server as external components
//! (XEP-0114), one per configured bridge, and carries messages between XMPP users and
//! foreign networks through bridge modules written against `jabbridge-sdk`.
//!
//! Layout (see ARCHITECTURE.md for the path of one message):
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`access`]: who may use a bridge, who administers it, how fast they may send.
//! - [`app`]: start-up and orderly shutdown of everything below.
//! - [`xmpp`]: the component links (`session`), stanza errors, JID escaping, protocol answers.
//! - [`gateway`]: per bridge, stanzas to typed bridge calls and bridge events to stanzas;
//!   its parts (iq, presence, message, registration, commands, the bridge's requests) in
//!   modules of their own; each sender's stanzas in a [`lanes`] lane of their own; calls
//!   into the bridge bounded by [`calls`].
//! - [`delivery`]: the durable outbox and inbox: accepting, group commit, dispatch to
//!   per-conversation lanes in memory, outcomes and retries, recovery and takeover.
//! - [`store`]: the database (SQLite or PostgreSQL): registrations, identities, ids, queues.
//! - [`http`]: `/health`, `/ready`, `/metrics` and the bridges' webhook routes.
//! - [`bridges`]: the registry of bridge kinds.
//! - [`metrics`], [`logging`]: what Jabbridge tells its operator.

pub mod access;
pub mod app;
pub mod bridges;
pub mod calls;
pub mod config;
#[cfg(test)]
mod corpus_tests;
pub mod delivery;
pub mod doctor;
pub mod gateway;
#[cfg(test)]
mod gateway_tests;
pub mod http;
pub mod lanes;
pub mod logging;
pub mod memory;
pub mod metrics;
#[cfg(test)]
mod room_tests;
pub mod store;
pub mod systemd;
#[cfg(test)]
pub mod testing;
pub mod xmpp;
