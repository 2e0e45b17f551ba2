//! Addresses, as Biboumi writes them so that its users can switch: `#chan%server` is a
//! channel, `nick%server` a person, `server` the server itself; with a fixed server the
//! `%server` part goes (`#chan`, `nick`; the server is then its own name). These are JID
//! localparts, XEP-0106-unescaped by the core before they come here.

/// What a localpart names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A channel on a network.
    Channel {
        /// The network's configured name.
        network: String,
        /// The channel, with its prefix (`#rust`).
        channel: String,
    },
    /// A person on a network.
    Nick {
        /// The network's configured name.
        network: String,
        /// Their nick.
        nick: String,
    },
    /// The server itself: its notices, the MOTD, raw commands.
    Server {
        /// The network's configured name.
        network: String,
    },
}

/// The characters a channel name may start with (RFC 2812's `CHANTYPES`).
pub const CHANNEL_PREFIXES: &[char] = &['#', '&', '+', '!'];

/// Reads and writes addresses for one bridge's networks.
#[derive(Debug, Clone)]
pub struct Addressing {
    networks: Vec<String>,
    fixed: Option<String>,
}

impl Addressing {
    /// Addressing for the configured `networks`, all on `fixed` when set.
    pub fn new(networks: Vec<String>, fixed: Option<String>) -> Self {
        Self { networks, fixed }
    }

    /// The configured network called `name` (case aside: XMPP lower-cases localparts).
    fn network(&self, name: &str) -> Result<String, String> {
        self.networks
            .iter()
            .find(|network| network.eq_ignore_ascii_case(name))
            .cloned()
            .ok_or_else(|| {
                if name.is_empty() {
                    "an IRC address needs a server: #channel%irc.example.net or nick%irc.example.net"
                        .to_owned()
                } else {
                    format!("'{name}' is not an IRC server this gateway reaches")
                }
            })
    }

    /// What `localpart` names, or why it names nothing.
    pub fn parse(&self, localpart: &str) -> Result<Address, String> {
        let (name, network) = match &self.fixed {
            Some(fixed) => {
                if localpart.eq_ignore_ascii_case(fixed) {
                    return Ok(Address::Server {
                        network: fixed.clone(),
                    });
                }
                (localpart, fixed.clone())
            }
            None => match localpart.rsplit_once('%') {
                Some((name, server)) => (name, self.network(server)?),
                None => {
                    return Ok(Address::Server {
                        network: self.network(localpart)?,
                    });
                }
            },
        };
        if name.starts_with(CHANNEL_PREFIXES) {
            check_channel(name)?;
            Ok(Address::Channel {
                network,
                channel: name.to_owned(),
            })
        } else {
            check_nick(name)?;
            Ok(Address::Nick {
                network,
                nick: name.to_owned(),
            })
        }
    }

    /// The localpart of `name` (a channel or a nick) on `network`.
    pub fn format(&self, network: &str, name: &str) -> String {
        if self.fixed.is_some() {
            name.to_owned()
        } else {
            format!("{name}%{network}")
        }
    }

    /// The localpart of `network`'s server itself.
    pub fn format_server(&self, network: &str) -> String {
        network.to_owned()
    }
}

/// Whether `channel` can be a channel name (RFC 2812 §1.3: no space, comma, BEL, control
/// character, at most 200 bytes; a `%` is fine: the server part follows the last one); the server's `CHANNELLEN` is checked when joining.
pub fn check_channel(channel: &str) -> Result<(), String> {
    let bad = channel
        .chars()
        .find(|&c| c == ' ' || c == ',' || c == ':' || c.is_control());
    if channel.len() < 2 || channel.len() > 200 || bad.is_some() {
        return Err(format!("'{channel}' is not an IRC channel name"));
    }
    Ok(())
}

/// Whether `nick` can be a nick: no space, control character, nor any of `!@%*?,.:#&` (a
/// nick with them would read as something else), not starting with a digit or `-`; the
/// server's `NICKLEN` is checked when connecting.
pub fn check_nick(nick: &str) -> Result<(), String> {
    let bad = nick
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "!@%*?,.:#&+$~\"'/".contains(c));
    let first_bad = nick
        .chars()
        .next()
        .is_none_or(|c| c.is_ascii_digit() || c == '-');
    if bad || first_bad || nick.len() > 64 {
        return Err(format!("'{nick}' is not an IRC nick"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> Addressing {
        Addressing::new(vec!["irc.example.net".into(), "Libera".into()], None)
    }

    #[test]
    fn biboumi_addresses_read_and_write_back() {
        let addressing = open();
        assert_eq!(
            addressing.parse("#rust%irc.example.net"),
            Ok(Address::Channel {
                network: "irc.example.net".into(),
                channel: "#rust".into()
            })
        );
        assert_eq!(
            addressing.parse("alice%libera"),
            Ok(Address::Nick {
                network: "Libera".into(),
                nick: "alice".into()
            })
        );
        assert_eq!(
            addressing.parse("irc.example.net"),
            Ok(Address::Server {
                network: "irc.example.net".into()
            })
        );
        // A channel may hold a `%`: the server is after the last one.
        assert_eq!(
            addressing.parse("#100%%irc.example.net"),
            Ok(Address::Channel {
                network: "irc.example.net".into(),
                channel: "#100%".into()
            })
        );
        assert_eq!(addressing.format("Libera", "#rust"), "#rust%Libera");
        assert!(addressing.parse("#rust%elsewhere.net").is_err());
        assert!(addressing.parse("#rust").is_err());
        assert!(addressing.parse("bad nick%libera").is_err());
        assert!(addressing.parse("1abc%libera").is_err());
        assert!(addressing.parse("#a,b%libera").is_err());
        assert!(addressing.parse("#a\u{7}b%libera").is_err());
    }

    #[test]
    fn a_fixed_server_drops_the_server_part() {
        let addressing = Addressing::new(
            vec!["irc.example.net".into()],
            Some("irc.example.net".into()),
        );
        assert_eq!(
            addressing.parse("#rust"),
            Ok(Address::Channel {
                network: "irc.example.net".into(),
                channel: "#rust".into()
            })
        );
        assert_eq!(
            addressing.parse("bob"),
            Ok(Address::Nick {
                network: "irc.example.net".into(),
                nick: "bob".into()
            })
        );
        assert_eq!(
            addressing.parse("irc.example.net"),
            Ok(Address::Server {
                network: "irc.example.net".into()
            })
        );
        assert_eq!(addressing.format("irc.example.net", "bob"), "bob");
    }
}
