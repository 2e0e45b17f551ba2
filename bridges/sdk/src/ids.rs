//! Opaque id newtypes. The core never parses a [`ForeignId`] or a foreign [`MessageId`]; a
//! bridge never parses a [`UserJid`].

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! opaque_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string as this id.
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            /// The id as it was given.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(value: &str) -> Self {
                Self(value.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(value: String) -> Self {
                Self(value)
            }
        }
    };
}

opaque_id!(
    /// The bare JID of an XMPP user of the bridge, e.g. `alice@example.org`.
    UserJid
);
opaque_id!(
    /// A contact or room on the foreign network, as the bridge names it: a phone number,
    /// an IRC nick, a webhook endpoint name. Appears as the localpart of a JID.
    ForeignId
);
opaque_id!(
    /// A message id: the XMPP side's stanza id, or the foreign network's id for a message.
    MessageId
);
