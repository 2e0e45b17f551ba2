//! Jabbridge: an XMPP gateway. One daemon attaches to an XMPP server as external components
//! (XEP-0114), one per configured bridge, and carries messages between XMPP users and
//! foreign networks through bridge modules written against `jabbridge-sdk`.
//!
//! Layout (see ARCHITECTURE.md for the path of one message):
//! - [`config`]: the TOML file, environment overrides, validation.
//! - [`app`]: start-up and orderly shutdown of everything below.
//! - [`xmpp`]: the component links (`session`), stanza errors, JID escaping, protocol answers.
//! - [`router`]: per bridge, stanzas to typed bridge calls and bridge events to stanzas.
//! - [`store`]: the database (SQLite or PostgreSQL): registrations, identities, ids, queues.
//! - [`http`]: `/health`, `/ready`, `/metrics` and the bridges' webhook routes.
//! - [`bridges`]: the registry of bridge kinds.
//! - [`metrics`], [`logging`]: what Jabbridge tells its operator.

pub mod app;
pub mod bridges;
pub mod config;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod router;
pub mod store;
pub mod xmpp;
