//! The IRC bridge's own keys in its `[[bridge]]` section: the networks users may reach
//! (`[[bridge.network]]`, none by default), the fixed-server mode, flood control and
//! reconnection.

use std::time::Duration;

use jabbridge_sdk::secrecy::SecretString;

/// The bridge's keys.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IrcConfig {
    /// The servers users may reach. None by default: a gateway reaches only what its admin
    /// lists.
    #[serde(default)]
    pub network: Vec<NetworkConfig>,
    /// The `name` of one network that every address is on: `#chan@irc.gw` and `nick@irc.gw`
    /// instead of `#chan%irc.example.net@irc.gw`.
    #[serde(default)]
    pub fixed_server: Option<String>,
    /// Lines each user may send in a burst, and then per second (a token bucket per user and
    /// server, so a user is never killed for flooding and never slows anyone else down).
    #[serde(default)]
    pub flood: Flood,
    /// The longest wait between reconnection attempts (backoff doubles from 1 s, with jitter).
    #[serde(default = "reconnect_max", with = "humantime_serde")]
    pub reconnect_max: Duration,
    /// How long a connection may take to register (TCP, TLS, CAP, SASL, the welcome).
    #[serde(default = "connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whether users may send raw IRC commands by writing to a server's address.
    #[serde(default)]
    pub raw_commands: bool,
    /// Where to answer the servers' ident (RFC 1413) questions about the users'
    /// connections: servers ask on port 113 of the gateway's address.
    #[serde(default)]
    pub identd: Option<std::net::SocketAddr>,
    /// The key users' passwords (SASL, NickServ) are sealed with in the database. Without it,
    /// users cannot store passwords. Changing it makes the stored ones unreadable.
    #[serde(default)]
    pub secret_key: Option<SecretString>,
}

fn reconnect_max() -> Duration {
    Duration::from_secs(300)
}

fn connect_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Flood control toward the IRC server.
#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flood {
    /// Lines sent at once before the rate applies.
    #[serde(default = "burst")]
    pub burst: u32,
    /// Lines per second after the burst; `0` turns flood control off (for a server of
    /// your own with its throttle off).
    #[serde(default = "per_second")]
    pub per_second: f64,
}

fn burst() -> u32 {
    10
}

fn per_second() -> f64 {
    2.0
}

impl Default for Flood {
    fn default() -> Self {
        Self {
            burst: burst(),
            per_second: per_second(),
        }
    }
}

/// How a connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tls {
    /// TLS, with the server's certificate verified against the system's roots.
    #[default]
    Verify,
    /// TLS, with any certificate taken (a server with a self-signed one): encrypted, but
    /// open to whoever sits on the path.
    SelfSigned,
    /// No TLS: only for a server on loopback or a private link.
    Off,
}

/// One IRC server users may reach.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// The name in addresses: `#chan%{name}@irc.gw`. A host name, usually.
    pub name: String,
    /// Where to connect; the `name` when not set.
    #[serde(default)]
    pub host: Option<String>,
    /// The port: 6697 with TLS, 6667 without, when not set.
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is secured.
    #[serde(default)]
    pub tls: Tls,
    /// The server password (`PASS`), if the network has one.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// The nick a user gets when they first write to someone on this network, rather than
    /// join a room with a nick of their choice. `{localpart}` is their JID's localpart.
    #[serde(default = "nick_template")]
    pub nick: String,
    /// The user name (`USER`); `{localpart}` as above.
    #[serde(default = "username_template")]
    pub username: String,
    /// The real name; `{jid}` is the user's bare JID, `{localpart}` as above.
    #[serde(default = "realname_template")]
    pub realname: String,
    /// Where a user's NickServ password goes (`PRIVMSG … :IDENTIFY`), where SASL is not
    /// used: the services' full `nick@server` where the network has it, so that a password
    /// never reaches someone who took the nick on a network without services.
    #[serde(default = "nickserv")]
    pub nickserv: String,
    /// WEBIRC: each user connects under an address of their own, so that the network's
    /// bans and limits can aim at one XMPP user rather than at the whole gateway. The
    /// server must trust this gateway for WEBIRC (its address and this password).
    #[serde(default)]
    pub webirc: Option<Webirc>,
}

/// A network's WEBIRC block: the password the server expects, and the IPv6 prefix users'
/// addresses are made in.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webirc {
    /// The password of the server's WEBIRC (cgiirc) block for this gateway. Never logged.
    pub password: SecretString,
    /// An IPv6 prefix, e.g. `fd6a:6262::/64` (at most 96 bits long): each user's address is
    /// in it, the rest of it a hash of their bare JID, the same at every connection.
    pub prefix: String,
}

impl Webirc {
    /// The prefix's address and length, if it is a valid IPv6 prefix of at most 96 bits.
    pub fn prefix(&self) -> Result<(std::net::Ipv6Addr, u32), String> {
        let (address, length) = self
            .prefix
            .split_once('/')
            .ok_or("must be an IPv6 prefix such as fd6a:6262::/64")?;
        let address: std::net::Ipv6Addr = address
            .parse()
            .map_err(|_| "must be an IPv6 prefix such as fd6a:6262::/64")?;
        let length: u32 = length
            .parse()
            .ok()
            .filter(|length| (8..=96).contains(length))
            .ok_or("the prefix length must be between 8 and 96")?;
        Ok((address, length))
    }

    /// `jid`'s address: the prefix's first `length` bits, then the first bits of
    /// SHA-256 of the bare JID.
    pub fn address_of(&self, jid: &str) -> Option<std::net::Ipv6Addr> {
        let (prefix, length) = self.prefix().ok()?;
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("jabbridge webirc\0{jid}").as_bytes(),
        );
        let mut hashed = [0u8; 16];
        hashed.copy_from_slice(&digest.as_ref()[..16]);
        let host_bits = u128::MAX >> length;
        let address = (u128::from(prefix) & !host_bits) | (u128::from_be_bytes(hashed) & host_bits);
        Some(std::net::Ipv6Addr::from(address))
    }
}

fn nickserv() -> String {
    "NickServ".into()
}

fn nick_template() -> String {
    "{localpart}".into()
}

fn username_template() -> String {
    "{localpart}".into()
}

fn realname_template() -> String {
    "{jid} via Jabbridge".into()
}

impl NetworkConfig {
    /// `host:port`.
    pub fn address(&self) -> String {
        let host = self.host.as_deref().unwrap_or(&self.name);
        let port = self.port.unwrap_or(match self.tls {
            Tls::Off => 6667,
            _ => 6697,
        });
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// The host name TLS checks the certificate against.
    pub fn host(&self) -> &str {
        self.host.as_deref().unwrap_or(&self.name)
    }
}

/// Fills `{jid}` and `{localpart}` in a template.
pub fn fill(template: &str, jid: &str) -> String {
    let localpart = jid.split_once('@').map_or(jid, |(local, _)| local);
    template
        .replace("{jid}", jid)
        .replace("{localpart}", localpart)
}

impl IrcConfig {
    /// Checks what serde cannot: names, the fixed server, the flood rate.
    pub fn validate(&self) -> Result<(), jabbridge_sdk::SettingsError> {
        let error = |key: String, message: &str| jabbridge_sdk::SettingsError {
            key,
            message: message.to_owned(),
        };
        for (index, network) in self.network.iter().enumerate() {
            let name = &network.name;
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || b".-_".contains(&byte));
            if !valid {
                return Err(error(
                    format!("network[{index}].name"),
                    "must be letters, digits, '.', '-' and '_' (it is part of addresses)",
                ));
            }
            if self.network[..index]
                .iter()
                .any(|other| other.name.eq_ignore_ascii_case(name))
            {
                return Err(error(format!("network[{index}].name"), "is listed twice"));
            }
            if let Some(webirc) = &network.webirc
                && let Err(message) = webirc.prefix()
            {
                return Err(error(format!("network[{index}].webirc.prefix"), &message));
            }
            if network.nick.is_empty() || network.username.is_empty() {
                return Err(error(
                    format!("network[{index}].nick"),
                    "nick and username must not be empty",
                ));
            }
        }
        if let Some(fixed) = &self.fixed_server
            && !self.network.iter().any(|network| &network.name == fixed)
        {
            return Err(error(
                "fixed_server".into(),
                "must be the name of one of the [[bridge.network]] entries",
            ));
        }
        let rate = self.flood.per_second;
        if !(rate.is_finite() && (rate == 0.0 || rate >= 0.01)) {
            return Err(error(
                "flood.per_second".into(),
                "must be 0 (off) or at least 0.01",
            ));
        }
        if self.flood.burst == 0 {
            return Err(error("flood.burst".into(), "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webirc(prefix: &str) -> Webirc {
        Webirc {
            password: SecretString::from("pw"),
            prefix: prefix.into(),
        }
    }

    #[test]
    fn a_users_webirc_address_is_theirs_in_the_prefix_and_the_same_every_time() {
        let block = webirc("fd6a:6262:7269:6a00::/64");
        let alice = block.address_of("alice@example.org").expect("an address");
        assert_eq!(Some(alice), block.address_of("alice@example.org"));
        assert_ne!(Some(alice), block.address_of("bob@example.org"));
        assert_eq!(alice.segments()[..4], [0xfd6a, 0x6262, 0x7269, 0x6a00]);
        // Bits of the prefix past its length are not kept.
        let short = webirc("fd6a:6262:ffff:ffff::/32").address_of("alice@example.org");
        let short = short.expect("an address");
        assert_eq!(short.segments()[..2], [0xfd6a, 0x6262]);
        assert_eq!(u128::from(short) >> 96, 0xfd6a_6262);
        // The same hash under both prefixes.
        let low = u128::MAX >> 64;
        assert_eq!(u128::from(short) & low, u128::from(alice) & low);
        for bad in [
            "fd6a:6262::",
            "fd6a:6262::/4",
            "fd6a:6262::/120",
            "10.0.0.0/8",
            "x/64",
        ] {
            assert!(webirc(bad).prefix().is_err(), "{bad}");
            assert!(
                webirc(bad).address_of("alice@example.org").is_none(),
                "{bad}"
            );
        }
    }
}
