//! `jabbridge doctor`: checks, from the config, what a first start needs: the database
//! reachable, each bridge's component port answering and accepting its domain and secret,
//! and what each bridge checks of its own setup (an SMS bridge's provider credentials).
//! One line per check, with the fix when it fails.

use std::sync::Arc;
use std::time::Duration;

use jabbridge_sdk::{Bridge, Checked};
use secrecy::ExposeSecret;

use crate::config::Config;
use crate::store::Store;
use crate::xmpp::session::{self, LinkConfig};

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked, e.g. `database` or `bridge[0] echo.example.org: component`.
    pub what: String,
    /// `Ok` with what was seen, or `Err` with what to fix.
    pub outcome: Result<String, String>,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Ok(seen) => write!(f, "ok    {}: {seen}", self.what),
            Err(fix) => write!(f, "FAIL  {}: {fix}", self.what),
        }
    }
}

/// How long a check may take.
const CHECK: Duration = Duration::from_secs(10);

/// Runs every check, in order. `bridges` are the config's bridges, built but not run.
pub async fn run(config: &Config, bridges: &[Arc<dyn Bridge>]) -> Vec<Check> {
    let mut checks = vec![database(config).await];
    let running = running(config).await;
    checks.push(public_url(config, running).await);
    for (index, bridge) in config.bridge.iter().enumerate() {
        let what = format!("bridge[{index}] {}: component", bridge.domain);
        let server = bridge
            .server
            .clone()
            .unwrap_or_else(|| config.xmpp.server.clone());
        let outcome = if running {
            // Handshaking beside the running link could make the server drop it.
            Ok(format!(
                "not probed: something (a running Jabbridge?) listens on http.listen {}; its \
                 /ready shows the links",
                config.http.listen
            ))
        } else {
            let link = LinkConfig {
                server: server.clone(),
                domain: bridge.domain.clone(),
                secret: bridge.secret.clone(),
                index,
                keepalive: config.xmpp.keepalive,
                keepalive_timeout: config.xmpp.keepalive_timeout,
                reconnect_max: config.xmpp.reconnect_max,
            };
            match tokio::time::timeout(CHECK, session::probe(&link)).await {
                Ok(Ok(())) => Ok(format!("{server} accepted the domain and secret")),
                Ok(Err(error)) => Err(error.to_string()),
                Err(_) => Err(format!(
                    "{server} did not finish the handshake in {CHECK:?}: is it an XMPP \
                     server's component port (xmpp.server / bridge[{index}].server)?"
                )),
            }
        };
        checks.push(Check { what, outcome });
        if let Some(bridge) = bridges.get(index) {
            let own = tokio::time::timeout(CHECK, bridge.check_setup())
                .await
                .unwrap_or_else(|_| {
                    vec![Checked {
                        what: "its own setup".into(),
                        outcome: Err(format!("the bridge's checks took over {CHECK:?}")),
                    }]
                });
            checks.extend(own.into_iter().map(|checked| Check {
                what: format!(
                    "bridge[{index}] {}: {}",
                    bridge_domain(config, index),
                    checked.what
                ),
                outcome: checked.outcome,
            }));
        }
    }
    checks
}

fn bridge_domain(config: &Config, index: usize) -> &str {
    config
        .bridge
        .get(index)
        .map_or("", |bridge| bridge.domain.as_str())
}

/// The database answers, and how many migrations it has applied.
async fn database(config: &Config) -> Check {
    let url = config.database.url.expose_secret();
    // Never the URL itself: it may hold a password.
    let engine = if url.starts_with("sqlite:") {
        "SQLite"
    } else {
        "PostgreSQL"
    };
    let outcome = match tokio::time::timeout(CHECK, Store::connect(&config.database.url, 1)).await {
        Ok(Ok(store)) => {
            let answered = store.ping().await;
            store.close().await;
            match answered {
                Ok(()) => Ok(format!("{engine} answers")),
                Err(error) => Err(format!("{engine} does not answer: {error}")),
            }
        }
        Ok(Err(error)) => Err(format!(
            "cannot open the {engine} database (check database.url): {error}"
        )),
        Err(_) => Err(format!(
            "the {engine} database did not answer in {CHECK:?} (check database.url)"
        )),
    };
    Check {
        what: "database".into(),
        outcome,
    }
}

/// Whether `http.public_url` reaches this config's listener: the `/health` seen through it
/// names the same process as the listener's own.
async fn public_url(config: &Config, running: bool) -> Check {
    let what = "http.public_url".to_owned();
    let Some(url) = &config.http.public_url else {
        let outcome = Ok("not set (bridges that take webhooks need it)".into());
        return Check { what, outcome };
    };
    if !running {
        let outcome = Ok(format!(
            "not checked: nothing listens on http.listen {}; run doctor again while \
             Jabbridge runs",
            config.http.listen
        ));
        return Check { what, outcome };
    }
    let client = match reqwest::Client::builder().timeout(CHECK).build() {
        Ok(client) => client,
        Err(error) => {
            let outcome = Err(format!("cannot make an HTTP client: {error}"));
            return Check { what, outcome };
        }
    };
    let instance = async |url: String| -> Result<Option<String>, String> {
        let response = client
            .get(&url)
            .send()
            .await
            .map_err(|error| format!("{url} does not answer: {error}"))?;
        Ok(response
            .headers()
            .get(crate::http::INSTANCE_HEADER)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned))
    };
    let base = url.trim_end_matches('/');
    let local = instance(format!("http://{}/health", config.http.listen)).await;
    let public = instance(format!("{base}/health")).await;
    let outcome = match (local, public) {
        (Ok(Some(local)), Ok(Some(public))) if local == public => {
            Ok(format!("{base} reaches this listener"))
        }
        (Ok(Some(_)), Ok(Some(_))) => Err(format!(
            "{base} reaches another Jabbridge, not the one on http.listen {}",
            config.http.listen
        )),
        (Ok(Some(_)), Ok(None)) => Err(format!(
            "{base}/health answers, but not from Jabbridge: check the reverse proxy"
        )),
        (Ok(None), _) => Err(format!(
            "what listens on http.listen {} is not Jabbridge",
            config.http.listen
        )),
        (_, Err(error)) | (Err(error), _) => Err(error),
    };
    Check { what, outcome }
}

/// Whether a Jabbridge already answers on this config's HTTP listener.
async fn running(config: &Config) -> bool {
    let connect = tokio::net::TcpStream::connect(config.http.listen);
    matches!(
        tokio::time::timeout(Duration::from_secs(1), connect).await,
        Ok(Ok(_))
    )
}
