//! The IRC bridge (`kind = "irc"`, issue 14), being built in steps. So far: the wire format
//! ([`wire`]), which every later part (connections, rooms, IRCv3) reads and writes through,
//! and the bounded reader of a server's lines ([`reader`]). It is not registered as a
//! bridge kind yet.

pub mod reader;
pub mod wire;
