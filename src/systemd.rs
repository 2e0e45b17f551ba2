//! systemd's service notifications (`sd_notify`): `READY=1` once started, `WATCHDOG=1` while
//! the runtime runs, `STOPPING=1` at shutdown, and `STATUS=` lines, as datagrams to the
//! socket systemd names in `$NOTIFY_SOCKET`. Without it (not started by systemd, or
//! `Type=simple`) nothing is sent.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, if systemd asked for them.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// From the environment systemd set: `NOTIFY_SOCKET` (a path, or `@name` for an
    /// abstract socket), and `WATCHDOG_USEC` (with `WATCHDOG_PID`, when it names this
    /// process).
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let address = address(path.as_encoded_bytes())?;
            let socket = UnixDatagram::unbound().ok()?;
            Some((socket, address))
        });
        let ours = std::env::var("WATCHDOG_PID")
            .ok()
            .is_none_or(|pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(Duration::from_micros);
        Self { target, watchdog }
    }

    /// Sends `state` (newline-separated `KEY=VALUE` lines). A failure is logged and
    /// otherwise ignored: systemd acts on what does not arrive (a start timeout, the
    /// watchdog).
    pub fn notify(&self, state: &str) {
        if let Some((socket, address)) = &self.target
            && let Err(error) = socket.send_to_addr(state.as_bytes(), address)
        {
            tracing::warn!(%error, "cannot notify systemd");
        }
    }

    /// How often to send `WATCHDOG=1`: half of `WatchdogSec=`, if systemd set one.
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|limit| limit / 2)
    }
}

/// The socket address `NOTIFY_SOCKET` names.
fn address(path: &[u8]) -> Option<SocketAddr> {
    match path.split_first() {
        None => None,
        Some((b'@', name)) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name).ok()
        }
        Some(_) => {
            let path = std::str::from_utf8(path).ok()?;
            SocketAddr::from_pathname(path).ok()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_abstract_names_are_both_addresses() {
        assert!(address(b"/run/systemd/notify").is_some());
        assert!(address(b"@abstract/notify").is_some());
        assert!(address(b"").is_none());
    }
}
