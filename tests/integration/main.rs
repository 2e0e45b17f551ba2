//! Integration tests against real servers: Prosody and ejabberd, a slixmpp client, SQLite and
//! PostgreSQL, and the `jabbridge` binary itself. Run them with `scripts/test`, which
//! installs and starts what they need.

mod cli;
mod external;
mod gateway;
mod harness;
mod irc;
mod link;
mod protocol;
mod rooms;
mod sms;
mod store;
mod webhook;

use std::path::Path;

use harness::{Client, Jabbridge, ServerKind, XmppServer};

/// Runs each listed test body against Prosody and against ejabberd.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {
        mod prosody {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::ServerKind::Prosody).await;
                }
            )*
        }
        mod ejabberd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::harness::ServerKind::Ejabberd).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_servers;

/// Which echo bridge a scenario runs against: the in-process one, or the Python reference
/// bridge (`examples/external-python/bridge.py`) as an external process. Both must give the
/// same results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Echo {
    /// `kind = "echo"`.
    InProcess,
    /// `kind = "external"` running the Python reference bridge.
    External,
}

/// Runs each scenario `fn(ServerKind, Echo)` against the in-process echo bridge on both
/// servers, and against the external Python echo bridge on Prosody.
macro_rules! on_both_echoes {
    ($($name:ident),* $(,)?) => {
        mod echoes {
            mod prosody {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::super::$name(crate::harness::ServerKind::Prosody, crate::Echo::InProcess).await;
                    }
                )*
            }
            mod ejabberd {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::super::$name(crate::harness::ServerKind::Ejabberd, crate::Echo::InProcess).await;
                    }
                )*
            }
            mod external_prosody {
                $(
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        super::super::$name(crate::harness::ServerKind::Prosody, crate::Echo::External).await;
                    }
                )*
            }
        }
    };
}
pub(crate) use on_both_echoes;

/// The Python reference bridge.
pub fn python_bridge() -> String {
    format!(
        "{}/examples/external-python/bridge.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// The admin of every bridge in test configs (`allow` admits all of `localhost`).
pub const ADMIN: &str = "admin@localhost";

/// The bearer token of the echo bridge's `/say` webhook in test configs.
pub const SAY_TOKEN: &str = "say-token";

/// A Jabbridge config for `server` with one echo bridge per domain, SQLite in `dir`, short
/// keepalive and reconnect times so that tests see them happen.
pub fn config_for(server: &XmppServer, dir: &Path, domains: &[&str]) -> String {
    let mut config = config_head(server, dir);
    for domain in domains {
        let port = server.component_port_for(domain);
        config.push_str(&format!(
            "\n[[bridge]]\nkind = \"echo\"\ndomain = \"{domain}\"\nsecret = \"{}\"\nserver = \"127.0.0.1:{port}\"\nallow = [\"localhost\"]\nadmins = [\"{ADMIN}\"]\nprefix = \"{domain} says: \"\nsay_token = \"{SAY_TOKEN}\"\n",
            harness::SECRET
        ));
    }
    config
}

/// The sections of a test config before its bridges: `server`'s component port, SQLite in
/// `dir`, short keepalive and reconnect times, the HTTP listener on a free port.
/// [`config_for`] with the echo bridge of `echo`'s flavour: the same domains, access,
/// admins and reply prefix either way.
pub fn config_for_echo(server: &XmppServer, dir: &Path, domains: &[&str], echo: Echo) -> String {
    if echo == Echo::InProcess {
        return config_for(server, dir, domains);
    }
    let mut config = config_head(server, dir);
    for domain in domains {
        let port = server.component_port_for(domain);
        config.push_str(&format!(
            "\n[[bridge]]\nkind = \"external\"\ndomain = \"{domain}\"\nsecret = \"{}\"\nserver = \"127.0.0.1:{port}\"\nallow = [\"localhost\"]\nadmins = [\"{ADMIN}\"]\ncommand = [\"python3\", \"{}\"]\nsettings = {{ prefix = \"{domain} says: \" }}\n",
            harness::SECRET,
            python_bridge(),
        ));
    }
    config
}

pub fn config_head(server: &XmppServer, dir: &Path) -> String {
    format!(
        r#"
[xmpp]
server = "127.0.0.1:{component}"
keepalive = "2s"
keepalive_timeout = "3s"
reconnect_max = "1s"

[database]
url = "sqlite://{dir}/jabbridge.db"

[http]
listen = "127.0.0.1:{{http}}"
"#,
        component = server.component_port,
        dir = dir.display(),
    )
}

/// A server with the echo component and user alice, and Jabbridge attached and ready.
pub async fn echo_setup(kind: ServerKind) -> (XmppServer, Jabbridge, tempfile::TempDir) {
    echo_setup_with(kind, Echo::InProcess).await
}

/// [`echo_setup`] with the echo bridge of `echo`'s flavour.
pub async fn echo_setup_with(
    kind: ServerKind,
    echo: Echo,
) -> (XmppServer, Jabbridge, tempfile::TempDir) {
    let server = XmppServer::start(kind, &["echo.localhost"], &["alice"]).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let jabbridge = Jabbridge::start(
        dir.path(),
        &config_for_echo(&server, dir.path(), &["echo.localhost"], echo),
    )
    .await;
    jabbridge
        .wait_ready(std::time::Duration::from_secs(20))
        .await;
    (server, jabbridge, dir)
}

/// A XEP-0077 registration with an echo bridge, as a data form.
pub fn register_set(domain: &str, id: &str, prefix: &str) -> String {
    format!(
        "<iq type='set' to='{domain}' id='{id}'><query xmlns='jabber:iq:register'>\
         <x xmlns='jabber:x:data' type='submit'>\
         <field var='FORM_TYPE'><value>jabber:iq:register</value></field>\
         <field var='prefix'><value>{prefix}</value></field></x></query></iq>"
    )
}

/// A client of `user`, registered (with the configured prefix) with each of `domains`.
pub async fn registered(server: &XmppServer, user: &str, domains: &[&str]) -> Client {
    let mut client = server.client(user).await;
    for domain in domains {
        let reply = client
            .iq("registering", &register_set(domain, "registering", ""))
            .await;
        assert_eq!(reply.attr("type"), Some("result"), "{reply:?}");
    }
    client
}

/// POSTs `body` (JSON) to the echo bridge's `/say` webhook with `token`; the HTTP status.
pub async fn say(jabbridge: &Jabbridge, token: &str, body: serde_json::Value) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/bridges/echo.localhost/say",
            jabbridge.http_port
        ))
        .bearer_auth(token)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /say")
        .status()
        .as_u16()
}

/// `config` (from [`config_for`] with SQLite in `dir`) on the database at `url` instead.
pub fn on_database(config: &str, dir: &Path, url: &str) -> String {
    let sqlite = format!("url = \"sqlite://{}/jabbridge.db\"", dir.display());
    assert!(config.contains(&sqlite), "not a config_for config");
    config.replace(&sqlite, &format!("url = \"{url}\""))
}
