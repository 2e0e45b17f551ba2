//! The IRC bridge (`kind = "irc"`, issue 14), being built in steps. So far: the wire format
//! ([`wire`]), which every later part (connections, rooms, IRCv3) reads and writes through,
//! the bounded reader of a server's lines ([`reader`]), and one registered connection
//! ([`connection`]). It is not registered as a bridge kind yet.

pub mod connection;
pub mod reader;
pub mod wire;
