//! One connection to an IRC server: TCP with `TCP_NODELAY` (a small write must not wait for
//! the peer's delayed ACK), TLS through rustls where the admin wants it, and registration:
//! `CAP LS 302`, the IRCv3 capabilities we use requested, SASL (`PLAIN` or `EXTERNAL`) when
//! the user set it up, `PASS`, `NICK`, `USER` (a nick in use gets a `_` suffix), up to the
//! end of the MOTD. The server's `PING`s are answered here.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jabbridge_sdk::secrecy::{ExposeSecret, SecretString};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Tls;
use crate::reader::LineReader;
use crate::wire::{self, LineError, Message};

/// The IRCv3 capabilities asked for when the server offers them.
pub const WANTED_CAPS: &[&str] = &[
    "account-notify",
    "account-tag",
    "away-notify",
    "batch",
    "cap-notify",
    "chghost",
    "draft/chathistory",
    "draft/message-redaction",
    "echo-message",
    "extended-join",
    "labeled-response",
    "message-tags",
    "multi-prefix",
    "server-time",
    "setname",
    "userhost-in-names",
];

/// The capabilities in force on a connection: those we ask for ([`WANTED_CAPS`]) and
/// `sasl`, one bit each (a B-tree set of them cost ~200 bytes of every connection).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps(u32);

// One bit for each we ask for, and one for `sasl`.
const _: () = assert!(WANTED_CAPS.len() < 32);

impl Caps {
    /// Every capability a set can hold: those we ask for, then `sasl`.
    fn known() -> impl Iterator<Item = &'static str> {
        WANTED_CAPS.iter().copied().chain(["sasl"])
    }

    fn bit(name: &str) -> Option<u32> {
        Self::known()
            .position(|known| known == name)
            .map(|at| 1 << at)
    }

    /// Whether `name` is in force.
    pub fn contains(&self, name: &str) -> bool {
        Self::bit(name).is_some_and(|bit| self.0 & bit != 0)
    }

    /// Puts `name` in force; false when it was already or is not one we know.
    pub fn insert(&mut self, name: &str) -> bool {
        match Self::bit(name) {
            Some(bit) if self.0 & bit == 0 => {
                self.0 |= bit;
                true
            }
            _ => false,
        }
    }

    /// Takes `name` out of force; false when it was not.
    pub fn remove(&mut self, name: &str) -> bool {
        match Self::bit(name) {
            Some(bit) if self.0 & bit != 0 => {
                self.0 &= !bit;
                true
            }
            _ => false,
        }
    }

    /// Those in force, in [`WANTED_CAPS`]' order, then `sasl`.
    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        Self::known()
            .enumerate()
            .filter(|(at, _)| self.0 & (1 << at) != 0)
            .map(|(_, name)| name)
    }
}

impl fmt::Debug for Caps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// How a user logs in to their account with SASL.
#[derive(Debug, Clone)]
pub enum Sasl {
    /// `PLAIN`: account and password.
    Plain {
        /// The account.
        account: String,
        /// Its password.
        password: SecretString,
    },
    /// `EXTERNAL`: the client certificate of the TLS connection.
    External,
}

/// Who to register as.
#[derive(Debug, Clone)]
pub struct Registration {
    /// The nick wanted; the server may make it another (`_` added while it is in use).
    pub nick: String,
    /// The user name (`USER`).
    pub username: String,
    /// The real name (`USER`'s last parameter).
    pub realname: String,
    /// The server password (`PASS`): the user's own, else the network's, if any.
    pub password: Option<SecretString>,
    /// The SASL login, if the user set one up.
    pub sasl: Option<Sasl>,
    /// WEBIRC: the server's password for this gateway, and the user's own address.
    pub webirc: Option<(SecretString, std::net::Ipv6Addr)>,
}

/// Where to connect and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// `host:port`.
    pub address: String,
    /// The name the certificate must carry.
    pub host: String,
    /// How the connection is secured.
    pub tls: Tls,
    /// The client certificate to present (SASL EXTERNAL), if any.
    pub client: Option<Arc<ClientAuth>>,
    /// The ident service to tell of the connection while it registers, if any.
    pub idents: Option<Arc<crate::identd::Idents>>,
}

/// A client certificate and its PKCS#8 key, DER; the key never printed.
pub struct ClientAuth {
    /// The certificate.
    pub certificate: Vec<u8>,
    /// Its key.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientAuth { key: [redacted], .. }")
    }
}

/// Why a connection could not be made or went down.
#[derive(Debug)]
pub enum ConnectError {
    /// The socket failed.
    Io(std::io::Error),
    /// TLS could not be set up (no usable roots, a bad host name).
    Tls(String),
    /// The server said no (`ERROR`, or a registration it refused): its words.
    Refused(String),
    /// The SASL login failed: the server's words. Retrying will not help.
    Sasl(String),
    /// The server closed the connection.
    Closed,
    /// A line could not be written ([`LineError`]).
    Line(LineError),
    /// Registration took longer than allowed.
    TimedOut,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "the IRC connection failed: {error}"),
            Self::Tls(error) => write!(f, "TLS to the IRC server failed: {error}"),
            Self::Refused(reason) => write!(f, "the IRC server refused: {reason}"),
            Self::Sasl(reason) => write!(f, "the SASL login failed: {reason}"),
            Self::Closed => f.write_str("the IRC server closed the connection"),
            Self::Line(error) => error.fmt(f),
            Self::TimedOut => f.write_str("the IRC server did not finish registration in time"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<std::io::Error> for ConnectError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

impl From<LineError> for ConnectError {
    fn from(error: LineError) -> Self {
        Self::Line(error)
    }
}

/// `nick` with `tries` underscores, cut to the server's NICKLEN (9, RFC 1459's, until it
/// says) so that the server takes it.
fn suffixed(nick: &str, tries: usize, isupport: &HashMap<String, String>) -> String {
    let longest = isupport
        .get("NICKLEN")
        .and_then(|value| value.parse::<usize>().ok())
        .unwrap_or(9)
        .max(tries + 1);
    let mut base: String = nick.chars().take(longest - tries).collect();
    base.push_str(&"_".repeat(tries));
    base
}

/// The most ISUPPORT tokens kept (servers send 30 to 60).
const MAX_ISUPPORT: usize = 200;

/// Nick changes tried while the nick is in use, before giving up.
const NICK_TRIES: usize = 5;

/// The read half of a connection.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The write half of a connection.
pub type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A registered connection.
pub struct Connection {
    /// The server's lines.
    pub reader: LineReader<ReadHalf>,
    /// Where lines go.
    pub writer: WriteHalf,
    /// The nick the server gave us.
    pub nick: String,
    /// What the server supports (ISUPPORT, `005`): `CASEMAPPING`, `NICKLEN`, `CHANTYPES`…
    pub isupport: HashMap<String, String>,
    /// The IRCv3 capabilities in force.
    pub caps: Caps,
    /// The account SASL logged in to, if it did.
    pub account: Option<String>,
    /// The server's name, as it gives it in `001`'s source.
    pub server_name: String,
    /// Notices and MOTD lines from registration, for the user.
    pub greeting: Vec<String>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("nick", &self.nick)
            .field("caps", &self.caps)
            .finish_non_exhaustive()
    }
}

/// Opens the socket: TCP, then TLS as `target` says.
async fn open(target: &Target, username: &str) -> Result<Opened, ConnectError> {
    let (stream, known) = match &target.idents {
        Some(idents) => {
            let (stream, known) = connect_known(&target.address, idents, username).await?;
            (stream, Some(known))
        }
        None => (TcpStream::connect(&target.address).await?, None),
    };
    stream.set_nodelay(true)?;
    if target.tls == Tls::Off {
        let (read, write) = stream.into_split();
        return Ok((Box::new(read), Box::new(write), known));
    }
    let config = tls_config(target.tls, target.client.as_deref())?;
    let name = rustls_pki_types::ServerName::try_from(target.host.clone())
        .map_err(|error| ConnectError::Tls(error.to_string()))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, stream)
        .await?;
    let (read, write) = tokio::io::split(stream);
    Ok((Box::new(read), Box::new(write), known))
}

/// Connects to `address` (each of its addresses in turn, as [`TcpStream::connect`] does),
/// known to the ident service as `username`'s *before* connecting: a server asks as soon as
/// it accepts, which may be before our side of the connect has returned.
async fn connect_known(
    address: &str,
    idents: &Arc<crate::identd::Idents>,
    username: &str,
) -> std::io::Result<(TcpStream, crate::identd::Known)> {
    let mut failed = None;
    for server in tokio::net::lookup_host(address).await? {
        let (socket, any) = if server.is_ipv4() {
            let any = std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0));
            (tokio::net::TcpSocket::new_v4()?, any)
        } else {
            let any = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0));
            (tokio::net::TcpSocket::new_v6()?, any)
        };
        // Bound first, so that its port is known before the server sees it.
        socket.bind(any)?;
        let known = idents.register(socket.local_addr()?, server, username);
        match socket.connect(server).await {
            Ok(stream) => return Ok((stream, known)),
            Err(error) => failed = Some(error),
        }
    }
    Err(failed.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{address} names no address"),
        )
    }))
}

/// Whether `target` can be reached as configured, for `jabbridge doctor`: TCP, then TLS
/// as the network's policy says (its certificate verified unless it is `self-signed`),
/// nothing sent; what was seen.
pub async fn probe(target: &Target) -> Result<String, ConnectError> {
    let _open = open(target, "").await?;
    let address = &target.address;
    Ok(match target.tls {
        Tls::Verify => format!(
            "reachable at {address}, over TLS with a certificate valid for {}",
            target.host
        ),
        Tls::SelfSigned => format!("reachable at {address}, over TLS (any certificate taken)"),
        Tls::Off => format!("reachable at {address}, without TLS"),
    })
}

/// An open connection's halves, and its place in the ident service while it registers.
type Opened = (ReadHalf, WriteHalf, Option<crate::identd::Known>);

/// The TLS client setup for `tls`: built once per policy, or for each connection that
/// presents a client certificate.
fn tls_config(
    tls: Tls,
    client: Option<&ClientAuth>,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, ConnectError> {
    use std::sync::OnceLock;
    use tokio_rustls::rustls;
    static VERIFIED: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    static ANY: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    if let Some(client) = client {
        let certificate = rustls_pki_types::CertificateDer::from(client.certificate.clone());
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(
            rustls_pki_types::PrivatePkcs8KeyDer::from(client.key.clone()),
        );
        let config = builder(tls)
            .map_err(ConnectError::Tls)?
            .with_client_auth_cert(vec![certificate], key)
            .map_err(|error| ConnectError::Tls(format!("the client certificate: {error}")))?;
        return Ok(Arc::new(config));
    }
    let cache = if tls == Tls::SelfSigned {
        &ANY
    } else {
        &VERIFIED
    };
    cache
        .get_or_init(|| Ok(Arc::new(builder(tls)?.with_no_client_auth())))
        .clone()
        .map_err(ConnectError::Tls)
}

/// Whether a TLS client takes `client` (its key is its certificate's).
#[cfg(test)]
pub fn client_config_for_test(client: &ClientAuth) -> Result<(), ConnectError> {
    tls_config(Tls::SelfSigned, Some(client)).map(|_| ())
}

/// A TLS client setup for `tls`, short of its client certificate.
fn builder(
    tls: Tls,
) -> Result<
    tokio_rustls::rustls::ConfigBuilder<
        tokio_rustls::rustls::ClientConfig,
        tokio_rustls::rustls::client::WantsClientCert,
    >,
    String,
> {
    use std::sync::OnceLock;
    use tokio_rustls::rustls;
    static ROOTS: OnceLock<Result<Arc<rustls::RootCertStore>, String>> = OnceLock::new();
    let provider = || Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let versions = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    if tls == Tls::SelfSigned {
        return Ok(versions
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider()))));
    }
    let roots = ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err("no trusted root certificates found on this system".into());
            }
            Ok(Arc::new(roots))
        })
        .clone()?;
    Ok(versions.with_root_certificates(roots))
}

/// Takes any certificate (`tls = "self-signed"`), still checking the handshake's signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::client::danger::ServerCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Base64 of `bytes` (RFC 4648, padded), for `AUTHENTICATE`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (index, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if index <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The `AUTHENTICATE` payloads of a SASL response: 400-byte pieces, and a `+` after a
/// last piece of exactly 400 (or for an empty response).
fn authenticate_pieces(response: &[u8]) -> Vec<String> {
    let encoded = base64(response);
    let mut pieces: Vec<String> = encoded
        .as_bytes()
        .chunks(400)
        .map(|piece| String::from_utf8_lossy(piece).into_owned())
        .collect();
    if pieces.last().is_none_or(|piece| piece.len() == 400) {
        pieces.push("+".into());
    }
    pieces
}

impl Connection {
    /// Connects to `target` and registers, within `within`.
    pub async fn connect(
        target: &Target,
        registration: &Registration,
        within: Duration,
    ) -> Result<Self, ConnectError> {
        tokio::time::timeout(within, Self::register(target, registration))
            .await
            .map_err(|_| ConnectError::TimedOut)?
    }

    async fn register(target: &Target, registration: &Registration) -> Result<Self, ConnectError> {
        if matches!(registration.sasl, Some(Sasl::External)) && target.tls == Tls::Off {
            return Err(ConnectError::Sasl(
                "SASL EXTERNAL needs TLS, and this server is reached without it".into(),
            ));
        }
        // Known to the ident service until registered: servers ask before they welcome.
        let (read, write, _known) = open(target, &registration.username).await?;
        let mut connection = Self {
            reader: LineReader::new(read),
            writer: write,
            nick: registration.nick.clone(),
            isupport: HashMap::new(),
            caps: Caps::default(),
            account: None,
            server_name: String::new(),
            greeting: Vec::new(),
        };
        let mut out = String::new();
        if let Some((password, address)) = &registration.webirc {
            // First, before anything else; the host name is the address (a leading ':'
            // would make it a trailing parameter).
            let address = match address.to_string() {
                text if text.starts_with(':') => format!("0{text}"),
                text => text,
            };
            out.push_str(&wire::line(
                &[],
                "WEBIRC",
                &[password.expose_secret(), "jabbridge", &address, &address],
            )?);
        }
        out.push_str(&wire::line(&[], "CAP", &["LS", "302"])?);
        if let Some(password) = &registration.password {
            out.push_str(&wire::line(&[], "PASS", &[password.expose_secret()])?);
        }
        out.push_str(&wire::line(&[], "NICK", &[&registration.nick])?);
        out.push_str(&wire::line(
            &[],
            "USER",
            &[&registration.username, "0", "*", &registration.realname],
        )?);
        connection.writer.write_all(out.as_bytes()).await?;
        let mut tries = 0;
        let mut welcomed = false;
        let mut offered: BTreeSet<String> = BTreeSet::new();
        loop {
            let message = connection
                .next_message()
                .await?
                .ok_or(ConnectError::Closed)?;
            let param = |index: usize| message.params.get(index).map(String::as_str);
            match message.command.as_str() {
                "CAP" if param(1) == Some("LS") => {
                    let more = param(2) == Some("*");
                    let list = if more { param(3) } else { param(2) };
                    // Only the names we might ask for are kept: a server streaming endless
                    // lists costs nothing.
                    for cap in list.unwrap_or("").split_whitespace() {
                        let name = cap.split_once('=').map_or(cap, |(name, _)| name);
                        if name == "sasl" || WANTED_CAPS.contains(&name) {
                            offered.insert(name.to_owned());
                        }
                    }
                    if more {
                        continue;
                    }
                    let mut wanted: Vec<&str> = WANTED_CAPS
                        .iter()
                        .copied()
                        .filter(|cap| offered.contains(*cap))
                        .collect();
                    if registration.sasl.is_some() {
                        if !offered.contains("sasl") {
                            return Err(ConnectError::Sasl(
                                "the server offers no SASL (are its services down?)".into(),
                            ));
                        }
                        wanted.push("sasl");
                    }
                    if wanted.is_empty() {
                        connection.send("CAP", &["END"]).await?;
                    } else {
                        connection.send("CAP", &["REQ", &wanted.join(" ")]).await?;
                    }
                }
                "CAP" if param(1) == Some("ACK") => {
                    for cap in param(2).unwrap_or("").split_whitespace() {
                        match cap.strip_prefix('-') {
                            Some(gone) => connection.caps.remove(gone),
                            None => connection.caps.insert(cap),
                        };
                    }
                    match &registration.sasl {
                        Some(Sasl::Plain { .. }) if connection.caps.contains("sasl") => {
                            connection.send("AUTHENTICATE", &["PLAIN"]).await?;
                        }
                        Some(Sasl::External) if connection.caps.contains("sasl") => {
                            connection.send("AUTHENTICATE", &["EXTERNAL"]).await?;
                        }
                        _ => connection.send("CAP", &["END"]).await?,
                    }
                }
                "CAP" if param(1) == Some("NAK") => {
                    if registration.sasl.is_some() {
                        return Err(ConnectError::Sasl("the server refused SASL".into()));
                    }
                    connection.send("CAP", &["END"]).await?;
                }
                "AUTHENTICATE" if param(0) == Some("+") => {
                    let response = match &registration.sasl {
                        Some(Sasl::Plain { account, password }) => {
                            let mut bytes = Vec::new();
                            bytes.extend_from_slice(account.as_bytes());
                            bytes.push(0);
                            bytes.extend_from_slice(account.as_bytes());
                            bytes.push(0);
                            bytes.extend_from_slice(password.expose_secret().as_bytes());
                            bytes
                        }
                        _ => Vec::new(),
                    };
                    for piece in authenticate_pieces(&response) {
                        connection.send("AUTHENTICATE", &[&piece]).await?;
                    }
                }
                // Logged in (900), then the SASL exchange succeeded (903).
                "900" => connection.account = param(2).map(str::to_owned),
                "903" => connection.send("CAP", &["END"]).await?,
                "902" | "904" | "905" | "906" | "908" => {
                    return Err(ConnectError::Sasl(
                        message.params.last().cloned().unwrap_or_default(),
                    ));
                }
                "001" => {
                    welcomed = true;
                    if let Some(nick) = message.params.first() {
                        connection.nick = nick.clone();
                    }
                    connection.server_name = message.source.clone().unwrap_or_default();
                }
                "005" => {
                    let supported = message.params.iter().skip(1);
                    let count = message.params.len().saturating_sub(2);
                    for token in supported.take(count) {
                        match token.strip_prefix('-') {
                            Some(gone) => {
                                connection.isupport.remove(gone);
                            }
                            None if connection.isupport.len() < MAX_ISUPPORT => {
                                let (key, value) = token.split_once('=').unwrap_or((token, ""));
                                connection.isupport.insert(key.to_owned(), value.to_owned());
                            }
                            None => {}
                        }
                    }
                }
                "372" | "NOTICE" => {
                    if connection.greeting.len() < 200
                        && let Some(text) = message.params.last()
                    {
                        connection.greeting.push(text.clone());
                    }
                }
                // The end of the MOTD, or none: registration is over.
                "376" | "422" if welcomed => return Ok(connection),
                "433" | "432" | "436" if !welcomed => {
                    tries += 1;
                    if tries > NICK_TRIES {
                        return Err(ConnectError::Refused(format!(
                            "no free nick after {NICK_TRIES} tries from {}",
                            registration.nick
                        )));
                    }
                    connection.nick = suffixed(&registration.nick, tries, &connection.isupport);
                    let nick = connection.nick.clone();
                    connection.send("NICK", &[&nick]).await?;
                }
                "ERROR" | "464" | "465" => {
                    return Err(ConnectError::Refused(
                        message.params.last().cloned().unwrap_or_default(),
                    ));
                }
                _ => {}
            }
        }
    }

    /// Sends one command ([`wire::line`] checks it).
    pub async fn send(&mut self, command: &str, params: &[&str]) -> Result<(), ConnectError> {
        let line = wire::line(&[], command, params)?;
        self.writer.write_all(line.as_bytes()).await?;
        Ok(())
    }

    /// The next message from the server (a `PING` is answered and not handed out; lines
    /// that do not parse are skipped); `None` once the server closed the connection.
    /// Cancel-safe: a message is lost only if it was read, and reading keeps its bytes.
    pub async fn next_message(&mut self) -> Result<Option<Message>, ConnectError> {
        loop {
            let Some(line) = self.reader.next_line().await? else {
                return Ok(None);
            };
            let Ok(message) = wire::parse(&line.text) else {
                continue;
            };
            if message.command == "PING" {
                let token = message.params.first().map(String::as_str).unwrap_or("");
                self.send("PONG", &[token]).await?;
                continue;
            }
            return Ok(Some(message));
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    use crate::tests::ngircd;

    fn registration(nick: &str) -> Registration {
        Registration {
            nick: nick.into(),
            username: "jb".into(),
            realname: "Jabbridge test".into(),
            password: None,
            sasl: None,
            webirc: None,
        }
    }

    #[test]
    fn sasl_responses_are_base64_in_400_byte_pieces() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(
            base64(b"jilles\0jilles\0sesame"),
            "amlsbGVzAGppbGxlcwBzZXNhbWU="
        );
        assert_eq!(authenticate_pieces(b""), ["+"]);
        let exact = authenticate_pieces(&[b'a'; 300]);
        assert_eq!(exact.len(), 2);
        assert_eq!(exact[0].len(), 400);
        assert_eq!(exact[1], "+");
        let longer = authenticate_pieces(&[b'a'; 301]);
        assert_eq!(longer.len(), 2);
        assert_eq!(longer[1].len(), 4);
    }

    /// The next message with `command`, within 10 s.
    async fn expect(connection: &mut Connection, command: &str) -> Message {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let message = connection.next_message().await.unwrap().expect("open");
                if message.command == command {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {command} within 10 s"))
    }

    #[test]
    fn caps_hold_what_we_ask_for_and_sasl_and_nothing_else() {
        let mut caps = Caps::default();
        assert_eq!(caps.iter().count(), 0);
        for cap in WANTED_CAPS.iter().chain(&["sasl"]) {
            assert!(caps.insert(cap), "{cap}");
            assert!(!caps.insert(cap), "{cap} twice");
        }
        // Unknown ones are not kept, however often a server acknowledges them.
        assert!(!caps.insert("draft/unknown"));
        assert!(!caps.contains("draft/unknown"));
        let all: Vec<&str> = caps.iter().collect();
        assert_eq!(all[..WANTED_CAPS.len()], *WANTED_CAPS);
        assert_eq!(all[WANTED_CAPS.len()..], ["sasl"]);
        assert!(caps.remove("echo-message"));
        assert!(!caps.remove("echo-message"));
        assert!(!caps.contains("echo-message"));
        assert!(caps.contains("labeled-response") && caps.contains("sasl"));
        assert_eq!(format!("{:?}", Caps::default()), "{}");
    }

    #[test]
    fn a_suffixed_nick_stays_within_nicklen() {
        let none = HashMap::new();
        assert_eq!(suffixed("alice", 1, &none), "alice_");
        assert_eq!(suffixed("ninechars", 1, &none), "ninechar_");
        assert_eq!(suffixed("ninechars", 2, &none), "ninecha__");
        let long = HashMap::from([("NICKLEN".to_owned(), "30".to_owned())]);
        assert_eq!(suffixed("ninechars", 1, &long), "ninechars_");
    }

    #[tokio::test]
    async fn two_users_register_one_renamed_and_talk_in_a_channel() {
        let Some(server) = ngircd().await else {
            return;
        };
        let address = Target {
            address: format!("127.0.0.1:{}", server.port),
            host: "127.0.0.1".into(),
            tls: Tls::Off,
            client: None,
            idents: None,
        };
        let within = Duration::from_secs(10);
        let mut alice = Connection::connect(&address, &registration("alice"), within)
            .await
            .unwrap();
        assert_eq!(alice.nick, "alice");
        assert!(
            alice.isupport.contains_key("CASEMAPPING"),
            "{:?}",
            alice.isupport
        );
        // The nick is taken: the second connection gets it with a suffix.
        let mut other = Connection::connect(&address, &registration("alice"), within)
            .await
            .unwrap();
        assert_eq!(other.nick, "alice_");
        alice.send("JOIN", &["#test"]).await.unwrap();
        expect(&mut alice, "366").await;
        other.send("JOIN", &["#test"]).await.unwrap();
        expect(&mut other, "366").await;
        for piece in wire::split_text("hello there\nsecond line", 400) {
            alice.send("PRIVMSG", &["#test", &piece]).await.unwrap();
        }
        let first = expect(&mut other, "PRIVMSG").await;
        assert_eq!(first.nick(), Some("alice"));
        assert_eq!(first.params, ["#test", "hello there"]);
        let second = expect(&mut other, "PRIVMSG").await;
        assert_eq!(second.params, ["#test", "second line"]);
        // A line break never reaches the socket.
        assert!(matches!(
            alice.send("PRIVMSG", &["#test", "x\r\nQUIT"]).await,
            Err(ConnectError::Line(LineError::LineBreak))
        ));
    }
}
