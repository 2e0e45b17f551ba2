//! Everything that speaks XMPP: the component link, stanza errors, JID escaping, and the
//! answers to protocol requests (disco, version, ping, registration, ad-hoc commands,
//! jabber:iq:gateway), and the stanzas of group chats. Bridges never see this module's types.

pub mod adhoc;
pub mod bounded;
pub mod depth_guard;
pub mod encode;
pub mod jid;
pub mod muc;
pub mod register;
pub mod service;
pub mod session;
pub mod stanza;
pub mod xml_safe;
