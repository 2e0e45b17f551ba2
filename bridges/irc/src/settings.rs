//! Each user's own settings per server: nick, user name, real name, a server password, a
//! SASL login or a NickServ password, commands to send and channels to join on connecting,
//! and the server's text encoding where it is not UTF-8. Set with the `irc-settings`
//! command, kept in the core's store (shared by every instance), their secrets sealed with
//! AES-256-GCM under a key derived from the bridge's `secret_key`: a copy of the database
//! alone reveals no password, the logs never see one, and no form shows one back.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use jabbridge_sdk::{Field, FieldKind, Form, FormValues};

use crate::address;

/// The most channels joined on connecting.
pub const MAX_AUTOJOIN: usize = 20;

/// The most commands sent on connecting.
pub const MAX_AFTER_CONNECT: usize = 10;

/// How a user logs in to their account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslMode {
    /// No SASL.
    #[default]
    None,
    /// SASL PLAIN with the account and password.
    Plain,
    /// SASL EXTERNAL: the user's own client certificate (made by the gateway) on a TLS
    /// connection; the account is the one the certificate's fingerprint was added to.
    External,
}

/// A user's client certificate for one server, made by the gateway: self-signed, ECDSA
/// P-256. Its key is sealed like a password.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientCertificate {
    /// The certificate, DER in base64.
    pub der: String,
    /// Its PKCS#8 key, DER in base64, sealed.
    pub key: Sealed,
}

impl ClientCertificate {
    /// A new certificate and key, the key sealed in `vault`.
    pub fn make(vault: &Vault) -> Result<Self, String> {
        let made = (|| {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "Jabbridge IRC user");
            let certificate = params.self_signed(&key)?;
            Ok::<_, rcgen::Error>((certificate.der().to_vec(), key.serialize_der()))
        })();
        let (der, key) = made.map_err(|error| format!("cannot make a certificate: {error}"))?;
        Ok(Self {
            der: crate::connection::base64(&der),
            key: vault.seal(&crate::connection::base64(&key))?,
        })
    }

    /// The certificate's SHA-256 fingerprint in lowercase hex, as servers and services
    /// show it (`CERT ADD`, `WHOIS`).
    pub fn fingerprint(&self) -> String {
        let der = unbase64(&self.der).unwrap_or_default();
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der)
            .as_ref()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    /// The certificate and its key, for a TLS client.
    pub fn open(&self, vault: &Vault) -> Result<crate::connection::ClientAuth, String> {
        let certificate = unbase64(&self.der).ok_or("a stored certificate does not read")?;
        let key = vault.open(&self.key)?;
        let key = unbase64(key.expose_secret()).ok_or(OPEN_FAILED)?;
        Ok(crate::connection::ClientAuth { certificate, key })
    }
}

/// A secret as stored: base64 of the nonce and the sealed bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Sealed(String);

/// One user's settings for one server, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct UserSettings {
    /// The nick to connect with (else the one they join with).
    pub nick: Option<String>,
    /// The user name (`USER`).
    pub username: Option<String>,
    /// The real name.
    pub realname: Option<String>,
    /// How to log in.
    pub sasl: SaslMode,
    /// The account to log in to.
    pub account: Option<String>,
    /// The account's password, sealed.
    pub password: Option<Sealed>,
    /// A password for `PRIVMSG NickServ :IDENTIFY`, sealed, where SASL is not used.
    pub nickserv: Option<Sealed>,
    /// The server password (`PASS`: a private server's, or a bouncer's login), sealed; in
    /// place of the network's.
    pub server_password: Option<Sealed>,
    /// Raw IRC commands to send on connecting, after logging in and before joining (where
    /// the admin allows raw commands), as the user wrote them.
    pub after_connect: Vec<String>,
    /// The encoding of the server's text, when it is not UTF-8 (Latin-1 without one), and
    /// of what the user writes there: its WHATWG name (`windows-1251`).
    pub encoding: Option<String>,
    /// Channels whose text is in an encoding of its own, and its WHATWG name.
    pub channel_encodings: Vec<(String, String)>,
    /// Channels to join on connecting.
    pub autojoin: Vec<String>,
    /// The client certificate for SASL EXTERNAL, made when the user first chose it; kept
    /// when they choose another way (so choosing EXTERNAL again keeps its fingerprint).
    pub certificate: Option<ClientCertificate>,
}

impl UserSettings {
    /// The key they are stored under.
    pub fn key(network: &str, user: &str) -> String {
        format!("settings/{network}/{user}")
    }

    /// What is set, in words, secrets shown only as "set".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(nick) = &self.nick {
            parts.push(format!("nick {nick}"));
        }
        if let Some(username) = &self.username {
            parts.push(format!("user name {username}"));
        }
        if let Some(realname) = &self.realname {
            parts.push(format!("real name \"{realname}\""));
        }
        if self.sasl == SaslMode::Plain {
            let account = self.account.as_deref().unwrap_or("?");
            parts.push(format!("SASL PLAIN as {account}"));
        }
        if self.sasl == SaslMode::External
            && let Some(certificate) = &self.certificate
        {
            let fingerprint = certificate.fingerprint();
            parts.push(format!(
                "SASL EXTERNAL with your client certificate, SHA-256 fingerprint {fingerprint} \
                 (add it to your account once, logged in: /msg NickServ CERT ADD {fingerprint})"
            ));
        }
        if self.nickserv.is_some() {
            parts.push("a NickServ password".into());
        }
        if self.server_password.is_some() {
            parts.push("a server password".into());
        }
        if !self.after_connect.is_empty() {
            let commands: Vec<String> = (self.after_connect.iter())
                .map(|line| crate::wire::parse_command(line).0)
                .collect();
            parts.push(format!("after connecting {}", commands.join(", ")));
        }
        if let Some(encoding) = &self.encoding {
            parts.push(format!("encoding {encoding}"));
        }
        if !self.channel_encodings.is_empty() {
            parts.push(format!(
                "channel encodings {}",
                self.channel_encodings_text()
            ));
        }
        if !self.autojoin.is_empty() {
            parts.push(format!("autojoin {}", self.autojoin.join(" ")));
        }
        if parts.is_empty() {
            "nothing (the gateway's defaults)".into()
        } else {
            parts.join(", ")
        }
    }

    /// The channels of their own encoding as the form takes them: `#a=koi8-r #b=cp1251`.
    fn channel_encodings_text(&self) -> String {
        (self.channel_encodings.iter())
            .map(|(channel, encoding)| format!("{channel}={encoding}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The settings as the form shows them filled in: every one set, secrets left out.
    pub fn shown(&self) -> FormValues {
        let mut shown = FormValues::default();
        let mut show = |var: &str, value: Option<String>| {
            if let Some(value) = value.filter(|value| !value.is_empty()) {
                shown.0.insert(var.to_owned(), value);
            }
        };
        show("nick", self.nick.clone());
        show("username", self.username.clone());
        show("realname", self.realname.clone());
        let sasl = match self.sasl {
            SaslMode::None => "none",
            SaslMode::Plain => "plain",
            SaslMode::External => "external",
        };
        show("sasl", Some(sasl.to_owned()));
        show("account", self.account.clone());
        show("after_connect", Some(self.after_connect.join("\n")));
        show("encoding", self.encoding.clone());
        show("channel_encodings", Some(self.channel_encodings_text()));
        show("autojoin", Some(self.autojoin.join(" ")));
        shown
    }

    /// Applies a submitted form: an empty field keeps what was stored, `-` clears it.
    /// Commands to send on connecting are refused unless `raw` (the admin's
    /// `raw_commands`).
    pub fn apply(
        &mut self,
        values: &FormValues,
        vault: Option<&Vault>,
        raw: bool,
    ) -> Result<(), String> {
        let given = |var: &str| values.get(var).map(str::trim).filter(|v| !v.is_empty());
        if let Some(nick) = given("nick") {
            self.nick = cleared(nick)
                .map(|nick| address::check_nick(nick).map(|()| nick.to_owned()))
                .transpose()?;
        }
        if let Some(username) = given("username") {
            self.username = cleared(username)
                .map(|name| {
                    let valid = name.len() <= 10
                        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    valid.then(|| name.to_owned()).ok_or_else(|| {
                        format!("'{name}': a user name is at most 10 letters and digits")
                    })
                })
                .transpose()?;
        }
        if let Some(realname) = given("realname") {
            self.realname = cleared(realname)
                .map(|name| {
                    (name.len() <= 100 && !name.chars().any(char::is_control))
                        .then(|| name.to_owned())
                        .ok_or_else(|| "a real name is one line of at most 100 bytes".to_owned())
                })
                .transpose()?;
        }
        if let Some(mode) = given("sasl") {
            self.sasl = match mode {
                "plain" => SaslMode::Plain,
                "external" => SaslMode::External,
                "none" | "-" => SaslMode::None,
                other => return Err(format!("'{other}' is not a SASL mechanism offered here")),
            };
        }
        if let Some(account) = given("account") {
            self.account = cleared(account)
                .map(|account| {
                    (account.len() <= 64 && !account.chars().any(|c| c.is_control() || c == ' '))
                        .then(|| account.to_owned())
                        .ok_or_else(|| format!("'{account}' is not an account name"))
                })
                .transpose()?;
        }
        for (var, slot) in [
            ("password", &mut self.password),
            ("nickserv", &mut self.nickserv),
            ("server_password", &mut self.server_password),
        ] {
            if let Some(secret) = given(var) {
                *slot = match cleared(secret) {
                    None => None,
                    Some(secret) => {
                        let vault = vault.ok_or_else(|| {
                            "this gateway cannot keep passwords: its admin has not set the \
                             bridge's secret_key"
                                .to_owned()
                        })?;
                        if secret.chars().any(|c| c.is_control()) || secret.len() > 300 {
                            return Err("a password is one line of at most 300 bytes".into());
                        }
                        Some(vault.seal(secret)?)
                    }
                };
            }
        }
        if let Some(label) = given("encoding") {
            self.encoding = cleared(label).map(encoding_name).transpose()?;
        }
        if let Some(pairs) = given("channel_encodings") {
            self.channel_encodings = match cleared(pairs) {
                None => Vec::new(),
                Some(pairs) => {
                    let mut list = Vec::new();
                    for pair in pairs.split([' ', ',']).filter(|pair| !pair.is_empty()) {
                        let Some((channel, label)) = pair.split_once('=') else {
                            return Err(format!("'{pair}': write #channel=encoding"));
                        };
                        if !channel.starts_with(address::CHANNEL_PREFIXES) {
                            return Err(format!("'{channel}' is not a channel (#name)"));
                        }
                        address::check_channel(channel)?;
                        list.push((channel.to_owned(), encoding_name(label)?));
                    }
                    if list.len() > MAX_AUTOJOIN {
                        return Err(format!(
                            "at most {MAX_AUTOJOIN} channels of their own encoding"
                        ));
                    }
                    list
                }
            };
        }
        if let Some(lines) = given("after_connect") {
            self.after_connect = match cleared(lines) {
                None => Vec::new(),
                Some(_) if !raw => {
                    return Err(
                        "raw IRC commands are turned off on this gateway: no commands \
                                can be sent on connecting"
                            .into(),
                    );
                }
                Some(lines) => {
                    let list: Vec<String> = lines
                        .lines()
                        .map(str::trim)
                        .filter(|line| !line.is_empty())
                        .map(str::to_owned)
                        .collect();
                    for line in &list {
                        let (command, params) = crate::wire::parse_command(line);
                        let params: Vec<&str> = params.iter().map(String::as_str).collect();
                        crate::wire::line(&[], &command, &params)
                            .map_err(|error| format!("'{line}': {error}"))?;
                        if line.chars().any(char::is_control) {
                            return Err(format!("'{line}' holds a control character"));
                        }
                    }
                    if list.len() > MAX_AFTER_CONNECT {
                        return Err(format!(
                            "at most {MAX_AFTER_CONNECT} commands to send on connecting"
                        ));
                    }
                    list
                }
            };
        }
        if let Some(channels) = given("autojoin") {
            self.autojoin = match cleared(channels) {
                None => Vec::new(),
                Some(channels) => {
                    let list: Vec<String> = channels
                        .split([' ', ','])
                        .filter(|channel| !channel.is_empty())
                        .map(str::to_owned)
                        .collect();
                    for channel in &list {
                        if !channel.starts_with(address::CHANNEL_PREFIXES) {
                            return Err(format!("'{channel}' is not a channel (#name)"));
                        }
                        address::check_channel(channel)?;
                    }
                    if list.len() > MAX_AUTOJOIN {
                        return Err(format!("at most {MAX_AUTOJOIN} channels to autojoin"));
                    }
                    list
                }
            };
        }
        if self.sasl == SaslMode::Plain && (self.account.is_none() || self.password.is_none()) {
            return Err("SASL PLAIN needs an account and its password".into());
        }
        if self.sasl == SaslMode::External && self.certificate.is_none() {
            let vault = vault.ok_or_else(|| {
                "this gateway cannot keep client certificates: its admin has not set the \
                 bridge's secret_key"
                    .to_owned()
            })?;
            self.certificate = Some(ClientCertificate::make(vault)?);
        }
        Ok(())
    }
}

/// The WHATWG name of the encoding `label` names, if IRC can carry it (UTF-16 cannot carry
/// its lines; `replacement` reads nothing).
fn encoding_name(label: &str) -> Result<String, String> {
    encoding_rs::Encoding::for_label(label.as_bytes())
        .filter(|encoding| {
            *encoding == encoding_rs::UTF_8 || encoding.output_encoding() == *encoding
        })
        .map(|encoding| encoding.name().to_ascii_lowercase())
        .ok_or_else(|| {
            format!(
                "'{label}' is not an encoding IRC can carry (e.g. utf-8, windows-1251, koi8-r, \
                 iso-8859-15, shift_jis, iso-2022-jp)"
            )
        })
}

/// `None` for the value `-` (clear the setting).
fn cleared(value: &str) -> Option<&str> {
    (value != "-").then_some(value)
}

/// A form asking only which server (left out where the command runs on a server's address).
pub fn server_form(title: &str, networks: Vec<String>) -> Form {
    Form {
        title: title.into(),
        instructions: "Which server?".into(),
        fields: vec![server_field(networks)],
    }
}

fn server_field(networks: Vec<String>) -> Field {
    Field {
        var: "server".into(),
        label: "Server".into(),
        kind: FieldKind::Choice(networks),
        required: true,
    }
}

/// The `irc-settings` form; with `raw` (the admin's `raw_commands`), commands to send on
/// connecting too.
pub fn form(networks: Vec<String>, raw: bool) -> Form {
    let text = |var: &str, label: &str| Field {
        var: var.into(),
        label: label.into(),
        kind: FieldKind::Text,
        required: false,
    };
    let secret = |var: &str, label: &str| Field {
        var: var.into(),
        label: label.into(),
        kind: FieldKind::Secret,
        required: false,
    };
    let mut fields = vec![
        server_field(networks),
        text("nick", "Nick"),
        text("username", "User name"),
        text("realname", "Real name"),
        secret(
            "server_password",
            "Server password (PASS: a private server's, or your bouncer login)",
        ),
        Field {
            var: "sasl".into(),
            label: "Log in with SASL".into(),
            kind: FieldKind::Choice(vec!["none".into(), "plain".into(), "external".into()]),
            required: false,
        },
        text("account", "Account"),
        secret("password", "Account password"),
        secret("nickserv", "NickServ password (without SASL)"),
    ];
    if raw {
        fields.push(Field {
            var: "after_connect".into(),
            label: "IRC commands to send on connecting, one per line (e.g. MODE yournick +R)"
                .into(),
            kind: FieldKind::Lines,
            required: false,
        });
    }
    fields.push(text(
        "encoding",
        "Encoding of the server's text when not UTF-8, and of yours (e.g. windows-1251)",
    ));
    fields.push(text(
        "channel_encodings",
        "Channels of another encoding (e.g. #rus=koi8-r #jp=iso-2022-jp)",
    ));
    fields.push(text("autojoin", "Channels to join on connecting"));
    Form {
        title: "IRC settings".into(),
        instructions: "Your settings for one server. An empty field keeps what you set \
                       before; '-' clears it. They apply the next time you connect to the \
                       server. Passwords are stored encrypted and never shown."
            .into(),
        fields,
    }
}

/// Seals and opens the users' secrets.
pub struct Vault {
    key: LessSafeKey,
    random: SystemRandom,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault")
    }
}

/// Why a secret could not be sealed or opened.
const OPEN_FAILED: &str =
    "a stored password cannot be read (the bridge's secret_key changed?): set it again";

impl Vault {
    /// A vault whose key is derived from `secret_key` (SHA-256 of a label and the key).
    pub fn new(secret_key: &SecretString) -> Result<Self, String> {
        let passphrase = secret_key.expose_secret();
        if passphrase.len() < 16 {
            return Err("must be at least 16 characters (better: 32 random bytes in hex)".into());
        }
        let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        context.update(b"jabbridge irc secrets v1\0");
        context.update(passphrase.as_bytes());
        let digest = context.finish();
        let key = UnboundKey::new(&AES_256_GCM, digest.as_ref())
            .map_err(|_| "cannot make a key".to_owned())?;
        Ok(Self {
            key: LessSafeKey::new(key),
            random: SystemRandom::new(),
        })
    }

    /// `secret`, sealed with a fresh random nonce.
    pub fn seal(&self, secret: &str) -> Result<Sealed, String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| "no randomness".to_owned())?;
        let mut sealed = secret.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"irc"),
                &mut sealed,
            )
            .map_err(|_| "cannot seal".to_owned())?;
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Ok(Sealed(crate::connection::base64(&bytes)))
    }

    /// The secret `sealed` holds.
    pub fn open(&self, sealed: &Sealed) -> Result<SecretString, String> {
        let mut bytes = unbase64(&sealed.0).ok_or_else(|| OPEN_FAILED.to_owned())?;
        if bytes.len() < NONCE_LEN {
            return Err(OPEN_FAILED.into());
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&bytes[..NONCE_LEN]);
        let opened = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(b"irc"),
                &mut bytes[NONCE_LEN..],
            )
            .map_err(|_| OPEN_FAILED.to_owned())?;
        let text = String::from_utf8(opened.to_vec()).map_err(|_| OPEN_FAILED.to_owned())?;
        Ok(SecretString::from(text))
    }
}

/// Decodes padded base64 (RFC 4648), `None` for anything else.
fn unbase64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = n << 6 | value(c)?;
        }
        n <<= 6 * pad as u32;
        let decoded = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&decoded[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn values(pairs: &[(&str, &str)]) -> FormValues {
        FormValues(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn vault() -> Vault {
        Vault::new(&SecretString::from("a key of at least sixteen characters")).unwrap()
    }

    #[test]
    fn sasl_external_makes_a_client_certificate_once_and_shows_its_fingerprint() {
        let vault = vault();
        let mut settings = UserSettings::default();
        assert!(
            settings
                .apply(&values(&[("sasl", "external")]), None, false)
                .is_err(),
            "no secret_key, no certificate"
        );
        settings
            .apply(&values(&[("sasl", "external")]), Some(&vault), false)
            .expect("applied");
        let certificate = settings.certificate.clone().expect("a certificate");
        let fingerprint = certificate.fingerprint();
        assert_eq!(fingerprint.len(), 64);
        assert!(fingerprint.bytes().all(|b| b.is_ascii_hexdigit()));
        let said = settings.describe();
        assert!(said.contains(&format!("CERT ADD {fingerprint}")), "{said}");
        // The key is sealed: not in what is stored, in any form.
        let stored = jabbridge_sdk::serde_json::to_string(&settings).expect("serialised");
        let auth = certificate.open(&vault).expect("opens");
        let key = crate::connection::base64(&auth.key);
        assert!(!stored.contains(&key[..40]), "{stored}");
        assert!(format!("{auth:?}").contains("redacted"));
        // A TLS client takes the pair (the key is the certificate's).
        assert!(crate::connection::client_config_for_test(&auth).is_ok());
        // Choosing PLAIN and then EXTERNAL again keeps the same certificate.
        settings
            .apply(
                &values(&[("sasl", "plain"), ("account", "a"), ("password", "p")]),
                Some(&vault),
                false,
            )
            .expect("plain");
        assert!(!settings.describe().contains("EXTERNAL"));
        settings
            .apply(&values(&[("sasl", "external")]), Some(&vault), false)
            .expect("external again");
        assert_eq!(
            settings
                .certificate
                .as_ref()
                .map(ClientCertificate::fingerprint),
            Some(fingerprint)
        );
    }

    #[test]
    fn secrets_are_sealed_and_open_only_with_the_key() {
        let vault = vault();
        let sealed = vault.seal("hunter2").unwrap();
        assert!(!sealed.0.contains("hunter2"));
        assert_ne!(
            vault.seal("hunter2").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
        assert_eq!(vault.open(&sealed).unwrap().expose_secret(), "hunter2");
        let other = Vault::new(&SecretString::from("another key, sixteen+ characters")).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(vault.open(&Sealed("not base64!".into())).is_err());
        assert!(Vault::new(&SecretString::from("short")).is_err());
        assert_eq!(unbase64("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(unbase64("Zg==").as_deref(), Some(&b"f"[..]));
    }

    #[test]
    fn a_form_keeps_what_it_leaves_empty_and_clears_dashes() {
        let vault = vault();
        let mut settings = UserSettings::default();
        settings
            .apply(
                &values(&[
                    ("server", "irc.test"),
                    ("nick", "alice"),
                    ("sasl", "plain"),
                    ("account", "alice"),
                    ("password", "hunter2"),
                    ("autojoin", "#a, #b"),
                ]),
                Some(&vault),
                false,
            )
            .unwrap();
        assert_eq!(settings.nick.as_deref(), Some("alice"));
        assert_eq!(settings.autojoin, ["#a", "#b"]);
        let description = settings.describe();
        assert!(description.contains("SASL PLAIN as alice"), "{description}");
        assert!(!description.contains("hunter2"), "{description}");
        // A later form with only the real name keeps the rest.
        settings
            .apply(&values(&[("realname", "Alice A.")]), Some(&vault), false)
            .unwrap();
        assert_eq!(settings.nick.as_deref(), Some("alice"));
        assert!(settings.password.is_some());
        // '-' clears; SASL then needs a password again.
        assert!(
            settings
                .apply(&values(&[("password", "-")]), Some(&vault), false)
                .is_err()
        );
        let mut fresh = UserSettings::default();
        assert!(
            fresh
                .apply(&values(&[("nick", "bad nick")]), None, false)
                .is_err()
        );
        assert!(
            fresh
                .apply(&values(&[("autojoin", "nochan")]), None, false)
                .is_err()
        );
        // Without a secret_key no password is kept.
        let refused = fresh
            .apply(&values(&[("nickserv", "pw")]), None, false)
            .unwrap_err();
        assert!(refused.contains("secret_key"), "{refused}");
    }

    #[test]
    fn the_form_shows_the_settings_as_they_stand_and_sending_it_back_changes_nothing() {
        let vault = Vault::new(&SecretString::from("a key of more than sixteen chars")).unwrap();
        let mut settings = UserSettings::default();
        let form = values(&[
            ("nick", "alice"),
            ("realname", "Alice A."),
            ("sasl", "plain"),
            ("account", "acct"),
            ("password", "hunter2"),
            ("after_connect", "MODE alice +R\nPRIVMSG bob :hi"),
            ("encoding", "koi8-r"),
            ("autojoin", "#a #b"),
        ]);
        settings.apply(&form, Some(&vault), true).unwrap();
        let shown = settings.shown();
        assert_eq!(shown.get("nick"), Some("alice"));
        assert_eq!(
            shown.get("after_connect"),
            Some("MODE alice +R\nPRIVMSG bob :hi")
        );
        assert_eq!(shown.get("autojoin"), Some("#a #b"));
        assert_eq!(shown.get("username"), None);
        // No secret is ever shown.
        assert!(shown.0.values().all(|value| !value.contains("hunter2")));
        assert!(shown.get("password").is_none());
        let before = settings.clone();
        settings.apply(&shown, Some(&vault), true).unwrap();
        assert_eq!(settings, before);
    }

    #[test]
    fn commands_on_connecting_encodings_and_server_passwords_are_checked() {
        let vault = Vault::new(&SecretString::from("a key of more than sixteen chars")).unwrap();
        let mut settings = UserSettings::default();
        let lines = values(&[(
            "after_connect",
            "MODE alice +R\r\n\n  PRIVMSG bob :two words ",
        )]);
        let refused = settings.apply(&lines, None, false).unwrap_err();
        assert!(refused.contains("turned off"), "{refused}");
        assert!(settings.after_connect.is_empty());
        settings.apply(&lines, None, true).unwrap();
        assert_eq!(
            settings.after_connect,
            ["MODE alice +R", "PRIVMSG bob :two words"]
        );
        // Each line must make an IRC line; a bad one changes nothing.
        for bad in [
            "MO!DE x",
            "PRIVMSG bob :a\u{1}b",
            &"PRIVMSG bob :x".repeat(60),
        ] {
            let refused = settings
                .apply(&values(&[("after_connect", bad)]), None, true)
                .unwrap_err();
            assert!(refused.starts_with('\''), "{bad}: {refused}");
        }
        let eleven = ["PING x"; 11].join("\n");
        assert!(
            settings
                .apply(&values(&[("after_connect", &eleven)]), None, true)
                .is_err()
        );
        assert_eq!(settings.after_connect.len(), 2);
        // The server password is sealed and never described; '-' clears both.
        (settings.apply(
            &values(&[("server_password", "znc:hunter2")]),
            Some(&vault),
            true,
        ))
        .unwrap();
        let description = settings.describe();
        assert!(description.contains("a server password"), "{description}");
        assert!(
            description.contains("after connecting MODE, PRIVMSG"),
            "{description}"
        );
        assert!(!description.contains("hunter2"), "{description}");
        // An encoding by any of its labels, kept by name; none IRC cannot carry.
        settings
            .apply(&values(&[("encoding", " KOI8-R ")]), None, false)
            .unwrap();
        assert_eq!(settings.encoding.as_deref(), Some("koi8-r"));
        for bad in ["utf-16le", "replacement", "klingon"] {
            let refused = settings
                .apply(&values(&[("encoding", bad)]), None, false)
                .unwrap_err();
            assert!(refused.contains("not an encoding"), "{bad}: {refused}");
        }
        assert_eq!(settings.encoding.as_deref(), Some("koi8-r"));
        // Channels of their own encoding: #name=label pairs, each checked.
        settings
            .apply(
                &values(&[("channel_encodings", "#ru=KOI8-R, #jp=sjis")]),
                None,
                false,
            )
            .unwrap();
        let pairs = [("#ru", "koi8-r"), ("#jp", "shift_jis")].map(|(c, e)| (c.into(), e.into()));
        assert_eq!(settings.channel_encodings, pairs);
        assert_eq!(
            settings.shown().get("channel_encodings"),
            Some("#ru=koi8-r #jp=shift_jis")
        );
        for bad in ["#ru", "ru=koi8-r", "#ru=klingon", "#r u=koi8-r"] {
            assert!(
                (settings.apply(&values(&[("channel_encodings", bad)]), None, false)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(settings.channel_encodings, pairs);
        let cleared = values(&[
            ("server_password", "-"),
            ("after_connect", "-"),
            ("encoding", "-"),
            ("channel_encodings", "-"),
        ]);
        settings.apply(&cleared, None, false).unwrap();
        assert!(settings.server_password.is_none() && settings.after_connect.is_empty());
        assert!(settings.encoding.is_none() && settings.channel_encodings.is_empty());
    }
}
