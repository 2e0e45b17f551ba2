//! The registry of bridge kinds: adding a bridge is one line in `KINDS`.

use jabbridge_sdk::BuildFn;

/// Every bridge kind this build knows, by the `kind` key of `[[bridge]]`.
const KINDS: &[(&str, BuildFn)] = &[
    ("echo", jabbridge_bridge_echo::build),
    ("webhook", jabbridge_bridge_webhook::build),
    ("sms", jabbridge_bridge_sms::build),
    ("irc", jabbridge_bridge_irc::build),
    ("external", jabbridge_bridge_external::build),
];

/// The build function of a kind.
pub fn find(kind: &str) -> Option<BuildFn> {
    KINDS
        .iter()
        .find(|(name, _)| *name == kind)
        .map(|(_, build)| *build)
}

/// The names of every kind, for error messages.
pub fn kinds() -> Vec<&'static str> {
    KINDS.iter().map(|(name, _)| *name).collect()
}
