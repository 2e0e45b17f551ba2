//! Log output: structured `tracing` events as text or JSON, filtered by `[log] level` or
//! `RUST_LOG`. The level can change while running ([`set_level`], on a reload).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::config::{LogConfig, LogFormat};

/// Changes the filter of the installed subscriber; absent when `RUST_LOG` fixed it.
static LEVEL: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the config's level (and
/// then a reload does not change it).
pub fn init(config: &LogConfig) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let fixed = from_env.is_some();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let output = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) keeps the first subscriber.
    let installed = match config.format {
        LogFormat::Text => Registry::default().with(filter).with(output).try_init(),
        LogFormat::Json => Registry::default()
            .with(filter)
            .with(output.json().flatten_event(true))
            .try_init(),
    };
    if installed.is_ok() && !fixed {
        let _ = LEVEL.set(handle);
    }
}

/// Sets the log level (a level or a filter such as `info,jabbridge::xmpp=debug`). `Ok(false)`
/// when `RUST_LOG` fixed the level at start, which stays.
pub fn set_level(level: &str) -> Result<bool, String> {
    let Some(handle) = LEVEL.get() else {
        return Ok(false);
    };
    let filter = EnvFilter::try_new(level).map_err(|error| format!("log.level: {error}"))?;
    handle
        .reload(filter)
        .map(|()| true)
        .map_err(|error| format!("cannot change the log level: {error}"))
}
